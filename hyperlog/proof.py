"""Merkle proofs: what a reader asks for, what a holder answers, and how it is verified.

Theory of operation
-------------------
The shapes mirror hypercore 11's ``request`` and ``data`` messages field for field, so
the replication layer carries them 1:1 (docs/hyperlog.md §4):

* `ProofRequest`: the fork the reader trusts and any of ``block {index, nodes}``,
  ``hash {index, nodes}``, ``seek {bytes, padding}``, ``upgrade {start, length}`` and a
  ``manifest`` flag. ``nodes`` is how many nodes on the path the reader is *missing*
  (`missing_nodes`), so the holder only ships the uncles it does not have.
* `Proof`: ``block {index, value, nodes}`` (uncles bottom-up), ``hash {index, nodes}``
  (the node itself, then its uncles), ``seek {bytes, nodes}`` (the leaf holding the byte,
  then its uncles), ``upgrade {start, length, nodes, additional_nodes, signature}`` and
  the manifest.

`create_proof` (holder) and `verify_proof` (reader) are pure. Both read stored nodes
through a synchronous `NodeGetter`; `proof_node_indices` lists every node a proof will
read (except a seek's descent, which depends on sizes) so storage can prefetch them.

Verification never trusts anything in the proof: the block is hashed, uncles are folded
up to a node the reader already trusts (a stored node or root) or to a root of an
upgrade, and an upgrade's new roots are rebuilt from the reader's own roots plus the sent
nodes; the tree hash over them must carry a valid signature under the log's key, for
the proof's fork. Every node index must be exactly the one the algorithm expects next
and every sent node must be used: extra, missing or reordered nodes are refused. The
result is a `VerifiedBatch` (nodes, block, new head) the storage layer writes in one
transaction before calling `VerifiedBatch.apply_to`. A failed verification raises
`InvalidProofError` (or its subclass `InvalidSignatureError`) and changes nothing.

Deliberately not handled (deviations, docs/hyperlog.md §6): a seek cannot be combined
with a block or hash in one request; an upgrade starts either at the reader's length or
at 0 (a full upgrade, used for fork changes); multi-signer manifests and patches.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import final

from . import flat_tree
from .crypto import (
    HASH_SIZE,
    MAX_U64,
    SIGNATURE_SIZE,
    TreeNode,
    Verifier,
    tree_hash,
)
from .errors import (
    BlockNotAvailableError,
    DecodeError,
    InvalidProofError,
    InvalidRequestError,
    InvalidSignatureError,
)
from .merkle import MerkleTree, NodeGetter, StaleBatchError, seek_path

__all__ = [
    "MAX_BLOCK_SIZE",
    "MAX_PROOF_NODES",
    "BlockProof",
    "BlockRequest",
    "HashProof",
    "HashRequest",
    "Proof",
    "ProofRequest",
    "SeekProof",
    "SeekRequest",
    "UpgradeProof",
    "UpgradeRequest",
    "VerifiedBatch",
    "create_proof",
    "missing_nodes",
    "missing_nodes_candidates",
    "proof_node_indices",
    "verify_proof",
]

#: Most nodes in any one node list of a proof. A path is at most 64 levels deep and a
#: length below 2**64 has at most 64 roots, so honest proofs never come close.
MAX_PROOF_NODES = 256
#: Largest block value a proof may carry (the wire layer's limit; hypercore suggests 15 MB).
MAX_BLOCK_SIZE = 8 * 1024 * 1024
#: Highest flat-tree index we accept: 2 * (2**63) covers every length below 2**63.
MAX_INDEX = 2**64

_U64 = struct.Struct("<Q")
_blake2b = hashlib.blake2b


# --- requests --------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class BlockRequest:
    """Send block ``index`` and the ``nodes`` uncles I am missing on its path."""

    index: int
    nodes: int


@final
@dataclass(frozen=True, slots=True)
class HashRequest:
    """Send tree node ``index`` (a flat-tree index) and the ``nodes`` uncles I miss."""

    index: int
    nodes: int


@final
@dataclass(frozen=True, slots=True)
class SeekRequest:
    """Find the block holding byte ``bytes`` (each block counting ``padding`` less)."""

    bytes: int
    padding: int = 0


@final
@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """Prove the signed tree of length ``start + length`` from mine of length ``start``."""

    start: int
    length: int


@final
@dataclass(frozen=True, slots=True)
class ProofRequest:
    """What a reader asks for. At least one part is set; seek excludes block and hash."""

    fork: int
    block: BlockRequest | None = None
    hash: HashRequest | None = None
    seek: SeekRequest | None = None
    upgrade: UpgradeRequest | None = None
    manifest: bool = False


# --- proofs ----------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class BlockProof:
    """Block ``index``'s bytes and its uncles, from the leaf upwards."""

    index: int
    value: bytes
    nodes: tuple[TreeNode, ...]


