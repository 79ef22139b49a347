"""The session handshake: the link layer's Noise XX engine, with a session prologue.

Sessions prove identities exactly as links do (`pinecone_trio.link.handshake`): each
side signs its X25519 static key (one per identity per process) with its ed25519
identity inside Noise XX messages 2 and 3, and a dialler that expects a key refuses
any other before it reveals its own identity. This adapter adds what differs for sessions:

- the prologue is `NOISE_PROLOGUE || initiator routing key || responder routing key`,
  so a handshake message relayed between any other pair of keys fails, and a link
  handshake can never be replayed as a session one or the other way round;
- failures become `SessionError` (the link's `BadHandshake` / `WrongRemoteKey` chained),
  because a session failure is not a link failure;
- `result` is None until the handshake completes, which suits the session engine.

The session engine owns retransmission: it re-sends the bytes it got from
`write_message`, it never calls the engine twice for the same message.
"""

from __future__ import annotations

from typing import final

from ..errors import LinkError, LocalProtocolError, SessionError, WrongRemoteKey
from ..identity import Identity, PublicKey
from ..link.handshake import HandshakeResult, NoiseHandshake
from .config import NOISE_PROLOGUE

__all__ = ["HandshakeResult", "SessionHandshake"]


@final
class SessionHandshake:
    """One side of one session handshake.

    Args:
        identity: the ed25519 identity this side proves.
        initiator: whether this side sends the first message.
        initiator_address: the initiator's routing key (mixed into the prologue).
        responder_address: the responder's routing key (mixed into the prologue).
        expected_key: if set, the identity the peer must prove.
    """

    __slots__ = ("_engine", "result")

    def __init__(
        self,
        identity: Identity,
        *,
        initiator: bool,
        initiator_address: bytes,
        responder_address: bytes,
        expected_key: PublicKey | None = None,
    ) -> None:
        self._engine = NoiseHandshake(
            identity,
            initiator=initiator,
            expected_key=expected_key,
            prologue=NOISE_PROLOGUE + bytes(initiator_address) + bytes(responder_address),
        )
        self.result: HandshakeResult | None = None

    @property
    def initiator(self) -> bool:
        return self._engine.initiator

    def write_message(self) -> bytes:
        """The next handshake message this side sends.

        Raises:
            SessionError: if the handshake cannot continue.
        """
        try:
            message = self._engine.write_message()
        except (LinkError, LocalProtocolError) as exc:
            raise SessionError(f"session handshake failed: {exc}") from exc
        self._check_done()
        return message

    def read_message(self, message: bytes) -> None:
        """Process the peer's next handshake message.

        Raises:
            SessionError: if the message does not authenticate, the identity proof is
                bad, or the peer proved an identity other than `expected_key` (then
                `remote_key` is the key it proved). The handshake is then unusable.
        """
        try:
            self._engine.read_message(message)
        except WrongRemoteKey as exc:
            raise SessionError(
                f"session handshake failed: {exc}", remote_key=exc.remote_key
            ) from exc
        except (LinkError, LocalProtocolError) as exc:
            raise SessionError(f"session handshake failed: {exc}") from exc
        self._check_done()

    def _check_done(self) -> None:
        if self._engine.complete:
            self.result = self._engine.result
