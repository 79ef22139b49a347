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

from .constants import KEY_SIZE

TOPIC_DOMAIN: Final = b"pinecone-trio dht topic v1\x00"
RECORD_DOMAIN: Final = b"pinecone-trio dht record v1\x00"

_RECORD_FIELDS: Final = struct.Struct(">QIH")


def topic_id(topic: bytes | bytearray | memoryview | str) -> bytes:
    """The 32-byte DHT key of a topic (str topics are UTF-8 encoded).

    Raises:
        TypeError: if `topic` is neither str nor bytes-like (`bytes(3)` would quietly
            name the topic of three zero bytes).
    """
    if isinstance(topic, str):
        raw = topic.encode()
    elif isinstance(topic, (bytes, bytearray, memoryview)):
        raw = bytes(topic)
    else:
        raise TypeError(f"a DHT topic is str or bytes, not {type(topic).__name__}")
    return hashlib.blake2b(TOPIC_DOMAIN + raw, digest_size=KEY_SIZE).digest()


def check_topic_id(topic: object) -> bytes:
    """`topic` as the 32 bytes of a topic id (what `topic_id` returns).

    Raises:
        TypeError: if `topic` is not bytes-like.
        ValueError: if it is not 32 bytes long.
    """
    if not isinstance(topic, (bytes, bytearray, memoryview)):
        raise TypeError(f"a DHT topic id is 32 bytes (topic_id(topic)), not {type(topic).__name__}")
    raw = bytes(topic)
    if len(raw) != KEY_SIZE:
        raise ValueError(f"a DHT topic id is {KEY_SIZE} bytes, not {len(raw)}")
    return raw


def record_signable(topic: bytes, public_key: bytes, seq: int, ttl: int, data: bytes) -> bytes:
    """The bytes an announcer signs for one record."""
    return (
        RECORD_DOMAIN
        + bytes(topic)
        + bytes(public_key)
        + _RECORD_FIELDS.pack(seq, ttl, len(data))
        + bytes(data)
    )
