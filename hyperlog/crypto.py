"""Hashes, namespaces, manifests, signables and ed25519 signatures (hypercore 11's bytes).

Theory of operation
-------------------
Every hash is BLAKE2b-256 (libsodium ``crypto_generichash``) and every integer inside a
hash is an unsigned 64-bit little-endian number. A one-byte type prefix separates the
three node kinds, so a leaf can never be passed off as a parent or a root list (the
second-preimage attack on plain Merkle trees)::

    leaf   = H(0x00 || u64(len(value)) || value)                       size = len(value)
    parent = H(0x01 || u64(left.size + right.size) || left.hash || right.hash)
    tree   = H(0x02 || for each full root: hash || u64(index) || u64(size))

The writer signs the *signable* of the whole current state (tree hash, length, fork),
so one ed25519 signature covers a whole append batch:

* manifest mode (hypercore 11's default): ``NS_TREE || key || tree || u64 length ||
  u64 fork`` (112 bytes), where ``key = H(NS_MANIFEST || encode(manifest))``;
* compat mode (hypercore 10's default): the key *is* the ed25519 public key and the
  signable is ``NS_TREE || tree || u64 length || u64 fork`` (80 bytes).

`Verifier` ties a key to the rule that checks signatures for it. Signatures are kept as
the raw 64 bytes everywhere in hyperlog; `encode_multisig` / `decode_multisig` convert
to and from hypercore's 68-byte single-signer wrapping when talking to JS code.

Nothing here does I/O. Pure functions plus small immutable classes.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, final

import nacl.bindings
import nacl.exceptions

from .errors import DecodeError, InvalidSignatureError, NotWritableError

__all__ = [
    "DEFAULT_NAMESPACE",
    "HASH_SIZE",
    "MAX_MANIFEST_SIGNERS",
    "MAX_MANIFEST_SIZE",
    "MAX_USER_DATA_SIZE",
    "NS_DEFAULT_ENCRYPTION",
    "NS_MANIFEST",
    "NS_REPLICATE_INITIATOR",
    "NS_REPLICATE_RESPONDER",
    "NS_TREE",
    "PUBLIC_KEY_SIZE",
    "SECRET_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "KeyPair",
    "Manifest",
    "ManifestSigner",
    "Prologue",
    "TreeNode",
    "Verifier",
    "compat_signable",
    "decode_multisig",
    "default_manifest",
    "discovery_key",
    "encode_multisig",
    "hash_bytes",
    "key_pair",
    "leaf_hash",
    "leaf_node",
    "legacy_signable",
    "manifest_hash",
    "parent_hash",
    "parent_node",
    "replication_capability",
    "sign",
    "tree_hash",
    "tree_signable",
    "verify",
]

HASH_SIZE = 32
SIGNATURE_SIZE = 64
PUBLIC_KEY_SIZE = 32
SECRET_KEY_SIZE = 64  # libsodium layout: seed || public key
SEED_SIZE = 32
#: Upper bound on an encoded manifest we accept from anyone (a v2 manifest with 64
#: signers, 64 linked keys and the largest user data stays well below it).
MAX_MANIFEST_SIZE = 16 * 1024
#: Most signers a manifest may list (hypercore has no limit; 64 covers any real quorum).
MAX_MANIFEST_SIGNERS = 64
#: Most bytes of manifest user data (v2 field).
MAX_USER_DATA_SIZE = 4096
#: Sizes are u64 on the wire and inside hashes.
MAX_U64 = (1 << 64) - 1

_U64 = struct.Struct("<Q")
_U64X2 = struct.Struct("<QQ")
_LEAF_TYPE = b"\x00"
_PARENT_TYPE = b"\x01"
_ROOT_TYPE = b"\x02"
_blake2b = hashlib.blake2b


@final
@dataclass(slots=True)
class TreeNode:
    """One node of the Merkle tree: its flat-tree index, byte size and hash.

    Treat it as immutable. It is a plain slotted dataclass, not a frozen one, because the
    append and verify paths create millions of them and frozen construction costs ~3x.
    """

    index: int
    size: int
    hash: bytes


class KeyPair(NamedTuple):
    """An ed25519 key pair in libsodium's layout (secret key = seed || public key)."""

    public_key: bytes
    secret_key: bytes | None


