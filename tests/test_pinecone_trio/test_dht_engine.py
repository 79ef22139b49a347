"""The DHT engine without Trio: a toy snake of engines delivering each other's actions.

`EngineNet` plays the overlay: closest-key messages go to the smallest key >= the target
(else the highest), exact-key messages to that key, each engine knows its true snake
neighbours, and time advances to the next deadline when nothing is in flight.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinecone_trio.dht import wire
from pinecone_trio.dht.constants import (
    ANNOUNCE_REFRESH_INTERVAL,
    MAX_PENDING,
    RECORD_TTL,
    REQUEST_RETRIES,
    REQUEST_TIMEOUT,
    SOURCE_BURST,
    SUCCESSOR_INTERVAL,
    SUCCESSOR_TTL,
)
from pinecone_trio.dht.crypto import record_signable, topic_id
from pinecone_trio.dht.engine import (
    Action,
    AnnounceDone,
    DhtEngine,
    LookupDone,
    PeerRecord,
    SendClosest,
    SendExact,
    SourceLimiter,
)
from pinecone_trio.errors import LocalProtocolError
from pinecone_trio.identity import Identity


class EngineNet:
    def __init__(self, n: int, seed: int = 1) -> None:
        rng = random.Random(seed)
        self.engines: dict[bytes, DhtEngine] = {}
        for _ in range(n):
            identity = Identity.from_seed(rng.randbytes(32))
            key = bytes(identity.public_key)
            self.engines[key] = DhtEngine(identity, rng=random.Random(rng.random()))
        self.now = 0.0
        self.inflight: deque[tuple[bytes, bytes, bytes | None, bytes]] = deque()
        self.silent: set[bytes] = set()  # on the snake, but swallows every message
        self.drop: Callable[[bytes, bytes, bytes], bool] = lambda source, dest, payload: False
        self.done: list[tuple[bytes, LookupDone | AnnounceDone]] = []
        self.messages = 0
        self.rewire()

    @property
    def keys(self) -> list[bytes]:
        return sorted(self.engines)

    def rewire(self) -> None:
        keys = self.keys
        for i, key in enumerate(keys):
            self.engines[key].set_neighbours(
                keys[i - 1] if i > 0 else None, keys[i + 1] if i + 1 < len(keys) else None
            )

    def closest(self, target: bytes) -> bytes:
        keys = self.keys
        i = bisect.bisect_left(keys, target)
        return keys[i] if i < len(keys) else keys[-1]

    def kill(self, key: bytes) -> None:
        del self.engines[key]
        self.rewire()

    def apply(self, source: bytes, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, SendExact):
                self.inflight.append((source, a.key, None, a.payload))
            elif isinstance(a, SendClosest):
                self.inflight.append((source, self.closest(a.target), a.target, a.payload))
            else:
                self.done.append((source, a))

    def settle(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if not self.inflight:
                return
            source, dest, target, payload = self.inflight.popleft()
            self.messages += 1
            engine = self.engines.get(dest)
            if self.drop(source, dest, payload):
                continue
            if engine is not None and dest not in self.silent:
                self.apply(dest, engine.on_message(source, payload, target, self.now))
        raise AssertionError("messages kept flowing")

    def advance(self, until: float) -> None:
        """Deliver everything, firing timers in order, until `until`."""
        for _ in range(100_000):
            self.settle()
            deadline = min((e.next_deadline() for e in self.engines.values()), default=math.inf)
            if deadline > until:
                self.now = until
                return
            self.now = max(self.now, deadline)
            for key, engine in list(self.engines.items()):
                if engine.next_deadline() <= self.now:
                    self.apply(key, engine.on_timer(self.now))
        raise AssertionError("timers kept firing")

    def lookup(self, key: bytes, topic: bytes) -> tuple[PeerRecord, ...]:
        rid, actions = self.engines[key].lookup(topic, self.now)
        self.apply(key, actions)
        for _ in range(1000):
            for i, (_, done) in enumerate(self.done):
                if isinstance(done, LookupDone) and done.request_id == rid:
                    del self.done[i]
                    return done.records
            self.advance(self.now + REQUEST_TIMEOUT / 2)
        raise AssertionError("lookup never finished")

    def announce(self, key: bytes, topic: bytes, data: bytes = b"") -> bool:
        self.apply(key, self.engines[key].start_announce(topic, data, self.now))
        for _ in range(1000):
            for i, (who, done) in enumerate(self.done):
                if isinstance(done, AnnounceDone) and who == key and done.topic == topic:
                    del self.done[i]
                    return done.acknowledged
            self.advance(self.now + REQUEST_TIMEOUT / 2)
        raise AssertionError("announce never finished")

    def holders(self, topic: bytes, key: bytes) -> list[bytes]:
        return [k for k, e in self.engines.items() if e.store.has(topic, key)]


T = topic_id("demo/chat")


def test_announce_is_stored_at_closest_and_replicated() -> None:
    net = EngineNet(12)
    announcer, looker = net.keys[0], net.keys[5]
    assert net.announce(announcer, T, b"hello")
    keys = net.keys
    owner = net.closest(T)
    i = keys.index(owner)
    up, down = 1, 2  # REPLICAS_ASCENDING, REPLICAS_DESCENDING; at an end, all one way
    if i == 0:
        up, down = 3, 0
    elif i == len(keys) - 1:
        up, down = 0, 3
    expected = {owner} | set(keys[max(0, i - down) : i]) | set(keys[i + 1 : i + 1 + up])
    assert set(net.holders(T, announcer)) == expected
    [record] = net.lookup(looker, T)
    assert record.public_key == announcer and record.data == b"hello"
    assert record.expires == pytest.approx(net.now + RECORD_TTL, abs=2)


def test_lookup_of_unknown_topic_is_empty_and_prompt() -> None:
    net = EngineNet(6)
    start = net.now
    assert net.lookup(net.keys[0], topic_id("nobody")) == ()
    assert net.now - start < REQUEST_TIMEOUT


def test_record_survives_the_closest_node_dying() -> None:
    net = EngineNet(15, seed=3)
    announcer = net.keys[0] if net.closest(T) != net.keys[0] else net.keys[1]
    assert net.announce(announcer, T)
    net.kill(net.closest(T))
    looker = next(k for k in net.keys if k != announcer)
    assert [r.public_key for r in net.lookup(looker, T)] == [announcer]


def test_lookup_reaches_neighbours_forwarded_or_directly() -> None:
    net = EngineNet(12, seed=11)
    keys = net.keys
    owner = net.closest(T)
    i = keys.index(owner)
    below = keys[i - 1]
    announcer = next(k for k in keys if k not in (owner, below))
    assert net.announce(announcer, T)
    # Only the descending neighbour of the closest node holds the record now (as after
    # a new node joined between the topic id and the old closest node).
    for key in keys:
        if key != below:
            net.engines[key].store = type(net.engines[key].store)()
    looker = next(k for k in keys if k not in (owner, below, announcer))
    start = net.now
    assert [r.public_key for r in net.lookup(looker, T)] == [announcer]
    assert net.now - start < REQUEST_TIMEOUT  # the closest node forwarded to `below`
    assert net.engines[looker].statistics.retries == 0

    # The forwarded lookups are lost: the requester asks the neighbours itself.
    def forwarded(source: bytes, dest: bytes, payload: bytes) -> bool:
        message = wire.decode(payload)
        return isinstance(message, wire.Lookup) and bool(message.reply_to)

    net.drop = forwarded
    start = net.now
    assert [r.public_key for r in net.lookup(looker, T)] == [announcer]
    assert REQUEST_TIMEOUT <= net.now - start < 2 * REQUEST_TIMEOUT
    assert net.engines[looker].statistics.retries >= 1


def test_silent_neighbour_costs_one_timeout_once_records_are_in_hand() -> None:
    net = EngineNet(10, seed=12)
    keys = net.keys
    # A topic whose closest node has neighbours on both sides.
    topic = next(
        t
        for t in (topic_id(f"mid{j}") for j in range(100))
        if 0 < keys.index(net.closest(t)) < len(keys) - 1
    )
    i = keys.index(net.closest(topic))
    announcer = next(k for k in keys if k not in keys[i - 1 : i + 2])
    assert net.announce(announcer, topic)
    net.silent.add(keys[i + 1])  # dead, but the snake does not know it yet
    looker = next(k for k in keys if k not in keys[i - 1 : i + 2] and k != announcer)
    start = net.now
    assert [r.public_key for r in net.lookup(looker, topic)] == [announcer]
    assert net.now - start == pytest.approx(REQUEST_TIMEOUT, abs=REQUEST_TIMEOUT / 2)


def test_refresh_moves_record_to_new_closest_and_expiry_removes_it() -> None:
    net = EngineNet(10, seed=4)
    announcer = net.keys[0] if net.closest(T) != net.keys[0] else net.keys[1]
    assert net.announce(announcer, T)
    old_owner = net.closest(T)
    net.kill(old_owner)
    new_owner = net.closest(T)
    # The new closest node may already hold a copy; after one refresh it surely does,
    # with a newer sequence number than the first announcement.
    first_seq = net.engines[announcer]._announcements[T].record.seq
    net.advance(net.now + ANNOUNCE_REFRESH_INTERVAL * 1.2)
    entries = net.engines[new_owner].store.get(T, net.now)
    assert [e.record.seq > first_seq for e in entries] == [True]
    # Stop announcing without a withdrawal reaching anyone: records expire.
    net.engines[announcer]._announcements.clear()
    net.engines[announcer]._announce_ids.clear()
    net.advance(net.now + RECORD_TTL + 1)
    assert net.holders(T, announcer) == []


def test_withdrawal_removes_record_everywhere() -> None:
    net = EngineNet(10, seed=5)
    a, b = net.keys[1], net.keys[2]
    assert net.announce(a, T) and net.announce(b, T)
    net.apply(a, net.engines[a].stop_announce(T, net.now))
    net.settle()
    found = net.lookup(net.keys[7], T)
    assert [r.public_key for r in found] == [b]


def test_announce_without_any_answer_reports_failure_then_retries() -> None:
    net = EngineNet(4, seed=6)
    announcer = net.keys[0] if net.closest(T) != net.keys[0] else net.keys[1]
    owner = net.closest(T)
    net.silent.add(owner)
    start = net.now
    assert not net.announce(announcer, T)
    assert net.now - start == pytest.approx((REQUEST_RETRIES + 1) * REQUEST_TIMEOUT, abs=1)
    sent = net.engines[announcer].statistics.announces_sent
    net.silent.clear()
    net.advance(net.now + ANNOUNCE_REFRESH_INTERVAL)
    assert net.engines[announcer].statistics.announces_sent > sent
    assert net.engines[owner].store.has(T, announcer)


def test_forged_and_garbage_messages_store_nothing() -> None:
    net = EngineNet(3, seed=7)
    victim = net.engines[net.keys[1]]
    evil = Identity.from_seed(b"e" * 32)
    honest = Identity.from_seed(b"h" * 32)
    key = bytes(honest.public_key)
    good_sig = honest.sign(record_signable(T, key, 1, 100, b""))
    forged = wire.Record(T, key, 1, 100, b"evil data", good_sig)
    wrong_signer = wire.Record(T, key, 1, 100, b"", evil.sign(record_signable(T, key, 1, 100, b"")))
    out: list[Action] = []
    for record in (forged, wrong_signer):
        out += victim.on_message(evil.public_key, wire.encode(wire.Announce(1, record)), T, 0.0)
        out += victim.on_message(
            evil.public_key, wire.encode(wire.Store(record, 9, 0, 1)), None, 0.0
        )
    for garbage in (b"", b"\xc1", b"\x93\x01\x01", bytes(range(256))):
        out += victim.on_message(evil.public_key, garbage, None, 0.0)
    assert len(victim.store) == 0
    assert victim.statistics.decode_errors == 4
    acks = [wire.decode(a.payload) for a in out if isinstance(a, SendExact)]
    assert acks == [wire.AnnounceAck(1, wire.ACK_REFUSED)] * 2
    # An announce to the wrong place (target is not the record's topic) is refused.
    ok = wire.Record(T, key, 1, 100, b"", good_sig)
    [ack] = victim.on_message(evil.public_key, wire.encode(wire.Announce(2, ok)), b"\0" * 32, 0.0)
    assert isinstance(ack, SendExact) and wire.decode(ack.payload) == wire.AnnounceAck(
        2, wire.ACK_REFUSED
    )


def test_lying_responder_cannot_inject_records() -> None:
    net = EngineNet(3, seed=8)
    looker = net.engines[net.keys[0]]
    rid, _ = looker.lookup(T, 0.0)
    evil = Identity.from_seed(b"e" * 32)
    honest = Identity.from_seed(b"h" * 32)
    key = bytes(honest.public_key)
    bad = wire.Record(T, key, 1, 100, b"", evil.sign(record_signable(T, key, 1, 100, b"")))
    good = wire.Record(T, key, 2, 100, b"", honest.sign(record_signable(T, key, 2, 100, b"")))
    reply = wire.LookupReply(rid, T, ((bad, 100), (good, 50)), (), closest=True)
    [done] = looker.on_message(evil.public_key, wire.encode(reply), None, 0.0)
    assert isinstance(done, LookupDone)
    assert [(r.public_key, r.seq, r.expires) for r in done.records] == [(key, 2, 50.0)]
    assert looker.statistics.bad_reply_records == 1
    # A reply to the lookup that ended is ignored (late); one nobody asked for too.
    assert looker.on_message(evil.public_key, wire.encode(reply), None, 0.0) == []
    assert looker.statistics.late_replies == 1
    stray = wire.LookupReply(rid + 1000, T, ((good, 50),), (), closest=True)
    assert looker.on_message(evil.public_key, wire.encode(stray), None, 0.0) == []
    assert looker.statistics.unexpected_replies == 1


def test_rate_limit_per_source() -> None:
    engine = DhtEngine(Identity.from_seed(b"s" * 32))
    message = wire.encode(wire.Lookup(1, T))
    replies = sum(
        len(engine.on_message(b"\x01" * 32, message, T, 0.0)) for _ in range(int(SOURCE_BURST) + 50)
    )
    assert replies == SOURCE_BURST
    assert engine.statistics.rate_limited == 50
    assert engine.on_message(b"\x02" * 32, message, T, 0.0) != []  # others are unaffected
    assert engine.on_message(b"\x01" * 32, message, T, 1.0) != []  # and tokens come back


def test_successor_claims() -> None:
    seeds = (Identity.from_seed(bytes([s]) * 32) for s in range(256))
    me = next(i for i in seeds if i.public_key < b"\x40")
    engine = DhtEngine(me)
    key = bytes(me.public_key)
    router_guess, far, near = b"\xf0" * 32, b"\xe0" * 32, b"\xd0" * 32
    assert key < near < far < router_guess
    engine.set_neighbours(None, router_guess)
    hello = wire.encode(wire.Successor())
    assert engine.on_message(b"\x01" * 32, hello, None, 0.0) == []  # below us: ignored
    assert engine.neighbours == (None, router_guess)
    engine.on_message(far, hello, None, 1.0)
    assert engine.neighbours[1] == far  # a claim beats the router's guess
    assert engine.statistics.successor_claims == 1
    engine.on_message(router_guess, hello, None, 2.0)
    assert engine.neighbours[1] == far  # a fresh closer claim is kept
    engine.on_message(near, hello, None, 3.0)
    assert engine.neighbours[1] == near  # a closer one (a node joined between) wins
    engine.on_message(far, hello, None, 3.0 + SUCCESSOR_TTL)
    assert engine.neighbours[1] == far  # the near one went silent: replaced
    engine.on_message(b"\x02" * 32, hello, None, 4.0 + 3 * SUCCESSOR_TTL)
    assert engine.neighbours[1] == router_guess  # stale claim: back to the router's guess
    # A claim above the router's guess (sent while the snake was still forming) loses:
    # every key above ours bounds the true successor, the lower bound is the better one.
    engine.on_message(far, hello, None, 5.0 + 3 * SUCCESSOR_TTL)
    engine.set_neighbours(None, near)
    assert engine.neighbours[1] == near


def test_new_descending_neighbour_is_told_at_once() -> None:
    engine = DhtEngine(Identity.from_seed(b"\x80" * 32))
    below = b"\x10" * 32
    engine.set_neighbours(below, None)
    assert engine.next_deadline() == -math.inf
    [hello] = engine.on_timer(0.0)
    assert isinstance(hello, SendExact) and hello.key == below
    assert isinstance(wire.decode(hello.payload), wire.Successor)
    assert engine.next_deadline() == SUCCESSOR_INTERVAL
    engine.set_neighbours(below, None)  # unchanged: no extra hello
    assert engine.next_deadline() == SUCCESSOR_INTERVAL


def test_source_limiter_forgets_oldest() -> None:
    limiter = SourceLimiter(rate=1.0, burst=1.0, max_sources=3)
    for i in range(10):
        assert limiter.allow(bytes([i]) * 32, 0.0)
    assert len(limiter) == 3


def test_local_limits() -> None:
    engine = DhtEngine(Identity.from_seed(b"s" * 32))
    with pytest.raises(ValueError):
        engine.start_announce(T, b"x" * 10_000, 0.0)
    engine.start_announce(T, b"", 0.0)
    with pytest.raises(LocalProtocolError):
        engine.start_announce(T, b"", 0.0)
    for i in range(MAX_PENDING - 1):
        engine.lookup(topic_id(str(i)), 0.0)
    with pytest.raises(LocalProtocolError):
        engine.lookup(T, 0.0)


def test_timers_always_move_forward() -> None:
    # on_timer at the deadline must push the deadline past now, or a shell would spin.
    net = EngineNet(5, seed=9)
    net.silent.add(net.closest(T))
    engine = net.engines[net.keys[0]]
    engine.start_announce(T, b"", 0.0)
    engine.lookup(T, 0.0, timeout=5.0)
    now = 0.0
    for _ in range(50):
        deadline = engine.next_deadline()
        assert deadline > now or deadline == math.inf
        now = deadline
        engine.on_timer(now)
    assert engine.pending() <= 1


_VALID = [
    wire.encode(m)
    for m in (
        wire.Lookup(1, T),
        wire.Lookup(2, T, b"\x07" * 32),
        wire.AnnounceAck(3, wire.ACK_STORED),
        wire.LookupReply(4, T, (), (b"\x09" * 32,), closest=True),
        wire.Successor(),
    )
]


@given(
    st.one_of(st.binary(max_size=512), st.sampled_from(_VALID)),
    st.binary(min_size=32, max_size=32),
    st.none() | st.binary(min_size=32, max_size=32),
    st.floats(0, 1e6),
)
def test_engine_never_raises_on_input(
    payload: bytes, source: bytes, target: bytes | None, now: float
) -> None:
    engine = DhtEngine(Identity.from_seed(b"f" * 32))
    engine.set_neighbours(b"\x01" * 32, b"\xfe" * 32)
    engine.lookup(T, now)
    for action in engine.on_message(source, payload, target, now) + engine.on_timer(now):
        if isinstance(action, SendExact | SendClosest):
            wire.decode(action.payload)  # everything we send decodes
    assert len(engine.store) == 0  # nothing unsigned is ever stored


def test_engine_modules_do_not_import_trio() -> None:
    # The sans-IO rule, checked on the source (the package root may import trio).
    import ast
    from pathlib import Path

    import pinecone_trio.dht as package

    root = Path(package.__file__).parent
    for name in ("constants", "crypto", "wire", "store", "engine"):
        tree = ast.parse((root / f"{name}.py").read_text())
        imported = {
            alias.name.split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        } | {
            (node.module or "").split(".")[0]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0
        }
        relative = {
            node.module
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level > 0
        }
        assert "trio" not in imported, name
        assert not relative & {"service", "node", "testing"}, name


def _stores(actions: list[Action]) -> list[tuple[bytes, int, int]]:
    """(to, copies left, direction) of every STORE in `actions`."""
    out = []
    for a in actions:
        if isinstance(a, SendExact):
            msg = wire.decode(a.payload)
            if isinstance(msg, wire.Store):
                out.append((a.key, msg.copies, msg.direction))
    return out


def test_copies_owed_are_handed_to_a_new_neighbour_at_once() -> None:
    me = Identity.from_seed(b"\x42" * 32)
    key = bytes(me.public_key)
    below, below2 = bytes(31) + b"\x01", bytes(31) + b"\x02"
    guess, true_successor = b"\xff" * 32, (int.from_bytes(key, "big") + 1).to_bytes(32, "big")
    assert below < below2 < key < true_successor < guess
    engine = DhtEngine(me)
    engine.set_neighbours(below, guess)  # the router's ascending key is a wrong guess
    engine.on_timer(0.0)
    announcer = Identity.from_seed(b"a" * 32)
    akey = bytes(announcer.public_key)
    signature = announcer.sign(record_signable(T, akey, 1, 100, b""))
    record = wire.Record(T, akey, 1, 100, b"", signature)
    out = engine.on_message(akey, wire.encode(wire.Announce(1, record)), T, 1.0)
    up, down = wire.UP, wire.DOWN
    assert sorted(_stores(out)) == sorted([(guess, 0, up), (below, 1, down)])
    # The acknowledgement is sent after the copies (the shell keeps the order).
    assert isinstance(out[-1], SendExact) and out[-1].key == akey
    assert wire.decode(out[-1].payload) == wire.AnnounceAck(1, wire.ACK_STORED)
    assert engine.next_deadline() > 1.0
    # The true successor's claim arrives: its copy is pushed to it at once (not down).
    engine.on_message(true_successor, wire.encode(wire.Successor()), None, 2.0)
    assert engine.next_deadline() == -math.inf
    assert _stores(engine.on_timer(2.0)) == [(true_successor, 0, up)]
    # Our predecessor dies and another takes its place: it gets the copies owed down.
    engine.set_neighbours(below2, guess)
    assert [s for s in _stores(engine.on_timer(3.0)) if s[2] == down] == [(below2, 1, down)]
    assert engine.statistics.handoffs == 2
    # Nothing changed: nothing is sent again, and the timer is not due.
    assert _stores(engine.on_timer(4.0)) == []
    assert engine.next_deadline() > 4.0
    # An expired record is owed to nobody.
    engine.set_neighbours(below, guess)
    assert _stores(engine.on_timer(200.0)) == []


def test_a_tombstone_copy_never_outlives_its_source() -> None:
    # A STORE copy is forwarded with what is left of the stored lifetime; a tombstone's
    # copies went on with a fresh MAX_RECORD_TTL instead.
    me, announcer, down = (Identity.from_seed(bytes([70 + i]) * 32) for i in range(3))
    topic = topic_id("t")
    key = bytes(announcer.public_key)
    engine = DhtEngine(me)
    engine.set_neighbours(bytes(down.public_key), None)
    for seq, ttl in ((6, 150), (7, 0)):  # a live record, then its withdrawal
        record = wire.Record(
            topic, key, seq, ttl, b"", announcer.sign(record_signable(topic, key, seq, ttl, b""))
        )
        message = wire.encode(wire.Store(record, 5, 1, wire.DOWN))  # 5 s left, 1 more copy
        source = bytes(Identity.from_seed(bytes([90 + seq]) * 32).public_key)
        out = engine.on_message(source, message, None, 100.0)
        copies = [wire.decode(a.payload) for a in out if isinstance(a, SendExact)]
        assert len(copies) == 1
        copy = copies[0]
        assert isinstance(copy, wire.Store) and copy.record == record
        assert 0 < copy.remaining_ttl <= 5


def test_records_are_signed_with_their_signing_time_and_seq_never_repeats() -> None:
    # The wall clock is read at each signature: after a suspend (monotonic time
    # stopped) or a clock correction, records carry the real time (a review found
    # records signed with the start-up offset refused by every store after a sleep).
    wall = [1_800_000_005.0]
    engine = DhtEngine(Identity.from_seed(b"t" * 32), wall_clock=lambda: wall[0])
    first = engine._sign(topic_id("t"), b"", 150)
    assert first.seq == int(wall[0] * 1e6)
    again = engine._sign(topic_id("t"), b"", 150)  # the same instant
    assert again.seq == first.seq + 1
    wall[0] -= 4  # the clock went back
    assert engine._sign(topic_id("t"), b"", 150).seq == again.seq + 1
    wall[0] += 3600  # an hour asleep (monotonic time would not have moved)
    assert engine._sign(topic_id("t"), b"", 150).seq == int(wall[0] * 1e6)