@final
@dataclass(frozen=True, slots=True)
class HashProof:
    """Tree node ``index`` itself (first), then its uncles upwards."""

    index: int
    nodes: tuple[TreeNode, ...]


@final
@dataclass(frozen=True, slots=True)
class SeekProof:
    """The leaf holding byte ``bytes`` (first), then its uncles up to a root."""

    bytes: int
    nodes: tuple[TreeNode, ...]


@final
@dataclass(frozen=True, slots=True)
class UpgradeProof:
    """The nodes that grow the reader's roots at ``start`` into the roots at
    ``start + length``, the `additional_nodes` that grow them further to the holder's
    full length, and the raw 64-byte signature of that final head."""

    start: int
    length: int
    nodes: tuple[TreeNode, ...]
    additional_nodes: tuple[TreeNode, ...]
    signature: bytes


@final
@dataclass(frozen=True, slots=True)
class Proof:
    """A holder's answer to a `ProofRequest` (hypercore's ``data`` message)."""

    fork: int
    block: BlockProof | None = None
    hash: HashProof | None = None
    seek: SeekProof | None = None
    upgrade: UpgradeProof | None = None
    manifest: bytes | None = None


@final
@dataclass(slots=True)
class VerifiedBatch:
    """Everything a verified proof lets a reader store, and the head it moves to.

    Attributes:
        start: the reader's length when the proof was verified.
        start_fork: the reader's fork then.
        fork: the proof's fork (higher than `start_fork` only for a fork change).
        nodes: verified tree nodes to store (may repeat nodes already stored).
        block: ``(index, value)`` of a verified block, or None.
        hash: the verified node of a hash request, or None.
        seek: ``(block, offset_in_block)`` of a verified seek, or None.
        upgraded: True when the proof carried a verified upgrade.
        roots, length, byte_length, signature: the head after the batch (the reader's
            current head when not upgraded).
        tree_hash: the hash of that head.
        verifier: set when the proof carried a manifest (store it with the log).
    """

    start: int
    start_fork: int
    fork: int
    roots: list[TreeNode]
    length: int
    byte_length: int
    signature: bytes | None
    tree_hash: bytes
    upgraded: bool = False
    nodes: list[TreeNode] = field(default_factory=list)
    block: tuple[int, bytes] | None = None
    hash: TreeNode | None = None
    seek: tuple[int, int] | None = None
    verifier: Verifier | None = None

    @property
    def is_fork_change(self) -> bool:
        """True when the batch moves the reader to a higher fork (a truncation upstream).

        The reader must drop its blocks and nodes after the common prefix before
        writing this batch; `MerkleTree.apply` alone does not do that.
        """
        return self.fork != self.start_fork

    def apply_to(self, tree: MerkleTree) -> None:
        """Move ``tree``'s head to this batch's head (a no-op without an upgrade).

        Raises:
            StaleBatchError: if the tree's head changed since verification.
        """
        if not self.upgraded:
            return
        if tree.length != self.start or tree.fork != self.start_fork:
            raise StaleBatchError("the tree moved since this proof was verified")
        tree.set_head(self.roots, self.length, self.byte_length, self.fork, self.signature)


