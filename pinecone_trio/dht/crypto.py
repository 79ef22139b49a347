"""The bytes the DHT hashes and signs, each under its own domain string.

Topic id: ``BLAKE2b-256(TOPIC_DOMAIN || topic)``. Hashing keeps the keyspace uniform
(records spread evenly over the snake whatever the topic names look like) and keeps the
topic name itself off the wire; the domain string keeps a topic id from ever equalling
any other hash this project computes over the same bytes.

Record signable (fixed layout, never "whatever msgpack produced")::

    RECORD_DOMAIN (29 bytes) | topic id (32) | announcer key (32) | seq u64 BE
    | ttl u32 BE | data length u16 BE | data

A record with ttl 0 is a withdrawal: the same signable, so one signature check serves
both, and a withdrawal can only come from the announcer.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Final

TOPIC_DOMAIN: Final = b"pinecone-trio dht topic v1\x00"
RECORD_DOMAIN: Final = b"pinecone-trio dht record v1\x00"

_RECORD_FIELDS: Final = struct.Struct(">QIH")


def topic_id(topic: bytes | str) -> bytes:
    """The 32-byte DHT key of a topic (str topics are UTF-8 encoded)."""
    raw = topic.encode() if isinstance(topic, str) else bytes(topic)
    return hashlib.blake2b(TOPIC_DOMAIN + raw, digest_size=32).digest()


def record_signable(topic: bytes, public_key: bytes, seq: int, ttl: int, data: bytes) -> bytes:
    """The bytes an announcer signs for one record."""
    return (
        RECORD_DOMAIN
        + bytes(topic)
        + bytes(public_key)
        + _RECORD_FIELDS.pack(seq, ttl, len(data))
        + bytes(data)
    )
