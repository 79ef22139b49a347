"""Pinecone's frame codec: header, varu64, coordinates and every frame type.

Theory of operation
-------------------
Frames are immutable, slotted objects (`Keepalive`, `TreeAnnouncement`, `Bootstrap`,
`Traffic`, `ClosestTraffic`, `WakeupBroadcast`, `UnknownFrame`). The router engine only
ever sees these objects; the node encodes and decodes them at the link edge
(`encode_frame` / `decode_frame`) and the simulator may skip the codec entirely.

Layouts and type ids are Pinecone's (research/pinecone.md §3), so its worked examples
are test vectors. Our one addition is type 5, `ClosestTraffic`: traffic for "the node
whose key is closest to this key" (the snake-keyspace DHT), distinct on the wire from
exact-key `Traffic` so no node ever mistakes one for the other.

`Announcement` carries its own encoded body. Signature entry *i* signs the body up to
the start of entry *i* (research §3.5), so appending a hop is `body + entry` and
verification never re-encodes anything.

Decoding validates everything (magic, version, 10 <= length <= 65535, length equals the
bytes given, varu64 at most 10 bytes and not truncated, coordinates at most
`MAX_COORDS_WIRE_SIZE` bytes, exact field sizes, no trailing bytes) and raises
`DecodeError` for any malformed input, never anything else.
Unknown frame types decode to `UnknownFrame` (Pinecone drops them silently).

Fast paths (the relay's per-packet cost): traffic frames, by far the most common, are
decoded straight from the reader's buffer at an offset (`decode_frame_at`: the header
and fixed fields read with precomputed `struct`s, the payload one slice, no copy of the
frame first), and encoded as a list of parts (`encode_frame_parts`) that the writer
joins once for a whole batch of frames. Coordinates whose ports are all below 128 (one
varu64 byte each, the common case: a port number is at most 253 and usually small) are
converted with one `bytes(...)` / `tuple(...)` call, checked with `bytes.isascii()`;
anything else takes the general varu64 path. The bytes on the wire are the same.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple, TypeAlias, final

from ..errors import DecodeError, LocalProtocolError
from ..identity import FULL_MASK
from .constants import (
    FRAME_MAGIC,
    FRAME_VERSION,
    HEADER_SIZE,
    KEY_SIZE,
    MAX_COORDS_WIRE_SIZE,
    MAX_FRAME_SIZE,
    MAX_VARU64_BYTES,
    SIGNATURE_SIZE,
)

__all__ = [
    "FULL_MASK",
    "Announcement",
    "Bootstrap",
    "ClosestTraffic",
    "Coords",
    "Frame",
    "FrameType",
    "Keepalive",
    "KEEPALIVE",
    "SignatureHop",
    "Traffic",
    "TreeAnnouncement",
    "UnknownFrame",
    "WakeupBroadcast",
    "bootstrap_signed_bytes",
    "coords_distance",
    "coords_wire_size",
    "decode_coords",
    "decode_frame",
    "decode_frame_at",
    "decode_varu64",
    "encode_coords",
    "encode_frame",
    "encode_frame_parts",
    "encode_varu64",
    "frame_length",
    "frame_length_at",
    "read_frame_length",
]

Coords = tuple[int, ...]

_MAX_U64: Final = (1 << 64) - 1
#: magic, version, frame type, reserved, hop limit, total length.
_HEADER: Final = struct.Struct(">4sBBBBH")
#: The header followed by the u16 payload (or inner body) length every body starts with.
_HEADER_PLEN: Final = struct.Struct(">4sBBBBHH")
_U16: Final = struct.Struct(">H")
_U16_PAIR: Final = struct.Struct(">HH")
_EMPTY_COORDS: Final = b"\x00\x00"
#: Coordinates longer than the deepest tree an announcement frame can describe are
#: refused by the decoder (a DecodeError, like any malformed field): no correct node
#: sends them, and the router would otherwise cache up to 64 KB per source key.
_MAX_COORDS_BODY: Final = MAX_COORDS_WIRE_SIZE - 2
#: Type ids as plain ints for the fast paths (comparing with an IntEnum member costs an
#: attribute lookup on the enum class each time).
_TRAFFIC: Final = 3
_CLOSEST_TRAFFIC: Final = 5
#: Smallest signature entry: 1-byte port + key + signature.
_MIN_HOP_SIZE: Final = 1 + KEY_SIZE + SIGNATURE_SIZE


class FrameType(IntEnum):
    KEEPALIVE = 0
    TREE_ANNOUNCEMENT = 1
    BOOTSTRAP = 2
    TRAFFIC = 3
    WAKEUP_BROADCAST = 4
    #: Ours: traffic to the node closest to a key (not in Pinecone).
    CLOSEST_TRAFFIC = 5


# --- primitives --------------------------------------------------------------------------

_SMALL_VARU64: Final = tuple(bytes([i]) for i in range(128))
#: Multi-byte varu64s recently encoded and decoded. Watermark sequences (Unix-time
#: bootstrap sequence numbers, five bytes) repeat on every frame of a flow, so the
#: traffic codec looks them up instead of looping over bits. Cleared when full.
_VARU64_CACHE_ENTRIES: Final = 1024
_varu64_encoded: dict[int, bytes] = {}
_varu64_decoded: dict[bytes, int] = {}


def encode_varu64(value: int) -> bytes:
    """Pinecone's varu64: big-endian base-128, continuation bit 0x80 on all but the last.

    Raises:
        LocalProtocolError: if `value` is negative or does not fit in 64 bits.
    """
    if 0 <= value < 128:
        return _SMALL_VARU64[value]
    cached = _varu64_encoded.get(value)
    if cached is not None:
        return cached
    if value < 0 or value > _MAX_U64:
        raise LocalProtocolError(f"varu64 out of range: {value}")
    original = value
    out = bytearray([value & 0x7F])
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.reverse()
    encoded = bytes(out)
    if len(_varu64_encoded) >= _VARU64_CACHE_ENTRIES:
        _varu64_encoded.clear()
    _varu64_encoded[original] = encoded
    return encoded


def decode_varu64(buf: bytes | bytearray, offset: int) -> tuple[int, int]:
    """Decode a varu64 at `offset`; return (value, offset after it).

    Raises:
        DecodeError: if the input ends first, the encoding exceeds 10 bytes, or the
            value exceeds 64 bits.
    """
    value = 0
    end = min(len(buf), offset + MAX_VARU64_BYTES)
    i = offset
    while i < end:
        b = buf[i]
        i += 1
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            if value > _MAX_U64:
                raise DecodeError("varu64 exceeds 64 bits")
            return value, i
    if end - offset >= MAX_VARU64_BYTES:
        raise DecodeError("varu64 longer than 10 bytes")
    raise DecodeError("truncated varu64")


def encode_coords(coords: Coords) -> bytes:
    """Coordinates: a 2-byte big-endian byte length, then each port as a varu64."""
    if not coords:
        return _EMPTY_COORDS
    try:
        small = bytes(coords)
    except (ValueError, TypeError):
        pass  # a port > 255 (or not an int): the general path below decides
    else:
        if small.isascii():  # every port < 128: one varu64 byte each
            return _U16.pack(len(small)) + small
    body = b"".join([encode_varu64(p) for p in coords])
    if len(body) > 0xFFFF:
        raise LocalProtocolError("coordinates too long")
    return len(body).to_bytes(2, "big") + body


def decode_coords(buf: bytes, offset: int) -> tuple[Coords, int]:
    """Decode coordinates at `offset`; return (ports, offset after them).

    Raises:
        DecodeError: on truncation or a malformed port.
    """
    if offset + 2 > len(buf):
        raise DecodeError("truncated coordinates length")
    n = int.from_bytes(buf[offset : offset + 2], "big")
    if n > _MAX_COORDS_BODY:
        raise DecodeError(f"coordinates of {n + 2} bytes > {MAX_COORDS_WIRE_SIZE}")
    start = offset + 2
    end = start + n
    if end > len(buf):
        raise DecodeError("truncated coordinates")
    sub = buf[start:end]
    if sub.isascii():  # every byte < 0x80: each is a whole one-byte varu64
        return tuple(sub), end
    ports: list[int] = []
    i = 0
    while i < n:
        port, i = decode_varu64(sub, i)
        ports.append(port)
    return tuple(ports), end


def coords_distance(a: Coords, b: Coords) -> int:
    """Tree distance: |a| + |b| - 2 * (length of the common prefix)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return len(a) + len(b) - 2 * i


