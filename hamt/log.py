"""What a HAMT needs from a log, and an in-memory log for tests.

`hyperlog.Log` satisfies `LogLike` as it is; any other append-only log with these
few members works too. A read-only HAMT needs only `ReadableLog` (key, length, get):
a `hyperlog.LogSnapshot`, say, whose HAMT refuses writes with `ReadOnlyError`. A log
may also offer, and `Hamt` then uses:

* ``get_nowait(index) -> bytes`` (raising if the block is not held): a synchronous
  local read, tried before the awaited ``get``;
* ``async wait_length(length)``: returns once the log has grown to ``length``, so
  ``watch()`` follows appends made by replication;
* ``fork: int``: bumped when the log is truncated; the HAMT then drops its block
  cache, which may hold blocks of the old fork.
* ``add_listener(callback) -> remover``, calling back with hyperlog's events: its
  ``TruncateEvent(length, fork)`` tells where each truncation cut, so a checkout
  stays readable while its version was kept (without it, any fork change retires
  older checkouts: `TruncatedError`).

`MemoryLog` is the deterministic in-memory implementation the property tests use.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Protocol, final, runtime_checkable

__all__ = ["LogLike", "MemoryLog", "ReadableLog"]


@runtime_checkable
class ReadableLog(Protocol):
    """What a read-only HAMT needs: a log of byte blocks, numbered from 0, to read."""

    @property
    def key(self) -> bytes:
        """The log's public key (mixed into the HAMT's hash key)."""
        ...

    @property
    def length(self) -> int:
        """Number of blocks (the HAMT's version)."""
        ...

    async def get(self, index: int) -> bytes:
        """Return block `index` (fetching it from peers if the log can)."""
        ...


@runtime_checkable
class LogLike(ReadableLog, Protocol):
    """An append-only log of byte blocks, numbered from 0."""

    @property
    def writable(self) -> bool:
        """Whether `append` may be called."""
        ...

    async def append(self, blocks: Sequence[bytes]) -> object:
        """Append `blocks` atomically, as one batch."""
        ...


@final
class MemoryLog:
    """An in-memory `LogLike`: blocks in a list, counters for tests."""

    def __init__(self, key: bytes | None = None, *, writable: bool = True) -> None:
        self._key = key if key is not None else os.urandom(32)
        self._writable = writable
        self.blocks: list[bytes] = []
        #: How many `get` calls were made (tests check sparse access with it).
        self.gets = 0

    @property
    def key(self) -> bytes:
        return self._key

    @property
    def discovery_key(self) -> bytes:
        return hashlib.blake2b(b"hypercore", key=self._key, digest_size=32).digest()

    @property
    def length(self) -> int:
        return len(self.blocks)

    @property
    def writable(self) -> bool:
        return self._writable

    @property
    def byte_length(self) -> int:
        return sum(len(b) for b in self.blocks)

    async def get(self, index: int) -> bytes:
        self.gets += 1
        if not 0 <= index < len(self.blocks):
            raise IndexError(f"block {index} out of range")
        return self.blocks[index]

    async def append(self, blocks: Sequence[bytes]) -> int:
        if not self._writable:
            raise PermissionError("log is read-only")
        self.blocks.extend(bytes(b) for b in blocks)
        return len(self.blocks)
