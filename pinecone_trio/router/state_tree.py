"""The peerings and the spanning tree of the router engine (research §5).

`_peer_up` and `_peer_down` keep the per-port `Peer` records and the key index; a lost
peering also drops the snake entries through it and, with `path_break_notice`, sends
the path-break notices and teardowns (deviation 24). The tree part stores every peer's
announcement, applies the decision table of tree.py (`decide_announcement`) outside
the reparent hold-down, chooses the parent, recomputes our coordinates and emits
`RootChanged` / `ParentChanged`, and sends our announcement (one signature for every
port). Keys learnt from announcements reach the key index lazily (`_flush_index`, on
the next snake lookup).
"""

from __future__ import annotations

from ..errors import LocalProtocolError
from .actions import (
    Action,
    DropPeer,
    Emit,
    ParentChanged,
    PeerAdded,
    PeerRemoved,
    PeerUp,
    RootChanged,
    SendFrame,
)
from .constants import KEY_SIZE, MAX_PORT
from .state_base import RouterStateBase
from .tree import (
    AnnouncementAction,
    Peer,
    check_announcement,
    decide_announcement,
    extendable,
    select_parent,
)
from .wire import Announcement, Bootstrap, TreeAnnouncement


class TreeMixin(RouterStateBase):
    """`RouterState`'s peerings and spanning tree (see the module docstring)."""

    __slots__ = ()

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


def _port_of(p: Peer) -> int:
    return p.port
