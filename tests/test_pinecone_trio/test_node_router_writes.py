"""The router task writes a peering's queued frames itself, at the end of its pass,
when the link can write at once (TCP); otherwise the peering's writer does. Either way
every frame arrives, in order, and local send budget is returned."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.testing

from pinecone_trio.link import NoiseLink
from pinecone_trio.node import Datagram, Node
from pinecone_trio.testing import open_network


def writes(node: Node) -> tuple[int, int]:
    """(writes made by the router task, frames sent) over all of `node`'s peerings."""
    peerings = node._peerings.values()
    return sum(p.direct_writes for p in peerings), sum(p.statistics.frames_out for p in peerings)


async def send_in_order(a: Node, d: Node, count: int, size: int, *, slow: bool = False) -> None:
    got: list[int] = []

    async def sink() -> None:
        while len(got) < count:
            dg: Datagram = await d.receive()
            assert dg.source_key == a.public_key
            assert len(dg.payload) == size
            got.append(int.from_bytes(dg.payload[:4], "big"))
            if slow and len(got) % 20 == 0:
                await trio.testing.wait_all_tasks_blocked()  # let the sender run ahead

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink)
            for i in range(count):
                await a.send(d.public_key, i.to_bytes(4, "big") + b"x" * (size - 4))
    assert got == list(range(count))


async def test_tcp_frames_leave_from_the_router_task_in_order() -> None:
    async with open_network([("a", "b"), ("b", "c")], transport="tcp") as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b, c = net["a"], net["b"], net["c"]
        before = [writes(n) for n in (a, b)]
        # Large frames (several per write) and many small ones, through a relay.
        await send_in_order(a, c, 300, 60_000)
        await send_in_order(a, c, 3000, 200)
        for node, (direct0, frames0) in zip((a, b), before, strict=True):
            direct, frames = writes(node)
            assert frames - frames0 >= 3300
            assert direct > direct0  # the router task wrote, not only the writers
        assert sum(c.status()["router"]["dropped"].values()) == 0
        await trio.testing.wait_all_tasks_blocked()
        assert a._budget.used == 0 and a._budget.frames == 0  # every frame returned it


async def test_memory_links_go_through_the_writer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b"), ("b", "c")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, c = net["a"], net["c"]
        await send_in_order(a, c, 500, 2000)
        assert writes(a)[0] == 0 and writes(net["b"])[0] == 0
        assert writes(a)[1] >= 500


async def test_a_full_socket_hands_the_rest_to_the_writer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushes: list[int] = []  # what was pending when the writer came to send
    send_all = NoiseLink.send_all

    async def watched_send_all(self: NoiseLink, data: bytes | bytearray | memoryview) -> None:
        flushes.append(self.send_pending)
        await send_all(self, data)

    monkeypatch.setattr(NoiseLink, "send_all", watched_send_all)
    async with open_network([("a", "b")], transport="tcp") as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        for node in (a, b):  # small kernel buffers fill at once
            for peering in node._peerings.values():
                sock = peering.link.transport_stream.socket  # type: ignore[attr-defined]
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        # b's sink takes its time: the router's writes leave bytes pending, and the
        # writer sends them (before anything queued behind them).
        await send_in_order(a, b, 200, 60_000, slow=True)
        assert any(flushes), "no write was left pending for the writer"
