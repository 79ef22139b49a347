"""Sans-IO Noise XX handshake with identity binding (no trio, no sockets).

Theory of operation
-------------------
`NoiseHandshake` runs `Noise_XX_25519_ChaChaPoly_BLAKE2b` through the `noiseprotocol`
package (on the leaner primitives of `noise_backend.LEAN_BACKEND`, byte-identical) and
adds what Noise leaves to the application: who the peer *is*.

    initiator                                   responder
    write_message()  -> e                  ->   read_message()
    read_message()   <- e, ee, s, es, P_r  <-   write_message()
    write_message()  -> s, se, P_i         ->   read_message()

Each side has an X25519 static key per identity and process (made on first use, kept
in memory only) and proves its long-lived ed25519 identity in its payload `P` (see
`payload.py`): the identity signs `"pinecone-trio-noise-static-key:" ||
static_public_key` once, and every handshake reuses the signature; the receiver
caches verified bindings. So a reconnect costs the Noise DH work but no ed25519
operation. Forward secrecy comes from the fresh ephemeral keys of every handshake.
Noise proves possession of the static private key (the `es`/`se` DH results key the
rest of the handshake); the signature proves the identity chose that key. The routing
key therefore never acts as a DH key, and a later version can carry other identities
in the same slot.

The caller moves bytes; the engine never does I/O. It raises only `LinkError`
subclasses for bad input (`BadHandshake`, `WrongRemoteKey`) and `LocalProtocolError`
when the caller calls out of turn. After any error the engine is dead. When `complete`
is true, `result` holds the peer's identity, the handshake hash (for channel binding)
and the two raw transport keys of Noise's `Split()`, to be used with `NoiseCipher`
starting at counter 0.

Checks made before handing bytes to Noise: exact size of message 1 (32 bytes: an empty
payload in version 1, since message 1 is neither encrypted nor authenticated), minimum
sizes of messages 2 and 3, and `MAX_HANDSHAKE_MESSAGE_SIZE` for all. A dialer that
passes `expected_key` learns the responder's identity in message 2 and refuses a wrong
one *before* sending message 3, so it never reveals its own identity to an impostor.
Replayed or tampered messages fail Noise's authentication (the handshake hash covers
every earlier byte and both ephemeral keys are fresh), giving `BadHandshake`.

Prepared handshakes. Building the Noise connection object (it parses the protocol name
and pattern) and generating the ephemeral X25519 key pair take ~0.1-0.2 ms, on the
critical path of every new link and session. `PREPARED_HANDSHAKES` keeps a few of each
made ahead: `NoiseHandshake` takes one (or makes one at once if the pool is empty) and
the node refills the pool from a background task when it runs low. Each prepared
ephemeral key is handed out exactly once (popped from the pool) and used for one
handshake only; a key waits in memory at most until the next handshake, so forward
secrecy is unchanged in kind (a memory dump could already read live ephemeral keys).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from noise.backends.default.keypairs import KeyPair25519
from noise.connection import NoiseConnection

from ..errors import BadHandshake, LinkError, LocalProtocolError, WrongRemoteKey
from ..identity import Identity, PublicKey
from .constants import (
    DH_SIZE,
    LINK_PROTOCOL_VERSION,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    PROTOCOL_NAME,
    TAG_SIZE,
)
from .noise_backend import LEAN_BACKEND
from .payload import check_capabilities, decode_payload, encode_payload, sign_static_key

#: Number of messages in the XX pattern.
HANDSHAKE_MESSAGES: Final = 3
# Smallest legal size of each message (index 0, 1, 2): e | e + enc(s) + tag | enc(s) + tag.
_MIN_SIZES: Final = (DH_SIZE, DH_SIZE + DH_SIZE + TAG_SIZE + TAG_SIZE, DH_SIZE + 2 * TAG_SIZE)


#: Identities whose static key and signature we keep (a node has one or a few).
STATIC_KEY_CACHE_SIZE: Final = 64
_static_keys: dict[bytes, tuple[Any, bytes]] = {}


def _static_key_for(identity: Identity) -> tuple[Any, bytes]:
    """This process's X25519 static key pair for `identity`, and the identity's signature
    endorsing it. Made on first use, kept in memory only, never written anywhere."""
    cache_key = identity.seed + bytes(identity.public_key)
    cached = _static_keys.get(cache_key)
    if cached is None:
        private = X25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        keypair = KeyPair25519.from_private_bytes(private)
        cached = (keypair, sign_static_key(identity, keypair.public_bytes))
        if len(_static_keys) >= STATIC_KEY_CACHE_SIZE:
            del _static_keys[next(iter(_static_keys))]
        _static_keys[cache_key] = cached
    return cached


#: Handshakes kept prepared (Noise connection object plus fresh ephemeral key pair).
HANDSHAKE_POOL_SIZE: Final = 8


def _prepare() -> tuple[NoiseConnection, Any]:
    noise = NoiseConnection.from_name(PROTOCOL_NAME, backend=LEAN_BACKEND)
    return noise, noise.noise_protocol.dh_fn.generate_keypair()


@final
class HandshakePool:
    """A few handshakes prepared ahead of time; each item is handed out once.

    `take` never waits: it pops a prepared item, or prepares one on the spot when the
    pool is empty, and calls the listeners when the pool is at or below half full.
    `refill` (from a task off the critical path) prepares one item at a time.
    """

    __slots__ = ("_items", "_listeners", "misses", "size", "taken")

    def __init__(self, size: int = HANDSHAKE_POOL_SIZE) -> None:
        if size < 0:
            raise ValueError("a pool size cannot be negative")
        self.size = size
        self._items: list[tuple[NoiseConnection, Any]] = []
        self._listeners: list[Callable[[], None]] = []
        self.taken = 0  # items handed out from the pool
        self.misses = 0  # items prepared on the spot because the pool was empty

    def __len__(self) -> int:
        return len(self._items)

    def take(self) -> tuple[NoiseConnection, Any]:
        """A fresh Noise connection object and an ephemeral key pair never handed out."""
        try:
            item = self._items.pop()  # atomic: nodes of other threads may take too
            self.taken += 1
        except IndexError:
            item = _prepare()
            self.misses += 1
        if len(self._items) <= self.size // 2:
            for listener in tuple(self._listeners):  # another run may remove its own
                listener()
        return item

    def refill_one(self) -> bool:
        """Prepare one item if the pool is not full; False when it already is."""
        if len(self._items) >= self.size:
            return False
        self._items.append(_prepare())
        return True

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` whenever a `take` leaves the pool half full or less."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.remove(listener)

    def clear(self) -> None:
        """Drop every prepared item (their keys were never used)."""
        self._items.clear()


#: The process-wide pool `NoiseHandshake` takes from.
PREPARED_HANDSHAKES: Final = HandshakePool()


@dataclass(frozen=True, slots=True)
class HandshakeResult:
    """What a completed handshake established.

    Attributes:
        remote_key: the peer's ed25519 identity (its overlay address).
        handshake_hash: Noise's 64-byte handshake hash, unique to this session; sign it
            or compare it to bind higher layers to this link.
        send_key: raw 32-byte ChaCha20-Poly1305 key for messages we send (counter from 0).
        recv_key: raw 32-byte key for messages we receive (counter from 0).
        remote_capabilities: the peer's capability strings (unknown ones included).
        remote_version: the link protocol version the peer speaks.
        version: the version both sides use, min(ours, theirs).
        initiator: whether we started the handshake.
    """

    remote_key: PublicKey
    handshake_hash: bytes
    send_key: bytes
    recv_key: bytes
    remote_capabilities: frozenset[str]
    remote_version: int
    version: int
    initiator: bool


@final
class NoiseHandshake:
    """One side of a Noise XX handshake that proves ed25519 identities.

    Args:
        identity: our key pair; it signs this handshake's Noise static key.
        initiator: True for the side that sends the first message (the dialer).
        expected_key: refuse the handshake unless the peer proves this identity.
        prologue: bytes both sides must agree on (bound into the handshake hash), e.g. a
            protocol label for sessions; a mismatch fails as `BadHandshake`.
        capabilities: strings we advertise; at most `MAX_CAPABILITIES` of at most
            `MAX_CAPABILITY_LENGTH` UTF-8 bytes.

    Use: while not `complete`, call `write_message()` when `writing` is true and send the
    bytes, otherwise feed the next received message to `read_message()`.

    Raises:
        ValueError: if `capabilities` breaks the limits.
    """

    __slots__ = (
        "_expected_key",
        "_failed",
        "_handshake_state",
        "_identity",
        "_index",
        "_initiator",
        "_noise",
        "_payload",
        "_remote",
        "_result",
    )

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        expected_key: PublicKey | None = None,
        prologue: bytes = b"",
        capabilities: frozenset[str] | set[str] | tuple[str, ...] = frozenset(),
    ) -> None:
        caps = frozenset(capabilities)
        check_capabilities(caps)
        self._identity = identity
        self._initiator = initiator
        self._expected_key = None if expected_key is None else PublicKey(expected_key)
        static, signature = _static_key_for(identity)
        noise, ephemeral = PREPARED_HANDSHAKES.take()
        if initiator:
            noise.set_as_initiator()
        else:
            noise.set_as_responder()
        noise.noise_protocol.keypairs["s"] = static
        noise.set_prologue(bytes(prologue))
        noise.start_handshake()
        self._noise = noise
        # noiseprotocol deletes its handshake state when the handshake completes; keep a
        # reference so the remote static key stays readable after the last message.
        self._handshake_state: Any = noise.noise_protocol.handshake_state
        # The prepared ephemeral key: Noise's "e" token uses a key already set instead
        # of generating one (set after start_handshake, where noiseprotocol would warn).
        self._handshake_state.e = ephemeral
        self._payload = encode_payload(identity.public_key, signature, LINK_PROTOCOL_VERSION, caps)
        self._index = 0  # number of handshake messages processed so far
        self._failed = False
        self._remote: tuple[PublicKey, int, frozenset[str]] | None = None
        self._result: HandshakeResult | None = None

    @property
    def initiator(self) -> bool:
        return self._initiator

    @property
    def complete(self) -> bool:
        """Whether the handshake finished successfully (then `result` is available)."""
        return self._result is not None

    @property
    def writing(self) -> bool:
        """Whether the next step is `write_message()` (else `read_message()`)."""
        return (self._index % 2 == 0) == self._initiator

    @property
    def message_index(self) -> int:
        """How many of the three handshake messages have been processed."""
        return self._index

    @property
    def remote_key(self) -> PublicKey | None:
        """The peer's verified identity, once its payload has been read."""
        return None if self._remote is None else self._remote[0]

    @property
    def result(self) -> HandshakeResult:
        """The outcome of a completed handshake.

        Raises:
            LocalProtocolError: if the handshake is not complete.
        """
        if self._result is None:
            raise LocalProtocolError("the handshake is not complete")
        return self._result

    def _check_usable(self, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("the handshake already failed")
        if self._result is not None:
            raise LocalProtocolError("the handshake is already complete")
        if self.writing != writing:
            raise LocalProtocolError(
                f"handshake message {self._index + 1}: it is our turn to "
                + ("write" if self.writing else "read")
            )

    def write_message(self) -> bytes:
        """Produce our next handshake message (to be framed and sent).

        Raises:
            LocalProtocolError: if it is not our turn, or the handshake is over.
        """
        self._check_usable(writing=True)
        payload = b"" if self._index == 0 else self._payload
        try:
            message = bytes(self._noise.write_message(payload))
        except Exception:
            # Our own keys are valid, so a failing DH means the peer's ephemeral key is
            # a low-order point (X25519 yields all zeros; `cryptography` refuses it).
            self._failed = True
            raise BadHandshake(
                f"handshake message {self._index + 1}: the peer's ephemeral key is invalid"
            ) from None
        self._index += 1
        if self._index == HANDSHAKE_MESSAGES:
            self._finish()
        return message

    def read_message(self, data: bytes | bytearray | memoryview) -> None:
        """Process the peer's next handshake message.

        Raises:
            BadHandshake: the message is malformed, tampered, replayed, or carries an
                invalid payload or signature.
            WrongRemoteKey: the peer proved an identity other than `expected_key`.
            LocalProtocolError: if it is our turn to write, or the handshake is over.
        """
        self._check_usable(writing=False)
        try:
            self._read(bytes(data))
        except LinkError:
            self._failed = True
            raise

    def _read(self, data: bytes) -> None:
        index = self._index
        number = index + 1
        if len(data) > MAX_HANDSHAKE_MESSAGE_SIZE:
            raise BadHandshake(
                f"handshake message {number} is {len(data)} bytes;"
                f" the limit is {MAX_HANDSHAKE_MESSAGE_SIZE}"
            )
        if index == 0 and len(data) != DH_SIZE:
            raise BadHandshake(f"handshake message 1 must be {DH_SIZE} bytes, not {len(data)}")
        if len(data) < _MIN_SIZES[index]:
            raise BadHandshake(
                f"handshake message {number} is {len(data)} bytes;"
                f" at least {_MIN_SIZES[index]} expected"
            )
        try:
            payload = bytes(self._noise.read_message(data))
        except Exception:  # InvalidTag, ValueError (bad point) and noiseprotocol's own
            raise BadHandshake(
                f"handshake message {number} failed authentication"
                " (tampered, replayed, wrong prologue or not Noise XX)"
            ) from None
        self._index += 1
        if index == 0:
            return
        remote_static: bytes = self._handshake_state.rs.public_bytes
        decoded = decode_payload(payload, remote_static)
        if self._expected_key is not None and decoded.identity_key != self._expected_key:
            raise WrongRemoteKey(
                f"peer is {decoded.identity_key.short()}, expected {self._expected_key.short()}",
                remote_key=decoded.identity_key,
                expected_key=self._expected_key,
            )
        self._remote = (decoded.identity_key, decoded.version, decoded.capabilities)
        if self._index == HANDSHAKE_MESSAGES:
            self._finish()

    def _finish(self) -> None:
        assert self._remote is not None
        protocol = self._noise.noise_protocol
        remote_key, remote_version, remote_caps = self._remote
        self._result = HandshakeResult(
            remote_key=remote_key,
            handshake_hash=bytes(self._noise.get_handshake_hash()),
            send_key=bytes(protocol.cipher_state_encrypt.k),
            recv_key=bytes(protocol.cipher_state_decrypt.k),
            remote_capabilities=remote_caps,
            remote_version=remote_version,
            version=min(LINK_PROTOCOL_VERSION, remote_version),
            initiator=self._initiator,
        )
        del self._handshake_state
