"""The sans-IO Merkle tree engine: roots, append, truncate, byte offsets and seeks.

Theory of operation
-------------------
A log of ``length`` blocks is a forest of perfect binary trees (flat-tree numbering, see
`hyperlog.flat_tree`); its *roots* are their tops, left to right. `MerkleTree` holds only
what a reader must trust in memory: the roots, the length and byte length, the fork and
the signature over them. Every other node lives in storage.

The engine never does I/O. When it needs a stored node it calls a ``get_node(index)``
callable the storage layer supplies (`NodeGetter`), which returns the `TreeNode` or None
when it is not stored. The calls are synchronous on purpose: the storage layer prefetches
the nodes it knows will be asked for (`hyperlog.proof.proof_node_indices` lists them for a
proof; a local seek or byte offset needs ``O(log n)`` nodes) in one read, then serves the
getter from that dict, falling back to single reads. This is simpler to drive than a
"need node N" stepper and costs nothing for the common, fully predictable cases.

State changes are two-phase, so a crash or an error can never leave memory and storage
disagreeing:

1. `MerkleTree.append` and `MerkleTree.truncate` are pure: they return a batch (new
   nodes, new roots, new length, the tree hash to sign) and do not touch the tree;
   `hyperlog.proof.verify_proof` does the same for remote data (`VerifiedBatch`);
2. the caller signs the batch (writers), writes it in one storage transaction, then
   calls `MerkleTree.apply` to move the in-memory state forward.

`apply` refuses a batch built from another state than the current one (`StaleBatchError`
is a `ValueError`): a batch is only valid against the exact head it was built from.

Hashes, sizes and signables are hypercore 11's (docs/hyperlog.md §2-§3).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import final

from . import flat_tree
from .constants import MAX_LOG_LENGTH
from .crypto import HASH_SIZE, MAX_U64, TreeNode, Verifier, tree_hash
from .errors import BlockNotAvailableError, CorruptStorageError

__all__ = [
    "AppendBatch",
    "MerkleTree",
    "NodeGetter",
    "StaleBatchError",
    "TreeNode",
    "TruncateBatch",
    "byte_offset",
    "byte_offset_indices",
    "seek",
]

#: Returns the stored node at a flat-tree index, or None when it is not stored.
NodeGetter = Callable[[int], TreeNode | None]


def _require_int(value: object, what: str) -> None:
    """Raise `TypeError` unless ``value`` is an int (a bool is not an index).

    The public API checks its indices, lengths and forks with this, so ``get(1.0)``
    says what is wrong instead of failing somewhere inside storage (or, worse,
    working: ``True`` is 1 and ``1.0`` finds block 1 in a dictionary).
    """
    if type(value) is not int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")


def _require_index(index: object) -> None:
    """`_require_int` for a block index a `get` looks up, and `ValueError` if it is
    negative (a block that can never exist, unlike one not held yet)."""
    _require_int(index, "a block index")
    if index < 0:  # type: ignore[operator]
        raise ValueError(f"a block index must not be negative, got {index}")


_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")
_blake2b = hashlib.blake2b
_Hasher = hashlib.blake2b
#: The tree hash's state before any root: ``H(0x02 || ...``.
_ROOTS_SEED = _blake2b(b"\x02", digest_size=HASH_SIZE)
#: A parent hash's state after its type byte: ``H(0x01 || ...``. Copying a state is
#: ~30% cheaper than building a hasher (keyword parsing), measured per parent.
_PARENT_SEED = _blake2b(b"\x01", digest_size=HASH_SIZE)


class StaleBatchError(ValueError):
    """A batch was applied to a tree whose head moved since the batch was built."""


@final
@dataclass(slots=True)
class AppendBatch:
    """The result of `MerkleTree.append`: what one append batch writes.

    Attributes:
        start: the length before the append (block ``start`` is the first new block).
        length: the length after it.
        byte_length: the byte length after it.
        fork: the fork (unchanged by appends).
        leaf_hashes: the hash of each new block, in order (leaf sizes are the blocks'
            lengths, in ``leaf_sizes``); no `TreeNode` is built for them, a batch of
            1,000 blocks would spend ~10% of its time on those objects.
        parents: the parents the new leaves complete, bottom-up per leaf.
        roots: the full roots after the append.
        tree_hash: the hash the writer signs.
        signature: None until you call `sign` (or set it yourself).
    """

    start: int
    length: int
    byte_length: int
    fork: int
    leaf_hashes: list[bytes]
    leaf_sizes: list[int]
    parents: list[TreeNode]
    roots: list[TreeNode]
    tree_hash: bytes
    signature: bytes | None = None
    #: The tree's hash states after each new root (see `MerkleTree`), handed over by
    #: `MerkleTree.apply` so the next append hashes only the roots it changes.
    root_states: list[_Hasher] | None = None

    @property
    def nodes(self) -> list[TreeNode]:
        """Every new tree node: the leaves, then the parents they complete."""
        first = 2 * self.start
        leaves = [
            TreeNode(first + 2 * k, size, digest)
            for k, (size, digest) in enumerate(zip(self.leaf_sizes, self.leaf_hashes, strict=True))
        ]
        return leaves + self.parents

    def sign(self, verifier: Verifier, secret_key: bytes | None) -> bytes:
        """Sign the new head with ``secret_key``, store and return the raw signature.

        Raises:
            NotWritableError: if the key cannot sign for this log.
        """
        self.signature = verifier.sign(self.tree_hash, self.length, self.fork, secret_key)
        return self.signature


@final
@dataclass(slots=True)
class TruncateBatch:
    """The result of `MerkleTree.truncate`: the shorter head under a new fork.

    Storage deletes blocks ``length ..`` (the old length), every tree node whose index
    is ``>= 2 * length`` and the few lower nodes listed in `delete_nodes` (parents whose
    span reaches past the new end), then writes the new head.
    """

    start: int
    start_fork: int
    length: int
    byte_length: int
    fork: int
    roots: list[TreeNode]
    tree_hash: bytes
    delete_nodes: list[int]
    signature: bytes | None = None

    @property
    def delete_nodes_from(self) -> int:
        """Every tree node with an index at or above this one is deleted."""
        return 2 * self.length

    def sign(self, verifier: Verifier, secret_key: bytes | None) -> bytes:
        """Sign the truncated head; see `AppendBatch.sign`."""
        self.signature = verifier.sign(self.tree_hash, self.length, self.fork, secret_key)
        return self.signature


@final
class MerkleTree:
    """The trusted head of one log: roots, length, byte length, fork and signature.

    Cheap to copy (`snapshot`): the roots are at most 64 nodes.
    """

    __slots__ = (
        "_root_states",
        "_tree_hash",
        "byte_length",
        "fork",
        "length",
        "roots",
        "signature",
    )

    roots: list[TreeNode]
    length: int
    byte_length: int
    fork: int
    signature: bytes | None

    def __init__(
        self,
        roots: Sequence[TreeNode] = (),
        *,
        fork: int = 0,
        signature: bytes | None = None,
    ) -> None:
        """Build the head from its full roots (as stored), fork and signature.

        Raises:
            CorruptStorageError: if ``roots`` are not the full roots of any length.
        """
        self.roots = list(roots)
        self.fork = fork
        self.signature = signature
        self._tree_hash: bytes | None = None
        self._root_states: list[_Hasher] | None = None
        if self.roots:
            last = self.roots[-1].index
            self.length = flat_tree.right_span(last) // 2 + 1
        else:
            self.length = 0
        if [r.index for r in self.roots] != flat_tree.full_roots(2 * self.length):
            raise CorruptStorageError("stored roots are not the full roots of a tree")
        for r in self.roots:
            if len(r.hash) != HASH_SIZE:
                raise CorruptStorageError(f"root {r.index} has a {len(r.hash)}-byte hash")
        self.byte_length = sum(r.size for r in self.roots)

    @classmethod
    def from_storage(
        cls, length: int, get_node: NodeGetter, *, fork: int = 0, signature: bytes | None = None
    ) -> MerkleTree:
        """Load the head of a log of ``length`` blocks by reading its full roots.

        Raises:
            CorruptStorageError: if a root is missing.
        """
        roots = []
        for i in flat_tree.full_roots(2 * length):
            node = get_node(i)
            if node is None:
                raise CorruptStorageError(f"root node {i} of length {length} is missing")
            roots.append(node)
        return cls(roots, fork=fork, signature=signature)

    def __repr__(self) -> str:
        return (
            f"MerkleTree(length={self.length}, byte_length={self.byte_length}, "
            f"fork={self.fork}, roots={[r.index for r in self.roots]})"
        )

    def snapshot(self) -> MerkleTree:
        """Return an independent copy of this head."""
        t = MerkleTree.__new__(MerkleTree)
        t.roots = list(self.roots)
        t.length = self.length
        t.byte_length = self.byte_length
        t.fork = self.fork
        t.signature = self.signature
        t._tree_hash = self._tree_hash
        t._root_states = self._root_states  # never mutated in place: safe to share
        return t

    def tree_hash(self) -> bytes:
        """Return the hash over the current roots (cached)."""
        h = self._tree_hash
        if h is None:
            h = self._tree_hash = tree_hash(self.roots)
        return h

    def verify_signature(self, verifier: Verifier) -> bool:
        """Return True if the stored signature signs this head under ``verifier``."""
        if self.signature is None:
            return self.length == 0
        return verifier.verify(self.tree_hash(), self.length, self.fork, self.signature)

    # --- append ------------------------------------------------------------------------

    def append(self, blocks: Sequence[bytes]) -> AppendBatch:
        """Hash ``blocks`` onto the tree; return the batch without changing the tree.

        One leaf per block, plus one parent for every pair of equal-depth roots the new
        leaves complete (one per block on average).

        Raises:
            ValueError: if the log would hold more than `MAX_LOG_LENGTH` blocks.
        """
        if self.length + len(blocks) > MAX_LOG_LENGTH:
            raise ValueError(
                f"a log holds at most {MAX_LOG_LENGTH} blocks: cannot append {len(blocks)} "
                f"to {self.length}"
            )
        roots = list(self.roots)
        keep = len(roots)  # how many of the current roots survive the append
        hashes: list[bytes] = []
        sizes: list[int] = []
        parents: list[TreeNode] = []
        length = self.length
        byte_length = self.byte_length
        pack = _U64.pack
        parent_seed = _PARENT_SEED
        last_size = -1
        # the leaf hash's state after ``0x00 || u64(size)``, copied per block of that size
        leaf_seed = parent_seed
        for value in blocks:
            size = len(value)
            if size != last_size:
                leaf_seed = _blake2b(b"\x00" + pack(size), digest_size=32)
                last_size = size
            h = leaf_seed.copy()
            h.update(value)
            digest = h.digest()
            hashes.append(digest)
            sizes.append(size)
            index = 2 * length
            byte_length += size
            length += 1
            if length & 1:
                roots.append(TreeNode(index, size, digest))  # a new root of one leaf
                continue
            # the new leaf completes one parent per trailing zero bit of the new length
            n = length
            while not n & 1:
                left = roots.pop()
                size += left.size
                index = (left.index + index) >> 1
                h = parent_seed.copy()
                h.update(pack(size) + left.hash + digest)
                digest = h.digest()
                parents.append(TreeNode(index, size, digest))
                n >>= 1
            if len(roots) < keep:
                keep = len(roots)
            roots.append(parents[-1])
        # The tree hash feeds the roots left to right, so the hash state after the
        # roots that survive is reused: a single append hashes one root, not all ~log n.
        states = self._states()[:keep]
        state = states[-1] if states else _ROOTS_SEED
        pack2 = _U64X2.pack
        for r in roots[keep:]:
            state = state.copy()
            state.update(r.hash + pack2(r.index, r.size))
            states.append(state)
        return AppendBatch(
            self.length,
            length,
            byte_length,
            self.fork,
            hashes,
            sizes,
            parents,
            roots,
            state.digest(),
            root_states=states,
        )

    def _states(self) -> list[_Hasher]:
        """Return the tree hash's state after each root (built once, then carried along)."""
        states = self._root_states
        if states is None or len(states) != len(self.roots):
            states = []
            state = _ROOTS_SEED
            pack2 = _U64X2.pack
            for r in self.roots:
                state = state.copy()
                state.update(r.hash + pack2(r.index, r.size))
                states.append(state)
            self._root_states = states
        return states

    # --- truncate ----------------------------------------------------------------------

    def truncate(
        self, length: int, get_node: NodeGetter, *, fork: int | None = None
    ) -> TruncateBatch:
        """Return the batch that cuts the log to ``length`` blocks under a new fork.

        The new roots are existing nodes (read through ``get_node``). The fork becomes
        ``fork`` if given (it must be higher), else the current fork + 1, so the old and
        new histories are distinct signed statements.

        Raises:
            TypeError: if ``length`` or ``fork`` is not an int.
            ValueError: if ``length`` exceeds the current length, or ``fork`` is not
                higher or does not fit 64 bits (a log at fork 2**64 - 1 cannot fork).
            BlockNotAvailableError: if a node of the new roots is not stored.
        """
        _require_int(length, "a truncation length")
        if fork is not None:
            _require_int(fork, "a fork")
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a log of length {self.length} to {length}")
        new_fork = self.fork + 1 if fork is None else fork
        if new_fork <= self.fork:
            raise ValueError(f"the new fork {new_fork} must be above {self.fork}")
        if new_fork > MAX_U64:
            raise ValueError(f"the new fork {new_fork} does not fit 64 bits")
        roots: list[TreeNode] = []
        for i in flat_tree.full_roots(2 * length):
            node = get_node(i)
            if node is None:
                raise BlockNotAvailableError(f"tree node {i} is not stored")
            roots.append(node)
        head = 2 * length
        old_head = 2 * self.length
        delete: list[int] = []
        if length < self.length:
            # parents with index below the new head whose span crosses it: the ancestors
            # of leaf `head` that sit to its left, up to the old tree's top
            i = flat_tree.parent(head)
            while flat_tree.right_span(i) < old_head:
                if i < head:
                    delete.append(i)
                i = flat_tree.parent(i)
        return TruncateBatch(
            self.length,
            self.fork,
            length,
            sum(r.size for r in roots),
            new_fork,
            roots,
            tree_hash(roots),
            delete,
        )

    # --- apply -------------------------------------------------------------------------

    def apply(self, batch: AppendBatch | TruncateBatch) -> None:
        """Move the in-memory head to the state ``batch`` produced (after storage wrote it).

        `hyperlog.proof.VerifiedBatch` has its own `apply_to` (it may not upgrade).

        Raises:
            StaleBatchError: if the head changed since the batch was built.
        """
        if isinstance(batch, AppendBatch):
            if batch.start != self.length or batch.fork != self.fork:
                raise StaleBatchError("the tree moved since this append batch was built")
            states = batch.root_states
        elif batch.start != self.length or batch.start_fork != self.fork:
            raise StaleBatchError("the tree moved since this truncate batch was built")
        else:
            states = None
        self.set_head(
            batch.roots,
            batch.length,
            batch.byte_length,
            batch.fork,
            batch.signature,
            tree_hash=batch.tree_hash,
        )
        self._root_states = states

    def set_head(
        self,
        roots: list[TreeNode],
        length: int,
        byte_length: int,
        fork: int,
        signature: bytes | None,
        *,
        tree_hash: bytes | None = None,
    ) -> None:
        """Replace the head wholesale (used by batch application; no checks).

        ``tree_hash``, when given, must be the hash of ``roots`` (it saves recomputing it).
        """
        self.roots = roots
        self.length = length
        self.byte_length = byte_length
        self.fork = fork
        self.signature = signature
        self._tree_hash = tree_hash
        self._root_states = None


