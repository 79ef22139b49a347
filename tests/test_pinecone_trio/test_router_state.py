"""RouterState driven by hand: one engine, explicit frames, explicit `now`."""

from __future__ import annotations

import math

import pytest

from pinecone_trio.errors import LocalProtocolError
from pinecone_trio.identity import FULL_MASK, Identity
from pinecone_trio.router.actions import (
    Action,
    DeliverLocal,
    DeliveryMode,
    DescendingChanged,
    DropPeer,
    Emit,
    FrameIn,
    LocalSend,
    LocalSendClosest,
    ParentChanged,
    PeerAdded,
    PeerDown,
    PeerRemoved,
    PeerUp,
    RootChanged,
    SendFrame,
)
from pinecone_trio.router.constants import MAX_COORDS_WIRE_SIZE
from pinecone_trio.router.signer import Ed25519Signer, NullSigner
from pinecone_trio.router.state import RouterConfig, RouterState
from pinecone_trio.router.wire import (
    KEEPALIVE,
    Announcement,
    Bootstrap,
    ClosestTraffic,
    Frame,
    Traffic,
    TreeAnnouncement,
    UnknownFrame,
    bootstrap_signed_bytes,
)

SIG = bytes(64)


def k(n: int) -> bytes:
    return n.to_bytes(2, "big") + bytes(30)


US = k(50)


def engine(key: bytes = US, **cfg: float) -> RouterState:
    return RouterState(key, NullSigner(key), config=RouterConfig(**cfg), now=0.0)  # type: ignore[arg-type]


def sent(actions: list[Action]) -> list[tuple[int, Frame]]:
    return [(a.port, a.frame) for a in actions if isinstance(a, SendFrame)]


def events(actions: list[Action]) -> list[object]:
    return [a.event for a in actions if isinstance(a, Emit)]


def root_ann(root: int, seq: int, path: list[tuple[int, int]]) -> TreeAnnouncement:
    """An announcement from `root` (seq) along (port, key) hops; signatures are zeros."""
    ann = Announcement.new(k(root), seq)
    for port, key in path:
        ann = ann.extend(port, k(key), SIG)
    return TreeAnnouncement(ann)


def test_constructor_checks_the_key() -> None:
    with pytest.raises(LocalProtocolError):
        RouterState(US[:31], NullSigner(US[:31]))
    with pytest.raises(LocalProtocolError):
        RouterState(US, NullSigner(k(51)))


def test_peer_up_sends_our_announcement_first() -> None:
    s = engine()
    actions = s.on_input(PeerUp(4, k(60)), 0.0)
    assert isinstance(actions[0], SendFrame) and actions[0].port == 4
    frame = actions[0].frame
    assert isinstance(frame, TreeAnnouncement)
    ann = frame.announcement
    assert ann.root_key == US and ann.keys == (US,) and ann.coords == (4,)
    assert PeerAdded(4, k(60)) in events(actions)
    assert s.root == (US, 0) and s.parent_port is None and s.coords == ()


def test_local_misuse_raises() -> None:
    s = engine()
    s.on_input(PeerUp(1, k(60)), 0.0)
    for bad in (PeerUp(1, k(61)), PeerUp(0, k(61)), PeerUp(254, k(61)), PeerUp(2, b"short")):
        with pytest.raises(LocalProtocolError):
            s.on_input(bad, 0.0)
    with pytest.raises(LocalProtocolError):
        s.on_input(LocalSend(k(60), b"x" * 70000), 0.0)
    with pytest.raises(LocalProtocolError):
        s.on_input(LocalSendClosest(b"short", b""), 0.0)
    with pytest.raises(LocalProtocolError):
        s.on_input("nonsense", 0.0)  # type: ignore[arg-type]


def test_unknown_ports_and_types_are_counted_not_raised() -> None:
    s = engine()
    assert s.on_input(FrameIn(9, KEEPALIVE), 0.0) == []
    assert s.on_input(PeerDown(9), 0.0) == []
    s.on_input(PeerUp(1, k(60)), 0.0)
    assert s.on_input(FrameIn(1, UnknownFrame(77, b"?")), 0.0) == []
    assert s.on_input(FrameIn(1, KEEPALIVE), 0.0) == []
    assert s.statistics().dropped == {"unknown_port": 2, "unsupported_type": 1}