# --- the reader's side: what to ask --------------------------------------------------


def missing_nodes_candidates(index: int, length: int) -> list[int]:
    """Return the path from node ``index`` up to its full root in a log of ``length``.

    Storage can check which of these it has in one query, then call `missing_nodes`.
    An empty list means ``index`` is not inside the tree.
    """
    head = 2 * length
    if flat_tree.right_span(index) >= head:
        return []
    out = [index]
    i = index
    while True:
        i = flat_tree.parent(i)
        if flat_tree.right_span(i) >= head:
            return out
        out.append(i)


def missing_nodes(index: int, length: int, has: Callable[[int], bool]) -> int:
    """Return how many nodes on ``index``'s path a reader of ``length`` is missing.

    Walk up from ``index`` until a node ``has`` says is stored, stopping at the full
    root (a reader always holds its roots). Send the count as ``BlockRequest.nodes``
    (with ``index = 2 * block``) or ``HashRequest.nodes``. Returns 0 when ``index`` is
    not inside the tree of ``length`` (the request then needs an upgrade).
    """
    path = missing_nodes_candidates(index, length)
    count = 0
    for i in path[:-1]:  # the root itself is always trusted
        if has(i):
            return count
        count += 1
    return count


# --- the holder's side: building proofs ----------------------------------------------


@dataclass(slots=True)
class _Plan:
    """The node indices of a proof, before any node is read."""

    subject: int = -1  # flat-tree index of the block leaf / hash node / seek leaf
    subject_self: bool = False  # emit the subject node itself first (hash, seek)
    subject_top: int = -1  # where the subject's path ends
    subject_nodes: list[int] = field(default_factory=list)
    upgrade: list[int] = field(default_factory=list)
    additional: list[int] = field(default_factory=list)


def _path(start: int, top: int, out: list[int]) -> None:
    i = start
    while i != top:
        out.append(flat_tree.sibling(i))
        i = flat_tree.parent(i)


def _upgrade_indices(
    from_: int, to: int, plan: _Plan | None, out: list[int], pending: bool
) -> bool:
    """Append the indices growing roots at head ``from_`` into roots at head ``to``.

    When ``pending`` and the subject lies under a node that would be sent whole, the
    subject's path up to that node is sent instead (no duplicate). Returns whether the
    subject is still pending.
    """
    connected = from_ == 0
    for root in flat_tree.full_roots(to):
        if flat_tree.right_span(root) < from_:
            continue  # an old root: the reader has it
        if not connected and flat_tree.contains(root, from_ - 2):
            connected = True
            # grow the reader's last root: walk from its last leaf up to `root`, sending
            # the right siblings (left ones are the reader's own roots)
            i = from_ - 2
            while i != root:
                sib = flat_tree.sibling(i)
                if sib > i:
                    if pending and plan is not None and flat_tree.contains(sib, plan.subject):
                        plan.subject_top = sib
                        pending = False
                    else:
                        out.append(sib)
                i = flat_tree.parent(i)
            continue
        if pending and plan is not None and flat_tree.contains(root, plan.subject):
            plan.subject_top = root
            pending = False
        else:
            out.append(root)
    return pending


