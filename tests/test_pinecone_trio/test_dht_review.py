"""Regression tests for DHT bugs a review found: sans-IO engine and store with explicit
times, the Trio shell in virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pinecone_trio.dht import open_dht, wire
from pinecone_trio.dht.constants import (
    HANDOFF_RATE,
    MAX_CLOCK_SKEW,
    MAX_HANDOFF_RECORDS,
    MAX_RECORD_TTL,
    SUCCESSOR_TTL,
    TOMBSTONE_TTL,
)
from pinecone_trio.dht.crypto import record_signable, topic_id
from pinecone_trio.dht.engine import Action, DhtEngine, LookupDone, SendExact
from pinecone_trio.dht.service import EXIT_GRACE
from pinecone_trio.dht.store import PutResult, RecordStore
from pinecone_trio.identity import Identity
from pinecone_trio.node import NodeConfig
from pinecone_trio.testing import open_network

#: The nodes serve the DHT themselves (the default: open_dht yields theirs), or not
#: (open_dht runs one of its own for the block).
SERVED = [None, NodeConfig(dht=False)]
SERVED_IDS = ["node-dht", "open-dht-only"]

#: A wall-clock time (seconds since the epoch) the tests' clocks start from.
WALL = 1_800_000_000.0


def _record(signer: Identity, topic: bytes, seq: int, ttl: int, data: bytes = b"") -> wire.Record:
    key = bytes(signer.public_key)
    signature = signer.sign(record_signable(topic, key, seq, ttl, data))
    return wire.Record(topic, key, seq, ttl, data, signature)


def _stores(actions: list[Action]) -> list[bytes]:
    """The keys every STORE in `actions` goes to."""
    return [
        a.key
        for a in actions
        if isinstance(a, SendExact) and isinstance(wire.decode(a.payload), wire.Store)
    ]


def test_forged_successor_claims_cannot_make_a_node_push_its_store_out_again_and_again() -> None:
    # Any key between ours and our successor's could claim to succeed us, and each new
    # one (3 bytes, from a fresh key the per-source limiter has never seen) made the
    # next tick hand every owed copy, up to 256 STOREs, to the forged key.
    me = Identity.from_seed(b"\x01" * 32)
    key = int.from_bytes(bytes(me.public_key), "big")
    engine = DhtEngine(me)
    engine.set_neighbours(bytes(32), b"\xff" * 32)
    announcer = Identity.from_seed(b"\x02" * 32)
    source = bytes(announcer.public_key)
    now = 0.0
    for i in range(30):
        topic = topic_id(f"topic {i}")
        record = _record(announcer, topic, 1, 150, b"x" * 100)
        engine.on_message(source, wire.encode(wire.Announce(i, record)), topic, now)
    engine.on_timer(now)
    claim = wire.encode(wire.Successor())
    sent, start = 0, now
    for n in range(30):  # ever lower forged keys, all above ours, within one second
        forged = (key + (1 << 200) * (100 - n)).to_bytes(32, "big")
        now += 0.03
        engine.on_message(forged, claim, None, now)
        assert engine.neighbours[1] == forged
        sent += len(_stores(engine.on_timer(now)))
    # It was 30 claims x 30 records = 900 STOREs in under a second.
    assert sent <= MAX_HANDOFF_RECORDS + HANDOFF_RATE * (now - start)
    # The budget is per node, refilled over time: an honest change later is served.
    now += SUCCESSOR_TTL
    new_descending = bytes(31) + b"\x01"
    engine.set_neighbours(new_descending, b"\xff" * 32)
    assert _stores(engine.on_timer(now)).count(new_descending) == 30


@pytest.mark.parametrize("config", SERVED, ids=SERVED_IDS)
async def test_leaving_open_dht_right_after_an_announce_block_still_withdraws(
    autojump_clock: trio.testing.MockClock, config: NodeConfig | None
) -> None:
    # `async with open_dht(node) as dht, dht.announce(t):` queued the withdrawal with
    # send_nowait, and the service nursery cancelled the sender before it ran: the
    # record of the node that left stayed findable for RECORD_TTL.
    async with open_network([("a", "b")], config=config) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        keys = sorted([a.public_key, b.public_key])

        def closest(t: str) -> bytes:
            return next((k for k in keys if k >= topic_id(t)), keys[-1])

        # b is the record's home: the withdrawal must travel from a to b.
        topic = next(t for t in (f"t{i}" for i in range(1000)) if closest(t) == b.public_key)
        async with open_dht(b) as dht_b:
            async with open_dht(a) as dht_a, dht_a.announce(topic, b"a") as ann:
                assert ann.acknowledged
                assert len(await dht_b.lookup(topic)) == 1
            await trio.sleep(1.0)
            stored = dht_b.engine.store.entry(topic_id(topic), bytes(a.public_key))
            assert stored is not None and stored.withdrawn
            assert await dht_b.lookup(topic) == []


@pytest.mark.parametrize("config", SERVED, ids=SERVED_IDS)
async def test_leaving_open_dht_while_cancelled_is_bounded_by_the_grace(
    autojump_clock: trio.testing.MockClock, config: NodeConfig | None
) -> None:
    async with open_network([("a", "b")], config=config) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        with trio.CancelScope() as scope:
            async with open_dht(net["a"]) as dht, dht.announce("t"):
                start = trio.current_time()
                scope.cancel()
                await trio.sleep(1)
        assert trio.current_time() - start <= EXIT_GRACE


@pytest.mark.parametrize("home_clock_offset", [0.0, -(MAX_CLOCK_SKEW - 1), MAX_CLOCK_SKEW - 1])
def test_a_withdrawn_record_is_never_stored_again_by_replay(home_clock_offset: float) -> None:
    # The tombstone lived MAX_RECORD_TTL (300 s) while a captured copy is refused only
    # once its signing time + lifetime + MAX_CLOCK_SKEW has passed: in between, a replay
    # of the withdrawn record was stored again.
    wall = [WALL]
    mono = [1000.0]
    home = DhtEngine(Identity.from_seed(b"h" * 32), wall_clock=lambda: wall[0] + home_clock_offset)
    alice = DhtEngine(Identity.from_seed(b"a" * 32), wall_clock=lambda: wall[0])
    topic = topic_id("chat")
    captured = alice.start_announce(topic, b"alice", mono[0])[0].payload
    home.on_message(alice.public_key, captured, topic, mono[0])
    wall[0] += 10
    mono[0] += 10
    withdrawal = alice.stop_announce(topic, mono[0])[0].payload
    home.on_message(alice.public_key, withdrawal, topic, mono[0])
    attacker = b"\x99" * 32
    for _ in range(2 * (TOMBSTONE_TTL + MAX_CLOCK_SKEW) // 10):
        wall[0] += 10
        mono[0] += 10
        home.on_message(attacker, captured, topic, mono[0])
        assert home.store.get(topic, mono[0]) == [], f"stored again {mono[0] - 1010} s later"


def test_a_tombstone_copy_carries_its_whole_lifetime() -> None:
    # Copies were capped at MAX_RECORD_TTL: a replica's tombstone died early.
    me, announcer, down = (Identity.from_seed(bytes([110 + i]) * 32) for i in range(3))
    topic = topic_id("t")
    engine = DhtEngine(me)
    engine.set_neighbours(bytes(down.public_key), None)
    withdrawal = _record(announcer, topic, 7, 0)
    out = engine.on_message(
        bytes(announcer.public_key), wire.encode(wire.Announce(1, withdrawal)), topic, 0.0
    )
    [copy] = [m for a in out if isinstance(m := wire.decode(a.payload), wire.Store)]
    assert copy.remaining_ttl == TOMBSTONE_TTL > MAX_RECORD_TTL


def test_a_record_signed_in_the_future_is_refused_stored_and_in_replies() -> None:
    # Only past signing times were judged: a record signed by a clock a day ahead
    # escaped `expired_at_origin` for that day and stayed replayable meanwhile.
    announcer = Identity.from_seed(b"f" * 32)
    topic = topic_id("t")
    ahead = _record(announcer, topic, int((WALL + MAX_CLOCK_SKEW + 5) * 1e6), 150)
    within = _record(announcer, topic, int((WALL + MAX_CLOCK_SKEW - 5) * 1e6), 150)
    store = RecordStore(wall_clock=lambda: WALL)
    assert store.put(ahead, 0.0) is PutResult.STALE
    assert store.put(within, 0.0) is PutResult.STORED
    engine = DhtEngine(Identity.from_seed(b"r" * 32), wall_clock=lambda: WALL)
    rid, _ = engine.lookup(topic, 0.0)
    reply = wire.LookupReply(rid, topic, ((ahead, 150),), (), True)
    [done] = engine.on_message(b"\x07" * 32, wire.encode_lookup_reply(reply), None, 0.5)
    assert isinstance(done, LookupDone) and done.records == ()
    assert engine.statistics.bad_reply_records == 1
