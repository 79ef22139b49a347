"""Session wire format: packet headers and the msgpack frame codecs.

Every session packet is one overlay datagram. Its first byte is the packet type:

```
INITIATION  1 | version u8 | sender index u32 | Noise XX message 1 (e)
RESPONSE    2 | version u8 | sender index u32 | receiver index u32 | message 2 (e, ee, s, es)
FINISH      3 | version u8 | sender index u32 | receiver index u32 | message 3 (s, se)
TRANSPORT   4 | receiver index u32 | packet number u64 | ChaCha20-Poly1305 ciphertext
```

Integers are big-endian. Indices are random 32-bit session ids each side picks for
itself (WireGuard's sender/receiver index), so a packet finds its session without
trusting the overlay's unauthenticated source key. The 13-byte TRANSPORT header is the
AEAD's associated data.

The plaintext of a TRANSPORT packet is one msgpack array `[version, frame, frame, ...]`
and every frame is itself an array with a leading type tag:

```
PING             [0]
ACK              [1, ack_delay_us, hi0, lo0, hi1, lo1, ...]   ranges descending, inclusive
STREAM           [2, stream_id, offset, fin, data]
OPEN             [3, stream_id, protocol]
ACCEPT           [4, stream_id]
REFUSE           [5, stream_id, reason]
RESET_STREAM     [6, stream_id, code, final_size]
STOP_SENDING     [7, stream_id, code]
MAX_DATA         [8, limit]
MAX_STREAM_DATA  [9, stream_id, limit]
DATAGRAM         [10, protocol, data]
CLOSE            [11, code, reason]
```

The Noise handshake payload of messages 2 and 3 is `[HELLO_TAG, version,
identity_key, signature]`. Sizes are checked before decoding and decoding validates
every field; anything else raises `DecodeError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

import msgpack

from ..errors import DecodeError
from .config import (
    MAX_ACK_RANGES,
    MAX_FRAMES_PER_PACKET,
    MAX_OFFSET,
    MAX_PACKET_SIZE_LIMIT,
    MAX_PROTOCOL_NAME,
    MAX_REASON,
    MAX_STREAM_ID,
    SESSION_VERSION,
)

INITIATION: Final = 1
RESPONSE: Final = 2
FINISH: Final = 3
TRANSPORT: Final = 4

_HS1 = struct.Struct(">BBI")
_HS23 = struct.Struct(">BBII")
TRANSPORT_HEADER: Final = struct.Struct(">BIQ")
TRANSPORT_HEADER_SIZE: Final = TRANSPORT_HEADER.size  # 13
AEAD_TAG_SIZE: Final = 16

#: Largest Noise handshake message we accept (XX message 2 with our payload is ~250 B).
MAX_HANDSHAKE_MESSAGE: Final = 1024

HELLO_TAG: Final = 0x48
IDENTITY_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64

PING: Final = 0
ACK: Final = 1
STREAM: Final = 2
OPEN: Final = 3
ACCEPT: Final = 4
REFUSE: Final = 5
RESET_STREAM: Final = 6
STOP_SENDING: Final = 7
MAX_DATA: Final = 8
MAX_STREAM_DATA: Final = 9
DATAGRAM: Final = 10
CLOSE: Final = 11

#: Upper bound on the msgpack bytes of a STREAM or DATAGRAM frame beyond its data
#: (array header 1, tag 1, id 9, offset 9, fin 1, bin header 5, with slack).
STREAM_FRAME_OVERHEAD: Final = 32
#: Upper bound on the bytes of the `[version, ...]` array header.
PAYLOAD_OVERHEAD: Final = 8
#: Upper bound on a control frame with a name or reason of at most `MAX_REASON` bytes.
CONTROL_FRAME_MAX: Final = MAX_REASON + 32


def ack_frame_size(n_ranges: int) -> int:
    """Upper bound on the encoded size of an ACK frame with `n_ranges` ranges."""
    return 16 + 18 * n_ranges


# ---------------------------------------------------------------- packet headers


@dataclass(frozen=True, slots=True)
class HandshakePacket:
    """A decoded INITIATION, RESPONSE or FINISH packet."""

    kind: int
    sender: int
    receiver: int  # 0 for INITIATION
    message: bytes


def encode_initiation(sender: int, message: bytes) -> bytes:
    return _HS1.pack(INITIATION, SESSION_VERSION, sender) + message


def encode_response(kind: int, sender: int, receiver: int, message: bytes) -> bytes:
    return _HS23.pack(kind, SESSION_VERSION, sender, receiver) + message


def decode_handshake_packet(packet: bytes) -> HandshakePacket:
    """Decode a handshake packet's header.

    Raises:
        DecodeError: on an unknown type or version, or a bad length.
    """
    if len(packet) < _HS1.size:
        raise DecodeError("handshake packet too short")
    kind, version = packet[0], packet[1]
    if version != SESSION_VERSION:
        raise DecodeError(f"unsupported session version {version}")
    if kind == INITIATION:
        _, _, sender = _HS1.unpack_from(packet)
        receiver, start = 0, _HS1.size
    elif kind in (RESPONSE, FINISH):
        if len(packet) < _HS23.size:
            raise DecodeError("handshake packet too short")
        _, _, sender, receiver = _HS23.unpack_from(packet)
        start = _HS23.size
    else:
        raise DecodeError(f"not a handshake packet (type {kind})")
    message = packet[start:]
    if not 32 <= len(message) <= MAX_HANDSHAKE_MESSAGE:
        raise DecodeError(f"handshake message of {len(message)} bytes")
    return HandshakePacket(kind, sender, receiver, bytes(message))


def packet_kind(packet: bytes | memoryview) -> int:
    """The type byte of a packet (0 for an empty one)."""
    return packet[0] if packet else 0


def transport_receiver(packet: bytes | memoryview) -> int | None:
    """The receiver index of a TRANSPORT packet, or None if it cannot be one."""
    if len(packet) < TRANSPORT_HEADER_SIZE + AEAD_TAG_SIZE or packet[0] != TRANSPORT:
        return None
    return int.from_bytes(packet[1:5], "big")


def handshake_receiver(packet: bytes | memoryview) -> int | None:
    """The receiver index of a RESPONSE or FINISH packet, or None."""
    if len(packet) < _HS23.size or packet[0] not in (RESPONSE, FINISH):
        return None
    return int.from_bytes(packet[6:10], "big")


# ---------------------------------------------------------------- handshake payload


@dataclass(frozen=True, slots=True)
class Hello:
    """The identity proof inside Noise messages 2 and 3."""

    identity_key: bytes
    signature: bytes


def encode_hello(hello: Hello) -> bytes:
    return msgpack.packb([HELLO_TAG, SESSION_VERSION, hello.identity_key, hello.signature])  # type: ignore[no-any-return]


def decode_hello(data: bytes) -> Hello:
    """Decode a handshake payload.

    Raises:
        DecodeError: if it is not a valid HELLO of our version.
    """
    if len(data) > MAX_HANDSHAKE_MESSAGE:
        raise DecodeError("handshake payload too large")
    obj = _unpack(data, max_bin_len=SIGNATURE_SIZE, max_array_len=8)
    if not isinstance(obj, list) or len(obj) < 4 or obj[0] != HELLO_TAG:
        raise DecodeError("not a HELLO payload")
    if obj[1] != SESSION_VERSION:
        raise DecodeError(f"unsupported session version {obj[1]!r}")
    key, sig = obj[2], obj[3]
    if not (isinstance(key, bytes) and len(key) == IDENTITY_KEY_SIZE):
        raise DecodeError("bad identity key in HELLO")
    if not (isinstance(sig, bytes) and len(sig) == SIGNATURE_SIZE):
        raise DecodeError("bad signature in HELLO")
    return Hello(key, sig)


# ---------------------------------------------------------------- frames


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Ack:
    """Acknowledged packet numbers: (high, low) inclusive ranges, descending."""

    delay_us: int
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class StreamData:
    stream_id: int
    offset: int
    fin: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class Open:
    stream_id: int
    protocol: str


@dataclass(frozen=True, slots=True)
class Accept:
    stream_id: int


@dataclass(frozen=True, slots=True)
class Refuse:
    stream_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class ResetStream:
    stream_id: int
    code: int
    final_size: int


@dataclass(frozen=True, slots=True)
class StopSending:
    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class MaxData:
    limit: int


@dataclass(frozen=True, slots=True)
class MaxStreamData:
    stream_id: int
    limit: int


@dataclass(frozen=True, slots=True)
class Datagram:
    protocol: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


Frame = (
    Ping
    | Ack
    | StreamData
    | Open
    | Accept
    | Refuse
    | ResetStream
    | StopSending
    | MaxData
    | MaxStreamData
    | Datagram
    | Close
)


def frame_to_wire(frame: Frame) -> list[object]:
    """The msgpack array for one frame."""
    match frame:
        case StreamData(sid, offset, fin, data):
            return [STREAM, sid, offset, fin, data]
        case Ack(delay, ranges):
            out: list[object] = [ACK, delay]
            for hi, lo in ranges:
                out.append(hi)
                out.append(lo)
            return out
        case Ping():
            return [PING]
        case Open(sid, protocol):
            return [OPEN, sid, protocol]
        case Accept(sid):
            return [ACCEPT, sid]
        case Refuse(sid, reason):
            return [REFUSE, sid, reason]
        case ResetStream(sid, code, final_size):
            return [RESET_STREAM, sid, code, final_size]
        case StopSending(sid, code):
            return [STOP_SENDING, sid, code]
        case MaxData(limit):
            return [MAX_DATA, limit]
        case MaxStreamData(sid, limit):
            return [MAX_STREAM_DATA, sid, limit]
        case Datagram(protocol, data):
            return [DATAGRAM, protocol, data]
        case Close(code, reason):
            return [CLOSE, code, reason]
    raise TypeError(f"not a frame: {frame!r}")  # pragma: no cover


def encode_payload(wire_frames: list[list[object]]) -> bytes:
    """Pack frames (already in wire form, see `frame_to_wire`) into a plaintext.

    A STREAM frame whose data is a list of pieces (a range of the send buffer that
    spans several chunks, `SendSide.next_chunk(pieces=True)`) is encoded by hand: its
    msgpack `bin` header is written here and the pieces are joined straight into the
    plaintext, so the data is copied once instead of twice (joined, then copied again
    by `packb`). The bytes are identical to what `packb` makes of the joined data.
    """
    if not any(frame[0] == STREAM and type(frame[4]) is list for frame in wire_frames):
        return msgpack.packb([SESSION_VERSION, *wire_frames])  # type: ignore[no-any-return]
    count = len(wire_frames) + 1
    parts: list[bytes | memoryview] = [
        bytes([0x90 | count]) if count < 16 else b"\xdc" + count.to_bytes(2, "big"),
        msgpack.packb(SESSION_VERSION),
    ]
    for frame in wire_frames:
        data = frame[4] if frame[0] == STREAM else None
        if type(data) is not list:
            parts.append(msgpack.packb(frame))
            continue
        size = sum(len(piece) for piece in data)
        parts.append(b"\x95" + msgpack.packb(frame[:4])[1:])  # fixarray 4 -> 5 items
        if size < 256:
            parts.append(b"\xc4" + size.to_bytes(1, "big"))
        elif size < 65_536:
            parts.append(b"\xc5" + size.to_bytes(2, "big"))
        else:
            parts.append(b"\xc6" + size.to_bytes(4, "big"))
        parts.extend(data)
    return b"".join(parts)


def _unpack(data: bytes, *, max_bin_len: int, max_array_len: int) -> object:
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bin_len,
            max_str_len=MAX_REASON,
            max_array_len=max_array_len,
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise DecodeError("malformed msgpack") from None
    except Exception as exc:  # msgpack raises a few odd types (e.g. UnpackValueError)
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from None


def _uint(value: object, limit: int, what: str) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise DecodeError(f"bad {what}: {value!r}")
    return value


def _text(value: object, limit: int, what: str) -> str:
    if type(value) is not str or len(value.encode()) > limit:
        raise DecodeError(f"bad {what}")
    return value


def _protocol(value: object) -> str:
    name = _text(value, MAX_PROTOCOL_NAME, "protocol name")
    if not name:
        raise DecodeError("empty protocol name")
    return name


def decode_payload(plaintext: bytes) -> list[Frame]:
    """Decode and fully validate the frames of one TRANSPORT plaintext.

    Raises:
        DecodeError: on anything malformed, out of range or of another version.
    """
    if len(plaintext) > MAX_PACKET_SIZE_LIMIT:
        raise DecodeError("payload larger than any packet")
    obj = _unpack(plaintext, max_bin_len=MAX_PACKET_SIZE_LIMIT, max_array_len=MAX_FRAMES_PER_PACKET)
    if type(obj) is not list or not obj:
        raise DecodeError("payload is not a frame array")
    if obj[0] != SESSION_VERSION or type(obj[0]) is not int:
        raise DecodeError(f"unsupported session version {obj[0]!r}")
    frames: list[Frame] = []
    for item in obj[1:]:
        frames.append(_decode_frame(item))
    return frames


def _decode_frame(item: object) -> Frame:
    if type(item) is not list or not item:
        raise DecodeError("frame is not an array")
    tag = item[0]
    n = len(item)
    if tag == STREAM and n == 5:
        data = item[4]
        if type(data) is not bytes or type(item[3]) is not bool:
            raise DecodeError("bad STREAM frame")
        offset = _uint(item[2], MAX_OFFSET, "offset")
        if offset + len(data) > MAX_OFFSET:
            raise DecodeError("STREAM frame beyond the largest offset")
        return StreamData(_uint(item[1], MAX_STREAM_ID, "stream id"), offset, item[3], data)
    if tag == ACK and n >= 4 and n % 2 == 0:
        delay = _uint(item[1], 1 << 32, "ack delay")
        if (n - 2) // 2 > MAX_ACK_RANGES:
            raise DecodeError("too many ACK ranges")
        ranges: list[tuple[int, int]] = []
        previous_low = None
        for i in range(2, n, 2):
            hi = _uint(item[i], 1 << 64, "ack range")
            lo = _uint(item[i + 1], 1 << 64, "ack range")
            if lo > hi or (previous_low is not None and hi >= previous_low - 1):
                raise DecodeError("ACK ranges not descending and disjoint")
            ranges.append((hi, lo))
            previous_low = lo
        return Ack(delay, tuple(ranges))
    if tag == PING and n == 1:
        return Ping()
    if tag == MAX_STREAM_DATA and n == 3:
        return MaxStreamData(
            _uint(item[1], MAX_STREAM_ID, "stream id"), _uint(item[2], MAX_OFFSET, "limit")
        )
    if tag == MAX_DATA and n == 2:
        return MaxData(_uint(item[1], MAX_OFFSET, "limit"))
    if tag == OPEN and n == 3:
        return Open(_uint(item[1], MAX_STREAM_ID, "stream id"), _protocol(item[2]))
    if tag == ACCEPT and n == 2:
        return Accept(_uint(item[1], MAX_STREAM_ID, "stream id"))
    if tag == REFUSE and n == 3:
        return Refuse(
            _uint(item[1], MAX_STREAM_ID, "stream id"), _text(item[2], MAX_REASON, "reason")
        )
    if tag == RESET_STREAM and n == 4:
        return ResetStream(
            _uint(item[1], MAX_STREAM_ID, "stream id"),
            _uint(item[2], 1 << 32, "code"),
            _uint(item[3], MAX_OFFSET, "final size"),
        )
    if tag == STOP_SENDING and n == 3:
        return StopSending(
            _uint(item[1], MAX_STREAM_ID, "stream id"), _uint(item[2], 1 << 32, "code")
        )
    if tag == DATAGRAM and n == 3:
        if type(item[2]) is not bytes:
            raise DecodeError("bad DATAGRAM frame")
        return Datagram(_protocol(item[1]), item[2])
    if tag == CLOSE and n == 3:
        return Close(_uint(item[1], 1 << 32, "code"), _text(item[2], MAX_REASON, "reason"))
    raise DecodeError(f"unknown or malformed frame (tag {tag!r}, {n} fields)")
