"""The running node: router task, listeners, peerings, static peers and LAN discovery.

Theory of operation
-------------------
`open_node(identity, ...)` yields a `Node` whose nursery holds everything it runs:

- the **router task**, the only owner of the sans-IO `RouterState`. It sleeps until
  the engine's next deadline or the next item in its inbox (a bounded memory
  channel), feeds the engine, and carries out the actions it returns synchronously:
  frames go onto the target peering's `PeerQueue` (at the end of the wakeup the router
  writes those queues to their links itself when a link can write at once,
  `Peering.write_queued`; otherwise the peering's writer does), local deliveries into
  the bounded receive buffer (dropped and counted when full), dropped peers are closed, and events
  go to subscribers. Because all of that happens between checkpoints, a cancellation
  can never land half-way through a routing decision.
- one **listener** task per `listen` URI (and one TCP listener for LAN discovery);
- one task per **peering** (`Peering.run`: a reader and a writer task), started when a
  Noise handshake completes and ended when the link does; the node then tells the
  router `PeerDown`;
- one task per **static peer**, which keeps its URI connected and redials with
  exponential backoff and jitter;
- the **multicast discovery** tasks, which call back into the node for each beacon.

Duplicate links between the same two keys are resolved the same way on both sides,
without coordination: the link dialled by the lower key wins, and between two such
links the one with the lower Noise handshake hash wins. Both sides see the same
handshake hash, so they always keep the same link.

Leaving the `open_node` block cancels the nursery: every link is closed and no task
outlives it. A background failure surfaces as `NodeCrashedError`; a peer that
misbehaves only ends its own peering (counted in `status()`).
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from typing import Any, Final, overload

import trio

from . import events as ev
from ._util import open_service_nursery, single_failure
from .backoff import DIAL_TIMEOUT, backoff_delay
from .discovery.beacon import Beacon
from .discovery.multicast import MulticastDiscovery
from .errors import LinkError, PeerLimitError
from .identity import Identity, PublicKey
from .link.handshake import PREPARED_HANDSHAKES
from .link.stream import NoiseLink
from .peering import FrameBatch, InboxItem, Peering, SendBudget
from .router.actions import (
    Action,
    DeliverLocal,
    DeliveryMode,
    DescendingChanged,
    DropPeer,
    Emit,
    FrameIn,
    LocalSend,
    LocalSendClosest,
    ParentChanged,
    PeerDown,
    PeerType,
    PeerUp,
    RootChanged,
    SendFrame,
)
from .router.constants import MAX_PORT
from .router.signer import Ed25519Signer
from .router.state import RouterConfig, RouterState
from .router.wire import ClosestTraffic, Traffic, TreeAnnouncement
from .services import (
    FIRST_APPLICATION_SERVICE,
    MAX_DATAGRAM_PAYLOAD,
    SERVICE_DATAGRAM,
    SERVICE_DHT,
    SERVICE_SESSION,
    Datagram,
    OverlayService,
    SessionServiceAdapter,
)
from .sessions.config import SessionConfig
from .sessions.manager import SessionManager
from .sessions.stream import SessionListener, SessionStream
from .transports import Address, parse_uri
from .transports import dial as dial_transport
from .transports import serve as serve_transport

logger = logging.getLogger(__name__)

__all__ = [
    "FIRST_APPLICATION_SERVICE",
    "MAX_DATAGRAM_PAYLOAD",
    "SERVICE_DATAGRAM",
    "SERVICE_DHT",
    "SERVICE_SESSION",
    "Datagram",
    "Node",
    "NodeConfig",
    "OverlayService",
    "PeerLimitError",
    "open_node",
]

#: Peerings a node accepts by default (the router has 253 ports; keep headroom).
DEFAULT_MAX_PEERS: Final = 64
#: Inbound connections allowed to be mid-handshake at once; more are closed at once.
MAX_PENDING_HANDSHAKES: Final = 32
#: Items the router inbox holds before senders wait (back-pressure on peer readers).
INBOX_SIZE: Final = 1024
#: Events buffered per subscriber before that subscriber misses some.
EVENT_BUFFER: Final = 256
#: Event subscribers at once (each holds a buffer of EVENT_BUFFER events).
MAX_SUBSCRIBERS: Final = 256
#: The router handles at most about this many queued inputs (frames of a `FrameBatch`
#: count one each) in one go before checking timers and letting the writers run.
ROUTER_BATCH: Final = 256
#: A key heard in a beacon is dialled at most once per this many seconds at one address.
BEACON_REDIAL_INTERVAL: Final = 5.0
#: (key, address) pairs remembered for the beacon redial limit.
MAX_BEACON_MEMORY: Final = 1024
#: Dials triggered by beacons in progress at once; more beacons wait for the next round.
MAX_BEACON_DIALS: Final = 16
#: Of those, at most this many to addresses one host's beacons named.
MAX_BEACON_DIALS_PER_HOST: Final = 2
#: A static peering that lasted at least this long counts as a success (backoff reset);
#: one that ended sooner counts as a failure, so a peer that accepts and hangs up at
#: once is redialled with growing delays, not in a tight loop.
STATIC_STABLE_AFTER: Final = 10.0
#: Locally originated traffic queued at most before `send` waits (back-pressure).
LOCAL_SEND_BYTES: Final = 2 * 1024 * 1024
LOCAL_SEND_FRAMES: Final = 256
#: The capability a listener at its peer limit advertises before it closes the link.
REFUSED_PEER_LIMIT: Final = "refused:peer-limit"
#: How long a node leaving through `open_node` waits for its sessions' CLOSE packets
#: to reach the links, so that peers learn at once instead of by their idle timeout.
GOODBYE_GRACE: Final = 0.25


#: The router settings a running node uses unless told otherwise. The engine's own
#: defaults are Pinecone's timers (the simulator's benchmark reports those); a node
#: deviates in two measured ways (docs/router.md, "Snake stability" and "Root sequence
#: refresh"): snake entries live 12.5 s instead of 10 s, so an entry refreshed every
#: other 5 s round does not expire at the instant it is refreshed, and bootstraps whose
#: root sequence is one behind still count, so the 30-minute root refresh does not
#: clear every descending neighbour in the network at once.
DEPLOYED_ROUTER_CONFIG: Final = RouterConfig(snake_expiry=12.5, root_seq_tolerance=1)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Tunables of a node; the defaults suit a relay or an app on a laptop."""

    max_peers: int = DEFAULT_MAX_PEERS
    #: Send keepalives and drop silent peers (Pinecone's 3 s / 5 s). Off only for tests
    #: of idle behaviour over memory links.
    keepalives: bool = True
    handshake_timeout: float = 10.0
    dial_timeout: float = DIAL_TIMEOUT
    router: RouterConfig | None = None
    sessions: SessionConfig | None = None
    #: Overrides for multicast discovery (tests use a short interval).
    beacon_interval: float | None = None
    multicast_port: int | None = None