def hash_bytes(data: bytes) -> bytes:
    """Return BLAKE2b-256 of ``data``."""
    return _blake2b(data, digest_size=HASH_SIZE).digest()


def leaf_hash(value: bytes) -> bytes:
    """Return the hash of a block: ``H(0x00 || u64(len) || value)``."""
    h = _blake2b(_LEAF_TYPE + _U64.pack(len(value)), digest_size=HASH_SIZE)
    h.update(value)
    return h.digest()


def leaf_node(i: int, value: bytes) -> TreeNode:
    """Return the tree node of block ``i`` (flat-tree index ``2 * i``) holding ``value``."""
    h = _blake2b(_LEAF_TYPE + _U64.pack(len(value)), digest_size=HASH_SIZE)
    h.update(value)
    return TreeNode(2 * i, len(value), h.digest())


def parent_hash(left_hash: bytes, right_hash: bytes, size: int) -> bytes:
    """Return ``H(0x01 || u64(size) || left || right)``; ``size`` is the children's sum."""
    return _blake2b(
        _PARENT_TYPE + _U64.pack(size) + left_hash + right_hash, digest_size=HASH_SIZE
    ).digest()


def parent_node(index: int, left: TreeNode, right: TreeNode) -> TreeNode:
    """Return the parent node at ``index`` of ``left`` and ``right`` (left has the lower index).

    Raises:
        OverflowError: if the summed size does not fit in 64 bits.
    """
    size = left.size + right.size
    digest = _blake2b(
        _PARENT_TYPE + _U64.pack(size) + left.hash + right.hash, digest_size=HASH_SIZE
    ).digest()
    return TreeNode(index, size, digest)


def tree_hash(roots: Iterable[TreeNode]) -> bytes:
    """Return the hash over the full roots, left to right: ``H(0x02 || (hash, index, size)*)``."""
    h = _blake2b(_ROOT_TYPE, digest_size=HASH_SIZE)
    pack = _U64X2.pack
    for node in roots:
        h.update(node.hash)
        h.update(pack(node.index, node.size))
    return h.digest()


# --- namespaces ------------------------------------------------------------------------

_NS_BASE = hash_bytes(b"hypercore")


def _namespace(i: int) -> bytes:
    return hash_bytes(_NS_BASE + bytes((i,)))


#: Prefix of every tree signable.
NS_TREE = _namespace(0)
#: Replication capability namespaces (initiator / responder side).
NS_REPLICATE_INITIATOR = _namespace(1)
NS_REPLICATE_RESPONDER = _namespace(2)
#: Prefix of the manifest hash (the log key in manifest mode).
NS_MANIFEST = _namespace(3)
#: The signer namespace of the default manifest.
DEFAULT_NAMESPACE = _namespace(4)
#: hypercore's block-encryption namespace (hyperlog does not encrypt blocks).
NS_DEFAULT_ENCRYPTION = _namespace(5)


def discovery_key(key: bytes) -> bytes:
    """Return the discovery key: BLAKE2b-256 keyed with the log key over ``b"hypercore"``.

    Peers announce and name channels by it, so the log key never travels in clear.
    """
    return _blake2b(b"hypercore", digest_size=HASH_SIZE, key=key).digest()


def replication_capability(handshake_hash: bytes, key: bytes, *, initiator: bool) -> bytes:
    """Return the capability proving knowledge of ``key`` inside one Noise session.

    ``H_handshake(NS_REPLICATE_{INITIATOR|RESPONDER} || key)``: keyed BLAKE2b with the
    session's handshake hash, so it cannot be replayed into another session.
    """
    ns = NS_REPLICATE_INITIATOR if initiator else NS_REPLICATE_RESPONDER
    return _blake2b(ns + key, digest_size=HASH_SIZE, key=handshake_hash[:64]).digest()


# --- signables -------------------------------------------------------------------------


