"""Decision tables: announcements (§5.3), parent choice (§5.4), next hops (§6, §7.5)."""

from __future__ import annotations

import pytest

from pinecone_trio.router.actions import PeerType
from pinecone_trio.router.forward import LOCAL, KeyIndex, snake_next_hop, tree_next_hop
from pinecone_trio.router.signer import NullSigner
from pinecone_trio.router.snake import SnakeEntry, SnakeTable, worse
from pinecone_trio.router.tree import (
    AnnouncementAction,
    Peer,
    check_announcement,
    decide_announcement,
    select_parent,
)
from pinecone_trio.router.wire import FULL_MASK, Announcement

A = AnnouncementAction
SIG = bytes(64)


def k(n: int) -> bytes:
    """A key whose order is the order of n."""
    return n.to_bytes(2, "big") + bytes(30)


# --- §5.3 decision table -------------------------------------------------------------------

OURS = k(50)


@pytest.mark.parametrize(
    ("from_parent", "contains_us", "root", "seq", "first", "expected"),
    [
        # from the parent
        (True, True, 90, 5, False, A.REPARENT_WAIT),  # loop: we are in its path
        (True, False, 40, 5, False, A.REPARENT_WAIT),  # weaker root
        (True, False, 80, 5, False, A.REPARENT_WAIT),  # same root and sequence: moved
        (True, False, 80, 4, False, A.REPARENT_WAIT),  # same root, older sequence
        (True, False, 90, 1, False, A.ACCEPT),  # stronger root
        (True, False, 80, 6, False, A.ACCEPT),  # same root, newer sequence
        # from another peer
        (False, True, 90, 9, False, A.IGNORE),  # a descendant
        (False, False, 90, 1, False, A.ADOPT),  # stronger root: adopt it
        (False, False, 40, 1, False, A.REPLY),  # weaker root: tell it ours
        (False, False, 40, 1, True, A.NONE),  # ... unless it is its first (PR #72)
        (False, False, 80, 5, False, A.SELECT_PARENT),  # same root key
        (False, False, 80, 9, False, A.SELECT_PARENT),
        (False, False, 80, 1, True, A.SELECT_PARENT),
    ],
)
def test_announcement_decision_table(
    from_parent: bool, contains_us: bool, root: int, seq: int, first: bool, expected: A
) -> None:
    got = decide_announcement(
        from_parent=from_parent,
        contains_us=contains_us,
        new_root_key=k(root),
        new_root_seq=seq,
        our_root_key=k(80),
        our_root_seq=5,
        first_from_peer=first,
    )
    assert got is expected


def _ann(root: int, seq: int, path: list[int], ports: list[int] | None = None) -> Announcement:
    ann = Announcement.new(k(root), seq)
    for i, key in enumerate(path):
        ann = ann.extend(ports[i] if ports else i + 1, k(key), SIG)
    return ann


def test_announcement_sanity_rules() -> None:
    s = NullSigner(OURS)
    assert check_announcement(_ann(90, 1, [90, 70]), k(70), s) is None
    assert check_announcement(Announcement.new(k(90), 1), k(90), s) == (
        "announcement without signatures"
    )
    assert check_announcement(_ann(90, 1, [91, 70]), k(70), s) == "first signer is not the root"
    assert check_announcement(_ann(90, 1, [90, 70]), k(71), s) == "last signer is not the peer"
    assert check_announcement(_ann(90, 1, [90, 60, 90, 70]), k(70), s) == (
        "announcement repeats a key"
    )
    assert check_announcement(_ann(90, 1, [90, 70], [1, 0]), k(70), s) == (
        "hop port 0 in announcement"
    )


# --- §5.4 parent selection -------------------------------------------------------------------


def _peer(
    port: int,
    root: int,
    seq: int,
    order: int,
    ptype: PeerType = PeerType.REMOTE,
    *,
    contains_us: bool = False,
    at: float = 0.0,
    depth: int = 1,
) -> Peer:
    p = Peer(port, k(100 + port), ptype, "")
    p.ann = _ann(root, seq, [root, *range(200, 200 + depth - 1), 100 + port])
    p.coords = p.ann.coords[:-1]
    p.ann_order = order
    p.ann_time = at
    p.contains_us = contains_us
    return p


