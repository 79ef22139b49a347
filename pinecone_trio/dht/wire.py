"""DHT wire format: msgpack arrays with a leading type tag and version.

Every message is one overlay datagram of service `SERVICE_DHT` (tag 2)::

    ANNOUNCE      [1, 1, request_id, record]                  closest-key, to the topic id
    ANNOUNCE_ACK  [2, 1, request_id, status]                  exact key, to the requester
    STORE         [3, 1, record, remaining_ttl, copies, dir]  exact key, to a snake neighbour
    LOOKUP        [4, 1, request_id, topic, reply_to]         closest-key or exact key
    LOOKUP_REPLY  [5, 1, request_id, topic, [[record, remaining_ttl], ...], [key, ...],
                   closest]                                   exact key
    SUCCESSOR     [6, 1]                                      exact key, to the descending
                                                              neighbour: "I am your successor"

    record = [topic (bin 32), public key (bin 32), seq (u64), ttl (u32),
              data (bin <= MAX_RECORD_DATA), signature (bin 64)]

`status` is one of the `ACK_*` codes; `dir` is `UP` or `DOWN` (the snake direction a
replica travels); `copies` is how many more nodes in that direction should hold it.
`reply_to` is empty (answer the sender) or a 32-byte key: the node closest to the topic
forwards the lookup to its snake neighbours with the requester's key there, so they
answer the requester directly. A reply names the responder's snake neighbours and says
whether the responder was the closest node (`closest`, a bool): the requester then
expects answers from those neighbours too (a freshly joined closest node may not hold
the records yet; its neighbours do) and asks them itself if they stay silent.

Sizes are checked before decoding, msgpack's own limits bound every container, and
every field is validated: anything else raises `DecodeError`. The signature is *not*
checked here (that is the store's and the requester's job); see `crypto.py` for the
signed bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgpack

from ..errors import DecodeError
from .constants import (
    DHT_VERSION,
    KEY_SIZE,
    MAX_LOOKUP_RECORDS,
    MAX_MESSAGE_SIZE,
    MAX_NEIGHBOURS,
    MAX_RECORD_DATA,
    REPLICAS_ASCENDING,
    REPLICAS_DESCENDING,
    SIGNATURE_SIZE,
)

ANNOUNCE: Final = 1
ANNOUNCE_ACK: Final = 2
STORE: Final = 3
LOOKUP: Final = 4
LOOKUP_REPLY: Final = 5
SUCCESSOR: Final = 6

#: ANNOUNCE_ACK status codes.
ACK_STORED: Final = 0
ACK_REFUSED: Final = 1  # bad signature, stale sequence number, or a full store
ACK_RATE_LIMITED: Final = 2
_ACK_CODES: Final = (ACK_STORED, ACK_REFUSED, ACK_RATE_LIMITED)

#: STORE directions along the snake.
UP: Final = 1
DOWN: Final = 2

_U64: Final = 1 << 64
_U32: Final = 1 << 32
_MAX_COPIES: Final = REPLICAS_ASCENDING + REPLICAS_DESCENDING


@dataclass(frozen=True, slots=True)
class Record:
    """One signed announcement: `public_key` is reachable under `topic` (ttl 0: withdrawn)."""

    topic: bytes
    public_key: bytes
    seq: int
    ttl: int
    data: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Announce:
    request_id: int
    record: Record


@dataclass(frozen=True, slots=True)
class AnnounceAck:
    request_id: int
    status: int


@dataclass(frozen=True, slots=True)
class Store:
    record: Record
    remaining_ttl: int
    copies: int
    direction: int


@dataclass(frozen=True, slots=True)
class Lookup:
    request_id: int
    topic: bytes
    reply_to: bytes = b""


@dataclass(frozen=True, slots=True)
class LookupReply:
    request_id: int
    topic: bytes
    records: tuple[tuple[Record, int], ...]
    neighbours: tuple[bytes, ...]
    closest: bool = False


@dataclass(frozen=True, slots=True)
class Successor:
    """The sender says it is the receiver's ascending snake neighbour."""


Message = Announce | AnnounceAck | Store | Lookup | LookupReply | Successor


# ---------------------------------------------------------------- encoding


def _record(r: Record) -> list[Any]:
    return [r.topic, r.public_key, r.seq, r.ttl, r.data, r.signature]


def encode(message: Message) -> bytes:
    """Encode one message.

    Raises:
        ValueError: if the encoding would exceed `MAX_MESSAGE_SIZE` (a reply with too
            many records: trim it with `encode_lookup_reply`).
    """
    obj: list[Any]
    if isinstance(message, Announce):
        obj = [ANNOUNCE, DHT_VERSION, message.request_id, _record(message.record)]
    elif isinstance(message, AnnounceAck):
        obj = [ANNOUNCE_ACK, DHT_VERSION, message.request_id, message.status]
    elif isinstance(message, Store):
        obj = [
            STORE,
            DHT_VERSION,
            _record(message.record),
            message.remaining_ttl,
            message.copies,
            message.direction,
        ]
    elif isinstance(message, Successor):
        obj = [SUCCESSOR, DHT_VERSION]
    elif isinstance(message, Lookup):
        obj = [LOOKUP, DHT_VERSION, message.request_id, message.topic, message.reply_to]
    else:
        obj = [
            LOOKUP_REPLY,
            DHT_VERSION,
            message.request_id,
            message.topic,
            [[_record(r), ttl] for r, ttl in message.records],
            list(message.neighbours),
            message.closest,
        ]
    data: bytes = msgpack.packb(obj, use_bin_type=True)
    if len(data) > MAX_MESSAGE_SIZE:
        raise ValueError(f"DHT message of {len(data)} bytes > {MAX_MESSAGE_SIZE}")
    return data


