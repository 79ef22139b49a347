"""Optimistic stream opening: OPEN travels with the first data, nobody waits for ACCEPT.

Engine tests run two sans-IO sessions in virtual time (`EnginePair`); the Trio tests
run managers over the in-memory overlay under `MockClock`. What is pinned here: the
opener sends OPEN and data in one packet; data that arrives before its OPEN (the OPEN's
packet lost or overtaken) is kept and delivered once the OPEN comes; a refusal after
optimistic data reaches the opener's next read or write and gives back every byte of
session credit the refused stream used, on both sides; with no room for an early
stream the packet is dropped unacknowledged and re-sent.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from pinecone_trio.errors import StreamRefusedError
from pinecone_trio.identity import Identity
from pinecone_trio.sessions import SessionConfig, SessionManager, wire
from pinecone_trio.sessions.engine import StreamBroken, StreamState
from pinecone_trio.sessions.testing import EnginePair, PathModel, open_memory_overlay

PROTO = "/test/1"
BIG = 1_000  # bytes: anything above this is a packet carrying stream data


def _established(pair: EnginePair) -> None:
    assert pair.run_until(
        lambda: pair.a.established and pair.b is not None and pair.b.established, timeout=30
    )


def _settle(pair: EnginePair, seconds: float) -> None:
    """Run every packet and timer due in the next `seconds` (and nothing later)."""
    limit = pair.now + seconds
    for _ in range(100_000):
        pair._flush()
        when = min(pair.a.next_deadline(), pair.b.next_deadline() if pair.b else math.inf)
        if pair._queue:
            when = min(when, pair._queue[0][0])
        if when > limit or not pair.step():
            return


def _read_all(pair: EnginePair, sid: int, *, timeout: float) -> tuple[bytes, bool]:
    got = bytearray()
    eof = [False]

    def pump() -> None:
        assert pair.b is not None
        if sid not in pair.b._streams and not got:
            return
        try:
            data = pair.b.stream_read(sid, 1 << 20)
        except KeyError:
            return
        if data == b"":
            eof[0] = True
        elif data:
            got.extend(data)

    pair.run_until(lambda: eof[0], timeout=timeout, pump=pump)
    return bytes(got), eof[0]


def _payload(n: int) -> bytes:
    return bytes((i * 31 + i // 251) % 256 for i in range(n))


def test_open_and_first_data_travel_in_one_packet() -> None:
    pair = EnginePair()
    _established(pair)
    sid = pair.a.open_stream(PROTO)
    pair.a.stream_write(sid, b"hello")
    pair.a.stream_finish(sid)
    packets = pair.a.packets_to_send(pair.now)
    assert len(packets) == 1
    assert pair.b is not None
    pair.b.receive_packet(packets[0], pair.now)
    # One packet carried the OPEN and the data: b has the stream and its bytes.
    assert pair.b.stream_status(sid) is StreamState.PENDING
    assert pair.b.stream_read(sid, 100) == b"hello"


def test_a_new_stream_with_nothing_written_is_corked_then_opened_alone() -> None:
    pair = EnginePair()
    _established(pair)
    sid = pair.a.open_stream(PROTO)
    assert pair.a.packets_to_send(pair.now, cork=True) == []
    assert pair.a.corked
    other = pair.a.open_stream(PROTO)
    pair.a.stream_write(other, b"y" * 100)
    pair.a.stream_finish(other)
    assert len(pair.a.packets_to_send(pair.now, cork=True)) == 1  # a FIN is never held
    assert pair.a.corked  # the first stream still waits for its first write
    pair.a.stream_write(sid, b"x")
    # A short tail while a packet is unacknowledged: held while the writer may add more...
    assert pair.a.packets_to_send(pair.now, cork=True) == []
    # ... and sent, OPEN in front, once the driver stops corking.
    assert len(pair.a.packets_to_send(pair.now)) == 1


def test_a_short_first_write_on_an_idle_session_goes_at_once() -> None:
    # Nothing unacknowledged (Linux's autocorking rule): a request or a reply is not
    # held for the writer's next write; the OPEN still rides in front of it.
    pair = EnginePair()
    _established(pair)
    sid = pair.a.open_stream(PROTO)
    assert pair.a.packets_to_send(pair.now, cork=True) == []  # nothing written yet
    pair.a.stream_write(sid, b"x")
    packets = pair.a.packets_to_send(pair.now, cork=True)
    assert len(packets) == 1 and not pair.a.corked
    assert pair.b is not None
    pair.b.receive_packet(packets[0], pair.now)
    assert pair.b.stream_read(sid, 10) == b"x"


def test_data_before_open_is_kept_until_the_open_arrives() -> None:
    pair = EnginePair(model=PathModel(delay=(0.01, 0.01)))
    _established(pair)
    held: list[bytes] = []

    def tap(dest: str, packet: bytes) -> bytes | None:
        if dest == "b" and len(packet) > BIG and not held:
            held.append(packet)  # the packet with OPEN and the first data
            return None
        return packet

    pair.tap = tap
    sid = pair.a.open_stream(PROTO)
    payload = _payload(200_000)
    assert pair.a.stream_write(sid, payload) == len(payload)
    pair.a.stream_finish(sid)
    b = pair.b
    assert b is not None
    assert pair.run_until(lambda: sid in b._streams, timeout=1)
    assert b._streams[sid].state is StreamState.EARLY  # data came first
    assert not pair.incoming["b"]  # nobody was told about it yet
    b.receive_packet(held[0], pair.now)  # the OPEN arrives late (reordered)
    pair._events("b", b)
    pair.tap = None
    assert [e.protocol for e in pair.incoming["b"]] == [PROTO]
    got, eof = _read_all(pair, sid, timeout=30)
    assert eof
    assert got == payload
    assert not pair.a.is_closed
    assert not b.is_closed


def test_lost_open_is_resent_and_the_stream_arrives_intact() -> None:
    pair = EnginePair(model=PathModel(delay=(0.005, 0.005)))
    _established(pair)
    dropped: list[int] = []

    def tap(dest: str, packet: bytes) -> bytes | None:
        if dest == "b" and len(packet) > BIG and not dropped:
            dropped.append(len(packet))
            return None  # lost: OPEN and the first data with it
        return packet

    pair.tap = tap
    sid = pair.a.open_stream(PROTO)
    payload = _payload(300_000)
    pair.a.stream_write(sid, payload)
    pair.a.stream_finish(sid)
    got, eof = _read_all(pair, sid, timeout=30)
    assert dropped
    assert eof
    assert got == payload
    assert pair.a.stats["packets_lost"] >= 1
    assert [e.protocol for e in pair.incoming["b"]] == [PROTO]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_many_optimistic_streams_over_loss_and_reordering(seed: int) -> None:
    model = PathModel(loss=0.1, duplicate=0.05, reorder=0.3, delay=(0.001, 0.05))
    config = SessionConfig(max_packet_size=4_000, handshake_timeout=60, idle_timeout=60)
    pair = EnginePair(model=model, seed=seed, config=config)
    assert pair.run_until(
        lambda: pair.a.established and pair.b is not None and pair.b.established, timeout=60
    )
    payloads = {}
    for i in range(20):
        sid = pair.a.open_stream(PROTO)
        payloads[sid] = _payload(3_000 + 997 * i)
        assert pair.a.stream_write(sid, payloads[sid]) == len(payloads[sid])
        pair.a.stream_finish(sid)
    got: dict[int, bytearray] = {sid: bytearray() for sid in payloads}
    done: set[int] = set()

    def pump() -> None:
        b = pair.b
        assert b is not None
        for sid in payloads:
            if sid in done or sid not in b._streams:
                continue
            if b._streams[sid].state is not StreamState.OPEN:
                continue
            data = b.stream_read(sid, 1 << 20)
            if data == b"":
                done.add(sid)
            elif data:
                got[sid].extend(data)

    assert pair.run_until(lambda: len(done) == len(payloads), timeout=300, pump=pump)
    assert all(bytes(got[sid]) == payloads[sid] for sid in payloads)
    assert len(pair.incoming["b"]) == len(payloads)  # each OPEN surfaced exactly once
    assert not pair.a.is_closed


def test_refusal_after_optimistic_data_gives_all_credit_back() -> None:
    # Windows small enough that leaked credit from the refused streams would stall
    # the accepted one for good.
    config = SessionConfig(stream_window=40_000, session_window=60_000, stream_send_buffer=40_000)
    pair = EnginePair(config=config, model=PathModel(delay=(0.005, 0.005)))
    _established(pair)
    refused = []
    for _ in range(5):
        sid = pair.a.open_stream("/nobody/home")
        assert pair.a.stream_write(sid, _payload(40_000)) == 40_000  # a whole window
        refused.append(sid)
    assert pair.run_until(
        lambda: all(pair.a.stream_status(s) is StreamState.REFUSED for s in refused), timeout=5
    )
    for sid in refused:
        assert pair.a.refusal_reason(sid) == "no listener"
        with pytest.raises(StreamBroken) as info:
            pair.a.stream_read(sid, 100)
        assert info.value.refused
        with pytest.raises(StreamBroken):
            pair.a.stream_write(sid, b"more")
        pair.a.stream_close(sid)
    _settle(pair, 0.5)  # late data for the refused streams
    assert pair.a.stream_count == 0
    assert pair.b is not None
    assert pair.b.stream_count == 0
    sid = pair.a.open_stream(PROTO)
    payload = _payload(150_000)  # more than the session window: needs MAX_DATA
    sent = 0

    def pump() -> None:
        nonlocal sent
        if sent < len(payload):
            sent += pair.a.stream_write(sid, memoryview(payload)[sent:])
            if sent == len(payload):
                pair.a.stream_finish(sid)

    got = bytearray()
    eof = [False]

    def both() -> None:
        pump()
        assert pair.b is not None
        if sid in pair.b._streams:
            data = pair.b.stream_read(sid, 1 << 20)
            if data == b"":
                eof[0] = True
            elif data:
                got.extend(data)

    assert pair.run_until(lambda: eof[0], timeout=30, pump=both)
    assert bytes(got) == payload


def test_reset_before_the_open_arrives() -> None:
    pair = EnginePair(model=PathModel(delay=(0.01, 0.01)))
    _established(pair)
    held: list[bytes] = []

    def tap(dest: str, packet: bytes) -> bytes | None:
        if dest == "b" and len(packet) > BIG and not held:
            held.append(packet)
            return None
        return packet

    pair.tap = tap
    sid = pair.a.open_stream(PROTO)
    pair.a.stream_write(sid, _payload(5_000))
    pair.run_until(lambda: bool(held), timeout=1)
    pair.a.stream_reset(sid, 7)  # RESET_STREAM overtakes the OPEN
    b = pair.b
    assert b is not None
    assert pair.run_until(lambda: sid in b._streams, timeout=1)
    assert b._streams[sid].state is StreamState.EARLY
    assert b._streams[sid].recv.reset_code == 7
    b.receive_packet(held[0], pair.now)
    pair._events("b", b)
    pair.tap = None
    assert [e.protocol for e in pair.incoming["b"]] == [PROTO]
    with pytest.raises(StreamBroken, match="reset the stream"):
        b.stream_read(sid, 100)


def test_no_room_for_an_early_stream_drops_the_packet_until_it_is_resent() -> None:
    config = SessionConfig(max_incoming_streams=1)
    pair = EnginePair(config=config, model=PathModel(delay=(0.005, 0.005)))
    _established(pair)
    b = pair.b
    assert b is not None
    first = pair.a.open_stream(PROTO)
    pair.a.stream_write(first, b"first")
    assert pair.run_until(lambda: b.stream_read(first, 100) == b"first", timeout=5)
    # b is at its limit. A second stream whose data arrives without its OPEN cannot
    # be held: the packet is dropped unacknowledged.
    second = pair.a.open_stream(PROTO)
    pair.a.stream_write(second, b"second")
    packet = pair.a.packets_to_send(pair.now)[0]
    opened = wire.StreamData(second, 0, False, b"second")
    early = pair.a._seal([wire.frame_to_wire(opened)])
    assert early is not None
    b.receive_packet(early, pair.now)
    assert b.stats["dropped_early"] == 1
    assert second not in b._streams
    # The real packet (OPEN and data) is refused outright: too many streams.
    b.receive_packet(packet, pair.now)
    assert pair.run_until(lambda: pair.a.stream_status(second) is StreamState.REFUSED, timeout=5)
    assert "too many streams" in pair.a.refusal_reason(second)
    assert pair.a._send_used == len(b"first")  # the refused stream's credit came back


# ---------------------------------------------------------------- Trio, MockClock


def _identity(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


async def test_connect_returns_before_the_answer_and_refusal_reaches_reads_and_writes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    one_way = 0.01
    config = SessionConfig(stream_window=50_000, session_window=80_000, stream_send_buffer=50_000)
    model = PathModel(delay=(one_way, one_way))
    ia, ib = _identity(1), _identity(2)
    async with open_memory_overlay(model, seed=0) as overlay, trio.open_nursery() as nursery:
        a = SessionManager(overlay.endpoint(ia.public_key), ia, config=config)
        b = SessionManager(overlay.endpoint(ib.public_key), ib, config=config)
        await nursery.start(a.run)
        await nursery.start(b.run)
        await a.wait_session(ib.public_key)
        start = trio.current_time()
        stream = await a.connect(ib.public_key, "/nobody/home")
        assert trio.current_time() == start  # a warm session: nothing waited for
        await stream.send_all(_payload(50_000))  # optimistic, within the initial credit
        with pytest.raises(StreamRefusedError, match="no listener") as info:
            await stream.receive_some()
        assert isinstance(info.value, trio.BrokenResourceError)
        assert info.value.protocol == "/nobody/home"
        # The refusal came one round trip after the OPEN went out.
        assert trio.current_time() - start == pytest.approx(2 * one_way, abs=0.006)
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"more")
        with pytest.raises(StreamRefusedError):
            await stream.wait_accepted()
        await stream.aclose()
        # The session and its credit are intact: more than a session window flows.
        async with b.listen(PROTO) as listener:
            client = await a.connect(ib.public_key, PROTO)
            server = await listener.accept()
            await client.wait_accepted()
            payload = _payload(200_000)

            async def write() -> None:
                await client.send_all(payload)
                await client.send_eof()

            nursery.start_soon(write)
            got = bytearray()
            with trio.fail_after(30):
                while data := await server.receive_some():
                    got.extend(data)
            assert got == payload
        nursery.cancel_scope.cancel()


async def test_a_cold_connect_still_fails_clearly_on_handshake_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # connect waits for the handshake, so a silent key is still connect's error.
    ia = _identity(1)
    async with open_memory_overlay(PathModel(), seed=0) as overlay, trio.open_nursery() as nursery:
        a = SessionManager(overlay.endpoint(ia.public_key), ia)
        await nursery.start(a.run)
        overlay.endpoint(_identity(9).public_key)  # exists, never answers
        with pytest.raises(Exception, match="handshake"):
            await a.connect(_identity(9).public_key, PROTO)
        nursery.cancel_scope.cancel()


def test_a_lost_finish_is_resent_without_any_data_or_ping() -> None:
    # The initiator sends no PING behind FINISH: with nothing else to send, it re-sends
    # FINISH on its handshake timer until something from the responder verifies.
    pair = EnginePair(model=PathModel(delay=(0.01, 0.01)))
    lost: list[bytes] = []

    def tap(dest: str, packet: bytes) -> bytes | None:
        if dest == "b" and packet[0] == wire.FINISH and not lost:
            lost.append(packet)
            return None
        return packet

    pair.tap = tap
    assert pair.run_until(lambda: pair.a.established, timeout=1)
    out = pair.a.packets_to_send(pair.now)
    assert [p[0] for p in out] == [wire.FINISH]  # nothing behind FINISH
    for packet in out:
        tap("b", packet)  # ... and it is lost
    assert pair.run_until(lambda: pair.b is not None and pair.b.established, timeout=5)
    assert lost
    assert pair.now >= pair.config.handshake_retransmit


def test_a_due_accept_goes_out_even_with_the_congestion_window_full() -> None:
    # Otherwise a driver would be told "something to send" and build nothing: a spin.
    pair = EnginePair()
    _established(pair)
    b = pair.b
    assert b is not None
    sid = pair.a.open_stream(PROTO)
    pair.a.stream_write(sid, b"hi")
    for packet in pair.a.packets_to_send(pair.now):
        b.receive_packet(packet, pair.now)
    b.accept_stream(sid)
    b._cc.cwnd = 0  # nothing may be sent under congestion control
    later = pair.now + pair.config.max_ack_delay
    assert b.wants_to_send(later)
    packets = b.packets_to_send(later)
    assert packets
    for packet in packets:
        pair.a.receive_packet(packet, later)
    assert pair.a.stream_status(sid) is StreamState.OPEN
    assert not b.wants_to_send(later)