def _plan(tree: MerkleTree, req: ProofRequest) -> _Plan:
    """Check ``req`` against ``tree`` and compute every node index of the proof."""
    if req.fork != tree.fork:
        raise InvalidRequestError(f"request for fork {req.fork}, the log is at {tree.fork}")
    head = 2 * tree.length
    plan = _Plan()
    up = req.upgrade
    if up is not None:
        if up.start < 0 or up.length <= 0 or up.start + up.length > tree.length:
            raise InvalidRequestError(
                f"cannot upgrade from {up.start} by {up.length} in a log of {tree.length}"
            )
        from_, to = 2 * up.start, 2 * (up.start + up.length)
    else:
        from_, to = head, head
    if req.block is not None and req.hash is not None:
        raise InvalidRequestError("a request asks for a block or a hash, not both")
    if req.seek is not None and (req.block is not None or req.hash is not None):
        raise InvalidRequestError("a seek cannot be combined with a block or hash request")

    nodes = 0
    if req.block is not None:
        if not 0 <= req.block.index < to // 2:
            raise InvalidRequestError(f"block {req.block.index} is outside the proved tree")
        plan.subject = 2 * req.block.index
        nodes = req.block.nodes
    elif req.hash is not None:
        if req.hash.index < 0 or flat_tree.right_span(req.hash.index) >= to:
            raise InvalidRequestError(f"node {req.hash.index} is outside the proved tree")
        plan.subject = req.hash.index
        plan.subject_self = True
        nodes = req.hash.nodes
    if req.seek is not None:
        plan.subject_self = True
        nodes = -1  # up to the root; the leaf is found when the proof is built
        plan.subject = -2  # placeholder until the seek descends
    if nodes < -1 or nodes > 64:
        raise InvalidRequestError(f"bad missing-nodes count {nodes}")

    pending = False
    if plan.subject >= 0:
        lo, hi = flat_tree.spans(plan.subject)
        if up is None or hi < from_:
            # inside the tree the reader trusts: walk up `nodes` levels
            top = plan.subject
            for _ in range(nodes):
                top = flat_tree.parent(top)
                if flat_tree.right_span(top) >= to:
                    raise InvalidRequestError("the missing-nodes count walks past a root")
            plan.subject_top = top
            _path(plan.subject, top, plan.subject_nodes)
        elif lo < from_:
            raise InvalidRequestError("the node straddles the reader's length")
        else:
            pending = True
    if up is not None:
        pending = _upgrade_indices(from_, to, plan, plan.upgrade, pending)
        if pending:
            raise AssertionError("unreachable: every new leaf lies under a new root")
        if head > to:
            _upgrade_indices(to, head, None, plan.additional, False)
        if plan.subject >= 0 and plan.subject_top >= 0 and not plan.subject_nodes:
            _path(plan.subject, plan.subject_top, plan.subject_nodes)
    return plan


def proof_node_indices(tree: MerkleTree, req: ProofRequest) -> list[int]:
    """Return the indices of every stored node `create_proof` will read for ``req``.

    A seek's descent is not included (it depends on node sizes).

    Raises:
        InvalidRequestError: if ``req`` cannot be answered from this tree.
    """
    plan = _plan(tree, req)
    out = [plan.subject] if plan.subject_self and plan.subject >= 0 else []
    out += plan.subject_nodes
    out += plan.upgrade
    out += plan.additional
    return out


def _get(get_node: NodeGetter, i: int) -> TreeNode:
    node = get_node(i)
    if node is None:
        raise BlockNotAvailableError(f"tree node {i} is not stored")
    return node


def create_proof(
    tree: MerkleTree,
    req: ProofRequest,
    get_node: NodeGetter,
    *,
    value: bytes | None = None,
    manifest: bytes | None = None,
) -> Proof:
    """Build the proof answering ``req`` from this holder's tree.

    Args:
        tree: the holder's head (its fork must equal ``req.fork``).
        req: the reader's request.
        get_node: reads a stored tree node by index.
        value: the bytes of the requested block (required with ``req.block``).
        manifest: the encoded manifest, sent when ``req.manifest`` asks for it.

    Raises:
        InvalidRequestError: the request is out of bounds or for another fork.
        BlockNotAvailableError: a needed node or the block value is not held here.
    """
    if req.seek is not None:
        return _create_seek_proof(tree, req, get_node, manifest)
    plan = _plan(tree, req)
    block = hash_ = None
    if req.block is not None:
        if value is None:
            raise BlockNotAvailableError(f"block {req.block.index} is not held here")
        block = BlockProof(
            req.block.index, value, tuple(_get(get_node, i) for i in plan.subject_nodes)
        )
    elif req.hash is not None:
        nodes = [_get(get_node, plan.subject)]
        nodes += [_get(get_node, i) for i in plan.subject_nodes]
        hash_ = HashProof(req.hash.index, tuple(nodes))
    upgrade = None
    if req.upgrade is not None:
        if tree.signature is None:
            raise BlockNotAvailableError("the log has no signed head to prove")
        upgrade = UpgradeProof(
            req.upgrade.start,
            req.upgrade.length,
            tuple(_get(get_node, i) for i in plan.upgrade),
            tuple(_get(get_node, i) for i in plan.additional),
            tree.signature,
        )
    return Proof(
        req.fork,
        block=block,
        hash=hash_,
        upgrade=upgrade,
        manifest=manifest if req.manifest else None,
    )