# --- byte offsets and seeks ------------------------------------------------------------


def byte_offset_indices(block: int, length: int) -> list[int]:
    """Return the node indices `byte_offset` reads for ``block`` in a log of ``length``.

    Storage layers prefetch these in one query.
    """
    leaf = 2 * block
    out: list[int] = []
    for root in flat_tree.full_roots(2 * length):
        if flat_tree.right_span(root) < leaf:
            continue
        node = root
        while node != leaf:
            half = ((node + 1) & -(node + 1)) >> 1
            if leaf > node:
                out.append(node - half)
                node += half
            else:
                node -= half
        break
    return out


def byte_offset(tree: MerkleTree, block: int, get_node: NodeGetter) -> int:
    """Return the byte offset at which ``block`` starts.

    Raises:
        IndexError: if ``block`` is not below the tree's length.
        BlockNotAvailableError: if a needed tree node is not stored.
    """
    if not 0 <= block < tree.length:
        raise IndexError(f"block {block} is outside a log of length {tree.length}")
    leaf = 2 * block
    total = 0
    for root in tree.roots:
        if flat_tree.right_span(root.index) < leaf:
            total += root.size
            continue
        node = root.index
        while node != leaf:
            half = ((node + 1) & -(node + 1)) >> 1
            left = node - half
            if leaf > node:
                n = get_node(left)
                if n is None:
                    raise BlockNotAvailableError(f"tree node {left} is not stored")
                total += n.size
                node = node + half
            else:
                node = left
        return total
    raise AssertionError("unreachable: the roots cover every block below length")


