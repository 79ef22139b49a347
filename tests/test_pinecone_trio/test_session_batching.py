"""Fewer, fuller packets: delayed ACKs that never go out alone before they are due,
autocorking of part-filled packets, and stream buffers that hand big chunks through
without copying them."""

from __future__ import annotations

import math

import trio
import trio.testing

from pinecone_trio.identity import Identity
from pinecone_trio.sessions import SessionConfig, SessionManager
from pinecone_trio.sessions.engine import Session, StreamState
from pinecone_trio.sessions.streams import RecvSide, SendSide
from pinecone_trio.sessions.testing import EnginePair, open_memory_overlay

PROTO = "/test/1"


def _open_quiet_stream(pair: EnginePair) -> tuple[Session, Session, int]:
    """An established pair with one accepted stream and nothing left in flight."""
    sid = pair.a.open_stream(PROTO)
    assert pair.run_until(lambda: pair.a.stream_status(sid) is StreamState.OPEN, timeout=5)
    b = pair.b
    assert b is not None

    def quiet() -> bool:
        return (
            pair.a._recovery.bytes_in_flight == 0
            and b._recovery.bytes_in_flight == 0
            and not pair.a._acks.has_unacked()
            and not b._acks.has_unacked()
        )

    assert pair.run_until(quiet, timeout=1)  # every ACK exchanged, nothing in flight
    assert not pair.a.wants_to_send(pair.now) and not b.wants_to_send(pair.now)
    return pair.a, b, sid


def _deliver(source: Session, dest: Session, now: float) -> int:
    packets = source.packets_to_send(now)
    for packet in packets:
        dest.receive_packet(packet, now)
    return len(packets)


def test_a_receiver_sends_no_ack_only_packet_before_it_is_due() -> None:
    pair = EnginePair()
    a, b, sid = _open_quiet_stream(pair)
    size = pair.config.max_packet_size
    now = pair.now
    # threshold - 2 packets' worth: with the stream's framing at most threshold - 1
    below = pair.config.ack_eliciting_threshold - 2
    assert below >= 1
    a.stream_write(sid, b"x" * (below * size))
    assert below <= _deliver(a, b, now) < pair.config.ack_eliciting_threshold
    # Nothing to say but an ACK that is not due yet: nothing is sent.
    assert b.packets_to_send(now) == []
    assert b.next_deadline() == now + pair.config.max_ack_delay
    later = now + pair.config.max_ack_delay
    b.handle_timer(later)
    acks = b.packets_to_send(later)
    assert len(acks) == 1
    for packet in acks:
        a.receive_packet(packet, later)
    assert a._recovery.bytes_in_flight == 0


def test_ack_goes_out_at_once_after_the_threshold() -> None:
    config = SessionConfig(ack_eliciting_threshold=4)
    pair = EnginePair(config=config)
    a, b, sid = _open_quiet_stream(pair)
    now = pair.now
    a.stream_write(sid, b"x" * (4 * config.max_packet_size))
    assert _deliver(a, b, now) >= 4
    assert len(b.packets_to_send(now)) == 1  # due at once, no timer


def test_an_ack_rides_along_with_data_even_before_it_is_due() -> None:
    pair = EnginePair()
    a, b, sid = _open_quiet_stream(pair)
    now = pair.now
    a.stream_write(sid, b"ping")
    assert _deliver(a, b, now) == 1
    assert b.stream_read(sid, 100) == b"ping"
    b.stream_write(sid, b"pong")
    replies = b.packets_to_send(now)
    assert len(replies) == 1
    for packet in replies:
        a.receive_packet(packet, now)
    assert a._recovery.bytes_in_flight == 0  # the reply carried the ACK
    assert a.stream_read(sid, 100) == b"pong"


