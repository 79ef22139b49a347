"""Sans-IO writes: path-copying puts and deletes that build one block per operation or batch.

Theory of operation
-------------------
A `Mutation` starts from the current root block and applies puts and deletes to a
tree of `_Dirty` nodes: a node is copied from its block the first time a write
passes through it (copy-on-write), and everything not copied stays a pointer to
the block that holds it. `encode` then serializes the dirty part, root first, as
one block: new entries become pointers to the new block, untouched subtrees stay
pointers to older blocks. A batch of a thousand puts rewrites each shared node
once, which is why a batch costs far fewer bytes per key than single puts.

Like the read walks in `trie`, the methods are generators that yield the number of
a block they need and are sent the decoded `Block`.

The retained trie. Copying each node of the path out of its decoded block (turning
its relative pointers into absolute ones) is most of a single put's own cost. So
`encode` leaves the mutated tree *clean*: every node it wrote is marked as "inline
in the new block" (`src`), its new entries become that block's number, and the
writer keeps the tree (`Retained`) as the base of its next mutation. A clean node
is used in place: a write through it only clears its `src` (it is rewritten into
the next block), and an untouched clean child is encoded as a pointer to its `src`.
Nodes are materialized lazily and only the top `RETAIN_DEPTH` levels are kept
(at most 4,369 nodes): deeper nodes are replaced by a pointer to the new block
once it is encoded, and copied from their blocks again when a write passes them.
The writer may only reuse the tree for the very next block of the same log and
fork (`index.Hamt` checks), and a mutation that fails leaves it half-changed, so
the writer discards it then.

Entry pointers. An entry slot names only a block, and a reader finds the entry in
that block by key (a get) or by hash prefix (iteration). That is unambiguous
because the writer keeps one rule: an entry slot at position Q naming block B means
B holds exactly one entry whose path starts with Q. A put that pushes an old entry
deeper keeps the rule (the old entry was alone under a shorter prefix when B was
written); a delete that lifts an entry up a level (collapsing a node left with one
entry) re-homes it, i.e. copies its key and value into the new block as a "copy"
op, exactly as hypertrie re-appends the node it keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeAlias, final

from .cache import BlockCache
from .constants import (
    CHUNK_BITS,
    CHUNK_MASK,
    MAX_BATCH_OPS,
    MAX_BLOCK_BYTES,
    MAX_BUCKET_ENTRIES,
    MAX_DEPTH,
    PATH_BITS,
    PATH_HASH_BYTES,
    RETAIN_DEPTH,
)
from .errors import BatchTooLargeError, CorruptNodeError
from .hashing import FULL_PATH_DIRS, chunk, full_path_directory
from .trie import descend, position
from .wire import COPY_FLAG, Block, Node, encode_node_block, hold_young, record_node

__all__ = ["Mutation", "Retained"]


@final
class _New:
    """An entry written by the block under construction."""

    __slots__ = ("copy", "existed", "key", "path", "value")

    def __init__(self, key: str, value: bytes, path: int, *, copy: bool = False) -> None:
        self.key = key
        self.value = value
        self.path = path
        self.copy = copy
        # Whether the key had a value before this mutation (decides whether a later
        # delete in the same batch is a real change worth an op).
        self.existed = False


_Entry: TypeAlias = "int | _New"


@final
class _Dirty:
    """A decoded node of the block under construction (or a retained, clean one).

    `slots` holds one absolute block number per slot, in the node's own order
    (entries, then children), so `encode` turns them into relative pointers with one
    list comprehension: an entry's block (this block's number for the entries it
    writes, whose `_New` is in `news` by chunk bit), then for each child the block
    holding it inline. `kids` holds the children decoded in memory, by chunk bit
    (retained ones and the ones this mutation opened); a clean kid's `src` equals
    its slot, and `dirty` has the bit of each kid this mutation rewrites, so
    `encode` visits only those.
    """

    __slots__ = ("dirty", "dm", "kids", "news", "nm", "slots", "src")

    def __init__(self, dm: int, nm: int, slots: list[int]) -> None:
        self.dm = dm
        self.nm = nm
        self.slots = slots
        self.news: dict[int, _New] | None = None
        self.kids: dict[int, _Dirty | _Bucket] | None = None
        self.dirty = 0
        # None: rewritten by the block under construction; an int: clean, equal to the
        # node block `src` holds inline at this position (a retained node).
        self.src: int | None = None

    @staticmethod
    def copy_of(node: Node, src: int) -> _Dirty:
        # Pointers are stored relative to the block holding them; dirty nodes hold
        # absolute block numbers until `encode` makes them relative to the new block.
        ne = 2 + node[0].bit_count()
        slots = [src - e for e in node[2:ne]]
        slots += [src if type(c) is tuple else src - c for c in node[ne:]]
        return _Dirty(node[0], node[1], slots)

    def add_kid(self, bit: int, kid: _Dirty | _Bucket) -> None:
        """Record decoded child `kid` at chunk bit `bit` as rewritten by this mutation."""
        kids = self.kids
        if kids is None:
            kids = self.kids = {}
        kids[bit] = kid
        self.dirty |= bit

    def set_new(self, bit: int, new: _New) -> None:
        """Note that the entry at chunk bit `bit` is `new` (written by this block)."""
        news = self.news
        if news is None:
            news = self.news = {}
        news[bit] = new


@final
class _Bucket:
    __slots__ = ("items", "src")

    def __init__(self, items: list[tuple[str, _Entry]]) -> None:
        self.items = items
        self.src: int | None = None


@final
class Retained:
    """The decoded trie of block `seq`, kept by its writer as the base of the next block.

    Only `Mutation` reads or changes it; a `Mutation` built on it consumes it (it is
    changed in place), and `Mutation.retained` hands back the new one.
    """

    __slots__ = ("root", "seq")

    def __init__(self, root: _Dirty, seq: int) -> None:
        self.root = root
        self.seq = seq


_Steps: TypeAlias = Generator[int, Block, Any]


def _bucket_full(key: str) -> str:
    """The message of a put refused because its key's collision bucket is full."""
    message = f"collision bucket full: {MAX_BUCKET_ENTRIES} keys already have the path of {key!r}"
    directory = full_path_directory(key)
    if directory is None:
        return message
    return (
        f"{message}: the hashes of its directory {directory!r} ({FULL_PATH_DIRS} levels "
        f"deep) fill the whole {PATH_HASH_BYTES}-byte path, so every key under it has that "
        f"one path; at most {MAX_BUCKET_ENTRIES} keys fit under a directory "
        f"{FULL_PATH_DIRS} or more levels deep (docs/hamt.md, Hashing)"
    )


