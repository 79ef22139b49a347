"""ChaCha20-Poly1305 with Noise's nonce format, for transport messages.

Noise (spec §5.1, §12.3) encrypts message number `n` with the 12-byte nonce
`4 zero bytes || n as 8-byte little-endian`, and forbids `n = 2**64 - 1`. This class
does exactly that with the `cryptography` package's AEAD, called directly: per
message it costs one C call, where going through `noiseprotocol`'s CipherState adds
Python overhead on every message. The counter is explicit so the same helper serves
ordered links (counter = message index) and datagram sessions (counter carried in
the datagram, checked against a replay window by the caller).

The keys come from `HandshakeResult.send_key` / `recv_key`, i.e. the raw keys of the
Noise `Split()`, so the ciphertexts are byte-identical to any Noise implementation's.
"""

from __future__ import annotations

from typing import Final, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from ..errors import DecryptionFailed, LocalProtocolError
from .constants import MAX_MESSAGE_SIZE, TAG_SIZE

KEY_SIZE: Final = 32
#: Noise reserves 2**64 - 1; counters must stay below it.
MAX_NONCE: Final = 2**64 - 1
NONCE_PREFIX: Final = b"\x00\x00\x00\x00"

Buffer = bytes | bytearray | memoryview


def noise_nonce(counter: int) -> bytes:
    """The 12-byte Noise ChaChaPoly nonce for message number `counter`.

    Raises:
        LocalProtocolError: if `counter` is negative or has reached 2**64 - 1.
    """
    if not 0 <= counter < MAX_NONCE:
        raise LocalProtocolError(f"Noise nonce {counter} out of range (rekey or reconnect)")
    return NONCE_PREFIX + counter.to_bytes(8, "little")


@final
class NoiseCipher:
    """One direction's ChaCha20-Poly1305 key, used with explicit Noise counters.

    Args:
        key: the 32-byte key (`HandshakeResult.send_key` or `recv_key`).

    Raises:
        ValueError: if the key is not 32 bytes.
    """

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a ChaCha20-Poly1305 key is {KEY_SIZE} bytes, not {len(key)}")
        self._aead = ChaCha20Poly1305(bytes(key))

    @property
    def aead(self) -> ChaCha20Poly1305:
        """The underlying AEAD, for hot loops that check the counter range once and
        build nonces as `noise_nonce` does (the link's batch paths)."""
        return self._aead

    def encrypt(self, counter: int, ad: bytes, plaintext: Buffer) -> bytes:
        """Encrypt `plaintext` as message number `counter`; returns ciphertext + 16-byte tag.

        Raises:
            LocalProtocolError: if the counter is out of range or the result would exceed
                Noise's 65,535-byte message limit.
        """
        if len(plaintext) + TAG_SIZE > MAX_MESSAGE_SIZE:
            raise LocalProtocolError(f"{len(plaintext)} bytes exceed one Noise message")
        return self._aead.encrypt(noise_nonce(counter), plaintext, ad or None)

    def encrypt_into(self, counter: int, ad: bytes, plaintext: Buffer, out: memoryview) -> None:
        """Like `encrypt`, writing into `out`, which must be exactly len(plaintext) + 16 bytes."""
        if len(plaintext) + TAG_SIZE > MAX_MESSAGE_SIZE:
            raise LocalProtocolError(f"{len(plaintext)} bytes exceed one Noise message")
        self._aead.encrypt_into(noise_nonce(counter), plaintext, ad or None, out)

    def decrypt(self, counter: int, ad: bytes, ciphertext: Buffer) -> bytes:
        """Decrypt and authenticate message number `counter`.

        Raises:
            DecryptionFailed: if the message is shorter than a tag, too long, or fails
                authentication (tampered, wrong counter, wrong key, garbage).
        """
        if not TAG_SIZE <= len(ciphertext) <= MAX_MESSAGE_SIZE:
            raise DecryptionFailed(
                f"a transport message is {TAG_SIZE}..{MAX_MESSAGE_SIZE} bytes,"
                f" not {len(ciphertext)}"
            )
        try:
            return self._aead.decrypt(noise_nonce(counter), ciphertext, ad or None)
        except InvalidTag:
            raise DecryptionFailed(
                f"transport message {counter} failed authentication"
                " (tampered, replayed, reordered or garbage)"
            ) from None

    def decrypt_into(self, counter: int, ad: bytes, ciphertext: Buffer, out: memoryview) -> None:
        """Like `decrypt`, writing the plaintext into `out` (exactly len(ciphertext) - 16).

        Raises:
            DecryptionFailed: as `decrypt`.
        """
        if not TAG_SIZE <= len(ciphertext) <= MAX_MESSAGE_SIZE:
            raise DecryptionFailed(
                f"a transport message is {TAG_SIZE}..{MAX_MESSAGE_SIZE} bytes,"
                f" not {len(ciphertext)}"
            )
        try:
            self._aead.decrypt_into(noise_nonce(counter), ciphertext, ad or None, out)
        except InvalidTag:
            raise DecryptionFailed(
                f"transport message {counter} failed authentication"
                " (tampered, replayed, reordered or garbage)"
            ) from None