def _create_seek_proof(
    tree: MerkleTree, req: ProofRequest, get_node: NodeGetter, manifest: bytes | None
) -> Proof:
    assert req.seek is not None
    plan0 = _plan(tree, req)  # validates the fork, bounds and combination
    del plan0
    up = req.upgrade
    to_length = tree.length if up is None else up.start + up.length
    roots = [_get(get_node, i) for i in flat_tree.full_roots(2 * to_length)]
    try:
        block, _, root = seek_path(roots, req.seek.bytes, get_node, padding=req.seek.padding)
    except IndexError as exc:
        raise InvalidRequestError(str(exc)) from exc
    leaf = 2 * block
    if up is not None and leaf < 2 * up.start:
        # the reader already trusts this part of the tree: prove up to its root there
        root = flat_tree.root_for_leaf(leaf, 2 * up.start)
    if up is None or leaf < 2 * up.start:
        path: list[int] = []
        _path(leaf, root, path)
        upgrade_idx: list[int] = []
        additional: list[int] = []
        if up is not None:
            _upgrade_indices(2 * up.start, 2 * to_length, None, upgrade_idx, False)
    else:
        plan = _Plan(subject=leaf, subject_self=True)
        upgrade_idx = []
        _upgrade_indices(2 * up.start, 2 * to_length, plan, upgrade_idx, True)
        path = []
        _path(leaf, plan.subject_top, path)
        additional = []
    if up is not None and 2 * tree.length > 2 * to_length:
        _upgrade_indices(2 * to_length, 2 * tree.length, None, additional, False)
    seek_nodes = (_get(get_node, leaf), *(_get(get_node, i) for i in path))
    upgrade = None
    if up is not None:
        if tree.signature is None:
            raise BlockNotAvailableError("the log has no signed head to prove")
        upgrade = UpgradeProof(
            up.start,
            up.length,
            tuple(_get(get_node, i) for i in upgrade_idx),
            tuple(_get(get_node, i) for i in additional),
            tree.signature,
        )
    return Proof(
        req.fork,
        seek=SeekProof(req.seek.bytes, seek_nodes),
        upgrade=upgrade,
        manifest=manifest if req.manifest else None,
    )


# --- the reader's side: verifying ----------------------------------------------------


def _check_nodes(nodes: Sequence[TreeNode], what: str) -> None:
    if len(nodes) > MAX_PROOF_NODES:
        raise InvalidProofError(f"{len(nodes)} {what} nodes exceed {MAX_PROOF_NODES}")
    for n in nodes:
        if not (0 <= n.index < MAX_INDEX and 0 <= n.size <= MAX_U64):
            raise InvalidProofError(f"{what} node {n.index} is out of range")
        if len(n.hash) != HASH_SIZE:
            raise InvalidProofError(f"{what} node {n.index} has a {len(n.hash)}-byte hash")


def _fold(start: TreeNode, uncles: Sequence[TreeNode], out: list[TreeNode]) -> TreeNode:
    """Hash ``start`` with each uncle in turn; return the top. Appends every node to out."""
    node = start
    pack = _U64.pack
    blake = _blake2b
    for uncle in uncles:
        i = node.index
        b = (i + 1) & -(i + 1)
        if uncle.index != i ^ (b << 1):
            raise InvalidProofError(f"expected the sibling of node {i}, got {uncle.index}")
        size = node.size + uncle.size
        if size > MAX_U64:
            raise InvalidProofError("node sizes overflow 64 bits")
        parent = (i & ~(b << 1)) | b
        if uncle.index > i:
            digest = blake(b"\x01" + pack(size) + node.hash + uncle.hash, digest_size=32)
        else:
            digest = blake(b"\x01" + pack(size) + uncle.hash + node.hash, digest_size=32)
        out.append(uncle)
        node = TreeNode(parent, size, digest.digest())
        out.append(node)
    return node


