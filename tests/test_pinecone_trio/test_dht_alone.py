"""A lookup on a node that stays alone (a user ran the DHT demo on one machine before any
peer was up, and waited the whole `LOOKUP_TIMEOUT`, 10 s, for the node's own records).

A parked lookup answers from the node's own store after `LOOKUP_JOIN_WAIT`; a peer that
arrives within it still gets the lookup. On the engine with explicit `now`, then on a
real node and DHT in virtual time.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from pinecone_trio import Identity
from pinecone_trio.dht import DhtEngine, PeerRecord, open_dht, topic_id, wire
from pinecone_trio.dht.constants import (
    ANNOUNCE_JOIN_WAIT,
    LOOKUP_JOIN_WAIT,
    LOOKUP_TIMEOUT,
    REQUEST_TIMEOUT,
)
from pinecone_trio.dht.engine import Action, LookupDone, SendClosest, SendExact
from pinecone_trio.node import open_node

T = topic_id("demo/chat")
OTHER = b"\x01" * 32


def _deliver_to_self(engine: DhtEngine, actions: Sequence[Action], now: float) -> None:
    """What the overlay does for a node alone: everything it sends comes back to it."""
    queue = list(actions)
    while queue:
        action = queue.pop(0)
        if isinstance(action, SendClosest):
            queue += engine.on_message(engine.public_key, action.payload, action.target, now)
        elif isinstance(action, SendExact):
            queue += engine.on_message(engine.public_key, action.payload, None, now)


def _alone_with_own_record() -> DhtEngine:
    engine = DhtEngine(Identity.from_seed(b"a" * 32))
    engine.set_neighbours(None, None)
    assert engine.start_announce(T, b"mine", 0.0) == []  # held
    _deliver_to_self(engine, engine.on_timer(ANNOUNCE_JOIN_WAIT), ANNOUNCE_JOIN_WAIT)
    assert [s.record.data for s in engine.store.get(T, ANNOUNCE_JOIN_WAIT)] == [b"mine"]
    return engine


def test_a_lone_lookup_answers_from_its_own_store_after_the_join_wait() -> None:
    engine = _alone_with_own_record()
    rid, actions = engine.lookup(T, 4.0)  # the default timeout, LOOKUP_TIMEOUT
    assert actions == []  # parked
    assert engine.next_deadline() == 4.0 + LOOKUP_JOIN_WAIT < 4.0 + LOOKUP_TIMEOUT
    assert engine.on_timer(4.0 + LOOKUP_JOIN_WAIT - 0.1) == []
    [done] = engine.on_timer(4.0 + LOOKUP_JOIN_WAIT)
    assert isinstance(done, LookupDone) and done.request_id == rid
    assert [(r.public_key, r.data) for r in done.records] == [(engine.public_key, b"mine")]
    assert engine.pending() == 0


def test_a_peer_arriving_within_the_join_wait_still_gets_the_lookup() -> None:
    engine = _alone_with_own_record()
    rid, _ = engine.lookup(T, 4.0)
    engine.set_neighbours(OTHER, None)  # joined just before the wait ends
    out = engine.on_timer(4.0 + LOOKUP_JOIN_WAIT - 0.1)
    sent = [wire.decode(a.payload) for a in out if isinstance(a, SendClosest)]
    assert [m for m in sent if isinstance(m, wire.Lookup)] == [wire.Lookup(rid, T)]
    assert not any(isinstance(a, LookupDone) for a in out)
    # Sent, it is an ordinary lookup: no answer from our store at the old wait's end.
    assert not any(isinstance(a, LookupDone) for a in engine.on_timer(4.0 + LOOKUP_JOIN_WAIT))


def test_a_lone_lookup_with_a_shorter_timeout_answers_at_its_timeout() -> None:
    engine = _alone_with_own_record()
    engine.lookup(T, 4.0, timeout=1.0)
    assert engine.next_deadline() == 5.0
    [done] = engine.on_timer(5.0)
    assert isinstance(done, LookupDone) and len(done.records) == 1


def test_a_lookup_started_beside_a_lone_announce_finds_it() -> None:
    # The announce round is held ANNOUNCE_JOIN_WAIT, then stored by ourselves; the lookup
    # waits one request timeout longer, so it sees the record.
    assert LOOKUP_JOIN_WAIT == ANNOUNCE_JOIN_WAIT + REQUEST_TIMEOUT
    engine = DhtEngine(Identity.from_seed(b"b" * 32))
    engine.set_neighbours(None, None)
    engine.start_announce(T, b"mine", 0.0)
    engine.lookup(T, 0.0)
    done: list[LookupDone] = []
    now = 0.0
    while not done:
        now = engine.next_deadline()
        out = engine.on_timer(now)
        done += [a for a in out if isinstance(a, LookupDone)]
        _deliver_to_self(engine, [a for a in out if not isinstance(a, LookupDone)], now)
    assert now == LOOKUP_JOIN_WAIT
    assert [r.data for r in done[0].records] == [b"mine"]


async def test_a_lone_node_finds_its_own_announcement_well_before_the_lookup_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A real node and DHT with no peer, in virtual time: the announce block is entered
    # after ANNOUNCE_JOIN_WAIT (its own acknowledgement), and the lookup, which took
    # LOOKUP_TIMEOUT (10 s) before, answers after LOOKUP_JOIN_WAIT.
    async with open_node(Identity.generate(), listen="memory://") as node, open_dht(node) as dht:
        start = trio.current_time()
        async with dht.announce("demo/chat", b"v1") as ann:
            assert ann.acknowledged
            assert trio.current_time() - start == ANNOUNCE_JOIN_WAIT
            assert not dht.engine.joined
            start = trio.current_time()
            found = await dht.lookup("demo/chat")
            took = trio.current_time() - start
        assert [(r.public_key, r.data) for r in found] == [(node.public_key, b"v1")]
        assert took <= LOOKUP_JOIN_WAIT < LOOKUP_TIMEOUT / 2
        # Started together on the lone node, the lookup still finds the announcement.
        records: list[PeerRecord] = []
        looked = trio.Event()
        async with trio.open_nursery() as nursery:

            async def look() -> None:
                records.extend(await dht.lookup("demo/again"))
                looked.set()

            start = trio.current_time()
            nursery.start_soon(look)
            async with dht.announce("demo/again", b"v2"):
                await looked.wait()
        assert [r.data for r in records] == [b"v2"]
        assert trio.current_time() - start <= LOOKUP_JOIN_WAIT


def test_a_join_when_the_lookup_is_due_answers_from_our_store() -> None:
    """Found by a second reader: a lookup whose wait ends at its deadline (a timeout no
    longer than `LOOKUP_JOIN_WAIT`), with the node joining at that instant, was sent
    (wasted) and finished empty in the same timer; it answers from our store instead."""
    engine = _alone_with_own_record()
    rid, _ = engine.lookup(T, 4.0, timeout=1.0)
    engine.set_neighbours(OTHER, None)
    out = engine.on_timer(5.0)
    [done] = [a for a in out if isinstance(a, LookupDone)]
    assert done.request_id == rid
    assert [r.data for r in done.records] == [b"mine"]
    lookups = [
        a
        for a in out
        if isinstance(a, SendClosest) and isinstance(wire.decode(a.payload), wire.Lookup)
    ]
    assert lookups == []
