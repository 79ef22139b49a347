"""Sans-IO read walks over the trie: lookup, iteration, prefix listing, diff, path hints.

Theory of operation
-------------------
Every walk is a generator that *yields the sequence number of a block it needs*
and is *sent the decoded `Block`* in return, like h11's ``NEED_DATA``: the caller
decides where bytes come from (a local log, a cache, a peer). Blocks already in the
`BlockCache` are used without yielding, so a local get that hits the cache runs
to completion in one step. `drive_sync` runs a walk against a synchronous block
source; `hamt.index` runs the same walks in Trio, fetching misses from the log.

Iteration walks yield two kinds of things: an ``int`` (a block request: send the
block back) or an item (send ``None``). Item order is hash order (chunk 0 first),
which is stable for a given HAMT, not sorted.

Where a pointer leads: a node's entry slot names the block whose ops hold the entry;
a child slot either *is* the child (an inline tuple, rewritten by the same block) or
names an older block whose root-to-here path holds the child inline (`descend`).
Pointers strictly decrease along any walk (checked by `wire.decode_block`), so every
walk ends; depth is bounded by `MAX_DEPTH`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from .cache import BlockCache
from .constants import CHUNK_BITS, FANOUT, MAX_DEPTH, PATH_BITS
from .errors import CorruptNodeError
from .hashing import chunk
from .wire import (
    EMPTY_ROOT,
    WALK_ABSENT,
    WALK_BUCKET,
    WALK_ENTRY,
    Block,
    BlockRecord,
    LazyBlock,
    Node,
    record_node,
    record_value,
)

__all__ = [
    "DiffItem",
    "Done",
    "NeedBlock",
    "Stepper",
    "Item",
    "descend",
    "diff",
    "drive_sync",
    "iterate",
    "lookup",
    "path_blocks",
]

T = TypeVar("T")
#: A walk that needs blocks and returns T.
Steps: TypeAlias = Generator[int, Block, T]
PathFn: TypeAlias = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class Item:
    """One entry met by an iteration: its key, value and the block that holds it."""

    key: str
    value: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class DiffItem:
    """A key whose value differs between two versions (None: absent on that side)."""

    key: str
    left: bytes | None
    right: bytes | None


ItemSteps: TypeAlias = Generator["int | Item", "Block | None", None]
DiffSteps: TypeAlias = Generator["int | DiffItem", "Block | None", None]


def position(path: int, depth: int) -> int:
    """Return `path` with every chunk at or after `depth` cleared."""
    shift = PATH_BITS - CHUNK_BITS * depth
    return (path >> shift) << shift if shift < PATH_BITS else 0


def descend(block: Block, path: int, depth: int) -> Node:
    """Return the node at `depth` on `path` that `block` holds inline (a child pointer's target)."""
    node = block.node_at(path, depth)
    if node is None:
        raise CorruptNodeError("child pointer names a block without that node", seq=block.seq)
    return node


def lookup(
    root: Block | LazyBlock, key: str, path: int, cache: BlockCache
) -> Generator[int, Block | LazyBlock, bytes | None]:
    """Find `key` (whose trie path is `path`) in the trie rooted at `root`.

    Returns the value bytes, or None if the key is absent. Blocks may come decoded
    or kept encoded (`LazyBlock`, walked in place): a lookup may be sent either.
    """
    src = root.seq  # the block holding `node`: pointers in it are relative to src
    depth = 0
    node: Node = EMPTY_ROOT
    got: BlockRecord | Block | LazyBlock | None
    rec: BlockRecord | None
    lazy: LazyBlock | None = None
    if type(root) is LazyBlock:
        lazy = root
    else:
        node = root.root
    # Bounded: each pass descends at least one level (MAX_DEPTH ends it) or returns.
    while True:
        if lazy is not None:
            kind, what, depth = lazy.walk(path, depth)
            if kind == WALK_ABSENT:
                return None
            if kind == WALK_ENTRY:
                got = cache.peek(what)
                if got is None:
                    got = yield what
                return _value(got, key)
            if kind == WALK_BUCKET:
                node, src, lazy = what, lazy.seq, None
            else:  # WALK_CHILD: the child is inline in block `what`
                src = what
                got = cache.peek(src)
                if got is None:
                    got = yield src
                if type(got) is LazyBlock:
                    lazy = got
                    continue
                lazy = None
                if type(got) is Block:
                    node = descend(got, path, depth)
                else:
                    node = record_node(got, path, depth)
        if depth == MAX_DEPTH:
            for k, s in node:
                if k == key:
                    s = src - s
                    got = cache.peek(s)
                    if got is None:
                        got = yield s
                    value = _value(got, key)
                    if value is None:
                        raise CorruptNodeError("bucket names a block without the key", seq=s)
                    return value
            return None
        bit = 1 << ((path >> (PATH_BITS - CHUNK_BITS * (depth + 1))) & (FANOUT - 1))
        dm = node[0]
        if dm & bit:
            s = src - node[2 + (dm & (bit - 1)).bit_count()]
            rec = cache.decoded(s)  # (the cached tuple: no `Block` built per hop)
            if rec is not None:
                return record_value(rec, key)
            got = cache.kept(s)
            if got is None:
                got = yield s
            return _value(got, key)
        nm = node[1]
        if not nm & bit:
            return None
        c = node[2 + dm.bit_count() + (nm & (bit - 1)).bit_count()]
        depth += 1
        if type(c) is tuple:
            node = c
        else:
            src -= c
            rec = cache.decoded(src)
            if rec is not None:
                node = record_node(rec, path, depth)
                continue
            got = cache.kept(src)
            if got is None:
                got = yield src
            if type(got) is LazyBlock:
                lazy = got
            elif type(got) is Block:
                node = descend(got, path, depth)
            else:
                node = record_node(got, path, depth)


def _value(got: BlockRecord | Block | LazyBlock, key: str) -> bytes | None:
    """The value block `got` (a cached tuple, a decoded or a kept-encoded block) holds for `key`."""
    if type(got) is tuple:
        return record_value(got, key)
    if type(got) is LazyBlock:
        return got.value(key)
    assert type(got) is Block
    return got.puts.get(key)


def path_blocks(root: Block, path: int, cache: BlockCache) -> Steps[list[int]]:
    """Return the blocks a lookup of `path` reads, root first (the prefetch hint).

    A peer that holds the blocks computes this and sends it to a sparse reader, which
    then requests them all at once: one round trip instead of one per level.
    """
    seqs = [root.seq]
    node = root.root
    src = root.seq
    depth = 0
    while depth < MAX_DEPTH:
        bit = 1 << chunk(path, depth)
        dm, nm = node[0], node[1]
        if dm & bit:
            s = src - node[2 + (dm & (bit - 1)).bit_count()]
            if s not in seqs:
                seqs.append(s)
            return seqs
        if not nm & bit:
            return seqs
        c = node[2 + dm.bit_count() + (nm & (bit - 1)).bit_count()]
        depth += 1
        if type(c) is tuple:
            node = c
            continue
        src -= c
        seqs.append(src)
        b = cache.get(src)
        if b is None:
            b = yield src
        node = descend(b, path, depth)
    for _k, s in node:  # a collision bucket: every key's block
        if src - s not in seqs:
            seqs.append(src - s)
    return seqs


def _get(cache: BlockCache, seq: int) -> Generator[int, Any, Block]:
    b = cache.get(seq)
    if b is None:
        b = yield seq
    assert b is not None
    return b


def _child(
    c: Any, src: int, path: int, depth: int, cache: BlockCache
) -> Generator[int, Any, tuple[Node, int]]:
    """Resolve child slot `c` of a node held by block `src`: (node at `depth`, its block)."""
    if type(c) is tuple:
        return c, src
    b = yield from _get(cache, src - c)
    return descend(b, path, depth), src - c


def _entry(
    s: int, path: int, depth: int, cache: BlockCache, path_fn: PathFn
) -> Generator[int, Any, Item]:
    """Resolve the entry slot at position (`path`, `depth`) naming block `s`."""
    b = yield from _get(cache, s)
    key = b.entry_at(path_fn, path, depth)
    return Item(key, b.puts[key], s)


def _bucket_items(node: Node, src: int, cache: BlockCache) -> Generator[int, Any, list[Item]]:
    out = []
    for k, rel in node:
        s = src - rel
        b = yield from _get(cache, s)
        value = b.puts.get(k)
        if value is None:
            raise CorruptNodeError("bucket names a block without the key", seq=s)
        out.append(Item(k, value, s))
    return out


def _walk(
    node: Node, src: int, depth: int, prefix: int, cache: BlockCache, path_fn: PathFn
) -> ItemSteps:
    if depth == MAX_DEPTH:
        for item in (yield from _bucket_items(node, src, cache)):
            yield item
        return
    dm, nm = node[0], node[1]
    ne = dm.bit_count()
    ei = 2
    ci = 2 + ne
    shift = PATH_BITS - CHUNK_BITS * (depth + 1)
    for c in range(FANOUT):
        bit = 1 << c
        if dm & bit:
            item = yield from _entry(
                src - node[ei], prefix | (c << shift), depth + 1, cache, path_fn
            )
            ei += 1
            yield item
        elif nm & bit:
            sub = prefix | (c << shift)
            child, csrc = yield from _child(node[ci], src, sub, depth + 1, cache)
            ci += 1
            yield from _walk(child, csrc, depth + 1, sub, cache, path_fn)


def iterate(
    root: Block, cache: BlockCache, path_fn: PathFn, prefix: int = 0, depth: int = 0
) -> ItemSteps:
    """Yield every `Item` whose path starts with `prefix`'s first `depth` chunks."""
    node: Node = root.root
    src = root.seq
    for d in range(depth):
        bit = 1 << chunk(prefix, d)
        dm, nm = node[0], node[1]
        if dm & bit:
            item = yield from _entry(
                src - node[2 + (dm & (bit - 1)).bit_count()], prefix, d + 1, cache, path_fn
            )
            if position(path_fn(item.key), depth) == position(prefix, depth):
                yield item
            return
        if not nm & bit:
            return
        c = node[2 + dm.bit_count() + (nm & (bit - 1)).bit_count()]
        node, src = yield from _child(c, src, prefix, d + 1, cache)
    yield from _walk(node, src, depth, position(prefix, depth), cache, path_fn)


def _slot(node: Node | None, c: int) -> tuple[str, Any]:
    """Classify chunk `c` of `node`: ("", None), ("e", pointer) or ("n", child)."""
    if node is None:
        return "", None
    bit = 1 << c
    dm, nm = node[0], node[1]
    if dm & bit:
        return "e", node[2 + (dm & (bit - 1)).bit_count()]
    if nm & bit:
        return "n", node[2 + dm.bit_count() + (nm & (bit - 1)).bit_count()]
    return "", None


def _collect(
    kind: str, val: Any, src: int, prefix: int, depth: int, cache: BlockCache, path_fn: PathFn
) -> Generator[int, Any, dict[str, bytes]]:
    """All entries of one slot as a dict (for diffing slots of different shapes)."""
    if kind == "":
        return {}
    if kind == "e":
        item = yield from _entry(src - val, prefix, depth, cache, path_fn)
        return {item.key: item.value}
    child, csrc = yield from _child(val, src, prefix, depth, cache)
    out: dict[str, bytes] = {}
    walk = _walk(child, csrc, depth, prefix, cache, path_fn)
    sent: Any = None
    while True:
        try:
            got = walk.send(sent)
        except StopIteration:
            return out
        if isinstance(got, int):
            sent = yield got
        else:
            out[got.key] = got.value
            sent = None


def _diff_dicts(a: dict[str, bytes], b: dict[str, bytes]) -> Iterator[DiffItem]:
    for k in sorted(a.keys() | b.keys()):
        va, vb = a.get(k), b.get(k)
        if va != vb:
            yield DiffItem(k, va, vb)


def _diff(
    an: Node,
    asrc: int,
    bn: Node,
    bsrc: int,
    depth: int,
    prefix: int,
    cache: BlockCache,
    path_fn: PathFn,
) -> DiffSteps:
    if depth == MAX_DEPTH:
        ia = yield from _bucket_items(an, asrc, cache)
        ib = yield from _bucket_items(bn, bsrc, cache)
        for d in _diff_dicts({i.key: i.value for i in ia}, {i.key: i.value for i in ib}):
            yield d
        return
    shift = PATH_BITS - CHUNK_BITS * (depth + 1)
    for c in range(FANOUT):
        ka, va = _slot(an, c)
        kb, vb = _slot(bn, c)
        # A slot's identity is the block that wrote it: equal identities, equal subtrees.
        ida = asrc if type(va) is tuple else asrc - (va or 0)
        idb = bsrc if type(vb) is tuple else bsrc - (vb or 0)
        if ka == kb and (ka == "" or ida == idb):
            continue
        sub = prefix | (c << shift)
        if ka == "n" and kb == "n":
            ca, casrc = yield from _child(va, asrc, sub, depth + 1, cache)
            cb, cbsrc = yield from _child(vb, bsrc, sub, depth + 1, cache)
            yield from _diff(ca, casrc, cb, cbsrc, depth + 1, sub, cache, path_fn)
            continue
        da = yield from _collect(ka, va, asrc, sub, depth + 1, cache, path_fn)
        db = yield from _collect(kb, vb, bsrc, sub, depth + 1, cache, path_fn)
        for d in _diff_dicts(da, db):
            yield d


def diff(left: Block, right: Block, cache: BlockCache, path_fn: PathFn) -> DiffSteps:
    """Yield a `DiffItem` for every key whose value differs between two roots.

    Subtrees written by the same block are skipped unread, so the cost follows the
    size of the change, not of the HAMT.
    """
    if left.seq == right.seq:
        return
    yield from _diff(left.root, left.seq, right.root, right.seq, 0, 0, cache, path_fn)


@dataclass(frozen=True, slots=True)
class NeedBlock:
    """The walk cannot go on without block `seq`: pass it to `Stepper.receive_block`."""

    seq: int


@dataclass(frozen=True, slots=True)
class Done(Generic[T]):
    """The walk finished with `result`."""

    result: T


class Stepper(Generic[T]):
    """An h11-style face for a walk: ``next_event()`` is `NeedBlock` or `Done`.

    ```
    st = Stepper(lookup(root, key, path, cache))
    while isinstance(ev := st.next_event(), NeedBlock):
        st.receive_block(decode_block(fetch_bytes(ev.seq), ev.seq))
    value = ev.result
    ```
    """

    def __init__(self, steps: Generator[int, Block, T]) -> None:
        self._steps = steps
        self._event: NeedBlock | Done[T] | None = None
        self._advance(None)

    def _advance(self, block: Block | None) -> None:
        try:
            seq = next(self._steps) if block is None else self._steps.send(block)
        except StopIteration as stop:
            self._event = Done(stop.value)
        else:
            self._event = NeedBlock(seq)

    def next_event(self) -> NeedBlock | Done[T]:
        """Return what the walk needs now (the same event until you answer it)."""
        assert self._event is not None
        return self._event

    def receive_block(self, block: Block) -> None:
        """Answer a `NeedBlock` with the decoded block it named.

        Raises:
            ValueError: no block is needed, or this is not the block asked for.
        """
        event = self._event
        if not isinstance(event, NeedBlock) or block.seq != event.seq:
            raise ValueError(f"expected {event!r}, got block {block.seq}")
        self._advance(block)


def drive_sync(steps: Generator[int, Block, T], fetch: Callable[[int], Block]) -> T:
    """Run a walk to completion, answering each block request with `fetch(seq)`."""
    try:
        seq = next(steps)
        while True:
            seq = steps.send(fetch(seq))
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
