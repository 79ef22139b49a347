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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, final

from ..errors import LocalProtocolError
from .actions import (
    Action,
    DeliverLocal,
    DeliveryMode,
    DescendingChanged,
    DropPeer,
    Emit,
    FrameIn,
    Input,
    LocalSend,
    LocalSendClosest,
    ParentChanged,
    PeerAdded,
    PeerDown,
    PeerRemoved,
    PeerType,
    PeerUp,
    RootChanged,
    SendFrame,
)
from .constants import (
    ANNOUNCEMENT_INTERVAL,
    ANNOUNCEMENT_TIMEOUT,
    BOOTSTRAP_INTERVAL,
    BOOTSTRAP_MIN_GAP,
    COORDS_CACHE_LIFETIME,
    COORDS_CACHE_SWEEP,
    KEY_SIZE,
    MAX_COORDS_CACHE,
    MAX_COORDS_WIRE_SIZE,
    MAX_FRAME_SIZE,
    MAX_PORT,
    MAX_SNAKE_ENTRIES,
    MAX_TRAFFIC_PAYLOAD,
    MAX_VARU64_BYTES,
    REPARENT_WAIT,
    SNAKE_EXPIRY,
    SNAKE_MAINTAIN_INTERVAL,
    SNAKE_PATH_GRACE,
    TRAFFIC_HOP_LIMIT,
)
from .forward import LOCAL, KeyIndex, snake_next_hop, tree_next_hop
from .signer import NullSigner, Signer
from .snake import SnakeEntry, SnakeTable, worse
from .tree import (
    AnnouncementAction,
    Peer,
    check_announcement,
    decide_announcement,
    extendable,
    select_parent,
)
from .wire import (
    FULL_MASK,
    Announcement,
    Bootstrap,
    ClosestTraffic,
    Coords,
    Frame,
    Keepalive,
    Traffic,
    TreeAnnouncement,
    bootstrap_signed_bytes,
    coords_wire_size,
    frame_length,
)

__all__ = ["PeerStatus", "RouterConfig", "RouterState", "RouterStatistics"]

#: Coordinates of at most this many ports fit in `MAX_COORDS_WIRE_SIZE` whatever the
#: ports (a varu64 is at most `MAX_VARU64_BYTES`), so only longer ones are measured.
_SHORT_COORDS: Final = (MAX_COORDS_WIRE_SIZE - 2) // MAX_VARU64_BYTES


@final
@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Tunable timers and bounds; the defaults are Pinecone's (research §16)."""

    announcement_interval: float = ANNOUNCEMENT_INTERVAL
    announcement_timeout: float = ANNOUNCEMENT_TIMEOUT
    reparent_wait: float = REPARENT_WAIT
    snake_maintain_interval: float = SNAKE_MAINTAIN_INTERVAL
    bootstrap_interval: float = BOOTSTRAP_INTERVAL
    #: A bootstrap wanted "soon" goes out at once, but never sooner than this after the
    #: previous one (Pinecone: on the next 1 s maintenance tick).
    bootstrap_min_gap: float = BOOTSTRAP_MIN_GAP
    #: When a bootstrap ends here and its origin displaces a valid descending neighbour
    #: (a node joined between the two), pass it on towards the displaced node, which
    #: then learns its closer successor and bootstraps to it at once (docs/router.md,
    #: deviation 21). False: Pinecone's behaviour (the displaced node finds out with its
    #: next periodic bootstrap, up to 5 s later).
    descending_handover: bool = True
    #: When a peering goes down, send each bootstrap path that went on through it back to
    #: its origin, which then bootstraps again at once (deviation 24). False: Pinecone
    #: (the origin finds a new path with its next periodic bootstrap, up to 5 s later).
    path_break_notice: bool = True
    #: A packet following a bootstrap path back (its watermark is that path's origin and
    #: sequence) may still use the entry this long after it expired (deviation 23;
    #: Pinecone: 0, and the entry is gone at the next 1 s tick).
    snake_path_grace: float = SNAKE_PATH_GRACE
    #: Pinecone's 10 s. 12.5 s removes the expire-at-refresh race of paths used every
    #: other round (docs/router.md, "Known behaviour"); kept at 10 for comparability.
    snake_expiry: float = SNAKE_EXPIRY
    coords_cache_lifetime: float = COORDS_CACHE_LIFETIME
    coords_cache_sweep: float = COORDS_CACHE_SWEEP
    max_snake_entries: int = MAX_SNAKE_ENTRIES
    max_coords_cache: int = MAX_COORDS_CACHE
    hop_limit: int = TRAFFIC_HOP_LIMIT
    #: Bootstraps and descending entries whose root differs from ours only in the
    #: sequence, by at most this much, still count as ours. Pinecone: 0, so every root
    #: refresh (30 min) drops every descending entry network-wide and rejects bootstraps
    #: until the new sequence has spread (§15, "churn by design"); 1 smooths that over
    #: (research §17.5, optional experiment).
    root_seq_tolerance: int = 0
    #: Seconds added to `now` to get Unix time for bootstrap sequence numbers
    #: (the driver passes time.time() - trio.current_time()). Sequences are
    #: max(last + 1, unix_ms), so they stay monotonic whatever the clock does.
    wall_clock_offset: float = 0.0