def _take(buf: bytes, offset: int, n: int, what: str) -> tuple[bytes, int]:
    end = offset + n
    if end > len(buf):
        raise DecodeError(f"truncated {what}")
    return buf[offset:end], end


# --- announcements -----------------------------------------------------------------------


class SignatureHop(NamedTuple):
    """One signature entry: the signer's outgoing port, its key and its signature."""

    port: int
    public_key: bytes
    signature: bytes


@final
class Announcement:
    """A root announcement (research §3.5).

    Build one with `Announcement.new(root_key, root_seq)` and `extend(...)`, or with
    `decode_announcement`. Two announcements are equal when their bodies are.

    Routing reads `keys` and `coords` on every announcement, so those (and the
    signatures) are plain tuples kept eagerly; the encoded `body` and the `hops` view
    are built on first use, so a simulation with the null signer and no codec never
    builds them.
    """

    __slots__ = (
        "_body",
        "_parent",
        "_starts",
        "coords",
        "keys",
        "root_key",
        "root_seq",
        "signatures",
    )

    root_key: bytes
    root_seq: int
    #: Every signer key, root first.
    keys: tuple[bytes, ...]
    #: The hop ports: the receiver's coordinates when its parent sent this.
    coords: Coords
    #: Every entry's signature.
    signatures: tuple[bytes, ...]

    def __init__(
        self,
        root_key: bytes,
        root_seq: int,
        keys: tuple[bytes, ...],
        coords: Coords,
        signatures: tuple[bytes, ...],
        body: bytes | None,
        starts: tuple[int, ...] | None,
        parent: Announcement | None,
    ) -> None:
        self.root_key = root_key
        self.root_seq = root_seq
        self.keys = keys
        self.coords = coords
        self.signatures = signatures
        self._body = body
        self._starts = starts
        self._parent = parent

    @classmethod
    def new(cls, root_key: bytes, root_seq: int) -> Announcement:
        """An unsigned announcement as the root originates it."""
        if len(root_key) != KEY_SIZE:
            raise LocalProtocolError("root key must be 32 bytes")
        body = bytes(root_key) + encode_varu64(root_seq)
        return cls(bytes(root_key), root_seq, (), (), (), body, (), None)

    def extend(self, port: int, public_key: bytes, signature: bytes) -> Announcement:
        """This announcement with one more signature entry (the signer signed `body`)."""
        if len(public_key) != KEY_SIZE or len(signature) != SIGNATURE_SIZE or port < 0:
            raise LocalProtocolError("bad port, key or signature size")
        return Announcement(
            self.root_key,
            self.root_seq,
            self.keys + (public_key,),  # noqa: RUF005 (faster than unpacking)
            self.coords + (port,),  # noqa: RUF005
            self.signatures + (signature,),  # noqa: RUF005
            None,
            None,
            self,
        )

    @property
    def hops(self) -> tuple[SignatureHop, ...]:
        """The signature entries, root first."""
        return tuple(map(SignatureHop, self.coords, self.keys, self.signatures))

    def _build(self) -> None:
        parent = self._parent
        assert parent is not None
        pbody = parent.body
        self._starts = (*parent.starts, len(pbody))
        self._body = pbody + encode_varu64(self.coords[-1]) + self.keys[-1] + self.signatures[-1]
        self._parent = None

    @property
    def body(self) -> bytes:
        """The encoded announcement (root key, root seq, every entry)."""
        if self._body is None:
            self._build()
        assert self._body is not None
        return self._body

    @property
    def starts(self) -> tuple[int, ...]:
        """starts[i] is where entry i begins in `body`: entry i signs body[:starts[i]]."""
        if self._starts is None:
            self._build()
        assert self._starts is not None
        return self._starts

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Announcement) and other.body == self.body

    def __hash__(self) -> int:
        return hash(self.body)

    def __repr__(self) -> str:
        return (
            f"Announcement(root={self.root_key[:4].hex()}, seq={self.root_seq},"
            f" coords={list(self.coords)})"
        )


