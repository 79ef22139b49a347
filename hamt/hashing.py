"""Key paths: `/`-separated keys → fixed-width trie paths of 4-bit chunks.

Theory of operation
-------------------
A key such as ``"users/alice/avatar"`` is split on ``/``. Each component is hashed
with keyed BLAKE2b (8 bytes, keyed with a per-HAMT key, see `derive_hash_key`); the
last component keeps all 8 bytes and the earlier ones their first 4. The hashes are
concatenated, cut or zero-padded to `PATH_HASH_BYTES` and read as one big-endian
integer whose 4-bit chunks, most significant first, pick the child at each trie
level. Every key under ``users/alice/`` therefore starts with the same 16 chunks and
lives in one subtree: listing a path prefix walks that subtree only.

Equal paths for different keys are possible (a truncated deep path, an injected
hash function in tests, or a 64-bit collision); they meet in a collision bucket at
`MAX_DEPTH`, where full keys are compared. A wrong answer can therefore never come
from the hash, only slower lookups.

The component hash is injectable (`ComponentHash`) so tests can force collisions,
as hypertrie's collision tests do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Final

from .constants import (
    CHUNK_BITS,
    CHUNK_MASK,
    COMPONENT_HASH_BYTES,
    DIR_HASH_BYTES,
    HASH_KEY_BYTES,
    MAX_KEY_BYTES,
    PATH_BITS,
    PATH_HASH_BYTES,
)
from .errors import InvalidKeyError

__all__ = ["ComponentHash", "Hasher", "check_key", "derive_hash_key", "split_prefix"]

#: A component hash: bytes of one path component -> at least COMPONENT_HASH_BYTES bytes.
ComponentHash = Callable[[bytes], bytes]

_PERSON: Final = b"hamt-key-v1"


def derive_hash_key(log_key: bytes, salt: bytes) -> bytes:
    """Return the per-HAMT BLAKE2b key: a keyed hash of the header's salt under the log key.

    Every HAMT gets its own key, so nobody can precompute colliding keys for all HAMTs
    at once (hypertrie's SipHash with an all-zero key allows exactly that).
    """
    return hashlib.blake2b(
        salt, key=log_key[:64], digest_size=HASH_KEY_BYTES, person=_PERSON
    ).digest()


def check_key(key: object) -> str:
    """Return `key` if it is a valid path key, else raise `InvalidKeyError`."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"keys are str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError("empty key")
    if len(key) > MAX_KEY_BYTES or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key longer than {MAX_KEY_BYTES} bytes")
    if "" in key.split("/"):
        raise InvalidKeyError(f"empty path component in {key!r}")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(f"key is not valid UTF-8: {key!r}") from exc
    return key


def split_prefix(prefix: str) -> list[str]:
    """Return the components of a listing prefix (``""`` lists everything)."""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefixes are str, not {type(prefix).__name__}")
    stripped = prefix.strip("/")
    if not stripped:
        return []
    check_key(stripped)
    return stripped.split("/")


class Hasher:
    """Maps keys and prefixes to trie paths under one hash key (or an injected hash)."""

    __slots__ = ("_component",)

    def __init__(self, hash_key: bytes, component_hash: ComponentHash | None = None) -> None:
        if component_hash is None:
            if len(hash_key) != HASH_KEY_BYTES:
                raise ValueError(f"hash key must be {HASH_KEY_BYTES} bytes")

            def _blake(data: bytes, _key: bytes = hash_key) -> bytes:
                return hashlib.blake2b(data, key=_key, digest_size=COMPONENT_HASH_BYTES).digest()

            component_hash = _blake
        self._component = component_hash

    def _hash(self, component: str) -> bytes:
        digest = self._component(component.encode("utf-8"))
        if len(digest) < COMPONENT_HASH_BYTES:
            raise ValueError(f"component hash returned {len(digest)} bytes")
        return digest

    def path(self, key: str) -> int:
        """Return the trie path of a (validated) key as a `PATH_BITS`-bit integer."""
        parts = key.split("/")
        if len(parts) == 1:
            raw = self._hash(key)[:COMPONENT_HASH_BYTES]
        else:
            pieces = [self._hash(p)[:DIR_HASH_BYTES] for p in parts[:-1]]
            pieces.append(self._hash(parts[-1])[:COMPONENT_HASH_BYTES])
            raw = b"".join(pieces)[:PATH_HASH_BYTES]
        return int.from_bytes(raw, "big") << (PATH_BITS - 8 * len(raw))

    def prefix_path(self, components: list[str]) -> tuple[int, int]:
        """Return ``(path, depth)``: every key under `components` starts with these chunks."""
        raw = b"".join(self._hash(p)[:DIR_HASH_BYTES] for p in components)[:PATH_HASH_BYTES]
        depth = min(len(raw) * 8 // CHUNK_BITS, PATH_BITS // CHUNK_BITS)
        return int.from_bytes(raw, "big") << (PATH_BITS - 8 * len(raw)) if raw else 0, depth


def chunk(path: int, depth: int) -> int:
    """Return the 4-bit chunk of `path` that picks the child at `depth`."""
    return (path >> (PATH_BITS - CHUNK_BITS * (depth + 1))) & CHUNK_MASK