@final
@dataclass(slots=True)
class RouterStatistics:
    """Counters since start.

    `dropped` maps a reason to a count; every frame or input the engine discards is
    counted under exactly one reason: unknown_port, unsupported_type, bad_announcement,
    bad_signature, wrong_root, replay, own_bootstrap, snake_table_full (remembered
    nothing, still forwarded), handover_no_route, duplicate_notice, stale_teardown,
    no_route, loop, watermark, hop_limit, too_large.
    """

    #: Frames received from peers (`FrameIn`).
    frames_in: int = 0
    #: `DeliverLocal` actions produced.
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peering as the router sees it."""

    port: int
    public_key: bytes
    peer_type: PeerType
    zone: str
    #: The peer's tree coordinates, None until its first announcement.
    coords: Coords | None
    root_key: bytes | None
    root_seq: int | None


@final
class RouterState:
    """One node's sans-IO router.

    Args:
        public_key: our 32-byte key; must equal `signer.public_key`.
        signer: `Ed25519Signer` or `NullSigner`.
        config: timers and bounds.
        now: the time the engine starts at (its first deadlines count from here).

    Raises:
        LocalProtocolError: if the key is not 32 bytes or differs from the signer's.
    """

    __slots__ = (
        "_bootstrap_due",
        "_bootstrap_seq",
        "_bootstrap_target",
        "_cfg",
        "_coords",
        "_coords_cache",
        "_descending",
        "_ev_coords",
        "_ev_parent",
        "_ev_root",
        "_index",
        "_index_dirty",
        "_key",
        "_last_bootstrap",
        "_next_cache_sweep",
        "_next_maintain",
        "_next_root_announce",
        "_now",
        "_ordering",
        "_parent",
        "_peer_list",
        "_peers",
        "_root_ann",
        "_sequence",
        "_signed_ann",
        "_signed_sig",
        "_signer",
        "_stats",
        "_table",
        "_verify",
        "_waiting_until",
    )

    def __init__(
        self,
        public_key: bytes,
        signer: Signer,
        *,
        config: RouterConfig | None = None,
        now: float = 0.0,
    ) -> None:
        key = bytes(public_key)
        if len(key) != KEY_SIZE:
            raise LocalProtocolError("a router key is 32 bytes")
        if bytes(signer.public_key) != key:
            raise LocalProtocolError("the signer's key is not the router's key")
        cfg = config if config is not None else RouterConfig()
        self._key = key
        self._signer = signer
        #: NullSigner accepts everything: skip building the signed bytes at all.
        self._verify = not isinstance(signer, NullSigner)
        self._cfg = cfg
        self._now = now
        self._stats = RouterStatistics()
        self._peers: dict[int, Peer] = {}
        self._peer_list: list[Peer] = []
        # tree
        self._parent: Peer | None = None
        self._sequence = 0
        self._ordering = 0
        self._waiting_until: float | None = None
        self._next_root_announce = now + cfg.announcement_interval
        self._root_ann = Announcement.new(key, 0)
        self._signed_ann: Announcement | None = None
        self._signed_sig = b""
        self._coords: Coords = ()
        self._ev_root: tuple[bytes, int] = (key, 0)
        self._ev_parent: int | None = None
        self._ev_coords: Coords = ()
        # snake
        self._index = KeyIndex()
        #: Peers whose announcement changed since the key index last saw it. Indexing
        #: waits for the next snake lookup: a cold start brings many announcements per
        #: peer between two lookups, and only the last one matters.
        self._index_dirty: dict[int, Peer] = {}
        self._table = SnakeTable(cfg.max_snake_entries)
        self._descending: bytes | None = None
        self._last_bootstrap = -math.inf
        #: When a bootstrap wanted "soon" is due (math.inf: none wanted).
        self._bootstrap_due = math.inf
        #: The key our last bootstrap headed for (None: none sent); a key learnt between
        #: ours and this one is a closer successor, worth bootstrapping to at once.
        self._bootstrap_target: bytes | None = None
        self._bootstrap_seq = 0
        self._next_maintain = now + cfg.snake_maintain_interval
        # forwarding
        self._coords_cache: dict[bytes, tuple[Coords, float]] = {}
        self._next_cache_sweep = now + cfg.coords_cache_sweep

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

    def _closest_cap(self) -> bytes | None:
        """The highest key closest-key traffic aims at (traffic for a target above it
        goes to the node that holds it): the root's key. During a reparent hold-down we
        only act as root (our own key), while higher keys still exist: then the
        strongest root a peer outside our subtree still announces, or None when no peer
        knows a key above ours (traffic for targets above us is dropped then, not
        wrongly delivered here)."""
        root = self._current_ann().root_key
        if self._waiting_until is None:
            return root
        for p in self._peer_list:
            ann = p.ann
            if ann is not None and not p.contains_us and ann.root_key > root:
                root = ann.root_key
        return root if root > self._key else None

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

    # --- peers --------------------------------------------------------------------------

    def _peer_up(self, ev: PeerUp, now: float, out: list[Action]) -> None:
        port = ev.port
        if not 1 <= port <= MAX_PORT:
            raise LocalProtocolError(f"peer port {port} outside 1..{MAX_PORT}")
        if port in self._peers:
            raise LocalProtocolError(f"port {port} is already up")
        key = bytes(ev.public_key)
        if len(key) != KEY_SIZE:
            raise LocalProtocolError("a peer key is 32 bytes")
        peer = Peer(port, key, ev.peer_type, ev.zone)
        self._peers[port] = peer
        self._peer_list = sorted(self._peers.values(), key=_port_of)
        if key != self._key:
            self._index.add(key, port, 0, peer.peer_type)
            self._closer_successor(key)
        self._announce([peer], out)
        out.append(Emit(PeerAdded(port, key)))

    def _peer_down(self, port: int, now: float, out: list[Action]) -> None:
        peer = self._peers.pop(port, None)
        if peer is None:
            self._drop("unknown_port")
            return
        self._peer_list = sorted(self._peers.values(), key=_port_of)
        self._index_dirty.pop(port, None)
        index = self._index
        for k in peer.indexed_keys:
            index.remove(k, port)
        index.remove(peer.key, port)
        gone = self._table.remove_port(port)
        d = self._descending
        if d is not None and any(e.origin == d for e in gone):
            self._set_descending(None, out)
        if self._cfg.path_break_notice:
            # Paths that went on through the lost port are broken beyond us: tell each
            # origin, back along its own path, so that it bootstraps again at once
            # (deviation 24). Its bootstrap, signature included, comes back unchanged
            # but for the watermark, which names the origin itself.
            valid_after = now - self._cfg.snake_expiry
            for e in gone:
                if e.last_seen <= valid_after or not e.signature:
                    continue
                if (
                    e.destination == port
                    and e.source != port
                    and e.source in self._peers
                    and e.noticed != e.seq
                ):
                    f = Bootstrap(
                        e.origin, e.origin, e.seq, e.seq, e.root_key, e.root_seq, e.signature
                    )
                    out.append(SendFrame(e.source, f))
                # The nodes after us on this path (when it came in through the lost
                # port), and on earlier rounds' paths and handovers we passed on (either
                # way), still point here, where the entry is now gone. Tear them down
                # ahead of us (watermark sequence 0 marks the teardown), so that they
                # stop sending into the break.
                f = Bootstrap(e.origin, e.origin, 0, e.seq, e.root_key, e.root_seq, e.signature)
                for ahead in e.ahead():
                    if ahead != port and ahead != e.source and ahead in self._peers:
                        out.append(SendFrame(ahead, f))
        out.append(Emit(PeerRemoved(port, peer.key)))
        if not self._peers:
            # Last peer gone: a blank slate (research §4.2), sequence kept.
            self._table.clear()
            self._coords_cache.clear()
            self._waiting_until = None
            if self._descending is not None:
                self._set_descending(None, out)
            self._parent = None
            self._sequence += 1
            self._tree_changed(out)
            return
        if peer is self._parent:
            # Our current announcement is now the synthetic one (root = us), so any
            # peer with a stronger root that is not our descendant is eligible (§5.8).
            self._parent = None
            best = self._choose_parent(now)
            if best is not None:
                self._set_parent(best, out)
            else:
                self._become_root(out)

    # --- tree ---------------------------------------------------------------------------

    def _announce(self, peers: list[Peer], out: list[Action]) -> None:
        """Send our current announcement, with our entry for each port, to `peers`."""
        if not peers:
            return
        ann = self._current_ann()
        if ann is not self._signed_ann:
            # Our entry signs the body before it, which does not depend on the port:
            # one signature serves every peer (ed25519 is deterministic anyway).
            self._signed_sig = self._signer.sign(ann.body if self._verify else b"")
            self._signed_ann = ann
        sig = self._signed_sig
        key = self._key
        for p in peers:
            p.sent = ann
            out.append(SendFrame(p.port, TreeAnnouncement(ann.extend(p.port, key, sig))))

    def _tree_changed(self, out: list[Action]) -> None:
        """Recompute coordinates after a tree change and emit what changed."""
        ann = self._current_ann()
        coords = ann.coords if self._parent is not None else ()
        self._coords = coords
        root = (ann.root_key, ann.root_seq)
        old = self._ev_root
        if root != old:
            if root[0] != old[0]:
                self._coords_cache.clear()  # §8.2: coordinates under another root are junk
            self._ev_root = root
            out.append(Emit(RootChanged(root[0], root[1])))
        port = self.parent_port
        if port != self._ev_parent or coords != self._ev_coords:
            self._ev_parent = port
            self._ev_coords = coords
            out.append(Emit(ParentChanged(port, coords)))

    def _become_root(self, out: list[Action]) -> None:
        self._parent = None
        self._sequence += 1
        self._tree_changed(out)
        self._announce(self._peer_list, out)

    def _set_parent(self, peer: Peer, out: list[Action]) -> None:
        self._parent = peer
        self._tree_changed(out)
        self._announce(self._peer_list, out)
        self._bootstrap_soon()

    def _choose_parent(self, now: float, among: list[Peer] | None = None) -> Peer | None:
        ann = self._current_ann()
        return select_parent(
            self._key,
            ann.root_key,
            ann.root_seq,
            self._peer_list if among is None else among,
            now,
            self._cfg.announcement_timeout,
        )

    def _on_announcement(
        self, peer: Peer, ann: Announcement, now: float, out: list[Action]
    ) -> None:
        reason = check_announcement(ann, peer.key, self._signer, verify=self._verify)
        if reason is not None:
            self._drop("bad_announcement")
            out.append(DropPeer(peer.port, reason))
            return
        cur = self._current_ann()
        first = peer.ann is None
        self._ordering += 1
        peer.ann = ann
        peer.ann_time = now
        peer.ann_order = self._ordering
        keys = ann.keys
        peer.coords = ann.coords[:-1]
        peer.contains_us = self._key in keys
        self._index_dirty[peer.port] = peer
        if self._waiting_until is not None:
            return  # hold-down: stored, not acted on
        is_parent = peer is self._parent
        action = decide_announcement(
            from_parent=is_parent,
            # Too deep to extend counts as unusable, like a descendant's (`extendable`).
            contains_us=peer.contains_us or not extendable(ann),
            new_root_key=ann.root_key,
            new_root_seq=ann.root_seq,
            our_root_key=cur.root_key,
            our_root_seq=cur.root_seq,
            first_from_peer=first,
        )
        if action is AnnouncementAction.ACCEPT:
            self._tree_changed(out)
            self._announce(self._peer_list, out)
        elif action is AnnouncementAction.REPARENT_WAIT:
            self._waiting_until = now + self._cfg.reparent_wait
            self._become_root(out)
        elif action is AnnouncementAction.ADOPT:
            self._set_parent(peer, out)
        elif action is AnnouncementAction.REPLY:
            # The peer stores every announcement, hold-down or not, and links are
            # reliable: if it already has our current one, repeating it adds nothing.
            if peer.sent is not self._current_ann():
                self._announce([peer], out)
        elif action is AnnouncementAction.SELECT_PARENT:
            # Only this peer's view changed, and the parent was the best of the rest
            # (every earlier change ran this comparison or a full selection), so
            # comparing the two equals a full selection at O(1) instead of O(peers).
            parent = self._parent
            best = self._choose_parent(now, None if parent is None else [parent, peer])
            if best is not None and best is not self._parent:
                self._set_parent(best, out)
            elif best is None and self._parent is not None:
                self._become_root(out)
        elif is_parent:  # pragma: no cover - the table never ignores the parent
            self._tree_changed(out)

    def _flush_index(self) -> None:
        dirty = self._index_dirty
        for peer in dirty.values():
            ann = peer.ann
            if ann is not None and ann.keys != peer.indexed_from:
                self._index_peer(peer, ann.keys)
                peer.indexed_from = ann.keys
        dirty.clear()

    def _index_peer(self, peer: Peer, keys: tuple[bytes, ...]) -> None:
        index = self._index
        port = peer.port
        n = len(keys) - 1
        own = self._key
        pk = peer.key
        new = {k: n - i for i, k in enumerate(keys) if k != pk and k != own}
        for k in peer.indexed_keys:
            if k not in new:
                index.remove(k, port)
        ptype = peer.peer_type
        for k, hops in new.items():
            index.add(k, port, hops, ptype)
        peer.indexed_keys = tuple(new)

    # --- snake --------------------------------------------------------------------------

    def _bootstrap_soon(self) -> None:
        """Want a bootstrap now, rate-limited to one per `bootstrap_min_gap`."""
        due = max(self._now, self._last_bootstrap + self._cfg.bootstrap_min_gap)
        if due < self._bootstrap_due:
            self._bootstrap_due = due

    def _closer_successor(self, key: bytes) -> None:
        """`key` was just learnt: if it lies between us and where our last bootstrap
        went, that was not our successor; bootstrap again soon."""
        target = self._bootstrap_target
        if target is not None and self._key < key < target:
            self._bootstrap_soon()

    def _set_descending(self, key: bytes | None, out: list[Action]) -> None:
        self._descending = key
        self._bootstrap_soon()
        out.append(Emit(DescendingChanged(key)))

    def _maintain_snake(self, now: float, out: list[Action]) -> None:
        cfg = self._cfg
        d = self._descending
        if d is not None:
            e = self._table.get(d)
            ann = self._current_ann()
            if (
                e is None
                or e.last_seen <= now - cfg.snake_expiry
                or e.root_key != ann.root_key
                or abs(e.root_seq - ann.root_seq) > cfg.root_seq_tolerance
            ):
                self._set_descending(None, out)
        self._table.sweep(now, cfg.snake_expiry + cfg.snake_path_grace)
        if self._parent is not None and (
            now - self._last_bootstrap >= cfg.bootstrap_interval - 1e-9
        ):
            self._send_bootstrap(now, out)

    def _send_bootstrap(self, now: float, out: list[Action]) -> None:
        self._bootstrap_due = math.inf
        self._last_bootstrap = now
        ann = self._current_ann()
        seq = max(self._bootstrap_seq + 1, int((now + self._cfg.wall_clock_offset) * 1000))
        self._bootstrap_seq = seq
        port, bk, bs = self._snake(self._key, True, FULL_MASK, 0)
        if port is None:
            self._bootstrap_target = None
            return
        self._bootstrap_target = bk
        sig = self._signer.sign(bootstrap_signed_bytes(seq, ann.root_key, ann.root_seq))
        out.append(
            SendFrame(port, Bootstrap(self._key, bk, bs, seq, ann.root_key, ann.root_seq, sig))
        )

    def _on_bootstrap(self, port: int, f: Bootstrap, now: float, out: list[Action]) -> None:
        origin = f.destination_key
        if origin == self._key:
            if f.watermark_key == origin and f.sequence == self._bootstrap_seq:
                # Our latest bootstrap, sent back: its path broke (deviation 24).
                self._bootstrap_soon()
            else:
                self._drop("own_bootstrap")
            return
        if self._verify and not self._signer.verify(
            origin, bootstrap_signed_bytes(f.sequence, f.root_key, f.root_seq), f.signature
        ):
            self._drop("bad_signature")
            return
        if f.watermark_key == origin and f.watermark_seq == 0:
            # A teardown removes only the very entry it names, whatever root that was
            # learnt under: when the dead node took the root with it, its paths must go
            # as well (deviation 24).
            self._on_teardown(port, f, out)
            return
        ann = self._current_ann()
        rk = f.root_key
        rs = f.root_seq
        tol = self._cfg.root_seq_tolerance
        if rk != ann.root_key or abs(rs - ann.root_seq) > tol:
            self._drop("wrong_root")
            return
        if f.watermark_key <= origin:
            # Routing never gives a bootstrap a watermark at or below its origin: this
            # is a handover towards the key in the watermark (deviation 21), or, when
            # that key is the origin's own, a path-break notice (deviation 24).
            self._on_handover(port, f, now, out)
            return
        table = self._table
        e = table.get(origin)
        if (
            e is not None
            and e.root_key == rk
            and abs(e.root_seq - rs) <= tol
            and f.sequence <= e.seq
        ):
            self._drop("replay")
            return
        nh, bk, bs = self._snake(origin, True, f.watermark_key, f.watermark_seq, port)
        displaced: bytes | None = None
        ne = SnakeEntry(origin, port, nh, now, rk, rs, f.sequence, f.signature)
        if e is not None:
            ne.inherit(e, now - self._cfg.snake_expiry - self._cfg.snake_path_grace)
        if table.put(ne):
            displaced = self._descending_update(origin, now, out)
            self._closer_successor(origin)
        else:
            self._drop("snake_table_full")
        if nh is None:
            # Dead end: we are the origin's ascending neighbour. If it took the place of
            # a descending neighbour that was still valid, that node does not know yet
            # that its successor changed: tell it (deviation 21).
            if displaced is not None and self._cfg.descending_handover:
                de = table.get(displaced)
                if de is not None:
                    ne.add_fanout(de.source, now)
                    out.append(
                        SendFrame(
                            de.source,
                            Bootstrap(origin, displaced, de.seq, f.sequence, rk, rs, f.signature),
                        )
                    )
            return
        if nh == port:
            self._drop("loop")
            return
        if worse(bk, bs, f.watermark_key, f.watermark_seq):
            self._drop("watermark")
            return
        out.append(SendFrame(nh, Bootstrap(origin, bk, bs, f.sequence, rk, rs, f.signature)))

    def _descending_update(self, origin: bytes, now: float, out: list[Action]) -> bytes | None:
        """§7.4 step 5 for a fresh entry of `origin`. Return the descending key that
        `origin` displaced if that one was still valid, else None."""
        if origin >= self._key:
            return None
        d = self._descending
        if d == origin:
            return None
        de = None if d is None else self._table.get(d)
        ann = self._current_ann()
        valid = (
            de is not None
            and de.last_seen > now - self._cfg.snake_expiry
            and de.root_key == ann.root_key
            and abs(de.root_seq - ann.root_seq) <= self._cfg.root_seq_tolerance
        )
        if not valid:
            self._set_descending(origin, out)
            return None
        if d is not None and d < origin:
            self._set_descending(origin, out)
            return d
        return None

    def _on_handover(self, port: int, f: Bootstrap, now: float, out: list[Action]) -> None:
        """A bootstrap of `origin` passed on by its dead end towards `target`, the
        descending neighbour it displaced there (deviation 21).

        It follows `target`'s own bootstrap path backwards: at every hop the snake entry
        of `target`, whose sequence may never be older than the previous hop's (carried
        in the watermark sequence). Along one such chain sequences never decrease and a
        single bootstrap round never visits a node twice, so the chain has no cycle.
        Every hop also learns a route to `origin` (back the way the handover came) if it
        had none as fresh; `target` thereby learns its closer successor and bootstraps.
        """
        origin = f.destination_key
        target = f.watermark_key
        rk = f.root_key
        rs = f.root_seq
        tol = self._cfg.root_seq_tolerance
        table = self._table
        expired = now - self._cfg.snake_expiry
        nh: int | None = None
        te: SnakeEntry | None = None
        if target != self._key:
            te = table.get(target)
            if (
                te is None
                or te.last_seen <= expired
                or te.root_key != rk
                or abs(te.root_seq - rs) > tol
                or te.seq < f.watermark_seq
                or te.source == port
            ):
                self._drop("handover_no_route")
                te = None
            elif target == origin and (te.noticed == f.watermark_seq or te.seq != f.watermark_seq):
                # Several breaks on one path send one notice; and if the origin has
                # bootstrapped since, the notice is moot.
                self._drop("duplicate_notice")
                te = None
            else:
                nh = te.source
                if target == origin:
                    te.noticed = f.watermark_seq
        e = table.get(origin)
        if target != origin and (
            e is None
            or e.last_seen <= expired
            or e.root_key != rk
            or abs(e.root_seq - rs) > tol
            or f.sequence > e.seq
        ):
            ne = SnakeEntry(origin, port, None, now, rk, rs, f.sequence, f.signature)
            # Not the origin's own path: a path-break notice must not follow it.
            ne.noticed = f.sequence
            if e is not None:
                ne.inherit(e, now - self._cfg.snake_expiry - self._cfg.snake_path_grace)
            if te is not None and nh is not None:
                ne.add_fanout(nh, now)
            if table.put(ne):
                self._descending_update(origin, now, out)
                self._closer_successor(origin)
            else:
                self._drop("snake_table_full")
        elif e is not None and te is not None and nh is not None:
            e.add_fanout(nh, now)  # our own path of `origin` stays; a teardown goes there too
        if te is not None and nh is not None:
            out.append(
                SendFrame(nh, Bootstrap(origin, target, te.seq, f.sequence, rk, rs, f.signature))
            )

    def _on_teardown(self, port: int, f: Bootstrap, out: list[Action]) -> None:
        """A path-break teardown (deviation 24): the origin's paths broke before the
        node it came from, which no longer holds any. Forget our entry if it leads there
        (arrived from there, this round or an earlier one) and pass the teardown on
        everywhere that entry's rounds went on to. A node passes a teardown on only when
        it removes its entry, and only a new bootstrap of the origin installs one, so
        this ends."""
        origin = f.destination_key
        e = self._table.get(origin)
        if e is None or e.source != port or e.seq > f.sequence:
            self._drop("stale_teardown")
            return
        self._table.remove(origin)
        if self._descending == origin:
            self._set_descending(None, out)
        for nh in e.ahead():
            if nh != port and nh in self._peers:
                out.append(SendFrame(nh, f))

    # --- traffic ------------------------------------------------------------------------

    def _on_frame(self, peer: Peer, frame: Frame, now: float, out: list[Action]) -> None:
        t = type(frame)
        if t is Traffic:
            self._route_traffic(peer.port, frame, now, out)  # type: ignore[arg-type]
        elif t is Bootstrap:
            self._on_bootstrap(peer.port, frame, now, out)  # type: ignore[arg-type]
        elif t is ClosestTraffic:
            self._route_closest(peer.port, frame, now, out)  # type: ignore[arg-type]
        elif t is TreeAnnouncement:
            self._on_announcement(peer, frame.announcement, now, out)  # type: ignore[union-attr]
        elif t is Keepalive:
            pass
        else:
            self._drop("unsupported_type")

    def _cache_coords(self, key: bytes, coords: Coords, now: float) -> bool:
        """Remember a source's coordinates; False (the frame is to be dropped, counted
        as `oversized_coords`) for coordinates longer than any tree allows. The decoder
        refuses those already; this also covers frames handed over without the codec."""
        if len(coords) > _SHORT_COORDS and coords_wire_size(coords) > MAX_COORDS_WIRE_SIZE:
            self._drop("oversized_coords")
            return False
        c = self._coords_cache
        if key in c:
            del c[key]
        elif len(c) >= self._cfg.max_coords_cache:
            del c[next(iter(c))]
        c[key] = (coords, now)
        return True

    def _sweep_coords_cache(self, now: float) -> None:
        c = self._coords_cache
        cutoff = now - self._cfg.coords_cache_lifetime
        while c:
            k = next(iter(c))
            if c[k][1] > cutoff:
                break
            del c[k]

    def _local_send(self, ev: LocalSend, now: float, out: list[Action]) -> None:
        dest = bytes(ev.destination_key)
        payload = bytes(ev.payload)
        if len(dest) != KEY_SIZE:
            raise LocalProtocolError("a destination key is 32 bytes")
        if len(payload) > MAX_TRAFFIC_PAYLOAD:
            raise LocalProtocolError(f"payload over {MAX_TRAFFIC_PAYLOAD} bytes")
        if dest == self._key:
            self._stats.delivered += 1
            out.append(DeliverLocal(dest, payload, DeliveryMode.EXACT, dest, 0))
            return
        cached = self._coords_cache.get(dest)
        coords: Coords = ()
        if cached is not None and now - cached[1] < self._cfg.coords_cache_lifetime:
            coords = cached[0]
        f = Traffic(
            coords, self._coords, dest, self._key, FULL_MASK, 0, payload, self._cfg.hop_limit
        )
        self._route_traffic(LOCAL, f, now, out)

    def _local_send_closest(self, ev: LocalSendClosest, now: float, out: list[Action]) -> None:
        target = bytes(ev.target_key)
        payload = bytes(ev.payload)
        if len(target) != KEY_SIZE:
            raise LocalProtocolError("a target key is 32 bytes")
        if len(payload) > MAX_TRAFFIC_PAYLOAD:
            raise LocalProtocolError(f"payload over {MAX_TRAFFIC_PAYLOAD} bytes")
        f = ClosestTraffic(
            self._coords, target, self._key, FULL_MASK, 0, payload, self._cfg.hop_limit
        )
        self._route_closest(LOCAL, f, now, out)

    def _route_traffic(self, from_port: int, f: Traffic, now: float, out: list[Action]) -> None:
        key = self._key
        if f.destination_key == key:
            if f.source_coords and not self._cache_coords(f.source_key, f.source_coords, now):
                return
            self._stats.delivered += 1
            out.append(
                DeliverLocal(
                    f.source_key,
                    f.payload,
                    DeliveryMode.EXACT,
                    key,
                    max(0, self._cfg.hop_limit - f.hop_limit),
                )
            )
            return
        if f.hop_limit <= 0:
            self._drop("hop_limit")
            return
        dc = f.destination_coords
        wm_key = f.watermark_key
        wm_seq = f.watermark_seq
        if dc:
            # The destination is a direct peer: one hop beats any tree path to it.
            direct = self._index.direct_port(f.destination_key, from_port)
            if direct is not None:
                out.append(SendFrame(direct, _forwarded(f, FULL_MASK, 0)))
                return
            # A tree-routed frame carries no watermark on the wire (§3.4): treat it as
            # fresh, so that the codec and the codec-free simulator behave the same.
            wm_key = FULL_MASK
            wm_seq = 0
            ann = self._current_ann()
            nh = tree_next_hop(
                self._coords, dc, from_port, self._peer_list, ann.root_key, ann.root_seq
            )
            if nh is not None and nh != LOCAL:
                out.append(SendFrame(nh, _forwarded(f, FULL_MASK, 0)))
                return
            # No tree progress, or the coordinates are ours but the key is not (stale
            # coordinates, §8.4): fall back to the snake without coordinates.
        nh2, bk, bs = self._snake(f.destination_key, False, wm_key, wm_seq, from_port)
        if nh2 is None or nh2 == LOCAL:
            self._drop("no_route")
            return
        if nh2 == from_port:
            self._drop("loop")
            return
        if worse(bk, bs, wm_key, wm_seq):
            self._drop("watermark")
            return
        nf = Traffic(
            (),
            f.source_coords,
            f.destination_key,
            f.source_key,
            bk,
            bs,
            f.payload,
            f.hop_limit - 1,
        )
        if dc and frame_length(nf) > MAX_FRAME_SIZE:
            self._drop("too_large")  # the watermark would not fit
            return
        out.append(SendFrame(nh2, nf))

    def _route_closest(
        self, from_port: int, f: ClosestTraffic, now: float, out: list[Action]
    ) -> None:
        if f.hop_limit <= 0:
            self._drop("hop_limit")
            return
        target = f.target_key
        cap = self._closest_cap()
        if cap is None and target > self._key:
            self._drop("holddown")  # keys above ours exist, but no route to them now
            return
        # Above every key (the root's is the highest): the root is the closest node.
        nh, bk, bs = self._snake(
            target if cap is None or target <= cap else cap,
            False,
            f.watermark_key,
            f.watermark_seq,
            from_port,
        )
        if nh is None:
            self._drop("no_route")
            return
        if worse(bk, bs, f.watermark_key, f.watermark_seq):
            self._drop("watermark")
            return
        if nh == LOCAL:
            if f.source_coords and not self._cache_coords(f.source_key, f.source_coords, now):
                return
            self._stats.delivered += 1
            out.append(
                DeliverLocal(
                    f.source_key,
                    f.payload,
                    DeliveryMode.CLOSEST,
                    target,
                    max(0, self._cfg.hop_limit - f.hop_limit),
                )
            )
            return
        if nh == from_port:
            self._drop("loop")
            return
        out.append(
            SendFrame(
                nh,
                ClosestTraffic(
                    f.source_coords,
                    target,
                    f.source_key,
                    bk,
                    bs,
                    f.payload,
                    f.hop_limit - 1,
                ),
            )
        )


def _port_of(p: Peer) -> int:
    return p.port


def _forwarded(f: Traffic, wm_key: bytes, wm_seq: int) -> Traffic:
    """`f` one hop further on (hop limit decremented), with the given watermark."""
    return Traffic(
        f.destination_coords,
        f.source_coords,
        f.destination_key,
        f.source_key,
        wm_key,
        wm_seq,
        f.payload,
        f.hop_limit - 1,
    )