def _select(peers: list[Peer], root: int = 50, seq: int = 0, now: float = 10.0) -> int | None:
    best = select_parent(OURS, k(root), seq, peers, now, 2700.0)
    return None if best is None else best.port


@pytest.mark.parametrize(
    ("peers", "expected"),
    [
        # stronger root key beats everything else
        ([_peer(1, 80, 9, 1), _peer(2, 90, 1, 2)], 2),
        # same root key: higher sequence wins
        ([_peer(1, 90, 1, 1), _peer(2, 90, 2, 2)], 2),
        # same root and sequence: lower peer type first ...
        ([_peer(1, 90, 1, 1, PeerType.BLUETOOTH), _peer(2, 90, 1, 2, PeerType.PIPE)], 2),
        # ... then the shorter path to the root ...
        ([_peer(1, 90, 1, 1, depth=3), _peer(2, 90, 1, 2, depth=2)], 2),
        ([_peer(1, 90, 1, 1, PeerType.PIPE, depth=3), _peer(2, 90, 1, 2, depth=1)], 1),
        # ... then the earlier announcement (the lower-latency path to the root)
        ([_peer(1, 90, 1, 2), _peer(2, 90, 1, 1)], 2),
        ([_peer(2, 90, 1, 1), _peer(1, 90, 1, 2)], 2),  # input order does not matter
        # descendants and expired announcements are never parents
        ([_peer(1, 90, 1, 1, contains_us=True), _peer(2, 85, 1, 2)], 2),
        ([_peer(1, 90, 1, 1, at=-3000.0), _peer(2, 85, 1, 2)], 2),
        # weaker than ourselves: no parent
        ([_peer(1, 40, 1, 1), _peer(2, 45, 9, 2)], None),
        ([], None),
    ],
)
def test_parent_selection_table(peers: list[Peer], expected: int | None) -> None:
    assert _select(peers) == expected


def test_parent_selection_must_beat_the_current_root() -> None:
    peers = [_peer(1, 90, 3, 1), _peer(2, 90, 4, 2)]
    assert _select(peers, root=90, seq=4) == 2  # equal to current root: still eligible
    assert _select(peers, root=90, seq=5) is None  # all stale
    assert _select(peers, root=95, seq=0) is None  # we follow a stronger root already


# --- §6 tree next hop ---------------------------------------------------------------------


def _tree_peer(
    port: int, coords: tuple[int, ...], order: int, ptype: PeerType = PeerType.REMOTE, seq: int = 1
) -> Peer:
    p = Peer(port, k(100 + port), ptype, "")
    p.ann = _ann(90, seq, [90, *[60 + i for i in range(len(coords) - 1)], 100 + port])
    p.coords = coords
    p.ann_order = order
    return p


@pytest.mark.parametrize(
    ("ours", "dest", "from_port", "peers", "expected"),
    [
        ((1, 2), (1, 2), 0, [], LOCAL),
        # the parent is closer to a destination in another branch
        ((1, 2), (3,), 0, [_tree_peer(1, (1,), 1), _tree_peer(2, (1, 2, 5), 2)], 1),
        # a child is closer to a destination below it
        ((1, 2), (1, 2, 5, 1), 0, [_tree_peer(1, (1,), 1), _tree_peer(2, (1, 2, 5), 2)], 2),
        # never back to where it came from
        ((1, 2), (1, 2, 5, 1), 2, [_tree_peer(1, (1,), 1), _tree_peer(2, (1, 2, 5), 2)], None),
        # a peer under another root sequence is not used
        ((1, 2), (3,), 0, [_tree_peer(1, (1,), 1, seq=2)], None),
        # ties: lower peer type, then earlier announcement, then lower port
        (
            (1, 2),
            (3,),
            0,
            [_tree_peer(1, (1,), 1, PeerType.BLUETOOTH), _tree_peer(2, (1,), 2, PeerType.PIPE)],
            2,
        ),
        ((1, 2), (3,), 0, [_tree_peer(1, (1,), 2), _tree_peer(2, (1,), 1)], 2),
        ((1, 2), (3,), 0, [_tree_peer(3, (1,), 1), _tree_peer(2, (1,), 1)], 2),
        # no peer strictly closer: none
        ((1, 2), (1, 3), 0, [_tree_peer(1, (1, 2, 7), 1)], None),
    ],
)
def test_tree_next_hop_table(
    ours: tuple[int, ...],
    dest: tuple[int, ...],
    from_port: int,
    peers: list[Peer],
    expected: int | None,
) -> None:
    peers = sorted(peers, key=lambda p: p.port)
    assert tree_next_hop(ours, dest, from_port, peers, k(90), 1) == expected


