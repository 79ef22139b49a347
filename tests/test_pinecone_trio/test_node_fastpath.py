"""The node's per-packet fast path: one router inbox item per read, in order, with a
bad frame in the middle of a read handled, and back-pressure from a busy router."""

from __future__ import annotations

import trio
import trio.testing

from pinecone_trio.identity import FULL_MASK
from pinecone_trio.node import Datagram
from pinecone_trio.peering import READ_TIMEOUT, FrameBatch, InboxItem, Peering
from pinecone_trio.router.wire import Bootstrap, Traffic, encode_frame
from pinecone_trio.testing import open_network

from .peering_helpers import make_peering

DEST = bytes(range(32))
SRC = bytes(range(100, 132))


def _traffic(n: int) -> Traffic:
    return Traffic((1, 2), (3,), DEST, SRC, FULL_MASK, 0, n.to_bytes(4, "big") * 64, 200)


def _snake_traffic(n: int) -> Traffic:
    return Traffic((), (3, 200), DEST, SRC, SRC, 1_763_700_000 + n, b"p%d" % n, 200)


def _peering(
    stream: trio.abc.Stream, keepalives: bool = False
) -> tuple[Peering, trio.MemoryReceiveChannel[InboxItem]]:
    return make_peering(stream, port=7, keepalives=keepalives)


async def _next_batch(recv: trio.MemoryReceiveChannel[InboxItem]) -> FrameBatch:
    with trio.fail_after(5):
        item = await recv.receive()
    assert isinstance(item, FrameBatch)
    return item


async def test_one_read_is_one_batch_in_order(autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    peering, recv = _peering(ours)
    frames = [_traffic(i) if i % 2 else _snake_traffic(i) for i in range(100)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peering.run)
        await theirs.send_all(b"".join(encode_frame(f) for f in frames))
        batch = await _next_batch(recv)
        assert batch.port == 7
        assert batch.frames == frames  # every frame, decoded, in the order sent
        assert peering.statistics.frames_in == 100
        # A frame cut across two reads is put together again.
        wire = encode_frame(_traffic(500)) + encode_frame(_snake_traffic(501))
        batch.done()
        await theirs.send_all(wire[:200])
        await trio.sleep(1)
        assert recv.statistics().current_buffer_used == 0  # nothing whole yet
        await theirs.send_all(wire[200:])
        batch = await _next_batch(recv)
        assert batch.frames == [_traffic(500), _snake_traffic(501)]
        nursery.cancel_scope.cancel()


async def test_a_bad_frame_mid_read_hands_over_what_came_before_and_ends_the_peering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    peering, recv = _peering(ours)
    good = [_traffic(i) for i in range(3)]
    bad = bytearray(encode_frame(_traffic(9)))
    bad[12] = 0xFF  # destination coordinates now claim 65,000-odd bytes
    after = [_traffic(i) for i in range(10, 12)]
    wire = b"".join(encode_frame(f) for f in good) + bytes(bad)
    wire += b"".join(encode_frame(f) for f in after)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peering.run)
            await theirs.send_all(wire)
            batch = await _next_batch(recv)
            assert batch.frames == good
            batch.done()
            await peering.wait_ended()
    assert peering.misbehaved
    assert peering.end_reason.startswith("misbehaving")
    assert recv.statistics().current_buffer_used == 0  # nothing after the bad frame


async def test_a_bad_first_frame_hands_over_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    peering, recv = _peering(ours)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peering.run)
            await theirs.send_all(b"PINE" + encode_frame(_traffic(1))[4:])
            await peering.wait_ended()
    assert peering.misbehaved
    assert recv.statistics().current_buffer_used == 0


async def test_one_batch_in_flight_per_peering(autojump_clock: trio.testing.MockClock) -> None:
    # Until the router finished a peering's batch, its reader hands over nothing more
    # and stops reading (TCP then pushes back on the peer); a long wait for a busy
    # router does not count as a silent peer.
    ours, theirs = trio.testing.memory_stream_pair()
    peering, recv = _peering(ours, keepalives=True)
    chunk = [encode_frame(_traffic(i)) for i in range(3)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peering.run)
        await theirs.send_all(chunk[0])
        first = await _next_batch(recv)
        await theirs.send_all(chunk[1])
        await trio.testing.wait_all_tasks_blocked()  # the reader took chunk 1 and waits
        assert peering.statistics.bytes_in == len(chunk[0]) + len(chunk[1])
        await theirs.send_all(chunk[2])
        await trio.sleep(3 * READ_TIMEOUT)  # virtual time
        assert recv.statistics().current_buffer_used == 0
        assert peering.statistics.bytes_in == len(chunk[0]) + len(chunk[1])  # not read
        assert not peering.closed
        first.done()
        second = await _next_batch(recv)
        assert second.frames == [_traffic(1)]
        second.done()
        third = await _next_batch(recv)
        assert third.frames == [_traffic(2)]
        nursery.cancel_scope.cancel()


async def test_protocol_frames_and_keepalives_in_a_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    peering, recv = _peering(ours)
    boot = Bootstrap(DEST, FULL_MASK, 0, 5, SRC, 1, b"s" * 64)
    keepalive = bytes.fromhex("70696e650000000000 0a".replace(" ", ""))
    wire = encode_frame(_traffic(1)) + keepalive + encode_frame(boot) + encode_frame(_traffic(2))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peering.run)
        await theirs.send_all(wire)
        batch = await _next_batch(recv)
        assert batch.frames == [_traffic(1), boot, _traffic(2)]  # keepalives stay out
        assert peering.statistics.frames_in == 4
        nursery.cancel_scope.cancel()


async def test_datagrams_keep_their_order_across_relays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b"), ("b", "c"), ("c", "d")]) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        a, d = net["a"], net["d"]
        got: list[int] = []
        count = 3000

        async def sink() -> None:
            while len(got) < count:
                dg: Datagram = await d.receive()
                assert dg.source_key == a.public_key
                got.append(int.from_bytes(dg.payload[:4], "big"))

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sink)
                for i in range(count):
                    await a.send(d.public_key, i.to_bytes(4, "big") + b"x" * 1020)
        assert got == list(range(count))
        assert sum(d.status()["router"]["dropped"].values()) == 0
