"""msgpack codecs for hyperlog's replication messages.

Theory of operation
-------------------
A replication stream is a sequence of *frames*: a 4-byte big-endian length, then
that many bytes of one msgpack **array** ``[type, version, ...fields]``. The type
tags and field sets follow hypercore 11's replication protocol (research notes §8.2)
with protomux's open/close folded in: every message after `Hello` names the
channel it belongs to by the *sender's* local channel id, and a channel is opened
by `Open`, which carries the log's discovery key and the capability.

Decoding is strict: the frame length is checked before anything is read, msgpack
runs with per-type size limits, and every field is type- and range-checked. Any
violation raises `DecodeError`, which the session treats as "drop this peer".
Nothing here is signed or hashed: proofs carry hashes computed by `crypto.py`, and
the capability is computed in `replication/caps.py`.

Limits (named constants below) bound the memory one peer can make us hold: one
frame is at most `MAX_FRAME_SIZE`; a proof carries at most `MAX_PROOF_NODES` nodes;
a bitfield chunk is at most `MAX_BITFIELD_BYTES`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final, TypeAlias

import msgpack

from hyperlog.errors import DecodeError

#: Version of the message layouts below; a peer speaking another version is refused.
WIRE_VERSION: Final = 1
#: Largest block value we accept or send (hypercore suggests 15 MB; we keep 8 MiB so
#: one frame, a few proofs and the reader buffer stay well under 20 MiB per peer).
MAX_BLOCK_SIZE: Final = 8 * 1024 * 1024
#: Largest frame payload: one block plus its proof and the msgpack envelope.
MAX_FRAME_SIZE: Final = MAX_BLOCK_SIZE + 64 * 1024
#: Bytes of the frame length prefix.
FRAME_HEADER_SIZE: Final = 4
#: A proof path is at most 64 levels deep for 2^63 blocks; roots add up to 64 more.
MAX_PROOF_NODES: Final = 256
#: One bitfield chunk: one hypercore page (32,768 bits).
MAX_BITFIELD_BYTES: Final = 4096
#: Hashes, keys and capabilities.
HASH_SIZE: Final = 32
#: Handshake hashes may be up to 64 bytes (Noise with BLAKE2b); nonces are 32.
MAX_SESSION_ID_SIZE: Final = 64
#: Ed25519 signature, or hypercore's multisig wrapping of one (68 bytes); allow some
#: room for multi-signer manifests.
MAX_SIGNATURE_SIZE: Final = 1024
#: Manifests are small; bound them anyway.
MAX_MANIFEST_SIZE: Final = 4096
#: Channel ids and request ids are small non-negative ints.
MAX_ID: Final = 2**32 - 1
#: The request id of a `Data` nobody asked for: the sender's whole signed tree, sent
#: when it found a fork conflict with us (hypercore's conflict proof, its id 0 too).
#: Requests are numbered from 1, so no answer ever carries it.
CONFLICT_PROOF_ID: Final = 0
#: Every length, index and byte count fits in an unsigned 64-bit int.
MAX_UINT: Final = 2**64 - 1
#: Free-text reasons (close) are short.
MAX_REASON_SIZE: Final = 256

_LEN = struct.Struct(">I")

# Message type tags.
T_HELLO: Final = 0
T_OPEN: Final = 1
T_CLOSE: Final = 2
T_SYNC: Final = 3
T_REQUEST: Final = 4
T_CANCEL: Final = 5
T_DATA: Final = 6
T_NO_DATA: Final = 7
T_WANT: Final = 8
T_UNWANT: Final = 9
T_BITFIELD: Final = 10
T_RANGE: Final = 11
T_REJECT: Final = 12
T_RANGE_REQUEST: Final = 13
T_RANGE_DATA: Final = 14

#: Most blocks one RangeRequest may ask for (a subtree of depth 6).
MAX_RANGE_BLOCKS: Final = 64

# NoData reasons (hypercore: 1 not available, 2 invalid request).
NO_DATA_NOT_AVAILABLE: Final = 1
NO_DATA_INVALID: Final = 2
NO_DATA_FORK: Final = 3


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True, slots=True)
class Node:
    """A Merkle tree node on the wire: flat-tree index, byte size, 32-byte hash."""

    index: int
    size: int
    hash: bytes


#: `Hello.features` bit: the sender answers `RangeRequest.leaves` (and may ask for it).
FEATURE_RANGE_LEAVES: Final = 1
#: `Hello.features` bit: the sender's `Sync` carries its tree hash, and it takes a fork
#: conflict proof sent unasked (`Data` with request id 0, `CONFLICT_PROOF_ID`).
FEATURE_FORK_CHECK: Final = 2
#: Every feature this implementation speaks (sent in our `Hello`).
FEATURES: Final = FEATURE_RANGE_LEAVES | FEATURE_FORK_CHECK
#: Largest feature bitmask a `Hello` may carry (64 bits).
MAX_FEATURES: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on a stream: protocol version, a fresh 32-byte nonce and the
    sender's feature bits.

    The nonces of both sides name the session when the stream has no handshake
    hash (see docs/replication.md, "Capabilities"). A side uses an optional message
    field only when the peer's `features` has its bit; unknown bits and any fields
    after `features` are ignored, so later versions can add both without breaking
    this one.
    """

    nonce: bytes
    features: int = 0


