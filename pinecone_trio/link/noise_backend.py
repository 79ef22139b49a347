"""A leaner `noiseprotocol` backend for `Noise_XX_25519_ChaChaPoly_BLAKE2b`.

`noiseprotocol` runs the Noise state machine; its backend supplies the primitives. The
default backend hashes through `cryptography`'s `Hash` and `HMAC` objects (an object, a
backend lookup and three calls per hash) and re-serialises every received public key.
A handshake makes about 20 hashes and HMACs per side, so on a session's critical path
that bookkeeping cost more than the hashing. This backend keeps `noiseprotocol` and
changes only the primitives, with the same results byte for byte:

- BLAKE2b from the standard library's `hashlib` (the same function, a C call);
- HMAC-BLAKE2b written out (RFC 2104: the key padded to the 128-byte block, XORed with
  the inner and outer pads as integers), and HKDF calling it directly;
- received X25519 public keys keep the bytes they were parsed from.

It offers only what the link and session handshakes use (25519, ChaChaPoly, BLAKE2b);
any other protocol name fails as `NoiseProtocolNameError`, as an unknown one does.
`tests/test_pinecone_trio/test_link_noise_backend.py` checks it against the default
backend (handshakes across the two, both roles) and HMAC against `hmac`.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from noise.backends.default.backend import DefaultNoiseBackend
from noise.backends.default.ciphers import ChaCha20Cipher
from noise.backends.default.diffie_hellmans import ED25519
from noise.backends.default.keypairs import KeyPair25519
from noise.exceptions import NoiseValueError
from noise.functions.hash import Hash

#: BLAKE2b's block size (HMAC pads keys to it) and digest size (Noise's HASHLEN).
BLOCK_SIZE: Final = 128
HASH_SIZE: Final = 64
_INNER_PAD: Final = int.from_bytes(b"\x36" * BLOCK_SIZE, "little")
_OUTER_PAD: Final = int.from_bytes(b"\x5c" * BLOCK_SIZE, "little")
_blake2b = hashlib.blake2b


def hmac_blake2b(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2b(key, data) with a 64-byte result (RFC 2104)."""
    if len(key) > BLOCK_SIZE:
        key = _blake2b(key).digest()
    k = int.from_bytes(key, "little")  # zero-padded to the block by the pads' width
    inner = _blake2b((k ^ _INNER_PAD).to_bytes(BLOCK_SIZE, "little") + data).digest()
    return _blake2b((k ^ _OUTER_PAD).to_bytes(BLOCK_SIZE, "little") + inner).digest()


def _hmac(key: bytes, data: bytes, algorithm: Any = None) -> bytes:
    # The backend's `hmac` signature; `algorithm` is always BLAKE2b here.
    return hmac_blake2b(key, data)


def hkdf(
    chaining_key: bytes, input_key_material: bytes, num_outputs: int, hmac_hash_fn: Any = None
) -> tuple[bytes, ...]:
    """Noise's HKDF (spec §4.3) over HMAC-BLAKE2b: two or three 64-byte outputs."""
    temp_key = hmac_blake2b(chaining_key, input_key_material)
    output1 = hmac_blake2b(temp_key, b"\x01")
    output2 = hmac_blake2b(temp_key, output1 + b"\x02")
    if num_outputs == 2:
        return output1, output2
    return output1, output2, hmac_blake2b(temp_key, output2 + b"\x03")


class Blake2bHash(Hash):  # type: ignore[misc]
    """Noise's BLAKE2b (HASHLEN 64, BLOCKLEN 128) through `hashlib`."""

    @property
    def fn(self) -> Any:
        return _blake2b

    @property
    def hashlen(self) -> int:
        return HASH_SIZE

    @property
    def blocklen(self) -> int:
        return BLOCK_SIZE

    def hash(self, data: bytes) -> bytes:
        return _blake2b(data).digest()


class Keypair25519(KeyPair25519):  # type: ignore[misc]
    """A received X25519 public key that keeps the 32 bytes it was parsed from."""

    @classmethod
    def from_public_bytes(cls, public_bytes: bytes) -> Keypair25519:
        if len(public_bytes) != 32:
            raise NoiseValueError("Invalid length of public_bytes! Should be 32")
        public_bytes = bytes(public_bytes)
        return cls(
            public=X25519PublicKey.from_public_bytes(public_bytes), public_bytes=public_bytes
        )


class LeanBackend(DefaultNoiseBackend):  # type: ignore[misc]
    """`noiseprotocol`'s default backend narrowed to 25519 / ChaChaPoly / BLAKE2b, with
    the primitives above."""

    def __init__(self) -> None:
        super().__init__()
        self.diffie_hellmans = {"25519": ED25519}
        self.ciphers = {"ChaChaPoly": ChaCha20Cipher}
        self.hashes = {"BLAKE2b": Blake2bHash}
        self.keypairs = {"25519": Keypair25519}
        self.hmac = _hmac
        self.hkdf = hkdf


#: The backend the link and session handshakes run on.
LEAN_BACKEND: Final = LeanBackend()
