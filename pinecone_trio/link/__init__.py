"""Noise-XX links: an encrypted, identity-checked `trio.abc.Stream` over any stream.

The sans-IO pieces (`NoiseHandshake`, `NoiseCipher`, the framer) import no trio and are
reused by end-to-end sessions over the overlay. See docs/link.md.
"""

from .aead import NoiseCipher as NoiseCipher
from .aead import noise_nonce as noise_nonce
from .connect import LinkHandler as LinkHandler
from .connect import LinkServerStatistics as LinkServerStatistics
from .connect import connect_link as connect_link
from .connect import serve_links as serve_links
from .constants import HANDSHAKE_TIMEOUT as HANDSHAKE_TIMEOUT
from .constants import LINK_PROTOCOL_VERSION as LINK_PROTOCOL_VERSION
from .constants import MAX_HANDSHAKE_MESSAGE_SIZE as MAX_HANDSHAKE_MESSAGE_SIZE
from .constants import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from .constants import MAX_PLAINTEXT_SIZE as MAX_PLAINTEXT_SIZE
from .constants import PROTOCOL_NAME as PROTOCOL_NAME
from .handshake import HandshakeResult as HandshakeResult
from .handshake import NoiseHandshake as NoiseHandshake
from .stream import LinkStatistics as LinkStatistics
from .stream import NoiseLink as NoiseLink

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "LINK_PROTOCOL_VERSION",
    "MAX_HANDSHAKE_MESSAGE_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_PLAINTEXT_SIZE",
    "PROTOCOL_NAME",
    "HandshakeResult",
    "LinkHandler",
    "LinkServerStatistics",
    "LinkStatistics",
    "NoiseLink",
    "connect_link",
    "serve_links",
    "NoiseCipher",
    "NoiseHandshake",
    "noise_nonce",
]
