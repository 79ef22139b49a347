"""The state every part of a running node shares (`NodeBase`).

`Node` (node.py) is assembled from this base and two mixins, each one concern of the
node, the way the session engine is split: `node_router.py` (the router task, the only
owner of the sans-IO `RouterState`) and `node_peerings.py` (links: accepting, dialling,
duplicates, static peers, LAN beacons). The base holds the state they share, the
overlay services and how their local sends enter the router's inbox (`_queue_local`,
bounded by the send budget), and how state changes reach observers (`_publish`,
`_notify`).
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Final

import trio

from . import events as ev
from .discovery.multicast import MulticastDiscovery
from .identity import Identity, PublicKey
from .node_config import (
    INBOX_SIZE,
    LOCAL_SEND_BYTES,
    LOCAL_SEND_FRAMES,
    NodeConfig,
    NodeCounters,
    StaticPeerState,
)
from .peering import InboxItem, Peering, SendBudget
from .router.actions import LocalSend, LocalSendClosest
from .router.constants import MAX_PORT
from .router.state import RouterState
from .services import (
    MAX_DATAGRAM_PAYLOAD,
    SERVICE_DATAGRAM,
    SERVICE_SESSION,
    OverlayService,
    SessionServiceAdapter,
)
from .sessions.config import SessionConfig
from .sessions.manager import SessionManager

#: What a node's public calls raise (as `trio.ClosedResourceError`) once it stopped
#: (the same words as its receive queues, `_queue.DropQueue`).
STOPPED: Final = "the node has stopped"


class NodeBase:
    """The shared state of a `Node` (see node.py); not used on its own."""

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
        self._stopped = False  # `run` has ended (or crashed)
        self._raw = self.service(SERVICE_DATAGRAM)
        session_config = self._config.sessions or SessionConfig()
        if session_config.max_packet_size > MAX_DATAGRAM_PAYLOAD:
            session_config = replace(session_config, max_packet_size=MAX_DATAGRAM_PAYLOAD)
        self._sessions = SessionManager(
            SessionServiceAdapter(self.service(SERVICE_SESSION)), identity, config=session_config
        )
        self._budget = SendBudget(LOCAL_SEND_BYTES, LOCAL_SEND_FRAMES)
        self._peerings: dict[int, Peering] = {}
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
        self._pending_by_host: dict[str, int] = {}
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
            if self._stopped:
                service.close()  # its receivers raise at once rather than wait for ever
        return service

    def _check_running(self) -> None:
        """Raise unless the node runs: `trio.ClosedResourceError` once it stopped (its
        `open_node` block ended), RuntimeError if it never started."""
        if self._stopped:
            raise trio.ClosedResourceError(STOPPED)
        if self._nursery is None:
            raise RuntimeError("the node is not running (start it with open_node)")

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
            try:
                self._inbox_send.send_nowait(item)
            except trio.WouldBlock:
                await self._inbox_send.send(item)
        except trio.ClosedResourceError:  # closed when `run` ends (not by the caller)
            raise trio.ClosedResourceError(STOPPED) from None

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