@dataclass(slots=True)
class StaticPeerState:
    """What `status()` shows for one static peer."""

    uri: str
    state: str = "starting"
    public_key: PublicKey | None = None
    failures: int = 0
    last_error: str = ""
    next_attempt: float = 0.0
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def status(self, now: float) -> dict[str, Any]:
        """This static peer's part of `Node.status()` (JSON-ready)."""
        waiting = self.state == "waiting"
        return {
            "uri": self.uri,
            "state": self.state,
            "public_key": self.public_key.hex() if self.public_key is not None else None,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_attempt_in": round(max(0.0, self.next_attempt - now), 3) if waiting else None,
        }


@dataclass(slots=True)
class NodeCounters:
    handshake_failures: int = 0
    misbehaving_peers: int = 0
    refused_peer_limit: int = 0
    refused_pending_handshakes: int = 0
    duplicate_links: int = 0
    dial_failures: int = 0
    receive_drops: int = 0
    unknown_service: int = 0
    queue_drops: int = 0


def _remote_uri(stream: trio.abc.Stream, scheme: str) -> str:
    """Best-effort description of where an inbound stream comes from."""
    sock = getattr(stream, "socket", None)
    if sock is not None:
        try:
            host, port = sock.getpeername()[:2]
        except OSError:
            pass
        else:
            return f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"
    return f"{scheme}://(inbound)"