# --- §7.5 snake next hop ------------------------------------------------------------------


def _snake_world() -> tuple[KeyIndex, SnakeTable]:
    """We are 50; root 90 via parent port 1 (ancestors 90, 70); peer 45 on port 2 and
    peer 55 on port 3; bootstrap paths from 52 (port 3) and 60 (port 2, old sequence)."""
    index = KeyIndex()
    for key, hops in ((90, 2), (70, 1), (80, 0)):
        index.add(k(key), 1, hops, 3)
    index.add(k(45), 2, 0, 3)
    index.add(k(55), 3, 0, 3)
    table = SnakeTable(100)
    table.put(SnakeEntry(k(52), 3, None, 5.0, k(90), 1, 1000))
    table.put(SnakeEntry(k(60), 2, None, 5.0, k(90), 1, 2000))
    table.put(SnakeEntry(k(30), 2, None, -20.0, k(90), 1, 3000))  # expired
    return index, table


@pytest.mark.parametrize(
    ("dest", "bootstrap", "wm", "expected"),
    [
        # exact matches win, from the tree index or the table
        (55, False, (None, 0), (3, 55, 0)),
        (52, False, (None, 0), (3, 52, 1000)),
        (50, False, (None, 0), (LOCAL, None, 0)),  # our own key: local, watermark kept
        # bootstraps never stop at their own key: our own bootstrap goes to 52
        (50, True, (None, 0), (3, 52, 1000)),
        # smallest key strictly above the destination, table or tree
        (51, False, (None, 0), (3, 52, 1000)),
        (53, False, (None, 0), (3, 55, 0)),
        # destination above us: head for the root, then anything closer below it
        (56, False, (None, 0), (2, 60, 2000)),
        (61, False, (None, 0), (1, 70, 0)),
        (85, False, (None, 0), (1, 90, 0)),
        # above the root: nothing is closer than ourselves
        (95, False, (None, 0), (LOCAL, 50, 0)),
        # below every key we know: the lowest known key above it (45)
        (10, False, (None, 0), (2, 45, 0)),
        # expired entries are ignored (30 is expired)
        (29, False, (None, 0), (2, 45, 0)),
        # watermark: an entry for the same key with an older sequence is skipped ...
        (56, False, (60, 2500), (1, 70, 0)),
        # ... and so is any table entry above the watermark key (52); tree candidates are
        # not filtered (upstream), the forwarding gate then drops the worse result
        (51, False, (51, 0), (3, 55, 0)),
    ],
)
def test_snake_next_hop_table(
    dest: int,
    bootstrap: bool,
    wm: tuple[int | None, int],
    expected: tuple[int | None, int | None, int],
) -> None:
    index, table = _snake_world()
    wm_key = FULL_MASK if wm[0] is None else k(wm[0])
    port, key, seq = snake_next_hop(
        k(dest),
        bootstrap,
        wm_key,
        wm[1],
        our_key=k(50),
        root_key=k(90),
        has_parent=True,
        index=index,
        table=table,
        valid_after=0.0,
    )
    exp_port, exp_key, exp_seq = expected
    assert port == exp_port
    assert key == (wm_key if exp_key is None else k(exp_key))
    assert seq == exp_seq


def test_snake_next_hop_at_the_root_dead_ends_bootstraps() -> None:
    index, table = KeyIndex(), SnakeTable(10)
    index.add(k(20), 4, 0, 3)
    common = {"our_key": k(90), "root_key": k(90), "has_parent": False, "valid_after": 0.0}
    assert snake_next_hop(k(90), True, FULL_MASK, 0, index=index, table=table, **common) == (  # type: ignore[arg-type]
        None,
        k(90),
        0,
    )
    assert snake_next_hop(k(10), False, FULL_MASK, 0, index=index, table=table, **common) == (  # type: ignore[arg-type]
        4,
        k(20),
        0,
    )


