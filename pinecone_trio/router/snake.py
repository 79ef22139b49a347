"""The virtual snake's soft-state table and watermark rule.

Theory of operation
-------------------
research/pinecone.md §7. Every non-root node sends a signed bootstrap towards its own key
every 5 s; snake routing never delivers a bootstrap to its exact key, so it ends at the
origin's ascending neighbour (the next higher key). Every node on the way, dead end
included, records "origin -> the port it came from" in its `SnakeTable`. An entry not
refreshed for 10 s is invalid and is swept on the next 1 s tick (plus the 1 s path
grace). A lost peering tears down explicitly the paths that came in through it, along
every port the origin's rounds went on to (`SnakeEntry.fanout`; docs/router.md
deviation 24).

`SnakeTable` keeps the entries twice over, so that no per-frame operation scans it:

* a dict in refresh order (a refresh deletes and re-inserts), so the expiry sweep stops
  at the first fresh entry: O(expired), not O(table);
* a sorted list of origin keys, so "the smallest key above the destination" is one
  bisection (forward.py).

The table is bounded by `max_entries`; when full, a bootstrap from a new origin is still
forwarded but not remembered (the caller counts it).

Watermarks (§7.6): `worse(a, b)` says whether watermark a is worse than b: a higher key,
or the same key with a non-zero lower sequence. A snake-routed packet's watermark must
never get worse, which is what makes snake routing loop-free.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import final

__all__ = ["SnakeEntry", "SnakeTable", "worse"]


def worse(a_key: bytes, a_seq: int, b_key: bytes, b_seq: int) -> bool:
    """Whether watermark (a_key, a_seq) is worse than (b_key, b_seq)."""
    return a_key > b_key or (a_key == b_key and a_seq != 0 and a_seq < b_seq)


@final
class SnakeEntry:
    """One bootstrap path through this node."""

    __slots__ = (
        "destination",
        "fanout",
        "last_seen",
        "noticed",
        "origin",
        "root_key",
        "root_seq",
        "seq",
        "signature",
        "source",
    )

    def __init__(
        self,
        origin: bytes,
        source: int,
        destination: int | None,
        last_seen: float,
        root_key: bytes,
        root_seq: int,
        seq: int,
        signature: bytes = b"",
    ) -> None:
        self.origin = origin
        #: The port the bootstrap arrived on: back towards the origin.
        self.source = source
        #: The port it was forwarded to; None at the dead end.
        self.destination = destination
        self.last_seen = last_seen
        self.root_key = root_key
        self.root_seq = root_seq
        #: The bootstrap's sequence (the watermark sequence of this path).
        self.seq = seq
        #: The origin's signature on it (for the path-break notice, deviation 24).
        self.signature = signature
        #: The sequence of the last path-break notice passed on for this path (one each).
        self.noticed = 0
        #: Other ports this origin's bootstraps were passed on to while the paths there
        #: may still be valid: earlier rounds' next hops and descending handovers
        #: (deviation 21), port -> when. A teardown follows all of them (deviation 24).
        self.fanout: dict[int, float] | None = None

    def add_fanout(self, port: int, when: float) -> None:
        """Remember that a bootstrap of this origin was passed on to `port`."""
        if port != self.destination:
            if self.fanout is None:
                self.fanout = {port: when}
            else:
                self.fanout[port] = when

    def inherit(self, old: SnakeEntry, after: float) -> None:
        """Take over the ports `old` (this origin's previous, still usable round) was
        passed on to, so that a teardown still reaches the nodes of that round."""
        if old.destination is not None:
            self.add_fanout(old.destination, old.last_seen)
        if old.fanout is not None:
            for port, when in old.fanout.items():
                if when > after:
                    self.add_fanout(port, when)

    def ahead(self) -> list[int]:
        """Every port this origin's paths went on to from here (destination first)."""
        ports = [] if self.destination is None else [self.destination]
        if self.fanout is not None:
            ports.extend(p for p in self.fanout if p != self.destination)
        return ports


@final
class SnakeTable:
    """Origin key -> `SnakeEntry`, bounded, with sorted keys and O(expired) sweeps."""

    __slots__ = ("_entries", "_sorted", "max_entries")

    def __init__(self, max_entries: int) -> None:
        self._entries: dict[bytes, SnakeEntry] = {}
        self._sorted: list[bytes] = []
        self.max_entries = max_entries

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, origin: bytes) -> bool:
        return origin in self._entries

    def get(self, origin: bytes) -> SnakeEntry | None:
        return self._entries.get(origin)

    def entries(self) -> list[SnakeEntry]:
        """All entries, in key order (a copy)."""
        e = self._entries
        return [e[k] for k in self._sorted]

    def put(self, entry: SnakeEntry) -> bool:
        """Install or refresh `entry`; False (nothing stored) if full and it is new."""
        entries = self._entries
        origin = entry.origin
        if origin in entries:
            del entries[origin]  # re-insert at the end: refresh order
        elif len(entries) >= self.max_entries:
            return False
        else:
            insort(self._sorted, origin)
        entries[origin] = entry
        return True

    def remove(self, origin: bytes) -> None:
        if self._entries.pop(origin, None) is not None:
            s = self._sorted
            del s[bisect_left(s, origin)]

    def sweep(self, now: float, expiry: float) -> int:
        """Delete entries not refreshed within `expiry`; return how many."""
        entries = self._entries
        n = 0
        cutoff = now - expiry
        while entries:
            origin = next(iter(entries))
            if entries[origin].last_seen > cutoff:
                break
            self.remove(origin)
            n += 1
        return n

    def remove_port(self, port: int) -> list[SnakeEntry]:
        """Delete every entry whose source or destination is `port`; return them."""
        gone = [e for e in self._entries.values() if e.source == port or e.destination == port]
        for e in gone:
            self.remove(e.origin)
        return gone

    def clear(self) -> None:
        self._entries.clear()
        self._sorted.clear()

    def first_candidate(
        self,
        dest: bytes,
        inclusive: bool,
        below: bytes,
        wm_key: bytes,
        wm_seq: int,
        valid_after: float,
        exclude: int = -1,
        grace_after: float | None = None,
    ) -> SnakeEntry | None:
        """The entry with the smallest origin in [dest or (dest, below), usable now.

        Usable: refreshed after `valid_after` and its watermark (origin, seq) not worse
        than the packet's (wm_key, wm_seq), and not leading back through port `exclude`.
        With `inclusive`, origin == dest also qualifies even if it is not below `below`
        (an exact match). The entry that *is* the packet's watermark (same origin and
        sequence: the packet is following this very bootstrap path back) stays usable
        until `grace_after` instead: entries along one path expire one link latency
        apart, nearest the origin first, so a packet that set out on a path that was
        still valid must not be dropped a few ms before it gets there.
        """
        s = self._sorted
        entries = self._entries
        i = bisect_left(s, dest) if inclusive else bisect_right(s, dest)
        n = len(s)
        while i < n:
            origin = s[i]
            if origin >= below and not (inclusive and origin == dest):
                return None
            if origin > wm_key:
                return None  # every later origin is worse than the watermark too
            e = entries[origin]
            if (
                (
                    e.last_seen > valid_after
                    or (
                        grace_after is not None
                        and origin == wm_key
                        and e.seq == wm_seq
                        and e.last_seen > grace_after
                    )
                )
                and e.source != exclude
                and not (origin == wm_key and e.seq != 0 and e.seq < wm_seq)
            ):
                return e
            i += 1
        return None
