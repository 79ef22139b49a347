"""The spanning tree's pure decisions: announcement checks, the decision table, parents.

Theory of operation
-------------------
research/pinecone.md §5. The root is the node with the highest key; it floods a signed
root announcement (re-originated every 30 min with a new sequence). Each node repeats its
parent's announcement to all peers, appending its own signature entry naming the port
it sends on, so a node's coordinates are the hop ports in its parent's announcement.

`RouterState` (state.py) owns the mutable tree state (peers, parent, sequence, the 1 s
hold-down). This module holds the pieces that are pure functions of that state, so they
are tested by tables:

* `check_announcement`: the sanity rules of §5.3 step 1 plus signature checks. A
  failure disconnects the peer.
* `decide_announcement`: the §5.3 decision table (what to do with a valid announcement).
* `select_parent`: §5.4 parent selection with deterministic tie-breaks: stronger root
  key, then higher root sequence, then lower peer type, then the shorter path to the
  root, then earlier receive order, then lower port. Upstream only uses receive order
  (unique per announcement, so the port rule is a formality); its earliest arrival
  approximates the shortest path only right after a root sequence bump, while the path
  length gives a shortest-path-like tree at once (docs/router.md, deviation 2).

Deliberately different from upstream: a peer whose announcement repeats a root key with
a *lower* sequence than its previous one is not disconnected (upstream calls it a
replay). Our links are Noise-encrypted, so nobody but the peer can replay on them, and a
peer can legitimately regress after losing its parent (§5.8 accepts any stronger root).
The announcement is stored as the peer's current view.
"""

from __future__ import annotations

from enum import Enum
from typing import final

from .actions import PeerType
from .constants import HEADER_SIZE, KEY_SIZE, MAX_FRAME_SIZE, MAX_PORT, SIGNATURE_SIZE
from .signer import Signer
from .wire import Announcement, Coords

#: The most one hop adds to an announcement: a two-byte port, a key and a signature.
_MAX_HOP_BYTES = 2 + KEY_SIZE + SIGNATURE_SIZE


def extendable(ann: Announcement) -> bool:
    """Whether `ann` plus our own hop still fits in a frame. A legal announcement of
    the greatest depth does not: adopting it, we could announce nothing, and our peers
    would keep our old announcement (an inconsistent tree). So it is never a parent's."""
    return HEADER_SIZE + 2 + len(ann.body) + _MAX_HOP_BYTES <= MAX_FRAME_SIZE


__all__ = [
    "AnnouncementAction",
    "Peer",
    "check_announcement",
    "decide_announcement",
    "select_parent",
]


@final
class Peer:
    """Everything the router keeps about one live peering (shared by tree and snake)."""

    __slots__ = (
        "ann",
        "ann_order",
        "ann_time",
        "contains_us",
        "coords",
        "indexed_from",
        "indexed_keys",
        "key",
        "peer_type",
        "port",
        "sent",
        "zone",
    )

    def __init__(self, port: int, key: bytes, peer_type: PeerType, zone: str) -> None:
        self.port = port
        self.key = key
        self.peer_type = int(peer_type)
        self.zone = zone
        #: The last announcement this peer sent us, its arrival time and order.
        self.ann: Announcement | None = None
        self.ann_time = 0.0
        self.ann_order = 0
        #: The peer's coordinates (its announcement's hop ports but the last).
        self.coords: Coords = ()
        #: Whether our key is in its announcement (it is our descendant).
        self.contains_us = False
        #: Ancestor keys this peer contributes to the snake's key index.
        self.indexed_keys: tuple[bytes, ...] = ()
        #: The announcement keys `indexed_keys` was computed from.
        self.indexed_from: tuple[bytes, ...] = ()
        #: Our current announcement as last sent to this peer (before our entry).
        self.sent: Announcement | None = None


class AnnouncementAction(Enum):
    """What to do with a valid announcement (research §5.3 step 4)."""

    #: Bad news from the parent: become root, hold down for 1 s, then reselect.
    REPARENT_WAIT = "reparent_wait"
    #: Better news from the parent: repeat it to all peers.
    ACCEPT = "accept"
    #: A descendant's announcement: nothing to do.
    IGNORE = "ignore"
    #: A stronger root from a non-parent: adopt the sender as parent.
    ADOPT = "adopt"
    #: A weaker root from a non-parent: tell the sender about ours.
    REPLY = "reply"
    #: Same root key from a non-parent: run parent selection.
    SELECT_PARENT = "select_parent"
    #: Nothing (a weaker root in the peer's first announcement: it already has ours).
    NONE = "none"