def decode_announcement(body: bytes) -> Announcement:
    """Decode an announcement body (signatures are not checked here).

    Raises:
        DecodeError: if the body is malformed or has trailing bytes.
    """
    root_key, off = _take(body, 0, KEY_SIZE, "root key")
    root_seq, off = decode_varu64(body, off)
    hops: list[SignatureHop] = []
    starts: list[int] = []
    n = len(body)
    while off < n:
        if n - off < _MIN_HOP_SIZE:
            raise DecodeError("trailing bytes after announcement")
        starts.append(off)
        port, off = decode_varu64(body, off)
        key, off = _take(body, off, KEY_SIZE, "signer key")
        sig, off = _take(body, off, SIGNATURE_SIZE, "signature")
        hops.append(SignatureHop(port, key, sig))
    return Announcement(
        root_key,
        root_seq,
        tuple([h.public_key for h in hops]),
        tuple([h.port for h in hops]),
        tuple([h.signature for h in hops]),
        bytes(body),
        tuple(starts),
        None,
    )


# --- frames ------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Keepalive:
    """Type 0: header only; never forwarded."""


#: The one keepalive frame.
KEEPALIVE: Final = Keepalive()


@final
@dataclass(frozen=True, slots=True)
class TreeAnnouncement:
    """Type 1: a root announcement for one hop."""

    announcement: Announcement


