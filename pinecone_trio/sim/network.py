"""The discrete-event core: many router engines, links and a clock in virtual time.

Theory of operation
-------------------
`Network` owns one `RouterState` per node, the live `Graph`, and a heap of events keyed
by ``(virtual time, sequence number)``. `run_until(t)` pops events in order and feeds
them to the engines; nothing here reads a wall clock, and every random choice comes
from one seeded `random.Random`, so a run is a pure function of its inputs.

Three kinds of event drive everything:

* **arrival**: a frame reaches the far end of a directed link and becomes a
  `FrameIn` for that node (unless the link went down in the meantime: a closed
  connection loses what was in flight);
* **timer**: a node's `next_deadline()` came due; its `on_timer` runs. Each node has at
  most one live timer event; when an engine moves its deadline the old heap entry goes
  stale and is skipped when popped (lazy deletion, cheaper than re-heapifying);
* **call**: a scenario step or a measurement, a plain callable run at its time.

Links follow `LinkModel`. With no bandwidth limit (the default), a frame sent at ``t``
arrives at ``t + latency + U(0, jitter)``, never before the previous frame on the same
link (peerings are reliable ordered streams), and is lost with probability `loss`
(a model of a lossy radio link, not of TCP). With a bandwidth limit, each directed link
has the engine's own `queues.PeerQueue` (protocol first, fair traffic with head drop)
and serialises one frame at a time at `bandwidth` bytes per second.

With ``codec=True`` every frame is encoded by `wire.encode_frame` when it leaves and
decoded by `wire.decode_frame` when it arrives, so a simulation exercises the codec;
otherwise frame objects are passed as they are (about twice as fast).

Engines are carried out exactly as the driver contract in docs/router.md says: actions
in order; `SendFrame` onto the link; `DropPeer` closes the peering (a protocol
violation in a simulation is a bug, so it is counted in `stats.peers_dropped`);
`DeliverLocal` goes to the `on_deliver` hook; `Emit` to the `on_event` hook. The
`on_send` and `on_receive` hooks see every frame as it leaves and as it arrives.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, final

from ..identity import Identity
from ..router.actions import (
    Action,
    DeliverLocal,
    DropPeer,
    Emit,
    Event,
    FrameIn,
    Input,
    PeerDown,
    PeerType,
    PeerUp,
    SendFrame,
)
from ..router.constants import MAX_PORT
from ..router.queues import PeerQueue
from ..router.signer import Ed25519Signer, NullSigner, Signer, VerifyCache
from ..router.state import RouterConfig, RouterState
from ..router.wire import ClosestTraffic, Frame, Traffic, decode_frame, encode_frame, frame_length
from .topology import Graph

#: Bound on events processed by one `run_until` call, against runaway feedback loops.
MAX_EVENTS_PER_RUN: Final = 500_000_000
#: Bound on the actions one engine call may return (a sanity check on the engine).
MAX_ACTIONS_PER_CALL: Final = 100_000

_ARRIVE: Final = 0
_TIMER: Final = 1
_LINK_FREE: Final = 2
_CALL: Final = 3


@final
@dataclass(frozen=True, slots=True)
class LinkModel:
    """How links behave.

    Attributes:
        latency: one-way propagation delay in seconds.
        jitter: extra delay drawn uniformly from ``[0, jitter]`` per frame (order kept).
        loss: probability that a frame is lost on the way (0 for a TCP-like link).
        bandwidth: bytes per second per direction; 0 means unlimited (no queueing).
        flow_frames: with a bandwidth, frames per fair traffic sub-queue (head drop).
        protocol_frames: with a bandwidth, bound of the protocol frame FIFO.
    """

    latency: float = 0.005
    jitter: float = 0.001
    loss: float = 0.0
    bandwidth: float = 0.0
    flow_frames: int = 16
    protocol_frames: int = 1024

    def __post_init__(self) -> None:
        if self.latency < 0 or self.jitter < 0 or self.bandwidth < 0:
            raise ValueError("latency, jitter and bandwidth cannot be negative")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError("loss is a probability")


@final
class Link:
    """One direction of a peering: frames from `src` (port `src_port`) to `dst`."""

    __slots__ = ("dst", "dst_port", "free_at", "last_arrival", "queue", "src", "src_port", "up")

    def __init__(self, src: int, src_port: int, dst: int, dst_port: int) -> None:
        self.src = src
        self.src_port = src_port
        self.dst = dst
        self.dst_port = dst_port
        self.up = True
        self.last_arrival = 0.0
        self.free_at = 0.0
        self.queue: PeerQueue | None = None


@final
class SimNode:
    """One simulated node: its engine, its ports and its pending timer."""

    __slots__ = ("alive", "index", "key", "links", "port_of", "scheduled", "state")

    def __init__(self, index: int, key: bytes, state: RouterState) -> None:
        self.index = index
        self.key = key
        self.state = state
        self.alive = True
        #: port -> outgoing link.
        self.links: dict[int, Link] = {}
        #: neighbour node -> our port to it.
        self.port_of: dict[int, int] = {}
        self.scheduled = math.inf

    def free_port(self) -> int | None:
        for port in range(1, MAX_PORT + 1):
            if port not in self.links:
                return port
        return None


@final
@dataclass(slots=True)
class NetworkStats:
    """Counters over the whole run (reset the byte counters with `reset_traffic`)."""

    events: int = 0
    engine_calls: int = 0
    frames_sent: int = 0
    frames_lost: int = 0
    frames_queue_dropped: int = 0
    frames_dead_link: int = 0
    control_frames: int = 0
    control_bytes: int = 0
    traffic_frames: int = 0
    traffic_bytes: int = 0
    peers_dropped: int = 0
    links_refused: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)


SendHook = Callable[[int, Link, Frame], None]
DeliverHook = Callable[[int, DeliverLocal], None]
EventHook = Callable[[int, Event], None]


@final
class Network:
    """N router engines on a live graph, driven in virtual time.

    Args:
        graph: the topology; the network takes ownership and changes it as links and
            nodes come and go. Links beyond a node's 253 ports are refused and
            removed from the graph (counted in `stats.links_refused`); call
            `Graph.cap_degree` first to choose which.
        seed: seeds the node keys, link jitter and loss.
        link: the link model.
        signatures: sign and verify with real ed25519 (one shared `VerifyCache`, a
            modelling shortcut that removes repeated verifications, not checks), or use
            the `NullSigner`.
        codec: pass frames through the real wire codec.
        config: the engines' timers and bounds.
    """

    def __init__(
        self,
        graph: Graph,
        *,
        seed: int = 0,
        link: LinkModel | None = None,
        signatures: bool = False,
        codec: bool = False,
        config: RouterConfig | None = None,
    ) -> None:
        self.graph = graph
        self.rng = random.Random(f"network:{seed}")
        self.link_model = link if link is not None else LinkModel()
        self.signatures = signatures
        self.codec = codec
        self.config = config if config is not None else RouterConfig()
        self.now = 0.0
        self.stats = NetworkStats()
        self.nodes: list[SimNode] = []
        self.key_index: dict[bytes, int] = {}
        self.verify_cache = VerifyCache(max_entries=1 << 20)
        self.on_send: SendHook | None = None
        self.on_deliver: DeliverHook | None = None
        self.on_event: EventHook | None = None
        self.on_receive: SendHook | None = None
        self._heap: list[tuple[float, int, int, object, object]] = []
        self._by_key: tuple[int, list[list[int]]] | None = None
        self._seq = 0
        self._key_rng = random.Random(f"keys:{seed}")
        for _ in range(len(graph)):
            self._new_node()
        for a, b in list(graph.links()):
            self.connect(a, b)

    # --- nodes and links ----------------------------------------------------------------

    def _new_node(self) -> SimNode:
        index = len(self.nodes)
        seed = self._key_rng.randbytes(32)
        signer: Signer
        if self.signatures:
            identity = Identity.from_seed(seed)
            key = bytes(identity.public_key)
            signer = Ed25519Signer(identity, cache=self.verify_cache)
        else:
            key = seed  # any 32 bytes will do when nothing is signed
            signer = NullSigner(key)
        state = RouterState(key, signer, config=self.config, now=self.now)
        node = SimNode(index, key, state)
        self.nodes.append(node)
        self.key_index[key] = index
        self._reschedule(node)
        return node

    def add_node(self, name: str | None = None) -> int:
        """Add a node with no links and a fresh engine; return its number."""
        index = self.graph.add_node(name)
        node = self._new_node()
        assert node.index == index
        return index

    def connect(self, a: int, b: int) -> bool:
        """Peer `a` and `b` now (both engines get `PeerUp`); False if not possible."""
        na, nb = self.nodes[a], self.nodes[b]
        if a == b or not (na.alive and nb.alive) or b in na.port_of:
            return False
        pa, pb = na.free_port(), nb.free_port()
        if pa is None or pb is None:
            self.stats.links_refused += 1
            self.graph.remove_link(a, b)
            return False
        self.graph.add_link(a, b)
        ab = Link(a, pa, b, pb)
        ba = Link(b, pb, a, pa)
        if self.link_model.bandwidth > 0:
            for lk in (ab, ba):
                lk.queue = PeerQueue(
                    flow_frames=self.link_model.flow_frames,
                    protocol_frames=self.link_model.protocol_frames,
                    seed=self.rng.getrandbits(32),
                )
        na.links[pa] = ab
        na.port_of[b] = pa
        nb.links[pb] = ba
        nb.port_of[a] = pb
        self._input(na, PeerUp(port=pa, public_key=nb.key, peer_type=PeerType.REMOTE))
        self._input(nb, PeerUp(port=pb, public_key=na.key, peer_type=PeerType.REMOTE))
        return True

    def disconnect(self, a: int, b: int) -> bool:
        """Close the peering of `a` and `b` now; both engines get `PeerDown`."""
        na = self.nodes[a]
        pa = na.port_of.get(b)
        if pa is None:
            return False
        self._close(na, pa)
        return True

    def _close(self, node: SimNode, port: int) -> None:
        out = node.links.pop(port)
        other = self.nodes[out.dst]
        back = other.links.pop(out.dst_port)
        del node.port_of[other.index]
        del other.port_of[node.index]
        out.up = back.up = False
        self.graph.remove_link(node.index, other.index)
        if node.alive:
            self._input(node, PeerDown(port=port))
        if other.alive:
            self._input(other, PeerDown(port=out.dst_port))

    def remove_node(self, a: int) -> list[int]:
        """Take node `a` off the network (its peers see their links close); return them."""
        node = self.nodes[a]
        former = sorted(node.port_of)
        node.alive = False
        for port in sorted(node.links):
            self._close(node, port)
        self.graph.remove_node(a)
        node.scheduled = math.inf
        del self.key_index[node.key]
        return former

    def components_by_key(self) -> list[list[int]]:
        """The live graph's components, each sorted by key (cached per graph version)."""
        cached = self._by_key
        if cached is None or cached[0] != self.graph.version:
            nodes = self.nodes
            ordered = [sorted(c, key=lambda a: nodes[a].key) for c in self.graph.components()]
            cached = self._by_key = (self.graph.version, ordered)
        return cached[1]

    def neighbours(self, a: int) -> list[int]:
        return sorted(self.nodes[a].port_of)

    def node_of_port(self, a: int, port: int) -> int | None:
        link = self.nodes[a].links.get(port)
        return None if link is None else link.dst

    # --- driving engines ----------------------------------------------------------------

    def local_input(self, a: int, event: Input) -> None:
        """Hand `event` (usually a `LocalSend`) to node `a`'s engine now."""
        node = self.nodes[a]
        if node.alive:
            self._input(node, event)

    def _input(self, node: SimNode, event: Input) -> None:
        self.stats.engine_calls += 1
        self._apply(node, node.state.on_input(event, self.now))

    def _reschedule(self, node: SimNode) -> None:
        deadline = node.state.next_deadline()
        if deadline < self.now:
            deadline = self.now
        if deadline != node.scheduled:
            node.scheduled = deadline
            if deadline < math.inf:
                self._push(deadline, _TIMER, node, None)

    def _apply(self, node: SimNode, actions: list[Action]) -> None:
        # The hot path of the simulator: kept flat, with the common case (SendFrame on
        # an unbounded link) inlined, so that the engines dominate the profile.
        if len(actions) > MAX_ACTIONS_PER_CALL:
            raise RuntimeError(f"engine returned {len(actions)} actions in one call")
        for action in actions:
            if type(action) is SendFrame:
                link = node.links.get(action.port)
                if link is None:
                    self.stats.frames_dead_link += 1
                else:
                    self._send(link, action.frame)
            elif type(action) is DeliverLocal:
                if self.on_deliver is not None:
                    self.on_deliver(node.index, action)
            elif type(action) is Emit:
                if self.on_event is not None:
                    self.on_event(node.index, action.event)
            elif type(action) is DropPeer:
                self.stats.peers_dropped += 1
                reasons = self.stats.drop_reasons
                reasons[action.reason] = reasons.get(action.reason, 0) + 1
                if action.port in node.links:
                    self._close(node, action.port)
        deadline = node.state.next_deadline()
        now = self.now
        if deadline < now:
            deadline = now
        if deadline != node.scheduled:
            node.scheduled = deadline
            if deadline < math.inf:
                self._seq += 1
                heapq.heappush(self._heap, (deadline, self._seq, _TIMER, node, None))

    def _send(self, link: Link, frame: Frame) -> None:
        stats = self.stats
        stats.frames_sent += 1
        size = frame_length(frame)
        if type(frame) is Traffic or type(frame) is ClosestTraffic:
            stats.traffic_frames += 1
            stats.traffic_bytes += size
        else:
            stats.control_frames += 1
            stats.control_bytes += size
        if self.on_send is not None:
            self.on_send(link.src, link, frame)
        if link.queue is None:
            self._transmit(link, encode_frame(frame) if self.codec else frame, self.now)
            return
        dropped = link.queue.push(frame)
        if dropped is not None:
            stats.frames_queue_dropped += 1
        if link.free_at <= self.now:
            self._start_next(link)

    def _start_next(self, link: Link) -> None:
        assert link.queue is not None
        frame = link.queue.pop()
        if frame is None:
            return
        done = self.now + frame_length(frame) / self.link_model.bandwidth
        link.free_at = done
        self._transmit(link, encode_frame(frame) if self.codec else frame, done)
        self._push(done, _LINK_FREE, link, None)

    def _transmit(self, link: Link, payload: object, leaves: float) -> None:
        model = self.link_model
        if model.loss and self.rng.random() < model.loss:
            self.stats.frames_lost += 1
            return
        arrive = leaves + model.latency
        if model.jitter:
            arrive += self.rng.random() * model.jitter
        if arrive < link.last_arrival:
            arrive = link.last_arrival
        link.last_arrival = arrive
        self._seq += 1
        heapq.heappush(self._heap, (arrive, self._seq, _ARRIVE, link, payload))

    def _push(self, t: float, kind: int, obj: object, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, obj, data))

    def call_at(self, t: float, fn: Callable[[], None]) -> None:
        """Run `fn()` at virtual time `t` (now if `t` is in the past)."""
        self._push(max(t, self.now), _CALL, fn, None)

    def run_until(self, t: float, *, stop: Callable[[], bool] | None = None) -> None:
        """Process every event up to and including virtual time `t`, then set `now = t`.

        Args:
            t: the virtual time to run to.
            stop: checked after every scheduled call; when it returns True, return early
                (with `now` at that call's time).
        """
        heap = self._heap
        nodes_alive = self.nodes
        pop = heapq.heappop
        stats = self.stats
        budget = MAX_EVENTS_PER_RUN
        while heap and heap[0][0] <= t:
            budget -= 1
            if budget < 0:
                raise RuntimeError("event budget exhausted: is something looping?")
            when, _, kind, obj, data = pop(heap)
            self.now = when
            stats.events += 1
            if kind == _ARRIVE:
                assert isinstance(obj, Link)
                if not obj.up:
                    stats.frames_dead_link += 1
                    continue
                dst = nodes_alive[obj.dst]
                frame = decode_frame(data) if type(data) is bytes else data
                if self.on_receive is not None:
                    self.on_receive(obj.dst, obj, frame)  # type: ignore[arg-type]
                stats.engine_calls += 1
                self._apply(dst, dst.state.on_input(FrameIn(obj.dst_port, frame), when))  # type: ignore[arg-type]
            elif kind == _TIMER:
                assert isinstance(obj, SimNode)
                if obj.scheduled != when or not obj.alive:
                    continue
                obj.scheduled = math.inf
                stats.engine_calls += 1
                self._apply(obj, obj.state.on_timer(when))
            elif kind == _LINK_FREE:
                assert isinstance(obj, Link)
                if obj.up:
                    self._start_next(obj)
            else:
                fn: Callable[[], None] = obj  # type: ignore[assignment]
                fn()
                if stop is not None and stop():
                    return
        self.now = max(self.now, t)

    def reset_traffic(self) -> None:
        """Zero the frame and byte counters (to measure one window)."""
        s = self.stats
        s.frames_sent = s.control_frames = s.control_bytes = 0
        s.traffic_frames = s.traffic_bytes = 0
