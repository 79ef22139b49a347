"""RouterState: the sans-IO router engine (tree + snake + hybrid forwarding).

Theory of operation
-------------------
One `RouterState` is one node's routing brain. It never reads a clock and never does
I/O: the owner (the Trio driver or the simulator) calls

* `on_input(event, now)` for every `PeerUp`, `PeerDown`, `FrameIn`, `LocalSend` and
  `LocalSendClosest`, and
* `on_timer(now)` whenever `now >= next_deadline()`,

and carries out the returned actions in order (`SendFrame`, `DeliverLocal`,
`DropPeer`, `Emit`). `now` is in seconds and must never decrease.

Inside, three parts share the per-port peer records:

* the spanning tree (tree.py, research §5): stored announcements per port, the parent,
  our root sequence, the 1 s reparent hold-down, the 30 min root refresh;
* the virtual snake (snake.py, research §7): the soft-state table of bootstrap paths,
  the descending neighbour, the 1 s maintenance tick and 5 s bootstraps;
* forwarding (forward.py, research §8): tree next hop for traffic with destination
  coordinates, snake next hop (closest key from above, watermarks) otherwise, the
  source coordinate cache that turns replies into tree-routed traffic.

Invariants the simulator checks through the read-only accessors: tree routing strictly
decreases tree distance; snake routing never raises the watermark key; local delivery
of `Traffic` happens only when the destination key is exactly ours; every table is
bounded by a constant in constants.py.

Remote input never raises: malformed or illegal frames become `DropPeer` (announcement
rule violations) or a counter in `statistics()` (everything else). Local misuse
(an impossible port, a duplicate `PeerUp`, an oversized payload) raises
`LocalProtocolError`.

Queues are not in here: `SendFrame` means "enqueue for that port"; queues.PeerQueue
gives the driver and the simulator the same discipline (protocol frames first and
bounded; fair per-flow traffic with head drop).

`RouterState` is assembled from one mixin per subject, each a subclass of
`RouterStateBase` (state_base.py, which holds every field and initialises it in one
place); each module's docstring has the rules of its subject:

* state_tree.py: peerings coming and going, announcements, parent choice (`TreeMixin`);
* state_snake.py: bootstraps, the descending neighbour, handovers and teardowns
  (`SnakeMixin`);
* state_traffic.py: local sends, exact-key and closest-key routing, the coordinate
  cache (`TrafficMixin`);
* this module: driving (`on_input`, `on_timer`, `next_deadline`), the read-only
  accessors and the helpers every part uses. `RouterConfig`, `RouterStatistics` and
  `PeerStatus` are defined in state_config.py and re-exported here.
"""

from __future__ import annotations

import math
from typing import final

from ..errors import LocalProtocolError
from .actions import (
    Action,
    FrameIn,
    Input,
    LocalSend,
    LocalSendClosest,
    PeerDown,
    PeerType,
    PeerUp,
)
from .forward import LOCAL, snake_next_hop, tree_next_hop
from .snake import SnakeEntry
from .state_config import PeerStatus, RouterConfig, RouterStatistics
from .state_snake import SnakeMixin
from .state_traffic import TrafficMixin
from .state_tree import TreeMixin
from .wire import FULL_MASK, Announcement, Coords

__all__ = ["PeerStatus", "RouterConfig", "RouterState", "RouterStatistics"]


