"""Inputs to and actions from the router engine (`RouterState`), and its events.

Everything here is a frozen, slotted dataclass. The driver (or the simulator) turns
the world into `Input`s, hands each to `RouterState.on_input(event, now)` and carries
out the `Action`s it gets back, in order. Frames inside inputs and actions are decoded
`wire.Frame` objects; the node encodes and decodes them at the link edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import final

from .wire import Coords, Frame, Payload

__all__ = [
    "Action",
    "DeliverLocal",
    "DeliveryMode",
    "DescendingChanged",
    "DropPeer",
    "Emit",
    "Event",
    "FrameIn",
    "Input",
    "LocalSend",
    "LocalSendClosest",
    "ParentChanged",
    "PeerAdded",
    "PeerDown",
    "PeerRemoved",
    "PeerType",
    "PeerUp",
    "RootChanged",
    "SendFrame",
]


class PeerType(IntEnum):
    """How a peer is connected; a lower value is a better (faster) link (research §4.3)."""

    PIPE = 0
    MULTICAST = 1
    BONJOUR = 2
    REMOTE = 3
    BLUETOOTH = 4


class DeliveryMode(Enum):
    """Which kind of traffic a `DeliverLocal` carries."""

    #: `Traffic` addressed to exactly our key (a `LocalSend` somewhere).
    EXACT = "exact"
    #: `ClosestTraffic` for a target key we are the closest node to (`LocalSendClosest`).
    CLOSEST = "closest"


# --- inputs ------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class PeerUp:
    """A peering on `port` (1..253) finished its handshake with `public_key`."""

    port: int
    public_key: bytes
    peer_type: PeerType = PeerType.REMOTE
    zone: str = ""


@final
@dataclass(frozen=True, slots=True)
class PeerDown:
    """The peering on `port` is gone (closed, failed, or dropped after a `DropPeer`)."""

    port: int


@final
@dataclass(frozen=True, slots=True)
class FrameIn:
    """`frame` arrived on `port`."""

    port: int
    frame: Frame


@final
@dataclass(frozen=True, slots=True)
class LocalSend:
    """Send `payload` to the node whose key is exactly `destination_key`."""

    destination_key: bytes
    payload: bytes


@final
@dataclass(frozen=True, slots=True)
class LocalSendClosest:
    """Send `payload` to the node whose key is closest to `target_key` (the DHT mode).

    Closest means the smallest key >= `target_key`, or the highest key in the network
    when none is that high. That node receives a `DeliverLocal` with
    `mode=DeliveryMode.CLOSEST`, possibly ourselves.
    """

    target_key: bytes
    payload: bytes


Input = PeerUp | PeerDown | FrameIn | LocalSend | LocalSendClosest


# --- events ------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class PeerAdded:
    port: int
    public_key: bytes


@final
@dataclass(frozen=True, slots=True)
class PeerRemoved:
    port: int
    public_key: bytes


@final
@dataclass(frozen=True, slots=True)
class RootChanged:
    """Our root (key or sequence) changed; `root_key` is ours when we are the root."""

    root_key: bytes
    root_seq: int


@final
@dataclass(frozen=True, slots=True)
class ParentChanged:
    """Our tree parent changed; `port` is None when we became root. `coords` are ours."""

    port: int | None
    coords: Coords


@final
@dataclass(frozen=True, slots=True)
class DescendingChanged:
    """Our descending snake neighbour (next lower key) changed; None when unknown."""

    public_key: bytes | None


Event = PeerAdded | PeerRemoved | RootChanged | ParentChanged | DescendingChanged


# --- actions -----------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class SendFrame:
    """Queue `frame` for the peer on `port` (see queues.PeerQueue for the discipline)."""

    port: int
    frame: Frame


@final
@dataclass(frozen=True, slots=True)
class DeliverLocal:
    """Hand `payload` from `source_key` to the local application.

    For `DeliveryMode.EXACT`, `target_key` is our own key. For `DeliveryMode.CLOSEST`
    it is the key the sender asked for. `hops` is the number of links the packet
    crossed (0 for a packet we sent to ourselves).
    """

    source_key: bytes
    payload: Payload  # a view of the read buffer for a received frame (see `Payload`)
    mode: DeliveryMode
    target_key: bytes
    hops: int


@final
@dataclass(frozen=True, slots=True)
class DropPeer:
    """Close the peering on `port`: it broke a protocol rule. A `PeerDown` must follow."""

    port: int
    reason: str


@final
@dataclass(frozen=True, slots=True)
class Emit:
    """An observable state change, for subscribers and the simulator."""

    event: Event


Action = SendFrame | DeliverLocal | DropPeer | Emit
