"""msgpack codecs for the blocks of a HAMT log.

Theory of operation
-------------------
Block 0 is the header: ``[0, "hamt", version, salt, metadata]``. Every later block is
one operation (a put, a delete, or a whole batch) and carries the trie nodes that the
operation rewrote, path-copied from the root, like hyperbee's per-block index:

    [1, ops, root]

``ops`` lists what the block did, one entry per key: ``[key, value]`` (a put),
``[key]`` (a delete) or ``[key, value, 0]`` (a copy: an entry re-homed by a delete
that collapsed its node; hidden from history). ``root`` is the root node. A node is

    [datamap, nodemap, entry..., child...]

(CHAMP's layout): bit ``c`` of ``datamap`` says chunk ``c`` holds one entry, bit ``c``
of ``nodemap`` that it holds a subtree. An *entry* is the sequence number of the block
whose ``ops`` hold it (possibly this block). A *child* is either an inline node (an
array: rewritten by this block) or the sequence number of an older block whose own
root-to-here path holds that subtree. At depth `MAX_DEPTH` a node is a collision
bucket ``[[key, seq], ...]``. Decoded, every array is a tuple (see `Node`).

So a pointer is just a block number. Every pointer goes strictly backwards (an entry
may also name its own block), which makes cycles impossible, and `decode_block`
checks every shape, size, bitmap and pointer before anything else sees the block.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, final

import msgpack

from .constants import (
    CHUNK_BITS,
    CHUNK_MASK,
    FANOUT,
    FORMAT_VERSION,
    MAX_BATCH_OPS,
    MAX_BLOCK_BYTES,
    MAX_BUCKET_ENTRIES,
    MAX_DEPTH,
    MAX_KEY_BYTES,
    MAX_NODES_PER_BLOCK,
    MAX_VALUE_BYTES,
    PATH_BITS,
    PROTOCOL_NAME,
    SALT_BYTES,
)
from .errors import CorruptNodeError

__all__ = [
    "Block",
    "Header",
    "LazyBlock",
    "Node",
    "decode_block",
    "decode_header",
    "encode_header",
    "encode_node_block",
    "pack_value",
    "unpack_value",
]

TAG_HEADER: Final = 0
TAG_NODE: Final = 1
#: Third element of a copy op.
COPY_FLAG: Final = 0
#: Largest metadata blob in the header.
MAX_METADATA_BYTES: Final = 64 * 1024

#: A decoded node: ``(datamap, nodemap, entries..., children...)`` or a bucket. Decoded
#: blocks are tuples, not lists: the cyclic garbage collector stops tracking a tuple of
#: ints, so a cache of a hundred thousand blocks does not slow every collection down.
Node: TypeAlias = tuple[Any, ...]
#: The root of an empty trie.
EMPTY_ROOT: Final[Node] = (0, 0)


@dataclass(frozen=True, slots=True)
class Header:
    """The contents of block 0."""

    salt: bytes
    metadata: bytes | None


#: Decoded blocks with at most this many inline nodes are not indexed in the cache
#: (a walk from their root is as quick as an index lookup).
_SMALL_BLOCK_NODES: Final = 8
#: A block as the cache keeps it: ``(seq, root, ops, puts, nbytes, nodes, memo)``, an
#: exact tuple that, for a block with at most one entry, holds only tuples, ints,
#: bytes and str, so the cyclic garbage collector can stop tracking it (a `Block`
#: instance is tracked for as long as it lives, and every full collection would walk
#: a hundred thousand cached ones).
BlockRecord: TypeAlias = tuple[Any, ...]


@final
class _YoungRing:
    """Keeps the last `size` tuples the writer built, so the collector can untrack them.

    CPython stops tracking a tuple when a collection finds it holds nothing trackable,
    one pass per collection, visiting objects in list order. A decoded block is a
    nest of tuples (root, inner nodes, ops) under its cache record, and the first
    collection would reorder the nest parents first (objects reachable only from a
    young object move behind it) and untrack one level per collection: the nest
    would reach the oldest generation still tracked and make full collections come
    more often and cost more. Referenced from this long-lived ring as well, each
    tuple counts as reachable from outside, keeps its place (children were built
    first) and the first young collection untracks the whole block. Only speed
    depends on this: with a larger gen-0 threshold than `size` the nest just gets
    untracked later.
    """

    __slots__ = ("_i", "_slots")

    def __init__(self, size: int) -> None:
        self._slots: list[object] = [None] * size
        self._i = 0

    def hold(self, objs: list[tuple[Any, ...]]) -> None:
        n = len(objs)
        i = self._i
        if i + n > len(self._slots):
            if n > len(self._slots):
                return
            i = 0
        self._slots[i : i + n] = objs
        self._i = i + n


#: Tuples per ring: a few times the default gen-0 threshold (700 new containers).
YOUNG_RING_SIZE: Final = 4096
hold_young: Final = _YoungRing(YOUNG_RING_SIZE).hold


@final
class Block:
    """A decoded, validated block: its ops, its root node and lazy lookup indexes.

    `puts` maps each key this block holds an entry for (puts and copies) to its value.
    A `Block` is a view: `record` is the (usually untracked) tuple the `BlockCache`
    keeps, and `from_record` the same block again, sharing its parts (so lazy indexes
    in `_memo` survive the round trip).
    """

    __slots__ = ("_memo", "_nodes", "nbytes", "ops", "puts", "root", "seq")

    def __init__(
        self,
        seq: int,
        root: Node,
        ops: Sequence[Sequence[Any]],
        puts: dict[str, bytes],
        nbytes: int,
        nodes: dict[int, Node] | None = None,
        memo: dict[str, Any] | None = None,
    ) -> None:
        self.seq = seq
        self.root = root
        self.ops = ops
        self.puts = puts
        self.nbytes = nbytes
        # Decoded blocks carry an index of their inline nodes (built while validating).
        self._nodes = nodes
        # Lazy indexes (the entries sorted by path) of blocks with several entries.
        self._memo = memo if memo is not None or len(puts) < 2 else {}

    def record(self) -> BlockRecord:
        """This block as the tuple the cache keeps (`from_record` turns it back).

        A tuple holding a dict stays tracked by the garbage collector, so a block with
        at most one entry keeps it as a ``(key, value)`` pair (or ``()``), and the node
        index of a small decoded block is dropped (`node_at` walks from the root then).
        """
        puts: Any = self.puts
        if len(puts) < 2:
            puts = next(iter(puts.items()), ())
            hold_young([puts])
        nodes = self._nodes
        if nodes is not None and len(nodes) <= _SMALL_BLOCK_NODES:
            nodes = None
        return (self.seq, self.root, self.ops, puts, self.nbytes, nodes, self._memo)

    @staticmethod
    def from_record(rec: BlockRecord) -> Block:
        """The block whose `record` is `rec`."""
        puts = rec[3]
        if type(puts) is tuple:
            puts = {puts[0]: puts[1]} if puts else {}
        return Block(rec[0], rec[1], rec[2], puts, rec[4], rec[5], rec[6])

    def node_at(self, path: int, depth: int) -> Node | None:
        """Return the inline node at `depth` on `path`, or None if this block has none there.

        A child pointer's target. Decoded blocks carry an index of their inline nodes
        (built while validating); blocks this process encoded are walked from the root.
        """
        return _node_at(self.root, self._nodes, path, depth)

    def entry_at(self, path_fn: Callable[[str], int], prefix: int, depth: int) -> str:
        """Return the one key of this block whose path starts with `prefix`'s first `depth` chunks.

        The writer keeps this unique (docs/hamt.md, "Entry pointers"); a block that
        breaks the rule raises `CorruptNodeError`.
        """
        return self.entry_with_path(path_fn, prefix, depth)[0]

    def entry_with_path(
        self, path_fn: Callable[[str], int], prefix: int, depth: int
    ) -> tuple[str, int]:
        """`entry_at`, and that key's path."""
        shift = PATH_BITS - CHUNK_BITS * depth
        memo = self._memo
        by_path: tuple[tuple[int, str], ...] | None = None if memo is None else memo.get("by_path")
        if by_path is None:
            if memo is None:  # a single put's block: nothing to sort or keep
                for k in self.puts:
                    p = path_fn(k)
                    if p >> shift != prefix >> shift:
                        break
                    return k, p
                raise CorruptNodeError(
                    "entry pointer names a block without that entry", seq=self.seq
                )
            # (a tuple, so the cached record stays untracked by the garbage collector)
            by_path = memo["by_path"] = tuple(sorted((path_fn(k), k) for k in self.puts))
        lo = (prefix >> shift) << shift
        hi = lo + (1 << shift)
        i = bisect.bisect_left(by_path, (lo, ""))
        if i >= len(by_path) or by_path[i][0] >= hi:
            raise CorruptNodeError("entry pointer names a block without that entry", seq=self.seq)
        if i + 1 < len(by_path) and by_path[i + 1][0] < hi:
            raise CorruptNodeError("entry pointer is ambiguous", seq=self.seq)
        return by_path[i][1], by_path[i][0]