def test_adopting_a_stronger_root_and_coordinates() -> None:
    s = engine()
    s.on_input(PeerUp(1, k(60)), 0.0)
    s.on_input(PeerUp(2, k(40)), 0.0)
    actions = s.on_input(FrameIn(1, root_ann(90, 3, [(5, 90), (7, 60)])), 1.0)
    assert s.root == (k(90), 3) and s.parent_port == 1 and s.coords == (5, 7)
    assert RootChanged(k(90), 3) in events(actions)
    assert ParentChanged(1, (5, 7)) in events(actions)
    # Repeated to every peer, parent included, each with our entry for that port.
    out = dict(sent(actions))
    assert set(out) == {1, 2}
    for port, frame in out.items():
        assert isinstance(frame, TreeAnnouncement)
        assert frame.announcement.keys == (k(90), k(60), US)
        assert frame.announcement.coords == (5, 7, port)


def test_bad_announcements_drop_the_peer() -> None:
    s = engine()
    s.on_input(PeerUp(1, k(60)), 0.0)
    actions = s.on_input(FrameIn(1, root_ann(90, 3, [(5, 90), (7, 61)])), 1.0)
    assert actions == [DropPeer(1, "last signer is not the peer")]
    assert s.parent_port is None


def test_real_signatures_are_checked() -> None:
    us, root = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    s = RouterState(bytes(us.public_key), Ed25519Signer(us))
    rk = bytes(root.public_key)
    s.on_input(PeerUp(1, rk), 0.0)
    ann = Announcement.new(rk, 1)
    good = ann.extend(3, rk, root.sign(ann.body))
    forged = ann.extend(3, rk, root.sign(ann.body + b"x"))
    if rk > bytes(us.public_key):
        s.on_input(FrameIn(1, TreeAnnouncement(good)), 1.0)
        assert s.parent_port == 1
    else:
        assert not any(
            isinstance(a, DropPeer) for a in s.on_input(FrameIn(1, TreeAnnouncement(good)), 1.0)
        )
    actions = s.on_input(FrameIn(1, TreeAnnouncement(forged)), 2.0)
    assert actions == [DropPeer(1, "bad announcement signature")]


def test_bad_news_from_the_parent_holds_down_for_a_second() -> None:
    s = engine()
    s.on_input(PeerUp(1, k(60)), 0.0)
    s.on_input(PeerUp(2, k(70)), 0.0)
    s.on_input(FrameIn(1, root_ann(90, 3, [(5, 90), (7, 60)])), 1.0)
    s.on_input(FrameIn(2, root_ann(90, 3, [(5, 90), (8, 70)])), 1.1)
    assert s.parent_port == 1
    # The parent repeats the same root and sequence: it moved. We become root (a new
    # sequence, announced to all) and ignore announcements for 1 s.
    actions = s.on_input(FrameIn(1, root_ann(90, 3, [(6, 90), (7, 60)])), 2.0)
    assert s.parent_port is None and s.root == (US, 1) and s.waiting
    assert {p for p, _ in sent(actions)} == {1, 2}
    assert s.next_deadline() <= 3.0
    assert s.on_input(FrameIn(2, root_ann(90, 4, [(5, 90), (8, 70)])), 2.5) == []
    # After the hold-down, parent selection picks the best stored announcement.
    actions = []
    while s.waiting:
        assert s.next_deadline() <= 3.0
        actions += s.on_timer(s.next_deadline())
    assert not s.waiting and s.parent_port == 2 and s.root == (k(90), 4)
    assert {p for p, _ in sent(actions)} == {1, 2}


def test_parent_loss_reselects_without_hold_down_and_last_peer_resets() -> None:
    s = engine()
    s.on_input(PeerUp(1, k(60)), 0.0)
    s.on_input(PeerUp(2, k(70)), 0.0)
    s.on_input(FrameIn(1, root_ann(90, 3, [(5, 90), (7, 60)])), 1.0)
    s.on_input(FrameIn(2, root_ann(90, 3, [(5, 90), (8, 70)])), 1.1)
    actions = s.on_input(PeerDown(1), 2.0)
    assert PeerRemoved(1, k(60)) in events(actions)
    assert s.parent_port == 2 and s.coords == (5, 8) and not s.waiting
    seq_before = s.root
    s.on_input(PeerDown(2), 3.0)
    assert s.parent_port is None and s.root[0] == US and s.root[1] > 0
    assert s.peers() == [] and s.snake_table_size() == 0 and seq_before != s.root


