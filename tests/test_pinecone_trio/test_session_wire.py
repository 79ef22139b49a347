"""Session wire codecs, the replay window, the packet cipher and range bookkeeping."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinecone_trio.errors import DecodeError
from pinecone_trio.sessions import wire
from pinecone_trio.sessions.config import MAX_ACK_RANGES, SESSION_VERSION, SessionConfig
from pinecone_trio.sessions.crypto import PacketCipher, ReplayWindow
from pinecone_trio.sessions.recovery import AckTracker
from pinecone_trio.sessions.streams import RangeSet, RecvSide

u62 = st.integers(0, (1 << 62) - 1)
small = st.integers(0, 1 << 32)
names = st.text(min_size=1, max_size=40)


@st.composite
def acks(draw: st.DrawFn) -> wire.Ack:
    n = draw(st.integers(1, MAX_ACK_RANGES))
    points = sorted(draw(st.sets(st.integers(0, 1 << 40), min_size=2 * n, max_size=2 * n)))
    # Turn sorted points into disjoint, non-adjacent ranges, then descend.
    ranges: list[tuple[int, int]] = []
    for i in range(0, len(points), 2):
        lo, hi = points[i], points[i + 1]
        if ranges and lo <= ranges[-1][0] + 1:
            continue
        ranges.append((hi, lo))
    return wire.Ack(draw(small), tuple(reversed(ranges)))


frames = st.one_of(
    st.just(wire.Ping()),
    acks(),
    st.builds(wire.StreamData, u62, st.integers(0, 1 << 40), st.booleans(), st.binary(max_size=64)),
    st.builds(wire.Open, u62, names),
    st.builds(wire.Accept, u62),
    st.builds(wire.Refuse, u62, st.text(max_size=40)),
    st.builds(wire.ResetStream, u62, small, u62),
    st.builds(wire.StopSending, u62, small),
    st.builds(wire.MaxData, u62),
    st.builds(wire.MaxStreamData, u62, u62),
    st.builds(wire.Datagram, names, st.binary(max_size=64)),
    st.builds(wire.Close, small, st.text(max_size=40)),
)


@given(st.lists(frames, max_size=20))
def test_frames_round_trip(items: list[wire.Frame]) -> None:
    plaintext = wire.encode_payload([wire.frame_to_wire(f) for f in items])
    assert wire.decode_payload(plaintext) == items


@given(
    st.lists(frames, max_size=20),
    st.lists(st.integers(0, 1 << 40), min_size=1, max_size=3),
    st.lists(st.binary(max_size=300), min_size=1, max_size=4),
    st.sampled_from([0, 200, 300, 70_000]),
)
def test_stream_data_in_pieces_encodes_exactly_as_joined(
    items: list[wire.Frame], offsets: list[int], pieces: list[bytes], pad: int
) -> None:
    # The send path hands STREAM data spanning buffer chunks over as a list of pieces;
    # the plaintext must be byte for byte what msgpack makes of the joined data, for
    # every size class of the bin header (8, 16 and 32-bit lengths).
    pieces = [*pieces, b"p" * pad]
    joined = b"".join(pieces)
    wired = [wire.frame_to_wire(f) for f in items]
    expected = list(wired)
    for offset in offsets:
        views: list[bytes | memoryview] = [memoryview(p) for p in pieces]
        wired.append([wire.STREAM, 4, offset, False, views])
        expected.append([wire.STREAM, 4, offset, False, joined])
    assert wire.encode_payload(wired) == wire.encode_payload(expected)


@given(st.binary(max_size=300))
def test_garbage_payload_only_raises_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wire.decode_payload(data)


@given(st.lists(frames, min_size=1, max_size=5), st.data())
def test_mutated_payload_only_raises_decode_error(
    items: list[wire.Frame], data: st.DataObject
) -> None:
    plaintext = bytearray(wire.encode_payload([wire.frame_to_wire(f) for f in items]))
    i = data.draw(st.integers(0, len(plaintext) - 1))
    plaintext[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(plaintext)))
    with contextlib.suppress(DecodeError):
        wire.decode_payload(bytes(plaintext[:cut]))


@pytest.mark.parametrize(
    "bad",
    [
        [SESSION_VERSION + 1],  # another version
        [SESSION_VERSION, [wire.STREAM, -1, 0, False, b""]],  # negative id
        [SESSION_VERSION, [wire.STREAM, 1, 0, 1, b""]],  # fin not a bool
        [SESSION_VERSION, [wire.ACK, 0, 5, 7]],  # low above high
        [SESSION_VERSION, [wire.ACK, 0, 9, 8, 8, 7]],  # overlapping ranges
        [SESSION_VERSION, [wire.OPEN, 1, ""]],  # empty protocol
        [SESSION_VERSION, [wire.OPEN, 1, "x" * 256]],  # protocol too long
        [SESSION_VERSION, [99]],  # unknown frame
        [SESSION_VERSION, [wire.MAX_DATA, True]],  # bool is not an int
    ],
)
def test_invalid_frames_are_refused(bad: list[object]) -> None:
    import msgpack

    with pytest.raises(DecodeError):
        wire.decode_payload(msgpack.packb(bad))


def test_hello_round_trip_and_limits() -> None:
    hello = wire.Hello(b"k" * 32, b"s" * 64)
    assert wire.decode_hello(wire.encode_hello(hello)) == hello
    with pytest.raises(DecodeError):
        wire.decode_hello(b"\x93\x01\x02\x03")


def test_handshake_header_checks() -> None:
    message = b"e" * 32
    packet = wire.encode_initiation(7, message)
    decoded = wire.decode_handshake_packet(packet)
    assert (decoded.kind, decoded.sender, decoded.message) == (wire.INITIATION, 7, message)
    response = wire.encode_response(wire.RESPONSE, 1, 2, message)
    assert wire.handshake_receiver(response) == 2
    with pytest.raises(DecodeError, match="version"):
        wire.decode_handshake_packet(bytes([wire.INITIATION, 99]) + packet[2:])
    with pytest.raises(DecodeError):
        wire.decode_handshake_packet(packet[:10])
    with pytest.raises(DecodeError):
        wire.decode_handshake_packet(packet + b"x" * 2000)


def test_replay_window() -> None:
    window = ReplayWindow(64)
    for pn in (0, 1, 5, 3):
        assert window.check(pn)
        window.mark(pn)
    assert not window.check(3)
    assert not window.check(5)
    assert window.check(4)
    window.mark(100)
    assert not window.check(30)  # more than a window behind
    assert window.check(99)
    window.mark(1 << 63)  # a huge jump forgets everything without a huge integer
    assert not window.check(100)
    assert window.check((1 << 63) - 1)


def test_packet_cipher_binds_number_and_header() -> None:
    cipher = PacketCipher(b"k" * 32)
    sealed = cipher.seal(5, b"hdr", b"payload")
    assert cipher.open(5, b"hdr", sealed) == b"payload"
    assert cipher.open(6, b"hdr", sealed) is None
    assert cipher.open(5, b"hdX", sealed) is None
    assert cipher.open(5, b"hdr", sealed[:-1] + bytes([sealed[-1] ^ 1])) is None


@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 50), st.booleans()), max_size=60))
def test_range_set_matches_a_set(ops: list[tuple[int, int, bool]]) -> None:
    ranges = RangeSet()
    model: set[int] = set()
    for start, length, add in ops:
        if add:
            ranges.add(start, start + length)
            model |= set(range(start, start + length))
        else:
            ranges.remove(start, start + length)
            model -= set(range(start, start + length))
    flat = {i for s, e in ranges.ranges() for i in range(s, e)}
    assert flat == model
    pairs = ranges.ranges()
    assert all(e1 < s2 for (_, e1), (s2, _) in itertools.pairwise(pairs))


@given(st.lists(st.integers(0, 300), max_size=200))
def test_ack_tracker_ranges(pns: list[int]) -> None:
    tracker = AckTracker()
    seen: set[int] = set()
    for pn in pns:
        if pn in seen:
            continue
        seen.add(pn)
        tracker.on_packet(pn, True, 0.0, 0.01)
    ranges = tracker.ranges()
    covered = {pn for hi, lo in ranges for pn in range(lo, hi + 1)}
    assert covered <= seen
    if len(ranges) < MAX_ACK_RANGES:
        assert covered == seen
    for (hi1, lo1), (hi2, _) in itertools.pairwise(ranges):
        assert lo1 > hi2 + 1 and lo1 <= hi1


@given(st.data())
def test_reassembly_delivers_each_byte_once_in_order(data: st.DataObject) -> None:
    payload = bytes(range(256)) * 4
    recv = RecvSide(SessionConfig().stream_window)
    cuts = sorted(data.draw(st.sets(st.integers(1, len(payload) - 1), max_size=20)))
    bounds = [0, *cuts, len(payload)]
    segments = [(a, payload[a:b]) for a, b in itertools.pairwise(bounds)]
    # Duplicates and re-cut overlapping retransmissions, in any order.
    extra = data.draw(st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 100)), max_size=10))
    segments += [(a, payload[a : a + n]) for a, n in extra if a < len(payload)]
    order = data.draw(st.permutations(segments))
    out = bytearray()
    for offset, chunk in order:
        recv.on_data(offset, chunk, offset + len(chunk) == len(payload))
        out += recv.read(1 << 20)
    assert bytes(out) == payload
    assert recv.eof