def test_cork_holds_a_part_filled_tail_until_released() -> None:
    pair = EnginePair()
    a, _, sid = _open_quiet_stream(pair)
    size = pair.config.max_packet_size
    now = pair.now
    a.stream_write(sid, b"x" * (size + size // 2))
    first = a.packets_to_send(now, cork=True)
    assert len(first) == 1 and len(first[0]) > size - 200  # one full packet
    assert a.corked
    assert a.packets_to_send(now, cork=True) == []  # the tail is still held
    a.stream_write(sid, b"y" * size)  # the writer added more: full packets again
    second = a.packets_to_send(now, cork=True)
    assert len(second) == 1 and len(second[0]) > size - 200
    assert a.corked
    tail = a.packets_to_send(now)  # uncorked: the rest goes out
    assert len(tail) == 1 and len(tail[0]) < size // 2 + 400
    assert not a.corked


def test_cork_never_holds_a_fin() -> None:
    pair = EnginePair()
    a, b, sid = _open_quiet_stream(pair)
    now = pair.now
    a.stream_write(sid, b"short")
    a.stream_finish(sid)
    assert _deliver_corked(a, b, now) == 1
    assert not a.corked
    assert b.stream_read(sid, 100) == b"short"
    assert b.stream_read(sid, 100) == b""


def _deliver_corked(source: Session, dest: Session, now: float) -> int:
    packets = source.packets_to_send(now, cork=True)
    for packet in packets:
        dest.receive_packet(packet, now)
    return len(packets)


def test_big_received_chunks_are_handed_out_whole_small_ones_joined() -> None:
    recv = RecvSide(1 << 20)
    big1, big2 = b"a" * 60_000, b"b" * 60_000
    recv.on_data(0, big1, False)
    recv.on_data(60_000, big2, False)
    assert recv.read(1 << 20) is big1  # not joined with big2, not copied
    assert recv.read(1 << 20) is big2
    for i in range(10):
        recv.on_data(120_000 + 100 * i, bytes([i]) * 100, False)
    assert recv.read(1 << 20) == b"".join(bytes([i]) * 100 for i in range(10))


def test_a_whole_bytes_write_is_kept_without_a_copy() -> None:
    send = SendSide(1 << 20, 1 << 20)
    data = b"z" * 40_000
    assert send.write(memoryview(data)) == len(data)
    assert send.next_chunk(60_000, 1 << 20)[1] is data
    mutable = bytearray(b"m" * 40_000)
    send.write(memoryview(mutable))
    mutable[:] = b"!" * 40_000  # the application reuses its buffer
    assert send.next_chunk(60_000, 1 << 20)[1] == b"m" * 40_000


async def test_bulk_transfer_sends_full_packets_and_few_acks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ia, ib = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    async with open_memory_overlay(None, seed=0) as overlay, trio.open_nursery() as nursery:
        a = SessionManager(overlay.endpoint(ia.public_key), ia)
        b = SessionManager(overlay.endpoint(ib.public_key), ib)
        await nursery.start(a.run)
        await nursery.start(b.run)
        async with b.listen(PROTO) as listener:
            client = await a.connect(ib.public_key, PROTO)
            server = await listener.accept()
        before_a = a.statistics()["packets_sent"]
        before_b = b.statistics()["packets_sent"]
        block = b"\x5a" * 65_536
        total = 64 * len(block)
        got = 0

        async def sink() -> None:
            nonlocal got
            while data := await server.receive_some(1 << 20):
                got += len(data)

        async with trio.open_nursery() as inner:
            inner.start_soon(sink)
            for _ in range(64):
                await client.send_all(block)
            await client.send_eof()
        assert got == total
        data_packets = a.statistics()["packets_sent"] - before_a
        acks = b.statistics()["packets_sent"] - before_b
        # 64 KiB writes into ~60 KB packets: without corking every write leaves a
        # small tail packet (about 2 packets per write).
        full = math.ceil(total / SessionConfig().max_packet_size)
        assert data_packets <= full + 8
        # One ACK per several packets (the threshold is 8), not one per packet or two.
        assert acks <= data_packets // 3
        nursery.cancel_scope.cancel()


def test_send_buffer_hands_out_views_and_never_pins_a_growing_tail() -> None:
    send = SendSide(1 << 20, 1 << 20)
    first, second = bytes(range(256)) * 100, bytes(reversed(range(256))) * 100
    send.write(memoryview(first))
    send.write(memoryview(second))
    offset, data, _, _ = send.next_chunk(1_000, 1 << 20)  # inside the first chunk
    assert offset == 0 and type(data) is memoryview and data == first[:1_000]
    offset, data, _, _ = send.next_chunk(len(first), 1 << 20)  # across both chunks
    assert data == first[1_000:] + second[:1_000]
    # Small writes grow a bytearray tail; what was handed out from it is a copy, so
    # the tail can keep growing while a packet still holds the earlier bytes.
    send.write(b"abc")
    held = send.next_chunk(1 << 20, 1 << 20)[1]
    send.write(b"def")
    assert held[-3:] == b"abc"
    assert send.next_chunk(1 << 20, 1 << 20)[1] == b"def"
