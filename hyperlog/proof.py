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

from collections.abc import Callable
from dataclasses import dataclass, field

from . import flat_tree
from .crypto import TreeNode
from .errors import BlockNotAvailableError, InvalidRequestError
from .merkle import MerkleTree, NodeGetter, seek_path
from .proof_types import (
    MAX_BLOCK_SIZE,
    MAX_INDEX,
    MAX_PROOF_NODES,
    BlockProof,
    BlockRequest,
    HashProof,
    HashRequest,
    Proof,
    ProofRequest,
    SeekProof,
    SeekRequest,
    UpgradeProof,
    UpgradeRequest,
    VerifiedBatch,
)
from .proof_verify import verify_proof

__all__ = [
    "MAX_BLOCK_SIZE",
    "MAX_INDEX",
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
    parts = (req.block, req.hash, req.seek, up)
    if all(part is None for part in parts) and not req.manifest:
        raise InvalidRequestError("an empty request")
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
        if not 0 <= req.seek.padding <= MAX_BLOCK_SIZE:
            raise InvalidRequestError(f"bad seek padding {req.seek.padding}")
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
    if req.seek is None:
        raise AssertionError("only called for seek requests")
    _plan(tree, req)  # validates the fork, bounds and combination
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