def _node_at(root: Node, nodes: dict[int, Node] | None, path: int, depth: int) -> Node | None:
    if nodes is not None:
        shift = PATH_BITS - CHUNK_BITS * depth
        return nodes.get((1 << (CHUNK_BITS * depth)) | (path >> shift))
    node = root
    shift = PATH_BITS - CHUNK_BITS
    for _ in range(depth):
        bit = 1 << ((path >> shift) & CHUNK_MASK)
        shift -= CHUNK_BITS
        nm = node[1]
        if not nm & bit:
            return None
        node = node[2 + node[0].bit_count() + (nm & (bit - 1)).bit_count()]
        if type(node) is not tuple:
            return None
    return node


def record_node(rec: BlockRecord, path: int, depth: int) -> Node:
    """The inline node at `depth` on `path` of a cached block (`Block.node_at`, no `Block`).

    Raises:
        CorruptNodeError: the block holds no node there.
    """
    node = _node_at(rec[1], rec[5], path, depth)
    if node is None:
        raise CorruptNodeError("child pointer names a block without that node", seq=rec[0])
    return node


def record_value(rec: BlockRecord, key: str) -> bytes | None:
    """The value a cached block holds for `key` (``Block.puts.get``, no `Block`)."""
    puts = rec[3]
    if type(puts) is tuple:
        return puts[1] if puts and puts[0] == key else None
    return puts.get(key)  # type: ignore[no-any-return]