@dataclass(frozen=True, slots=True)
class Open:
    """Open a channel for the log with this discovery key, proving the key."""

    channel: int
    discovery_key: bytes
    capability: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the sender's channel."""

    channel: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse the peer's `Open` whose (sender's) channel id is `channel`.

    Sent when we do not have the log or its capability is wrong (protomux's reject).
    """

    channel: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Sync:
    """State announcement: my fork and length, and the length of yours I saw.

    `tree_hash` is the hash over the sender's roots at that fork and length (what its
    signature covers), sent only to a peer with `FEATURE_FORK_CHECK` and only for a
    non-empty log: a peer holding another tree at the same fork and length (two
    signed histories) sees the difference without asking for anything.
    """

    channel: int
    fork: int
    length: int
    remote_length: int
    can_upgrade: bool = True
    downloading: bool = True
    uploading: bool = True
    tree_hash: bytes | None = None


@dataclass(frozen=True, slots=True)
class RequestBlock:
    index: int
    nodes: int


@dataclass(frozen=True, slots=True)
class RequestHash:
    index: int
    nodes: int


@dataclass(frozen=True, slots=True)
class RequestSeek:
    bytes: int
    padding: int = 0


@dataclass(frozen=True, slots=True)
class RequestUpgrade:
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class Request:
    """Ask for a proof (research notes §4). At least one part is set."""

    channel: int
    id: int
    fork: int
    block: RequestBlock | None = None
    hash: RequestHash | None = None
    seek: RequestSeek | None = None
    upgrade: RequestUpgrade | None = None
    manifest: bool = False


@dataclass(frozen=True, slots=True)
class Cancel:
    channel: int
    id: int


@dataclass(frozen=True, slots=True)
class DataBlock:
    index: int
    value: bytes
    nodes: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class DataHash:
    index: int
    nodes: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class DataSeek:
    bytes: int
    nodes: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class DataUpgrade:
    start: int
    length: int
    nodes: tuple[Node, ...]
    additional_nodes: tuple[Node, ...]
    signature: bytes


@dataclass(frozen=True, slots=True)
class Data:
    """A proof answering request `id` (0 = unsolicited, e.g. a conflict proof)."""

    channel: int
    id: int
    fork: int
    block: DataBlock | None = None
    hash: DataHash | None = None
    seek: DataSeek | None = None
    upgrade: DataUpgrade | None = None
    manifest: bytes | None = None


@dataclass(frozen=True, slots=True)
class NoData:
    channel: int
    id: int
    reason: int = NO_DATA_NOT_AVAILABLE


@dataclass(frozen=True, slots=True)
class Want:
    """Tell me what you have in [start, start + length)."""

    channel: int
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class Unwant:
    channel: int
    start: int
    length: int


@dataclass(frozen=True, slots=True)
class Bitfield:
    """Part of the sender's have-bitfield: bit k of `bits` is block start + k.

    Bits are least-significant first within each byte; `start` is a multiple of 8.
    """

    channel: int
    start: int
    bits: bytes


@dataclass(frozen=True, slots=True)
class Range:
    """The sender now has (or, with `drop`, no longer has) [start, start + length)."""

    channel: int
    start: int
    length: int
    drop: bool = False


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """Ask for every block under tree node `node` plus a hash proof of `node`.

    An extension of hypercore's protocol for bulk downloads: one round trip and one
    proof per aligned subtree of up to `MAX_RANGE_BLOCKS` blocks. `nodes` is the hash
    request's count of uncles the requester is missing above `node`. With `leaves`
    the answer also carries the leaf node of every block (see `RangeData`).
    """

    channel: int
    id: int
    fork: int
    node: int
    nodes: int
    leaves: bool = False


@dataclass(frozen=True, slots=True)
class RangeData:
    """Answer to a RangeRequest: the blocks of `node`'s span, in order, and `proof`
    (the node itself first, then its uncles upwards, as a hash proof). `leaves` (only
    if the request asked for them) are the blocks' leaf nodes, in the same order: the
    requester builds the uncles of its block proofs from them instead of hashing every
    value a second time. They are as untrusted as everything else a peer sends."""

    channel: int
    id: int
    fork: int
    node: int
    values: tuple[bytes, ...]
    proof: tuple[Node, ...]
    leaves: tuple[Node, ...] = ()


Message: TypeAlias = (
    Hello
    | Open
    | Close
    | Sync
    | Request
    | Cancel
    | Data
    | NoData
    | Want
    | Unwant
    | Bitfield
    | Range
    | Reject
    | RangeRequest
    | RangeData
)
ChannelMessage: TypeAlias = (
    Close
    | Sync
    | Request
    | Cancel
    | Data
    | NoData
    | Want
    | Unwant
    | Bitfield
    | Range
    | RangeRequest
    | RangeData
)


# --------------------------------------------------------------------------- encode


def _nodes(nodes: tuple[Node, ...]) -> list[list[object]]:
    return [[n.index, n.size, n.hash] for n in nodes]


def encode(msg: Message) -> bytes:
    """Return the msgpack payload of `msg` (without the frame length)."""
    body: list[object]
    match msg:  # the per-block messages first: each case is a type test
        case Request(ch, rid, fork, b, h, s, u, man):
            body = [
                T_REQUEST,
                WIRE_VERSION,
                ch,
                rid,
                fork,
                None if b is None else [b.index, b.nodes],
                None if h is None else [h.index, h.nodes],
                None if s is None else [s.bytes, s.padding],
                None if u is None else [u.start, u.length],
                man,
            ]
        case Cancel(ch, rid):
            body = [T_CANCEL, WIRE_VERSION, ch, rid]
        case Data(ch, rid, fork, b, h, s, u, man):
            body = [
                T_DATA,
                WIRE_VERSION,
                ch,
                rid,
                fork,
                None if b is None else [b.index, b.value, _nodes(b.nodes)],
                None if h is None else [h.index, _nodes(h.nodes)],
                None if s is None else [s.bytes, _nodes(s.nodes)],
                None
                if u is None
                else [
                    u.start,
                    u.length,
                    _nodes(u.nodes),
                    _nodes(u.additional_nodes),
                    u.signature,
                ],
                man,
            ]
        case Hello(nonce, features):
            body = [T_HELLO, WIRE_VERSION, nonce, features]
        case Open(ch, dk, cap):
            body = [T_OPEN, WIRE_VERSION, ch, dk, cap]
        case Close(ch, reason):
            body = [T_CLOSE, WIRE_VERSION, ch, reason]
        case Sync(ch, fork, length, rlen, cu, dl, ul, th):
            flags = int(cu) | int(dl) << 1 | int(ul) << 2
            body = [T_SYNC, WIRE_VERSION, ch, fork, length, rlen, flags]
            if th is not None:
                body.append(th)
        case NoData(ch, rid, reason):
            body = [T_NO_DATA, WIRE_VERSION, ch, rid, reason]
        case Want(ch, start, length):
            body = [T_WANT, WIRE_VERSION, ch, start, length]
        case Unwant(ch, start, length):
            body = [T_UNWANT, WIRE_VERSION, ch, start, length]
        case Bitfield(ch, start, bits):
            body = [T_BITFIELD, WIRE_VERSION, ch, start, bits]
        case Range(ch, start, length, drop):
            body = [T_RANGE, WIRE_VERSION, ch, start, length, drop]
        case Reject(ch, reason):
            body = [T_REJECT, WIRE_VERSION, ch, reason]
        case RangeRequest(ch, rid, fork, node, nodes, leaves):
            body = [T_RANGE_REQUEST, WIRE_VERSION, ch, rid, fork, node, nodes]
            if leaves:
                body.append(True)
        case RangeData(ch, rid, fork, node, values, proof, leaves):
            body = [T_RANGE_DATA, WIRE_VERSION, ch, rid, fork, node, list(values), _nodes(proof)]
            if leaves:
                body.append(_nodes(leaves))
    out: bytes = msgpack.packb(body, use_bin_type=True)
    return out


def encode_frame(msg: Message) -> bytes:
    """Return `msg` as one frame: 4-byte big-endian length, then the payload."""
    if isinstance(msg, RangeData) and len(msg.values[0]) >= _JOIN_VALUES_FROM:
        return _range_data_frame(msg)
    payload = encode(msg)
    if len(payload) > MAX_FRAME_SIZE:
        raise ValueError(f"message of {len(payload)} bytes exceeds MAX_FRAME_SIZE")
    return _LEN.pack(len(payload)) + payload


#: RangeData values from this size on are joined into the frame (`_range_data_frame`);
#: smaller ones pack faster in one `packb` call.
_JOIN_VALUES_FROM: Final = 8 * 1024


def _bin_header(n: int) -> bytes:
    """msgpack's header of a bin of `n` bytes (bin 8, 16 or 32, as `packb` picks)."""
    if n < 0x100:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 0x10000:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def _range_data_frame(msg: RangeData) -> bytes:
    """`encode_frame` of a RangeData, the bytes of `packb` joined once from pieces: its
    megabytes of values are copied once, not into a growing buffer and again behind
    the length prefix. Equal to the generic encoding (tested)."""
    head = [T_RANGE_DATA, WIRE_VERSION, msg.channel, msg.id, msg.fork, msg.node]
    fields = len(head) + 2 + (1 if msg.leaves else 0)
    parts = [b"", bytes((0x90 | fields,)), *(msgpack.packb(x) for x in head)]
    count = len(msg.values)
    parts.append(bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big"))
    for value in msg.values:
        parts.append(_bin_header(len(value)))
        parts.append(value)
    parts.append(msgpack.packb(_nodes(msg.proof), use_bin_type=True))
    if msg.leaves:
        parts.append(msgpack.packb(_nodes(msg.leaves), use_bin_type=True))
    size = sum(map(len, parts))
    if size > MAX_FRAME_SIZE:
        raise ValueError(f"message of {size} bytes exceeds MAX_FRAME_SIZE")
    parts[0] = _LEN.pack(size)
    return b"".join(parts)


# --------------------------------------------------------------------------- decode


def _uint(x: object, what: str, limit: int = MAX_UINT) -> int:
    if type(x) is not int or x < 0 or x > limit:
        raise DecodeError(f"{what}: expected an unsigned int <= {limit}, got {x!r:.40}")
    return x


def _bytes(x: object, what: str, *, exact: int | None = None, limit: int = MAX_UINT) -> bytes:
    if type(x) is not bytes:
        raise DecodeError(f"{what}: expected bytes, got {type(x).__name__}")
    if exact is not None and len(x) != exact:
        raise DecodeError(f"{what}: expected {exact} bytes, got {len(x)}")
    if len(x) > limit:
        raise DecodeError(f"{what}: {len(x)} bytes exceeds {limit}")
    return x


def _bool(x: object, what: str) -> bool:
    if type(x) is not bool:
        raise DecodeError(f"{what}: expected a bool")
    return x


def _list(x: object, what: str, n: int | None = None) -> list[object]:
    if type(x) is not list:
        raise DecodeError(f"{what}: expected an array")
    if n is not None and len(x) != n:
        raise DecodeError(f"{what}: expected {n} items, got {len(x)}")
    return x


def _decode_nodes(x: object, what: str) -> tuple[Node, ...]:
    items = _list(x, what)
    if len(items) > MAX_PROOF_NODES:
        raise DecodeError(f"{what}: {len(items)} nodes exceeds {MAX_PROOF_NODES}")
    out = []
    for item in items:
        # The same checks as the precise path below, inlined (every proof carries
        # several nodes: this is on the round trip of each sparse get).
        if type(item) is list and len(item) == 3:
            i, s, h = item
            if (
                type(i) is int
                and type(s) is int
                and type(h) is bytes
                and 0 <= i <= MAX_UINT
                and 0 <= s <= MAX_UINT
                and len(h) == HASH_SIZE
            ):
                out.append(Node(i, s, h))
                continue
        i, s, h = _list(item, what, 3)
        _uint(i, what + ".index")
        _uint(s, what + ".size")
        _bytes(h, what, exact=HASH_SIZE)
        raise AssertionError("unreachable: the checks above raise")  # pragma: no cover
    return tuple(out)


def _arity(body: list[object], n: int, name: str) -> None:
    if len(body) != n:
        raise DecodeError(f"{name}: expected {n} fields, got {len(body)}")


def decode(payload: bytes | bytearray) -> Message:
    """Decode one frame payload.

    Raises:
        DecodeError: the bytes are not exactly one valid message of this version.
    """
    if len(payload) > MAX_FRAME_SIZE:
        raise DecodeError(f"frame of {len(payload)} bytes exceeds {MAX_FRAME_SIZE}")
    try:
        obj = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_BLOCK_SIZE,
            max_str_len=MAX_REASON_SIZE,
            max_array_len=MAX_PROOF_NODES,
            max_map_len=0,
            max_ext_len=0,
        )
    except DecodeError:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"malformed msgpack: {exc}") from exc
    body = _list(obj, "message")
    if len(body) < 2:
        raise DecodeError("message: missing type or version")
    tag = _uint(body[0], "type", 255)
    if body[1] != WIRE_VERSION or type(body[1]) is not int:
        raise DecodeError(f"unsupported wire version {body[1]!r:.20}")
    try:
        return _decode_body(tag, body)
    except (ValueError, TypeError) as exc:  # unpacking of a wrong-sized list
        raise DecodeError(f"malformed message of type {tag}: {exc}") from exc


