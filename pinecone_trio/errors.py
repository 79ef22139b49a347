"""The `pinecone_trio` exception hierarchy.

Closed, broken or busy streams raise Trio's own `trio.ClosedResourceError`,
`trio.BrokenResourceError` and `trio.BusyResourceError` (with the cause chained);
everything specific to this package derives from `PineconeError`.

```
PineconeError
├── KeyFileError                     a key file is missing, malformed or too readable
├── ProtocolError                    (abstract, never raised directly)
│   ├── LocalProtocolError           we misused an engine: a bug in our code
│   └── RemoteProtocolError          the peer sent something illegal: drop that peer
│       └── DecodeError              bad wire bytes (raised by the codecs)
├── LinkError                        a Noise link failed; subclasses name what was wrong
│   ├── HandshakeError               the Noise handshake failed (abstract)
│   │   ├── HandshakeTimeout         no complete handshake within the timeout
│   │   ├── HandshakeAborted         the peer closed or reset the connection mid-handshake
│   │   ├── BadHandshake             malformed, tampered or replayed message; bad payload
│   │   └── WrongRemoteKey           the peer proved a key other than the expected one
│   ├── FrameTooLarge                a length prefix above the named maximum
│   ├── TruncatedFrame               the transport ended inside a frame
│   ├── TruncatedStream              the transport ended without the peer's close message
│   └── DecryptionFailed             a transport message failed authentication
├── SessionError                     an end-to-end session failed (handshake, peer, protocol)
│   ├── SessionTimeoutError          no handshake in time, or the peer went silent
│   └── StreamRefusedError           the peer refused a stream's protocol
├── UnreachableError                 no route to the destination key (yet)
└── NodeCrashedError                 a background failure surfaced by open_node
```
"""

from __future__ import annotations


class PineconeError(Exception):
    """Base class of every error raised by `pinecone_trio`."""


class KeyFileError(PineconeError):
    """A key file could not be used: missing, malformed, or readable by others."""


class ProtocolError(PineconeError):
    """A protocol rule was broken. Never raised directly; see the subclasses."""


class LocalProtocolError(ProtocolError):
    """We asked an engine to do something illegal: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The remote peer sent something illegal. Drop that peer, keep the node."""


class DecodeError(RemoteProtocolError):
    """Bytes from the wire do not decode as a valid message."""


class LinkError(PineconeError):
    """A Noise link could not be established or broke a protocol rule.

    Subclasses name what went wrong; `remote_key` is set when it is known.
    """

    def __init__(self, message: str, *, remote_key: bytes | None = None) -> None:
        super().__init__(message)
        self.remote_key = remote_key


class HandshakeError(LinkError):
    """The Noise handshake failed. Never raised directly; see the subclasses."""


class HandshakeTimeout(HandshakeError):
    """The handshake did not complete within its timeout (a stalled or slow peer)."""


class HandshakeAborted(HandshakeError):
    """The peer closed or reset the connection before the handshake completed."""


class BadHandshake(HandshakeError):
    """A handshake message was malformed, tampered with or replayed, or its payload
    (version, identity key, signature, capabilities) was invalid."""


class WrongRemoteKey(HandshakeError):
    """The peer proved an identity other than the one the caller expected.

    `remote_key` is the key the peer presented; `expected_key` the one we wanted.
    """

    def __init__(
        self, message: str, *, remote_key: bytes | None = None, expected_key: bytes | None = None
    ) -> None:
        super().__init__(message, remote_key=remote_key)
        self.expected_key = expected_key


class FrameTooLarge(LinkError):
    """A frame's length prefix exceeds the maximum allowed at that point."""


class TruncatedFrame(LinkError):
    """The transport ended in the middle of a frame."""


class TruncatedStream(LinkError):
    """The transport ended without the peer's encrypted close message (possible truncation)."""


class DecryptionFailed(LinkError):
    """A transport message failed authentication: tampered, reordered, replayed or garbage."""


class PeerLimitError(PineconeError):
    """A peering was refused because a node (ours or theirs) is at its peer limit."""


class UnreachableError(PineconeError):
    """No route to the destination key is known (yet)."""


class NodeCrashedError(PineconeError):
    """A node's background task failed; the cause is chained."""


class SessionError(PineconeError):
    """An end-to-end session failed: its handshake (timeout, bad or unexpected identity),
    its peer (closed it, stopped answering) or its protocol.

    `remote_key` is the peer's key when it is known.
    """

    def __init__(self, message: str, *, remote_key: bytes | None = None) -> None:
        super().__init__(message)
        self.remote_key = remote_key


class SessionTimeoutError(SessionError):
    """A session's handshake did not complete, or its peer went silent, within the timeout."""


class StreamRefusedError(SessionError):
    """The remote refused to open a stream (no listener for the protocol, or too many streams).

    `protocol` is the protocol name that was asked for.
    """

    def __init__(
        self, message: str, *, remote_key: bytes | None = None, protocol: str = ""
    ) -> None:
        super().__init__(message, remote_key=remote_key)
        self.protocol = protocol