def pack_value(obj: object) -> bytes:
    """msgpack-encode a user value (the msgpack codec)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_value(data: bytes) -> object:
    """msgpack-decode a user value (the msgpack codec)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def encode_header(salt: bytes, metadata: bytes | None = None) -> bytes:
    """Encode block 0."""
    if len(salt) != SALT_BYTES:
        raise ValueError(f"salt must be {SALT_BYTES} bytes")
    if metadata is not None and len(metadata) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata larger than {MAX_METADATA_BYTES} bytes")
    return msgpack.packb(  # type: ignore[no-any-return]
        [TAG_HEADER, PROTOCOL_NAME, FORMAT_VERSION, salt, metadata], use_bin_type=True
    )


def _unpack(data: bytes, seq: int) -> Any:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptNodeError("block is not bytes", seq=seq)
    if len(data) > MAX_BLOCK_BYTES:
        raise CorruptNodeError(f"block larger than {MAX_BLOCK_BYTES} bytes", seq=seq)
    try:
        return msgpack.unpackb(data, raw=False, use_list=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many kinds; all mean "not a block"
        raise CorruptNodeError(f"block does not decode: {exc}", seq=seq) from exc


def decode_header(data: bytes) -> Header:
    """Decode and check block 0; raise `CorruptNodeError` if it is not a HAMT header."""
    obj = _unpack(data, 0)
    if (
        type(obj) is not tuple
        or len(obj) != 5
        or type(obj[0]) is not int  # (msgpack gives 1.0 and True too: both are != 1 here)
        or obj[0] != TAG_HEADER
        or obj[1] != PROTOCOL_NAME
    ):
        raise CorruptNodeError("block 0 is not a HAMT header", seq=0)
    if type(obj[2]) is not int or obj[2] != FORMAT_VERSION:
        raise CorruptNodeError(f"unsupported HAMT format version {obj[2]!r}", seq=0)
    salt, metadata = obj[3], obj[4]
    if not isinstance(salt, bytes) or len(salt) != SALT_BYTES:
        raise CorruptNodeError("bad salt in header", seq=0)
    if metadata is not None and (
        not isinstance(metadata, bytes) or len(metadata) > MAX_METADATA_BYTES
    ):
        raise CorruptNodeError("bad metadata in header", seq=0)
    return Header(salt, metadata)


def header_block() -> Block:
    """The decoded form of block 0 as a trie: an empty root, no ops."""
    return Block(0, EMPTY_ROOT, (), {}, 0)


def encode_node_block(ops: Sequence[Sequence[Any]], root: Sequence[Any]) -> bytes:
    """Encode an operation block (the caller built `ops` and `root` by the rules above)."""
    return msgpack.packb([TAG_NODE, ops, root], use_bin_type=True)  # type: ignore[no-any-return]


def decode_block(data: bytes, seq: int) -> Block:
    """Decode and fully validate block `seq` (> 0).

    Raises:
        CorruptNodeError: the bytes are not a valid operation block at position `seq`.
    """
    if seq <= 0:
        raise CorruptNodeError("block 0 is the header, not a node", seq=seq)
    obj = _unpack(data, seq)
    if type(obj) is not tuple or len(obj) != 3 or type(obj[0]) is not int or obj[0] != TAG_NODE:
        raise CorruptNodeError("not an operation block", seq=seq)
    ops, root = obj[1], obj[2]
    puts = _check_ops(ops, seq)
    index: dict[int, Node] = {}
    _check_node(root, 0, 1, seq, index)
    return Block(seq, root, ops, puts, len(data), index)


def _check_ops(ops: Any, seq: int) -> dict[str, bytes]:
    if type(ops) is not tuple or len(ops) > MAX_BATCH_OPS:
        raise CorruptNodeError("bad op list", seq=seq)
    puts: dict[str, bytes] = {}
    seen: set[str] = set()
    for op in ops:
        if type(op) is not tuple or not 1 <= len(op) <= 3:
            raise CorruptNodeError("bad op", seq=seq)
        key = op[0]
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_BYTES:
            raise CorruptNodeError("bad key in op", seq=seq)
        if key in seen:
            raise CorruptNodeError(f"key {key!r} appears twice", seq=seq)
        seen.add(key)
        if len(op) == 1:
            continue
        value = op[1]
        if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
            raise CorruptNodeError("bad value in op", seq=seq)
        if len(op) == 3 and op[2] != COPY_FLAG:
            raise CorruptNodeError("bad op flag", seq=seq)
        puts[key] = value
    return puts


_INT_ONLY: Final = {int}


def _check_node(node: Any, depth: int, key: int, seq: int, index: dict[int, Node]) -> None:
    """Validate `node` (at `depth`, position `key`) and its inline subtree; index each node."""
    if len(index) >= MAX_NODES_PER_BLOCK:
        raise CorruptNodeError("too many nodes in one block", seq=seq)
    if type(node) is not tuple:
        raise CorruptNodeError("node is not an array", seq=seq)
    index[key] = node
    if depth == MAX_DEPTH:
        _check_bucket(node, seq)
        return
    if len(node) < 2:
        raise CorruptNodeError("node too short", seq=seq)
    dm, nm = node[0], node[1]
    if type(dm) is not int or type(nm) is not int or not 0 <= dm < 1 << FANOUT:
        raise CorruptNodeError("bad bitmap", seq=seq)
    if not 0 <= nm < 1 << FANOUT or dm & nm:
        raise CorruptNodeError("bad bitmap", seq=seq)
    ne = 2 + dm.bit_count()
    if len(node) != ne + nm.bit_count():
        raise CorruptNodeError("bitmap does not match the slots", seq=seq)
    if depth and len(node) == 2:
        raise CorruptNodeError("empty inner node", seq=seq)
    if ne > 2:
        # C-level checks: every entry pointer an int (not a bool or float) in 0..seq-1.
        ents = node[2:ne]
        if set(map(type, ents)) != _INT_ONLY or min(ents) < 0 or max(ents) >= seq:
            raise CorruptNodeError(f"entry pointer out of range in {ents!r}", seq=seq)
    i = ne
    while nm:
        low = nm & -nm
        nm ^= low
        c = node[i]
        i += 1
        if type(c) is int:
            if not 0 < c < seq:
                raise CorruptNodeError(f"child pointer {c!r} out of range", seq=seq)
        else:
            _check_node(c, depth + 1, (key << CHUNK_BITS) | (low.bit_length() - 1), seq, index)


def _check_bucket(node: Node, seq: int) -> None:
    if not 2 <= len(node) <= MAX_BUCKET_ENTRIES:
        raise CorruptNodeError("bad collision bucket size", seq=seq)
    keys: set[str] = set()
    for item in node:
        if (
            type(item) is not tuple
            or len(item) != 2
            or not isinstance(item[0], str)
            or type(item[1]) is not int
            or not 0 <= item[1] < seq
            or item[0] in keys
        ):
            raise CorruptNodeError("bad collision bucket entry", seq=seq)
        keys.add(item[0])


# -- blocks kept encoded (a get's walk reads its path in place) -------------------

#: `LazyBlock.walk` results: where the walk leaves the block.
WALK_ABSENT: Final = 0
WALK_ENTRY: Final = 1
WALK_CHILD: Final = 2
WALK_BUCKET: Final = 3
#: First bytes of a msgpack array: fixarray, array 16, array 32.
_ARRAY_MARKERS: Final = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}


