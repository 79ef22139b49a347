"""Replication capabilities: proving you know a log's key without sending it.

A channel is named by the log's *discovery key* (a keyed hash of the key), so an
eavesdropper learns which log is replicated but not its key. When opening a channel
each side also sends a capability

    cap = BLAKE2b-256(key = session_id, msg = NS_REPLICATE_<role> || log key)

as hypercore 11 does (research notes §3), where `session_id` is the Noise handshake
hash of the link and `<role>` is INITIATOR or RESPONDER. Binding to the handshake
hash makes a capability useless on any other link; the role stops a peer from
reflecting our own capability back at us.

Streams without a handshake hash (a plain memory stream, an app's own transport):
both sides send a fresh random 32-byte nonce in `Hello`, and
`session_id = BLAKE2b-256(key = "hyperlog/replicate/v1", msg = lo || hi)` over the two
nonces in sorted order. That still prevents replay (a capability seen on one stream
is worthless on the next) and never reveals the key, but on an unauthenticated stream
a live man-in-the-middle can relay both sides' capabilities; only an authenticated
stream (pass its handshake hash) rules that out. Roles come from the same nonce
order unless you pass `initiator=` explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

_NS = hashlib.blake2b(b"hypercore", digest_size=32).digest()
#: hypercore's namespace 1 (REPLICATE_INITIATOR), checked against the JS vectors.
NS_REPLICATE_INITIATOR: Final = hashlib.blake2b(_NS + b"\x01", digest_size=32).digest()
#: hypercore's namespace 2 (REPLICATE_RESPONDER).
NS_REPLICATE_RESPONDER: Final = hashlib.blake2b(_NS + b"\x02", digest_size=32).digest()
_NONCE_SESSION_KEY: Final = b"hyperlog/replicate/v1"


def capability(session_id: bytes, log_key: bytes, *, initiator: bool) -> bytes:
    """Return the 32-byte capability for `log_key` on the session `session_id`.

    Args:
        session_id: the link's handshake hash (1 to 64 bytes) or `nonce_session_id`.
        log_key: the log's 32-byte public key.
        initiator: whether the *sender* of this capability is the initiator.
    """
    ns = NS_REPLICATE_INITIATOR if initiator else NS_REPLICATE_RESPONDER
    return hashlib.blake2b(ns + log_key, key=session_id, digest_size=32).digest()


def check_capability(cap: bytes, session_id: bytes, log_key: bytes, *, initiator: bool) -> bool:
    """Return whether `cap` is the capability the sender (of role `initiator`) owes us."""
    return hmac.compare_digest(cap, capability(session_id, log_key, initiator=initiator))


def nonce_session_id(a: bytes, b: bytes) -> bytes:
    """Return the session id two Hello nonces define (order-independent)."""
    lo, hi = sorted((a, b))
    return hashlib.blake2b(lo + hi, key=_NONCE_SESSION_KEY, digest_size=32).digest()