def test_tree_candidate_wins_ties_and_index_prefers_fewest_hops() -> None:
    index, table = KeyIndex(), SnakeTable(10)
    index.add(k(60), 5, 3, 3)  # ancestor of peer 5, three hops up
    index.add(k(60), 4, 1, 3)  # ancestor of peer 4, one hop up
    index.add(k(60), 6, 1, 0)  # same distance over a better link type
    table.put(SnakeEntry(k(60), 7, None, 5.0, k(90), 1, 99))
    port, key, seq = snake_next_hop(
        k(55),
        False,
        FULL_MASK,
        0,
        our_key=k(70),
        root_key=k(90),
        has_parent=True,
        index=index,
        table=table,
        valid_after=0.0,
    )
    assert (port, key, seq) == (6, k(60), 0)
    index.remove(k(60), 6)
    assert index.port_for(k(60)) == 4
    index.remove(k(60), 4)
    index.remove(k(60), 5)
    assert index.port_for(k(60)) is None and len(index) == 0


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((60, 0), (70, 0), False),  # lower key: better
        ((70, 0), (60, 0), True),  # higher key: worse
        ((60, 5), (60, 9), True),  # same key, older path: worse
        ((60, 9), (60, 5), False),
        ((60, 0), (60, 9), False),  # sequence 0 (tree candidates) never loses on sequence
        ((60, 5), (60, 5), False),
    ],
)
def test_watermark_worse_table(a: tuple[int, int], b: tuple[int, int], expected: bool) -> None:
    assert worse(k(a[0]), a[1], k(b[0]), b[1]) is expected


def test_snake_table_bounds_sweeps_and_ports() -> None:
    t = SnakeTable(3)
    for i, at in enumerate((1.0, 2.0, 3.0)):
        assert t.put(SnakeEntry(k(i), i + 1, 9, at, k(90), 1, 1))
    assert not t.put(SnakeEntry(k(10), 1, None, 4.0, k(90), 1, 1))  # full
    assert t.put(SnakeEntry(k(0), 1, None, 4.0, k(90), 1, 2))  # refresh is fine
    assert t.sweep(12.5, 10.0) == 1  # only k(1) (seen at 2.0) is older than 10 s
    assert [e.origin for e in t.entries()] == [k(0), k(2)]
    assert [e.origin for e in t.remove_port(9)] == [k(2)]  # k(2) was forwarded to port 9
    assert len(t) == 1 and k(0) in t


def test_snake_next_hop_never_leads_back_to_the_arrival_port() -> None:
    index, table = _snake_world()
    common = {
        "our_key": k(50),
        "root_key": k(90),
        "has_parent": True,
        "index": index,
        "table": table,
        "valid_after": 0.0,
    }
    # 52 is reached through port 3; arriving from port 3, the next best is 55 ... also
    # port 3, so 60 through port 2.
    assert snake_next_hop(k(51), False, FULL_MASK, 0, exclude=3, **common) == (  # type: ignore[arg-type]
        2,
        k(60),
        2000,
    )
    # Above us and arriving from the parent: no way up but back, so nothing better than us.
    assert snake_next_hop(k(85), False, FULL_MASK, 0, exclude=1, **common) == (  # type: ignore[arg-type]
        LOCAL,
        k(50),
        0,
    )


def test_snake_next_hop_without_a_parent_still_goes_up() -> None:
    index, table = KeyIndex(), SnakeTable(10)
    index.add(k(60), 2, 1, 3)
    common = {
        "our_key": k(50),
        "root_key": k(50),
        "has_parent": False,
        "index": index,
        "table": table,
        "valid_after": 0.0,
    }
    assert snake_next_hop(k(55), False, FULL_MASK, 0, **common) == (2, k(60), 0)  # type: ignore[arg-type]
    assert snake_next_hop(k(55), True, FULL_MASK, 0, **common) == (2, k(60), 0)  # type: ignore[arg-type]
    assert snake_next_hop(k(70), False, FULL_MASK, 0, **common) == (LOCAL, k(50), 0)  # type: ignore[arg-type]
    assert snake_next_hop(k(70), True, FULL_MASK, 0, **common) == (None, k(50), 0)  # type: ignore[arg-type]