@final
class LazyBlock:
    """A large block kept in its encoded form: a get reads only the nodes on its path.

    Decoding and checking a batch's block (~140 KB, ~2,000 nodes) takes milliseconds,
    while a get needs one to five of its nodes, or one of its entries. `walk` follows
    a path through the msgpack bytes, skipping sibling subtrees and the ops without
    building them (msgpack's C skipper), and checks each node it passes exactly as
    `decode_block` does; `value` reads one key's op. Nothing else of the block is
    checked until `decode` (the full `decode_block`), which every other reader of the
    block uses: a block damaged where a get does not look answers that get and fails
    anything that reads the rest.

    `uses` counts the reads (the `BlockCache` decodes an often-read block in full).
    """

    __slots__ = ("_ops", "data", "nbytes", "seq", "uses")

    def __init__(self, seq: int, data: bytes) -> None:
        """Keep `data` as block `seq` (> 0); nothing is decoded yet.

        Raises:
            CorruptNodeError: `seq` is the header's, or `data` is not bytes or too large.
        """
        if seq <= 0:
            raise CorruptNodeError("block 0 is the header, not a node", seq=seq)
        if type(data) is not bytes:
            raise CorruptNodeError("block is not bytes", seq=seq)
        if len(data) > MAX_BLOCK_BYTES:
            raise CorruptNodeError(f"block larger than {MAX_BLOCK_BYTES} bytes", seq=seq)
        self.seq = seq
        self.data = data
        self.nbytes = len(data)
        self.uses = 0
        self._ops: tuple[Any, ...] | None = None

    def decode(self) -> Block:
        """The whole block, decoded and checked (`decode_block`)."""
        return decode_block(self.data, self.seq)

    def _at_ops(self) -> msgpack.Unpacker:
        """An unpacker over the block, positioned at its op list (after the tag)."""
        up = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=True)
        up.feed(self.data)
        if up.read_array_header() != 3 or _int_or_none(up.unpack()) != TAG_NODE:
            raise CorruptNodeError("not an operation block", seq=self.seq)
        return up

    def walk(self, path: int, depth: int) -> tuple[int, Any, int]:
        """Walk `path` from this block's inline node at `depth` down as far as the block holds it.

        Returns ``(kind, what, depth)`` where the walk leaves the block: `WALK_ABSENT`
        (no slot for the path: the key is absent), `WALK_ENTRY` (``what``: the block
        holding the entry), `WALK_CHILD` (``what``: the block holding the child inline
        at the returned depth) or `WALK_BUCKET` (``what``: the checked collision
        bucket at `MAX_DEPTH`; its pointers are relative to this block).

        Raises:
            CorruptNodeError: a node on the way is malformed, or the block holds no
                inline node at `depth` on `path` (a child pointer named it wrongly).
        """
        seq = self.seq
        data = self.data
        try:
            up = self._at_ops()
            up.skip()  # the ops, unread
            d = 0
            # Bounded: every pass goes one level deeper; a node at MAX_DEPTH ends it.
            while True:
                if d == MAX_DEPTH:
                    bucket = up.unpack()
                    if type(bucket) is not tuple:
                        raise CorruptNodeError("node is not an array", seq=seq)
                    _check_bucket(bucket, seq)
                    return WALK_BUCKET, bucket, d
                n = up.read_array_header()
                dm = _int_or_none(up.unpack()) if n >= 2 else None
                nm = _int_or_none(up.unpack()) if n >= 2 else None
                _check_head(n, dm, nm, d, seq)
                assert dm is not None and nm is not None
                bit = 1 << ((path >> (PATH_BITS - CHUNK_BITS * (d + 1))) & CHUNK_MASK)
                if dm & bit:
                    if d < depth:
                        break
                    for _ in range((dm & (bit - 1)).bit_count()):
                        up.skip()
                    e = up.unpack()
                    if type(e) is not int or not 0 <= e < seq:
                        raise CorruptNodeError(f"entry pointer {e!r} out of range", seq=seq)
                    return WALK_ENTRY, seq - e, d
                if not nm & bit:
                    if d < depth:
                        break
                    return WALK_ABSENT, None, d
                for _ in range(dm.bit_count() + (nm & (bit - 1)).bit_count()):
                    up.skip()
                if data[up.tell()] in _ARRAY_MARKERS:
                    d += 1  # an inline child: read it next
                    continue
                c = up.unpack()
                if type(c) is not int or not 0 < c < seq:
                    raise CorruptNodeError(f"child pointer {c!r} out of range", seq=seq)
                if d + 1 <= depth:
                    break
                return WALK_CHILD, seq - c, d + 1
        except CorruptNodeError:
            raise
        except Exception as exc:  # msgpack raises many kinds; all mean "not a block"
            raise CorruptNodeError(f"block does not decode: {exc!r}", seq=seq) from exc
        raise CorruptNodeError("child pointer names a block without that node", seq=seq)

    def value(self, key: str) -> bytes | None:
        """The value this block's ops hold for `key` (None: none, or a delete).

        The ops are decoded once (kept for the next read); the op of `key` is checked
        as `decode_block` checks every op, and a key that appears twice is refused.

        Raises:
            CorruptNodeError: the op list or the op of `key` is malformed.
        """
        seq = self.seq
        ops = self._ops
        if ops is None:
            try:
                ops = self._at_ops().unpack()
            except CorruptNodeError:
                raise
            except Exception as exc:
                raise CorruptNodeError(f"block does not decode: {exc!r}", seq=seq) from exc
            if type(ops) is not tuple or len(ops) > MAX_BATCH_OPS:
                raise CorruptNodeError("bad op list", seq=seq)
            self._ops = ops
        found: tuple[Any, ...] | None = None
        for op in ops:
            if type(op) is not tuple or not op:
                raise CorruptNodeError("bad op", seq=seq)
            if op[0] == key:
                if found is not None:
                    raise CorruptNodeError(f"key {key!r} appears twice", seq=seq)
                found = op
        if found is None:
            return None
        if len(found) > 3:
            raise CorruptNodeError("bad op", seq=seq)
        if len(found) == 1:
            return None
        value = found[1]
        if not isinstance(value, bytes) or len(value) > MAX_VALUE_BYTES:
            raise CorruptNodeError("bad value in op", seq=seq)
        if len(found) == 3 and found[2] != COPY_FLAG:
            raise CorruptNodeError("bad op flag", seq=seq)
        return value


