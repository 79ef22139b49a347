"""The handshake payload: version, capabilities and the identity binding.

Each side's payload travels *encrypted* inside the Noise handshake (the responder's in
message 2, the initiator's in message 3), as one msgpack array:

    [PAYLOAD_TAG, version, identity_key (bin 32), signature (bin 64), capabilities, ...]

`signature` is the identity key's ed25519 signature over
`STATIC_KEY_SIGNATURE_PREFIX || noise_static_public_key` (32 bytes). Capabilities are
a list of short UTF-8 strings; unknown ones are kept but mean nothing to us, and
trailing array elements after `capabilities` are ignored, so a later version can add
fields and negotiate instead of hard-forking the network. Sizes are checked before and
during decoding; any violation raises `BadHandshake`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgpack

from ..errors import BadHandshake
from ..identity import PUBLIC_KEY_SIZE, SIGNATURE_SIZE, Identity, PublicKey
from .constants import (
    MAX_CAPABILITIES,
    MAX_CAPABILITY_LENGTH,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    MIN_LINK_PROTOCOL_VERSION,
    STATIC_KEY_SIGNATURE_PREFIX,
)

#: The first element of a handshake payload array.
PAYLOAD_TAG: Final = 1
_MIN_FIELDS: Final = 5
#: A version number larger than this is not a plausible version but garbage.
_MAX_VERSION: Final = 2**32 - 1


@dataclass(frozen=True, slots=True)
class HandshakePayload:
    """One side's decoded handshake payload."""

    version: int
    identity_key: PublicKey
    signature: bytes
    capabilities: frozenset[str]


def check_capabilities(capabilities: frozenset[str]) -> None:
    """Raise ValueError unless `capabilities` fits the payload limits."""
    if len(capabilities) > MAX_CAPABILITIES:
        raise ValueError(f"at most {MAX_CAPABILITIES} capabilities, not {len(capabilities)}")
    for cap in capabilities:
        if not isinstance(cap, str) or not 0 < len(cap.encode()) <= MAX_CAPABILITY_LENGTH:
            raise ValueError(f"a capability is 1..{MAX_CAPABILITY_LENGTH} UTF-8 bytes: {cap!r}")


def static_key_signable(static_public_key: bytes) -> bytes:
    """The bytes the identity key signs to endorse a Noise static key."""
    return STATIC_KEY_SIGNATURE_PREFIX + static_public_key


def sign_static_key(identity: Identity, static_public_key: bytes) -> bytes:
    """`identity`'s signature endorsing a Noise static key."""
    return identity.sign(static_key_signable(static_public_key))


def encode_payload(
    identity_key: PublicKey, signature: bytes, version: int, capabilities: frozenset[str]
) -> bytes:
    """Our payload; `signature` comes from `sign_static_key`."""
    packed: bytes = msgpack.packb(
        [PAYLOAD_TAG, version, bytes(identity_key), signature, sorted(capabilities)],
        use_bin_type=True,
    )
    return packed


#: Verified (identity key, static key, signature) bindings remembered, so a peer that
#: reconnects with the same static key costs no ed25519 verification. Caching is exact:
#: the same bytes always verify the same way.
VERIFIED_CACHE_SIZE: Final = 4096
_verified: dict[bytes, None] = {}


def _binding_verified(identity_key: PublicKey, static_public_key: bytes, signature: bytes) -> bool:
    entry = bytes(identity_key) + static_public_key + signature
    if entry in _verified:
        return True
    if not identity_key.verify(static_key_signable(static_public_key), signature):
        return False
    if len(_verified) >= VERIFIED_CACHE_SIZE:
        del _verified[next(iter(_verified))]  # forget the oldest
    _verified[entry] = None
    return True


def decode_payload(data: bytes, static_public_key: bytes) -> HandshakePayload:
    """Decode and verify a peer's payload against the static key Noise authenticated.

    Raises:
        BadHandshake: if the payload is malformed, too old a version, or its signature
            does not endorse `static_public_key`.
    """
    if len(data) > MAX_HANDSHAKE_MESSAGE_SIZE:
        raise BadHandshake(f"handshake payload of {len(data)} bytes is too large")
    try:
        obj = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            max_str_len=MAX_HANDSHAKE_MESSAGE_SIZE,
            max_bin_len=MAX_HANDSHAKE_MESSAGE_SIZE,
            max_array_len=MAX_HANDSHAKE_MESSAGE_SIZE,
            max_map_len=MAX_HANDSHAKE_MESSAGE_SIZE,
            max_ext_len=MAX_HANDSHAKE_MESSAGE_SIZE,
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise BadHandshake(f"handshake payload is not valid msgpack: {exc}") from None
    if not isinstance(obj, list) or len(obj) < _MIN_FIELDS:
        raise BadHandshake("handshake payload is not a payload array")
    tag, version, key, signature, capabilities = obj[:_MIN_FIELDS]
    if tag != PAYLOAD_TAG or isinstance(tag, bool):
        raise BadHandshake(f"handshake payload has tag {tag!r}, expected {PAYLOAD_TAG}")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BadHandshake("handshake payload version is not an integer")
    if not MIN_LINK_PROTOCOL_VERSION <= version <= _MAX_VERSION:
        raise BadHandshake(
            f"peer speaks link protocol version {version}; we need at least"
            f" {MIN_LINK_PROTOCOL_VERSION}"
        )
    if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_SIZE:
        raise BadHandshake("handshake payload identity key is not 32 bytes")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_SIZE:
        raise BadHandshake("handshake payload signature is not 64 bytes")
    if not isinstance(capabilities, list) or len(capabilities) > MAX_CAPABILITIES:
        raise BadHandshake(f"handshake payload capabilities: a list of <= {MAX_CAPABILITIES}")
    caps: set[str] = set()
    for cap in capabilities:
        if not isinstance(cap, str) or not 0 < len(cap.encode()) <= MAX_CAPABILITY_LENGTH:
            raise BadHandshake(f"handshake payload has an invalid capability {cap!r:.80}")
        caps.add(cap)
    identity_key = PublicKey(key)
    # The signature is what binds the routing identity to this Noise session: Noise has
    # proved the peer holds the static private key; this proves the identity chose it.
    if not _binding_verified(identity_key, static_public_key, signature):
        raise BadHandshake(
            f"identity {identity_key.short()} did not sign the peer's Noise static key",
            remote_key=identity_key,
        )
    return HandshakePayload(version, identity_key, signature, frozenset(caps))
