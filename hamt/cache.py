"""An LRU cache of decoded blocks, bounded by a count and by encoded bytes.

Blocks are immutable once written, so one cache serves the live HAMT and all of its
checkouts. No trio here: the engine peeks at it synchronously and only yields
"need block N" on a miss.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, final

from .wire import Block, BlockRecord

__all__ = ["BlockCache", "CacheStatistics"]

#: Where a `BlockRecord` keeps the block's encoded size.
_NBYTES: Final = 4


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    """Counters of a `BlockCache`."""

    blocks: int
    bytes: int
    hits: int
    misses: int
    evictions: int


@final
class BlockCache:
    """LRU of `Block`s: at most `max_blocks` blocks and about `max_bytes` encoded bytes."""

    __slots__ = ("_bytes", "_d", "_evictions", "_hits", "_misses", "max_blocks", "max_bytes")

    def __init__(self, max_blocks: int, max_bytes: int) -> None:
        if max_blocks < 1 or max_bytes < 1:
            raise ValueError("cache limits must be positive")
        self.max_blocks = max_blocks
        self.max_bytes = max_bytes
        # Records, not `Block`s: the garbage collector does not track them (wire.BlockRecord).
        self._d: OrderedDict[int, BlockRecord] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, seq: int) -> Block | None:
        """Return the cached block `seq` (marking it recently used), or None."""
        rec = self.record(seq)
        return None if rec is None else Block.from_record(rec)

    def record(self, seq: int) -> BlockRecord | None:
        """`get`, as the cached tuple (`wire.record_node`/`record_value` read it)."""
        rec = self._d.get(seq)
        if rec is None:
            self._misses += 1
            return None
        self._hits += 1
        self._d.move_to_end(seq)
        return rec

    def put(self, block: Block) -> None:
        """Insert `block`, evicting the least recently used ones beyond the limits."""
        old = self._d.pop(block.seq, None)
        if old is not None:
            self._bytes -= old[_NBYTES]
        self._d[block.seq] = block.record()
        self._bytes += block.nbytes
        while len(self._d) > 1 and (len(self._d) > self.max_blocks or self._bytes > self.max_bytes):
            _, ev = self._d.popitem(last=False)
            self._bytes -= ev[_NBYTES]
            self._evictions += 1

    def clear(self) -> None:
        """Drop every block."""
        self._d.clear()
        self._bytes = 0

    def __contains__(self, seq: object) -> bool:
        return seq in self._d

    def __len__(self) -> int:
        return len(self._d)

    def statistics(self) -> CacheStatistics:
        """Return the current counters."""
        return CacheStatistics(len(self._d), self._bytes, self._hits, self._misses, self._evictions)
