"""The sans-IO router engine: wire codec, spanning tree, virtual snake, forwarding.

Nothing in this package imports trio. `RouterState` takes inputs and `now` and returns
actions; `PeerQueue` is the per-port outgoing queue its owner keeps. See docs/router.md.
"""

from .actions import (
    Action,
    DeliverLocal,
    DeliveryMode,
    DescendingChanged,
    DropPeer,
    Emit,
    Event,
    FrameIn,
    Input,
    LocalSend,
    LocalSendClosest,
    ParentChanged,
    PeerAdded,
    PeerDown,
    PeerRemoved,
    PeerType,
    PeerUp,
    RootChanged,
    SendFrame,
)
from .queues import PeerQueue
from .signer import Ed25519Signer, NullSigner, Signer, VerifyCache
from .state import PeerStatus, RouterConfig, RouterState, RouterStatistics

__all__ = [
    "Action",
    "DeliverLocal",
    "DeliveryMode",
    "DescendingChanged",
    "DropPeer",
    "Ed25519Signer",
    "Emit",
    "Event",
    "FrameIn",
    "Input",
    "LocalSend",
    "LocalSendClosest",
    "NullSigner",
    "ParentChanged",
    "PeerAdded",
    "PeerDown",
    "PeerQueue",
    "PeerRemoved",
    "PeerStatus",
    "PeerType",
    "PeerUp",
    "RootChanged",
    "RouterConfig",
    "RouterState",
    "RouterStatistics",
    "SendFrame",
    "Signer",
    "VerifyCache",
]
