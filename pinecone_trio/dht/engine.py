"""The DHT engine: announce, store, replicate and look up topic records, sans IO.

Theory of operation
-------------------
Keys live on the snake: the node "closest" to a topic id is the one the overlay's
closest-key mode delivers to (the smallest key >= the id, else the highest key). The
engine never routes; it only says what to send, by closest key or by exact key, and
the Trio shell (`service.py`) carries its actions out. Time is the caller's `now`
(seconds, never decreasing); nothing here imports trio.

Announce. `start_announce(topic, data)` signs a record (topic id, our key, a fresh
sequence number, `RECORD_TTL`, data) and sends ANNOUNCE to the topic id by closest key.
The closest node verifies and stores it, answers ANNOUNCE_ACK to us by exact key, and
pushes STORE copies along the snake: `REPLICAS_ASCENDING` nodes up and
`REPLICAS_DESCENDING` down, each copy forwarded by the previous holder. Without an ack
the ANNOUNCE is re-sent every `REQUEST_TIMEOUT`, `REQUEST_RETRIES` times. Every
`ANNOUNCE_REFRESH_INTERVAL` (with jitter) the record is re-signed with a higher seq and
sent again: this is what moves records to a new closest node after churn, and what
keeps them alive (`RECORD_TTL` is about 2.5 intervals). `stop_announce` sends a signed
withdrawal (ttl 0) the same way.

Lookup. `lookup(topic)` sends LOOKUP by closest key. The node that gets it answers by
exact key with its live records and the keys of its snake neighbours, and forwards the
lookup to those neighbours, which answer us directly (a node that joined next to the
topic id a moment ago is "closest" but empty; the old closest node is its neighbour and
still has the records; after the closest node died, its neighbours hold the copies).
A neighbour that stays silent is asked directly, and retried like an announce while
the lookup has found nothing (with records in hand, one timeout is all it gets); the
lookup finishes when every node named has answered or given up, or at its deadline
(or, with `enough`, as soon as that many verified records are in hand).
Every record in a reply is verified against its own key before it is reported, so a
lying responder can hide records but not invent them.

Neighbours and hand-off. The shell hands over the router's snake neighbours; each node
tells its descending neighbour "I am your successor" (SUCCESSOR) every
`SUCCESSOR_INTERVAL`, and the ascending neighbour is the lower of the freshest lowest
claim and the router's guess (both bound the true successor from above). The copies a
node pushed up and down are remembered per record, and pushed again to a neighbour that
changes, so a copy that went to a wrong or dying neighbour is put right at once rather
than at the next refresh. Claims are unauthenticated, so hand-offs draw on one budget
per node (`MAX_HANDOFF_RECORDS` at once, refilled at `HANDOFF_RATE`), not per change:
forged claims from ever new keys cannot make a node push its store out again and again.

Joining. A node that knows no snake neighbour (`joined` is False: it just started, or
lost every peer) is the closest node to every topic, so its requests would come back
to itself. Its lookups are parked until it joins, for `LOOKUP_JOIN_WAIT` at most (then
answered from its own store: alone, it is the home of every topic), and its first
announce round is held up to `ANNOUNCE_JOIN_WAIT`. When it joins, the parked lookups
and held rounds go at once, and so does every announcement no overlay has acknowledged
yet (`placed` False: acknowledged only by ourselves, alone), since only we hold it.
The others were acknowledged by a home once, but it may have moved while we were away,
so the join re-sends them too, damped per announcement like route-flap damping: the
first re-send after a calm period goes at once, the next no sooner than
`JOIN_RESEND_PENALTY` after it, the wait doubling with each further one up to
`JOIN_RESEND_MAX_PENALTY` and starting over after `JOIN_RESEND_RESET` without one. A
join within the wait moves the re-send to its end (sent then if still joined). So a
node whose only peer flaps every few seconds re-signs and re-sends each announcement
three times in its first minute of flapping and once per `JOIN_RESEND_MAX_PENALTY`
after (besides its refreshes), not on every join; a node away for longer than the wait
re-sends at once.

Serving. Requests are rate-limited per claimed source key (token buckets, bounded
table); the overlay's source key is not authenticated, which is why nothing is stored
without the announcer's signature and why replies only carry signed records.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import DecodeError, LocalProtocolError
from ..identity import Identity, PublicKey
from .constants import (
    ANNOUNCE_JITTER,
    ANNOUNCE_JOIN_WAIT,
    ANNOUNCE_REFRESH_INTERVAL,
    ANNOUNCE_RETRY_INTERVAL,
    EXPIRY_SWEEP_INTERVAL,
    HANDOFF_RATE,
    JOIN_RESEND_MAX_PENALTY,
    JOIN_RESEND_PENALTY,
    JOIN_RESEND_RESET,
    LOOKUP_JOIN_WAIT,
    LOOKUP_TIMEOUT,
    MAX_HANDOFF_RECORDS,
    MAX_LOOKUP_QUERIES,
    MAX_LOOKUP_RECORDS,
    MAX_PENDING,
    MAX_RECORD_DATA,
    MAX_RECORD_TTL,
    MAX_TOTAL_RECORDS,
    MAX_TRACKED_SOURCES,
    RECORD_TTL,
    REPLICAS_ASCENDING,
    REPLICAS_DESCENDING,
    REQUEST_RETRIES,
    REQUEST_TIMEOUT,
    SOURCE_BURST,
    SOURCE_RATE,
    SUCCESSOR_INTERVAL,
    SUCCESSOR_TTL,
    TOMBSTONE_TTL,
)
from .crypto import check_topic_id, record_signable
from .store import PutResult, RecordStore, outside_clock_window, verify_record
from .wire import (
    ACK_RATE_LIMITED,
    ACK_REFUSED,
    ACK_STORED,
    DOWN,
    UP,
    Announce,
    AnnounceAck,
    Lookup,
    LookupReply,
    Message,
    Record,
    Store,
    Successor,
    decode,
    encode,
    encode_lookup_reply,
)

_U64 = (1 << 64) - 1


# ---------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A verified announcement found by a lookup.

    `expires` is on the engine's clock (the shell's `trio.current_time()`): the record
    is not guaranteed to be fresh after it. `seq` orders records of one announcer.
    """

    topic: bytes
    public_key: PublicKey
    data: bytes
    expires: float
    seq: int


