"""Per-port outgoing queues: protocol frames first and bounded, fair traffic with head drop.

Theory of operation
-------------------
The engine does not queue: each `SendFrame(port, frame)` means "push `frame` onto the
`PeerQueue` for `port`". The Trio driver keeps one `PeerQueue` per peering and its
writer task pops from it; the simulator does the same when it models link capacity
(or skips queues when links are unbounded). Both get one discipline
(research §4.4, with the fixes of §17.5):

* **Protocol frames** (announcements, bootstraps, broadcasts, keepalives) always go
  before traffic. At most one announcement is ever pending: a newer one replaces the
  queued one in place (only the latest matters; the receiver would discard the older
  one anyway). Other protocol frames wait in a FIFO of `PROTOCOL_QUEUE_FRAMES`; when
  it is full the oldest is dropped (bootstraps are soft state and are resent every 5 s).
  Pinecone's protocol queue is unbounded: a peer that stops reading grows it forever.
* **Traffic** (`Traffic`, `ClosestTraffic`) is fair per flow: frames are hashed by
  (source key, destination key) into one of `flows` sub-queues of `flow_frames` each;
  a full sub-queue drops its oldest frame (head drop: the newest data is the most
  useful to a real-time flow, and the sender's congestion control sees the loss). Sub-
  queues are served round-robin, one frame each turn, so one busy flow cannot starve the
  others. The hash is CRC-32 with a per-queue seed, deterministic for a given seed.

`push` never refuses and returns the frame it dropped, if any, so the owner can count.
"""

from __future__ import annotations

import zlib
from collections import deque
from dataclasses import dataclass
from typing import final

from .constants import PROTOCOL_QUEUE_FRAMES, TRAFFIC_QUEUE_FLOW_FRAMES, TRAFFIC_QUEUE_FLOWS
from .wire import ClosestTraffic, Frame, Traffic, TreeAnnouncement

__all__ = ["PeerQueue", "QueueStatistics", "is_traffic"]


def is_traffic(frame: Frame) -> bool:
    """Whether `frame` belongs in the fair traffic queue (not the protocol queue)."""
    return type(frame) is Traffic or type(frame) is ClosestTraffic


@final
@dataclass(slots=True)
class QueueStatistics:
    pushed: int = 0
    popped: int = 0
    dropped_protocol: int = 0
    dropped_traffic: int = 0
    replaced_announcements: int = 0


@final
class PeerQueue:
    """The outgoing queue of one port.

    Args:
        flows: number of fair traffic sub-queues (Pinecone: 254; 16 for Bluetooth).
        flow_frames: frames per sub-queue before head drop.
        protocol_frames: bound of the protocol FIFO (announcements not counted).
        seed: per-queue hash seed (deterministic flows for tests and simulations).
    """

    __slots__ = (
        "_active",
        "_announcement",
        "_flow_frames",
        "_flows",
        "_n_flows",
        "_protocol",
        "_protocol_frames",
        "_seed",
        "_traffic_len",
        "stats",
    )

    def __init__(
        self,
        *,
        flows: int = TRAFFIC_QUEUE_FLOWS,
        flow_frames: int = TRAFFIC_QUEUE_FLOW_FRAMES,
        protocol_frames: int = PROTOCOL_QUEUE_FRAMES,
        seed: int = 0,
    ) -> None:
        if flows < 1 or flow_frames < 1 or protocol_frames < 1:
            raise ValueError("queue bounds must be positive")
        self._n_flows = flows
        self._flow_frames = flow_frames
        self._protocol_frames = protocol_frames
        self._seed = seed & 0xFFFFFFFF
        self._announcement: TreeAnnouncement | None = None
        self._protocol: deque[Frame] = deque()
        self._flows: dict[int, deque[Frame]] = {}
        #: Flow ids with frames, in round-robin order.
        self._active: deque[int] = deque()
        self._traffic_len = 0
        self.stats = QueueStatistics()

    def __len__(self) -> int:
        return (self._announcement is not None) + len(self._protocol) + self._traffic_len

    def __bool__(self) -> bool:
        return len(self) > 0

    @property
    def protocol_len(self) -> int:
        return (self._announcement is not None) + len(self._protocol)

    @property
    def traffic_len(self) -> int:
        return self._traffic_len

    def _flow_of(self, frame: Traffic | ClosestTraffic) -> int:
        dest = frame.destination_key if type(frame) is Traffic else frame.target_key
        return zlib.crc32(dest, zlib.crc32(frame.source_key, self._seed)) % self._n_flows

    def push(self, frame: Frame) -> Frame | None:
        """Queue `frame`; return the frame dropped to make room, if any."""
        self.stats.pushed += 1
        if type(frame) is Traffic or type(frame) is ClosestTraffic:
            flow = self._flow_of(frame)
            q = self._flows.get(flow)
            if q is None:
                q = self._flows[flow] = deque()
            if not q:
                self._active.append(flow)
            q.append(frame)
            if len(q) > self._flow_frames:
                self.stats.dropped_traffic += 1
                return q.popleft()
            self._traffic_len += 1
            return None
        if type(frame) is TreeAnnouncement:
            old = self._announcement
            self._announcement = frame
            if old is not None:
                self.stats.replaced_announcements += 1
            return old
        self._protocol.append(frame)
        if len(self._protocol) > self._protocol_frames:
            self.stats.dropped_protocol += 1
            return self._protocol.popleft()
        return None

    def pop(self) -> Frame | None:
        """The next frame to send, or None when empty: protocol first, then traffic."""
        ann = self._announcement
        if ann is not None:
            self._announcement = None
            self.stats.popped += 1
            return ann
        if self._protocol:
            self.stats.popped += 1
            return self._protocol.popleft()
        if not self._active:
            return None
        flow = self._active.popleft()
        q = self._flows[flow]
        frame = q.popleft()
        if q:
            self._active.append(flow)
        else:
            del self._flows[flow]
        self._traffic_len -= 1
        self.stats.popped += 1
        return frame

    def clear(self) -> None:
        """Drop everything (the peering is gone)."""
        self._announcement = None
        self._protocol.clear()
        self._flows.clear()
        self._active.clear()
        self._traffic_len = 0
