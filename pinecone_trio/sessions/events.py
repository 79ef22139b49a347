"""What a session engine reports: its states, `StreamBroken`, and the events it queues.

`Session.state` is a `State`; `Session.stream_status` answers with a `StreamState`.
Application calls that cannot go on raise `StreamBroken`. Everything the driver must
react to is appended to `Session.events` as one of the event classes below (`Event`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import SessionError
from ..identity import PublicKey

if TYPE_CHECKING:
    from .engine import Session


class State(enum.Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


class StreamState(enum.Enum):
    OPENING = "opening"  # we opened it (and may send on it), no answer yet
    EARLY = "early"  # the peer's data (or control) arrived before its OPEN
    PENDING = "pending"  # the peer opened it; the driver has not accepted it yet
    OPEN = "open"
    REFUSED = "refused"


class StreamBroken(Exception):
    """A stream half cannot be used: reset by the peer, refused, or the session failed.

    The driver turns this into `trio.BrokenResourceError` (or the refusal into
    `StreamRefusedError`); `cause` is the session's error when the session failed.
    """

    def __init__(
        self, message: str, cause: BaseException | None = None, *, refused: bool = False
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.refused = refused  # the peer refused the stream's protocol (message: why)


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    remote_key: PublicKey


@dataclass(frozen=True, slots=True)
class IncomingStream:
    stream_id: int
    protocol: str


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    protocol: str
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionClosed:
    error: SessionError


@dataclass(frozen=True, slots=True)
class SessionReplaced:
    """The peer restarted and completed a new handshake: `session` takes over (same
    local index, new keys, no streams); this session is closed."""

    session: Session


Event = HandshakeCompleted | IncomingStream | DatagramReceived | SessionClosed | SessionReplaced
