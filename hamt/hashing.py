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
from the hash, only slower lookups. The deep path is the one to know about: the
hashes of `FULL_PATH_DIRS` (8) directory components fill the whole path, so every key
under a directory that deep has the same path and they all share one bucket (at most
`MAX_BUCKET_ENTRIES` keys, each put rewriting the whole bucket). The layout is the
stored format (it decides where every existing entry sits), so it stays as it is.

The component hash is injectable (`ComponentHash`) so tests can force collisions,
as hypertrie's collision tests do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Final

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

__all__ = [
    "FULL_PATH_DIRS",
    "ComponentHash",
    "Hasher",
    "check_key",
    "derive_hash_key",
    "full_path_directory",
    "split_prefix",
]

#: A component hash: bytes of one path component -> at least COMPONENT_HASH_BYTES bytes.
ComponentHash = Callable[[bytes], bytes]

_PERSON: Final = b"hamt-key-v1"
#: How many directory-component hashes a `Hasher` remembers.
MAX_CACHED_DIRS: Final = 4096
_ONE_COMPONENT_SHIFT: Final = PATH_BITS - 8 * COMPONENT_HASH_BYTES
#: Directory levels whose hashes fill a whole path: every key under a directory this
#: deep has the same path (the directory's), so they all share one collision bucket.
FULL_PATH_DIRS: Final = -(-PATH_HASH_BYTES // DIR_HASH_BYTES)


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
    if len(key) > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key longer than {MAX_KEY_BYTES} bytes")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(f"key is not valid UTF-8: {key!r}") from exc
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key longer than {MAX_KEY_BYTES} bytes")
    if "/" in key and (key[0] == "/" or key[-1] == "/" or "//" in key):
        raise InvalidKeyError(f"empty path component in {key!r}")
    return key


def full_path_directory(key: str) -> str | None:
    """Return the directory whose hashes make up all of `key`'s path, or None.

    That is its first `FULL_PATH_DIRS` components when `key` has at least that many
    directory components: every key under that directory has the same trie path.
    """
    parts = key.split("/", FULL_PATH_DIRS)
    return "/".join(parts[:FULL_PATH_DIRS]) if len(parts) > FULL_PATH_DIRS else None


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
    """Maps keys and prefixes to trie paths under one hash key (or an injected hash).

    The keyed BLAKE2b state is set up once and copied per component (keying costs a
    compression of its own), and the hashes of directory components, which many keys
    share, are remembered (at most `MAX_CACHED_DIRS` of them).
    """

    __slots__ = ("_base", "_component", "_dirs")

    def __init__(self, hash_key: bytes, component_hash: ComponentHash | None = None) -> None:
        self._base: Any = None
        if component_hash is None:
            if len(hash_key) != HASH_KEY_BYTES:
                raise ValueError(f"hash key must be {HASH_KEY_BYTES} bytes")
            self._base = hashlib.blake2b(key=hash_key, digest_size=COMPONENT_HASH_BYTES)
            component_hash = self._blake
        self._component = component_hash
        self._dirs: dict[str, bytes] = {}

    def _blake(self, data: bytes) -> bytes:
        h = self._base.copy()
        h.update(data)
        return h.digest()  # type: ignore[no-any-return]

    def _hash(self, component: str) -> bytes:
        digest = self._component(component.encode("utf-8"))
        if len(digest) < COMPONENT_HASH_BYTES:
            raise ValueError(f"component hash returned {len(digest)} bytes")
        return digest

    def _dir(self, component: str) -> bytes:
        digest = self._dirs.get(component)
        if digest is None:
            digest = self._hash(component)[:DIR_HASH_BYTES]
            if len(self._dirs) >= MAX_CACHED_DIRS:
                self._dirs.clear()
            self._dirs[component] = digest
        return digest

    def path(self, key: str) -> int:
        """Return the trie path of a (validated) key as a `PATH_BITS`-bit integer."""
        if "/" not in key:
            base = self._base
            if base is not None:
                h = base.copy()
                h.update(key.encode("utf-8"))
                return int.from_bytes(h.digest(), "big") << _ONE_COMPONENT_SHIFT
            raw = self._hash(key)[:COMPONENT_HASH_BYTES]
        else:
            parts = key.split("/")
            pieces = [self._dir(p) for p in parts[:-1]]
            pieces.append(self._hash(parts[-1])[:COMPONENT_HASH_BYTES])
            raw = b"".join(pieces)[:PATH_HASH_BYTES]
        return int.from_bytes(raw, "big") << (PATH_BITS - 8 * len(raw))

    def prefix_path(self, components: list[str]) -> tuple[int, int]:
        """Return ``(path, depth)``: every key under `components` starts with these chunks."""
        raw = b"".join(self._dir(p) for p in components)[:PATH_HASH_BYTES]
        depth = min(len(raw) * 8 // CHUNK_BITS, PATH_BITS // CHUNK_BITS)
        return int.from_bytes(raw, "big") << (PATH_BITS - 8 * len(raw)) if raw else 0, depth


def chunk(path: int, depth: int) -> int:
    """Return the 4-bit chunk of `path` that picks the child at `depth`."""
    return (path >> (PATH_BITS - CHUNK_BITS * (depth + 1))) & CHUNK_MASK
