"""Descending handover and bootstraps "at once" (docs/router.md, deviation 21), by hand.

A node N joins between P and its successor S. N's bootstrap dead-ends at S and displaces
P there; S passes N's bootstrap on towards P along P's own bootstrap path (watermark =
P's key and that path's sequence), every hop learns a route to N, and P, having learnt a
closer successor than where its last bootstrap went, bootstraps again at once.
"""

from __future__ import annotations

from pinecone_trio.identity import FULL_MASK
from pinecone_trio.router.actions import (
    Action,
    DescendingChanged,
    Emit,
    FrameIn,
    PeerDown,
    PeerUp,
    SendFrame,
)
from pinecone_trio.router.signer import NullSigner
from pinecone_trio.router.state import RouterConfig, RouterState
from pinecone_trio.router.wire import Announcement, Bootstrap, Frame, TreeAnnouncement

SIG = bytes(64)
ROOT = 90


def k(n: int) -> bytes:
    return n.to_bytes(2, "big") + bytes(30)


def sent(actions: list[Action]) -> list[tuple[int, Frame]]:
    return [(a.port, a.frame) for a in actions if isinstance(a, SendFrame)]


def boot(origin: int, seq: int, wm: int | None = None, wm_seq: int = 0) -> Bootstrap:
    wk = FULL_MASK if wm is None else k(wm)
    return Bootstrap(k(origin), wk, wm_seq, seq, k(ROOT), 1, SIG)


def engine(me: int, peers: dict[int, int], **cfg: object) -> RouterState:
    """Node `me` with the root (90) on port 1 as its parent and other peers by port."""
    s = RouterState(k(me), NullSigner(k(me)), config=RouterConfig(**cfg), now=0.0)  # type: ignore[arg-type]
    s.on_input(PeerUp(1, k(ROOT)), 0.0)
    for port, key in peers.items():
        s.on_input(PeerUp(port, k(key)), 0.0)
    ann = Announcement.new(k(ROOT), 1).extend(7, k(ROOT), SIG)
    s.on_input(FrameIn(1, TreeAnnouncement(ann)), 0.0)
    assert s.parent_port == 1
    return s


def test_a_new_parent_means_a_bootstrap_at_once() -> None:
    s = engine(50, {})
    assert s.next_deadline() == 0.0
    assert [(p, type(f)) for p, f in sent(s.on_timer(0.0))] == [(1, Bootstrap)]


def test_the_dead_end_hands_a_displacing_bootstrap_to_the_old_descending() -> None:
    s = engine(50, {2: 10, 3: 11})
    s.on_timer(0.0)
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)  # 20 via port 2: our descending
    assert s.descending_key == k(20)
    # 30 joined: its bootstrap dead-ends here (nothing known between 30 and 50).
    actions = s.on_input(FrameIn(3, boot(30, 7)), 2.0)
    assert Emit(DescendingChanged(k(30))) in actions
    # ... and goes on to 20, along 20's path, watermark (20, 20's sequence).
    assert sent(actions) == [(2, boot(30, 7, wm=20, wm_seq=100))]
    # A refresh of the same descending neighbour displaces nobody: no handover.
    assert sent(s.on_input(FrameIn(3, boot(30, 8)), 3.0)) == []


def test_no_handover_when_the_old_descending_had_expired_or_when_disabled() -> None:
    s = engine(50, {2: 10, 3: 11})
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)
    assert sent(s.on_input(FrameIn(3, boot(30, 7)), 11.5)) == []  # 20's entry is stale
    off = engine(50, {2: 10, 3: 11}, descending_handover=False)
    off.on_input(FrameIn(2, boot(20, 100)), 1.0)
    assert sent(off.on_input(FrameIn(3, boot(30, 7)), 2.0)) == []


def test_a_relay_follows_the_targets_path_and_learns_the_origin() -> None:
    s = engine(60, {2: 10, 3: 70})
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)  # 20's bootstrap passed here from port 2
    actions = s.on_input(FrameIn(3, boot(30, 7, wm=20, wm_seq=100)), 2.0)
    assert sent(actions) == [(2, boot(30, 7, wm=20, wm_seq=100))]
    # It learnt 30 (back towards port 3); 30 is below us and closer than 20.
    assert [e.origin for e in s.snake_entries()] == [k(20), k(30)]
    assert s.next_hop_exact(k(30)) == 3
    assert s.descending_key == k(30)


def test_a_relay_never_follows_an_older_or_a_backward_path() -> None:
    s = engine(60, {2: 10, 3: 70})
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)
    # The previous hop had a newer path of 20 than ours: following ours could go round.
    assert sent(s.on_input(FrameIn(3, boot(30, 7, wm=20, wm_seq=101)), 2.0)) == []
    # Our path of 20 leads back where the handover came from.
    assert sent(s.on_input(FrameIn(2, boot(31, 7, wm=20, wm_seq=100)), 2.0)) == []
    # Nothing known of the target at all.
    assert sent(s.on_input(FrameIn(3, boot(32, 7, wm=25, wm_seq=1)), 2.0)) == []
    assert s.statistics().dropped["handover_no_route"] == 3