class Node:
    """A pinecone-trio node. Get one from `open_node`; see the module docstring."""

    def __init__(self, identity: Identity, config: NodeConfig | None = None) -> None:
        self._identity = identity
        self._config = config or NodeConfig()
        if not 1 <= self._config.max_peers <= MAX_PORT:
            raise ValueError(f"max_peers must be 1..{MAX_PORT}")
        self._public_key = identity.public_key
        self._state: RouterState | None = None
        self._nursery: trio.Nursery | None = None
        self._inbox_send, self._inbox_recv = trio.open_memory_channel[InboxItem](INBOX_SIZE)
        self._services: dict[int, OverlayService] = {}
        self._raw = self.service(SERVICE_DATAGRAM)
        session_config = self._config.sessions or SessionConfig()
        if session_config.max_packet_size > MAX_DATAGRAM_PAYLOAD:
            session_config = replace(session_config, max_packet_size=MAX_DATAGRAM_PAYLOAD)
        self._sessions = SessionManager(
            SessionServiceAdapter(self.service(SERVICE_SESSION)), identity, config=session_config
        )
        self._budget = SendBudget(LOCAL_SEND_BYTES, LOCAL_SEND_FRAMES)
        self._peerings: dict[int, Peering] = {}
        self._stopped = False  # `run` has ended (or crashed)
        #: Peerings that got frames in the router's current pass; it writes them at
        #: the end of the pass (`Peering.write_queued`), coalesced, without the writers.
        self._flush_list: list[Peering] = []
        self._by_key: dict[bytes, Peering] = {}
        self._free_ports = list(range(1, MAX_PORT + 1))
        self._subscribers: set[trio.MemorySendChannel[ev.NodeEvent]] = set()
        self._changed = trio.Event()
        #: What the router showed at its last wakeup (root, descending key, parent
        #: port, coordinates): a difference is a state change for `wait_for`.
        self._router_view: tuple[object, ...] = ()
        self._listen_uris: list[str] = []
        self._multicast_port: int | None = None
        self._multicast_port_v6: int | None = None
        self._discovery: MulticastDiscovery | None = None
        self._static: dict[str, StaticPeerState] = {}
        # Beacon dials in progress and recent ones, by (key, host, port): a beacon that
        # names a key at a wrong or stalling address must not hold back the real one.
        self._dialling: dict[tuple[bytes, str, int], str] = {}
        self._beacon_dials: dict[tuple[bytes, str, int], float] = {}
        self._pending_handshakes = 0
        self._rng = random.Random()
        self.counters = NodeCounters()

    # --- identity and addresses -------------------------------------------------------

    @property
    def public_key(self) -> PublicKey:
        """This node's key: its address on the overlay."""
        return self._public_key

    @property
    def identity(self) -> Identity:
        return self._identity

    @property
    def listen_uris(self) -> list[str]:
        """The URIs the node's listeners bound (ports resolved)."""
        return list(self._listen_uris)

    # --- running ------------------------------------------------------------------------

    async def run(
        self,
        *,
        listen: Sequence[str] = (),
        static_peers: Sequence[str] = (),
        multicast: bool = False,
        multicast_interfaces: Sequence[str] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the node until cancelled. Ready (listeners bound) when started.

        Raises:
            OSError: if a listen address cannot be bound.
            ValueError: if a URI is malformed.
        """
        if self._nursery is not None:
            raise RuntimeError("a Node runs once")
        router_config = self._config.router or DEPLOYED_ROUTER_CONFIG
        offset = time.time() - trio.current_time()
        router_config = _replace_offset(router_config, offset)
        self._state = RouterState(
            bytes(self._public_key),
            Ed25519Signer(self._identity),
            config=router_config,
            now=trio.current_time(),
        )
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self._router_task)
                nursery.start_soon(self._prepare_handshakes)
                await nursery.start(self._sessions.run)
                for uri in listen:
                    scheme = parse_uri(uri).scheme
                    handler = partial(self._accept, PeerType.REMOTE, scheme)
                    bound = await nursery.start(serve_transport, uri, handler)
                    self._listen_uris.append(bound)
                if multicast:
                    await self._start_multicast(nursery, multicast_interfaces)
                for uri in static_peers:
                    self.add_static_peer(uri)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._stopped = True
            self._inbox_send.close()
            for service in self._services.values():
                service.close()
            for channel in list(self._subscribers):
                channel.close()

    async def _say_goodbye(self) -> None:
        """Close every session, telling its peer, and give the CLOSE packets up to
        `GOODBYE_GRACE` to leave through the router and the links."""
        if self._nursery is None or self._stopped or not self._sessions.close_all("the peer left"):
            return
        # A shutdown path, polled: at most one check per millisecond, for 0.25 s.
        with trio.move_on_after(GOODBYE_GRACE):
            for _ in range(int(GOODBYE_GRACE * 1000)):
                if (
                    not self._sessions.flushing
                    and not self._inbox_send.statistics().current_buffer_used
                    and all(peering.idle for peering in self._peerings.values())
                ):
                    return
                await trio.sleep(0.001)

    async def _prepare_handshakes(self) -> None:
        """Keep `PREPARED_HANDSHAKES` filled, one item per scheduler pass.

        Woken whenever a handshake leaves the pool half full or less, so new links and
        sessions rarely pay for the Noise object and the ephemeral key themselves.
        """
        pool = PREPARED_HANDSHAKES
        wake = trio.Event()

        def low() -> None:
            wake.set()

        pool.add_listener(low)
        try:
            while True:
                wake = trio.Event()
                for _ in range(pool.size):  # bounded: at most a full pool per wakeup
                    if not pool.refill_one():
                        break
                    await trio.lowlevel.checkpoint()
                await wake.wait()
        finally:
            pool.remove_listener(low)

    async def _start_multicast(
        self, nursery: trio.Nursery, interfaces: Sequence[str] | None
    ) -> None:
        handler = partial(self._accept, PeerType.MULTICAST, "multicast")
        bound = await nursery.start(serve_transport, "tcp://0.0.0.0:0", handler)
        self._multicast_port = parse_uri(bound).port
        try:
            # A second listener for IPv6 link-local peerings (two laptops on a bare
            # cable have no IPv4 addresses); Trio makes it IPv6-only.
            bound_v6 = await nursery.start(serve_transport, "tcp://[::]:0", handler)
        except OSError as exc:
            logger.info("no IPv6 listener for LAN discovery: %s", exc)
        else:
            self._multicast_port_v6 = parse_uri(bound_v6).port
        options: dict[str, Any] = {}
        if self._config.beacon_interval is not None:
            options["interval"] = self._config.beacon_interval
        if self._config.multicast_port is not None:
            options["port"] = self._config.multicast_port
        self._discovery = MulticastDiscovery(
            self._public_key,
            listen_port=lambda: self._multicast_port,
            listen_port_v6=None
            if self._multicast_port_v6 is None
            else (lambda: self._multicast_port_v6),
            on_beacon=self._on_beacon,
            interfaces=interfaces,
            **options,
        )
        await nursery.start(self._discovery.run)

    # --- the router task ------------------------------------------------------------------

    async def _router_task(self, *, task_status: trio.TaskStatus[None]) -> None:
        state = self._state
        assert state is not None
        inbox = self._inbox_recv
        task_status.started()
        with inbox:
            while True:
                # One cancel scope per timer period, not one per wait: its deadline
                # follows the engine's (moving it is cheap; making and entering a scope
                # is several µs, and the router waits about once per packet). When it
                # fires, the wait or the checkpoint in it ends; no inbox item is lost
                # (a cancelled `receive` takes none, and a taken item is handled first).
                with trio.CancelScope(deadline=state.next_deadline()) as timer:
                    while True:
                        item: InboxItem | None
                        try:
                            item = inbox.receive_nowait()
                        except trio.WouldBlock:
                            item = None
                        if item is None:
                            # (outside the except clause: the pass's own errors must not
                            # carry WouldBlock as their context; and no name holds the
                            # item, so an idle router keeps nothing alive)
                            self._router_pass(state, await inbox.receive())
                        else:
                            self._router_pass(state, item)
                            item = None
                            await trio.lowlevel.checkpoint()  # never starve the other tasks
                        deadline = state.next_deadline()
                        if deadline != timer.deadline:
                            timer.deadline = deadline
                self._router_pass(state, None)  # the timer fired

    def _router_pass(self, state: RouterState, item: InboxItem | None) -> None:
        """Handle `item` and whatever else the inbox holds (up to `ROUTER_BATCH`
        inputs), run due timers, write what the pass queued on links, and tell
        `wait_for` callers if the router's view changed."""
        now = trio.current_time()
        if item is not None:
            handled = self._handle(state, item, now)
            inbox = self._inbox_recv
            while handled < ROUTER_BATCH:
                try:
                    item = inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                handled += self._handle(state, item, now)
        if now >= state.next_deadline():
            self._apply(state.on_timer(now))
        if self._flush_list:
            flush = self._flush_list[:]
            self._flush_list.clear()  # the peerings hold this very list
            for peering in flush:
                peering.write_queued()
        # Some of what `status()` shows changes without an engine event: the
        # descending neighbour turns valid or stale as bootstraps refresh its entry,
        # time passes or the root changes. Compare once per pass, so `wait_for`
        # re-checks its predicate at every such change too.
        view = (state.root, state.descending_key, state.parent_port, state.coords)
        if view != self._router_view:
            self._router_view = view
            self._notify()

    def _handle(self, state: RouterState, item: InboxItem, now: float) -> int:
        """Feed one inbox item to the engine and carry out its actions; return the
        number of engine inputs it was (a batch's frame count)."""
        kind = type(item)
        if kind is FrameBatch:
            batch: FrameBatch = item  # type: ignore[assignment]
            port = batch.port
            on_input = state.on_input
            apply = self._apply
            for frame in batch.frames:
                apply(on_input(FrameIn(port, frame), now))
            batch.done()
            return len(batch.frames)
        actions = state.on_input(item, now)  # type: ignore[arg-type]
        # A local send took budget; unless its frame was queued on a peering (which
        # releases it when the frame leaves), give it back now.
        if (kind is LocalSend or kind is LocalSendClosest) and not any(
            type(a) is SendFrame for a in actions
        ):
            self._budget.release(len(item.payload))  # type: ignore[union-attr]
        self._apply(actions)
        return 1

    def _apply(self, actions: list[Action]) -> None:
        for action in actions:
            kind = type(action)
            if kind is SendFrame:
                send: SendFrame = action  # type: ignore[assignment]
                peering = self._peerings.get(send.port)
                if peering is None:
                    frame = send.frame
                    if (
                        type(frame) is Traffic or type(frame) is ClosestTraffic
                    ) and frame.source_key == self._public_key:
                        self._budget.release(len(frame.payload))
                else:
                    dropped = peering.enqueue(send.frame)
                    # A newer tree announcement replacing a queued one loses nothing.
                    if dropped is not None and type(dropped) is not TreeAnnouncement:
                        self.counters.queue_drops += 1
                        self._notify()
            elif kind is DeliverLocal:
                self._deliver(action)  # type: ignore[arg-type]
            elif kind is DropPeer:
                drop: DropPeer = action  # type: ignore[assignment]
                peering = self._peerings.get(drop.port)
                if peering is not None:
                    self.counters.misbehaving_peers += 1
                    self._notify()
                    peering.close(f"misbehaving: {drop.reason}")
            elif kind is Emit:
                self._on_router_event(action.event)  # type: ignore[union-attr]

    def _deliver(self, action: DeliverLocal) -> None:
        payload = action.payload
        service = self._services.get(payload[0]) if payload else None
        if service is None:
            self.counters.unknown_service += 1
            self._notify()
            return
        closest = action.mode is not DeliveryMode.EXACT
        direct = service.direct
        if direct is not None and not closest:
            # Straight to the service in this (the router) task: no copy of the
            # payload, no queue item, no task switch.
            service.direct_deliveries += 1
            try:
                taken = direct(action.source_key, memoryview(payload)[1:])
            except Exception:  # a service bug must not take the router down
                logger.exception("service %d's direct handler failed", payload[0])
                taken = False
            if not taken:
                self.counters.receive_drops += 1
                self._notify()
            return
        datagram = Datagram(
            PublicKey(action.source_key),
            bytes(payload[1:]),  # queued: its own bytes, not a view of a read buffer
            PublicKey(action.target_key) if closest else None,
            action.hops,
        )
        if not service.deliver_nowait(datagram, closest):
            self.counters.receive_drops += 1
            self._notify()

    def _on_router_event(self, event: object) -> None:
        if isinstance(event, RootChanged):
            self._publish(ev.RootChanged(PublicKey(event.root_key), event.root_seq))
        elif isinstance(event, ParentChanged):
            peering = self._peerings.get(event.port) if event.port is not None else None
            key = peering.public_key if peering is not None else None
            self._publish(ev.ParentChanged(key, tuple(event.coords)))
        elif isinstance(event, DescendingChanged):
            desc = PublicKey(event.public_key) if event.public_key is not None else None
            self._publish(ev.SnakeNeighbourChanged(desc))
        else:
            self._notify()  # PeerAdded/PeerRemoved: the node publishes its own versions

    def _publish(self, event: ev.NodeEvent) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                pass  # a slow subscriber misses events rather than stalling the router
            except trio.BrokenResourceError:
                self._subscribers.discard(channel)
        self._notify()

    def _notify(self) -> None:
        # Cheap when nobody waits (counters call this per dropped frame): a waiter
        # checks its predicate and parks without a checkpoint in between, so it
        # cannot miss a change that happened while it was not parked.
        changed = self._changed
        if changed.statistics().tasks_waiting:
            changed.set()
            self._changed = trio.Event()

    # --- peerings -------------------------------------------------------------------------

    def _prefer_new_link(self, existing: Peering, new_link: NoiseLink, outbound: bool) -> bool:
        lower_is_us = self._public_key < existing.public_key

        def rank(dialled_by_us: bool, handshake_hash: bytes) -> tuple[bool, bytes]:
            # False sorts first: a link dialled by the lower key is preferred.
            return (dialled_by_us != lower_is_us, handshake_hash)

        old_hash = existing.link.handshake_hash if isinstance(existing.link, NoiseLink) else b""
        return rank(outbound, new_link.handshake_hash) < rank(existing.outbound, old_hash)

    async def _attach(
        self, link: NoiseLink, *, uri: str, peer_type: PeerType, zone: str, outbound: bool
    ) -> Peering | None:
        """Register a link whose handshake completed; None when it is not kept.

        The caller must run the returned peering at once (`peering.run()`, or start it
        before its next checkpoint): the registration is the last thing here, with no
        checkpoint after it, so a cancellation can never leave a registered peering
        that nobody runs. Whatever happens before, the link is closed on the way out.
        """
        try:
            key = link.remote_key
            if key == self._public_key:
                raise LinkError("refusing to peer with ourselves", remote_key=key)
            # Duplicate links: keep the preferred one (the same one on both sides). Loop,
            # because another link to the same key may register while we wait.
            while (existing := self._by_key.get(bytes(key))) is not None:
                self.counters.duplicate_links += 1
                self._notify()
                if not self._prefer_new_link(existing, link, outbound):
                    await trio.aclose_forcefully(link)
                    return None
                existing.close("replaced by a preferred duplicate link")
                await existing.wait_ended()
            if len(self._peerings) >= self._config.max_peers or not self._free_ports:
                self.counters.refused_peer_limit += 1
                self._notify()
                raise PeerLimitError(f"peer limit of {self._config.max_peers} reached")
        except BaseException:
            await trio.aclose_forcefully(link)
            raise
        port = self._free_ports.pop(0)
        peering = Peering(
            link=link,
            port=port,
            public_key=key,
            uri=uri,
            peer_type=peer_type,
            zone=zone,
            outbound=outbound,
            inbox=self._inbox_send,
            keepalives=self._config.keepalives,
            local_key=bytes(self._public_key),
            budget=self._budget,
            up=PeerUp(port, bytes(key), peer_type, zone),
            on_end=self._on_peering_end,
            flush_list=self._flush_list,
        )
        self._peerings[port] = peering
        self._by_key[bytes(key)] = peering
        self._publish(ev.PeerConnected(key, uri, peer_type.name.lower(), port))
        return peering

    def _on_peering_end(self, peering: Peering) -> None:
        """A peering ended (called synchronously by `Peering.run`): unregister it.

        The port goes back to the free list only once `PeerDown` is in the router's
        inbox: the inbox is a FIFO, so the router always hears of the old peering's end
        before a new peering on the same port (a `PeerUp` for a port that is still up
        would be a local protocol error).
        """
        port = peering.port
        if peering.misbehaved:
            self.counters.misbehaving_peers += 1
            self._notify()
        self._peerings.pop(port, None)
        if self._by_key.get(bytes(peering.public_key)) is peering:
            del self._by_key[bytes(peering.public_key)]
        if not peering.announced:
            # Ended before its PeerUp reached the inbox (replaced or closed while
            # starting): the router never heard of the port, so it is free at once.
            self._release_port(port)
            self._publish(
                ev.PeerDisconnected(peering.public_key, peering.uri, port, peering.end_reason)
            )
            return
        try:
            self._inbox_send.send_nowait(PeerDown(port))
        except trio.WouldBlock:
            # A busy router: queue PeerDown behind the inbox in a task of our own
            # (never a shielded wait in the peering's cleanup).
            if self._nursery is not None:
                with contextlib.suppress(RuntimeError):  # the node is stopping
                    self._nursery.start_soon(self._peer_down_later, port)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the node is stopping
        else:
            self._release_port(port)
        self._publish(
            ev.PeerDisconnected(peering.public_key, peering.uri, port, peering.end_reason)
        )

    async def _peer_down_later(self, port: int) -> None:
        try:
            await self._inbox_send.send(PeerDown(port))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the node is stopping
        self._release_port(port)

    def _release_port(self, port: int) -> None:
        bisect.insort(self._free_ports, port)

    async def _accept(self, peer_type: PeerType, scheme: str, stream: trio.abc.Stream) -> None:
        """Listener handler: handshake an inbound connection and run its peering."""
        if self._pending_handshakes >= MAX_PENDING_HANDSHAKES:
            self.counters.refused_pending_handshakes += 1
            self._notify()
            await trio.aclose_forcefully(stream)
            return
        at_limit = len(self._peerings) >= self._config.max_peers
        link = NoiseLink(
            stream,
            self._identity,
            initiator=False,
            capabilities={REFUSED_PEER_LIMIT} if at_limit else frozenset(),
            handshake_timeout=self._config.handshake_timeout,
        )
        self._pending_handshakes += 1
        try:
            await link.do_handshake()
        except (LinkError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.counters.handshake_failures += 1
            self._notify()
            logger.info("inbound handshake failed: %s", exc)
            await trio.aclose_forcefully(link)
            return
        finally:
            self._pending_handshakes -= 1
        if at_limit:
            self.counters.refused_peer_limit += 1
            self._notify()
            await trio.aclose_forcefully(link)
            return
        try:
            peering = await self._attach(
                link,
                uri=_remote_uri(stream, scheme),
                peer_type=peer_type,
                zone=scheme,
                outbound=False,
            )
        except (LinkError, PeerLimitError) as exc:
            logger.info("inbound peering refused: %s", exc)
            return
        if peering is not None:
            await peering.run()

    async def _dial(self, uri: str, expected_key: PublicKey | None = None) -> NoiseLink:
        assert self._nursery is not None
        with trio.fail_after(self._config.dial_timeout):
            stream = await dial_transport(uri, nursery=self._nursery)
            link = NoiseLink(
                stream,
                self._identity,
                initiator=True,
                expected_key=expected_key,
                handshake_timeout=self._config.handshake_timeout,
            )
            try:
                await link.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(link)
                raise
        if REFUSED_PEER_LIMIT in link.remote_capabilities:
            await trio.aclose_forcefully(link)
            raise PeerLimitError(f"{uri} refused the peering: its peer limit is reached")
        return link

    async def _dial_and_attach(
        self,
        uri: str,
        *,
        expected_key: PublicKey | None = None,
        peer_type: PeerType = PeerType.REMOTE,
        zone: str = "static",
    ) -> tuple[PublicKey, Peering | None]:
        if len(self._peerings) >= self._config.max_peers:
            raise PeerLimitError(f"peer limit of {self._config.max_peers} reached")
        link = await self._dial(uri, expected_key)
        key = link.remote_key
        peering = await self._attach(link, uri=uri, peer_type=peer_type, zone=zone, outbound=True)
        if peering is not None:
            assert self._nursery is not None
            try:
                self._nursery.start_soon(peering.run)
            except RuntimeError:  # the node has stopped: clean up here, at once
                peering.close("the node is not running")
                await peering.run()
                raise
        return key, peering

    # --- public API: peerings ---------------------------------------------------------

    @overload
    async def connect(self, target: str) -> PublicKey: ...

    @overload
    async def connect(self, target: PublicKey | bytes, protocol: str) -> SessionStream: ...

    async def connect(
        self, target: str | PublicKey | bytes, protocol: str | None = None
    ) -> PublicKey | SessionStream:
        """Peer with a URI, or open a session stream to a key.

        `await node.connect("tcp://host:port")` (or `ws://...`, `memory://...`) dials,
        runs the Noise handshake and adds the peering to the router; it returns the
        remote key once the peering is up (or was already up over another link).

        `await node.connect(key, "/chat/v1")` opens an end-to-end encrypted, reliable
        stream to the node with `key`, across any number of hops, speaking the named
        protocol (a `SessionStream`, a half-closeable `trio.abc.Stream`). It returns
        once the session's handshake is done (at once on a warm session), without
        waiting for the peer to accept the stream: the OPEN travels in front of your
        first bytes. A refused protocol is raised by the stream's next `receive_some`
        or `send_all` once the refusal arrived, as `StreamRefusedError` (also a
        `trio.BrokenResourceError`); `await stream.wait_accepted()` waits for the answer.

        Raises:
            LinkError: the handshake failed (wrong key, bad data, timeout).
            PeerLimitError: we or they are at the peer limit.
            OSError: the address could not be reached.
            ValueError: the URI is malformed.
            SessionError: (sessions) no session could be established.
        """
        if isinstance(target, str):
            if protocol is not None:
                raise TypeError("connect(uri) takes no protocol")
            key, _ = await self._dial_and_attach(target)
            return key
        if protocol is None:
            raise TypeError("connect(key, protocol) needs a protocol name")
        return await self._connect_session(PublicKey(target), protocol)

    async def _connect_session(self, key: PublicKey, protocol: str) -> SessionStream:
        return await self._sessions.connect(key, protocol)

    def listen(self, protocol: str) -> AbstractAsyncContextManager[SessionListener]:
        """Accept end-to-end streams for `protocol` while the block runs.

        `async with node.listen("/chat/v1") as listener: stream = await listener.accept()`;
        `stream.remote_key` is the proven key of the peer.

        Raises:
            ValueError: if something already listens for `protocol`.
        """
        return self._sessions.listen(protocol)

    async def send_datagram(self, key: PublicKey | bytes, protocol: str, data: bytes) -> None:
        """Send an encrypted, unreliable datagram named by `protocol` to `key`."""
        await self._sessions.send_datagram(PublicKey(key), protocol, data)

    async def receive_datagram(self, protocol: str) -> tuple[PublicKey, bytes]:
        """The next end-to-end datagram for `protocol`, with its sender's proven key."""
        return await self._sessions.receive_datagram(protocol)

    @property
    def sessions(self) -> SessionManager:
        """The end-to-end session manager (statistics, advanced use)."""
        return self._sessions

    def add_static_peer(self, uri: str) -> None:
        """Keep `uri` connected: dial now and redial with backoff whenever it drops."""
        parse_uri(uri)  # raises ValueError early
        if uri in self._static:
            return
        if self._nursery is None:
            raise RuntimeError("the node is not running")
        state = StaticPeerState(uri)
        self._static[uri] = state
        self._nursery.start_soon(self._keep_static, state)

    def remove_static_peer(self, uri: str) -> None:
        """Stop redialling `uri` and close its peering, if any."""
        state = self._static.pop(uri, None)
        if state is None:
            return
        state.cancel_scope.cancel()
        if state.public_key is not None:
            peering = self._by_key.get(bytes(state.public_key))
            if peering is not None and peering.uri == uri:
                peering.close("static peer removed")

    async def _keep_static(self, state: StaticPeerState) -> None:
        with state.cancel_scope:
            while True:
                key = state.public_key
                existing = self._by_key.get(bytes(key)) if key is not None else None
                if existing is not None:
                    # Connected over another link (LAN, inbound): wait for it to end.
                    # `wait_ended` returns only after it left `_by_key`: no busy loop.
                    state.state = "connected"
                    self._notify()
                    await existing.wait_ended()
                    continue
                state.state = "dialling"
                self._notify()
                try:
                    key, peering = await self._dial_and_attach(state.uri)
                except Exception as exc:  # whatever the dial did, the node keeps running
                    if not isinstance(exc, _DIAL_ERRORS):
                        logger.exception("static peer %s: unexpected dial failure", state.uri)
                    state.failures += 1
                    state.last_error = _describe_error(exc)
                    self.counters.dial_failures += 1
                else:
                    state.public_key = key
                    state.last_error = ""
                    if peering is None:
                        state.failures = 0
                        continue  # the key is connected over a preferred link: wait on it
                    state.state = "connected"
                    self._notify()
                    await peering.wait_ended()
                    state.last_error = peering.end_reason
                    if trio.current_time() - peering.connected_at >= STATIC_STABLE_AFTER:
                        state.failures = 0
                    else:
                        state.failures += 1
                delay = backoff_delay(state.failures, self._rng)
                state.state = "waiting"
                state.next_attempt = trio.current_time() + delay
                self._notify()
                await trio.sleep(delay)

    def _on_beacon(self, beacon: Beacon, host: str, interface: str) -> None:
        self._notify()  # status()["multicast"] changed
        key = bytes(beacon.public_key)
        target = (key, host, beacon.port)
        if key in self._by_key or target in self._dialling or self._nursery is None:
            return
        if len(self._dialling) >= MAX_BEACON_DIALS:
            return  # a LAN full of (forged) keys cannot make us dial without bound
        if sum(1 for h in self._dialling.values() if h == host) >= MAX_BEACON_DIALS_PER_HOST:
            return  # nor can one host take every dial slot
        now = trio.current_time()
        if now - self._beacon_dials.get(target, -math.inf) < BEACON_REDIAL_INTERVAL:
            return
        if len(self._beacon_dials) >= MAX_BEACON_MEMORY:
            self._beacon_dials = {
                k: t for k, t in self._beacon_dials.items() if now - t < BEACON_REDIAL_INTERVAL
            }
            if len(self._beacon_dials) >= MAX_BEACON_MEMORY:
                return
        self._beacon_dials[target] = now
        self._dialling[target] = host
        self._nursery.start_soon(self._dial_beacon, beacon, host, interface)

    async def _dial_beacon(self, beacon: Beacon, host: str, interface: str) -> None:
        uri = str(Address("tcp", host, beacon.port))  # brackets an IPv6 host
        try:
            await self._dial_and_attach(
                uri,
                expected_key=beacon.public_key,
                peer_type=PeerType.MULTICAST,
                zone=interface,
            )
        except Exception as exc:  # whatever the dial did, the node keeps running
            if not isinstance(exc, _DIAL_ERRORS):
                logger.exception("beacon dial to %s: unexpected failure", uri)
            self.counters.dial_failures += 1
            self._notify()
            logger.info("dial to beacon %s at %s failed: %s", beacon.public_key.short(), uri, exc)
        finally:
            self._dialling.pop((bytes(beacon.public_key), host, beacon.port), None)

    # --- public API: overlay datagrams -----------------------------------------------

    def service(self, tag: int) -> OverlayService:
        """The overlay service with `tag` (0..255), created on first use.

        Every exact-key and closest-key payload starts with a service tag byte, added
        and removed by the node, so independent protocols share the overlay.
        """
        if not 0 <= tag <= 255:
            raise ValueError("a service tag is 0..255")
        service = self._services.get(tag)
        if service is None:
            service = OverlayService(
                self._public_key, tag, self._queue_local, self._queue_local_nowait
            )
            self._services[tag] = service
        return service

    async def send(self, destination: PublicKey | bytes, payload: bytes) -> None:
        """Send one overlay datagram to the node whose key is exactly `destination`.

        Delivery is best effort, like UDP: there may be no route yet, and relays drop
        when their queues overflow. The call waits (back-pressure) while too much of
        this node's own traffic is queued on its links.

        Raises:
            ValueError: if `payload` is larger than `MAX_DATAGRAM_PAYLOAD`.
        """
        await self._raw.send(destination, payload)

    async def send_closest(self, target: PublicKey | bytes, payload: bytes) -> None:
        """Send a datagram to whichever node's key is closest to `target` (the DHT mode).

        Closest is the snake's rule: the smallest key >= `target`, or the highest key
        in the network when none is that high.
        """
        await self._raw.send_closest(target, payload)

    async def _queue_local(self, message: LocalSend | LocalSendClosest) -> None:
        size = len(message.payload)
        await self._budget.acquire(size)
        try:
            await self._to_router(message)
        except BaseException:
            # Not queued (cancelled while the inbox was full, or the node stopped):
            # give the budget back, or `send` would eventually block forever.
            self._budget.release(size)
            raise

    def _queue_local_nowait(self, message: LocalSend | LocalSendClosest) -> bool:
        """`_queue_local` for a caller that cannot wait (the session manager answering
        a handshake message from the router task): queue `message` if the local send
        budget has room and the router inbox takes it at once, else change nothing and
        return False. Called from the router task itself, the message is routed in the
        same pass (the router drains its inbox in batches)."""
        size = len(message.payload)
        if not self._budget.try_acquire(size):
            return False
        try:
            self._inbox_send.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self._budget.release(size)
            return False
        return True

    async def _to_router(self, item: InboxItem) -> None:
        # Queue without yielding when there is room, so a burst of sends reaches the
        # router as one batch (and its frames leave in one coalesced link write); wait
        # only when the inbox is full.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._inbox_send.send_nowait(item)
        except trio.WouldBlock:
            await self._inbox_send.send(item)

    async def receive(self) -> Datagram:
        """The next raw datagram sent to our exact key."""
        return await self._raw.receive()

    async def receive_closest(self) -> Datagram:
        """The next raw closest-key datagram for which we are the closest node."""
        return await self._raw.receive_closest()

    def __aiter__(self) -> AsyncIterator[Datagram]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Datagram]:
        while True:
            yield await self.receive()

    # --- public API: observing -----------------------------------------------------

    async def events(self) -> AsyncIterator[ev.NodeEvent]:
        """Subscribe to node events (peer up/down, root, parent, snake neighbour).

        Each subscriber has its own buffer of `EVENT_BUFFER` events; a subscriber that
        falls further behind misses events rather than slowing the node. The
        subscription starts at the first iteration (the generator's first step) and
        ends when the iteration ends; at most `MAX_SUBSCRIBERS` at once.

        Raises:
            RuntimeError: if `MAX_SUBSCRIBERS` subscriptions are open already.
        """
        if len(self._subscribers) >= MAX_SUBSCRIBERS:
            raise RuntimeError(f"more than {MAX_SUBSCRIBERS} event subscribers")
        send, recv = trio.open_memory_channel[ev.NodeEvent](EVENT_BUFFER)
        self._subscribers.add(send)
        try:
            async with recv:
                async for event in recv:
                    yield event
        finally:
            self._subscribers.discard(send)
            send.close()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return as soon as `predicate()` is true, re-checking on every state change.

        Use with `trio.fail_after` to bound it.
        """
        while not predicate():
            await self._changed.wait()

    async def wait_changed(self) -> None:
        """Return at the next state change (a peering, the root, parent or snake)."""
        await self._changed.wait()

    def peer_keys(self) -> list[PublicKey]:
        """Keys of the peers we have a live peering with, sorted."""
        return sorted(p.public_key for p in self._peerings.values())

    def snake_neighbours(self) -> tuple[bytes | None, bytes | None]:
        """The raw keys of this node's descending and ascending snake neighbours (None
        where there is none, or the node is not running); `wait_changed` returns when
        they may have changed."""
        state = self._state
        if state is None:
            return None, None
        return state.descending_key, state.ascending_key

    def status(self) -> dict[str, Any]:
        """A plain, JSON-ready snapshot of the node (keys as lowercase hex)."""
        state = self._state
        now = trio.current_time() if self._nursery is not None else 0.0
        if state is None:
            return {"public_key": self._public_key.hex(), "running": False}
        root_key, root_seq = state.root
        router_peers = {p.port: p for p in state.peers()}
        peers = []
        for port, peering in sorted(self._peerings.items()):
            rp = router_peers.get(port)
            peers.append(peering.status(now, rp.coords if rp is not None else None))
        parent_port = state.parent_port
        parent = self._peerings.get(parent_port) if parent_port is not None else None
        desc = state.descending_key
        asc = state.ascending_key
        router_stats = state.statistics()
        return {
            "public_key": self._public_key.hex(),
            "root_key": root_key.hex(),
            "root_seq": root_seq,
            "coords": list(state.coords),
            "parent_key": parent.public_key.hex() if parent is not None else None,
            "listen": list(self._listen_uris),
            "peers": peers,
            "snake": {
                "descending_key": desc.hex() if desc is not None else None,
                "ascending_key": asc.hex() if asc is not None else None,
            },
            "tables": {
                "snake_entries": state.snake_table_size(),
                "coords_cache": state.coords_cache_size(),
                "known_keys": state.key_index_size(),
            },
            "router": {
                name: dict(value) if isinstance(value, dict) else value
                for name, value in asdict(router_stats).items()
            },
            "static_peers": [s.status(now) for s in self._static.values()],
            "multicast": None
            if self._discovery is None
            else {
                "port": self._multicast_port,
                "port_v6": self._multicast_port_v6,
                **self._discovery.statistics.status(),
            },
            "counters": asdict(self.counters),
        }


def _replace_offset(config: RouterConfig, offset: float) -> RouterConfig:
    return replace(config, wall_clock_offset=offset)


#: What a dial is expected to fail with (anything else is logged as a bug).
_DIAL_ERRORS: Final = (OSError, LinkError, PeerLimitError, trio.TooSlowError)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "dial timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


@asynccontextmanager
async def open_node(
    identity: Identity,
    *,
    listen: Sequence[str] = (),
    static_peers: Sequence[str] = (),
    multicast: bool = False,
    multicast_interfaces: Sequence[str] | None = None,
    config: NodeConfig | None = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the block.

    Args:
        identity: the node's key pair; its public key is the node's address.
        listen: URIs to accept peerings on (`tcp://host:port`, `ws://host:port/path`,
            `memory://name`); port 0 picks a free port (see `Node.listen_uris`).
        static_peers: URIs to keep connected, redialled with backoff.
        multicast: find and peer with nodes on the LAN by multicast beacons.
        multicast_interfaces: limit discovery to these interface names.
        config: tunables.

    Raises:
        OSError, ValueError: a listener could not start.
        NodeCrashedError: a background task of the node failed.
    """
    node = Node(identity, config)
    # The node runs in a scope of its own, shielded once it is up: when the block ends,
    # even by an outer cancellation, the node first says goodbye (its sessions' CLOSE
    # packets still need the router and the links), then this scope ends it.
    run_scope = trio.CancelScope()

    async def run_node(task_status: trio.TaskStatus[None]) -> None:
        with run_scope:
            await node.run(
                listen=listen,
                static_peers=static_peers,
                multicast=multicast,
                multicast_interfaces=multicast_interfaces,
                task_status=task_status,
            )

    async with open_service_nursery("node") as nursery:
        try:
            await nursery.start(run_node)
        except BaseExceptionGroup as group:
            # A listener that cannot bind fails inside the node's nursery; raise the
            # error itself (OSError, ValueError) as documented, not a group of one.
            leaf = single_failure(group)
            if leaf is None:
                raise
            raise leaf from None
        run_scope.shield = True
        try:
            yield node
        finally:
            try:
                with trio.CancelScope(shield=True):  # bounded by GOODBYE_GRACE
                    await node._say_goodbye()
            finally:
                # Whatever ends the goodbye (a second Ctrl-C arrives as an exception
                # even in a shielded scope), the node must end too, or the nursery
                # would wait for it for ever.
                run_scope.shield = False
                run_scope.cancel()
