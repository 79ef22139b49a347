"""Names and limits of the link protocol (docs/link.md). One comment each."""

from __future__ import annotations

from typing import Final

#: The Noise protocol name; both sides must use exactly this suite.
PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"

#: The link protocol version we speak (carried in the handshake payload).
LINK_PROTOCOL_VERSION: Final = 1
#: The oldest peer version we accept; anything older is refused as a bad handshake.
MIN_LINK_PROTOCOL_VERSION: Final = 1

#: Domain-separation prefix of the identity key's signature over the Noise static key,
#: so the signature can never be mistaken for one made for another purpose.
STATIC_KEY_SIGNATURE_PREFIX: Final = b"pinecone-trio-noise-static-key:"

#: Every frame starts with its length as a 2-byte big-endian integer (as noise-libp2p).
LENGTH_PREFIX_SIZE: Final = 2
#: Noise's limit on any message, handshake or transport (Noise spec §3).
MAX_MESSAGE_SIZE: Final = 65535
#: The Poly1305 tag appended to every encrypted message.
TAG_SIZE: Final = 16
#: The most application bytes one transport message carries.
MAX_PLAINTEXT_SIZE: Final = MAX_MESSAGE_SIZE - TAG_SIZE
#: The largest handshake message we send or accept. Real ones are ~100-300 bytes; the
#: cap stops a peer from making us buffer 64 KiB before we know who it is.
MAX_HANDSHAKE_MESSAGE_SIZE: Final = 4096

#: X25519 public key size (Noise DHLEN).
DH_SIZE: Final = 32
#: At most this many capabilities in a payload, each at most this many UTF-8 bytes.
MAX_CAPABILITIES: Final = 32
MAX_CAPABILITY_LENGTH: Final = 64

#: Seconds a handshake may take before it fails with HandshakeTimeout.
HANDSHAKE_TIMEOUT: Final = 10.0
#: Handshakes a link listener runs at once; more connections are closed unanswered.
MAX_PENDING_HANDSHAKES: Final = 256
#: Seconds `aclose` spends trying to deliver the encrypted close message.
CLOSE_TIMEOUT: Final = 2.0
#: Seconds a transport dial may take (tcp connect, websocket upgrade).
DIAL_TIMEOUT: Final = 10.0