@final
class Mutation:
    """The writes of one block (one put, one delete, or one batch) in progress."""

    def __init__(
        self,
        base: Block | Retained,
        new_seq: int,
        path_fn: Callable[[str], int],
        cache: BlockCache,
    ) -> None:
        """Start a block after `base`: a decoded block, or the tree its writer retained.

        A `Retained` base is consumed: this mutation changes it in place.
        """
        if new_seq <= base.seq:
            raise ValueError("new block must come after its base")
        self.base_seq = base.seq
        self.new_seq = new_seq
        self._path = path_fn
        self._cache = cache
        if type(base) is Retained:
            root = base.root
            if root.src != base.seq:
                raise ValueError("the retained tree was already used")
        else:
            assert type(base) is Block
            root = _Dirty.copy_of(base.root, base.seq)
        root.src = None  # every block rewrites the root
        self._root = root
        self._retained: Retained | None = None
        self._touched: dict[str, None] = {}
        self._deletes: dict[str, None] = {}
        # Entries this block writes that are in the trie now, by key.
        self._news: dict[str, _New] = {}

    # -- helpers -------------------------------------------------------------------

    def _get(self, seq: int) -> _Steps:
        b = self._cache.get(seq)
        if b is None:
            b = yield seq
        return b

    def _open(self, node: _Dirty, bit: int, depth: int, path: int) -> _Steps:
        """Make the child at chunk bit `bit` of `node` (at `depth`) dirty and return it."""
        kids = node.kids
        c = kids.get(bit) if kids is not None else None
        if c is not None:
            if c.src is not None:  # a retained node: rewritten from now on
                c.src = None
                node.dirty |= bit
            return c
        src = node.slots[node.dm.bit_count() + (node.nm & (bit - 1)).bit_count()]
        rec = self._cache.record(src)
        if rec is not None:
            child = record_node(rec, path, depth)
        else:
            b = yield src
            child = descend(b, path, depth)
        d: _Dirty | _Bucket
        if depth == MAX_DEPTH:
            d = _Bucket([(k, src - s) for k, s in child])
        else:
            d = _Dirty.copy_of(child, src)
        node.add_kid(bit, d)
        return d

    def _entry(self, node: _Dirty, i: int, bit: int) -> _Entry:
        """The entry in slot `i` (chunk bit `bit`) of `node`: a block number or a `_New`."""
        e = node.slots[i]
        if e == self.new_seq:
            assert node.news is not None
            return node.news[bit]
        return e

    def _cached_entry_key(self, e: int, key: str, path: int, depth: int) -> Any:
        """`_entry_key` of an old entry whose block is cached, without a generator; else None."""
        rec = self._cache.record(e)
        if rec is None:
            return None
        puts = rec[3]
        if type(puts) is not tuple:  # several entries: the block's sorted index
            if key in puts:
                return key, None
            return Block.from_record(rec).entry_with_path(self._path, path, depth)
        if puts and puts[0] == key:
            return key, None
        if puts:
            p = self._path(puts[0])
            shift = PATH_BITS - CHUNK_BITS * depth
            if p >> shift == path >> shift:
                return puts[0], p
        raise CorruptNodeError("entry pointer names a block without that entry", seq=e)

    def _entry_key(self, e: _Entry, key: str, path: int, depth: int) -> _Steps:
        """``(key, path)`` of entry slot `e` at position (`path`, `depth`); `key` is ours.

        The path is None when the entry is `key` itself.
        """
        if type(e) is _New:
            return e.key, e.path
        b: Block = yield from self._get(e)
        if key in b.puts:  # the rule above: then it is this very entry
            return key, None
        return b.entry_with_path(self._path, path, depth)

    def _rehome(self, key: str, e: _Entry) -> _Steps:
        """Return an entry that may live higher up than `e` does now."""
        if type(e) is _New:
            return e
        b: Block = yield from self._get(e)
        value = b.puts.get(key)
        if value is None:
            raise CorruptNodeError("entry pointer names a block without the key", seq=b.seq)
        n = _New(key, value, self._path(key), copy=True)
        n.existed = True
        self._news[key] = n
        return n

    def _count(self, key: str) -> None:
        if key not in self._touched:
            if len(self._touched) >= MAX_BATCH_OPS:
                raise BatchTooLargeError(f"more than {MAX_BATCH_OPS} keys in one batch")
            self._touched[key] = None

    # -- writes --------------------------------------------------------------------

    def put(self, key: str, value: bytes, path: int) -> _Steps:
        """Set `key` (with trie path `path`) to `value`."""
        self._count(key)
        new = _New(key, value, path)
        if self._deletes.pop(key, 0) is None:
            new.existed = True
        self._news[key] = new
        new_seq = self.new_seq
        node: Any = self._root
        depth = 0
        shift = PATH_BITS
        while True:
            if depth == MAX_DEPTH:
                items = node.items
                for i, (k, e) in enumerate(items):
                    if k == key:
                        new.existed = new.existed or type(e) is int or e.existed
                        items[i] = (key, new)
                        return None
                if len(items) >= MAX_BUCKET_ENTRIES:
                    raise BatchTooLargeError(_bucket_full(key))
                items.append((key, new))
                return None
            shift -= CHUNK_BITS
            bit = 1 << ((path >> shift) & CHUNK_MASK)
            dm = node.dm
            if dm & bit:
                i = (dm & (bit - 1)).bit_count()
                e = self._entry(node, i, bit)
                if type(e) is _New:
                    ekey, epath = e.key, e.path
                else:
                    found = self._cached_entry_key(e, key, path, depth + 1)
                    if found is None:
                        found = yield from self._entry_key(e, key, path, depth + 1)
                    ekey, epath = found
                if epath is None or ekey == key:
                    new.existed = new.existed or isinstance(e, int) or e.existed
                    node.slots[i] = new_seq
                    node.set_new(bit, new)
                    return None
                # Another key holds the slot: push it one level down and go on.
                del node.slots[i]
                node.dm = dm ^ bit
                if type(e) is _New:
                    assert node.news is not None
                    del node.news[bit]
                child: _Dirty | _Bucket
                if depth + 1 == MAX_DEPTH:
                    child = _Bucket([(ekey, e)])
                else:
                    cbit = 1 << ((epath >> (shift - CHUNK_BITS)) & CHUNK_MASK)
                    child = _Dirty(cbit, 0, [new_seq if type(e) is _New else e])
                    if type(e) is _New:
                        child.set_new(cbit, e)
                node.slots.insert(dm.bit_count() - 1 + (node.nm & (bit - 1)).bit_count(), new_seq)
                node.nm |= bit
                node.add_kid(bit, child)
                node = child
                depth += 1
                continue
            if node.nm & bit:
                kids = node.kids
                c = kids.get(bit) if kids is not None else None
                if type(c) is _Dirty:  # retained or already rewritten: no generator needed
                    if c.src is not None:
                        c.src = None
                        node.dirty |= bit
                    node = c
                else:
                    node = yield from self._open(node, bit, depth + 1, path)
                depth += 1
                continue
            node.slots.insert((dm & (bit - 1)).bit_count(), new_seq)
            node.dm = dm | bit
            node.set_new(bit, new)
            return None

    def delete(self, key: str, path: int) -> _Steps:
        """Remove `key`; return True if it was present."""
        node: Any = self._root
        depth = 0
        stack: list[tuple[_Dirty, int]] = []
        removed: _Entry
        while True:
            if depth == MAX_DEPTH:
                for i, (k, e) in enumerate(node.items):
                    if k == key:
                        removed = e
                        del node.items[i]
                        break
                else:
                    return False
                break
            bit = 1 << chunk(path, depth)
            if node.dm & bit:
                i = (node.dm & (bit - 1)).bit_count()
                e = self._entry(node, i, bit)
                ekey, epath = yield from self._entry_key(e, key, path, depth + 1)
                if epath is not None and ekey != key:
                    return False
                removed = e
                del node.slots[i]
                node.dm ^= bit
                if type(e) is _New:
                    assert node.news is not None
                    del node.news[bit]
                break
            if not node.nm & bit:
                return False
            stack.append((node, bit))
            node = yield from self._open(node, bit, depth + 1, path)
            depth += 1
        self._count(key)
        if isinstance(removed, int) or removed.existed:
            self._deletes[key] = None
        self._news.pop(key, None)
        # Collapse: a node left with one entry and no children moves that entry up.
        while stack:
            nd = depth  # the depth of `node`
            parent, bit = stack.pop()
            depth -= 1
            lone: tuple[str, _Entry] | None
            if type(node) is _Bucket:
                if len(node.items) >= 2:
                    break
                lone = node.items[0] if node.items else None
            else:
                if node.nm or node.dm.bit_count() > 1:
                    break
                lone = None
                if node.dm:
                    e = self._entry(node, 0, node.dm)
                    epos = position(path, nd) | (node.dm.bit_length() - 1) << (
                        PATH_BITS - CHUNK_BITS * (nd + 1)
                    )
                    ekey, _ = yield from self._entry_key(e, "", epos, nd + 1)
                    lone = (ekey, e)
            del parent.slots[parent.dm.bit_count() + (parent.nm & (bit - 1)).bit_count()]
            assert parent.kids is not None  # (the stack holds opened nodes only)
            del parent.kids[bit]
            parent.dirty &= ~bit
            parent.nm ^= bit
            if lone is not None:
                moved = yield from self._rehome(lone[0], lone[1])
                parent.slots.insert((parent.dm & (bit - 1)).bit_count(), self.new_seq)
                parent.dm |= bit
                parent.set_new(bit, moved)
            node = parent
        return True

    # -- output --------------------------------------------------------------------

    @property
    def changed(self) -> bool:
        """Whether any op changed something (a block is worth writing)."""
        return bool(self._touched)

    def encode(self) -> tuple[bytes, Block]:
        """Serialize the block; return its bytes and its decoded form (for the cache).

        Also makes the tree clean for the new block (see `retained`).

        Raises:
            BatchTooLargeError: the block would exceed `MAX_BLOCK_BYTES`.
        """
        seq = self.new_seq
        news = self._news
        made: list[tuple[Any, ...]] = []  # every tuple the decoded block is made of

        def enc(node: Any, depth: int) -> Node:
            if type(node) is _Bucket:
                items = node.items
                node.items = [(k, seq if type(e) is _New else e) for k, e in items]
                node.src = seq
                pairs = [(k, 0 if type(e) is _New else seq - e) for k, e in items]
                made.extend(pairs)
                made.append(bucket := tuple(pairs))
                return bucket
            slots = node.slots
            rel = [seq - x for x in slots]
            dirty = node.dirty
            if dirty:
                kids = node.kids
                assert kids is not None
                nm = node.nm
                base = node.dm.bit_count()
                deeper = depth + 1
                while dirty:
                    bit = dirty & -dirty
                    dirty ^= bit
                    i = base + (nm & (bit - 1)).bit_count()
                    rel[i] = enc(kids[bit], deeper)
                    slots[i] = seq
                node.dirty = 0
            if depth + 1 >= RETAIN_DEPTH:
                node.kids = None  # deeper nodes are not retained: the block has them
            node.news = None  # (their slots hold `seq` already)
            node.src = seq
            out = (node.dm, node.nm, *rel)
            made.append(out)
            return out

        root = enc(self._root, 0)
        ops: list[tuple[Any, ...]] = []
        puts: dict[str, bytes] = {}
        for k in self._touched:
            n = news.get(k)
            if n is not None and not n.copy:
                ops.append((k, n.value))
                puts[k] = n.value
            elif k in self._deletes:
                ops.append((k,))
        for k, n in news.items():
            if k not in puts:
                ops.append((k, n.value, COPY_FLAG))
                puts[k] = n.value
        data = encode_node_block(ops, root)
        if len(data) > MAX_BLOCK_BYTES:
            raise BatchTooLargeError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_BYTES}")
        self._retained = Retained(self._root, seq)
        made += ops
        made.append(op_tuple := tuple(ops))
        hold_young(made)
        return data, Block(seq, root, op_tuple, puts, len(data))

    def retained(self) -> Retained | None:
        """After `encode`: the tree of the new block, to base the writer's next mutation on.

        Valid only once the block is stored as block `new_seq` of the same log and fork.
        """
        return self._retained
