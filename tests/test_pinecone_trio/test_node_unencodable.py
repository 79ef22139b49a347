"""A frame too big to encode is dropped by the writer; the peering survives."""

from __future__ import annotations

import trio
import trio.testing

from pinecone_trio.node import MAX_DATAGRAM_PAYLOAD, NodeConfig
from pinecone_trio.router.constants import MAX_COORDS_WIRE_SIZE
from pinecone_trio.testing import open_network


async def test_unencodable_frame_is_dropped_not_the_peering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No DHT: its SUCCESSOR claim to b would take the bogus coordinates planted below
    # too (b then drops the peering, as it should for coordinates that deep).
    async with open_network([("a", "b")], config=NodeConfig(dht=False)) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        # Coordinates deeper than any announcement can carry. The decoder and the
        # router's cache both refuse them now, so they are planted in the cache
        # directly: the writer's drop is the last line of defence if any path ever
        # lets such an entry through.
        bogus = (200,) * MAX_COORDS_WIRE_SIZE
        state = a._state
        assert state is not None
        state._coords_cache[bytes(b.public_key)] = (bogus, trio.current_time())
        await a.send(b.public_key, b"x" * MAX_DATAGRAM_PAYLOAD)
        await trio.testing.wait_all_tasks_blocked()  # the writer has had its turn
        assert a.status()["peers"][0]["unencodable_dropped"] == 1
        # The peering is still up and carries traffic (once the bogus entry is gone).
        assert len(a.status()["peers"]) == 1
        state._coords_cache.clear()
        with trio.fail_after(30):
            while True:
                await a.send(b.public_key, b"after")
                with trio.move_on_after(0.5):
                    assert (await b.receive()).payload == b"after"
                    break
