"""What a clone knows while it runs (`_CloneState`: confirmed, fetched, the span) and
the progress bar it draws on a terminal; shared by `cli_clone` and `cli_live`."""

from __future__ import annotations

import math
import time
from typing import TextIO

from .cli_words import _count
from .replication import Progress

#: Seconds `clone` waits for the peer's signed head before giving up.
CLONE_UPDATE_TIMEOUT = 30.0
#: Redraw the progress bar at most this often (seconds).
PROGRESS_INTERVAL = 0.1


class _Bar:
    """A one-line progress bar on a terminal (nothing otherwise).

    `total` is the number of blocks to fetch, or None for a live clone, whose total is
    not known (the writer may append at any time): that shows counts, no percentage.
    """

    def __init__(self, out: TextIO, total: int | None) -> None:
        self.out = out
        self.total = total
        self.enabled = out.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, p: Progress, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < PROGRESS_INTERVAL):
            return
        self.last = now
        rate = p.bytes / max(now - self.t0, 1e-9) / 1e6
        amount = f"{p.bytes / 1e6:.1f} MB {rate:.1f} MB/s"
        if self.total is None:
            behind = f"{p.missing} to go" if p.missing else "up to date"
            line = f"live: {_count(p.blocks, 'block')} fetched, {behind}, {amount}"
        elif self.total == 0:
            line = "nothing to fetch: every block asked for is already here"
        else:
            done = max(0, self.total - p.missing)
            frac = done / self.total
            width = 30
            fill = math.floor(frac * width)
            line = (
                f"[{'#' * fill}{'.' * (width - fill)}] {100 * frac:5.1f}% "
                f"{done}/{self.total} blocks {amount}"
            )
        self.out.write(f"\r{line}\x1b[K")  # erase what a longer previous line left
        if final:
            self.out.write("\n")
        self.out.flush()


class _CloneState:
    """What `_clone` must know when the clone ends early."""

    def __init__(self) -> None:
        self.confirmed = False  # the peer said it serves the log: keep what comes
        self.fresh = False  # the store held no log before this clone
        self.fetched = 0  # blocks this run fetched (and kept)
        self.span = (0, 0)  # the blocks to fetch, [start, end) (set when confirmed)
        self.progress: Progress | None = None  # the download's last progress
        # When it was stopped (Ctrl-C, SIGTERM): the blocks it was to hold then, [start,
        # end) (a live clone's end is the length the server last signed), the log's
        # length, and whether all of them are here (then there is nothing to resume).
        self.stopped_span: tuple[int, int] | None = None
        self.length = 0
        self.complete = False

    def stopped(self) -> str:
        """The line a clone stopped by Ctrl-C or SIGTERM prints, once confirmed: "run
        the same clone again" only when blocks are still missing."""
        said = f"hyperlog: stopped after fetching {_count(self.fetched, 'block')}"
        if self.stopped_span is None or not self.complete:
            return f"{said} (kept: run the same clone again to resume)"
        start, end = self.stopped_span
        if start >= end:
            return f"{said}; the server had no block{f' from {start} on' if start else ''}"
        if end < self.length:  # (--sparse START:END)
            return f"{said}; the copy holds blocks {start}..{end - 1}, all that were asked for"
        if start:
            held = f"blocks {start}..{end - 1}, all the server had from {start} on"
            return f"{said}; the copy holds {held}"
        return f"{said}; the copy holds all {_count(end, 'block')} the server had"
