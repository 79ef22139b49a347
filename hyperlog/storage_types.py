"""The storage boundary: the records a backend keeps, and the `Storage` protocol.

`LogInfo`, `Head`, `StoredLog` and `WriteBatch` are what a `Log` hands to a backend
and gets back; `Storage` is the interface both backends (`hyperlog.storage_sqlite`,
`hyperlog.storage_memory`) implement. The theory of operation (row layout, where the
head lives, derived nodes, atomicity, durability) is the docstring of
`hyperlog.storage`: "the module docstring" below means that one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, final

from .crypto import TreeNode

__all__ = ["Durability", "Head", "LogInfo", "Storage", "StoredLog", "WriteBatch"]

Durability = Literal["process", "power"]


@final
@dataclass(frozen=True, slots=True)
class LogInfo:
    """What a store knows about a log besides its data.

    Attributes:
        key: the 32-byte log key.
        discovery_key: BLAKE2b-keyed hash of the key, the public name of the log.
        manifest: the compact-encoded manifest, or None while a reader does not know it.
        secret_key: the writer's 64-byte ed25519 secret key, or None for readers.
    """

    key: bytes
    discovery_key: bytes
    manifest: bytes | None = None
    secret_key: bytes | None = None


@final
@dataclass(frozen=True, slots=True)
class Head:
    """The signed state of a log: what its signature covers, plus two unsigned facts.

    ``signature`` is the raw 64-byte ed25519 signature, None before the first append.
    ``contiguous_length`` is a hint (hypercore's ``hints.contiguousLength``): blocks
    ``0 .. contiguous_length - 1`` are all held, whatever the stored bitfield pages
    say. A writer appending to a complete log only moves this hint and skips
    rewriting its bitfield page.
    """

    fork: int = 0
    length: int = 0
    byte_length: int = 0
    tree_hash: bytes = b""
    signature: bytes | None = None
    contiguous_length: int = 0


@final
@dataclass(frozen=True, slots=True)
class StoredLog:
    """A log found in a store: its handle, its `LogInfo` and its current `Head`."""

    handle: int
    info: LogInfo
    head: Head


@dataclass(slots=True)
class WriteBatch:
    """Everything one append batch or one group of verified blocks changes.

    `Storage.commit` applies it in one transaction, in this order: ``truncate`` (drop
    every block ``>= truncate`` and every node outside the tree of that length), then
    ``manifest``, ``blocks``, ``nodes``, ``bitfield`` pages and ``head``.

    Attributes:
        blocks: ``(index, value, leaf_hash)`` for each new block.
        nodes: tree nodes to store (parents, and leaves whose block is not stored).
        bitfield: changed "have" pages, page index -> 4 KiB.
        head: the new signed head, or None to keep the current one.
        truncate: a length to cut the log back to first, or None.
        manifest: an encoded manifest learnt from a peer, or None.
        appended: True for a writer's append: ``blocks`` are new, and ``nodes`` are
            exactly the parents of depth >= 2 they complete, bottom-up per block, so
            storage may keep each in the row of the block that completes it.
        block_bytes: the total size of ``blocks`` when the caller knows it, else -1.
    """

    blocks: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    nodes: list[TreeNode] = field(default_factory=list)
    bitfield: dict[int, bytes] = field(default_factory=dict)
    head: Head | None = None
    truncate: int | None = None
    manifest: bytes | None = None
    appended: bool = False
    block_bytes: int = -1


class Storage(Protocol):
    """What a `Log` needs from a backend. Every method is synchronous and may block.

    Implementations are safe to call from one worker thread at a time for writes
    while other threads read. Reads return committed data only.
    """

    @property
    def readonly(self) -> bool:
        """True if this storage refuses writes."""
        ...

    def data_version(self) -> int:
        """Return a number that changes whenever another connection commits to the store.

        A read-only open uses it to notice a writer beside it cheaply (SQLite's
        ``PRAGMA data_version``); a backend with no other writer returns a constant.
        """
        ...

    def list_logs(self) -> list[bytes]:
        """Return the keys of every log in the store, oldest first."""
        ...

    def create_log(self, info: LogInfo) -> StoredLog:
        """Add a log with an empty head.

        Raises:
            ValueError: if a log with this key exists, or the store is full.
        """
        ...

    def find_log(self, key: bytes) -> StoredLog | None:
        """Return the log with this key (or discovery key), or None."""
        ...

    def get_meta(self, name: str) -> bytes | None:
        """Return a store-level setting, or None."""
        ...

    def set_meta(self, name: str, value: bytes) -> None:
        """Set a store-level setting (its own transaction)."""
        ...

    def get_block(self, handle: int, index: int) -> bytes | None:
        """Return block ``index``, or None if it is not stored.

        Raises:
            CorruptStorageError: if the stored bytes fail their checksum.
        """
        ...

    def get_blocks(self, handle: int, indices: Sequence[int]) -> list[bytes | None]:
        """Return `get_block` for each index, in one read.

        Raises:
            CorruptStorageError: if a stored block fails its checksum.
        """
        ...

    def iter_blocks(self, handle: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """Yield ``(index, value)`` for the stored blocks in ``start .. end - 1``, in order.

        Raises:
            CorruptStorageError: if a block fails its checksum.
        """
        ...

    def get_node(self, handle: int, index: int) -> TreeNode | None:
        """Return tree node ``index`` (leaves are rebuilt from their block), or None."""
        ...

    def get_nodes(self, handle: int, indices: Sequence[int]) -> list[TreeNode | None]:
        """Return `get_node` for each index."""
        ...

    def load_bitfield(self, handle: int) -> list[tuple[int, bytes]]:
        """Return every stored bitfield page of a log as ``(page, bytes)``."""
        ...

    def commit(self, handle: int, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically and durably (see the module docstring)."""
        ...

    def append_one(
        self,
        handle: int,
        value: bytes,
        leaf: bytes,
        parents: list[TreeNode],
        head: tuple[int, int, int, bytes],
    ) -> None:
        """Commit a writer's single appended block to a log holding all blocks before it.

        The same transaction as `commit` of ``WriteBatch(blocks=[(length - 1, value,
        leaf)], nodes=parents, head=Head(fork, length, byte_length, tree_hash, None,
        length), appended=True)``, with ``head`` = ``(fork, length, byte_length,
        tree_hash)``, and no objects built for it (the common single put).
        """
        ...

    def store_signature(self, handle: int, head: Head) -> None:
        """Replace the stored head, committed unsigned, by ``head``: the same head signed.

        Raises:
            ValueError: if ``head`` has no signature.
        """
        ...

    @property
    def maintenance_due(self) -> bool:
        """True when `maintain` should run (in a worker thread) before the next commit."""
        ...

    @property
    def write_busy(self) -> bool:
        """True while a write holds the storage in another thread (a commit or
        `maintain` in a worker thread, for any log of the store): a write made now
        on the event loop would block it until that one ends."""
        ...

    def maintain(self) -> None:
        """Do deferred upkeep that may wait on the disk (SQLite: finish a checkpoint)."""
        ...

    def check(self, *, full: bool = False) -> None:
        """Check the database structure (``quick_check``, or ``integrity_check`` if full).

        Raises:
            CorruptStorageError: with the first problem found.
        """
        ...

    def close(self) -> None:
        """Release connections and the write lock. Idempotent."""
        ...
