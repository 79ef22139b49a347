"""Stream completion, flow-control accounting and packet sizing at their edges.

Each test here failed before its fix (found by a review of the session engine):

* a stream whose FIN was acknowledged before an earlier packet was declared lost was
  forgotten, so the lost bytes were never sent again and the reader hung on the gap;
* a reader that closed while the peer was still sending counted the bytes that came
  after its STOP_SENDING twice when the peer's RESET_STREAM arrived, and bytes that
  came after the stream was forgotten not at all: the session's credit drifted until
  the session stalled for good;
* out-of-order segments at shifting offsets were each kept whole, so a peer could make
  us hold hundreds of times the stream window;
* a datagram's protocol name was counted in characters, not UTF-8 bytes, so a packet
  could exceed the overlay's limit (on a node the refused send crashed the node);
* a full-size datagram waited behind the room kept for an ACK that was not due yet.
"""

from __future__ import annotations

import math

import trio
import trio.testing

from pinecone_trio.sessions import SessionConfig, wire
from pinecone_trio.sessions.engine import Session
from pinecone_trio.sessions.testing import EnginePair, PathModel
from pinecone_trio.testing import open_network

PROTO = "/test/1"
SMALL = SessionConfig(
    stream_window=64 * 1024,
    session_window=128 * 1024,
    stream_send_buffer=64 * 1024,
    max_packet_size=1200,
)


def _established(pair: EnginePair) -> tuple[Session, Session]:
    assert pair.run_until(
        lambda: pair.a.established and pair.b is not None and pair.b.established, timeout=30
    )
    assert pair.b is not None
    return pair.a, pair.b


def test_a_lost_packet_before_an_acknowledged_fin_is_still_sent_again() -> None:
    pair = EnginePair(config=SessionConfig(max_packet_size=1200))
    a, b = _established(pair)
    sid = a.open_stream(PROTO)
    payload = bytes(range(256)) * 40  # about nine packets
    assert a.stream_write(sid, payload) == len(payload)
    a.stream_close(sid)  # FIN after the data, and STOP_SENDING: a wants nothing back
    dropped = []

    def lose_packet_8(dest: str, packet: bytes) -> bytes | None:
        if dest == "b" and packet[0] == wire.TRANSPORT and not dropped:
            _, _, pn = wire.TRANSPORT_HEADER.unpack_from(packet)
            if pn == 8:  # the packet just before the FIN's, once
                dropped.append(pn)
                return None
        return packet

    pair.tap = lose_packet_8
    got = bytearray()
    eof = []

    def read() -> None:
        if sid in b._streams:
            data = b.stream_read(sid, 1 << 20)
            if data == b"":
                eof.append(True)
            elif data:
                got.extend(data)

    assert pair.run_until(lambda: bool(eof), timeout=60, pump=read)
    assert dropped and bytes(got) == payload


def _round(pair: EnginePair, request: int, response: int, lose_tail: bool) -> None:
    """a asks, b answers `response` bytes, a closes before the answer is all in (so b
    gets STOP_SENDING and resets); with `lose_tail`, b's packets after its third are
    lost (b never re-sends them: its half was stopped)."""
    a, b = pair.a, pair.b
    assert b is not None
    sid = a.open_stream(PROTO)
    a.stream_write(sid, b"q" * request)
    written = 0

    def answer() -> None:
        nonlocal written
        stream = b._streams.get(sid)
        if stream is None or stream.state.name != "OPEN":
            return
        if stream.recv.buffered:
            b.stream_read(sid, 1 << 20)  # b reads the request (its credit flows back)
        if written < response:
            try:
                written += b.stream_write(sid, b"z" * (response - written))
            except Exception:  # the stream was reset under us: the answer is over
                written = response

    pair.run_until(
        lambda: sid in a._streams and a._streams[sid].recv.highest > 0, timeout=5, pump=answer
    )
    a.stream_close(sid)
    seen = [0]

    def tap(dest: str, packet: bytes) -> bytes | None:
        if lose_tail and dest == "a" and len(packet) > 1000:
            seen[0] += 1
            if seen[0] > 3:
                return None
        return packet

    pair.tap = tap
    pair.run_until(lambda: False, timeout=3, pump=answer)
    pair.tap = None


def _assert_books_balance(pair: EnginePair) -> None:
    a, b = pair.a, pair.b
    assert b is not None
    # Nothing is buffered anywhere: what a consumed is what it received, which is what
    # b sent; no stream is left waiting for a final size.
    assert a._recv_consumed == a._recv_highest == b._send_used
    assert not a._streams


def test_reset_after_stop_counts_each_byte_once() -> None:
    pair = EnginePair(config=SMALL, model=PathModel(delay=(0.005, 0.005)))
    _established(pair)
    for _ in range(5):
        _round(pair, request=40_000, response=60_000, lose_tail=False)
    _assert_books_balance(pair)


def test_bytes_after_a_stop_are_counted_even_when_lost() -> None:
    pair = EnginePair(config=SMALL, model=PathModel(delay=(0.005, 0.005)))
    _established(pair)
    for _ in range(5):
        _round(pair, request=3, response=60_000, lose_tail=True)
    _assert_books_balance(pair)