def tree_signable(context: bytes, root_hash: bytes, length: int, fork: int) -> bytes:
    """Return the 112-byte manifest-mode signable ``NS_TREE || context || tree || len || fork``.

    ``context`` is the log key (manifest hash) for manifest versions >= 1 and the
    signer's namespace for version 0.
    """
    return NS_TREE + context + root_hash + _U64X2.pack(length, fork)


def compat_signable(root_hash: bytes, length: int, fork: int) -> bytes:
    """Return the 80-byte compat-mode signable ``NS_TREE || tree || len || fork``."""
    return NS_TREE + root_hash + _U64X2.pack(length, fork)


def legacy_signable(root_hash: bytes, length: int, fork: int) -> bytes:
    """Return the 48-byte legacy signable ``tree || len || fork`` (hypercore's ``legacy``)."""
    return root_hash + _U64X2.pack(length, fork)


# --- ed25519 ---------------------------------------------------------------------------


def key_pair(seed: bytes | None = None) -> KeyPair:
    """Return a new ed25519 key pair, or the one derived from a 32-byte ``seed``.

    With a seed the result equals libsodium's ``crypto_sign_seed_keypair``.

    Raises:
        ValueError: if ``seed`` is not 32 bytes.
    """
    if seed is None:
        pk, sk = nacl.bindings.crypto_sign_keypair()
    else:
        if len(seed) != SEED_SIZE:
            raise ValueError(f"seed must be {SEED_SIZE} bytes, got {len(seed)}")
        pk, sk = nacl.bindings.crypto_sign_seed_keypair(bytes(seed))
    return KeyPair(pk, sk)


def sign(message: bytes, secret_key: bytes) -> bytes:
    """Return the 64-byte detached ed25519 signature of ``message``."""
    signed: bytes = nacl.bindings.crypto_sign(message, secret_key)
    return signed[:SIGNATURE_SIZE]


def verify(message: bytes, signature: bytes, public_key: bytes) -> bool:
    """Return True if ``signature`` is a valid ed25519 signature of ``message``."""
    if len(signature) != SIGNATURE_SIZE or len(public_key) != PUBLIC_KEY_SIZE:
        return False
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


# --- compact-encoding helpers (hypercore's varints: not LEB128) ------------------------


def _enc_uint(out: bytearray, n: int) -> None:
    if n < 0 or n > MAX_U64:
        raise ValueError(f"uint out of range: {n}")
    if n <= 0xFC:
        out.append(n)
    elif n <= 0xFFFF:
        out.append(0xFD)
        out += n.to_bytes(2, "little")
    elif n <= 0xFFFFFFFF:
        out.append(0xFE)
        out += n.to_bytes(4, "little")
    else:
        out.append(0xFF)
        out += n.to_bytes(8, "little")


