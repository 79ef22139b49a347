"""DHT record store and wire codecs, without Trio: expiry, bounds, signatures, decoding."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinecone_trio.dht import wire
from pinecone_trio.dht.constants import (
    MAX_CLOCK_SKEW,
    MAX_LOOKUP_RECORDS,
    MAX_MESSAGE_SIZE,
    MAX_RECORD_DATA,
    MAX_RECORD_TTL,
    TOMBSTONE_TTL,
)
from pinecone_trio.dht.crypto import record_signable, topic_id
from pinecone_trio.dht.store import PutResult, RecordStore, verify_record
from pinecone_trio.errors import DecodeError
from pinecone_trio.identity import Identity

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
TOPIC = topic_id("chat")


def signed(
    who: Identity, topic: bytes = TOPIC, seq: int = 1, ttl: int = 100, data: bytes = b""
) -> wire.Record:
    key = bytes(who.public_key)
    sig = who.sign(record_signable(topic, key, seq, ttl, data))
    return wire.Record(topic, key, seq, ttl, data, sig)


# ---------------------------------------------------------------- crypto


def test_topic_id_is_domain_separated_blake2b() -> None:
    import hashlib

    assert topic_id("chat") == topic_id(b"chat")
    assert len(topic_id("chat")) == 32
    assert topic_id("chat") != hashlib.blake2b(b"chat", digest_size=32).digest()
    assert topic_id("chat") != topic_id("chat2")


def test_signature_covers_every_field() -> None:
    record = signed(ALICE, data=b"port 7000")
    assert verify_record(record)
    for change in (
        {"topic": topic_id("other")},
        {"seq": 2},
        {"ttl": 101},
        {"data": b"port 7001"},
        {"public_key": bytes(BOB.public_key)},
    ):
        fields = {
            "topic": record.topic,
            "public_key": record.public_key,
            "seq": record.seq,
            "ttl": record.ttl,
            "data": record.data,
            "signature": record.signature,
        }
        fields.update(change)
        assert not verify_record(wire.Record(**fields))  # type: ignore[arg-type]


# ---------------------------------------------------------------- store


WALL = 1_800_000_000.0  # the store's wall clock at now = 0 (2027)


def _signed_at(wall: float, ttl: int = 100, who: Identity = ALICE) -> wire.Record:
    return signed(who, seq=int(wall * 1e6), ttl=ttl)


def test_a_record_replayed_after_it_expired_at_origin_is_refused() -> None:
    # Before: lifetimes were only local, so once the record (or the tombstone of its
    # withdrawal) had expired here, the old signed bytes could be stored again.
    wall = [WALL]
    store = RecordStore(wall_clock=lambda: wall[0])
    record = _signed_at(WALL)
    assert store.put(record, 0) is PutResult.STORED
    later = 100 + MAX_CLOCK_SKEW + 1  # its 100 s of life, plus the skew tolerated
    wall[0] = WALL + later
    assert store.get(TOPIC, later) == []
    assert store.put(record, later) is PutResult.STALE
    # ... while one signed now is welcome, and so is one from a clock 9 minutes slow.
    assert store.put(_signed_at(WALL + later), later) is PutResult.STORED
    slow = RecordStore(wall_clock=lambda: WALL)
    assert slow.put(_signed_at(WALL - 540), 0) is PutResult.STORED


def test_a_store_that_slept_does_not_serve_records_expired_at_origin() -> None:
    # Monotonic time stops while the machine sleeps, so local lifetimes run on; every
    # reader would refuse such records as replays (found by review).
    wall = [WALL]
    store = RecordStore(wall_clock=lambda: wall[0])
    assert store.put(_signed_at(WALL), 0) is PutResult.STORED
    assert len(store.get(TOPIC, 1)) == 1
    wall[0] += 3_600  # an hour asleep; `now` (monotonic) moved one second
    assert store.get(TOPIC, 2) == []


def test_the_origin_check_reads_only_timestamps_and_only_with_a_clock() -> None:
    old = _signed_at(WALL - 10 * MAX_CLOCK_SKEW)
    assert RecordStore().put(old, 0) is PutResult.STORED  # no clock: not judged
    counter = signed(ALICE, seq=7)  # below SEQ_TIMESTAMP_FLOOR: a counter
    assert RecordStore(wall_clock=lambda: WALL).put(counter, 0) is PutResult.STORED
    assert RecordStore(wall_clock=lambda: WALL).put(old, 0) is PutResult.STALE
    # A withdrawal is judged by its tombstone's life.
    withdrawal = _signed_at(WALL - TOMBSTONE_TTL - MAX_CLOCK_SKEW + 5, ttl=0)
    assert RecordStore(wall_clock=lambda: WALL).put(withdrawal, 0) is PutResult.STORED


def test_store_keeps_until_expiry_measured_locally() -> None:
    store = RecordStore()
    assert store.put(signed(ALICE, ttl=100), now=10.0) is PutResult.STORED
    assert [s.record.public_key for s in store.get(TOPIC, 109.9)] == [bytes(ALICE.public_key)]
    assert store.get(TOPIC, 110.0) == []
    assert len(store) == 0
    assert store.statistics.expired == 1


def test_store_caps_ttl_and_replica_remaining() -> None:
    store = RecordStore()
    store.put(signed(ALICE, ttl=10**6), now=0.0)
    assert store.get(TOPIC, 0.0)[0].expires == MAX_RECORD_TTL
    store.put(signed(BOB, ttl=100), now=0.0, remaining=7)
    assert {s.expires for s in store.get(TOPIC, 0.0)} == {MAX_RECORD_TTL, 7.0}


def test_store_refuses_bad_signature_and_stores_nothing() -> None:
    store = RecordStore()
    good = signed(ALICE)
    forged = wire.Record(good.topic, good.public_key, 2, good.ttl, b"evil", good.signature)
    assert store.put(forged, 0.0) is PutResult.BAD_SIGNATURE
    other_key = wire.Record(
        good.topic, bytes(BOB.public_key), good.seq, good.ttl, good.data, good.signature
    )
    assert store.put(other_key, 0.0) is PutResult.BAD_SIGNATURE
    assert len(store) == 0 and store.statistics.bad_signatures == 2


def test_sequence_numbers_order_records() -> None:
    store = RecordStore()
    assert store.put(signed(ALICE, seq=5, data=b"v5"), 0.0) is PutResult.STORED
    # A replay of the same record does not extend its life.
    assert store.put(signed(ALICE, seq=5, data=b"v5"), 50.0) is PutResult.DUPLICATE
    assert store.get(TOPIC, 50.0)[0].expires == 100.0
    # Older, or the same seq with other contents: refused.
    assert store.put(signed(ALICE, seq=4, data=b"v4"), 1.0) is PutResult.STALE
    assert store.put(signed(ALICE, seq=5, data=b"other"), 1.0) is PutResult.STALE
    # Newer replaces and renews.
    assert store.put(signed(ALICE, seq=6, data=b"v6"), 60.0) is PutResult.STORED
    [entry] = store.get(TOPIC, 60.0)
    assert entry.record.data == b"v6" and entry.expires == 160.0


def test_withdrawal_hides_record_and_refuses_replays() -> None:
    store = RecordStore()
    store.put(signed(ALICE, seq=1), 0.0)
    store.put(signed(BOB, seq=1), 0.0)
    assert store.put(signed(ALICE, seq=2, ttl=0), 1.0) is PutResult.STORED
    assert [s.record.public_key for s in store.get(TOPIC, 1.0)] == [bytes(BOB.public_key)]
    assert store.put(signed(ALICE, seq=1), 2.0) is PutResult.STALE
    assert len(store) == 2  # the tombstone counts against the bounds
    store.expire(1.0 + TOMBSTONE_TTL)
    assert not store.has(TOPIC, bytes(ALICE.public_key))


def test_store_bounds_evict_the_oldest() -> None:
    ids = [Identity.from_seed(bytes([i]) * 32) for i in range(12)]
    store = RecordStore(max_topics=3, max_per_topic=4, max_total=6)
    # Per topic: the record closest to expiry goes.
    for i in range(5):
        store.put(signed(ids[i], ttl=100 + i), now=0.0)
    keys = {s.record.public_key for s in store.get(TOPIC, 0.0)}
    assert len(keys) == 4 and bytes(ids[0].public_key) not in keys
    # In total: the oldest anywhere goes.
    t2 = topic_id("two")
    for i in range(5, 8):
        store.put(signed(ids[i], topic=t2, ttl=200), now=1.0)
    assert len(store) == 6
    assert bytes(ids[1].public_key) not in {s.record.public_key for s in store.get(TOPIC, 1.0)}
    # Topics: the least recently announced topic goes whole.
    store.put(signed(ids[8], topic=topic_id("three"), ttl=250), now=2.0)
    store.put(signed(ids[9], topic=t2, ttl=250), now=2.0)
    assert store.topic_count == 3
    store.put(signed(ids[10], topic=topic_id("four"), ttl=250), now=2.0)
    assert store.topic_count == 3
    assert store.get(TOPIC, 2.0) == []  # TOPIC was the least recently announced
    assert len(store) <= 6
    assert store.statistics.evicted >= 3


def test_an_eviction_that_empties_the_new_records_own_topic_loses_nothing() -> None:
    # The store is full and its oldest record is the only one of the topic a new record
    # goes into: the eviction deleted that topic, and the new record was written into
    # the detached dict (lost) while the count still grew, until an AssertionError.
    ids = [Identity.from_seed(bytes([40 + i]) * 32) for i in range(4)]
    t1, t2 = topic_id("t1"), topic_id("t2")
    store = RecordStore(max_total=2)
    assert store.put(signed(ids[0], topic=t1, ttl=150), now=0.0) is PutResult.STORED
    assert store.put(signed(ids[1], topic=t2, ttl=150), now=10.0) is PutResult.STORED
    assert store.put(signed(ids[2], topic=t1, ttl=150), now=20.0) is PutResult.STORED
    assert store.has(t1, bytes(ids[2].public_key)) and len(store) == 2
    assert [s.record.public_key for s in store.get(t1, 20.0)] == [bytes(ids[2].public_key)]
    store.expire(1000.0)
    assert len(store) == 0 and store.topic_count == 0
    for i, who in enumerate(ids):  # full again, evicting as it goes: never an error
        assert store.put(signed(who, topic=t2, seq=5, ttl=150), now=1000.0 + i) is PutResult.STORED
    assert len(store) == 2


def test_expiry_heap_stays_bounded_under_refreshes() -> None:
    store = RecordStore()
    for seq in range(1, 2000):
        store.put(signed(ALICE, seq=seq), now=float(seq))
    assert len(store) == 1
    assert len(store._heap) <= 2 * len(store) + 64


# ---------------------------------------------------------------- wire


def _messages() -> list[wire.Message]:
    r = signed(ALICE, data=b"x" * MAX_RECORD_DATA)
    return [
        wire.Announce(2**64 - 1, r),
        wire.AnnounceAck(7, wire.ACK_RATE_LIMITED),
        wire.Store(r, 99, 1, wire.DOWN),
        wire.Lookup(0, TOPIC),
        wire.Lookup(1, TOPIC, bytes(ALICE.public_key)),
        wire.LookupReply(3, TOPIC, ((r, 5), (signed(BOB), 0)), (bytes(BOB.public_key),)),
        wire.LookupReply(4, TOPIC, (), (), closest=True),
        wire.Successor(),
    ]


@pytest.mark.parametrize("message", _messages(), ids=lambda m: type(m).__name__)
def test_roundtrip(message: wire.Message) -> None:
    assert wire.decode(wire.encode(message)) == message


def test_full_reply_fits_one_datagram() -> None:
    r = signed(ALICE, data=b"x" * MAX_RECORD_DATA)
    reply = wire.LookupReply(1, TOPIC, tuple((r, 1) for _ in range(MAX_LOOKUP_RECORDS)), ())
    data = wire.encode_lookup_reply(reply)
    assert len(data) <= MAX_MESSAGE_SIZE
    decoded = wire.decode(data)
    assert isinstance(decoded, wire.LookupReply)
    assert len(decoded.records) == MAX_LOOKUP_RECORDS


@pytest.mark.parametrize(
    "obj",
    [
        [],
        [wire.LOOKUP],
        [99, 1, 0, TOPIC, b""],
        [wire.LOOKUP, 2, 0, TOPIC, b""],
        [wire.LOOKUP, True, 0, TOPIC, b""],
        [wire.LOOKUP, 1, -1, TOPIC, b""],
        [wire.LOOKUP, 1, 1.5, TOPIC, b""],
        [wire.LOOKUP, 1, 0, TOPIC[:31], b""],
        [wire.LOOKUP, 1, 0, TOPIC, b"short"],
        [wire.LOOKUP, 1, 0, TOPIC],
        [wire.LOOKUP, 1, 0, TOPIC, b"", "extra"],
        [wire.ANNOUNCE_ACK, 1, 0, 9],
        [wire.SUCCESSOR, 1, 0],
        [wire.STORE, 1, [TOPIC] * 6, 1, 0, 1],
        [wire.STORE, 1, [TOPIC, TOPIC, 1, 1, b"", b"s" * 64], 1, 0, 3],
        [wire.STORE, 1, [TOPIC, TOPIC, 1, 1, b"", b"s" * 64], 1, 9, 1],
        [wire.LOOKUP_REPLY, 1, 0, TOPIC, [], [TOPIC] * 5, False],
        [wire.LOOKUP_REPLY, 1, 0, TOPIC, [], [], 1],
        [wire.LOOKUP_REPLY, 1, 0, TOPIC, [], []],
        [
            wire.LOOKUP_REPLY,
            1,
            0,
            TOPIC,
            [[[topic_id("x"), TOPIC, 1, 1, b"", b"s" * 64], 1]],
            [],
            False,
        ],
        {"a": 1},
        "text",
    ],
)
def test_invalid_messages_raise_decode_error(obj: object) -> None:
    with pytest.raises(DecodeError):
        wire.decode(msgpack.packb(obj))


def test_oversized_input_refused_before_decoding() -> None:
    with pytest.raises(DecodeError, match="bytes"):
        wire.decode(b"\x90" * (MAX_MESSAGE_SIZE + 1))
    with pytest.raises(DecodeError):
        wire.decode(msgpack.packb([wire.LOOKUP, 1, 0, b"x" * (MAX_RECORD_DATA + 1)]))


@given(st.binary(max_size=2048))
def test_decoder_never_crashes_on_garbage(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wire.decode(data)


@given(st.sampled_from(_messages()), st.data())
def test_decoder_survives_mutations(message: wire.Message, data: st.DataObject) -> None:
    raw = bytearray(wire.encode(message))
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decoded = wire.decode(bytes(raw[:cut]))
    except DecodeError:
        return
    # Whatever decodes re-encodes to a valid message (every field was validated).
    assert wire.decode(wire.encode(decoded)) == decoded