def test_many_stopped_answers_never_stall_the_session() -> None:
    pair = EnginePair(config=SMALL, model=PathModel(delay=(0.005, 0.005)))
    a, b = _established(pair)
    for _ in range(400):  # enough rounds to exhaust the session window if credit leaked
        _round(pair, request=3, response=60_000, lose_tail=True)
    sid = a.open_stream(PROTO)
    a.stream_write(sid, b"hi")
    got = bytearray()
    answered = []

    def pump() -> None:
        stream = b._streams.get(sid)
        if stream is not None and stream.state.name == "OPEN" and not answered:
            b.stream_write(sid, b"r" * 1000)
            b.stream_finish(sid)
            answered.append(True)
        if sid in a._streams:
            got.extend(a.stream_read(sid, 1 << 20) or b"")

    assert pair.run_until(lambda: len(got) == 1000, timeout=120, pump=pump)


def test_overlapping_out_of_order_segments_are_held_once() -> None:
    config = SessionConfig(stream_window=256 * 1024, session_window=256 * 1024)
    pair = EnginePair(config=config)
    a, b = _established(pair)
    sid = a.open_stream(PROTO)
    a.stream_write(sid, b"x")
    assert pair.run_until(lambda: sid in b._streams, timeout=5)
    chunk = bytes(range(250)) * 240  # 60,000 bytes
    for offset in range(2, 3002):  # byte 1 never comes: nothing turns contiguous
        packet = a._seal([[wire.STREAM, sid, offset, False, chunk]])
        assert packet is not None
        b.receive_packet(packet, pair.now)
    assert not b.is_closed
    recv = b._streams[sid].recv
    held = sum(len(piece) for piece in recv._pending.values())
    assert held == 3000 + len(chunk) - 1 <= config.stream_window  # each byte once
    # The missing byte comes: every held byte lands in order, intact.
    packet = a._seal([[wire.STREAM, sid, 1, False, b"!"]])
    assert packet is not None
    b.receive_packet(packet, pair.now)
    data = b.stream_read(sid, 1 << 30)
    assert data is not None
    data += b.stream_read(sid, 1 << 30) or b""
    while recv.buffered:
        data += b.stream_read(sid, 1 << 30) or b""
    expected = bytearray(b"x!")
    for offset in range(2, 3002):  # the first segment to reach a byte wrote it
        if offset + len(chunk) > len(expected):
            expected += chunk[len(expected) - offset :]
    assert bytes(data) == bytes(expected)
    assert not recv._pending


def _max_size_packets(a: Session, now: float) -> list[int]:
    return [len(p) for p in a.packets_to_send(now)]


def test_packets_with_non_ascii_protocol_datagrams_fit_the_limit() -> None:
    config = SessionConfig()
    pair = EnginePair(config=config)
    a, _ = _established(pair)
    proto = "\u20ac" * 85  # 85 characters, 255 UTF-8 bytes: the longest legal name
    assert len(proto.encode()) == 255
    assert a.send_datagram(proto, b"x" * 10)
    assert a.send_datagram(proto, b"y" * a.max_datagram_size(proto))
    sid = a.open_stream(PROTO)
    a.stream_write(sid, bytes(1_000_000))
    assert a.send_datagram("\U0001f600" * 63, b"hello")  # 252 bytes of emoji
    sizes = _max_size_packets(a, pair.now)
    assert len(sizes) >= 3 and max(sizes) <= config.max_packet_size


def test_a_full_size_datagram_does_not_wait_for_a_pending_ack() -> None:
    pair = EnginePair(config=SessionConfig())
    a, b = _established(pair)
    sid = b.open_stream(PROTO)
    b.stream_write(sid, b"p" * 5000)
    # Deliver b's data to a without letting a answer: a now owes an ACK, not yet due.
    for packet in b.packets_to_send(pair.now):
        a.receive_packet(packet, pair.now)
    assert a._acks.has_unacked() and not a._acks.ack_due(pair.now)
    proto = "/dgram"
    assert a.send_datagram(proto, b"d" * a.max_datagram_size(proto))
    assert a.wants_to_send(pair.now)
    packets = a.packets_to_send(pair.now)
    assert len(packets) == 1 and len(packets[0]) <= a.config.max_packet_size
    assert a._acks.has_unacked()  # the ACK waits for its own time
    b_events_before = len(b.events)
    b.receive_packet(packets[0], pair.now)
    assert any(type(e).__name__ == "DatagramReceived" for e in b.events[b_events_before:])


async def test_a_node_sends_two_long_named_datagrams_in_one_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two datagrams queued in one scheduler pass went into one oversized packet, the
    # overlay refused it with ValueError and the node crashed.
    proto = "\u20ac" * 85
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        size = a.sessions.max_datagram_size(proto)
        await a.sessions.wait_session(b.public_key)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_datagram, b.public_key, proto, b"x" * 10)
            nursery.start_soon(a.send_datagram, b.public_key, proto, b"y" * size)
        got = set()
        with trio.fail_after(30):
            while len(got) < 2:
                source, data = await b.receive_datagram(proto)
                assert source == a.public_key
                got.add(len(data))
        assert got == {10, size}
        assert math.isfinite(trio.current_time())