def _int_or_none(x: Any) -> int | None:
    return x if type(x) is int else None


def _check_head(n: int, dm: int | None, nm: int | None, depth: int, seq: int) -> None:
    """`_check_node`'s checks of one node's array length and bitmaps (for `LazyBlock`)."""
    if n < 2:
        raise CorruptNodeError("node too short", seq=seq)
    if dm is None or nm is None or not 0 <= dm < 1 << FANOUT:
        raise CorruptNodeError("bad bitmap", seq=seq)
    if not 0 <= nm < 1 << FANOUT or dm & nm:
        raise CorruptNodeError("bad bitmap", seq=seq)
    if n != 2 + dm.bit_count() + nm.bit_count():
        raise CorruptNodeError("bitmap does not match the slots", seq=seq)
    if depth and n == 2:
        raise CorruptNodeError("empty inner node", seq=seq)


# -- path hints (hamt.hints) --------------------------------------------------------

TAG_HINT_REQUEST: Final = 2
TAG_HINT_REPLY: Final = 3
#: Largest hint request frame (a key), and a reply's size without proofs.
MAX_HINT_FRAME: Final = 64 * 1024
#: Most block numbers in one hint (a path of 64 levels plus a full collection bucket).
MAX_HINT_BLOCKS: Final = MAX_DEPTH + MAX_BUCKET_ENTRIES + 2
#: Most bytes of block values the proofs of one hint reply carry; blocks past it are
#: named but not included (the reader fetches them through replication).
MAX_HINT_PROOF_BYTES: Final = 1024 * 1024
#: Most block proofs in one hint reply (a collision bucket's hint can name thousands of
#: blocks; those past this are fetched through replication).
MAX_HINT_PROOFS: Final = 256
#: Largest hint reply frame.
MAX_HINT_REPLY_FRAME: Final = MAX_HINT_FRAME + MAX_HINT_PROOF_BYTES + 64 * 1024
#: Most Merkle nodes in one block proof (a tree of 2**64 blocks is 64 levels deep).
MAX_PROOF_LEVELS: Final = 64
#: Bytes of a Merkle tree hash.
TREE_HASH_BYTES: Final = 32
_MAX_U64: Final = 2**64 - 1
#: The key of a hint request that asks "may I ask you for proofs?": not a valid key
#: (an empty path component), so a server from before proofs answers it with no
#: blocks in a five-element reply, and a newer one that can prove blocks answers with
#: the proofs field (`HintReply.offers_proofs`). Such a server closed the connection on
#: a request with a fork, so a client sends a fork only after this answer.
PROOF_PROBE_KEY: Final = "/"


