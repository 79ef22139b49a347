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
bytes given, varu64 at most 10 bytes and not truncated, exact field sizes, no trailing
bytes) and raises `DecodeError` for any malformed input, never anything else.
Unknown frame types decode to `UnknownFrame` (Pinecone drops them silently).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple, final

from ..errors import DecodeError, LocalProtocolError
from ..identity import FULL_MASK
from .constants import (
    FRAME_MAGIC,
    FRAME_VERSION,
    HEADER_SIZE,
    KEY_SIZE,
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
    "decode_coords",
    "decode_frame",
    "decode_varu64",
    "encode_coords",
    "encode_frame",
    "encode_varu64",
    "frame_length",
    "read_frame_length",
]

Coords = tuple[int, ...]

_MAX_U64: Final = (1 << 64) - 1
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


def encode_varu64(value: int) -> bytes:
    """Pinecone's varu64: big-endian base-128, continuation bit 0x80 on all but the last.

    Raises:
        LocalProtocolError: if `value` is negative or does not fit in 64 bits.
    """
    if 0 <= value < 128:
        return _SMALL_VARU64[value]
    if value < 0 or value > _MAX_U64:
        raise LocalProtocolError(f"varu64 out of range: {value}")
    out = bytearray([value & 0x7F])
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.reverse()
    return bytes(out)


def decode_varu64(buf: bytes, offset: int) -> tuple[int, int]:
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
    start = offset + 2
    end = start + n
    if end > len(buf):
        raise DecodeError("truncated coordinates")
    sub = buf[start:end]
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


@final
@dataclass(frozen=True, slots=True)
class Traffic:
    """Type 3: traffic for exactly `destination_key`.

    Tree-routed when `destination_coords` is non-empty; the watermark then is not on the
    wire and decodes as (FULL_MASK, 0).
    """

    destination_coords: Coords
    source_coords: Coords
    destination_key: bytes
    source_key: bytes
    watermark_key: bytes
    watermark_seq: int
    payload: bytes
    hop_limit: int


@final
@dataclass(frozen=True, slots=True)
class ClosestTraffic:
    """Type 5 (ours): traffic for the node whose key is closest to `target_key`.

    "Closest" is the snake's rule: the smallest key >= target, or the root (the highest
    key) when the target is above every key. Always snake-routed, so it always carries a
    watermark.
    """

    source_coords: Coords
    target_key: bytes
    source_key: bytes
    watermark_key: bytes
    watermark_seq: int
    payload: bytes
    hop_limit: int


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


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of `frame`.

    Raises:
        LocalProtocolError: if the frame cannot be expressed (too long, bad field sizes).
    """
    if isinstance(frame, Traffic):
        body = [
            _u16(len(frame.payload)),
            encode_coords(frame.destination_coords),
            encode_coords(frame.source_coords),
            _key(frame.destination_key),
            _key(frame.source_key),
        ]
        if not frame.destination_coords:
            body.append(_key(frame.watermark_key))
            body.append(encode_varu64(frame.watermark_seq))
        body.append(frame.payload)
        b = b"".join(body)
        return _header(FrameType.TRAFFIC, frame.hop_limit, len(b)) + b
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
    if isinstance(frame, ClosestTraffic):
        b = b"".join(
            [
                _u16(len(frame.payload)),
                encode_coords(frame.source_coords),
                _key(frame.target_key),
                _key(frame.source_key),
                _key(frame.watermark_key),
                encode_varu64(frame.watermark_seq),
                frame.payload,
            ]
        )
        return _header(FrameType.CLOSEST_TRAFFIC, frame.hop_limit, len(b)) + b
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
    if len(header) < HEADER_SIZE:
        raise DecodeError("truncated frame header")
    if header[:4] != FRAME_MAGIC:
        raise DecodeError("bad frame magic")
    if header[4] != FRAME_VERSION:
        raise DecodeError(f"unsupported frame version {header[4]}")
    length = int.from_bytes(header[8:10], "big")
    if length < HEADER_SIZE:
        raise DecodeError(f"frame length {length} shorter than the header")
    return length


def decode_frame(data: bytes) -> Frame:
    """Decode exactly one whole frame.

    Raises:
        DecodeError: if `data` is not exactly one valid frame.
    """
    data = bytes(data)
    length = read_frame_length(data)
    if length != len(data):
        raise DecodeError(f"frame length field {length} but {len(data)} bytes given")
    ftype = data[5]
    hop_limit = data[7]
    off = HEADER_SIZE
    if ftype == FrameType.KEEPALIVE:
        if length != HEADER_SIZE:
            raise DecodeError("keepalive with a body")
        return KEEPALIVE
    if ftype == FrameType.TRAFFIC:
        plen, off = _u16_at(data, off)
        dcoords, off = decode_coords(data, off)
        scoords, off = decode_coords(data, off)
        dkey, off = _take(data, off, KEY_SIZE, "destination key")
        skey, off = _take(data, off, KEY_SIZE, "source key")
        wkey, wseq = FULL_MASK, 0
        if not dcoords:
            wkey, off = _take(data, off, KEY_SIZE, "watermark key")
            wseq, off = decode_varu64(data, off)
        payload = _rest(data, off, plen)
        return Traffic(dcoords, scoords, dkey, skey, wkey, wseq, payload, hop_limit)
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
    if ftype == FrameType.CLOSEST_TRAFFIC:
        plen, off = _u16_at(data, off)
        scoords, off = decode_coords(data, off)
        tkey, off = _take(data, off, KEY_SIZE, "target key")
        skey, off = _take(data, off, KEY_SIZE, "source key")
        wkey, off = _take(data, off, KEY_SIZE, "watermark key")
        wseq, off = decode_varu64(data, off)
        payload = _rest(data, off, plen)
        return ClosestTraffic(scoords, tkey, skey, wkey, wseq, payload, hop_limit)
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
