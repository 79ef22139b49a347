"""The router's wire codec: Pinecone's vectors, round trips, and DecodeError on garbage."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pinecone_trio.errors import DecodeError, LocalProtocolError
from pinecone_trio.identity import FULL_MASK, Identity
from pinecone_trio.router.constants import MAX_COORDS_WIRE_SIZE
from pinecone_trio.router.signer import Ed25519Signer
from pinecone_trio.router.wire import (
    KEEPALIVE,
    Announcement,
    Bootstrap,
    ClosestTraffic,
    Frame,
    Traffic,
    TreeAnnouncement,
    UnknownFrame,
    WakeupBroadcast,
    coords_distance,
    decode_coords,
    decode_frame,
    decode_frame_at,
    decode_varu64,
    encode_coords,
    encode_frame,
    encode_frame_parts,
    encode_varu64,
    frame_length,
    frame_length_at,
    read_frame_length,
)

# --- research §2.2 / §2.3 vectors ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8100"),
        (5000, "a708"),
        (2**64 - 1, "81ffffffffffffffff7f"),
    ],
)
def test_varu64_vectors(value: int, encoded: str) -> None:
    assert encode_varu64(value).hex() == encoded
    assert decode_varu64(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)


def test_varu64_rejects_long_truncated_and_oversized() -> None:
    with pytest.raises(DecodeError, match="longer than 10"):
        decode_varu64(b"\x80" * 10 + b"\x00", 0)
    with pytest.raises(DecodeError, match="truncated"):
        decode_varu64(b"\x81\x80", 0)
    with pytest.raises(DecodeError, match="truncated"):
        decode_varu64(b"", 0)
    with pytest.raises(DecodeError, match="64 bits"):
        decode_varu64(b"\x82" + b"\xff" * 8 + b"\x7f", 0)  # 2**64 + ...
    with pytest.raises(LocalProtocolError):
        encode_varu64(-1)
    with pytest.raises(LocalProtocolError):
        encode_varu64(2**64)


@given(st.integers(0, 2**64 - 1))
def test_varu64_round_trip(value: int) -> None:
    enc = encode_varu64(value)
    assert 1 <= len(enc) <= 10
    assert decode_varu64(b"junk" + enc + b"more", 4) == (value, 4 + len(enc))


def test_coordinate_vectors() -> None:
    assert encode_coords(()).hex() == "0000"
    assert encode_coords((1, 2, 3, 4, 5000)).hex() == "000601020304a708"
    assert decode_coords(bytes.fromhex("000601020304a708"), 0) == ((1, 2, 3, 4, 5000), 8)
    assert coords_distance((1, 3, 5, 3, 4), (1, 3, 5, 7, 6, 1)) == 5
    assert coords_distance((), ()) == 0
    assert coords_distance((), (1, 2)) == 2


def test_coordinates_reject_truncation() -> None:
    with pytest.raises(DecodeError):
        decode_coords(b"\x00", 0)
    with pytest.raises(DecodeError):
        decode_coords(b"\x00\x03\x01\x02", 0)
    with pytest.raises(DecodeError):
        decode_coords(b"\x00\x01\x81", 0)  # a port cut in half by the length


# --- research §3.4 worked examples ---------------------------------------------------------

DEST = bytes(range(32))
SRC = bytes(range(32, 64))


def _traffic(dcoords: tuple[int, ...]) -> Traffic:
    return Traffic(dcoords, (4, 3, 2, 1), DEST, SRC, FULL_MASK, 0, b"ABCDEFG", 0)


def test_worked_example_tree_routed_traffic_is_97_bytes() -> None:
    f = _traffic((1, 2, 3, 4, 5000))
    wire = encode_frame(f)
    expected = (
        b"pine\x00\x03\x00\x00\x00\x61"  # magic, version 0, type 3, extra, hop limit, 97
        + b"\x00\x07"  # payload length
        + bytes.fromhex("000601020304a708")  # destination coords
        + bytes.fromhex("000404030201")  # source coords
        + DEST
        + SRC
        + b"ABCDEFG"
    )
    assert len(wire) == 97 == 10 + 2 + 8 + 6 + 32 + 32 + 7
    assert wire == expected
    assert decode_frame(wire) == f
    assert frame_length(f) == 97


def test_worked_example_snake_routed_traffic_is_124_bytes() -> None:
    f = _traffic(())
    wire = encode_frame(f)
    expected = (
        b"pine\x00\x03\x00\x00\x00\x7c"
        + b"\x00\x07"
        + b"\x00\x00"
        + bytes.fromhex("000404030201")
        + DEST
        + SRC
        + FULL_MASK
        + b"\x00"
        + b"ABCDEFG"
    )
    assert len(wire) == 124 == 10 + 2 + 2 + 6 + 32 + 32 + 32 + 1 + 7
    assert wire == expected
    assert decode_frame(wire) == f


def test_keepalive_is_the_bare_header() -> None:
    assert encode_frame(KEEPALIVE) == b"pine\x00\x00\x00\x00\x00\x0a"
    assert decode_frame(b"pine\x00\x00\x00\x00\x00\x0a") is KEEPALIVE


def test_signed_announcement_layout_and_signatures() -> None:
    root = Identity.from_seed(b"\x01" * 32)
    mid = Identity.from_seed(b"\x02" * 32)
    ann = Announcement.new(bytes(root.public_key), 7)
    ann = ann.extend(3, bytes(root.public_key), root.sign(ann.body))
    ann = ann.extend(200, bytes(mid.public_key), mid.sign(ann.body))
    # root key, varu64 seq, then (port, key, signature) entries
    assert ann.body[:33] == bytes(root.public_key) + b"\x07"
    assert ann.starts == (33, 33 + 97)
    assert ann.body[33] == 3 and ann.body[130:132] == b"\x81\x48"  # 200 as varu64
    assert len(ann.body) == 33 + 97 + 98
    assert ann.coords == (3, 200)
    frame = decode_frame(encode_frame(TreeAnnouncement(ann)))
    assert isinstance(frame, TreeAnnouncement)
    got = frame.announcement
    assert got == ann and got.keys == ann.keys and got.coords == (3, 200)
    signer = Ed25519Signer(mid)
    for hop, start in zip(got.hops, got.starts, strict=True):
        assert signer.verify(hop.public_key, got.body[:start], hop.signature)


# --- round trips -------------------------------------------------------------------------

keys = st.binary(min_size=32, max_size=32)
sigs = st.binary(min_size=64, max_size=64)
u64 = st.integers(0, 2**64 - 1)
ports = st.integers(0, 2**64 - 1)
coords = st.lists(ports, max_size=12).map(tuple)
hop_limits = st.integers(0, 255)
payloads = st.binary(max_size=300)


@st.composite
def announcements(draw: st.DrawFn) -> Announcement:
    ann = Announcement.new(draw(keys), draw(u64))
    for _ in range(draw(st.integers(0, 6))):
        ann = ann.extend(draw(ports), draw(keys), draw(sigs))
    return ann


frames: st.SearchStrategy[Frame] = st.one_of(
    st.just(KEEPALIVE),
    announcements().map(TreeAnnouncement),
    st.builds(Bootstrap, keys, keys, u64, u64, keys, u64, sigs),
    st.builds(
        Traffic,
        st.lists(ports, min_size=1, max_size=12).map(tuple),
        coords,
        keys,
        keys,
        st.just(FULL_MASK),
        st.just(0),
        payloads,
        hop_limits,
    ),
    st.builds(Traffic, st.just(()), coords, keys, keys, keys, u64, payloads, hop_limits),
    st.builds(ClosestTraffic, coords, keys, keys, keys, u64, payloads, hop_limits),
    st.builds(WakeupBroadcast, keys, u64, keys, u64, sigs, hop_limits),
    st.builds(UnknownFrame, st.integers(6, 255), st.binary(max_size=100)),
)


@given(frames)
def test_every_frame_round_trips(frame: Frame) -> None:
    wire = encode_frame(frame)
    assert len(wire) == frame_length(frame)
    assert read_frame_length(wire[:10]) == len(wire)
    assert decode_frame(wire) == frame


@given(frames, st.data())
def test_every_truncation_or_extension_is_a_decode_error(frame: Frame, data: st.DataObject) -> None:
    wire = encode_frame(frame)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(DecodeError):
        decode_frame(wire[:cut])
    with pytest.raises(DecodeError):
        decode_frame(wire + b"\x00")


@given(frames, st.data())
def test_inner_length_mismatch_is_a_decode_error(frame: Frame, data: st.DataObject) -> None:
    """Cutting the body but fixing the header length must still fail cleanly."""
    wire = encode_frame(frame)
    assume(len(wire) > 10 and not isinstance(frame, UnknownFrame))
    cut = data.draw(st.integers(10, len(wire) - 1))
    short = wire[:8] + cut.to_bytes(2, "big") + wire[10:cut]
    with pytest.raises(DecodeError):
        decode_frame(short)


@given(st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_raise_decode_error(blob: bytes) -> None:
    framed = b"pine\x00" + blob[:3] + (10 + len(blob[3:])).to_bytes(2, "big") + blob[3:]
    for data in (blob, framed):
        try:
            frame = decode_frame(data)
        except DecodeError:
            continue
        assert decode_frame(encode_frame(frame)) == frame


@given(st.integers(0, 5), st.binary(max_size=200))
def test_known_types_with_random_bodies(ftype: int, body: bytes) -> None:
    data = b"pine\x00" + bytes([ftype]) + b"\x00\x00" + (10 + len(body)).to_bytes(2, "big") + body
    try:
        frame = decode_frame(data)
    except DecodeError:
        return
    # Anything accepted re-encodes to the same bytes (no ambiguity in the layouts),
    # except the hop limit byte of types that do not carry one.
    assert decode_frame(encode_frame(frame)) == frame


def test_header_checks() -> None:
    good = encode_frame(KEEPALIVE)
    with pytest.raises(DecodeError, match="magic"):
        read_frame_length(b"PINE" + good[4:])
    with pytest.raises(DecodeError, match="version"):
        read_frame_length(good[:4] + b"\x01" + good[5:])
    with pytest.raises(DecodeError, match="shorter than the header"):
        read_frame_length(good[:8] + b"\x00\x09")
    with pytest.raises(DecodeError, match="truncated"):
        read_frame_length(good[:9])
    with pytest.raises(DecodeError):
        decode_frame(good[:9] + b"\x0b" + b"x")  # keepalive with a body


def test_encoder_refuses_what_cannot_be_expressed() -> None:
    with pytest.raises(LocalProtocolError):
        encode_frame(Traffic((), (), DEST, SRC, FULL_MASK, 0, b"x" * 65535, 0))
    with pytest.raises(LocalProtocolError):
        encode_frame(Traffic((), (), DEST[:5], SRC, FULL_MASK, 0, b"", 0))
    with pytest.raises(LocalProtocolError):
        encode_frame(Traffic((), (), DEST, SRC, FULL_MASK, 0, b"", 256))
    with pytest.raises(LocalProtocolError):
        encode_frame(UnknownFrame(3, b""))


# --- the fast paths: decode at an offset, encode as parts, small-port coordinates -------

small_coords = st.lists(st.integers(0, 127), max_size=12).map(tuple)
traffic_frames: st.SearchStrategy[Frame] = st.one_of(
    st.builds(
        Traffic,
        st.lists(st.integers(0, 127), min_size=1, max_size=12).map(tuple),
        small_coords,
        keys,
        keys,
        st.just(FULL_MASK),
        st.just(0),
        payloads,
        hop_limits,
    ),
    st.builds(Traffic, st.just(()), small_coords, keys, keys, keys, u64, payloads, hop_limits),
    st.builds(ClosestTraffic, small_coords, keys, keys, keys, u64, payloads, hop_limits),
)


@given(st.one_of(traffic_frames, frames), st.binary(max_size=20), st.binary(max_size=20))
def test_decode_at_an_offset_and_encode_as_parts(frame: Frame, before: bytes, after: bytes) -> None:
    parts: list[bytes | memoryview] = [before]
    length = encode_frame_parts(frame, parts)
    wire = b"".join(parts[1:])
    assert wire == encode_frame(frame) and length == len(wire) == frame_length(frame)
    # The reader decodes from whatever the link handed it: bytes, or a bytearray.
    for buf in (before + wire + after, bytearray(before + wire + after)):
        assert frame_length_at(buf, len(before)) == length
        decoded = decode_frame_at(buf, len(before), len(before) + length)
        assert decoded == frame == decode_frame(wire)
        if isinstance(decoded, (Traffic, ClosestTraffic)):
            # The public whole-frame decoder gives bytes, as before views existed.
            whole = decode_frame(wire)
            assert isinstance(whole, (Traffic, ClosestTraffic))
            assert type(whole.payload) is bytes
            # The payload is a read-only view of the buffer, not a copy; the keys are
            # bytes of their own (hashable, and they outlive the buffer).
            payload = decoded.payload
            assert type(payload) is memoryview and payload.readonly and payload.obj is buf
            first = decoded.destination_key if isinstance(decoded, Traffic) else decoded.target_key
            assert type(first) is bytes and type(decoded.source_key) is bytes
            assert type(decoded.watermark_key) is bytes
        else:
            assert hash(decoded) == hash(frame)  # protocol frames hold bytes only


@given(traffic_frames, st.data())
def test_fast_path_truncations_are_decode_errors(frame: Frame, data: st.DataObject) -> None:
    wire = encode_frame(frame)
    cut = data.draw(st.integers(10, len(wire) - 1))
    short = wire[:8] + cut.to_bytes(2, "big") + wire[10:cut]  # header fixed up
    with pytest.raises(DecodeError):
        decode_frame_at(b"xx" + short + b"yy", 2, 2 + len(short))


@given(small_coords)
def test_small_port_coordinates_match_the_general_varu64_encoding(c: tuple[int, ...]) -> None:
    general = len(c).to_bytes(2, "big") + b"".join(encode_varu64(p) for p in c)
    assert encode_coords(c) == general
    assert decode_coords(general, 0) == (c, len(general))


def test_varu64_caches_never_change_results() -> None:
    # Watermark sequences go through small caches on both sides; a cached value must
    # come back the same, and a malformed encoding must fail even after a good one of
    # the same value was cached.
    frame = Traffic((), (1,), DEST, SRC, SRC, 1_763_700_123, b"payload", 9)
    wire = encode_frame(frame)
    for _ in range(3):
        assert encode_frame(frame) == wire
        assert decode_frame(wire) == frame
    seq = encode_varu64(1_763_700_123)
    at = wire.index(seq)
    padded = wire[:at] + b"\x80" * 7 + seq + wire[at + len(seq) :]  # > 10 varu64 bytes
    padded = padded[:8] + len(padded).to_bytes(2, "big") + padded[10:]
    with pytest.raises(DecodeError):
        decode_frame(padded)
    with pytest.raises(LocalProtocolError):
        encode_varu64(-1)
    with pytest.raises(LocalProtocolError):
        encode_varu64(2**64)


def test_frame_length_at_checks_the_header_in_place() -> None:
    buf = b"junk" + encode_frame(KEEPALIVE)
    assert frame_length_at(buf, 4) == 10
    with pytest.raises(DecodeError, match="magic"):
        frame_length_at(buf, 0)
    with pytest.raises(DecodeError, match="truncated"):
        frame_length_at(buf, 5)


def test_traffic_frames_compare_like_frozen_records() -> None:
    # Traffic frames are named tuples (cheap to build); they still equal only frames
    # of their own type with equal fields, hash consistently and cannot be changed.
    t = Traffic((1,), (2,), DEST, SRC, FULL_MASK, 0, b"x", 5)
    c = ClosestTraffic((2,), DEST, SRC, FULL_MASK, 0, b"x", 5)
    assert t == Traffic((1,), (2,), DEST, SRC, FULL_MASK, 0, b"x", 5)
    assert t != tuple(t) and tuple(t) != t and c != tuple(c)
    assert t != Traffic((1,), (2,), DEST, SRC, FULL_MASK, 0, b"y", 5)
    assert len({t, Traffic(*t), c, ClosestTraffic(*c)}) == 2
    with pytest.raises(AttributeError):
        t.hop_limit = 4  # type: ignore[misc]


def test_coordinates_longer_than_any_tree_are_refused_by_the_decoder() -> None:
    body = MAX_COORDS_WIRE_SIZE - 2
    longest = (5,) * body
    assert decode_coords(encode_coords(longest), 0) == (longest, MAX_COORDS_WIRE_SIZE)
    with pytest.raises(DecodeError):
        decode_coords(encode_coords((5,) * (body + 1)), 0)
    with pytest.raises(DecodeError):  # two-byte ports: the byte length is what counts
        decode_coords(encode_coords((200,) * (body // 2 + 1)), 0)
    # The same inside every frame that carries coordinates, on both decode paths.
    for coords, ok in (((5,) * (body + 1), False), (longest, True)):
        for frame in (
            Traffic((1,), coords, DEST, SRC, FULL_MASK, 0, b"x", 9),
            Traffic(coords, (1,), DEST, SRC, FULL_MASK, 0, b"x", 9),
            Traffic((), coords, DEST, SRC, DEST, 7, b"x", 9),
            ClosestTraffic(coords, DEST, SRC, DEST, 7, b"x", 9),
        ):
            wire = encode_frame(frame)
            if ok:
                assert decode_frame(wire) == frame
                assert decode_frame_at(b"ab" + wire, 2, 2 + len(wire)) == frame
                continue
            with pytest.raises(DecodeError):
                decode_frame(wire)
            with pytest.raises(DecodeError):
                decode_frame_at(b"ab" + wire, 2, 2 + len(wire))
