"""What a node tells its subscribers: peers coming and going, tree and snake changes.

`Node.events()` yields these frozen dataclasses. They carry public keys (never router
ports alone), so an application can act on them without knowing the router's insides.
"""

from __future__ import annotations

from dataclasses import dataclass

from .identity import PublicKey


@dataclass(frozen=True, slots=True)
class PeerConnected:
    """A peering finished its handshake and joined the router."""

    public_key: PublicKey
    uri: str
    peer_type: str
    port: int

    def __str__(self) -> str:
        return f"peer up   {self.public_key.hex()} {self.uri} ({self.peer_type}, port {self.port})"


@dataclass(frozen=True, slots=True)
class PeerDisconnected:
    """A peering ended; `reason` says why in a few words."""

    public_key: PublicKey
    uri: str
    port: int
    reason: str

    def __str__(self) -> str:
        return f"peer down {self.public_key.hex()} {self.uri} (port {self.port}): {self.reason}"


@dataclass(frozen=True, slots=True)
class RootChanged:
    """The root of our spanning tree (or its sequence number) changed."""

    root_key: PublicKey
    root_seq: int

    def __str__(self) -> str:
        return f"root      {self.root_key.hex()} seq {self.root_seq}"


@dataclass(frozen=True, slots=True)
class ParentChanged:
    """Our tree parent changed (None: we are the root); `coords` are our new coordinates."""

    parent_key: PublicKey | None
    coords: tuple[int, ...]

    def __str__(self) -> str:
        parent = self.parent_key.hex() if self.parent_key is not None else "none (we are root)"
        return f"parent    {parent} coords {list(self.coords)}"


@dataclass(frozen=True, slots=True)
class SnakeNeighbourChanged:
    """Our descending snake neighbour (the next lower key we know a path to) changed."""

    descending_key: PublicKey | None

    def __str__(self) -> str:
        key = self.descending_key.hex() if self.descending_key is not None else "none"
        return f"snake     descending neighbour {key}"


NodeEvent = PeerConnected | PeerDisconnected | RootChanged | ParentChanged | SnakeNeighbourChanged