class _Queue:
    """The upgrade's nodes, consumed strictly in order; the subject top may stand in."""

    __slots__ = ("extra", "nodes", "pos")

    def __init__(self, nodes: Sequence[TreeNode], extra: TreeNode | None) -> None:
        self.nodes = nodes
        self.pos = 0
        self.extra = extra

    def take(self, index: int) -> TreeNode:
        if self.extra is not None and self.extra.index == index:
            node = self.extra
            self.extra = None
            return node
        if self.pos < len(self.nodes) and self.nodes[self.pos].index == index:
            node = self.nodes[self.pos]
            self.pos += 1
            return node
        got = self.nodes[self.pos].index if self.pos < len(self.nodes) else "nothing"
        raise InvalidProofError(f"expected upgrade node {index}, got {got}")


def _push_root(roots: list[TreeNode], node: TreeNode, out: list[TreeNode]) -> None:
    """Append ``node`` as the next root to the right and merge equal-depth neighbours."""
    if roots:
        last = roots[-1].index
        if flat_tree.left_span(node.index) != flat_tree.right_span(last) + 2:
            raise InvalidProofError(f"node {node.index} does not follow root {last}")
    roots.append(node)
    out.append(node)
    while len(roots) > 1:
        right, left = roots[-1], roots[-2]
        i = right.index
        b = (i + 1) & -(i + 1)
        if left.index != i ^ (b << 1):
            break
        size = left.size + right.size
        if size > MAX_U64:
            raise InvalidProofError("node sizes overflow 64 bits")
        parent = TreeNode(
            (i & ~(b << 1)) | b,
            size,
            _blake2b(b"\x01" + _U64.pack(size) + left.hash + right.hash, digest_size=32).digest(),
        )
        roots[-2:] = [parent]
        out.append(parent)


def _verify_upgrade(
    old_roots: list[TreeNode],
    up: UpgradeProof,
    subject_top: TreeNode | None,
    out: list[TreeNode],
) -> tuple[list[TreeNode], bool]:
    """Rebuild the roots at ``start + length`` then at the final length.

    Returns the final roots and whether ``subject_top`` was used as one of the nodes.
    """
    from_ = 2 * up.start
    to = 2 * (up.start + up.length)
    q = _Queue(up.nodes, subject_top)
    roots: list[TreeNode] = []
    k = 0  # old roots kept whole
    grown = from_ == 0
    for r in flat_tree.full_roots(to):
        if flat_tree.right_span(r) < from_:
            if k >= len(old_roots) or old_roots[k].index != r:
                raise InvalidProofError("the upgrade does not start at the trusted roots")
            roots.append(old_roots[k])
            k += 1
            continue
        if not grown and k < len(old_roots):
            grown = True
            # the remaining old roots sit under r; push them back, then grow the last
            for node in old_roots[k:]:
                roots.append(node)
            k = len(old_roots)
            while roots[-1].index != r:
                last = roots[-1].index
                sib = flat_tree.sibling(last)
                if sib < last:
                    raise InvalidProofError("the trusted roots do not grow into the upgrade")
                _push_root(roots, q.take(sib), out)
            continue
        _push_root(roots, q.take(r), out)
    if k != len(old_roots):
        raise InvalidProofError("the upgrade does not cover the trusted roots")
    if q.pos != len(up.nodes):
        raise InvalidProofError(f"{len(up.nodes) - q.pos} unexpected upgrade nodes")
    for node in up.additional_nodes:
        _push_root(roots, node, out)
    length = flat_tree.right_span(roots[-1].index) // 2 + 1
    if [n.index for n in roots] != flat_tree.full_roots(2 * length):
        raise InvalidProofError("the additional nodes do not form the roots of a tree")
    return roots, q.extra is None and subject_top is not None


