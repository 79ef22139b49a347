"""A paged "have" bitfield: which blocks of a log are held locally.

Theory of operation
-------------------
Bit ``i`` says whether block ``i`` is stored here. Bits live in pages of
`PAGE_BITS` (32,768 bits = 4 KiB, hypercore's page size); inside a page, bit ``i``
is bit ``i % 8`` (least significant first) of byte ``i // 8``, the layout of
hypercore 10's ``bitfield`` file, so a page can be sent as a hypercore ``bitfield``
chunk as it is. Pages that were never touched are absent and read as all zeros, so
a sparse reader of a huge log pays only for the pages it uses.

Each page keeps its count of set bits. The queries a replicator and `Log.has` need
stay fast for millions of blocks:

* `get` is one dictionary lookup and one byte read;
* `first_unset` / `first_set` / `last_set` skip whole pages by their counts and
  search inside one page with a single big-integer operation (C speed);
* `contiguous_length` (the number of blocks ``0..k-1`` all present, hypercore's
  ``contiguousLength`` hint) is cached and only moves forward on sets;
* `runs` yields maximal runs of set bits, for ``range`` messages and for ``cat``;
* `bits_bytes` copies a span as bytes (slices of its pages), for ``bitfield``
  messages: its cost does not depend on how many runs the span holds.

Writers mark pages dirty; `take_dirty` hands the changed pages to storage, which
writes them in the same transaction as the blocks they describe. Nothing here does
I/O or imports trio.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from typing import Final

__all__ = ["PAGE_BITS", "PAGE_BYTES", "Bitfield"]

#: Bits per page: hypercore's 4 KiB bitfield page.
PAGE_BITS: Final = 32768
#: Bytes per page.
PAGE_BYTES: Final = PAGE_BITS // 8
_PAGE_SHIFT: Final = 15
_PAGE_MASK: Final = PAGE_BITS - 1
_FULL_PAGE: Final = (1 << PAGE_BITS) - 1
#: Ranges up to this many bits are set bit by bit (cheaper than whole-page integers).
_SMALL_RANGE: Final = 64


class Bitfield:
    """A sparse, paged bitset with fast run queries.

    Create it empty, or fill it from stored pages with `load_page`.
    """

    __slots__ = ("_contiguous", "_counts", "_dirty", "_order", "_pages")

    def __init__(self) -> None:
        self._pages: dict[int, bytearray] = {}
        self._counts: dict[int, int] = {}
        self._order: list[int] = []  # sorted keys of _pages, for ordered scans
        self._dirty: set[int] = set()
        self._contiguous = 0

    def _new_page(self, page: int) -> bytearray:
        data = self._pages[page] = bytearray(PAGE_BYTES)
        self._counts[page] = 0
        bisect.insort(self._order, page)
        return data

    def _drop_page(self, page: int) -> None:
        if self._pages.pop(page, None) is not None:
            del self._counts[page]
            del self._order[bisect.bisect_left(self._order, page)]

    # -- loading and persisting -------------------------------------------------

    def load_page(self, page: int, data: bytes) -> None:
        """Install stored page ``page`` (as written by `take_dirty`).

        Raises:
            ValueError: if ``data`` is not exactly `PAGE_BYTES` long or ``page`` < 0.
        """
        if len(data) != PAGE_BYTES or page < 0:
            raise ValueError(f"bitfield page {page} has {len(data)} bytes, not {PAGE_BYTES}")
        count = int.from_bytes(data, "little").bit_count()
        self._drop_page(page)
        if count:
            self._new_page(page)[:] = data
            self._counts[page] = count
        self._contiguous = 0
        self._advance_contiguous()

    def take_dirty(self) -> dict[int, bytes]:
        """Return the pages changed since the last call (emptied ones as zeros); forget them."""
        out: dict[int, bytes] = {}
        for page in sorted(self._dirty):
            data = self._pages.get(page)
            out[page] = bytes(data) if data is not None else bytes(PAGE_BYTES)
        self._dirty.clear()
        return out

    def clear_dirty(self) -> None:
        """Forget which pages changed (their state is already stored)."""
        self._dirty.clear()

    def page_bytes(self, page: int) -> bytes:
        """Return page ``page`` as `PAGE_BYTES` bytes (zeros if never set)."""
        data = self._pages.get(page)
        return bytes(data) if data is not None else bytes(PAGE_BYTES)

    def pages(self) -> list[int]:
        """Return the indices of the pages holding at least one set bit, ascending."""
        return list(self._order)

    def copy(self) -> Bitfield:
        """Return an independent copy (dirty marks are not copied)."""
        other = Bitfield()
        other._pages = {p: bytearray(d) for p, d in self._pages.items()}
        other._counts = dict(self._counts)
        other._order = list(self._order)
        other._contiguous = self._contiguous
        return other

    # -- single bits ------------------------------------------------------------

    def get(self, index: int) -> bool:
        """Return True if bit ``index`` is set."""
        if index < self._contiguous:
            return index >= 0
        data = self._pages.get(index >> _PAGE_SHIFT)
        if data is None:
            return False
        bit = index & _PAGE_MASK
        return bool((data[bit >> 3] >> (bit & 7)) & 1)

    def set(self, index: int, value: bool = True) -> bool:
        """Set bit ``index`` to ``value``; return True if it changed.

        Raises:
            ValueError: if ``index`` is negative.
        """
        if index < 0:
            raise ValueError("bitfield index must be >= 0")
        page = index >> _PAGE_SHIFT
        bit = index & _PAGE_MASK
        data = self._pages.get(page)
        if data is None:
            if not value:
                return False
            data = self._new_page(page)
        mask = 1 << (bit & 7)
        old = data[bit >> 3]
        new = old | mask if value else old & ~mask
        if new == old:
            return False
        data[bit >> 3] = new
        self._dirty.add(page)
        if value:
            self._counts[page] += 1
            if index == self._contiguous:
                # The common case (appending) needs no scan: the next bit is unset.
                nxt = index + 1
                ndata = self._pages.get(nxt >> _PAGE_SHIFT)
                nbit = nxt & _PAGE_MASK
                if ndata is None or not (ndata[nbit >> 3] >> (nbit & 7)) & 1:
                    self._contiguous = nxt
                else:
                    self._advance_contiguous()
        else:
            self._counts[page] -= 1
            if not self._counts[page]:
                self._drop_page(page)
            if index < self._contiguous:
                self._contiguous = index
        return True

    # -- ranges -----------------------------------------------------------------

    def set_range(self, start: int, end: int, value: bool = True) -> None:
        """Set bits ``start .. end - 1`` to ``value``.

        Raises:
            ValueError: if ``start`` is negative or ``end < start``.
        """
        if start < 0 or end < start:
            raise ValueError(f"bad bitfield range {start}..{end}")
        if end - start <= _SMALL_RANGE:
            for i in range(start, end):
                self.set(i, value)
            return
        pos = start
        while pos < end:
            page = pos >> _PAGE_SHIFT
            lo = pos & _PAGE_MASK
            hi = min(end - (page << _PAGE_SHIFT), PAGE_BITS)
            self._set_in_page(page, lo, hi, value)
            pos = (page << _PAGE_SHIFT) + hi
        if value and start <= self._contiguous:
            self._advance_contiguous()
        elif not value and start < self._contiguous and end > start:
            self._contiguous = start

    def pages_after_set(self, start: int, end: int) -> dict[int, bytes]:
        """Return the pages covering ``start .. end - 1`` as `set_range` would leave them.

        Nothing changes: a log builds the pages to store with this, commits, and only
        then calls `set_range`, so memory never runs ahead of storage.
        """
        out: dict[int, bytes] = {}
        pos = max(start, 0)
        if end - pos <= _SMALL_RANGE:
            pages: dict[int, bytearray] = {}
            for i in range(pos, end):
                page = i >> _PAGE_SHIFT
                buf = pages.get(page)
                if buf is None:
                    data = self._pages.get(page)
                    buf = pages[page] = bytearray(PAGE_BYTES) if data is None else bytearray(data)
                bit = i & _PAGE_MASK
                buf[bit >> 3] |= 1 << (bit & 7)
            return {p: bytes(b) for p, b in pages.items()}
        while pos < end:
            page = pos >> _PAGE_SHIFT
            lo = pos & _PAGE_MASK
            hi = min(end - (page << _PAGE_SHIFT), PAGE_BITS)
            data = self._pages.get(page)
            cur = 0 if data is None else int.from_bytes(data, "little")
            out[page] = (cur | (((1 << (hi - lo)) - 1) << lo)).to_bytes(PAGE_BYTES, "little")
            pos = (page << _PAGE_SHIFT) + hi
        return out

    def pages_after_set_bits(self, indices: Iterable[int]) -> dict[int, bytes]:
        """Return the pages holding ``indices`` as setting those bits would leave them.

        Like `pages_after_set`, nothing changes.
        """
        values: dict[int, int] = {}
        for i in indices:
            page = i >> _PAGE_SHIFT
            cur = values.get(page)
            if cur is None:
                data = self._pages.get(page)
                cur = 0 if data is None else int.from_bytes(data, "little")
            values[page] = cur | (1 << (i & _PAGE_MASK))
        return {p: v.to_bytes(PAGE_BYTES, "little") for p, v in values.items()}

    def clear_from(self, start: int) -> None:
        """Clear every bit at ``start`` and above (used by truncate)."""
        last = self.last_set()
        if last is not None and last >= start:
            self.set_range(start, last + 1, False)

    def _set_in_page(self, page: int, lo: int, hi: int, value: bool) -> None:
        data = self._pages.get(page)
        if data is None:
            if not value:
                return
            data = self._new_page(page)
        mask = ((1 << (hi - lo)) - 1) << lo
        cur = int.from_bytes(data, "little")
        new = cur | mask if value else cur & ~mask
        if new == cur:
            return
        data[:] = new.to_bytes(PAGE_BYTES, "little")
        self._dirty.add(page)
        count = new.bit_count()
        if count:
            self._counts[page] = count
        else:
            self._drop_page(page)

    def _advance_contiguous(self) -> None:
        self._contiguous = self.first_unset(self._contiguous)

    # -- queries ----------------------------------------------------------------

    @property
    def contiguous_length(self) -> int:
        """The number of leading set bits: blocks ``0 .. n-1`` are all present."""
        return self._contiguous

    def is_prefix(self) -> bool:
        """Return True if the set bits are exactly ``0 .. contiguous_length - 1``.

        O(1): only the page holding bit `contiguous_length` can hold a later set bit
        without a later page existing. (A writer's usual state; see `Log.append`.)
        """
        order = self._order
        if not order:
            return True
        page = self._contiguous >> _PAGE_SHIFT
        last = order[-1]
        if last != page:
            return last < page
        return self._counts[page] == self._contiguous & _PAGE_MASK

    def count(self) -> int:
        """Return the total number of set bits."""
        return sum(self._counts.values())

    def count_range(self, start: int, end: int) -> int:
        """Return how many bits in ``start .. end - 1`` are set.

        Visits only the stored pages the span touches (absent pages hold no set bit),
        so a span far past the last page costs nothing more.
        """
        start = max(start, 0)
        if end <= start:
            return 0
        total = 0
        order = self._order
        first = bisect.bisect_left(order, start >> _PAGE_SHIFT)
        last = bisect.bisect_right(order, (end - 1) >> _PAGE_SHIFT)
        for page in order[first:last]:
            base = page << _PAGE_SHIFT
            lo, hi = max(start, base) - base, min(end, base + PAGE_BITS) - base
            if lo == 0 and hi == PAGE_BITS:
                total += self._counts[page]
            else:
                bits = int.from_bytes(self._pages[page], "little") >> lo
                total += (bits & ((1 << (hi - lo)) - 1)).bit_count()
        return total

    def first_unset(self, start: int = 0) -> int:
        """Return the smallest unset index ``>= start`` (there always is one)."""
        pos = max(start, self._contiguous)
        page = pos >> _PAGE_SHIFT
        # Bounded: each step moves to the next page, and only full pages are skipped,
        # so the loop runs at most once per stored page plus one.
        while True:
            data = self._pages.get(page)
            if data is None:
                return max(pos, page << _PAGE_SHIFT)
            if self._counts[page] != PAGE_BITS:
                lo = pos - (page << _PAGE_SHIFT) if pos > page << _PAGE_SHIFT else 0
                inv = (~int.from_bytes(data, "little") & _FULL_PAGE) >> lo
                if inv:
                    return (page << _PAGE_SHIFT) + lo + (inv & -inv).bit_length() - 1
            page += 1

    def first_set(self, start: int = 0) -> int | None:
        """Return the smallest set index ``>= start``, or None if there is none."""
        start = max(start, 0)
        if start < self._contiguous:
            return start
        first_page = start >> _PAGE_SHIFT
        order = self._order
        # Bounded by the number of stored pages at or after first_page.
        for k in range(bisect.bisect_left(order, first_page), len(order)):
            page = order[k]
            lo = start - (page << _PAGE_SHIFT) if page == first_page else 0
            bits = int.from_bytes(self._pages[page], "little") >> lo
            if bits:
                return (page << _PAGE_SHIFT) + lo + (bits & -bits).bit_length() - 1
        return None

    def last_set(self) -> int | None:
        """Return the largest set index, or None if no bit is set."""
        if not self._order:
            return None
        page = self._order[-1]
        return (page << _PAGE_SHIFT) + int.from_bytes(self._pages[page], "little").bit_length() - 1

    def bits_bytes(self, start: int, end: int) -> bytes:
        """Return bits ``start .. end - 1`` as bytes, LSB first (the page layout).

        ``start`` must be a multiple of 8; bits past ``end`` in the last byte are 0.
        Copies byte slices of the stored pages (absent pages read as zeros): the cost
        is per page, not per run of bits (a page of alternating bits has 16,384 runs).

        Raises:
            ValueError: if ``start`` is negative or not a multiple of 8.
        """
        if start < 0 or start % 8:
            raise ValueError("bits_bytes needs a non-negative start, a multiple of 8")
        if end <= start:
            return b""
        out = bytearray((end - start + 7) // 8)
        order = self._order
        first = bisect.bisect_left(order, start >> _PAGE_SHIFT)
        last = bisect.bisect_right(order, (end - 1) >> _PAGE_SHIFT)
        # Bounded by the stored pages the span touches.
        for page in order[first:last]:
            base = page << _PAGE_SHIFT
            lo, hi = max(start, base), min(end, base + PAGE_BITS)
            a, b = (lo - base) >> 3, (hi - base + 7) >> 3
            dst = (lo - start) >> 3
            out[dst : dst + b - a] = self._pages[page][a:b]
        if (end - start) % 8:
            out[-1] &= (1 << ((end - start) % 8)) - 1
        return bytes(out)

    def runs(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
        """Yield ``(first, stop)`` for each maximal run of set bits in ``start .. end - 1``.

        ``stop`` is exclusive. With ``end`` None the runs go to the last set bit.
        """
        last = self.last_set()
        if last is None:
            return
        limit = last + 1 if end is None else min(end, last + 1)
        pos = max(start, 0)
        # Bounded: every iteration consumes one run, and pos strictly increases.
        while pos < limit:
            first = self.first_set(pos)
            if first is None or first >= limit:
                return
            stop = min(self.first_unset(first), limit)
            yield first, stop
            pos = stop

    def missing(self, start: int, end: int) -> Iterator[tuple[int, int]]:
        """Yield ``(first, stop)`` for each maximal run of *unset* bits in ``start .. end - 1``."""
        pos = max(start, 0)
        while pos < end:
            first = self.first_unset(pos)
            if first >= end:
                return
            nxt = self.first_set(first)
            stop = end if nxt is None else min(nxt, end)
            yield first, stop
            pos = stop

    def __iter__(self) -> Iterator[int]:
        """Iterate over the set indices in ascending order."""
        for first, stop in self.runs():
            yield from range(first, stop)

    @classmethod
    def from_indices(cls, indices: Iterable[int]) -> Bitfield:
        """Return a bitfield with exactly ``indices`` set (a test and tooling helper)."""
        bf = cls()
        for i in indices:
            bf.set(i)
        bf.take_dirty()
        return bf