@dataclass(frozen=True, slots=True)
class SendExact:
    """Send `payload` (an encoded DHT message) to the node with key `key`."""

    key: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class SendClosest:
    """Send `payload` to the node closest to `target`."""

    target: bytes
    payload: bytes


@dataclass(frozen=True, slots=True)
class LookupDone:
    """Lookup `request_id` finished; `records` are verified, one per announcer."""

    request_id: int
    records: tuple[PeerRecord, ...]


@dataclass(frozen=True, slots=True)
class AnnounceDone:
    """The first announce round of `topic` ended: acknowledged by the closest node or not,
    and `placed` when that node is in an overlay (alone, we acknowledged it ourselves)."""

    topic: bytes
    acknowledged: bool
    placed: bool = False


Action = SendExact | SendClosest | LookupDone | AnnounceDone


@dataclass(slots=True)
class EngineStatistics:
    received: int = 0
    decode_errors: int = 0
    rate_limited: int = 0
    unexpected_replies: int = 0
    #: Answers to a lookup that had already ended (`enough` records in hand, its
    #: deadline passed, or its caller cancelled it): not counted as unexpected.
    late_replies: int = 0
    bad_reply_records: int = 0
    wrong_target: int = 0
    lookups: int = 0
    lookups_empty: int = 0
    announces_sent: int = 0
    announces_acked: int = 0
    replicas_sent: int = 0
    retries: int = 0
    successor_claims: int = 0
    handoffs: int = 0
    join_resends: int = 0
    join_resends_damped: int = 0


# ---------------------------------------------------------------- helpers


