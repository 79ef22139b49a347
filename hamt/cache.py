"""An LRU cache of decoded blocks, bounded by a count and by encoded bytes.

Blocks are immutable once written, so one cache serves the live HAMT and all of its
checkouts. No trio here: the engine peeks at it synchronously and only yields
"need block N" on a miss.

Large blocks a get read are kept encoded (`wire.LazyBlock`) in a second map under
the same limits: `decoded` then `kept` (what a lookup uses) hand them out as they are and
decode one in full once it has been read `LAZY_PROMOTE_USES` times; `get` and `record`
(every other walk) always return a decoded block, decoding a kept one first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Final, final

from .constants import LAZY_PROMOTE_USES
from .wire import Block, BlockRecord, LazyBlock

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
    #: Of `blocks`, how many are kept encoded (`wire.LazyBlock`).
    lazy: int = 0


@final
class BlockCache:
    """LRU of `Block`s: at most `max_blocks` blocks and about `max_bytes` encoded bytes."""

    __slots__ = (
        "_bytes",
        "_d",
        "_evictions",
        "_hits",
        "_lazy",
        "_misses",
        "max_blocks",
        "max_bytes",
    )

    def __init__(self, max_blocks: int, max_bytes: int) -> None:
        if max_blocks < 1 or max_bytes < 1:
            raise ValueError("cache limits must be positive")
        self.max_blocks = max_blocks
        self.max_bytes = max_bytes
        # Records, not `Block`s: the garbage collector does not track them (wire.BlockRecord).
        self._d: OrderedDict[int, BlockRecord] = OrderedDict()
        # Large blocks kept encoded (only gets have read them so far), evicted first.
        self._lazy: OrderedDict[int, LazyBlock] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get(self, seq: int) -> Block | None:
        """Return the cached block `seq` (marking it recently used), or None."""
        rec = self.record(seq)
        return None if rec is None else Block.from_record(rec)

    def record(self, seq: int) -> BlockRecord | None:
        """`get`, as the cached tuple (`wire.record_node`/`record_value` read it).

        Raises:
            CorruptNodeError: a block kept encoded is malformed (it is decoded now).
        """
        rec = self._d.get(seq)
        if rec is not None:
            self._hits += 1
            self._d.move_to_end(seq)
            return rec
        lazy = self._lazy.get(seq)
        if lazy is None:
            self._misses += 1
            return None
        self._hits += 1
        return self._promote(lazy)

    def decoded(self, seq: int) -> BlockRecord | None:
        """`record` if block `seq` is cached decoded, else None (nothing decoded, no miss counted).

        A lookup's hot path: a miss here goes on to `kept`.
        """
        rec = self._d.get(seq)
        if rec is not None:
            self._hits += 1
            self._d.move_to_end(seq)
        return rec

    def kept(self, seq: int) -> BlockRecord | LazyBlock | None:
        """After a `decoded` miss: block `seq` kept encoded, as it is (for a lookup), or None.

        Its read is counted; at `LAZY_PROMOTE_USES` reads it is decoded in full and its
        record returned.

        Raises:
            CorruptNodeError: a kept block was due for its full decode and is malformed.
        """
        lazy = self._lazy.get(seq)
        if lazy is None:
            self._misses += 1
            return None
        self._hits += 1
        lazy.uses += 1
        if lazy.uses >= LAZY_PROMOTE_USES:
            return self._promote(lazy)
        self._lazy.move_to_end(seq)
        return lazy

    def peek(self, seq: int) -> BlockRecord | LazyBlock | None:
        """`decoded`, then `kept`: what a lookup may read of block `seq`, or None."""
        rec = self.decoded(seq)
        return rec if rec is not None else self.kept(seq)

    def _promote(self, lazy: LazyBlock) -> BlockRecord:
        """Decode a kept block in full and keep the decoded one instead."""
        del self._lazy[lazy.seq]
        self._bytes -= lazy.nbytes
        block = lazy.decode()  # (a malformed block leaves the cache)
        self.put(block)
        return self._d[block.seq]

    def put(self, block: Block) -> None:
        """Insert `block`, evicting the least recently used ones beyond the limits."""
        old = self._d.pop(block.seq, None)
        if old is not None:
            self._bytes -= old[_NBYTES]
        if self._lazy:
            kept = self._lazy.pop(block.seq, None)
            if kept is not None:
                self._bytes -= kept.nbytes
        self._d[block.seq] = block.record()
        self._bytes += block.nbytes
        if len(self._d) + len(self._lazy) > self.max_blocks or self._bytes > self.max_bytes:
            self._evict()

    def put_lazy(self, lazy: LazyBlock) -> None:
        """Keep `lazy` encoded (unless the block is cached already), evicting beyond the limits."""
        if lazy.seq in self._d or lazy.seq in self._lazy:
            return
        self._lazy[lazy.seq] = lazy
        self._bytes += lazy.nbytes
        if len(self._d) + len(self._lazy) > self.max_blocks or self._bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        # Blocks kept encoded go first (only single gets have read them), then the
        # least recently used decoded ones; the newest block always stays.
        lazy, d = self._lazy, self._d
        while len(lazy) + len(d) > 1 and (
            len(lazy) + len(d) > self.max_blocks or self._bytes > self.max_bytes
        ):
            if lazy:
                _, kept = lazy.popitem(last=False)
                self._bytes -= kept.nbytes
            else:
                _, ev = d.popitem(last=False)
                self._bytes -= ev[_NBYTES]
            self._evictions += 1

    def clear(self) -> None:
        """Drop every block."""
        self._d.clear()
        self._lazy.clear()
        self._bytes = 0

    def __contains__(self, seq: object) -> bool:
        return seq in self._d or seq in self._lazy

    def __len__(self) -> int:
        return len(self._d) + len(self._lazy)

    def statistics(self) -> CacheStatistics:
        """Return the current counters."""
        return CacheStatistics(
            len(self), self._bytes, self._hits, self._misses, self._evictions, len(self._lazy)
        )
