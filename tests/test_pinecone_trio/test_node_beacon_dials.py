"""Beacon dials: a host sending forged beacons cannot keep us from a real peer.

The redial limit and the dials in progress were keyed by the beacon's key alone, so
beacons naming a real peer's key at a stalling address (no spoofing needed) took that
key's slot again and again, and a flood of random keys took every dial slot. Now both
are keyed by (key, host, port), and one host's beacons get at most
`MAX_BEACON_DIALS_PER_HOST` dials at once. Real TCP on loopback; the beacons are fed to
the node's handler directly (real multicast is tested in test_multicast_netns.py).
"""

from __future__ import annotations

import functools

import pytest
import trio

from pinecone_trio import Identity, PublicKey
from pinecone_trio.discovery.beacon import Beacon
from pinecone_trio.node import Node, NodeConfig, open_node

BOUND = 30  # real time on a shared machine: only matters when something hangs


async def _stalling_listener(nursery: trio.Nursery, host: str) -> int:
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)  # accept, then say nothing: the dial's handshake stalls
        await trio.sleep_forever()

    listeners = await nursery.start(functools.partial(trio.serve_tcp, hold, 0, host=host))
    return int(listeners[0].socket.getsockname()[1])


def _peered(node: Node, key: PublicKey) -> bool:
    return key in node.peer_keys()


@pytest.mark.parametrize("flood", ["same key, wrong port", "random keys"])
async def test_forged_beacons_do_not_keep_us_from_a_real_peer(flood: str) -> None:
    config = NodeConfig(dial_timeout=3.0, handshake_timeout=3.0)
    async with (
        trio.open_nursery() as nursery,
        open_node(Identity.generate(), listen=["tcp://127.0.0.1:0"]) as a,
        open_node(Identity.generate(), config=config) as b,
    ):
        stall_port = await _stalling_listener(nursery, "127.0.0.2")
        a_port = int(a.listen_uris[0].rsplit(":", 1)[1])

        async def forged() -> None:
            for _ in range(2_000):  # bounded: 20 s at most
                key = a.public_key if flood.startswith("same") else Identity.generate().public_key
                for _ in range(20):
                    b._on_beacon(Beacon(key, stall_port), "127.0.0.2", "lo")
                await trio.sleep(0.01)

        async def real() -> None:
            for _ in range(BOUND):
                b._on_beacon(Beacon(a.public_key, a_port), "127.0.0.1", "lo")
                await trio.sleep(1.0)

        nursery.start_soon(forged)
        await trio.sleep(0.05)  # the flood is on before the first real beacon
        # The real beacon starts its dial at once, whatever the flood holds.
        b._on_beacon(Beacon(a.public_key, a_port), "127.0.0.1", "lo")
        assert (bytes(a.public_key), "127.0.0.1", a_port) in b._dialling
        assert sum(1 for host in b._dialling.values() if host == "127.0.0.2") <= 2
        nursery.start_soon(real)
        with trio.fail_after(BOUND):
            await b.wait_for(lambda: _peered(b, a.public_key))
        nursery.cancel_scope.cancel()