@dataclass(frozen=True, slots=True)
class HintRequest:
    """ "Which blocks does a get of `key` at `version` read?" (0: the latest version).

    `id` pairs the reply. `fork`, when set, asks for the blocks themselves with their
    Merkle proofs against the reader's tree (its fork and length `version`).
    """

    id: int
    key: str
    version: int = 0
    fork: int | None = None


@dataclass(frozen=True, slots=True)
class BlockProofData:
    """A block and its Merkle uncles, from the leaf up: ``(index, size, hash)`` each."""

    index: int
    value: bytes
    nodes: tuple[tuple[int, int, bytes], ...]


@dataclass(frozen=True, slots=True)
class HintReply:
    """The answer: the version it was computed at, the blocks (root first), and proofs
    of some of them when the request asked for proofs and the peer could give them.

    `offers_proofs`: the reply has the proofs field (possibly empty), which a server
    from before proofs never sends; it answers a `PROOF_PROBE_KEY` request that way
    when it can prove blocks, so a client knows it may send requests with a fork.
    """

    id: int
    version: int
    blocks: list[int]
    proofs: tuple[BlockProofData, ...] = ()
    offers_proofs: bool = False

    def __post_init__(self) -> None:
        if self.proofs and not self.offers_proofs:  # a reply with proofs offers them
            object.__setattr__(self, "offers_proofs", True)