def _decode_body(tag: int, body: list[object]) -> Message:
    if tag == T_HELLO:
        # [type, version, nonce, features?, later fields...]: a Hello without
        # features (the first version) speaks none; fields after it are ignored.
        if len(body) < 3:
            raise DecodeError(f"hello: expected at least 3 fields, got {len(body)}")
        features = _uint(body[3], "hello.features", MAX_FEATURES) if len(body) > 3 else 0
        return Hello(_bytes(body[2], "hello.nonce", exact=32), features)
    ch = _uint(body[2], "channel", MAX_ID) if len(body) > 2 else 0
    if tag == T_OPEN:
        _arity(body, 5, "open")
        return Open(
            ch,
            _bytes(body[3], "open.discovery_key", exact=HASH_SIZE),
            _bytes(body[4], "open.capability", exact=HASH_SIZE),
        )
    if tag in (T_CLOSE, T_REJECT):
        _arity(body, 4, "close")
        reason = body[3]
        if type(reason) is not str:
            raise DecodeError("close.reason: expected a string")
        return Close(ch, reason) if tag == T_CLOSE else Reject(ch, reason)
    if tag == T_SYNC:
        # the optional last field (tree_hash) is sent only to peers that read it
        if len(body) != 8:
            _arity(body, 7, "sync")
        flags = _uint(body[6], "sync.flags", 7)
        return Sync(
            ch,
            _uint(body[3], "sync.fork"),
            _uint(body[4], "sync.length"),
            _uint(body[5], "sync.remote_length"),
            bool(flags & 1),
            bool(flags & 2),
            bool(flags & 4),
            _bytes(body[7], "sync.tree_hash", exact=HASH_SIZE) if len(body) == 8 else None,
        )
    if tag == T_REQUEST:
        _arity(body, 10, "request")
        rb = rh = rs = ru = None
        if body[5] is not None:
            i, n = _list(body[5], "request.block", 2)
            rb = RequestBlock(_uint(i, "request.block.index"), _uint(n, "nodes", MAX_PROOF_NODES))
        if body[6] is not None:
            i, n = _list(body[6], "request.hash", 2)
            rh = RequestHash(_uint(i, "request.hash.index"), _uint(n, "nodes", MAX_PROOF_NODES))
        if body[7] is not None:
            b, p = _list(body[7], "request.seek", 2)
            rs = RequestSeek(_uint(b, "request.seek.bytes"), _uint(p, "request.seek.padding"))
        if body[8] is not None:
            s, n = _list(body[8], "request.upgrade", 2)
            ru = RequestUpgrade(_uint(s, "upgrade.start"), _uint(n, "upgrade.length"))
        if rb is None and rh is None and rs is None and ru is None:
            raise DecodeError("request: asks for nothing")
        return Request(
            ch,
            _uint(body[3], "request.id", MAX_ID),
            _uint(body[4], "request.fork"),
            rb,
            rh,
            rs,
            ru,
            _bool(body[9], "request.manifest"),
        )
    if tag == T_CANCEL:
        _arity(body, 4, "cancel")
        return Cancel(ch, _uint(body[3], "cancel.id", MAX_ID))
    if tag == T_DATA:
        return _decode_data(ch, body)
    if tag == T_NO_DATA:
        _arity(body, 5, "no_data")
        return NoData(ch, _uint(body[3], "no_data.id", MAX_ID), _uint(body[4], "reason", 255))
    if tag in (T_WANT, T_UNWANT):
        _arity(body, 5, "want")
        start, length = _uint(body[3], "want.start"), _uint(body[4], "want.length")
        if start + length > MAX_UINT:
            raise DecodeError("want: range overflows")
        return Want(ch, start, length) if tag == T_WANT else Unwant(ch, start, length)
    if tag == T_BITFIELD:
        _arity(body, 5, "bitfield")
        start = _uint(body[3], "bitfield.start")
        if start % 8:
            raise DecodeError("bitfield.start: not a multiple of 8")
        bits = _bytes(body[4], "bitfield.bits", limit=MAX_BITFIELD_BYTES)
        if start + 8 * len(bits) > MAX_UINT:
            raise DecodeError("bitfield: range overflows")
        return Bitfield(ch, start, bits)
    if tag == T_RANGE:
        _arity(body, 6, "range")
        start, length = _uint(body[3], "range.start"), _uint(body[4], "range.length")
        if start + length > MAX_UINT:
            raise DecodeError("range: overflows")
        return Range(ch, start, length, _bool(body[5], "range.drop"))
    if tag == T_RANGE_REQUEST:
        # the optional last field (leaves) is sent only when true / not empty
        if len(body) != 8:
            _arity(body, 7, "range_request")
        leaves = len(body) == 8
        if leaves and body[7] is not True:
            raise DecodeError("range_request.leaves: expected true")
        return RangeRequest(
            ch,
            _uint(body[3], "range_request.id", MAX_ID),
            _uint(body[4], "range_request.fork"),
            _uint(body[5], "range_request.node"),
            _uint(body[6], "range_request.nodes", MAX_PROOF_NODES),
            leaves,
        )
    if tag == T_RANGE_DATA:
        if len(body) != 9:
            _arity(body, 8, "range_data")
        values = _list(body[6], "range_data.values")
        if not 1 <= len(values) <= MAX_RANGE_BLOCKS:
            raise DecodeError(f"range_data: {len(values)} values")
        leaf_nodes = _decode_nodes(body[8], "range_data.leaves") if len(body) == 9 else ()
        if len(body) == 9 and len(leaf_nodes) != len(values):
            raise DecodeError(f"range_data: {len(leaf_nodes)} leaves for {len(values)} values")
        return RangeData(
            ch,
            _uint(body[3], "range_data.id", MAX_ID),
            _uint(body[4], "range_data.fork"),
            _uint(body[5], "range_data.node"),
            tuple(_bytes(v, "range_data.value", limit=MAX_BLOCK_SIZE) for v in values),
            _decode_nodes(body[7], "range_data.proof"),
            leaf_nodes,
        )
    raise DecodeError(f"unknown message type {tag}")


