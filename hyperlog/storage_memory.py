"""`MemoryStorage`: the `Storage` protocol over dictionaries, for tests.

It keeps what `hyperlog.storage_sqlite` keeps, with the same derived nodes and the
same truncation, and nothing survives the process.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import final

from .crypto import TreeNode, leaf_hash, parent_node
from .storage_schema import _check_batch, _truncated_nodes
from .storage_types import Head, LogInfo, StoredLog, WriteBatch

__all__ = ["MemoryStorage"]


@final
class MemoryStorage:
    """The `Storage` protocol over dictionaries: fast, deterministic, gone on exit.

    Nothing in `commit` can fail half-way (plain dictionary updates), so a batch is
    applied whole.
    """

    def __init__(self) -> None:
        self._logs: list[tuple[LogInfo, Head]] = []
        self._blocks: dict[tuple[int, int], bytes] = {}
        self._nodes: dict[tuple[int, int], TreeNode] = {}
        self._pages: dict[tuple[int, int], bytes] = {}
        self._meta: dict[str, bytes] = {}
        self._lock = threading.Lock()

    @property
    def readonly(self) -> bool:
        """Always False."""
        return False

    def data_version(self) -> int:
        """Always 0: nothing but this object writes to it."""
        return 0

    def list_logs(self) -> list[bytes]:
        """Return the keys of every log, oldest first."""
        return [info.key for info, _ in self._logs]

    def create_log(self, info: LogInfo) -> StoredLog:
        """Add a log with an empty head."""
        with self._lock:
            if self.find_log(info.key) is not None:
                raise ValueError(f"a log with key {info.key.hex()} already exists")
            self._logs.append((info, Head()))
            return StoredLog(len(self._logs), info, Head())

    def find_log(self, key: bytes) -> StoredLog | None:
        """Return the log with this key or discovery key, or None."""
        for n, (info, head) in enumerate(self._logs, start=1):
            if key in (info.key, info.discovery_key):
                return StoredLog(n, info, head)
        return None

    def get_meta(self, name: str) -> bytes | None:
        """Return a store-level setting, or None."""
        return self._meta.get(name)

    def set_meta(self, name: str, value: bytes) -> None:
        """Set a store-level setting."""
        self._meta[name] = bytes(value)

    def get_block(self, handle: int, index: int) -> bytes | None:
        """Return block ``index`` or None."""
        return self._blocks.get((handle, index))

    def get_blocks(self, handle: int, indices: Sequence[int]) -> list[bytes | None]:
        """Return `get_block` for each index."""
        return [self._blocks.get((handle, i)) for i in indices]

    def iter_blocks(self, handle: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """Yield stored blocks in ``start .. end - 1`` in order.

        Runs in a worker thread (`Log.iter_blocks`) while the loop thread commits:
        it never iterates over the live dictionary outside the write lock. Scanning
        it did, and "dictionary changed size during iteration" escaped `replicate()`
        when a writer appended while a range was served.
        """
        if end - start <= len(self._blocks):
            keys: Sequence[int] = range(start, end)  # one lookup each, no iteration
        else:  # a sparse span larger than the store: scan a snapshot
            with self._lock:
                keys = [i for h, i in self._blocks if h == handle and start <= i < end]
            keys.sort()
        for i in keys:
            value = self._blocks.get((handle, i))
            if value is not None:
                yield i, value

    def get_node(self, handle: int, index: int) -> TreeNode | None:
        """Return tree node ``index``, or None (derived nodes as in `SQLiteStorage`)."""
        if not index & 1:
            value = self._blocks.get((handle, index >> 1))
            if value is not None:
                return TreeNode(index, len(value), leaf_hash(value))
        node = self._nodes.get((handle, index))
        if node is None and index & 3 == 1:
            left = self.get_node(handle, index - 1)
            right = self.get_node(handle, index + 1) if left is not None else None
            if left is not None and right is not None:
                return parent_node(index, left, right)
        return node

    def get_nodes(self, handle: int, indices: Sequence[int]) -> list[TreeNode | None]:
        """Return `get_node` for each index."""
        return [self.get_node(handle, i) for i in indices]

    def load_bitfield(self, handle: int) -> list[tuple[int, bytes]]:
        """Return the stored bitfield pages of a log."""
        return sorted((p, d) for (h, p), d in self._pages.items() if h == handle)

    def commit(self, handle: int, batch: WriteBatch) -> None:
        """Apply ``batch`` atomically (refused whole, as by `SQLiteStorage`, if an index
        is outside a log)."""
        _check_batch(batch)
        with self._lock:
            info, head = self._logs[handle - 1]
            if batch.truncate is not None:
                n = batch.truncate
                drop = set(_truncated_nodes(n))
                for key in [k for k in self._blocks if k[0] == handle and k[1] >= n]:
                    del self._blocks[key]
                for key in [
                    k for k in self._nodes if k[0] == handle and (k[1] >= 2 * n or k[1] in drop)
                ]:
                    del self._nodes[key]
            if batch.manifest is not None:
                info = LogInfo(info.key, info.discovery_key, batch.manifest, info.secret_key)
            for i, value, _ in batch.blocks:
                self._blocks[(handle, i)] = bytes(value)
            for node in batch.nodes:
                self._nodes[(handle, node.index)] = node
            for p, data in batch.bitfield.items():
                self._pages[(handle, p)] = bytes(data)
            self._logs[handle - 1] = (info, batch.head if batch.head is not None else head)

    def append_one(
        self,
        handle: int,
        value: bytes,
        leaf: bytes,
        parents: list[TreeNode],
        head: tuple[int, int, int, bytes],
    ) -> None:
        """Commit one appended block (see `Storage.append_one`)."""
        fork, length, byte_length, tree_hash = head
        self.commit(
            handle,
            WriteBatch(
                blocks=[(length - 1, value, leaf)],
                nodes=[n for n in parents if n.index & 3 != 1],
                head=Head(fork, length, byte_length, tree_hash, None, length),
                appended=True,
                block_bytes=len(value),
            ),
        )

    def store_signature(self, handle: int, head: Head) -> None:
        """Replace the stored head by the same head, signed."""
        if head.signature is None:
            raise ValueError("store_signature needs a signed head")
        with self._lock:
            info, _ = self._logs[handle - 1]
            self._logs[handle - 1] = (info, head)

    @property
    def maintenance_due(self) -> bool:
        """Never: nothing to maintain in memory."""
        return False

    @property
    def write_busy(self) -> bool:
        """See `Storage.write_busy`."""
        return self._lock.locked()

    def maintain(self) -> None:
        """Nothing to maintain in memory."""

    def check(self, *, full: bool = False) -> None:
        """Nothing to check in memory."""

    def close(self) -> None:
        """Nothing to release."""
