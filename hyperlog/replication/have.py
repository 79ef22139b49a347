"""What a remote peer has: a contiguous prefix plus sparse bit pages (no trio).

Peers announce `range {0, n}` for their contiguous prefix and answer `want` with
`bitfield` chunks. We keep the prefix as one integer and scattered bits in at most
`MAX_REMOTE_PAGES` pages of `PAGE_BITS` bits (Python ints used as bitsets), so one
peer can never make us hold more than about 1 MiB per log. A page we had to forget
(or never heard about) is "unknown": the scheduler then asks with `want` or requests
speculatively and accepts a `noData`.
"""

from __future__ import annotations

from hyperlog.replication.constants import MAX_REMOTE_PAGES, PAGE_BITS


class RemoteHave:
    """The have-bitfield a peer announced for one log."""

    __slots__ = ("_pages", "contiguous")

    def __init__(self) -> None:
        self.contiguous = 0
        self._pages: dict[int, int] = {}

    def has(self, index: int) -> bool:
        if index < self.contiguous:
            return True
        page = self._pages.get(index // PAGE_BITS)
        return page is not None and bool(page >> (index % PAGE_BITS) & 1)

    def known(self, index: int) -> bool:
        """Whether we know if the peer has `index` (prefix or a page we hold)."""
        return index < self.contiguous or index // PAGE_BITS in self._pages

    def mark_known(self, page: int) -> None:
        """Record that `page` was answered (possibly all zeros)."""
        if page not in self._pages and len(self._pages) < MAX_REMOTE_PAGES:
            self._pages[page] = 0

    def add_range(self, start: int, length: int) -> None:
        end = start + length
        if start <= self.contiguous < end:
            self.contiguous = end
            self._absorb()
            return
        if end <= self.contiguous:
            return
        # A sparse run: set bits page by page, at most MAX_REMOTE_PAGES pages touched.
        i = start
        touched = 0
        while i < end and touched < MAX_REMOTE_PAGES:
            p = i // PAGE_BITS
            lo = i % PAGE_BITS
            hi = min(PAGE_BITS, lo + (end - i))
            self._set_bits(p, ((1 << (hi - lo)) - 1) << lo)
            i = (p + 1) * PAGE_BITS
            touched += 1

    def drop_range(self, start: int, length: int) -> None:
        """The peer lacks [start, start + length) (a NoData, or a dropped Range).

        Inside the prefix: demoting the part of the prefix past `end` into sparse
        pages is costly, so it is forgotten instead: the prefix ends at `start`, and
        the pages it covered are forgotten too, so all of [start, old prefix) is
        "unknown" (asked about again with a Want). A page kept there would turn
        those blocks into "known absent": a page can outlive the prefix that grew
        past it (a Want marks it known, then a Range covers it), and two one-off
        NoData from a peer that has everything used to stall a download forever.
        """
        end = start + length
        if start < self.contiguous:
            old = self.contiguous
            self.contiguous = start
            lo, hi = start // PAGE_BITS, (old - 1) // PAGE_BITS
            for p in [p for p in self._pages if lo <= p <= hi]:
                del self._pages[p]
        for p in list(self._pages):
            lo, hi = p * PAGE_BITS, (p + 1) * PAGE_BITS
            if hi <= start or lo >= end:
                continue
            a, b = max(lo, start) - lo, min(hi, end) - lo
            self._pages[p] &= ~(((1 << (b - a)) - 1) << a)

    def add_bits(self, start: int, bits: bytes) -> None:
        """Apply a `bitfield` chunk: bit k (LSB first) is block start + k."""
        value = int.from_bytes(bits, "little")
        n = 8 * len(bits)
        first, last = start // PAGE_BITS, (start + max(n, 1) - 1) // PAGE_BITS
        for p in range(first, last + 1):
            self.mark_known(p)
        while value and n:
            p, off = start // PAGE_BITS, start % PAGE_BITS
            take = min(n, PAGE_BITS - off)
            chunk = value & ((1 << take) - 1)
            if chunk:
                self._set_bits(p, chunk << off)
            value >>= take
            start += take
            n -= take
        self._absorb()

    def _set_bits(self, page: int, mask: int) -> None:
        cur = self._pages.get(page)
        if cur is None:
            if len(self._pages) >= MAX_REMOTE_PAGES:
                return  # forget: the page stays unknown
            cur = 0
        self._pages[page] = cur | mask

    def _absorb(self) -> None:
        """Grow the prefix through set bits of the page it ends in (bounded)."""
        for _ in range(MAX_REMOTE_PAGES + 1):
            p, off = divmod(self.contiguous, PAGE_BITS)
            page = self._pages.get(p)
            if page is None:
                return
            run = page >> off
            ones = (~run & (run + 1)).bit_length() - 1  # trailing ones
            self.contiguous += ones
            if off + ones < PAGE_BITS:
                return
            del self._pages[p]
        return

    def memory_pages(self) -> int:
        return len(self._pages)