@final
class RouterState(TreeMixin, SnakeMixin, TrafficMixin):
    """One node's sans-IO router.

    Args:
        public_key: our 32-byte key; must equal `signer.public_key`.
        signer: `Ed25519Signer` or `NullSigner`.
        config: timers and bounds.
        now: the time the engine starts at (its first deadlines count from here).

    Raises:
        LocalProtocolError: if the key is not 32 bytes or differs from the signer's.
    """

    __slots__ = ()

    # --- driving ------------------------------------------------------------------------

    def on_input(self, event: Input, now: float) -> list[Action]:
        """Process one input; return the actions to carry out, in order.

        Raises:
            LocalProtocolError: for local misuse only (see the module docstring).
        """
        self._now = now
        out: list[Action] = []
        t = type(event)
        if t is FrameIn:
            ev: FrameIn = event  # type: ignore[assignment]
            self._stats.frames_in += 1
            peer = self._peers.get(ev.port)
            if peer is None:
                self._drop("unknown_port")
            else:
                self._on_frame(peer, ev.frame, now, out)
        elif t is LocalSend:
            self._local_send(event, now, out)  # type: ignore[arg-type]
        elif t is LocalSendClosest:
            self._local_send_closest(event, now, out)  # type: ignore[arg-type]
        elif t is PeerUp:
            self._peer_up(event, now, out)  # type: ignore[arg-type]
        elif t is PeerDown:
            self._peer_down(event.port, now, out)  # type: ignore[union-attr]
        else:
            raise LocalProtocolError(f"not a router input: {event!r}")
        return out

    def on_timer(self, now: float) -> list[Action]:
        """Run every timer due at `now` (safe to call early: nothing happens)."""
        self._now = now
        out: list[Action] = []
        cfg = self._cfg
        if self._waiting_until is not None and now >= self._waiting_until:
            self._waiting_until = None
            if self._parent is None:
                best = self._choose_parent(now)
                if best is not None:
                    self._set_parent(best, out)
        if now >= self._next_root_announce:
            nxt = self._next_root_announce + cfg.announcement_interval
            self._next_root_announce = nxt if nxt > now else now + cfg.announcement_interval
            if self._parent is None and self._waiting_until is None and self._peers:
                self._sequence += 1
                self._tree_changed(out)
                self._announce(self._peer_list, out)
        if now >= self._next_maintain:
            self._next_maintain += cfg.snake_maintain_interval
            if self._next_maintain <= now:
                self._next_maintain = now + cfg.snake_maintain_interval
            self._maintain_snake(now, out)
        if now >= self._bootstrap_due:
            self._bootstrap_due = math.inf
            if self._parent is not None:
                self._send_bootstrap(now, out)
        if now >= self._next_cache_sweep:
            self._next_cache_sweep = now + cfg.coords_cache_sweep
            self._sweep_coords_cache(now)
        return out

    def next_deadline(self) -> float:
        """When `on_timer` must next be called; `math.inf` if never."""
        d = min(
            self._next_maintain,
            self._next_root_announce,
            self._next_cache_sweep,
            self._bootstrap_due,
        )
        w = self._waiting_until
        return d if w is None or w > d else w

    # --- read-only accessors ------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        return self._key

    @property
    def config(self) -> RouterConfig:
        return self._cfg

    @property
    def root(self) -> tuple[bytes, int]:
        """Our root as (key, sequence); our own key when we are the root."""
        ann = self._current_ann()
        return ann.root_key, ann.root_seq

    @property
    def coords(self) -> Coords:
        """Our tree coordinates (empty when root)."""
        return self._coords

    @property
    def parent_port(self) -> int | None:
        """The port of our tree parent, None when we are root."""
        p = self._parent
        return None if p is None else p.port

    @property
    def waiting(self) -> bool:
        """Whether the 1 s reparent hold-down is active."""
        return self._waiting_until is not None

    @property
    def descending_key(self) -> bytes | None:
        """Our descending snake neighbour's key (valid entries only), or None."""
        d = self._descending
        if d is None:
            return None
        e = self._table.get(d)
        if e is None or e.last_seen <= self._now - self._cfg.snake_expiry:
            return None
        rk, rs = self.root
        if e.root_key != rk or abs(e.root_seq - rs) > self._cfg.root_seq_tolerance:
            return None
        return d

    @property
    def ascending_key(self) -> bytes | None:
        """The smallest key above ours that we know a route to (where our next bootstrap
        heads), or None. This is local knowledge, not necessarily the true successor."""
        port, key, _ = self._snake(self._key, True, FULL_MASK, 0)
        return None if port is None else key

    def peers(self) -> list[PeerStatus]:
        """Every live peering, by port."""
        out = []
        for p in self._peer_list:
            ann = p.ann
            out.append(
                PeerStatus(
                    p.port,
                    p.key,
                    PeerType(p.peer_type),
                    p.zone,
                    None if ann is None else p.coords,
                    None if ann is None else ann.root_key,
                    None if ann is None else ann.root_seq,
                )
            )
        return out

    def peer_key(self, port: int) -> bytes | None:
        """The key of the peer on `port`, or None."""
        p = self._peers.get(port)
        return None if p is None else p.key

    def snake_table_size(self) -> int:
        return len(self._table)

    def snake_entries(self) -> list[SnakeEntry]:
        """The snake table, in key order (read-only snapshot of live entries)."""
        return self._table.entries()

    def key_index_size(self) -> int:
        """Distinct keys learnt from announcements and peerings."""
        if self._index_dirty:
            self._flush_index()
        return len(self._index)

    def coords_cache_size(self) -> int:
        return len(self._coords_cache)

    def statistics(self) -> RouterStatistics:
        """Counters since start (a live object; copy it to snapshot)."""
        return self._stats

    def next_hop_exact(self, destination_key: bytes, *, from_port: int = LOCAL) -> int | None:
        """The port exact-key traffic for `destination_key` takes from here by the snake
        (`LOCAL` = ours, None = dropped), as if it arrived on `from_port`."""
        if destination_key == self._key:
            return LOCAL
        port, _, _ = self._snake(destination_key, False, FULL_MASK, 0, from_port)
        if port in (LOCAL, from_port):
            return None
        return port

    def next_hop_closest(self, target_key: bytes, *, from_port: int = LOCAL) -> int | None:
        """The port closest-key traffic for `target_key` takes from here (`LOCAL` when we
        are the closest node, None when dropped)."""
        cap = self._closest_cap()
        if cap is None and target_key > self._key:
            return None
        aim = target_key if cap is None or target_key <= cap else cap
        port, _, _ = self._snake(aim, False, FULL_MASK, 0, from_port)
        if port != LOCAL and port == from_port:
            return None
        return port

    def next_hop_coords(self, coords: Coords, *, from_port: int = LOCAL) -> int | None:
        """The tree next hop towards `coords` (`LOCAL` when they are ours, None if none)."""
        ann = self._current_ann()
        return tree_next_hop(
            self._coords, coords, from_port, self._peer_list, ann.root_key, ann.root_seq
        )

    # --- helpers ------------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        d = self._stats.dropped
        d[reason] = d.get(reason, 0) + 1

    def _current_ann(self) -> Announcement:
        p = self._parent
        if p is not None and p.ann is not None:
            return p.ann
        if self._root_ann.root_seq != self._sequence:
            self._root_ann = Announcement.new(self._key, self._sequence)
        return self._root_ann

    def _snake(
        self, dest: bytes, bootstrap: bool, wm_key: bytes, wm_seq: int, exclude: int = -1
    ) -> tuple[int | None, bytes, int]:
        if self._index_dirty:
            self._flush_index()
        return snake_next_hop(
            dest,
            bootstrap,
            wm_key,
            wm_seq,
            our_key=self._key,
            root_key=self._current_ann().root_key,
            has_parent=self._parent is not None,
            index=self._index,
            table=self._table,
            valid_after=self._now - self._cfg.snake_expiry,
            exclude=exclude,
            grace_after=self._now - self._cfg.snake_expiry - self._cfg.snake_path_grace,
        )