class SourceLimiter:
    """A token bucket per claimed source key; the least recently seen are forgotten."""

    def __init__(
        self,
        rate: float = SOURCE_RATE,
        burst: float = SOURCE_BURST,
        max_sources: int = MAX_TRACKED_SOURCES,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._max = max_sources
        self._buckets: OrderedDict[bytes, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, source: bytes, now: float) -> bool:
        tokens, last = self._buckets.pop(source, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._buckets[source] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return ok


@dataclass(slots=True)
class _Query:
    tries: int = 1
    retry_at: float = 0.0
    done: bool = False


@dataclass(slots=True)
class _Lookup:
    request_id: int
    topic: bytes
    deadline: float
    closest: _Query
    exact: dict[bytes, _Query] = field(default_factory=dict)
    found: dict[bytes, PeerRecord] = field(default_factory=dict)
    #: Not sent yet: started while the node had joined no overlay (`DhtEngine.joined`);
    #: `closest.retry_at` is then when it stops waiting and answers from our store.
    parked: bool = False
    #: Finish as soon as this many records are found (None: ask every node named).
    enough: int | None = None

    def finished(self) -> bool:
        if self.enough is not None and len(self.found) >= self.enough:
            return True
        return self.closest.done and all(q.done for q in self.exact.values())


@dataclass(slots=True)
class _Announcement:
    topic: bytes
    data: bytes
    record: Record
    request_id: int
    query: _Query | None  # the round in flight, None between rounds
    next_refresh: float
    reported: bool = False
    #: An acknowledgement reached us while we had joined an overlay: a home there holds
    #: (or held) the record. Until then only we do, and every join sends it at once.
    placed: bool = False
    #: A join asked for a re-send at this time (damped: `DhtEngine._on_join`).
    join_due: float = math.inf
    #: The last re-send a join triggered, and the wait after it before the next.
    join_sent: float = -math.inf
    join_penalty: float = 0.0
    #: Every send of the round in flight went out while we had joined: its
    #: acknowledgement comes from a home in an overlay, not from ourselves.
    round_joined: bool = False


def _remaining(expires: float, now: float) -> int:
    # A tombstone lives longer than any record: its copies must carry all of it.
    return max(0, min(TOMBSTONE_TTL, math.ceil(expires - now)))


# ---------------------------------------------------------------- the engine


class DhtEngine:
    """One node's DHT: its record store, its announcements and its lookups."""

    def __init__(
        self,
        identity: Identity,
        *,
        first_seq: int = 1,
        store: RecordStore | None = None,
        rng: random.Random | None = None,
        record_ttl: int = RECORD_TTL,
        refresh_interval: float = ANNOUNCE_REFRESH_INTERVAL,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """`first_seq` should grow across restarts (the shell passes wall-clock
        microseconds), so a restarted announcer's records replace its old ones.

        `wall_clock` gives the time since the epoch (the shell passes `time.time`,
        read at each signature, so a machine that slept or had its clock corrected
        signs with the real time). With it, every record is signed with seq = its signing time in
        microseconds (never less than the previous seq + 1), and records that expired
        where they were made, or were signed more than `MAX_CLOCK_SKEW` in our future,
        are refused as replays, stored or in lookup replies
        (`store.outside_clock_window`). Without it (tests), seq is a plain counter."""
        if not 0 < record_ttl <= MAX_RECORD_TTL:
            raise ValueError(f"record_ttl must be 1..{MAX_RECORD_TTL}")
        self._identity = identity
        self._key = bytes(identity.public_key)
        self._seq = first_seq
        self._rng = rng or random.Random()
        self._record_ttl = record_ttl
        self._refresh = refresh_interval
        self._wall_clock = wall_clock
        self.store = store or RecordStore(wall_clock=wall_clock)
        self._limiter = SourceLimiter()
        self._descending: bytes | None = None
        self._router_ascending: bytes | None = None
        self._successor: bytes | None = None
        self._successor_heard = -math.inf
        # The node went from no snake neighbour to one since the last timer: send the
        # parked lookups and the announcements due on joining (damped: `_on_join`).
        self._just_joined = False
        # Until `set_neighbours` is first called the engine does not know it is alone
        # (a caller that routes its messages itself, as tests do): it counts as joined.
        self._told_neighbours = False
        self._next_hello = math.inf
        # Copies we owe each side, by (topic, announcer): (up, down) copies left when we
        # stored the record; and the neighbours they were last handed to.
        self._owed: OrderedDict[tuple[bytes, bytes], tuple[int, int]] = OrderedDict()
        self._handed: tuple[bytes | None, bytes | None] = (None, None)
        # The node's hand-off budget (copies), refilled at HANDOFF_RATE since the time.
        self._handoff_budget = (float(MAX_HANDOFF_RECORDS), -math.inf)
        self._lookups: dict[int, _Lookup] = {}
        # The request ids of lookups that went out and ended (with `enough` records, at
        # their deadline, or cancelled: nodes may still answer), oldest first, up to
        # MAX_PENDING: those answers count as late, not unexpected.
        self._ended_early: OrderedDict[int, None] = OrderedDict()
        self._announcements: dict[bytes, _Announcement] = {}
        self._announce_ids: dict[int, bytes] = {}
        self._next_sweep = 0.0
        self._now = 0.0
        self.statistics = EngineStatistics()

    # ------------------------------------------------------------ inputs

    @property
    def public_key(self) -> bytes:
        return self._key

    @property
    def neighbours(self) -> tuple[bytes | None, bytes | None]:
        """(descending, ascending) snake neighbours as last known."""
        return self._descending, self._ascending

    @property
    def _ascending(self) -> bytes | None:
        # Every live key above ours is an upper bound on our true successor: the lower
        # of a fresh successor claim and the router's guess (the smallest higher key it
        # knows a route to) is the better one. A claim is usually the lower, but one
        # sent while the snake was still forming can be stale-high for a while.
        # (Freshness is checked against `_now`, the time of the last input.)
        guess = self._router_ascending
        if self._successor is not None and self._now - self._successor_heard < SUCCESSOR_TTL:
            return self._successor if guess is None else min(self._successor, guess)
        return guess

    @property
    def joined(self) -> bool:
        """Whether the node has joined an overlay: the router knows a snake neighbour.

        A node alone is the closest node to every topic, so what it sends by closest
        key comes back to itself: lookups wait up to `LOOKUP_JOIN_WAIT` for it to join,
        announcements up to `ANNOUNCE_JOIN_WAIT`, and joining sends announcements again
        (damped: "Joining" above). An engine never told its neighbours
        (`set_neighbours`) counts as joined: it cannot know it is alone."""
        if not self._told_neighbours:
            return True
        return self._descending is not None or self._router_ascending is not None

    def set_neighbours(self, descending: bytes | None, ascending: bytes | None) -> None:
        """Tell the engine the router's snake neighbours (copies go to them; replies
        name them). A new descending neighbour is told at once that we succeed it;
        the first neighbour after none (the node joined) sends the parked lookups and
        the announcements due on joining at the next `on_timer` (`next_deadline` says
        it is due)."""
        was_joined = self.joined
        self._told_neighbours = True
        descending = descending if descending != self._key else None
        if descending != self._descending:
            self._next_hello = -math.inf if descending is not None else math.inf
        self._descending = descending
        self._router_ascending = ascending if ascending != self._key else None
        if self.joined and not was_joined and (self._lookups or self._announcements):
            self._just_joined = True  # every lookup is parked while not joined

    def announcing(self) -> list[bytes]:
        """Topic ids we announce."""
        return list(self._announcements)

    def pending(self) -> int:
        return len(self._lookups) + len(self._announce_ids)

    def on_message(
        self, source: bytes, payload: bytes, target: bytes | None, now: float
    ) -> list[Action]:
        """Handle one DHT datagram; `target` is the closest-key target (None: exact)."""
        self.statistics.received += 1
        self._now = now
        try:
            message = decode(payload)
        except DecodeError:
            self.statistics.decode_errors += 1
            return []
        return self._dispatch(source, message, target, now)

    def _dispatch(
        self, source: bytes, message: Message, target: bytes | None, now: float
    ) -> list[Action]:
        if isinstance(message, AnnounceAck):
            return self._on_ack(message, now)
        if isinstance(message, LookupReply):
            return self._on_reply(source, message, now)
        # Lookups are limited by who gets the answer (a forwarded one's requester, not
        # the closest node that forwarded it); the rest by their claimed source.
        limit_key = message.reply_to or source if isinstance(message, Lookup) else source
        if not self._limiter.allow(limit_key, now):
            self.statistics.rate_limited += 1
            if isinstance(message, Announce):
                ack = AnnounceAck(message.request_id, ACK_RATE_LIMITED)
                return [SendExact(source, encode(ack))]
            return []
        if isinstance(message, Announce):
            return self._on_announce(source, message, target, now)
        if isinstance(message, Store):
            return self._on_store(message, now)
        if isinstance(message, Successor):
            self._on_successor(source, now)
            return []
        return self._on_lookup(source, message, target, now)

    # ------------------------------------------------------------ serving

    def _on_successor(self, source: bytes, now: float) -> None:
        if source <= self._key:
            return
        self.statistics.successor_claims += 1
        current = self._successor
        fresh = current is not None and now - self._successor_heard < SUCCESSOR_TTL
        if current is None or not fresh or source <= current:
            self._successor = source
            self._successor_heard = now

    def _on_announce(
        self, source: bytes, message: Announce, target: bytes | None, now: float
    ) -> list[Action]:
        record = message.record
        if target is not None and target != record.topic:
            self.statistics.wrong_target += 1
            return [SendExact(source, encode(AnnounceAck(message.request_id, ACK_REFUSED)))]
        result = self.store.put(record, now)
        ok = result in (PutResult.STORED, PutResult.DUPLICATE)
        status = ACK_STORED if ok else ACK_REFUSED
        actions: list[Action] = []
        if result is PutResult.STORED:
            # At an end of the snake, the copies of the missing side go the other way.
            up, down = REPLICAS_ASCENDING, REPLICAS_DESCENDING
            if self._descending is None:
                up, down = up + down, 0
            elif self._ascending is None:
                up, down = 0, up + down
            self._owe(record, up, down)
            actions += self._replicate(record, now, UP, up)
            actions += self._replicate(record, now, DOWN, down)
        # The acknowledgement goes after the copies: the shell sends in order, so an
        # announcer that heard "stored" knows the copies were on their way before it.
        actions.append(SendExact(source, encode(AnnounceAck(message.request_id, status))))
        return actions

    def _owe(self, record: Record, up: int, down: int) -> None:
        """Remember the copies of `record` we push up and down (for a hand-off)."""
        key = (record.topic, record.public_key)
        self._owed.pop(key, None)
        if not self._owed:
            # Nothing was owed: there is no earlier change to hand anything over for.
            self._handed = (self._ascending, self._descending)
        if up > 0 or down > 0:
            self._owed[key] = (up, down)
            while len(self._owed) > MAX_TOTAL_RECORDS:
                self._owed.popitem(last=False)

    def _handoff(self, now: float) -> list[Action]:
        """Push the copies we owe a side to its neighbour if that neighbour changed.

        A copy sent up just before the true successor's claim arrived went to the
        router's guess; one sent down before a dead predecessor was replaced went
        nowhere. Without this they would stay misplaced until the next refresh.

        The copies come out of the node's budget (`MAX_HANDOFF_RECORDS`, refilled at
        `HANDOFF_RATE`); those it cannot pay for wait for the announcer's refresh."""
        current = (self._ascending, self._descending)
        if current == self._handed:
            return []
        changed = [
            (direction, key)
            for direction, key, old in zip((UP, DOWN), current, self._handed, strict=True)
            if key is not None and key != old
        ]
        self._handed = current
        tokens, since = self._handoff_budget
        budget = min(float(MAX_HANDOFF_RECORDS), tokens + (now - since) * HANDOFF_RATE)
        limit = int(budget)
        actions: list[Action] = []
        for (topic, announcer), owed in reversed(list(self._owed.items())):
            stored = self.store.entry(topic, announcer)
            if stored is None:
                del self._owed[(topic, announcer)]
                continue
            remaining = _remaining(stored.expires, now)
            for direction, key in changed:
                copies = owed[0] if direction == UP else owed[1]
                if copies > 0 and remaining > 0 and len(actions) < limit:
                    store = Store(stored.record, remaining, copies - 1, direction)
                    actions.append(SendExact(key, encode(store)))
        self._handoff_budget = (budget - len(actions), now)
        self.statistics.handoffs += len(actions)
        return actions

    def _replicate(self, record: Record, now: float, direction: int, copies: int) -> list[Action]:
        key = self._ascending if direction == UP else self._descending
        if key is None or copies <= 0:
            return []
        # A copy never outlives what we hold: the stored entry's expiry (a tombstone's
        # too; `get` leaves tombstones out, `entry` does not).
        self.store.expire(now)
        stored = self.store.entry(record.topic, record.public_key)
        if stored is None or stored.record != record:
            return []
        remaining = _remaining(stored.expires, now)
        if remaining <= 0:
            return []
        self.statistics.replicas_sent += 1
        return [SendExact(key, encode(Store(record, remaining, copies - 1, direction)))]

    def _on_store(self, message: Store, now: float) -> list[Action]:
        result = self.store.put(message.record, now, remaining=message.remaining_ttl)
        if result is PutResult.STORED and message.copies > 0:
            up = message.copies if message.direction == UP else 0
            self._owe(message.record, up, message.copies - up)
            return self._replicate(message.record, now, message.direction, message.copies)
        return []

    def _on_lookup(
        self, source: bytes, message: Lookup, target: bytes | None, now: float
    ) -> list[Action]:
        dest = message.reply_to or source
        # Closest-key delivery of a direct lookup: we are the node closest to the topic.
        closest = target is not None and not message.reply_to
        entries = self.store.get(message.topic, now)[:MAX_LOOKUP_RECORDS]
        neighbours = tuple(k for k in (self._descending, self._ascending) if k is not None)
        reply = LookupReply(
            message.request_id,
            message.topic,
            tuple((s.record, _remaining(s.expires, now)) for s in entries),
            neighbours,
            closest,
        )
        actions: list[Action] = [SendExact(dest, encode_lookup_reply(reply))]
        if closest:
            # Our neighbours answer the requester directly: one leg shorter than the
            # requester asking them after our reply (it still does if they stay silent).
            forward = encode(Lookup(message.request_id, message.topic, source))
            actions += [SendExact(key, forward) for key in neighbours]
        return actions

    # ------------------------------------------------------------ lookups

    def _new_id(self) -> int:
        while True:
            rid = self._rng.getrandbits(64)
            if rid not in self._lookups and rid not in self._announce_ids:
                return rid

    def lookup(
        self,
        topic: bytes,
        now: float,
        timeout: float = LOOKUP_TIMEOUT,
        *,
        enough: int | None = None,
    ) -> tuple[int, list[Action]]:
        """Start a lookup of topic id `topic`; it ends with a `LookupDone` action.

        With `enough`, it ends as soon as that many verified records are in hand,
        without waiting for the other nodes named (a silent one costs a whole
        `REQUEST_TIMEOUT`; the answers that come after are counted as late replies),
        and reports those records; otherwise when every node named answered
        or gave up.

        Raises:
            TypeError, ValueError: `topic` is not a 32-byte topic id, or `enough` is
                not an int of at least 1.
            LocalProtocolError: when `MAX_PENDING` requests are already in flight.
        """
        topic = check_topic_id(topic)
        if enough is not None and (type(enough) is not int or enough < 1):
            raise ValueError(f"enough must be at least 1, not {enough}")
        if self.pending() >= MAX_PENDING:
            raise LocalProtocolError(f"{MAX_PENDING} DHT requests in flight")
        rid = self._new_id()
        self.statistics.lookups += 1
        if not self.joined:
            # Alone, the lookup would come back to us and find only our own records:
            # park it until the node joins, for LOOKUP_JOIN_WAIT at most (answered then
            # from our own store: still alone, we are the closest node).
            query = _Query(retry_at=now + min(timeout, LOOKUP_JOIN_WAIT))
            self._lookups[rid] = _Lookup(
                rid, topic, now + timeout, query, parked=True, enough=enough
            )
            return rid, []
        self._lookups[rid] = _Lookup(
            rid, topic, now + timeout, _Query(retry_at=now + REQUEST_TIMEOUT), enough=enough
        )
        return rid, [SendClosest(topic, encode(Lookup(rid, topic)))]

    def cancel_lookup(self, request_id: int) -> None:
        lookup = self._lookups.pop(request_id, None)
        if lookup is not None and not lookup.parked:
            self._remember_ended(request_id)  # answers may still come: late, not unexpected

    def _on_reply(self, source: bytes, reply: LookupReply, now: float) -> list[Action]:
        lookup = self._lookups.get(reply.request_id)
        if lookup is None or reply.topic != lookup.topic:
            if lookup is None and reply.request_id in self._ended_early:
                self.statistics.late_replies += 1
            else:
                self.statistics.unexpected_replies += 1
            return []
        query: _Query | None
        if reply.closest:
            query = lookup.closest
            lookup.exact.setdefault(source, _Query(done=True))
        else:
            query = lookup.exact.get(source)
            if query is None:
                # A neighbour the closest node forwarded our lookup to, answering before
                # the closest node's own reply reached us.
                if len(lookup.exact) >= MAX_LOOKUP_QUERIES:
                    self.statistics.unexpected_replies += 1
                    return []
                query = lookup.exact[source] = _Query()
        if query.done:
            return []
        query.done = True
        wall_now = self._wall_clock() if self._wall_clock is not None else None
        for record, remaining in reply.records:
            if record.ttl == 0 or not verify_record(record):
                self.statistics.bad_reply_records += 1
                continue
            if wall_now is not None and outside_clock_window(record, wall_now):
                self.statistics.bad_reply_records += 1
                continue
            old = lookup.found.get(record.public_key)
            if old is not None and old.seq >= record.seq:
                continue
            lifetime = min(remaining, record.ttl, MAX_RECORD_TTL)
            lookup.found[record.public_key] = PeerRecord(
                record.topic, PublicKey(record.public_key), record.data, now + lifetime, record.seq
            )
        if reply.closest:
            # The closest node forwarded the lookup to the neighbours it names: expect
            # their answers, and ask them ourselves if none comes by the retry time.
            for key in reply.neighbours:
                if key in lookup.exact or len(lookup.exact) >= MAX_LOOKUP_QUERIES:
                    continue
                lookup.exact[key] = _Query(retry_at=now + REQUEST_TIMEOUT)
        if lookup.finished():
            return [self._finish(lookup)]
        return []

    def _answer_locally(self, lookup: _Lookup, now: float) -> None:
        """Fill a parked lookup from our own store (the node is alone: the closest)."""
        for stored in self.store.get(lookup.topic, now)[:MAX_LOOKUP_RECORDS]:
            record = stored.record
            lookup.found[record.public_key] = PeerRecord(
                record.topic, PublicKey(record.public_key), record.data, stored.expires, record.seq
            )

    def _remember_ended(self, request_id: int) -> None:
        ended = self._ended_early
        ended[request_id] = None
        if len(ended) > MAX_PENDING:  # request ids only grow: the oldest go first
            ended.popitem(last=False)

    def _finish(self, lookup: _Lookup) -> LookupDone:
        del self._lookups[lookup.request_id]
        if not lookup.parked:
            self._remember_ended(lookup.request_id)
        records = sorted(lookup.found.values(), key=lambda r: r.expires, reverse=True)
        if not records:
            self.statistics.lookups_empty += 1
        return LookupDone(lookup.request_id, tuple(records))

    # ------------------------------------------------------------ announcements

    def _sign(self, topic: bytes, data: bytes, ttl: int) -> Record:
        seq = self._seq
        if self._wall_clock is not None:
            seq = max(seq, int(self._wall_clock() * 1e6))
        seq = min(_U64 - 1, seq)
        self._seq = seq + 1
        signature = self._identity.sign(record_signable(topic, self._key, seq, ttl, data))
        return Record(topic, self._key, seq, ttl, data, signature)

    def start_announce(self, topic: bytes, data: bytes, now: float) -> list[Action]:
        """Announce us under topic id `topic` until `stop_announce`.

        The first round ends with an `AnnounceDone` action.

        Raises:
            TypeError: `topic` or `data` is not bytes-like.
            ValueError: bad topic id or `data` longer than `MAX_RECORD_DATA`.
            LocalProtocolError: already announcing `topic`, or too many requests.
        """
        topic = check_topic_id(topic)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"record data is bytes, not {type(data).__name__}")
        if len(data) > MAX_RECORD_DATA:
            raise ValueError(f"record data of {len(data)} bytes > {MAX_RECORD_DATA}")
        if topic in self._announcements:
            raise LocalProtocolError("already announcing this topic")
        if self.pending() >= MAX_PENDING:
            raise LocalProtocolError(f"{MAX_PENDING} DHT requests in flight")
        record = self._sign(topic, bytes(data), self._record_ttl)
        ann = _Announcement(topic, bytes(data), record, 0, None, math.inf)
        self._announcements[topic] = ann
        # Alone, we would acknowledge our own record: the first round waits for the
        # node to join (`_on_join`), at most ANNOUNCE_JOIN_WAIT.
        return self._send_round(ann, now, send=self.joined)

    def _send_round(self, ann: _Announcement, now: float, *, send: bool = True) -> list[Action]:
        """Start a round of `ann`: send it now, or (not `send`) hold it unsent (its
        query's `tries` 0) until the node joins or `ANNOUNCE_JOIN_WAIT` has passed."""
        ann.request_id = self._new_id()
        self._announce_ids[ann.request_id] = ann.topic
        ann.next_refresh = math.inf
        ann.join_due = math.inf  # whatever round goes out is what a join asked for
        if not send:
            ann.query = _Query(tries=0, retry_at=now + ANNOUNCE_JOIN_WAIT)
            return []
        ann.query = _Query(retry_at=now + REQUEST_TIMEOUT)
        ann.round_joined = self.joined
        self.statistics.announces_sent += 1
        return [SendClosest(ann.topic, encode(Announce(ann.request_id, ann.record)))]

    def stop_announce(self, topic: bytes, now: float) -> list[Action]:
        """Stop announcing `topic` and send a signed withdrawal (best effort).

        Raises:
            TypeError, ValueError: `topic` is not a 32-byte topic id.
        """
        ann = self._announcements.pop(check_topic_id(topic), None)
        if ann is None:
            return []
        self._announce_ids.pop(ann.request_id, None)
        withdrawal = self._sign(topic, b"", 0)
        return [SendClosest(topic, encode(Announce(self._new_id(), withdrawal)))]

    def _on_ack(self, ack: AnnounceAck, now: float) -> list[Action]:
        topic = self._announce_ids.pop(ack.request_id, None)
        ann = None if topic is None else self._announcements.get(topic)
        if ann is None or ann.query is None:
            self.statistics.unexpected_replies += 1
            return []
        ann.query = None
        acked = ack.status == ACK_STORED
        if acked:
            self.statistics.announces_acked += 1
            # Sent and acknowledged while joined: a home in the overlay holds it
            # (alone, the acknowledgement is our own).
            ann.placed = ann.placed or (self.joined and ann.round_joined)
        return self._end_round(ann, acked, now)

    def _end_round(self, ann: _Announcement, acked: bool, now: float) -> list[Action]:
        if acked:
            jitter = 1.0 + self._rng.uniform(-ANNOUNCE_JITTER, ANNOUNCE_JITTER)
            ann.next_refresh = now + self._refresh * jitter
        else:
            ann.next_refresh = now + min(self._refresh, ANNOUNCE_RETRY_INTERVAL)
        if ann.reported:
            return []
        ann.reported = True
        return [AnnounceDone(ann.topic, acked, ann.placed)]

    # ------------------------------------------------------------ time

    def on_timer(self, now: float) -> list[Action]:
        """Retries, refreshes, lookup deadlines and record expiry due at `now`."""
        self._now = now
        actions: list[Action] = []
        if self._just_joined:
            actions += self._on_join(now)
        if self._descending is not None and now >= self._next_hello:
            actions.append(SendExact(self._descending, encode(Successor())))
            self._next_hello = now + SUCCESSOR_INTERVAL
        if now >= self._next_sweep:
            self.store.expire(now)
            self._next_sweep = now + EXPIRY_SWEEP_INTERVAL
        if self._owed and (self._ascending, self._descending) != self._handed:
            self.store.expire(now)
            actions += self._handoff(now)
        for lookup in list(self._lookups.values()):
            if lookup.parked and now >= lookup.closest.retry_at:
                # Still alone after its wait (`_on_join` unparks it when the node joins).
                self._answer_locally(lookup, now)
                actions.append(self._finish(lookup))
                continue
            if now >= lookup.deadline:
                actions.append(self._finish(lookup))
                continue
            message = encode(Lookup(lookup.request_id, lookup.topic))
            q = lookup.closest
            if not q.done and now >= q.retry_at and self._retry(q, now):
                actions.append(SendClosest(lookup.topic, message))
            for key, q in lookup.exact.items():
                if q.done or now < q.retry_at:
                    continue
                if lookup.closest.done and lookup.found:
                    # We have answers: a neighbour silent for a whole timeout (dead, or
                    # the snake is still repairing) is not worth more waiting.
                    q.done = True
                elif self._retry(q, now):
                    actions.append(SendExact(key, message))
            if lookup.finished():
                actions.append(self._finish(lookup))
        for ann in list(self._announcements.values()):
            aq = ann.query
            if aq is not None and aq.tries == 0 and now >= aq.retry_at:
                # A round held while the node was alone: its first send, freshly signed.
                self._announce_ids.pop(ann.request_id, None)
                ann.record = self._sign(ann.topic, ann.data, self._record_ttl)
                actions += self._send_round(ann, now)
            elif aq is not None and now >= aq.retry_at:
                if self._retry(aq, now):
                    ann.round_joined = ann.round_joined and self.joined
                    actions.append(
                        SendClosest(ann.topic, encode(Announce(ann.request_id, ann.record)))
                    )
                else:
                    self._announce_ids.pop(ann.request_id, None)
                    ann.query = None
                    actions += self._end_round(ann, False, now)
            elif aq is None and now >= min(ann.next_refresh, ann.join_due):
                if now >= ann.join_due:
                    ann.join_due = math.inf
                    if self.joined:
                        self._count_join_resend(ann, now)
                    elif now < ann.next_refresh:
                        continue  # left again before its damped re-send: the next join asks
                ann.record = self._sign(ann.topic, ann.data, self._record_ttl)
                actions += self._send_round(ann, now)
        return actions

    def _count_join_resend(self, ann: _Announcement, now: float) -> None:
        """A join re-sends `ann` now: the wait before the next join re-send doubles (up to
        `JOIN_RESEND_MAX_PENALTY`), or starts over after a calm `JOIN_RESEND_RESET`."""
        if now - ann.join_sent >= JOIN_RESEND_RESET:
            ann.join_penalty = JOIN_RESEND_PENALTY
        else:
            ann.join_penalty = min(2 * ann.join_penalty, JOIN_RESEND_MAX_PENALTY)
        ann.join_sent = now
        self.statistics.join_resends += 1

    def _on_join(self, now: float) -> list[Action]:
        """The node joined an overlay: send the parked lookups and the held announce
        rounds, and make announcements between rounds due (sent by `on_timer` as a
        refresh). One no overlay has acknowledged (made while we were alone) is stored
        only here, where nobody will look for it once we have neighbours: it is due now.
        One a home acknowledged before may have a new home here (we were away, the
        overlay changed, or this is another one): it is due now too, unless a join
        re-sent it within its damping penalty (`JOIN_RESEND_PENALTY`), and then at
        the end of the penalty: a node whose only peer flaps does not re-sign and
        re-send everything on every join."""
        self._just_joined = False
        if not self.joined:  # joined and left again before this timer
            return []
        actions: list[Action] = []
        for lookup in self._lookups.values():
            # (one whose deadline has come stays parked: `on_timer` answers it from our
            # own store rather than sending it and finishing it empty at once)
            if lookup.parked and now < lookup.deadline:
                lookup.parked = False
                lookup.closest.retry_at = now + REQUEST_TIMEOUT
                message = encode(Lookup(lookup.request_id, lookup.topic))
                actions.append(SendClosest(lookup.topic, message))
        for ann in self._announcements.values():
            if ann.query is not None:
                if ann.query.tries == 0:
                    ann.query.retry_at = now  # held unsent: its first send, now
                elif not ann.round_joined:
                    # Sent to ourselves while alone and not acknowledged yet: that
                    # round would place it nowhere. Start it over, into the overlay.
                    self._announce_ids.pop(ann.request_id, None)
                    ann.record = self._sign(ann.topic, ann.data, self._record_ttl)
                    actions += self._send_round(ann, now)
            elif not ann.placed:
                ann.next_refresh = now  # only we hold it: refresh now, undamped
            else:
                ann.join_due = max(now, ann.join_sent + ann.join_penalty)
                if ann.join_due > now:
                    self.statistics.join_resends_damped += 1
        return actions

    def _retry(self, query: _Query, now: float) -> bool:
        """Count one more try of `query`; False (and the query done) when out of tries."""
        if query.tries > REQUEST_RETRIES:
            query.done = True
            return False
        query.tries += 1
        query.retry_at = now + REQUEST_TIMEOUT
        self.statistics.retries += 1
        return True

    def next_deadline(self) -> float:
        """When `on_timer` next has something to do (math.inf: nothing scheduled)."""
        if self._just_joined:
            return -math.inf  # send the parked requests now
        if self._owed and (self._ascending, self._descending) != self._handed:
            return -math.inf  # a neighbour changed: hand the copies we owe over now
        deadline = self._next_hello if self._descending is not None else math.inf
        expiry = self.store.next_expiry()
        if expiry is not None:
            deadline = min(deadline, max(expiry, self._next_sweep))
        for lookup in self._lookups.values():
            deadline = min(deadline, lookup.deadline)
            if not lookup.closest.done:
                deadline = min(deadline, lookup.closest.retry_at)
            for q in lookup.exact.values():
                if not q.done:
                    deadline = min(deadline, q.retry_at)
        for ann in self._announcements.values():
            if ann.query is not None:
                deadline = min(deadline, ann.query.retry_at)
            else:
                deadline = min(deadline, ann.next_refresh, ann.join_due)
        return deadline