class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def uint(self) -> int:
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            raise DecodeError("truncated uint")
        first = buf[pos]
        width = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first, 0)
        if width == 0:
            self.pos = pos + 1
            return first
        if pos + 1 + width > len(buf):
            raise DecodeError("truncated uint")
        self.pos = pos + 1 + width
        return int.from_bytes(buf[pos + 1 : pos + 1 + width], "little")

    def fixed(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise DecodeError(f"truncated: wanted {n} bytes")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise DecodeError(f"{len(self.buf) - self.pos} trailing bytes")


# --- manifests -------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class ManifestSigner:
    """One signer of a manifest: scheme (``ed25519`` only), namespace and public key."""

    public_key: bytes
    namespace: bytes = DEFAULT_NAMESPACE
    signature: str = "ed25519"


@final
@dataclass(frozen=True, slots=True)
class Prologue:
    """A tree hash the log must have at ``length`` (the log continues another one)."""

    hash: bytes
    length: int


@final
@dataclass(frozen=True, slots=True)
class Manifest:
    """A hypercore manifest: who may sign the log and how. Its hash is the log key.

    Versions 0, 1 and 2 encode exactly as hypercore's ``messages.manifest``.
    """

    version: int
    signers: tuple[ManifestSigner, ...]
    quorum: int = 1
    allow_patch: bool = False
    hash: str = "blake2b"
    prologue: Prologue | None = None
    linked: tuple[bytes, ...] | None = None
    user_data: bytes | None = None

    def encode(self) -> bytes:
        """Return the compact-encoding of this manifest (the bytes its key hashes).

        Raises:
            ValueError: for fields hypercore cannot encode (unknown hash or scheme,
                v2-only fields in an older version).
        """
        out = bytearray()
        _enc_uint(out, self.version)
        if self.hash != "blake2b":
            raise ValueError(f"unknown hash algorithm {self.hash!r}")
        if self.version == 0:
            out.append(0)  # hash: blake2b
            if self.prologue is not None and not self.signers:
                out.append(0)
                out += _fixed32(self.prologue.hash)
            elif self.quorum == 1 and len(self.signers) == 1 and not self.allow_patch:
                out.append(1)
                _enc_signer(out, self.signers[0])
            else:
                out.append(2)
                out.append(1 if self.allow_patch else 0)
                _enc_uint(out, self.quorum)
                _enc_signers(out, self.signers)
            return bytes(out)
        if self.version < 2 and (self.linked is not None or self.user_data is not None):
            raise ValueError("linked and user_data need manifest version 2")
        flags = (
            (1 if self.allow_patch else 0)
            | (2 if self.prologue is not None else 0)
            | (4 if self.linked is not None else 0)
            | (8 if self.user_data is not None else 0)
        )
        _enc_uint(out, flags)
        out.append(0)  # hash: blake2b
        _enc_uint(out, self.quorum)
        _enc_signers(out, self.signers)
        if self.prologue is not None:
            out += _fixed32(self.prologue.hash)
            _enc_uint(out, self.prologue.length)
        if self.linked is not None:
            _enc_uint(out, len(self.linked))
            for k in self.linked:
                out += _fixed32(k)
        if self.user_data is not None:
            _enc_uint(out, len(self.user_data))
            out += self.user_data
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """Parse a compact-encoded manifest.

        Raises:
            DecodeError: on truncated, oversized, trailing or unknown content.
        """
        if len(data) > MAX_MANIFEST_SIZE:
            raise DecodeError(f"manifest of {len(data)} bytes exceeds {MAX_MANIFEST_SIZE}")
        r = _Reader(bytes(data))
        version = r.uint()
        if version == 0:
            _dec_hash(r)
            kind = r.uint()
            if kind == 0:
                m = cls(0, (), quorum=0, prologue=Prologue(r.fixed(32), 0))
            elif kind == 1:
                m = cls(0, (_dec_signer(r),))
            elif kind == 2:
                flags = r.uint()
                if flags & ~1:
                    raise DecodeError(f"unknown v0 manifest flags {flags:#x}")
                quorum = r.uint()
                m = cls(0, _dec_signers(r), quorum=quorum, allow_patch=bool(flags & 1))
            else:
                raise DecodeError(f"unknown v0 manifest type {kind}")
            r.done()
            return m
        if version > 3:
            raise DecodeError(f"unknown manifest version {version}")
        flags = r.uint()
        if flags & ~0xF:
            raise DecodeError(f"unknown manifest flags {flags:#x}")
        _dec_hash(r)
        quorum = r.uint()
        signers = _dec_signers(r)
        prologue = Prologue(r.fixed(32), r.uint()) if flags & 2 else None
        linked: tuple[bytes, ...] | None = None
        if flags & 4:
            n = r.uint()
            if n > MAX_MANIFEST_SIGNERS:
                raise DecodeError(f"{n} linked keys exceed {MAX_MANIFEST_SIGNERS}")
            linked = tuple(r.fixed(32) for _ in range(n))
        user_data: bytes | None = None
        if flags & 8:
            n = r.uint()
            if n > MAX_USER_DATA_SIZE:
                raise DecodeError(f"{n} bytes of user data exceed {MAX_USER_DATA_SIZE}")
            user_data = r.fixed(n)
        r.done()
        return cls(
            version,
            signers,
            quorum=quorum,
            allow_patch=bool(flags & 1),
            prologue=prologue,
            linked=linked,
            user_data=user_data,
        )

    def key(self) -> bytes:
        """Return the log key this manifest names: ``H(NS_MANIFEST || encode())``."""
        return manifest_hash(self)


def _fixed32(b: bytes) -> bytes:
    if len(b) != 32:
        raise ValueError(f"expected 32 bytes, got {len(b)}")
    return b


def _enc_signer(out: bytearray, s: ManifestSigner) -> None:
    if s.signature != "ed25519":
        raise ValueError(f"unknown signature scheme {s.signature!r}")
    out.append(0)
    out += _fixed32(s.namespace)
    out += _fixed32(s.public_key)


def _enc_signers(out: bytearray, signers: Sequence[ManifestSigner]) -> None:
    _enc_uint(out, len(signers))
    for s in signers:
        _enc_signer(out, s)


def _dec_hash(r: _Reader) -> None:
    if r.uint() != 0:
        raise DecodeError("unknown manifest hash algorithm")


def _dec_signer(r: _Reader) -> ManifestSigner:
    if r.uint() != 0:
        raise DecodeError("unknown signature scheme")
    namespace = r.fixed(32)
    return ManifestSigner(r.fixed(32), namespace)


def _dec_signers(r: _Reader) -> tuple[ManifestSigner, ...]:
    n = r.uint()
    if n > MAX_MANIFEST_SIGNERS:
        raise DecodeError(f"{n} signers exceed {MAX_MANIFEST_SIGNERS}")
    return tuple(_dec_signer(r) for _ in range(n))


def manifest_hash(manifest: Manifest) -> bytes:
    """Return ``H(NS_MANIFEST || manifest.encode())``: the key of a manifest-mode log."""
    return hash_bytes(NS_MANIFEST + manifest.encode())


def default_manifest(public_key: bytes) -> Manifest:
    """Return hypercore 11's default manifest for a writer: v1, one signer, quorum 1."""
    return Manifest(1, (ManifestSigner(_fixed32(public_key)),))


def compat_manifest(public_key: bytes) -> Manifest:
    """Return the v0 manifest hypercore shows for a compat log (key = ``public_key``)."""
    return Manifest(0, (ManifestSigner(_fixed32(public_key)),))


# --- multisig wrapping -----------------------------------------------------------------


def encode_multisig(signature: bytes, signer: int = 0) -> bytes:
    """Wrap one raw signature in hypercore's multisig encoding (68 bytes for signer 0)."""
    if len(signature) != SIGNATURE_SIZE:
        raise ValueError(f"signature must be {SIGNATURE_SIZE} bytes")
    out = bytearray(b"\x01")  # one proof
    _enc_uint(out, signer)
    out += signature
    out += b"\x00\x00"  # patch = 0, no patch nodes
    return bytes(out)


def decode_multisig(data: bytes) -> list[tuple[int, bytes]]:
    """Unwrap hypercore's multisig encoding into ``[(signer index, raw signature)]``.

    Raises:
        DecodeError: if malformed, or if it carries patches (not supported).
    """
    r = _Reader(bytes(data))
    n = r.uint()
    if n > MAX_MANIFEST_SIGNERS:
        raise DecodeError(f"{n} signatures exceed {MAX_MANIFEST_SIGNERS}")
    out: list[tuple[int, bytes]] = []
    for _ in range(n):
        signer = r.uint()
        sig = r.fixed(SIGNATURE_SIZE)
        if r.uint() != 0:
            raise DecodeError("multisig patches are not supported")
        out.append((signer, sig))
    if r.uint() != 0:
        raise DecodeError("multisig patch nodes are not supported")
    r.done()
    return out


# --- the verifier ----------------------------------------------------------------------


@final
class Verifier:
    """The signature rule of one log: its key, its manifest and how heads are signed.

    Build one with `Verifier.from_manifest`, `Verifier.compat` or `Verifier.for_key`.
    hyperlog supports single-signer manifests (quorum 1), which is every log hypercore
    creates by default; multi-signer manifests decode but are refused here.
    """

    __slots__ = ("_context", "_mode", "_public_key", "key", "manifest")

    key: bytes
    manifest: Manifest

    def __init__(self, key: bytes, manifest: Manifest) -> None:
        """Use `from_manifest`, `compat` or `for_key` instead."""
        if len(manifest.signers) != 1 or manifest.quorum != 1:
            raise ValueError("only single-signer manifests with quorum 1 are supported")
        if manifest.prologue is not None:
            raise ValueError("manifests with a prologue are not supported")
        self.key = bytes(key)
        self.manifest = manifest
        signer = manifest.signers[0]
        self._public_key = signer.public_key
        if key == signer.public_key:
            self._mode = 0  # compat: the key is the public key
            self._context = b""
        elif manifest.version == 0:
            self._mode = 1
            self._context = signer.namespace
        else:
            self._mode = 1
            self._context = self.key

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> Verifier:
        """Return the verifier of a manifest-mode log (key = the manifest hash)."""
        return cls(manifest_hash(manifest), manifest)

    @classmethod
    def compat(cls, public_key: bytes) -> Verifier:
        """Return the verifier of a compat-mode log: the key is the ed25519 public key."""
        return cls(public_key, compat_manifest(public_key))

    @classmethod
    def for_key(cls, key: bytes, manifest: Manifest | bytes) -> Verifier:
        """Return the verifier for ``key`` given a manifest someone sent you.

        Raises:
            InvalidSignatureError: if the manifest does not name this key.
            DecodeError: if ``manifest`` is bytes that do not decode.
        """
        if isinstance(manifest, bytes | bytearray):
            m = Manifest.decode(manifest)
            # hash the bytes as received, not a re-encoding: a non-canonical encoding of
            # the same manifest is refused instead of silently accepted
            digest = hash_bytes(NS_MANIFEST + bytes(manifest))
        else:
            m = manifest
            digest = manifest_hash(m)
        compat = len(m.signers) == 1 and m.signers[0].public_key == key
        if compat and isinstance(manifest, bytes | bytearray) and m.encode() != manifest:
            raise InvalidSignatureError("the manifest is not canonically encoded")
        if not compat and digest != key:
            raise InvalidSignatureError("the manifest does not hash to the log key")
        try:
            return cls(key, m)
        except ValueError as exc:
            raise InvalidSignatureError(str(exc)) from exc

    @property
    def is_compat(self) -> bool:
        """True when the key is the public key itself (hypercore's ``compat`` mode)."""
        return self._mode == 0

    @property
    def public_key(self) -> bytes:
        """The signer's ed25519 public key."""
        return self._public_key

    def signable(self, root_hash: bytes, length: int, fork: int) -> bytes:
        """Return the bytes that are signed for this tree hash, length and fork."""
        if self._mode == 0:
            return NS_TREE + root_hash + _U64X2.pack(length, fork)
        return NS_TREE + self._context + root_hash + _U64X2.pack(length, fork)

    def sign(self, root_hash: bytes, length: int, fork: int, secret_key: bytes | None) -> bytes:
        """Return the raw 64-byte signature of a tree head.

        Raises:
            NotWritableError: if ``secret_key`` is None or is not this log's signer's.
        """
        if secret_key is None or len(secret_key) != SECRET_KEY_SIZE:
            raise NotWritableError("no secret key for this log")
        if secret_key[32:] != self._public_key:
            raise NotWritableError("the secret key does not belong to this log's signer")
        return sign(self.signable(root_hash, length, fork), secret_key)

    def verify(self, root_hash: bytes, length: int, fork: int, signature: bytes) -> bool:
        """Return True if ``signature`` (raw 64 bytes) signs this tree head."""
        return verify(self.signable(root_hash, length, fork), signature, self._public_key)

    def check(self, root_hash: bytes, length: int, fork: int, signature: bytes) -> None:
        """Like `verify` but raise instead of returning False.

        Raises:
            InvalidSignatureError: if the signature does not verify.
        """
        if not verify(self.signable(root_hash, length, fork), signature, self._public_key):
            raise InvalidSignatureError(f"bad signature for length {length}, fork {fork}")