def encode_lookup_reply(reply: LookupReply) -> bytes:
    """Encode a reply, dropping records from the end until it fits one datagram."""
    records = reply.records[:MAX_LOOKUP_RECORDS]
    while True:
        try:
            trimmed = LookupReply(
                reply.request_id, reply.topic, records, reply.neighbours, reply.closest
            )
            return encode(trimmed)
        except ValueError:
            if not records:
                raise
            records = records[: len(records) // 2]


# ---------------------------------------------------------------- decoding


def _unpack(data: bytes) -> object:
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"DHT message of {len(data)} bytes > {MAX_MESSAGE_SIZE}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max(MAX_RECORD_DATA, SIGNATURE_SIZE),
            max_str_len=0,
            max_array_len=max(MAX_LOOKUP_RECORDS, 8),
            max_map_len=0,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise DecodeError(f"not a DHT message: {e}") from e
    except Exception as e:  # msgpack raises a few more kinds on truncated input
        raise DecodeError(f"not a DHT message: {type(e).__name__}") from e


def _int(value: object, limit: int, what: str) -> int:
    if type(value) is not int or not 0 <= value < limit:
        raise DecodeError(f"bad {what}: {value!r}")
    return value


def _bin(value: object, size: int, what: str) -> bytes:
    if type(value) is not bytes or len(value) != size:
        raise DecodeError(f"bad {what}")
    return value


def _list(value: object, length: int | None, what: str) -> list[Any]:
    if type(value) is not list or (length is not None and len(value) != length):
        raise DecodeError(f"bad {what}")
    return value


def _decode_record(value: object) -> Record:
    f = _list(value, 6, "record")
    data = f[4]
    if type(data) is not bytes or len(data) > MAX_RECORD_DATA:
        raise DecodeError("bad record data")
    return Record(
        topic=_bin(f[0], KEY_SIZE, "topic"),
        public_key=_bin(f[1], KEY_SIZE, "public key"),
        seq=_int(f[2], _U64, "seq"),
        ttl=_int(f[3], _U32, "ttl"),
        data=data,
        signature=_bin(f[5], SIGNATURE_SIZE, "signature"),
    )


_LENGTHS: Final = {
    ANNOUNCE: 4,
    ANNOUNCE_ACK: 4,
    STORE: 6,
    LOOKUP: 5,
    LOOKUP_REPLY: 7,
    SUCCESSOR: 2,
}


def decode(data: bytes) -> Message:
    """Decode one DHT message.

    Raises:
        DecodeError: on anything that is not a valid message of our version.
    """
    obj = _unpack(data)
    if type(obj) is not list or len(obj) < 2:
        raise DecodeError("a DHT message is an array [type, version, ...]")
    tag, version = obj[0], obj[1]
    if type(tag) is not int or tag not in _LENGTHS:
        raise DecodeError(f"unknown DHT message type {tag!r}")
    if version != DHT_VERSION or type(version) is not int:
        raise DecodeError(f"unsupported DHT version {version!r}")
    if len(obj) != _LENGTHS[tag]:
        raise DecodeError(f"DHT message type {tag} with {len(obj)} fields")
    if tag == SUCCESSOR:
        return Successor()
    if tag == ANNOUNCE:
        return Announce(_int(obj[2], _U64, "request id"), _decode_record(obj[3]))
    if tag == ANNOUNCE_ACK:
        status = _int(obj[3], 256, "status")
        if status not in _ACK_CODES:
            raise DecodeError(f"unknown ack status {status}")
        return AnnounceAck(_int(obj[2], _U64, "request id"), status)
    if tag == STORE:
        direction = _int(obj[5], 256, "direction")
        if direction not in (UP, DOWN):
            raise DecodeError(f"bad direction {direction}")
        return Store(
            _decode_record(obj[2]),
            _int(obj[3], _U32, "remaining ttl"),
            _int(obj[4], _MAX_COPIES + 1, "copies"),
            direction,
        )
    if tag == LOOKUP:
        reply_to = obj[4]
        if type(reply_to) is not bytes or len(reply_to) not in (0, KEY_SIZE):
            raise DecodeError("bad reply_to")
        return Lookup(_int(obj[2], _U64, "request id"), _bin(obj[3], KEY_SIZE, "topic"), reply_to)
    topic = _bin(obj[3], KEY_SIZE, "topic")
    records = []
    for item in _list(obj[4], None, "records"):
        pair = _list(item, 2, "record entry")
        record = _decode_record(pair[0])
        if record.topic != topic:
            raise DecodeError("a reply record for another topic")
        records.append((record, _int(pair[1], _U32, "remaining ttl")))
    neighbours = _list(obj[5], None, "neighbours")
    if len(neighbours) > MAX_NEIGHBOURS:
        raise DecodeError("too many neighbours")
    if type(obj[6]) is not bool:
        raise DecodeError("bad closest flag")
    return LookupReply(
        _int(obj[2], _U64, "request id"),
        topic,
        tuple(records),
        tuple(_bin(k, KEY_SIZE, "neighbour key") for k in neighbours),
        obj[6],
    )
