"""Regression tests for DHT bugs a review found: sans-IO engine and store with explicit
times, the Trio shell in virtual time."""

from __future__ import annotations

from pinecone_trio.dht import wire
from pinecone_trio.dht.constants import HANDOFF_RATE, MAX_HANDOFF_RECORDS, SUCCESSOR_TTL
from pinecone_trio.dht.crypto import record_signable, topic_id
from pinecone_trio.dht.engine import Action, DhtEngine, SendExact
from pinecone_trio.identity import Identity


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