def test_a_relay_keeps_its_own_fresher_route_to_the_origin() -> None:
    s = engine(60, {2: 10, 3: 70, 4: 80})
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)
    s.on_input(FrameIn(4, boot(30, 7)), 1.5)  # 30's own bootstrap passed here from 4
    s.on_input(FrameIn(3, boot(30, 7, wm=20, wm_seq=100)), 2.0)
    assert s.next_hop_exact(k(30)) == 4


def test_the_target_learns_a_closer_successor_and_bootstraps_at_once() -> None:
    s = engine(20, {2: 40})
    first = sent(s.on_timer(0.0))
    assert [f.watermark_key for _, f in first] == [k(40)]  # type: ignore[union-attr]
    while s.next_deadline() <= 3.0:
        assert sent(s.on_timer(s.next_deadline())) == []
    # A handover for us arrives: 30 sits between us and 40.
    actions = s.on_input(FrameIn(2, boot(30, 7, wm=20, wm_seq=5)), 3.0)
    assert sent(actions) == []
    assert s.next_deadline() == 3.0
    again = sent(s.on_timer(3.0))
    assert len(again) == 1
    port, frame = again[0]
    assert isinstance(frame, Bootstrap) and port == 2
    assert frame.destination_key == k(20) and frame.watermark_key == k(30)


def test_bootstraps_at_once_are_rate_limited() -> None:
    s = engine(20, {})
    s.on_timer(0.0)  # first bootstrap, towards the root (90)
    times = []
    now = 0.01
    # A storm of new peers, each closer than the last: every one is a closer successor.
    for i, key in enumerate(range(80, 21, -1)):
        s.on_input(PeerUp(2 + i, k(key)), now)
        if s.next_deadline() <= now and sent(s.on_timer(now)):
            times.append(now)
        now += 0.01
        while s.next_deadline() <= now:
            t = s.next_deadline()
            if sent(s.on_timer(t)):
                times.append(t)
    assert len(times) >= 2
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    assert min(gaps) >= 0.25 - 1e-9


# --- path-break notice (deviation 24) ---------------------------------------------------


def test_a_lost_link_sends_the_paths_through_it_back_to_their_origins() -> None:
    for notice in (True, False):
        s = engine(60, {2: 10, 3: 30}, path_break_notice=notice)
        out = sent(s.on_input(FrameIn(2, boot(20, 100)), 1.0))
        assert [p for p, _ in out] == [3]  # on towards 30
        actions = s.on_input(PeerDown(3), 2.0)
        expected = [(2, boot(20, 100, wm=20, wm_seq=100))] if notice else []
        assert sent(actions) == expected


def test_a_relay_passes_a_notice_back_along_the_path_and_learns_nothing() -> None:
    s = engine(40, {2: 10, 3: 30})
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)
    assert sent(s.on_input(FrameIn(3, boot(20, 100, wm=20, wm_seq=100)), 2.0)) == [
        (2, boot(20, 100, wm=20, wm_seq=100))
    ]
    assert s.next_hop_exact(k(20)) == 2  # still towards 20, not back towards the break


def test_the_origin_bootstraps_again_on_a_notice_for_its_latest_bootstrap() -> None:
    s = engine(20, {2: 40})
    (_, first), *_ = sent(s.on_timer(0.0))
    assert isinstance(first, Bootstrap)
    while s.next_deadline() <= 2.0:
        s.on_timer(s.next_deadline())
    old = Bootstrap(k(20), k(20), 1, first.sequence - 1, k(ROOT), 1, SIG)
    s.on_input(FrameIn(2, old), 2.0)  # not our latest: ignored
    assert s.next_deadline() > 2.0 and s.statistics().dropped["own_bootstrap"] == 1
    notice = Bootstrap(k(20), k(20), first.sequence, first.sequence, k(ROOT), 1, SIG)
    s.on_input(FrameIn(2, notice), 2.0)
    assert s.next_deadline() == 2.0
    assert [type(f) for _, f in sent(s.on_timer(2.0))] == [Bootstrap]


def test_a_lost_link_tears_down_the_paths_that_came_in_through_it() -> None:
    s = engine(60, {2: 10, 3: 30})
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)  # 20's path: in on 2, on to 3
    # Port 2 (towards 20) goes: the nodes after us still point here; tear down ahead.
    assert sent(s.on_input(PeerDown(2), 2.0)) == [(3, boot(20, 100, wm=20, wm_seq=0))]


def test_a_teardown_removes_exactly_that_path_and_goes_on_along_it() -> None:
    s = engine(40, {2: 10, 3: 30, 4: 35})
    s.on_input(FrameIn(2, boot(20, 100)), 1.0)
    assert s.next_hop_exact(k(20)) == 2
    teardown = boot(20, 100, wm=20, wm_seq=0)
    assert sent(s.on_input(FrameIn(4, teardown), 2.0)) == []  # not from where it came
    assert sent(s.on_input(FrameIn(2, boot(20, 99, wm=20, wm_seq=0)), 2.0)) == []  # old
    assert s.statistics().dropped["stale_teardown"] == 2
    assert s.next_hop_exact(k(20)) == 2
    assert sent(s.on_input(FrameIn(2, teardown), 2.0)) == [(3, teardown)]
    assert s.snake_entries() == [] and s.descending_key is None
    assert s.next_hop_exact(k(20)) == 3  # now towards 30, the next key we know