def _decode_data(ch: int, body: list[object]) -> Data:
    _arity(body, 10, "data")
    db = dh = ds = du = None
    if body[5] is not None:
        i, v, ns = _list(body[5], "data.block", 3)
        db = DataBlock(
            _uint(i, "data.block.index"),
            _bytes(v, "data.block.value", limit=MAX_BLOCK_SIZE),
            _decode_nodes(ns, "data.block.nodes"),
        )
    if body[6] is not None:
        i, ns = _list(body[6], "data.hash", 2)
        dh = DataHash(_uint(i, "data.hash.index"), _decode_nodes(ns, "data.hash.nodes"))
    if body[7] is not None:
        b, ns = _list(body[7], "data.seek", 2)
        ds = DataSeek(_uint(b, "data.seek.bytes"), _decode_nodes(ns, "data.seek.nodes"))
    if body[8] is not None:
        s, n, ns, ans, sig = _list(body[8], "data.upgrade", 5)
        du = DataUpgrade(
            _uint(s, "data.upgrade.start"),
            _uint(n, "data.upgrade.length"),
            _decode_nodes(ns, "data.upgrade.nodes"),
            _decode_nodes(ans, "data.upgrade.additional_nodes"),
            _bytes(sig, "data.upgrade.signature", limit=MAX_SIGNATURE_SIZE),
        )
    manifest = None
    if body[9] is not None:
        manifest = _bytes(body[9], "data.manifest", limit=MAX_MANIFEST_SIZE)
    return Data(
        ch, _uint(body[3], "data.id", MAX_ID), _uint(body[4], "data.fork"), db, dh, ds, du, manifest
    )


