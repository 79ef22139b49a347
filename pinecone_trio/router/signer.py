"""Signing and verification for the router: real ed25519, or a null signer.

Theory of operation
-------------------
The engine signs exactly two things: its entry in a root announcement and its
bootstraps, and verifies the same (research §3.5, §3.6). Everything goes through the
`Signer` protocol so that large simulations can use `NullSigner` (Pinecone's
`PINECONE_DISABLE_SIGNATURES`): it produces 64 zero bytes and accepts every signature.

`Ed25519Signer` verifies with libsodium and remembers signatures it has verified, in a
bounded `VerifyCache` keyed by the signature with the key and message compared on hit.
Caching is safe: ed25519 verification is a pure function of (key, message, signature),
and a hit requires all three to match exactly. The cache pays off because the same
announcement prefix reaches a node over several peers and again on every refresh. In a
simulator several signers may share one cache (a modelling shortcut: it removes the
repeated cost, not any check).
"""

from __future__ import annotations

import hashlib
from typing import Final, Protocol, final

import nacl.bindings
import nacl.exceptions

from ..identity import Identity
from .constants import SIGNATURE_SIZE, VERIFY_CACHE_ENTRIES

__all__ = ["Ed25519Signer", "NullSigner", "Signer", "VerifyCache"]

_ZERO_SIGNATURE: Final = bytes(SIGNATURE_SIZE)


class Signer(Protocol):
    """What the router needs: its own key, signing, and verification of others."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes:
        """Our 64-byte signature of `message`."""
        ...

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        """Whether `signature` is `public_key`'s signature of `message`."""
        ...


@final
class VerifyCache:
    """A bounded memory of good signatures: signature -> (key, digest of the message).

    It keeps a 32-byte BLAKE2b digest, not the message: announcement prefixes run up to
    64 KB each, and a peer could otherwise fill `max_entries` of them (gigabytes) with
    validly signed announcements it makes itself. Oldest entries are evicted first.
    `hits` and `misses` count lookups.
    """

    __slots__ = ("_entries", "hits", "max_entries", "misses")

    def __init__(self, max_entries: int = VERIFY_CACHE_ENTRIES) -> None:
        self._entries: dict[bytes, tuple[bytes, bytes]] = {}
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def check(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        hit = self._entries.get(signature)
        if hit is not None and hit[0] == public_key and hit[1] == _digest(message):
            self.hits += 1
            return True
        self.misses += 1
        return False

    def add(self, public_key: bytes, message: bytes, signature: bytes) -> None:
        entries = self._entries
        if len(entries) >= self.max_entries:
            del entries[next(iter(entries))]
        entries[signature] = (public_key, _digest(message))

    def __len__(self) -> int:
        return len(self._entries)


def _digest(message: bytes) -> bytes:
    return hashlib.blake2b(message, digest_size=32).digest()


@final
class Ed25519Signer:
    """Real ed25519 signing with `identity` and cached verification."""

    __slots__ = ("_cache", "_identity", "_public_key")

    def __init__(self, identity: Identity, *, cache: VerifyCache | None = None) -> None:
        self._identity = identity
        self._public_key = bytes(identity.public_key)
        self._cache = cache if cache is not None else VerifyCache()

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def cache(self) -> VerifyCache:
        return self._cache

    def sign(self, message: bytes) -> bytes:
        return self._identity.sign(message)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        if len(signature) != SIGNATURE_SIZE or len(public_key) != 32:
            return False
        cache = self._cache
        if cache.check(public_key, message, signature):
            return True
        if not _verify(public_key, message, signature):
            return False
        cache.add(public_key, message, signature)
        return True


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    except nacl.exceptions.CryptoError:
        return False
    return True


@final
class NullSigner:
    """No cryptography: signs with zeros and accepts everything. Simulations only."""

    __slots__ = ("_public_key",)

    def __init__(self, public_key: bytes) -> None:
        self._public_key = bytes(public_key)

    @property
    def public_key(self) -> bytes:
        return self._public_key

    def sign(self, message: bytes) -> bytes:
        return _ZERO_SIGNATURE

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        return True
