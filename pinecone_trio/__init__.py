"""pinecone_trio: a Pinecone-style overlay network on Trio.

Every device is named by its ed25519 public key. Devices peer over TCP, WebSockets or
a LAN, every link secured with Noise-XX; a router builds a spanning tree and a virtual
snake ordered by key and forwards traffic to any key across many hops.
"""

from .errors import (
    DecodeError,
    KeyFileError,
    LinkError,
    LocalProtocolError,
    NodeCrashedError,
    PineconeError,
    ProtocolError,
    RemoteProtocolError,
    UnreachableError,
)
from .identity import Identity, PublicKey

__all__ = [
    "DecodeError",
    "Identity",
    "KeyFileError",
    "LinkError",
    "LocalProtocolError",
    "NodeCrashedError",
    "PineconeError",
    "ProtocolError",
    "PublicKey",
    "RemoteProtocolError",
    "UnreachableError",
]