def encode_hint(msg: HintRequest | HintReply) -> bytes:
    """Encode a hint message (without framing)."""
    if isinstance(msg, HintRequest):
        obj: list[Any] = [TAG_HINT_REQUEST, FORMAT_VERSION, msg.id, msg.key, msg.version]
        if msg.fork is not None:
            obj.append(msg.fork)
    else:
        obj = [TAG_HINT_REPLY, FORMAT_VERSION, msg.id, msg.version, msg.blocks]
        if msg.proofs or msg.offers_proofs:
            obj.append([[p.index, p.value, [list(n) for n in p.nodes]] for p in msg.proofs])
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _uint(x: Any, limit: int = _MAX_U64) -> bool:
    return type(x) is int and 0 <= x <= limit


def _decode_proofs(raw: Any, blocks: list[int]) -> tuple[BlockProofData, ...]:
    if not isinstance(raw, list) or len(raw) > min(len(blocks), MAX_HINT_PROOFS):
        raise CorruptNodeError("bad proofs in hint reply")
    out = []
    named = set(blocks)
    total = 0
    for p in raw:
        if not (isinstance(p, list) and len(p) == 3 and type(p[0]) is int and p[0] in named):
            raise CorruptNodeError("bad proof in hint reply")
        value, nodes = p[1], p[2]
        if not isinstance(value, bytes) or not isinstance(nodes, list):
            raise CorruptNodeError("bad proof in hint reply")
        total += len(value)
        if total > MAX_HINT_PROOF_BYTES or len(nodes) > MAX_PROOF_LEVELS:
            raise CorruptNodeError("hint proofs too large")
        for n in nodes:
            if not (
                isinstance(n, list)
                and len(n) == 3
                and _uint(n[0])
                and _uint(n[1])
                and isinstance(n[2], bytes)
                and len(n[2]) == TREE_HASH_BYTES
            ):
                raise CorruptNodeError("bad Merkle node in hint proof")
        out.append(BlockProofData(p[0], value, tuple((n[0], n[1], n[2]) for n in nodes)))
    return tuple(out)


