"""A DHT on a node that has joined no overlay yet (user report: across two machines, a
lookup right after start returned [] in 0.0 s, the node still alone being every topic's
home, and an announce at startup was acknowledged by the node itself and stayed there).

Lookups wait for the node to join (up to their timeout), the first announce round up to
`ANNOUNCE_JOIN_WAIT`, and joining sends the announcements due (damped for a node that
flaps: test_dht_join_damping.py). Checked on the engine
alone, on nodes over memory links in virtual time, and over real TCP on 127.0.0.1.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

import trio
import trio.testing

from pinecone_trio import Identity
from pinecone_trio.dht import DhtEngine, PeerRecord, open_dht, topic_id, wire
from pinecone_trio.dht.constants import ANNOUNCE_JOIN_WAIT, REQUEST_TIMEOUT
from pinecone_trio.dht.engine import Action, AnnounceDone, LookupDone, SendClosest, SendExact
from pinecone_trio.node import open_node
from pinecone_trio.testing import open_network

T = topic_id("demo/chat")
OTHER = b"\x01" * 32


def _sent(actions: Sequence[Action]) -> list[type]:
    return [type(wire.decode(a.payload)) for a in actions if isinstance(a, SendClosest)]


def test_a_lone_engine_parks_lookups_and_holds_announces_until_it_joins() -> None:
    engine = DhtEngine(Identity.from_seed(b"j" * 32))
    engine.set_neighbours(None, None)  # what the shell says of a node without peers
    assert not engine.joined
    assert engine.start_announce(T, b"me", 0.0) == []  # held, not sent to ourselves
    _rid, actions = engine.lookup(T, 0.0, timeout=10.0)
    assert actions == []  # parked
    assert engine.pending() == 2
    assert engine.next_deadline() == ANNOUNCE_JOIN_WAIT
    assert engine.on_timer(1.0) == []
    engine.set_neighbours(OTHER, None)  # the node joined
    assert engine.joined and engine.next_deadline() == -float("inf")
    out = engine.on_timer(1.5)
    assert sorted(t.__name__ for t in _sent(out)) == ["Announce", "Lookup"]
    assert engine.next_deadline() == 1.5 + REQUEST_TIMEOUT  # the retries run from here
    assert engine.next_deadline() > 1.5


def test_an_announce_alone_past_the_join_wait_goes_out_and_rejoining_sends_it_again() -> None:
    engine = DhtEngine(Identity.from_seed(b"k" * 32))
    engine.set_neighbours(None, None)
    assert engine.start_announce(T, b"", 0.0) == []
    out = engine.on_timer(ANNOUNCE_JOIN_WAIT)  # still alone: send it (to ourselves)
    [announce] = [a for a in out if isinstance(a, SendClosest)]
    request = wire.decode(announce.payload)
    assert isinstance(request, wire.Announce)
    # delivered to ourselves: we store and acknowledge our own record
    reply = engine.on_message(engine.public_key, announce.payload, T, ANNOUNCE_JOIN_WAIT)
    [ack] = [a for a in reply if isinstance(a, SendExact)]
    done = engine.on_message(engine.public_key, ack.payload, None, ANNOUNCE_JOIN_WAIT)
    assert done == [AnnounceDone(T, True)]
    assert engine.next_deadline() > 40  # the next refresh is about a minute away
    engine.set_neighbours(OTHER, None)  # joined: the record must reach the real home
    out = engine.on_timer(5.0)
    assert _sent(out) == [wire.Announce]
    # leaving and joining again sends it again too, not only the first join
    engine.on_message(OTHER, wire.encode(wire.AnnounceAck(_rid(out), wire.ACK_STORED)), None, 5.0)
    engine.set_neighbours(None, None)
    assert engine.on_timer(6.0) == []
    engine.set_neighbours(None, OTHER)
    assert _sent(engine.on_timer(7.0)) == [wire.Announce]


def _rid(actions: Sequence[Action]) -> int:
    [message] = [
        m
        for a in actions
        if isinstance(a, SendClosest) and isinstance(m := wire.decode(a.payload), wire.Announce)
    ]
    return message.request_id


def test_a_parked_lookup_still_alone_at_its_deadline_answers_from_its_own_store() -> None:
    engine = DhtEngine(Identity.from_seed(b"l" * 32))
    engine.set_neighbours(None, None)
    engine.start_announce(T, b"mine", 0.0)
    [announce] = engine.on_timer(ANNOUNCE_JOIN_WAIT)
    assert isinstance(announce, SendClosest)
    reply = engine.on_message(engine.public_key, announce.payload, T, ANNOUNCE_JOIN_WAIT)
    for ack in reply:  # our own acknowledgement, to ourselves
        assert isinstance(ack, SendExact)
        engine.on_message(engine.public_key, ack.payload, None, ANNOUNCE_JOIN_WAIT)
    rid, actions = engine.lookup(T, 4.0, timeout=2.0)
    assert actions == []
    assert engine.next_deadline() == 6.0
    [done] = [a for a in engine.on_timer(6.0) if isinstance(a, LookupDone)]
    assert done.request_id == rid
    assert [(r.public_key, r.data) for r in done.records] == [(engine.public_key, b"mine")]


def test_an_engine_never_told_its_neighbours_sends_at_once() -> None:
    # A caller that routes the engine's messages itself (tests) keeps the old behaviour.
    engine = DhtEngine(Identity.from_seed(b"m" * 32))
    assert engine.joined
    assert _sent(engine.start_announce(T, b"", 0.0)) == [wire.Announce]
    assert _sent(engine.lookup(topic_id("x"), 0.0)[1]) == [wire.Lookup]


def _line(n: int) -> tuple[list[Identity], str]:
    """`n` identities, sorted by key, and a topic homed at the second (ids[0] < it <=
    ids[1]): far below the highest key, whose announcements go down to it."""
    ids = sorted((Identity.generate() for _ in range(n)), key=lambda i: i.public_key)
    for i in range(100_000):
        topic = f"demo/{i}"
        if bytes(ids[0].public_key) < topic_id(topic) <= bytes(ids[1].public_key):
            return ids, topic
    raise AssertionError("no topic found")  # pragma: no cover


async def _announce_alone_then_join(wait_alone: float) -> None:
    # Five nodes in a line, converged, each with a DHT; a sixth, the highest key, starts
    # alone and announces a topic homed at the second lowest. Before the fix it stored
    # and acknowledged its own record, and after joining nobody found it until its
    # refresh a minute later (the hand-off pushed nothing: it owed no copies down).
    ids, topic = _line(6)
    names = [f"n{i}" for i in range(5)]
    edges = list(itertools.pairwise(names))
    async with (
        open_network(edges, identities=dict(zip(names, ids, strict=False))) as net,
        AsyncExitStack() as stack,
    ):
        with trio.fail_after(60):
            await net.wait_converged()
        dhts = {name: await stack.enter_async_context(open_dht(net[name])) for name in names}
        late = await stack.enter_async_context(open_node(ids[5], listen="memory://"))
        late_dht = await stack.enter_async_context(open_dht(late))
        acknowledged: list[bool] = []
        async with trio.open_nursery() as nursery:

            async def announce() -> None:
                async with late_dht.announce(topic, b"late") as ann:
                    acknowledged.append(ann.acknowledged)
                    await trio.sleep_forever()

            nursery.start_soon(announce)
            await trio.sleep(wait_alone)
            await late.connect(net["n4"].listen_uris[0])
            net.nodes["late"] = late
            with trio.fail_after(60):
                await net.wait_converged()
            await trio.sleep(1)
            found = await dhts["n2"].lookup(topic, timeout=5)
            assert [(r.public_key, r.data) for r in found] == [(late.public_key, b"late")]
            assert acknowledged == [True]
            nursery.cancel_scope.cancel()


async def test_an_announce_made_alone_reaches_the_home_when_the_node_joins_soon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await _announce_alone_then_join(wait_alone=1.0)  # joins while the round is held


async def test_an_announce_acknowledged_alone_is_sent_again_when_the_node_joins(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await _announce_alone_then_join(wait_alone=ANNOUNCE_JOIN_WAIT + 5)  # acked by itself


async def test_a_lookup_right_after_start_waits_for_the_first_peering() -> None:
    # Real TCP on 127.0.0.1, real time: the looker-up starts its lookup before it has
    # any peer (it returned [] at once: alone, it was the topic's home), then peers.
    async with (
        open_node(Identity.generate(), listen="tcp://127.0.0.1:0") as a,
        open_dht(a) as dht_a,
        dht_a.announce("demo/chat", b"v1") as ann,
    ):
        assert ann.acknowledged and not ann.placed  # alone for ANNOUNCE_JOIN_WAIT: its own ack
        async with (
            open_node(Identity.generate(), listen="tcp://127.0.0.1:0") as b,
            open_dht(b) as dht_b,
            trio.open_nursery() as nursery,
        ):
            found: list[PeerRecord] = []

            async def look() -> None:
                found.extend(await dht_b.lookup("demo/chat", timeout=10))

            start = time.monotonic()
            nursery.start_soon(look)
            await trio.sleep(0.5)
            assert not found  # still waiting: b has joined nothing yet
            await b.connect(a.listen_uris[0])
        assert [(r.public_key, r.data) for r in found] == [(a.public_key, b"v1")]
        assert time.monotonic() - start < 5