def test_root_sequence_is_monotonic_and_refreshes() -> None:
    s = engine(announcement_interval=10.0)
    s.on_input(PeerUp(1, k(40)), 0.0)
    seqs = []
    t = 0.0
    while t < 35:
        t = s.next_deadline()
        for port, frame in sent(s.on_timer(t)):
            assert port == 1
            if isinstance(frame, TreeAnnouncement):
                seqs.append(frame.announcement.root_seq)
    assert seqs == [1, 2, 3]


def _with_parent() -> RouterState:
    s = engine()
    s.on_input(PeerUp(1, k(90)), 0.0)
    s.on_input(PeerUp(2, k(20)), 0.0)
    s.on_input(FrameIn(1, root_ann(90, 1, [(3, 90)])), 0.5)
    return s


def _bootstrap(origin: int, seq: int, root: int = 90, rseq: int = 1) -> Bootstrap:
    return Bootstrap(k(origin), FULL_MASK, 0, seq, k(root), rseq, SIG)


def test_bootstraps_install_paths_and_the_descending_neighbour() -> None:
    s = _with_parent()
    # 20's bootstrap arrives from port 2 and dead-ends here (nothing between 20 and 50).
    actions = s.on_input(FrameIn(2, _bootstrap(20, 100)), 1.0)
    assert sent(actions) == []
    assert DescendingChanged(k(20)) in events(actions)
    assert s.descending_key == k(20) and s.snake_table_size() == 1
    # Same path again with an old sequence: a replay, dropped.
    s.on_input(FrameIn(2, _bootstrap(20, 100)), 1.5)
    assert s.statistics().dropped["replay"] == 1
    # Another root sequence: dropped.
    s.on_input(FrameIn(2, _bootstrap(20, 101, rseq=2)), 1.6)
    assert s.statistics().dropped["wrong_root"] == 1
    # 60's bootstrap from port 1 goes towards the root (nothing known above 60 but it).
    s.on_input(PeerUp(3, k(10)), 1.7)
    actions = s.on_input(FrameIn(3, _bootstrap(60, 5)), 1.8)
    assert [(p, type(f)) for p, f in sent(actions)] == [(1, Bootstrap)]
    # Expiry: 10 s later the descending neighbour is cleared, and after the 1 s path
    # grace both entries are gone.
    actions = []
    while s.next_deadline() <= 11.5:
        actions += s.on_timer(s.next_deadline())
    assert s.descending_key is None and s.snake_table_size() == 2
    while s.next_deadline() <= 13.5:
        actions += s.on_timer(s.next_deadline())
    assert s.descending_key is None and s.snake_table_size() == 0
    assert DescendingChanged(None) in events(actions)


def test_our_bootstraps_are_periodic_signed_and_monotonic() -> None:
    me, root = sorted(
        (Identity.from_seed(bytes([i]) * 32) for i in (3, 4)), key=lambda i: i.public_key
    )
    key, rk = bytes(me.public_key), bytes(root.public_key)
    s = RouterState(key, Ed25519Signer(me), config=RouterConfig(wall_clock_offset=1e9))
    s.on_input(PeerUp(1, rk), 0.0)
    ann = Announcement.new(rk, 1)
    ann = ann.extend(1, rk, root.sign(ann.body))
    s.on_input(FrameIn(1, TreeAnnouncement(ann)), 0.0)
    assert s.parent_port == 1
    boots: list[tuple[float, Bootstrap]] = []
    t = 0.0
    assert s.next_deadline() == 0.0  # a new parent: bootstrap at once
    while t < 20:
        t = s.next_deadline()
        boots += [(t, f) for _, f in sent(s.on_timer(t)) if isinstance(f, Bootstrap)]
    times = [t for t, _ in boots]
    assert times == [0.0, 5.0, 10.0, 15.0, 20.0]  # at once after the parent, then every 5 s
    seqs = [b.sequence for _, b in boots]
    assert seqs == sorted(set(seqs)) and seqs[0] == int((0.0 + 1e9) * 1000)
    for _, b in boots:
        assert b.destination_key == key
        msg = bootstrap_signed_bytes(b.sequence, b.root_key, b.root_seq)
        assert me.public_key.verify(msg, b.signature)