def check_announcement(
    ann: Announcement, sender_key: bytes, signer: Signer, *, verify: bool = True
) -> str | None:
    """Why `ann` from the peer with `sender_key` is illegal, or None if it is fine.

    Rules (§5.3 step 1): at least one signature, the first signer is the root, no hop
    port is 0 (nor above `MAX_PORT`: ours), the last signer is the sender, no key
    appears twice, every signature verifies over the body up to the start of its own
    entry (skipped when `verify` is false: the null signer would accept them anyway).
    """
    keys = ann.keys
    if not keys:
        return "announcement without signatures"
    if keys[0] != ann.root_key:
        return "first signer is not the root"
    if keys[-1] != sender_key:
        return "last signer is not the peer"
    if len(set(keys)) != len(keys):
        return "announcement repeats a key"
    coords = ann.coords
    if 0 in coords:
        return "hop port 0 in announcement"
    if coords and max(coords) > MAX_PORT:
        # Every size limit on coordinates assumes ports of at most two varu64 bytes:
        # one adopted hop of ten bytes made our coordinates too long for every peer's
        # decoder, so all our traffic got us dropped as misbehaving (deviation 27).
        return f"hop port above {MAX_PORT} in announcement"
    if verify:
        body = ann.body
        for key, sig, start in zip(keys, ann.signatures, ann.starts, strict=True):
            if not signer.verify(key, body[:start], sig):
                return "bad announcement signature"
    return None


def decide_announcement(
    *,
    from_parent: bool,
    contains_us: bool,
    new_root_key: bytes,
    new_root_seq: int,
    our_root_key: bytes,
    our_root_seq: int,
    first_from_peer: bool,
) -> AnnouncementAction:
    """The §5.3 decision table, for an announcement that passed `check_announcement`.

    `our_root_*` is the root of our current announcement (ourselves when root).
    """
    if from_parent:
        if contains_us:
            return AnnouncementAction.REPARENT_WAIT
        if new_root_key > our_root_key:
            return AnnouncementAction.ACCEPT
        if new_root_key < our_root_key:
            return AnnouncementAction.REPARENT_WAIT
        if new_root_seq > our_root_seq:
            return AnnouncementAction.ACCEPT
        # Same key and sequence: the parent re-signed the same update, so its
        # coordinates changed (bad news). A lower sequence is bad news too.
        return AnnouncementAction.REPARENT_WAIT
    if contains_us:
        return AnnouncementAction.IGNORE
    if new_root_key > our_root_key:
        return AnnouncementAction.ADOPT
    if new_root_key < our_root_key:
        # PR #72: skip the reply to a first announcement, we sent ours at peering.
        return AnnouncementAction.NONE if first_from_peer else AnnouncementAction.REPLY
    return AnnouncementAction.SELECT_PARENT


def select_parent(
    our_key: bytes,
    current_root_key: bytes,
    current_root_seq: int,
    peers: list[Peer],
    now: float,
    announcement_timeout: float,
) -> Peer | None:
    """The best parent among `peers`, or None (§5.4).

    A candidate must beat the starting point: our current root, or (our key, 0) if we
    are stronger than it. Expired announcements and our descendants are skipped.
    """
    if our_key > current_root_key:
        best_key, best_seq = our_key, 0
    else:
        best_key, best_seq = current_root_key, current_root_seq
    best: Peer | None = None
    for p in peers:
        ann = p.ann
        if (
            ann is None
            or p.contains_us
            or now - p.ann_time >= announcement_timeout
            or not extendable(ann)
        ):
            continue
        rk = ann.root_key
        if rk < best_key:
            continue
        if rk == best_key:
            rs = ann.root_seq
            if rs < best_seq:
                continue
            if rs == best_seq and best is not None and _tie(p) >= _tie(best):
                continue
        best_key, best_seq, best = rk, ann.root_seq, p
    return best


def _tie(p: Peer) -> tuple[int, int, int, int]:
    # Lower peer type, then the shorter path to the root, then the earlier announcement.
    return p.peer_type, len(p.coords), p.ann_order, p.port
