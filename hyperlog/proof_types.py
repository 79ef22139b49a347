"""The shapes of proof requests, proofs and verified batches (no logic).

They mirror hypercore 11's ``request`` and ``data`` messages field for field, so the
replication layer carries them 1:1; see `hyperlog.proof` for how they are built and
verified, and docs/hyperlog.md §4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import final

from .constants import MAX_LOG_LENGTH
from .crypto import TreeNode, Verifier
from .merkle import MerkleTree, StaleBatchError

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
]

#: Most nodes in any one node list of a proof. A path is at most 64 levels deep and a
#: length below 2**64 has at most 64 roots, so honest proofs never come close.
MAX_PROOF_NODES = 256
#: Largest block value a proof may carry (the wire layer's limit; hypercore suggests 15 MB).
MAX_BLOCK_SIZE = 8 * 1024 * 1024
#: Flat-tree indices we accept are below this: ``2 * MAX_LOG_LENGTH`` (2**41) covers every
#: node of a log of at most `MAX_LOG_LENGTH` (2**40) blocks, the most a log holds. A
#: proof naming a higher node or block, or an upgrade to a longer log, is refused.
MAX_INDEX = 2 * MAX_LOG_LENGTH


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
        tree.set_head(
            self.roots,
            self.length,
            self.byte_length,
            self.fork,
            self.signature,
            tree_hash=self.tree_hash,
        )