def verify_proof(
    tree: MerkleTree,
    proof: Proof,
    verifier: Verifier | bytes,
    get_node: NodeGetter,
    *,
    seek_padding: int = 0,
) -> VerifiedBatch:
    """Verify ``proof`` against what the reader trusts; return what it may store.

    Args:
        tree: the reader's trusted head (roots, length, fork).
        proof: the holder's answer.
        verifier: the log's `Verifier`, or just its 32-byte key when the reader does not
            know the manifest yet (the proof must then carry it to check a signature).
        get_node: reads a stored (hence trusted) node by index.
        seek_padding: the padding the reader used in its seek request.

    Raises:
        InvalidProofError: anything does not verify (a bad signature raises the
            subclass `InvalidSignatureError`). Nothing was changed.
    """
    if proof.fork < tree.fork:
        raise InvalidProofError(f"proof for fork {proof.fork}, the log is at {tree.fork}")
    parts = (proof.block is not None) + (proof.hash is not None) + (proof.seek is not None)
    if parts > 1:
        raise InvalidProofError("a proof carries at most one of block, hash and seek")
    if parts == 0 and proof.upgrade is None:
        raise InvalidProofError("an empty proof")
    up = proof.upgrade
    fork_change = proof.fork != tree.fork
    if fork_change and (up is None or up.start != 0):
        raise InvalidProofError("a proof for a new fork must upgrade from length 0")
    old_roots = [] if fork_change else tree.roots
    new_verifier: Verifier | None = None
    if proof.manifest is not None:
        key = verifier if isinstance(verifier, bytes) else verifier.key
        try:
            new_verifier = Verifier.for_key(key, proof.manifest)
        except (DecodeError, InvalidSignatureError) as exc:
            raise InvalidProofError(f"bad manifest: {exc}") from exc
    use_verifier = new_verifier if new_verifier is not None else verifier

    out: list[TreeNode] = []
    subject_top: TreeNode | None = None
    block = None
    hash_node = None
    seek_leaf: TreeNode | None = None
    if proof.block is not None:
        b = proof.block
        if not 0 <= b.index < MAX_INDEX // 2:
            raise InvalidProofError(f"block index {b.index} is out of range")
        if len(b.value) > MAX_BLOCK_SIZE:
            raise InvalidProofError(f"block of {len(b.value)} bytes exceeds {MAX_BLOCK_SIZE}")
        _check_nodes(b.nodes, "block")
        h = _blake2b(b"\x00" + _U64.pack(len(b.value)), digest_size=32)
        h.update(b.value)
        leaf = TreeNode(2 * b.index, len(b.value), h.digest())
        out.append(leaf)
        subject_top = _fold(leaf, b.nodes, out)
        block = (b.index, b.value)
    elif proof.hash is not None:
        _check_nodes(proof.hash.nodes, "hash")
        if not proof.hash.nodes or proof.hash.nodes[0].index != proof.hash.index:
            raise InvalidProofError("a hash proof starts with the node itself")
        hash_node = proof.hash.nodes[0]
        out.append(hash_node)
        subject_top = _fold(hash_node, proof.hash.nodes[1:], out)
    elif proof.seek is not None:
        _check_nodes(proof.seek.nodes, "seek")
        if not proof.seek.nodes or proof.seek.nodes[0].index & 1:
            raise InvalidProofError("a seek proof starts with a leaf")
        seek_leaf = proof.seek.nodes[0]
        out.append(seek_leaf)
        subject_top = _fold(seek_leaf, proof.seek.nodes[1:], out)

    roots = tree.roots
    length = tree.length
    signature = tree.signature
    used_top = False
    upgraded = False
    mark = len(out)
    if up is not None:
        if not fork_change and up.start != tree.length:
            raise InvalidProofError(f"upgrade from {up.start}, the reader has {tree.length}")
        if up.length <= 0 or up.start + up.length >= MAX_INDEX // 2:
            raise InvalidProofError(f"bad upgrade length {up.length}")
        _check_nodes(up.nodes, "upgrade")
        _check_nodes(up.additional_nodes, "additional")
        if len(up.signature) != SIGNATURE_SIZE:
            raise InvalidSignatureError("a signature is 64 bytes")
        roots, used_top = _verify_upgrade(old_roots, up, subject_top, out)
        length = flat_tree.right_span(roots[-1].index) // 2 + 1
        th = tree_hash(roots)
        if isinstance(use_verifier, bytes):
            raise InvalidProofError("the manifest is needed to verify this log's signature")
        if not use_verifier.verify(th, length, proof.fork, up.signature):
            raise InvalidSignatureError(f"bad signature for length {length}, fork {proof.fork}")
        signature = up.signature
        upgraded = True
    else:
        th = tree.tree_hash()

    # nodes that are trusted now: the (new) roots, the reader's old roots, every node the
    # signed upgrade produced, and (same fork only) whatever the reader has stored
    trusted: dict[int, TreeNode] = {n.index: n for n in out[mark:]}
    for r in old_roots:
        trusted[r.index] = r
    for r in roots:
        trusted[r.index] = r

    def lookup(i: int) -> TreeNode | None:
        node = trusted.get(i)
        if node is None and not fork_change:
            node = get_node(i)
        return node

    if subject_top is not None and not used_top:
        anchor = lookup(subject_top.index)
        if anchor is None:
            raise InvalidProofError(f"node {subject_top.index} is not trusted here")
        if anchor.hash != subject_top.hash or anchor.size != subject_top.size:
            raise InvalidProofError(f"node {subject_top.index} does not match the trusted tree")

    seek_result = None
    if seek_leaf is not None:
        assert proof.seek is not None and subject_top is not None
        seek_result = _check_seek(proof.seek, seek_leaf, subject_top, roots, seek_padding, lookup)

    return VerifiedBatch(
        start=tree.length,
        start_fork=tree.fork,
        fork=proof.fork,
        roots=list(roots),
        length=length,
        byte_length=sum(r.size for r in roots),
        signature=signature,
        tree_hash=th,
        upgraded=upgraded,
        nodes=out,
        block=block,
        hash=hash_node,
        seek=seek_result,
        verifier=new_verifier,
    )


