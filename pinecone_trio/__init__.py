"""pinecone_trio: a Pinecone-style overlay network on Trio.

Every device is named by its ed25519 public key. Devices peer over TCP, WebSockets or
a LAN, every link secured with Noise-XX; a router builds a spanning tree and a virtual
snake ordered by key and forwards traffic to any key across many hops. On top:
end-to-end Noise-XX sessions carrying reliable streams and datagrams named by protocol.

```python
from pinecone_trio import Identity, open_node

async with open_node(Identity.generate(), listen=["tcp://0.0.0.0:0"]) as node:
    await node.connect("tcp://peer.example:7000")
    stream = await node.connect(remote_key, "/chat/v1")
```
"""

from . import events
from .dht import Dht, PeerRecord, open_dht
from .errors import (
    BadHandshake,
    DecodeError,
    DecryptionFailed,
    FrameTooLarge,
    HandshakeAborted,
    HandshakeError,
    HandshakeTimeout,
    KeyFileError,
    LinkError,
    LocalProtocolError,
    NodeCrashedError,
    PeerLimitError,
    PineconeError,
    ProtocolError,
    RemoteProtocolError,
    SessionError,
    SessionTimeoutError,
    StreamRefusedError,
    TruncatedFrame,
    TruncatedStream,
    UnreachableError,
    WrongRemoteKey,
)
from .identity import Identity, PublicKey
from .link.connect import connect_link, serve_links
from .link.stream import NoiseLink
from .node import Node, NodeConfig, open_node
from .services import Datagram, OverlayService
from .sessions import SessionConfig, SessionListener, SessionStream

__all__ = [
    "BadHandshake",
    "Datagram",
    "Dht",
    "DecodeError",
    "DecryptionFailed",
    "FrameTooLarge",
    "HandshakeAborted",
    "HandshakeError",
    "HandshakeTimeout",
    "Identity",
    "KeyFileError",
    "LinkError",
    "LocalProtocolError",
    "Node",
    "NodeConfig",
    "NodeCrashedError",
    "NoiseLink",
    "OverlayService",
    "PeerRecord",
    "PeerLimitError",
    "PineconeError",
    "ProtocolError",
    "PublicKey",
    "RemoteProtocolError",
    "SessionConfig",
    "SessionError",
    "SessionListener",
    "SessionStream",
    "SessionTimeoutError",
    "StreamRefusedError",
    "TruncatedFrame",
    "TruncatedStream",
    "UnreachableError",
    "WrongRemoteKey",
    "connect_link",
    "events",
    "open_dht",
    "open_node",
    "serve_links",
]
