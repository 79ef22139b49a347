"""Pure next-hop selection: tree routing by coordinates, snake routing by keys.

Theory of operation
-------------------
`tree_next_hop` (research §6): greedy routing on the spanning tree. The candidate is
any peer (not the arrival port) that follows exactly our root (key and sequence) and
whose coordinates are strictly closer to the destination coordinates than ours. Ties
go to the lower peer type, then the earlier announcement, then the lower port (upstream
leaves ties to Go's map order). Strictly decreasing distance makes it loop-free on a
consistent tree. `LOCAL` when the destination coordinates are ours.

`snake_next_hop` (research §7.5): move towards the smallest known key that is strictly
greater than the destination, or exactly the destination (not for bootstraps). When the
destination is above us, the upper bound starts at the root, reached through the tree.
Candidates come from two sorted indexes, so a lookup is a bisection, not a scan:

* `KeyIndex`: every key in every peer's stored announcement (its ancestors and itself),
  plus every direct peer's key. Upstream checks the parent's ancestors first, then every
  peer's in map order, then moves to a direct link if the key is a peer. We route a key
  via the port that reaches it in the fewest tree hops (a direct peer is 0 hops), then
  the lower peer type, then the lower port: deterministic, and never further than
  upstream's choice.
* `SnakeTable` (snake.py): bootstrap paths, valid for 10 s, skipped when their watermark
  is worse than the packet's.

Routes back through the arrival port are not candidates (upstream computes the best
and then drops the packet if it points back; we take the next best, and the watermark
gate still applies). On equal keys the tree-derived candidate wins (upstream checks it
first and only a strictly closer key replaces the best). The result carries the new watermark
(best key, best sequence); the caller drops the packet if that is worse than the
packet's own (§8.1 step 5).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Final, final

from .constants import LOCAL_PORT
from .snake import SnakeTable
from .tree import Peer
from .wire import Coords

__all__ = ["LOCAL", "KeyIndex", "snake_next_hop", "tree_next_hop"]

#: The local router as a next hop.
LOCAL: Final = LOCAL_PORT
#: Compares above every 32-byte key (FULL_MASK is a prefix of it).
_ABOVE_EVERY_KEY: Final = b"\xff" * 33


@final
class KeyIndex:
    """Keys learnt from announcements and peerings -> the ports that lead to them."""

    __slots__ = ("_routes", "_sorted")

    def __init__(self) -> None:
        #: key -> {port: (tree hops, peer type, port)}
        self._routes: dict[bytes, dict[int, tuple[int, int, int]]] = {}
        self._sorted: list[bytes] = []

    def __len__(self) -> int:
        return len(self._routes)

    def add(self, key: bytes, port: int, hops: int, peer_type: int) -> None:
        routes = self._routes.get(key)
        if routes is None:
            routes = self._routes[key] = {}
            insort(self._sorted, key)
        routes[port] = (hops, peer_type, port)

    def remove(self, key: bytes, port: int) -> None:
        routes = self._routes.get(key)
        if routes is None or routes.pop(port, None) is None:
            return
        if not routes:
            del self._routes[key]
            s = self._sorted
            del s[bisect_left(s, key)]

    def port_for(self, key: bytes, exclude: int = -1) -> int | None:
        """The best port towards `key` other than `exclude`, or None if unknown."""
        routes = self._routes.get(key)
        if not routes:
            return None
        if len(routes) == 1:
            port = next(iter(routes))
            return None if port == exclude else port
        best = min([r for r in routes.values() if r[2] != exclude], default=None)
        return None if best is None else best[2]

    def direct_port(self, key: bytes, exclude: int) -> int | None:
        """A port on which `key` is a direct peer (not `exclude`), or None."""
        routes = self._routes.get(key)
        if not routes:
            return None
        best = min([r for r in routes.values() if r[0] == 0 and r[2] != exclude], default=None)
        return None if best is None else best[2]

    def first_route(
        self, dest: bytes, inclusive: bool, below: bytes, exclude: int
    ) -> tuple[bytes, int] | None:
        """The smallest key in [dest or (dest, below) with a port other than `exclude`.

        With `inclusive`, key == dest qualifies even if it is not below `below`.
        """
        s = self._sorted
        i = bisect_left(s, dest) if inclusive else bisect_right(s, dest)
        n = len(s)
        while i < n:
            key = s[i]
            if key >= below and not (inclusive and key == dest):
                return None
            port = self.port_for(key, exclude)
            if port is not None:
                return key, port
            i += 1
        return None

    def clear(self) -> None:
        self._routes.clear()
        self._sorted.clear()


def snake_next_hop(
    dest: bytes,
    bootstrap: bool,
    wm_key: bytes,
    wm_seq: int,
    *,
    our_key: bytes,
    root_key: bytes,
    has_parent: bool,
    index: KeyIndex,
    table: SnakeTable,
    valid_after: float,
    exclude: int = -1,
    grace_after: float | None = None,
) -> tuple[int | None, bytes, int]:
    """The snake next hop for `dest`: (port, new watermark key, new watermark seq).

    The port is `LOCAL` when we are the best (never for bootstraps) and None when a
    bootstrap dead-ends here. `valid_after` is `now - snake expiry`; the entry that is
    the packet's own watermark stays usable until `grace_after` (snake.py). Routes
    through port `exclude` (the arrival port) are not candidates.
    """
    if not bootstrap and dest == our_key:
        return LOCAL, wm_key, wm_seq
    best_key = our_key
    best_port: int | None = None if bootstrap else LOCAL
    if has_parent:
        if (bootstrap and dest == our_key) or (our_key < dest < root_key):
            # Head for the root: it has the highest key, every node knows a way up.
            port = index.port_for(root_key, exclude)
            if port is not None:
                best_key, best_port = root_key, port
    elif our_key < dest:
        # No parent (we are root, or in the 1 s hold-down after bad news) yet the
        # destination is above us: any known key above it is progress (ours, not
        # upstream's, which drops here; the watermark still bounds the path).
        best_key = _ABOVE_EVERY_KEY
    inclusive = not bootstrap
    tree = index.first_route(dest, inclusive, best_key, exclude)
    entry = table.first_candidate(
        dest, inclusive, best_key, wm_key, wm_seq, valid_after, exclude, grace_after
    )
    if entry is not None and (tree is None or entry.origin < tree[0]):
        return entry.source, entry.origin, entry.seq
    if tree is not None:
        return tree[1], tree[0], 0
    if best_key is _ABOVE_EVERY_KEY:
        return best_port, our_key, 0
    return best_port, best_key, 0


def tree_next_hop(
    our_coords: Coords,
    dest: Coords,
    from_port: int,
    peers: list[Peer],
    root_key: bytes,
    root_seq: int,
) -> int | None:
    """The tree next hop towards coordinates `dest`: a port, `LOCAL`, or None."""
    if dest == our_coords:
        return LOCAL
    n_dest = len(dest)
    best_d = _dist(our_coords, dest, n_dest)
    if best_d == 0:
        return LOCAL
    best: Peer | None = None
    for p in peers:
        ann = p.ann
        if (
            ann is None
            or p.port == from_port
            or ann.root_key != root_key
            or ann.root_seq != root_seq
        ):
            continue
        d = _dist(p.coords, dest, n_dest)
        if d < best_d or (
            d == best_d
            and best is not None
            and (p.peer_type, p.ann_order, p.port) < (best.peer_type, best.ann_order, best.port)
        ):
            best_d, best = d, p
    return None if best is None else best.port


def _dist(a: Coords, b: Coords, nb: int) -> int:
    na = len(a)
    n = na if na < nb else nb
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return na + nb - 2 * i