def seek(
    tree: MerkleTree, offset: int, get_node: NodeGetter, *, padding: int = 0
) -> tuple[int, int]:
    """Return ``(block, offset_in_block)`` of the byte at ``offset``.

    With ``padding``, every block counts ``padding`` bytes less (hypercore's seek
    padding for encrypted blocks).

    Raises:
        IndexError: if ``offset`` is not below the (padded) byte length.
        BlockNotAvailableError: if a needed tree node is not stored.
    """
    block, inner, _ = seek_path(tree.roots, offset, get_node, padding=padding)
    return block, inner


def seek_path(
    roots: Sequence[TreeNode], offset: int, get_node: NodeGetter, *, padding: int = 0
) -> tuple[int, int, int]:
    """Like `seek` over explicit ``roots``; also return the root index it descended from."""
    if offset < 0:
        raise IndexError(f"negative byte offset {offset}")
    remaining = offset
    for root in roots:
        size = root.size - padding * flat_tree.count_leaves(root.index)
        if remaining >= size:
            remaining -= size
            continue
        node = root.index
        while node & 1:
            half = ((node + 1) & -(node + 1)) >> 1
            left = node - half
            n = get_node(left)
            if n is None:
                raise BlockNotAvailableError(f"tree node {left} is not stored")
            lsize = n.size - padding * half
            if remaining < lsize:
                node = left
            else:
                remaining -= lsize
                node = node + half
        return node // 2, remaining, root.index
    raise IndexError(f"byte offset {offset} is past the end of the log")