def test_traffic_is_delivered_only_on_an_exact_key_match() -> None:
    s = _with_parent()
    src = k(20)
    mine = Traffic((), (3, 9), US, src, FULL_MASK, 0, b"hi", 250)
    actions = s.on_input(FrameIn(2, mine), 1.0)
    assert actions == [DeliverLocal(src, b"hi", DeliveryMode.EXACT, US, 5)]
    assert s.coords_cache_size() == 1  # source coordinates cached for the reply
    # A key between us and the next known key is not ours: upstream would deliver it
    # here (§8.4); we drop it.
    other = Traffic((), (), k(45), src, FULL_MASK, 0, b"hi", 250)
    assert s.on_input(FrameIn(1, other), 1.0) == []
    assert s.statistics().dropped["no_route"] == 1
    # Our coordinates but another key (stale coordinates): falls back to the snake,
    # towards the root here, never delivered locally.
    stale = Traffic((3,), (), k(70), src, FULL_MASK, 0, b"hi", 250)
    assert [(p, f.destination_coords) for p, f in sent(s.on_input(FrameIn(2, stale), 1.0))] == [  # type: ignore[union-attr]
        (1, ())
    ]


def test_replies_use_cached_coordinates() -> None:
    s = _with_parent()
    # 20 is our child: its announcement runs through us, so its coordinates are (3, 9).
    s.on_input(FrameIn(2, root_ann(90, 1, [(3, 90), (9, 50), (4, 20)])), 0.7)
    s.on_input(FrameIn(2, Traffic((), (3, 9), US, k(20), FULL_MASK, 0, b"q", 255)), 1.0)
    ((port, frame),) = sent(s.on_input(LocalSend(k(20), b"a"), 2.0))
    assert isinstance(frame, Traffic) and frame.destination_coords == (3, 9)
    assert frame.source_coords == (3,) and frame.hop_limit == 254
    # Coordinates expire after 60 s: then the reply is snake-routed.
    ((port, frame),) = sent(s.on_input(LocalSend(k(20), b"a"), 70.0))
    assert isinstance(frame, Traffic) and frame.destination_coords == ()
    assert port == 2  # the snake knows 20 as a direct peer


def test_closest_traffic_and_sending_to_ourselves() -> None:
    s = _with_parent()
    assert s.on_input(LocalSend(US, b"me"), 1.0) == [
        DeliverLocal(US, b"me", DeliveryMode.EXACT, US, 0)
    ]
    # 45 is closest to us (nothing known in (45, 50)): we answer it ourselves.
    assert s.on_input(LocalSendClosest(k(45), b"t"), 1.0) == [
        DeliverLocal(US, b"t", DeliveryMode.CLOSEST, k(45), 0)
    ]
    # 15 belongs to the peer 20; 95 is above every key: the root (90) answers.
    assert [p for p, _ in sent(s.on_input(LocalSendClosest(k(15), b"t"), 1.0))] == [2]
    assert [p for p, _ in sent(s.on_input(LocalSendClosest(k(95), b"t"), 1.0))] == [1]
    assert s.next_hop_closest(k(95)) == 1 and s.next_hop_exact(k(20)) == 2
    assert s.next_hop_exact(k(45)) is None and s.next_hop_coords(()) == 1


def test_hop_limit_is_enforced() -> None:
    s = _with_parent()
    f = Traffic((), (), k(20), k(90), FULL_MASK, 0, b"x", 0)
    assert s.on_input(FrameIn(1, f), 1.0) == []
    assert s.statistics().dropped["hop_limit"] == 1


def test_next_deadline_is_finite_and_on_timer_is_idempotent() -> None:
    s = engine()
    d = s.next_deadline()
    assert 0 < d < math.inf
    assert s.on_timer(d / 2) == []


def test_late_timers_fire_once_and_reschedule_ahead() -> None:
    s = engine(announcement_interval=10.0)
    s.on_input(PeerUp(1, k(40)), 0.0)
    first = sent(s.on_timer(1000.0))
    assert [f.announcement.root_seq for _, f in first if isinstance(f, TreeAnnouncement)] == [1]
    assert s.next_deadline() > 1000.0
    assert s.on_timer(1000.0) == []


def test_losing_the_parent_emits_one_root_change() -> None:
    s = engine()
    s.on_input(PeerUp(1, k(60)), 0.0)
    s.on_input(PeerUp(2, k(70)), 0.0)
    s.on_input(FrameIn(1, root_ann(90, 3, [(5, 90), (7, 60)])), 1.0)
    s.on_input(FrameIn(2, root_ann(90, 3, [(5, 90), (8, 70)])), 1.1)
    evs = events(s.on_input(PeerDown(1), 2.0))
    assert [e for e in evs if isinstance(e, RootChanged)] == []  # same root via port 2
    assert ParentChanged(2, (5, 8)) in evs


