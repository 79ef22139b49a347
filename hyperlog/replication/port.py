"""What replication needs from a log: a small protocol (no trio).

The engine reads `LogView`'s synchronous facts (length, fork, has) to decide; the
driver awaits `LogPort`'s `serve` (build a proof for a peer's request) and `apply`
(verify a peer's proof and store it). `hyperlog.replication.adapter` implements it
over `hyperlog.Log`; tests may implement it over anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from hyperlog import wire
from hyperlog.errors import ForkConflictError, HyperlogError


@dataclass(frozen=True, slots=True)
class Applied:
    """What `LogPort.apply` stored.

    Attributes:
        block: the block index stored, or None.
        block_size: its byte size (0 without a block).
        upgraded: whether the signed head (length or fork) changed.
        truncated_to: set when a newer fork made the log drop blocks from here on.
    """

    block: int | None = None
    block_size: int = 0
    upgraded: bool = False
    truncated_to: int | None = None


class LogView(Protocol):
    """The synchronous facts the engine reads while deciding."""

    @property
    def key(self) -> bytes: ...
    @property
    def discovery_key(self) -> bytes: ...
    @property
    def length(self) -> int: ...
    @property
    def fork(self) -> int: ...
    @property
    def byte_length(self) -> int: ...
    def has(self, index: int) -> bool: ...
    def contiguous_length(self) -> int: ...
    def have_bits(self, start: int, count: int) -> bytes:
        """Return `count` (a multiple of 8) have-bits from `start`, LSB first."""
        ...

    def missing_nodes(self, index: int) -> int:
        """How many tree nodes on block `index`'s path we lack (hypercore's `nodes`)."""
        ...

    def missing_tree_nodes(self, node: int) -> int:
        """`missing_nodes` for any tree node (a RangeRequest's hash proof)."""
        ...

    def needs_manifest(self) -> bool:
        """Whether upgrade requests must ask for the manifest (a reader knowing only the key)."""
        ...


@runtime_checkable
class SizedView(Protocol):
    """Optional `LogView` extra: the byte size of a stored tree node.

    The scheduler uses it to refuse (serving) or avoid (requesting) a RangeRequest
    whose values would not fit in one frame; views without it (test fakes) skip the
    early check, and `LogReplicator.on_served` still refuses an oversized answer.
    """

    def tree_node_size(self, node: int) -> int | None:
        """The byte size of the blocks under tree node `node`, or None if not stored."""
        ...


@runtime_checkable
class CountingView(Protocol):
    """Optional `LogView` extra: how many blocks of a span are held, without a `has`
    per block. Download progress counts with it (views without it, test fakes, are
    asked block by block, over the log's length at most)."""

    def count_held(self, start: int, end: int) -> int:
        """How many blocks of [start, end) are held (none past the log's length)."""
        ...


@runtime_checkable
class WaitingView(Protocol):
    """Optional `LogView` extra: whether a reader of the log (`Log.get`) still waits
    for block `index`. A `Log.get` tells the replicator when it starts waiting (its
    want listeners) but not when it gives up (timeout, cancellation): the scheduler
    asks this before asking peers again for a parked want. Views without it (test
    fakes) forget a parked want `DEFAULT_GET_TIMEOUT` after it was asked for."""

    def waiting(self, index: int) -> bool:
        """Whether some reader is waiting for block `index` right now."""
        ...


@runtime_checkable
class TreeHashView(Protocol):
    """Optional `LogView` extra: the tree hash (the hash over the roots, what a
    signature covers) of the log's history at an earlier length of its fork.

    With it the scheduler sends its tree hash in each `Sync` and compares a peer's
    with its own, so two signed histories of one fork are noticed when a peer
    connects (see `LogPort.check_conflict`). Views without it (test fakes) send and
    compare none.
    """

    def tree_hash_at(self, length: int) -> bytes | None:
        """The tree hash of the first `length` blocks of the log's current fork, or
        None if it cannot be known here (`length` is 0 or past the log's length, or
        a tree node it needs is not stored: a sparse copy)."""
        ...


class LogPort(LogView, Protocol):
    """`LogView` plus the storage operations the driver awaits."""

    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        """Build the proof answering `request`, or None if we cannot."""
        ...

    async def apply(self, data: wire.Data) -> Applied:
        """Verify `data` against what the log trusts and store it atomically.

        Raises:
            InvalidProofError: the proof or signature does not verify (nothing stored).
        """
        ...

    async def apply_range(self, data: wire.RangeData, first: int) -> list[Applied | HyperlogError]:
        """Verify and store a RangeData whose first block is `first` as one group: the
        hash proof of `data.node`, then each block with uncles recomputed from the
        other values (see `ranges.range_proofs`). One result per proof, in order."""
        ...

    async def apply_many(self, datas: Sequence[wire.Data]) -> list[Applied | HyperlogError]:
        """`apply` for a group, stored in one transaction; errors take their places."""
        ...

    def check_conflict(self, data: wire.Data) -> ForkConflictError | None:
        """Check a peer's whole signed tree (an upgrade from 0 to some length `at`)
        against ours.

        Returns:
            a `ForkConflictError` if it verifies on its own and its nodes at length
            `at` differ from ours (two signed histories of one fork: the peer's head
            may be longer than `at`, ours at least as long); None if they agree, or
            if ours cannot be compared (another fork now, shorter than `at`, or the
            nodes are not stored here).

        Raises:
            InvalidProofError: the peer's tree does not verify at all.
        """
        ...