def decode_hint(data: bytes) -> HintRequest | HintReply:
    """Decode and check a hint message; raise `CorruptNodeError` on anything else.

    (Proofs are only checked for shape here; the log verifies them.)
    """
    if len(data) > MAX_HINT_REPLY_FRAME:
        raise CorruptNodeError("hint message too large")
    try:
        obj = msgpack.unpackb(data, raw=False, use_list=True)
    except Exception as exc:
        raise CorruptNodeError(f"hint message does not decode: {exc}") from exc
    ok_id = isinstance(obj, list) and len(obj) >= 4 and type(obj[2]) is int and 0 <= obj[2] < 2**32
    if not ok_id or obj[1] != FORMAT_VERSION:
        raise CorruptNodeError("bad hint message")
    if obj[0] == TAG_HINT_REQUEST and len(obj) in (5, 6):
        key, version = obj[3], obj[4]
        if len(data) > MAX_HINT_FRAME:
            raise CorruptNodeError("hint request too large")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_BYTES:
            raise CorruptNodeError("bad key in hint request")
        if type(version) is not int or not 0 <= version < 2**63:
            raise CorruptNodeError("bad version in hint request")
        fork = obj[5] if len(obj) == 6 else None
        if fork is not None and not _uint(fork):
            raise CorruptNodeError("bad fork in hint request")
        return HintRequest(obj[2], key, version, fork)
    if obj[0] == TAG_HINT_REPLY and len(obj) in (5, 6):
        version, blocks = obj[3], obj[4]
        if (
            type(version) is int
            and version >= 0
            and isinstance(blocks, list)
            and len(blocks) <= MAX_HINT_BLOCKS
            and all(type(b) is int and 0 < b < version for b in blocks)
        ):
            proofs = _decode_proofs(obj[5], blocks) if len(obj) == 6 else ()
            return HintReply(obj[2], version, blocks, proofs, len(obj) == 6)
    raise CorruptNodeError("bad hint message")