def test_reply_is_not_repeated_when_the_peer_already_has_our_announcement() -> None:
    s = engine()
    s.on_input(PeerUp(1, k(90)), 0.0)
    s.on_input(PeerUp(2, k(40)), 0.0)
    s.on_input(FrameIn(1, root_ann(90, 1, [(3, 90)])), 0.5)
    # The weaker peer keeps announcing itself as root: we answer once per change of
    # our announcement, not once per message (a repeat would look like "moved" to it).
    s.on_input(FrameIn(2, root_ann(40, 1, [(1, 40)])), 1.0)  # first: no reply (PR #72)
    assert sent(s.on_input(FrameIn(2, root_ann(40, 2, [(1, 40)])), 1.1)) == []
    s.on_input(FrameIn(1, root_ann(90, 2, [(3, 90)])), 1.2)  # our announcement changes
    assert sent(s.on_input(FrameIn(2, root_ann(40, 3, [(1, 40)])), 1.3)) == []  # sent at 1.2
    s2 = engine()
    s2.on_input(PeerUp(2, k(40)), 0.0)
    s2.on_input(FrameIn(2, root_ann(40, 1, [(1, 40)])), 1.0)
    s2.on_input(PeerUp(1, k(90)), 1.0)
    s2.on_input(FrameIn(1, root_ann(90, 1, [(3, 90)])), 1.0)  # adopt: sent to 2 as well
    assert sent(s2.on_input(FrameIn(2, root_ann(40, 2, [(1, 40)])), 2.0)) == []


def test_tree_routed_traffic_to_a_direct_peer_takes_the_link() -> None:
    s = _with_parent()
    f = Traffic((3, 7, 7), (), k(20), k(90), FULL_MASK, 0, b"x", 9)
    assert sent(s.on_input(FrameIn(1, f), 1.0)) == [
        (2, Traffic((3, 7, 7), (), k(20), k(90), FULL_MASK, 0, b"x", 8))
    ]
    # Never back where it came from, though: then the tree (or snake) decides.
    assert [p for p, _ in sent(s.on_input(FrameIn(2, f), 1.0))] != [2]


@pytest.mark.parametrize(("tolerance", "accepted"), [(0, False), (1, True)])
def test_root_sequence_tolerance_for_bootstraps(tolerance: int, accepted: bool) -> None:
    s = RouterState(US, NullSigner(US), config=RouterConfig(root_seq_tolerance=tolerance))
    s.on_input(PeerUp(1, k(90)), 0.0)
    s.on_input(PeerUp(2, k(20)), 0.0)
    s.on_input(FrameIn(1, root_ann(90, 2, [(3, 90)])), 0.5)
    # 20 has not heard of the root's new sequence yet.
    s.on_input(FrameIn(2, _bootstrap(20, 100, rseq=1)), 1.0)
    assert (s.descending_key == k(20)) is accepted
    assert ("wrong_root" in s.statistics().dropped) is not accepted


def test_oversized_source_coordinates_are_dropped_counted_and_never_cached() -> None:
    s = _with_parent()
    src = k(20)
    # One port more than the deepest tree allows (every port below 128 is one byte).
    longest = (5,) * (MAX_COORDS_WIRE_SIZE - 2)
    too_long = (5,) * (MAX_COORDS_WIRE_SIZE - 1)
    wide = (200,) * ((MAX_COORDS_WIRE_SIZE - 2) // 2 + 1)  # two-byte ports: too long too
    for coords in (too_long, wide):
        exact = Traffic((), coords, US, src, FULL_MASK, 0, b"hi", 250)
        assert s.on_input(FrameIn(2, exact), 1.0) == []
        closest = ClosestTraffic(coords, US, src, FULL_MASK, 0, b"hi", 250)
        assert s.on_input(FrameIn(2, closest), 1.0) == []
    assert s.statistics().dropped["oversized_coords"] == 4
    assert s.coords_cache_size() == 0
    assert s.statistics().delivered == 0
    # The longest legal coordinates are still cached (and the frame delivered).
    ok = Traffic((), longest, US, src, FULL_MASK, 0, b"hi", 250)
    assert s.on_input(FrameIn(2, ok), 1.0) == [DeliverLocal(src, b"hi", DeliveryMode.EXACT, US, 5)]
    assert s.coords_cache_size() == 1
