"""Verification of proofs against what a reader already trusts (pure, no I/O).

Theory of operation
-------------------
Nothing in a proof is trusted. The block is hashed and each uncle folded in (its index
must be exactly the sibling of the current node); an upgrade's new roots are rebuilt from
the reader's own roots plus the sent nodes, each with exactly the expected index, every
sent node used; `additional_nodes` are pushed as new roots to the right, merging
equal-depth neighbours, and must end as the full roots of some length. The tree hash over
them must carry a valid signature under the log's key for the proof's fork. The top of
the block's (hash's, seek's) path must then equal a trusted node: a root, a node the
signed upgrade produced, or (same fork only) a node the reader stores.

The result is a `VerifiedBatch`; a failure raises `InvalidProofError` (or its subclass
`InvalidSignatureError`) and has changed nothing. docs/hyperlog.md §4.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from . import flat_tree
from .constants import MAX_LOG_LENGTH
from .crypto import HASH_SIZE, MAX_U64, SIGNATURE_SIZE, TreeNode, Verifier, tree_hash
from .errors import DecodeError, InvalidProofError, InvalidSignatureError
from .merkle import MerkleTree, NodeGetter
from .proof_types import (
    MAX_BLOCK_SIZE,
    MAX_INDEX,
    MAX_PROOF_NODES,
    Proof,
    SeekProof,
    UpgradeProof,
    VerifiedBatch,
)

__all__ = ["verify_proof"]

_U64 = struct.Struct("<Q")
_blake2b = hashlib.blake2b


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
    if not 0 <= proof.fork <= MAX_U64:
        raise InvalidProofError(f"fork {proof.fork} is not a 64-bit unsigned integer")
    if proof.fork < tree.fork:
        raise InvalidProofError(f"proof for fork {proof.fork}, the log is at {tree.fork}")
    parts = (proof.block is not None) + (proof.hash is not None) + (proof.seek is not None)
    if parts > 1:
        raise InvalidProofError("a proof carries at most one of block, hash and seek")
    if parts == 0 and proof.upgrade is None and proof.manifest is None:
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
        if up.length <= 0 or up.start < 0 or up.start + up.length > MAX_LOG_LENGTH:
            raise InvalidProofError(
                f"bad upgrade length {up.length} (a log holds at most {MAX_LOG_LENGTH} blocks)"
            )
        _check_nodes(up.nodes, "upgrade")
        _check_nodes(up.additional_nodes, "additional")
        if len(up.signature) != SIGNATURE_SIZE:
            raise InvalidSignatureError("a signature is 64 bytes")
        roots, used_top = _verify_upgrade(old_roots, up, subject_top, out)
        length = flat_tree.right_span(roots[-1].index) // 2 + 1
        if length > MAX_LOG_LENGTH:  # the additional nodes may reach past `up.length`
            raise InvalidProofError(f"an upgrade to {length} blocks exceeds {MAX_LOG_LENGTH}")
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
