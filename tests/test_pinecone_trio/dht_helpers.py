"""Keys and topics for DHT tests: a topic's home is the smallest key >= its id (else
the highest key), so a test that wants a given node to be the home picks its topic."""

from __future__ import annotations

import itertools

from pinecone_trio import Identity
from pinecone_trio.dht import topic_id


def sorted_identities(n: int) -> list[Identity]:
    """`n` fresh identities in key order."""
    return sorted((Identity.generate() for _ in range(n)), key=lambda i: i.public_key)


def topic_above(low: Identity, high: Identity | None = None, prefix: str = "t") -> str:
    """A topic whose id is above `low`'s key and at most `high`'s (any, without
    `high`): with no key between them, `high` (or the next key above `low`) is its
    home. Ends: the names are hashes, a fair share of them falls in any gap."""
    for n in itertools.count():
        topic = f"{prefix}{n}"
        tid = topic_id(topic)
        if bytes(low.public_key) < tid and (high is None or tid <= bytes(high.public_key)):
            return topic
    raise AssertionError("unreachable")  # pragma: no cover


def three_keys_and_a_topic(prefix: str = "t") -> tuple[Identity, Identity, Identity, str]:
    """Identities a < b < c and a topic whose home is b (a < topic id <= b)."""
    a, b, c = sorted_identities(3)
    return a, b, c, topic_above(a, b, prefix)
