"""The record table a DHT node keeps for the topics it is closest to (or replicates).

Theory of operation
-------------------
A record is kept per (topic, announcer key). `put(record, now, remaining)` checks the
announcer's signature over `crypto.record_signable`, then compares sequence numbers:
a higher seq replaces what is stored (the announcer re-signs every refresh with a fresh
seq, wall-clock microseconds), the same seq with the same bytes is a duplicate (it
does *not* extend the lifetime, so a replayed copy cannot keep a record alive), and a
lower seq or the same seq with other bytes is refused (hyperdht's SEQ_TOO_LOW /
SEQ_REUSED). A record with ttl 0 is a withdrawal: it replaces the record with a
tombstone that is never returned by `get` but refuses older copies until it expires.

Lifetimes are local: a record lives `min(ttl, MAX_RECORD_TTL, remaining)` seconds from
when this node stored it, measured on the caller's clock (`now`). Clocks matter only
for replays: an announcer's seq is its signing time in wall-clock microseconds, so a
store given a wall clock (`wall_clock`, seconds since the epoch) refuses a
record that expired where it was made more than `MAX_CLOCK_SKEW` (10 min) ago
(`expired_at_origin`). Without that, an old signed record could be stored again, for
another full lifetime, whenever the newer record or its tombstone had gone. For the
same reason it refuses a record signed more than `MAX_CLOCK_SKEW` in its future
(`signed_in_future`: an announcer whose clock ran a day ahead made records replayable
for a day).
Everything expires by `now` alone: `expire(now)` pops a heap of
(expiry, key) entries (stale heap entries are skipped, and the heap is rebuilt when
they outnumber live ones), and `put` expires before it inserts, so a full table of
dead records never refuses live ones (polkadot-sdk#5187).

Bounds, each a named constant: `MAX_TOPICS` (the least recently announced topic is
dropped whole), `MAX_RECORDS_PER_TOPIC` (the record closest to expiry in that topic
goes), `MAX_TOTAL_RECORDS` (the record closest to expiry anywhere goes). No trio here.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from ..identity import PublicKey
from .constants import (
    MAX_CLOCK_SKEW,
    MAX_RECORD_TTL,
    MAX_RECORDS_PER_TOPIC,
    MAX_TOPICS,
    MAX_TOTAL_RECORDS,
    SEQ_TIMESTAMP_FLOOR,
    TOMBSTONE_TTL,
)
from .crypto import check_topic_id, record_signable
from .wire import Record

#: Rebuild the expiry heap when it holds this many times more entries than records.
_HEAP_SLACK: Final = 2


class PutResult(Enum):
    """What `RecordStore.put` did with a record."""

    STORED = "stored"  # new, or a newer seq than what we had (replicate it)
    DUPLICATE = "duplicate"  # exactly what we already have (acknowledge, do not replicate)
    STALE = "stale"  # older seq, the same seq with other contents, or outside the clock window
    BAD_SIGNATURE = "bad_signature"


def verify_record(record: Record) -> bool:
    """Whether the record is signed by the key it names."""
    signable = record_signable(record.topic, record.public_key, record.seq, record.ttl, record.data)
    try:
        key = PublicKey(record.public_key)
    except ValueError:
        return False
    return key.verify(signable, record.signature)


def record_lifetime(record: Record) -> float:
    """How long a store keeps `record` at most (a withdrawal: its tombstone's life)."""
    return float(TOMBSTONE_TTL if record.ttl == 0 else min(record.ttl, MAX_RECORD_TTL))


def expired_at_origin(record: Record, wall_now: float) -> bool:
    """Whether `record`, by the signing time in its seq, expired more than
    `MAX_CLOCK_SKEW` before `wall_now` (seconds since the epoch): a replay."""
    if record.seq < SEQ_TIMESTAMP_FLOOR:
        return False  # a counter, not a time
    return record.seq / 1e6 + record_lifetime(record) + MAX_CLOCK_SKEW < wall_now


def signed_in_future(record: Record, wall_now: float) -> bool:
    """Whether `record`'s signing time lies more than `MAX_CLOCK_SKEW` after `wall_now`.

    Such a record (its announcer's clock far ahead) would escape `expired_at_origin`
    for as long as the clock was ahead, and so stay replayable; it is refused."""
    if record.seq < SEQ_TIMESTAMP_FLOOR:
        return False  # a counter, not a time
    return record.seq / 1e6 > wall_now + MAX_CLOCK_SKEW


def outside_clock_window(record: Record, wall_now: float) -> bool:
    """`expired_at_origin` or `signed_in_future`: refused, stored or in a reply."""
    return expired_at_origin(record, wall_now) or signed_in_future(record, wall_now)


@dataclass(slots=True)
class StoredRecord:
    record: Record
    expires: float

    @property
    def withdrawn(self) -> bool:
        return self.record.ttl == 0


@dataclass(slots=True)
class StoreStatistics:
    stored: int = 0
    duplicates: int = 0
    stale: int = 0
    bad_signatures: int = 0
    expired: int = 0
    evicted: int = 0


class RecordStore:
    """Signed records by topic, bounded, with expiry driven by `now`."""

    def __init__(
        self,
        *,
        max_topics: int = MAX_TOPICS,
        max_per_topic: int = MAX_RECORDS_PER_TOPIC,
        max_total: int = MAX_TOTAL_RECORDS,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """`wall_clock` gives the time since the epoch (the shell: `time.time`, read
        at each use, so a suspended or corrected clock is followed); None (tests)
        turns the replay check by signing time off."""
        self._wall_clock = wall_clock
        self._topics: OrderedDict[bytes, dict[bytes, StoredRecord]] = OrderedDict()
        self._heap: list[tuple[float, bytes, bytes]] = []
        self._count = 0
        self._max_topics = max_topics
        self._max_per_topic = max_per_topic
        self._max_total = max_total
        self.statistics = StoreStatistics()

    def __len__(self) -> int:
        """Records held, tombstones included."""
        return self._count

    @property
    def topic_count(self) -> int:
        return len(self._topics)

    def put(self, record: Record, now: float, remaining: float | None = None) -> PutResult:
        """Verify and store `record`; `remaining` caps its lifetime (a replica's)."""
        self.expire(now)
        topic = self._topics.get(record.topic)
        old = None if topic is None else topic.get(record.public_key)
        if old is not None:
            if record.seq < old.record.seq or (
                record.seq == old.record.seq and record != old.record
            ):
                self.statistics.stale += 1
                return PutResult.STALE
            if record.seq == old.record.seq:
                self.statistics.duplicates += 1
                return PutResult.DUPLICATE
        wall_clock = self._wall_clock
        if wall_clock is not None and outside_clock_window(record, wall_clock()):
            self.statistics.stale += 1
            return PutResult.STALE
        if not verify_record(record):
            self.statistics.bad_signatures += 1
            return PutResult.BAD_SIGNATURE
        lifetime = record_lifetime(record)
        if remaining is not None:
            lifetime = min(lifetime, remaining)
        if lifetime <= 0:
            self.statistics.stale += 1
            return PutResult.STALE
        expires = now + lifetime
        if old is None:
            # Make room first: an eviction may empty (and so delete) this very topic,
            # which must then be made again below, not written to detached.
            if topic is not None and len(topic) >= self._max_per_topic:
                victim = min(topic.values(), key=lambda s: s.expires)
                self._remove(record.topic, victim.record.public_key)
                self.statistics.evicted += 1
            while self._count >= self._max_total:
                self._evict_oldest()
            topic = self._topics.get(record.topic)
        if topic is None:
            while len(self._topics) >= self._max_topics:
                self._drop_topic(next(iter(self._topics)))
            topic = self._topics[record.topic] = {}
        else:
            self._topics.move_to_end(record.topic)
        if old is None:
            self._count += 1
        topic[record.public_key] = StoredRecord(record, expires)
        heapq.heappush(self._heap, (expires, record.topic, record.public_key))
        self._compact()
        self.statistics.stored += 1
        return PutResult.STORED

    def get(self, topic: bytes, now: float) -> list[StoredRecord]:
        """Live (not withdrawn) records of `topic`, the freshest (latest expiry) first.

        With a wall clock, records that have expired where they were made are left out
        even if their local lifetime has not run out (this machine slept: monotonic
        time stopped), since every reader would refuse them.

        Raises:
            TypeError, ValueError: `topic` is not a 32-byte topic id.
        """
        topic = check_topic_id(topic)
        self.expire(now)
        entries = self._topics.get(topic)
        if not entries:
            return []
        wall_clock = self._wall_clock
        wall_now = wall_clock() if wall_clock is not None else None
        live = [
            s
            for s in entries.values()
            if not s.withdrawn
            and (wall_now is None or not outside_clock_window(s.record, wall_now))
        ]
        live.sort(key=lambda s: s.expires, reverse=True)
        return live

    def entry(self, topic: bytes, public_key: bytes) -> StoredRecord | None:
        """What is stored for this announcer under `topic` (a tombstone included);
        call `expire` first for a live view."""
        entries = self._topics.get(check_topic_id(topic))
        return None if entries is None else entries.get(public_key)

    def has(self, topic: bytes, public_key: bytes) -> bool:
        entries = self._topics.get(check_topic_id(topic))
        return entries is not None and public_key in entries

    def topics(self) -> list[bytes]:
        return list(self._topics)

    def expire(self, now: float) -> None:
        """Drop every record whose lifetime has passed."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires, topic, key = heapq.heappop(heap)
            entries = self._topics.get(topic)
            stored = None if entries is None else entries.get(key)
            if stored is not None and stored.expires == expires:
                self._remove(topic, key)
                self.statistics.expired += 1

    def next_expiry(self) -> float | None:
        """When the next record may expire (a stale heap entry may make this early)."""
        return self._heap[0][0] if self._heap else None

    # ------------------------------------------------------------ internals

    def _remove(self, topic: bytes, key: bytes) -> None:
        entries = self._topics[topic]
        del entries[key]
        self._count -= 1
        if not entries:
            del self._topics[topic]

    def _drop_topic(self, topic: bytes) -> None:
        entries = self._topics.pop(topic)
        self._count -= len(entries)
        self.statistics.evicted += len(entries)

    def _evict_oldest(self) -> None:
        while self._heap:
            expires, topic, key = heapq.heappop(self._heap)
            entries = self._topics.get(topic)
            stored = None if entries is None else entries.get(key)
            if stored is not None and stored.expires == expires:
                self._remove(topic, key)
                self.statistics.evicted += 1
                return
        # The heap always holds an entry for every record; reaching here is a bug.
        raise AssertionError("record count and expiry heap disagree")

    def _compact(self) -> None:
        if len(self._heap) > _HEAP_SLACK * self._count + 64:
            self._heap = [
                (s.expires, t, k) for t, entries in self._topics.items() for k, s in entries.items()
            ]
            heapq.heapify(self._heap)