def _check_seek(
    sp: SeekProof,
    leaf: TreeNode,
    top: TreeNode,
    roots: Sequence[TreeNode],
    padding: int,
    lookup: NodeGetter,
) -> tuple[int, int]:
    """Return ``(block, offset)`` after checking the leaf really holds byte ``sp.bytes``."""
    # the byte offset of `top`: sum of the roots before it, or (for an inner node the
    # reader trusts) of the left siblings on the path down from its root
    offset = 0
    for r in roots:
        if flat_tree.right_span(r.index) < flat_tree.left_span(top.index):
            offset += r.size - padding * flat_tree.count_leaves(r.index)
            continue
        node = r.index
        while node != top.index:
            half = ((node + 1) & -(node + 1)) >> 1
            if half == 0:
                raise InvalidProofError("the seek path is not anchored in a trusted node")
            left = node - half
            if top.index > node:
                n = lookup(left)
                if n is None:
                    raise InvalidProofError("the seek path is not anchored in a trusted node")
                offset += n.size - padding * half
                node = node + half
            else:
                node = left
        break
    # then the left uncles on the path from the leaf up to `top`
    i = leaf.index
    for uncle in sp.nodes[1:]:
        if uncle.index < i:
            offset += uncle.size - padding * flat_tree.count_leaves(uncle.index)
        i = flat_tree.parent(i)
    size = leaf.size - padding
    if not offset <= sp.bytes < offset + size:
        raise InvalidProofError(f"byte {sp.bytes} is not inside block {leaf.index // 2}")
    return leaf.index // 2, sp.bytes - offset
