"""The node over real loopback sockets (TCP and WebSocket), in real time."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from pinecone_trio import Identity
from pinecone_trio.link.stream import NoiseLink
from pinecone_trio.node import Node, open_node
from pinecone_trio.router.wire import (
    Announcement,
    Bootstrap,
    TreeAnnouncement,
    encode_frame,
)
from pinecone_trio.testing import open_network
from pinecone_trio.transports import dial

from .test_node_memory import deliver_all_pairs, kill_node_and_recover, random_connected_edges

# Real time on a possibly overloaded 2-core machine: bounds are generous (they only
# matter when something hangs), never speed assertions.
BOUND = 60


@pytest.mark.slow
async def test_twenty_nodes_over_tcp_converge_and_deliver() -> None:
    edges = random_connected_edges(20, 8, seed=11)
    async with open_network(edges, transport="tcp") as net:
        with trio.fail_after(60):
            await net.wait_converged()
        await deliver_all_pairs(net, sorted(net.nodes), attempts=10)
        status = net["n0"].status()
        assert status["peers"] and all(p["uri"].startswith("tcp://") for p in status["peers"])
        assert all(p["bytes_in"] > 0 and p["bytes_out"] > 0 for p in status["peers"])


@pytest.mark.slow
async def test_killed_node_routes_recover_over_tcp() -> None:
    await kill_node_and_recover("tcp://127.0.0.1:0")


async def test_websocket_peering_carries_traffic() -> None:
    async with open_network([("a", "b"), ("b", "c")], transport="ws") as net:
        with trio.fail_after(BOUND):
            await net.wait_converged()
        await deliver_all_pairs(net, ["a", "b", "c"])
        assert net["a"].status()["peers"][0]["uri"].startswith("ws://")


async def _attacker(uri: str) -> NoiseLink:
    link = NoiseLink(await dial(uri), Identity.generate(), initiator=True)
    await link.do_handshake()
    return link


@asynccontextmanager
async def _node_honest_and_attacker() -> AsyncIterator[tuple[Node, Node, NoiseLink]]:
    """A listening node with an honest peer and a raw link of ours peered to it."""
    async with (
        open_node(Identity.generate(), listen=["tcp://127.0.0.1:0"]) as node,
        open_node(Identity.generate()) as honest,
    ):
        uri = node.listen_uris[0]
        await honest.connect(uri)
        link = await _attacker(uri)
        async with link:
            with trio.fail_after(BOUND):
                await node.wait_for(lambda: len(node.peer_keys()) == 2)
            yield node, honest, link


def _bogus_bootstrap() -> bytes:
    return encode_frame(Bootstrap(b"\x02" * 32, b"\xff" * 32, 0, 1, b"\x03" * 32, 0, b"\x00" * 64))


@pytest.mark.parametrize("kind", ["garbage", "bad_signature", "flood"])
async def test_misbehaving_peer_is_dropped_and_counted(kind: str) -> None:
    async with _node_honest_and_attacker() as (node, honest, link):
        await _misbehave(node, honest, link, kind)


async def _misbehave(node: Node, honest: Node, link: NoiseLink, kind: str) -> None:
    if kind == "garbage":
        await link.send_all(b"this is not a pinecone frame at all")
    elif kind == "bad_signature":
        ann = Announcement.new(bytes(link.remote_key), 1).extend(1, b"\x01" * 32, b"\x00" * 64)
        await link.send_all(encode_frame(TreeAnnouncement(ann)))
    else:
        # Over 5x the 10,000-frame burst at once; again while the node reads slower than
        # the flood mark refills (a loaded machine), until it cuts us off.
        flood = _bogus_bootstrap() * 60_000
        with contextlib.suppress(trio.BrokenResourceError):  # cut off mid-flood
            for _ in range(10):
                await link.send_all(flood)
    with trio.fail_after(BOUND):
        await node.wait_for(lambda: node.counters.misbehaving_peers == 1)
        await node.wait_for(lambda: node.peer_keys() == [honest.public_key])
    # the attacker's link is closed; the honest peer is unaffected
    with trio.fail_after(BOUND), contextlib.suppress(trio.BrokenResourceError):
        while await link.receive_some():
            pass
    await honest.send(node.public_key, b"still here")
    with trio.fail_after(BOUND):
        got = await node.receive()
    assert got.payload == b"still here"


async def test_protocol_frames_over_the_allowance_are_dropped_and_the_peer_stays() -> None:
    # A busy honest link (a bridge between two halves of a large network carries about
    # N / 20 bootstraps a second) may pass the allowance: the excess is dropped, the
    # peer is not cut off as it was at 2,000/s before (measured in the simulator).
    async with _node_honest_and_attacker() as (node, honest, link):
        await link.send_all(_bogus_bootstrap() * 20_000)  # 2x the burst, 1/5 the flood mark

        def attacker_status() -> dict[str, int]:
            honest_key = honest.public_key.hex()
            (peer,) = [p for p in node.status()["peers"] if p["public_key"] != honest_key]
            return peer  # type: ignore[no-any-return]

        # Every frame read, and those the router could not get through dropped.
        with trio.fail_after(60):
            for _ in range(1_200):  # (nothing changes the node's state: poll)
                if attacker_status()["frames_in"] >= 20_000:
                    break
                await trio.sleep(0.05)
        assert attacker_status()["protocol_dropped"] > 0
        assert node.counters.misbehaving_peers == 0
        assert len(node.peer_keys()) == 2


async def test_failed_handshake_is_counted_and_listener_keeps_serving() -> None:
    async with open_node(Identity.generate(), listen=["tcp://127.0.0.1:0"]) as node:
        uri = node.listen_uris[0]
        stream = await dial(uri)
        await stream.send_all(b"\x00\x05hello")  # not a Noise handshake message
        with trio.fail_after(BOUND):
            await node.wait_for(lambda: node.counters.handshake_failures == 1)
        await stream.aclose()
        async with open_node(Identity.generate()) as other:
            assert await other.connect(uri) == node.public_key