@final
@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Type 2: a snake bootstrap, addressed to its origin's own key.

    The body (sequence, root key, root sequence, signature) is flattened into the frame;
    `signature` is the origin's over `bootstrap_signed_bytes(...)`.
    """

    destination_key: bytes
    watermark_key: bytes
    watermark_seq: int
    sequence: int
    root_key: bytes
    root_seq: int
    signature: bytes


Payload: TypeAlias = bytes | memoryview
"""A traffic frame's payload: bytes, or (decoded by `decode_frame_at`) a read-only
view into the reader's receive buffer, which saves copying it out at every hop. Whoever
keeps a payload beyond the router pass that routed it copies it (`bytes(payload)`): a
peering queueing a forwarded frame, the node queueing a datagram."""


class _TrafficFields(NamedTuple):
    destination_coords: Coords
    source_coords: Coords
    destination_key: bytes
    source_key: bytes
    watermark_key: bytes
    watermark_seq: int
    payload: Payload
    hop_limit: int


class _ClosestTrafficFields(NamedTuple):
    source_coords: Coords
    target_key: bytes
    source_key: bytes
    watermark_key: bytes
    watermark_seq: int
    payload: Payload
    hop_limit: int


# Traffic frames are built twice per hop (decoded, then forwarded by the engine); a
# named tuple is built about three times faster than a frozen slotted dataclass and
# reads its fields as fast. `__eq__`/`__hash__` keep the dataclass semantics: a frame
# equals only a frame of the same type with equal fields, never a plain tuple.


def _record_eq(self: tuple[object, ...], other: object) -> bool:
    return type(other) is type(self) and tuple.__eq__(self, other)


def _record_ne(self: tuple[object, ...], other: object) -> bool:
    return not _record_eq(self, other)


@final
class Traffic(_TrafficFields):
    """Type 3: traffic for exactly `destination_key`.

    Tree-routed when `destination_coords` is non-empty; the watermark then is not on the
    wire and decodes as (FULL_MASK, 0). Immutable (a named tuple).
    """

    __slots__ = ()
    __eq__ = _record_eq
    __ne__ = _record_ne
    __hash__ = tuple.__hash__


@final
class ClosestTraffic(_ClosestTrafficFields):
    """Type 5 (ours): traffic for the node whose key is closest to `target_key`.

    "Closest" is the snake's rule: the smallest key >= target, or the root (the highest
    key) when the target is above every key. Always snake-routed, so it always carries a
    watermark. Immutable (a named tuple).
    """

    __slots__ = ()
    __eq__ = _record_eq
    __ne__ = _record_ne
    __hash__ = tuple.__hash__


@final
@dataclass(frozen=True, slots=True)
class WakeupBroadcast:
    """Type 4: a hop-limited "I exist" broadcast (decoded; our engine does not flood it)."""

    source_key: bytes
    sequence: int
    root_key: bytes
    root_seq: int
    signature: bytes
    hop_limit: int


@final
@dataclass(frozen=True, slots=True)
class UnknownFrame:
    """A well-formed header with a type id we do not know; the engine drops it."""

    frame_type: int
    body: bytes


Frame = (
    Keepalive | TreeAnnouncement | Bootstrap | Traffic | ClosestTraffic | WakeupBroadcast
) | UnknownFrame


def bootstrap_signed_bytes(sequence: int, root_key: bytes, root_seq: int) -> bytes:
    """What a bootstrap's (or broadcast's) signature covers: seq || root key || root seq."""
    return encode_varu64(sequence) + root_key + encode_varu64(root_seq)


# --- encoding ----------------------------------------------------------------------------


def _header(frame_type: int, hop_limit: int, body_len: int) -> bytes:
    total = HEADER_SIZE + body_len
    if total > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"frame of {total} bytes exceeds {MAX_FRAME_SIZE}")
    if not 0 <= hop_limit <= 255:
        raise LocalProtocolError("hop limit must fit in one byte")
    return FRAME_MAGIC + bytes((FRAME_VERSION, frame_type, 0, hop_limit)) + total.to_bytes(2, "big")


def _u16(n: int) -> bytes:
    if n > 0xFFFF:
        raise LocalProtocolError("payload too long")
    return n.to_bytes(2, "big")


def encode_frame_parts(frame: Frame, parts: list[bytes | memoryview]) -> int:
    """Append the wire bytes of `frame` to `parts` (possibly as several pieces).

    Returns the encoded length. The writer collects many frames' parts and joins them
    once, so a traffic frame's payload is copied once, into the link write.

    Raises:
        LocalProtocolError: if the frame cannot be expressed (too long, bad field sizes).
    """
    t = type(frame)
    if t is Traffic:
        f: Traffic = frame  # type: ignore[assignment]
        dk = f.destination_key
        sk = f.source_key
        if len(dk) != KEY_SIZE or len(sk) != KEY_SIZE:
            raise LocalProtocolError("keys are 32 bytes")
        payload = f.payload
        dc = f.destination_coords
        sc = f.source_coords
        dcw = encode_coords(dc) if dc else _EMPTY_COORDS
        scw = encode_coords(sc) if sc else _EMPTY_COORDS
        if dc:
            total = HEADER_SIZE + 2 + len(dcw) + len(scw) + 2 * KEY_SIZE + len(payload)
            header = _pack_header(_TRAFFIC, f.hop_limit, total, len(payload))
            parts += (header, dcw, scw, dk, sk, payload)
            return total
        wk = f.watermark_key
        if len(wk) != KEY_SIZE:
            raise LocalProtocolError("keys are 32 bytes")
        ws = encode_varu64(f.watermark_seq)
        total = HEADER_SIZE + 2 + len(dcw) + len(scw) + 3 * KEY_SIZE + len(ws) + len(payload)
        header = _pack_header(_TRAFFIC, f.hop_limit, total, len(payload))
        parts += (header, dcw, scw, dk, sk, wk, ws, payload)
        return total
    if t is ClosestTraffic:
        c: ClosestTraffic = frame  # type: ignore[assignment]
        tk = c.target_key
        sk = c.source_key
        wk = c.watermark_key
        if len(tk) != KEY_SIZE or len(sk) != KEY_SIZE or len(wk) != KEY_SIZE:
            raise LocalProtocolError("keys are 32 bytes")
        payload = c.payload
        sc = c.source_coords
        scw = encode_coords(sc) if sc else _EMPTY_COORDS
        ws = encode_varu64(c.watermark_seq)
        total = HEADER_SIZE + 2 + len(scw) + 3 * KEY_SIZE + len(ws) + len(payload)
        header = _pack_header(_CLOSEST_TRAFFIC, c.hop_limit, total, len(payload))
        parts += (header, scw, tk, sk, wk, ws, payload)
        return total
    encoded = encode_frame(frame)
    parts.append(encoded)
    return len(encoded)


def _pack_header(frame_type: int, hop_limit: int, total: int, plen: int) -> bytes:
    """The 10-byte header and the body's u16 payload length, checked."""
    if total > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"frame of {total} bytes exceeds {MAX_FRAME_SIZE}")
    if not 0 <= hop_limit <= 255:
        raise LocalProtocolError("hop limit must fit in one byte")
    return _HEADER_PLEN.pack(FRAME_MAGIC, FRAME_VERSION, frame_type, 0, hop_limit, total, plen)


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of `frame`.

    Raises:
        LocalProtocolError: if the frame cannot be expressed (too long, bad field sizes).
    """
    t = type(frame)
    if t is Traffic or t is ClosestTraffic:
        parts: list[bytes | memoryview] = []
        encode_frame_parts(frame, parts)
        return b"".join(parts)
    if isinstance(frame, Bootstrap):
        inner = bootstrap_signed_bytes(frame.sequence, _key(frame.root_key), frame.root_seq)
        inner += _sig(frame.signature)
        b = b"".join(
            [
                _u16(len(inner)),
                _key(frame.destination_key),
                _key(frame.watermark_key),
                encode_varu64(frame.watermark_seq),
                inner,
            ]
        )
        return _header(FrameType.BOOTSTRAP, 0, len(b)) + b
    if isinstance(frame, TreeAnnouncement):
        body_bytes = frame.announcement.body
        b = _u16(len(body_bytes)) + body_bytes
        return _header(FrameType.TREE_ANNOUNCEMENT, 0, len(b)) + b
    if isinstance(frame, Keepalive):
        return _header(FrameType.KEEPALIVE, 0, 0)
    if isinstance(frame, WakeupBroadcast):
        inner = bootstrap_signed_bytes(frame.sequence, _key(frame.root_key), frame.root_seq)
        inner += _sig(frame.signature)
        b = _u16(len(inner)) + _key(frame.source_key) + inner
        return _header(FrameType.WAKEUP_BROADCAST, frame.hop_limit, len(b)) + b
    if isinstance(frame, UnknownFrame):
        if frame.frame_type in FrameType._value2member_map_ or not 0 <= frame.frame_type <= 255:
            raise LocalProtocolError("UnknownFrame must carry an unknown type id")
        return _header(frame.frame_type, 0, len(frame.body)) + frame.body
    raise LocalProtocolError(f"not a frame: {frame!r}")


def _key(k: bytes) -> bytes:
    if len(k) != KEY_SIZE:
        raise LocalProtocolError("keys are 32 bytes")
    return k


def _sig(s: bytes) -> bytes:
    if len(s) != SIGNATURE_SIZE:
        raise LocalProtocolError("signatures are 64 bytes")
    return s


def coords_wire_size(c: Coords) -> int:
    """Bytes `c` takes on the wire (the u16 length included)."""
    return _coords_len(c)


def _coords_len(c: Coords) -> int:
    n = 2
    for p in c:
        n += 1 if p < 128 else len(encode_varu64(p))
    return n


def _varu64_len(v: int) -> int:
    return 1 if v < 128 else len(encode_varu64(v))


def frame_length(frame: Frame) -> int:
    """The encoded size of `frame` in bytes, computed without encoding it."""
    if isinstance(frame, Traffic):
        n = HEADER_SIZE + 2 + _coords_len(frame.destination_coords)
        n += _coords_len(frame.source_coords) + 2 * KEY_SIZE + len(frame.payload)
        if not frame.destination_coords:
            n += KEY_SIZE + _varu64_len(frame.watermark_seq)
        return n
    if isinstance(frame, Bootstrap):
        return (
            HEADER_SIZE
            + 2
            + 3 * KEY_SIZE
            + SIGNATURE_SIZE
            + _varu64_len(frame.watermark_seq)
            + _varu64_len(frame.sequence)
            + _varu64_len(frame.root_seq)
        )
    if isinstance(frame, TreeAnnouncement):
        return HEADER_SIZE + 2 + len(frame.announcement.body)
    if isinstance(frame, ClosestTraffic):
        return (
            HEADER_SIZE
            + 2
            + _coords_len(frame.source_coords)
            + 3 * KEY_SIZE
            + _varu64_len(frame.watermark_seq)
            + len(frame.payload)
        )
    if isinstance(frame, Keepalive):
        return HEADER_SIZE
    if isinstance(frame, WakeupBroadcast):
        return (
            HEADER_SIZE
            + 2
            + 2 * KEY_SIZE
            + SIGNATURE_SIZE
            + _varu64_len(frame.sequence)
            + _varu64_len(frame.root_seq)
        )
    return HEADER_SIZE + len(frame.body)


# --- decoding ----------------------------------------------------------------------------


def read_frame_length(header: bytes) -> int:
    """Validate a 10-byte header and return the total frame length it announces.

    The stream reader calls this, then reads `length - 10` more bytes.

    Raises:
        DecodeError: on a short header, bad magic, unknown version or a length < 10.
    """
    return frame_length_at(header, 0)


def frame_length_at(buf: bytes | bytearray, off: int) -> int:
    """`read_frame_length` of the header at `buf[off:]`, without slicing it out.

    Raises:
        DecodeError: on a short header, bad magic, unknown version or a length < 10.
    """
    if len(buf) - off < HEADER_SIZE:
        raise DecodeError("truncated frame header")
    magic, version, _, _, _, length = _HEADER.unpack_from(buf, off)
    if magic != FRAME_MAGIC:
        raise DecodeError("bad frame magic")
    if version != FRAME_VERSION:
        raise DecodeError(f"unsupported frame version {version}")
    if length < HEADER_SIZE:
        raise DecodeError(f"frame length {length} shorter than the header")
    return int(length)


def decode_frame_at(buf: bytes | bytearray, start: int, end: int) -> Frame:
    """Decode the one whole frame that is exactly `buf[start:end]`, without copying it.

    The reader calls this on its receive buffer after `read_frame_length` told it where
    the frame ends. Traffic frames take a fast path: their payload is a read-only view
    of `buf` (see `Payload`; `buf` must not change while the frame lives), their keys
    are bytes. The rest go through `decode_frame`.

    Raises:
        DecodeError: if `buf[start:end]` is not exactly one valid frame.
    """
    if end - start < HEADER_SIZE + 2 or end > len(buf):
        return decode_frame(bytes(buf[start:end]))
    magic, version, ftype, _, hop_limit, length, plen = _HEADER_PLEN.unpack_from(buf, start)
    if (
        magic != FRAME_MAGIC
        or version != FRAME_VERSION
        or length != end - start
        or (ftype != _TRAFFIC and ftype != _CLOSEST_TRAFFIC)
    ):
        return decode_frame(bytes(buf[start:end]))
    off = start + HEADER_SIZE + 2
    view = memoryview(buf).toreadonly()
    if ftype == _TRAFFIC:
        dcoords, off = _coords_at(buf, off, end)
        scoords, off = _coords_at(buf, off, end)
        if off + 2 * KEY_SIZE > end:
            raise DecodeError("truncated keys")
        dkey = bytes(buf[off : off + KEY_SIZE])
        skey = bytes(buf[off + KEY_SIZE : off + 2 * KEY_SIZE])
        off += 2 * KEY_SIZE
        if dcoords:
            if end - off != plen:
                raise DecodeError("payload length does not match the frame length")
            return Traffic(dcoords, scoords, dkey, skey, FULL_MASK, 0, view[off:end], hop_limit)
        if off + KEY_SIZE > end:
            raise DecodeError("truncated watermark key")
        wkey = bytes(buf[off : off + KEY_SIZE])
        off += KEY_SIZE
        stop = end - plen  # the watermark sequence fills buf[off:stop]
        wseq = _varu64_filling(buf, off, stop)
        return Traffic(dcoords, scoords, dkey, skey, wkey, wseq, view[stop:end], hop_limit)
    scoords, off = _coords_at(buf, off, end)
    if off + 3 * KEY_SIZE > end:
        raise DecodeError("truncated keys")
    tkey = bytes(buf[off : off + KEY_SIZE])
    skey = bytes(buf[off + KEY_SIZE : off + 2 * KEY_SIZE])
    wkey = bytes(buf[off + 2 * KEY_SIZE : off + 3 * KEY_SIZE])
    stop = end - plen  # the watermark sequence fills buf[off + 96:stop]
    wseq = _varu64_filling(buf, off + 3 * KEY_SIZE, stop)
    return ClosestTraffic(scoords, tkey, skey, wkey, wseq, view[stop:end], hop_limit)


def _coords_at(buf: bytes | bytearray, off: int, end: int) -> tuple[Coords, int]:
    """Coordinates at `off` in a frame ending at `end`."""
    if off + 2 > end:
        raise DecodeError("truncated coordinates length")
    (n,) = _U16.unpack_from(buf, off)
    if n > _MAX_COORDS_BODY:
        raise DecodeError(f"coordinates of {n + 2} bytes > {MAX_COORDS_WIRE_SIZE}")
    start = off + 2
    stop = start + n
    if stop > end:
        raise DecodeError("truncated coordinates")
    if n == 0:
        return (), stop
    sub = buf[start:stop]
    if sub.isascii():  # every byte < 0x80: each is a whole one-byte varu64
        return tuple(sub), stop
    ports: list[int] = []
    i = 0
    while i < n:
        port, i = decode_varu64(sub, i)
        ports.append(port)
    return tuple(ports), stop


def _varu64_filling(buf: bytes | bytearray, off: int, stop: int) -> int:
    """The varu64 that must be exactly `buf[off:stop]` (the payload length, known from
    the frame, says where it ends)."""
    if stop - off == 1 and buf[off] < 0x80:
        return buf[off]
    if stop <= off:
        raise DecodeError("payload length does not match the frame length")
    raw = bytes(buf[off:stop])
    value = _varu64_decoded.get(raw)
    if value is None:
        value, n = decode_varu64(raw, 0)
        if n != len(raw):
            raise DecodeError("payload length does not match the frame length")
        if len(_varu64_decoded) >= _VARU64_CACHE_ENTRIES:
            _varu64_decoded.clear()
        _varu64_decoded[raw] = value
    return value


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame; a traffic payload is bytes of its own (the
    reader's fast path, `decode_frame_at`, gives views instead).

    Raises:
        DecodeError: if `data` is not exactly one valid frame.
    """
    data = bytes(data)
    length = read_frame_length(data)
    if length != len(data):
        raise DecodeError(f"frame length field {length} but {len(data)} bytes given")
    ftype = data[5]
    if ftype == FrameType.TRAFFIC or ftype == FrameType.CLOSEST_TRAFFIC:
        if length < HEADER_SIZE + 2:
            raise DecodeError("truncated payload length")
        frame = decode_frame_at(data, 0, length)
        return frame._replace(payload=bytes(frame.payload))  # type: ignore[union-attr]
    hop_limit = data[7]
    off = HEADER_SIZE
    if ftype == FrameType.KEEPALIVE:
        if length != HEADER_SIZE:
            raise DecodeError("keepalive with a body")
        return KEEPALIVE
    if ftype == FrameType.BOOTSTRAP:
        plen, off = _u16_at(data, off)
        dkey, off = _take(data, off, KEY_SIZE, "destination key")
        wkey, off = _take(data, off, KEY_SIZE, "watermark key")
        wseq, off = decode_varu64(data, off)
        inner = _rest(data, off, plen)
        seq, rkey, rseq, sig = _decode_signed_body(inner)
        return Bootstrap(dkey, wkey, wseq, seq, rkey, rseq, sig)
    if ftype == FrameType.TREE_ANNOUNCEMENT:
        plen, off = _u16_at(data, off)
        return TreeAnnouncement(decode_announcement(_rest(data, off, plen)))
    if ftype == FrameType.WAKEUP_BROADCAST:
        plen, off = _u16_at(data, off)
        skey, off = _take(data, off, KEY_SIZE, "source key")
        seq, rkey, rseq, sig = _decode_signed_body(_rest(data, off, plen))
        return WakeupBroadcast(skey, seq, rkey, rseq, sig, hop_limit)
    return UnknownFrame(ftype, data[HEADER_SIZE:])


def _u16_at(buf: bytes, off: int) -> tuple[int, int]:
    raw, off = _take(buf, off, 2, "payload length")
    return int.from_bytes(raw, "big"), off


def _rest(buf: bytes, off: int, expected: int) -> bytes:
    if len(buf) - off != expected:
        raise DecodeError("payload length does not match the frame length")
    return buf[off:]


def _decode_signed_body(inner: bytes) -> tuple[int, bytes, int, bytes]:
    seq, off = decode_varu64(inner, 0)
    rkey, off = _take(inner, off, KEY_SIZE, "root key")
    rseq, off = decode_varu64(inner, off)
    sig, off = _take(inner, off, SIGNATURE_SIZE, "signature")
    if off != len(inner):
        raise DecodeError("trailing bytes after signature")
    return seq, rkey, rseq, sig
