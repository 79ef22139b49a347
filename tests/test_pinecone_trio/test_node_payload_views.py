"""Traffic payloads decoded as views of the reader's buffer (no copy per hop).

A received traffic frame's payload is a read-only view into the buffer the link handed
the peering. Whatever outlives the router pass must hold bytes of its own: a frame
forwarded onto a peer queue, a datagram queued for `receive`. These tests pin both, over
real TCP links, with many frames per read so that views share buffers.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from pinecone_trio import Identity
from pinecone_trio.identity import FULL_MASK
from pinecone_trio.node import MAX_DATAGRAM_PAYLOAD
from pinecone_trio.peering import QUEUED_FRAME_OVERHEAD
from pinecone_trio.router.wire import Traffic
from pinecone_trio.testing import open_network

from .peering_helpers import make_peering
from .test_node_races import _StuckStream

BOUND = 60  # real time on a shared machine: only matters when something hangs


def _payload(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") + bytes((i + j) & 0xFF for j in range(256)) * (size // 256)


async def test_datagrams_through_a_relay_arrive_intact_as_bytes() -> None:
    # a - b - c over TCP: c's frames cross b (decoded as views, forwarded), b's own are
    # delivered locally. Bursts of mixed sizes make reads hold many frames and frames
    # straddle reads.
    async with open_network([("a", "b"), ("b", "c")], transport="tcp") as net:
        with trio.fail_after(BOUND):
            await net.wait_converged()
        a, b, c = net["a"], net["b"], net["c"]
        sizes = [MAX_DATAGRAM_PAYLOAD - 4 - (MAX_DATAGRAM_PAYLOAD - 4) % 256, 1_000, 256, 20_000]
        sent = {_payload(i, sizes[i % len(sizes)]) for i in range(40)}
        with trio.fail_after(BOUND):
            for target in (c, b):
                got: set[bytes] = set()
                while got != sent:  # datagrams are best effort: re-send until all came
                    for payload in sorted(sent - got):
                        await a.send(target.public_key, payload)
                    with trio.move_on_after(1):
                        while got != sent:
                            datagram = await target.receive()
                            assert type(datagram.payload) is bytes  # not a view
                            assert datagram.payload in sent, "a corrupted payload"
                            got.add(datagram.payload)


async def test_a_queued_forwarded_frame_holds_its_own_bytes() -> None:
    # A frame that waits on a peer queue must not pin the whole read buffer its payload
    # was a view of (a peer could otherwise pin a 256 KiB buffer per tiny frame).
    me = Identity.generate().public_key
    peering, _recv = make_peering(_StuckStream(), local_key=bytes(me))
    buffer = bytearray(b"h" * 100 + b"payload" + b"t" * 100)
    view = memoryview(buffer).toreadonly()[100:107]
    frame = Traffic((), (), FULL_MASK, b"\x01" * 32, FULL_MASK, 0, view, 10)
    assert peering.enqueue(frame) is None
    queued = peering.queue.pop()
    assert queued is not None and isinstance(queued, Traffic)
    assert type(queued.payload) is bytes and queued.payload == b"payload"
    assert peering.queued_bytes == len(b"payload") + QUEUED_FRAME_OVERHEAD
    del frame
    view.release()
    buffer.extend(b"!")  # the queue exports nothing of the buffer: it can be resized


def _router_tasks() -> list[trio.lowlevel.Task]:
    found, stack = [], [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        if task.name.endswith("_router_task"):
            found.append(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


async def test_an_idle_router_holds_no_inbox_item(autojump_clock: trio.testing.MockClock) -> None:
    # While it waits for the next item, the router task must not keep the last one: a
    # FrameBatch holds its frames, their read buffer and the (maybe ended) peering.
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        await a.send(b.public_key, b"x" * 10)
        with trio.fail_after(30):
            await b.receive()
        await trio.testing.wait_all_tasks_blocked()
        routers = _router_tasks()
        assert len(routers) == 2
        for task in routers:
            assert task.coro.cr_frame is not None
            assert task.coro.cr_frame.f_locals.get("item") is None


async def test_a_direct_handler_error_is_logged_without_a_stray_context(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    # The router's pass runs outside the `except WouldBlock` of its inbox poll, so an
    # error there is logged as itself, not "during handling of WouldBlock".
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]

        def handler(source: bytes, payload: memoryview) -> bool:
            raise RuntimeError("a handler bug")

        b.service(16).set_direct_handler(handler)
        await trio.testing.wait_all_tasks_blocked()
        with caplog.at_level(logging.ERROR, logger="pinecone_trio"):
            await a.service(16).send(b.public_key, b"x")
            with trio.fail_after(30):
                await b.wait_for(lambda: b.counters.receive_drops >= 1)
        errors = [r.exc_info[1] for r in caplog.records if r.exc_info]
        assert isinstance(errors[0], RuntimeError) and errors[0].__context__ is None
        assert b.counters.receive_drops == 1
