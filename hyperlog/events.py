"""What a log reports: its events (append, download, truncate) and its results.

Plain immutable records, shared by the log, its subscribers, replication and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias, final

from .crypto import TreeNode

__all__ = [
    "AppendEvent",
    "AppendResult",
    "DownloadEvent",
    "LogEvent",
    "LogStatistics",
    "ProofResult",
    "TruncateEvent",
]


@final
@dataclass(frozen=True, slots=True)
class AppendEvent:
    """The signed length grew: a local append, or a verified upgrade from a peer."""

    length: int
    byte_length: int
    fork: int


@final
@dataclass(frozen=True, slots=True)
class DownloadEvent:
    """A verified block from a peer was stored."""

    index: int
    size: int


@final
@dataclass(frozen=True, slots=True)
class TruncateEvent:
    """The log was cut back to ``length`` blocks under the new ``fork``."""

    length: int
    fork: int


LogEvent: TypeAlias = AppendEvent | DownloadEvent | TruncateEvent


@final
@dataclass(frozen=True, slots=True)
class AppendResult:
    """What `Log.append` returns: the new length and byte length."""

    length: int
    byte_length: int


@final
@dataclass(frozen=True, slots=True)
class ProofResult:
    """What `Log.apply_proof` stored.

    Attributes:
        block: the index of the block stored, or None.
        block_size: its size in bytes (0 without a block).
        upgraded: True if the signed head moved (a longer length, or a new fork).
        truncated_to: set when a proof for a newer fork made the log drop every block
            from this index on (the common prefix with the new fork is kept).
        hash: the verified tree node of a hash request, or None.
        seek: ``(block, offset_in_block)`` of a verified seek, or None.
    """

    block: int | None = None
    block_size: int = 0
    upgraded: bool = False
    truncated_to: int | None = None
    hash: TreeNode | None = None
    seek: tuple[int, int] | None = None


@final
@dataclass(frozen=True, slots=True)
class LogStatistics:
    """Counters for observability (`Log.statistics`)."""

    length: int
    byte_length: int
    fork: int
    blocks_held: int
    contiguous_length: int
    subscribers: int
    events_dropped: int
