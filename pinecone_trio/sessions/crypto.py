"""Transport crypto for sessions: explicit-nonce AEAD and the replay window.

Theory of operation. After the Noise handshake each side holds two 32-byte keys (Noise
`Split()`): one to send, one to receive. Over a lossy, reordering overlay the implicit
Noise nonce counter cannot work, so, as WireGuard does, every TRANSPORT packet carries
its 64-bit packet number in clear and the nonce is built from it (Noise's ChaChaPoly
nonce layout: 32 zero bits, then the counter little-endian). The header is the
associated data, so the packet number cannot be altered.

A packet number is accepted at most once: `ReplayWindow` is WireGuard's sliding bitmap
(RFC 6479 style) over the last `REPLAY_WINDOW` numbers. A number is checked before
decryption (cheap rejection of replays and very old packets) and only marked seen after
the AEAD tag verified, so a forged packet cannot burn a number the real sender will use.

Identities are bound to the Noise static keys by the link layer's handshake engine,
which sessions reuse (see handshake.py).
"""

from __future__ import annotations

from typing import Final, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .config import REPLAY_WINDOW

KEY_SIZE: Final = 32
_NONCE_PREFIX: Final = b"\x00\x00\x00\x00"


@final
class PacketCipher:
    """ChaCha20-Poly1305 with the packet number as an explicit nonce."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a transport key is {KEY_SIZE} bytes")
        self._aead = ChaCha20Poly1305(key)

    def seal(self, packet_number: int, header: bytes, plaintext: bytes) -> bytes:
        """Encrypt `plaintext`, authenticating `header`; returns ciphertext and tag."""
        nonce = _NONCE_PREFIX + packet_number.to_bytes(8, "little")
        return self._aead.encrypt(nonce, plaintext, header)

    def open(
        self, packet_number: int, header: bytes | memoryview, ciphertext: bytes | memoryview
    ) -> bytes | None:
        """Decrypt and verify; returns None if the tag does not verify."""
        nonce = _NONCE_PREFIX + packet_number.to_bytes(8, "little")
        try:
            return self._aead.decrypt(nonce, ciphertext, header)
        except InvalidTag:
            return None


@final
class ReplayWindow:
    """Which packet numbers were already accepted, over a sliding window.

    Bit `i` of the bitmap stands for packet number `top - i`. Numbers more than the
    window size below the highest accepted one are refused outright.
    """

    __slots__ = ("_bits", "_mask", "_size", "_top")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self._size = size
        self._mask = (1 << size) - 1
        self._top = -1
        self._bits = 0

    def check(self, packet_number: int) -> bool:
        """Whether `packet_number` may be accepted (not seen, not too old)."""
        diff = self._top - packet_number
        if diff < 0:
            return True
        if diff >= self._size:
            return False
        return not (self._bits >> diff) & 1

    def mark(self, packet_number: int) -> None:
        """Record `packet_number` as accepted (call only after `check` and decryption)."""
        diff = self._top - packet_number
        if diff < 0:
            # A jump past the whole window forgets everything (and never builds a
            # huge integer from a forged-but-authenticated large packet number).
            shift = -diff
            if shift >= self._size:
                self._bits = 1
            else:
                self._bits = ((self._bits << shift) | 1) & self._mask
            self._top = packet_number
        elif diff < self._size:
            self._bits |= 1 << diff