class FrameDecoder:
    """Sans-IO length-prefix deframer with h11's verbs.

    Feed bytes with `receive_data`; pull whole messages with `next_message`, which
    returns None when more bytes are needed. A length prefix above `MAX_FRAME_SIZE`
    raises `DecodeError` before any of the frame is buffered, so a peer can never
    make us hold more than one maximal frame plus one read.

    A frame of `BIG_FRAME` bytes or more gets a buffer of its exact size once
    `BIG_FRAME` bytes or a quarter of it have arrived (a peer makes us allocate at
    most 32 times what it sent, and never more than the bound above); later reads
    fill it and it is decoded where it is. Appending 256 KiB reads to one `bytearray`
    re-copied it into fresh memory on most growths (its growth step is an eighth).
    """

    #: Frames from this size on are collected in their own buffer (see above).
    BIG_FRAME: Final = 256 * 1024

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_frame_size
        self._big: bytearray | None = None  # a big frame's payload so far (see above)
        self._big_size = 0  # its full size
        self._big_fill = 0  # bytes of it received

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._big is not None and self._big_fill < self._big_size:
            with memoryview(data) as view:
                used = self._fill_big(view)
                if used < len(view):
                    self._buf += view[used:]
            return
        if self._pos:
            # Compact once per read, not once per message: O(bytes) overall.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def _fill_big(self, view: memoryview) -> int:
        """Copy the start of `view` into the big frame; return how many bytes it took."""
        big = self._big
        assert big is not None
        fill = self._big_fill
        n = min(len(big) - fill, len(view))
        big[fill : fill + n] = view[:n]
        self._big_fill = fill + n
        return n

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        held = len(self._buf) - self._pos
        return held if self._big is None else held + self._big_fill + FRAME_HEADER_SIZE

    def next_message(self) -> Message | None:
        """Return the next whole message, or None if more bytes are needed.

        Raises:
            DecodeError: the frame is oversized or its payload is malformed.
        """
        big = self._big
        if big is not None:
            if self._big_fill < self._big_size:
                return None
            self._big = None
            self._big_size = self._big_fill = 0
            return decode(big)
        pos = self._pos
        if len(self._buf) - pos < FRAME_HEADER_SIZE:
            return None
        (n,) = _LEN.unpack_from(self._buf, pos)
        if n > self._max:
            raise DecodeError(f"frame length {n} exceeds {self._max}")
        start = pos + FRAME_HEADER_SIZE
        end = start + n
        if len(self._buf) < end:
            have = len(self._buf) - start
            if n >= self.BIG_FRAME and have >= min(self.BIG_FRAME, n // 4):
                # Move what we have of it into its own buffer; reads fill the rest.
                self._big = bytearray(n)
                self._big_size = n
                self._big_fill = 0
                with memoryview(self._buf) as view:
                    self._fill_big(view[start:])
                del self._buf[:]
                self._pos = 0
            return None
        with memoryview(self._buf) as view:
            payload = bytes(view[start:end])
        self._pos = end
        return decode(payload)
