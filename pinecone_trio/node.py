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
- the **multicast discovery** tasks, which call back into the node for each beacon;
- the **DHT** (`Node.dht`, unless `NodeConfig(dht=False)`): its tasks store and answer
  the topic records homed at this node's key, so that no node of the overlay is a hole
  in it whether or not its application uses the DHT (docs/dht.md).

Duplicate links between the same two keys are resolved the same way on both sides,
without coordination: the link dialled by the lower key wins, and between two such
links the one with the lower Noise handshake hash wins. Both sides see the same
handshake hash, so they always keep the same link.

Leaving the `open_node` block cancels the nursery: every link is closed and no task
outlives it. A background failure surfaces as `NodeCrashedError`; a peer that
misbehaves only ends its own peering (counted in `status()`).

Where the parts live: the shared state, the overlay services and local sends in
`node_base.py`; the router task in `node_router.py`; links, static peers and LAN
discovery in `node_peerings.py`; limits, `NodeConfig` and the counters in
`node_config.py`. This module is the public face: running, `connect`/`listen`,
datagrams, events and `status()`, and `open_node`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import asdict, replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final, overload

import trio

from . import events as ev
from ._allocator import keep_heap_top
from ._util import open_service_nursery, single_failure
from .errors import PeerLimitError
from .identity import Identity, PublicKey
from .link.handshake import PREPARED_HANDSHAKES
from .node_config import (
    BEACON_REDIAL_INTERVAL,
    DEFAULT_MAX_PEERS,
    DEPLOYED_ROUTER_CONFIG,
    EVENT_BUFFER,
    GOODBYE_GRACE,
    GOODBYE_LINGER,
    HANDSHAKE_MESSAGE_TIMEOUT,
    INBOX_SIZE,
    LOCAL_SEND_BYTES,
    LOCAL_SEND_FRAMES,
    MAX_BEACON_DIALS,
    MAX_BEACON_DIALS_PER_HOST,
    MAX_BEACON_MEMORY,
    MAX_PENDING_HANDSHAKES,
    MAX_PENDING_HANDSHAKES_PER_HOST,
    MAX_SUBSCRIBERS,
    REFUSED_PEER_LIMIT,
    ROUTER_BATCH,
    STATIC_STABLE_AFTER,
    NodeConfig,
    NodeCounters,
    StaticPeerState,
)
from .node_peerings import PeeringsMixin
from .node_router import RouterTaskMixin
from .router.actions import PeerType
from .router.signer import Ed25519Signer
from .router.state import RouterConfig, RouterState
from .services import (
    FIRST_APPLICATION_SERVICE,
    MAX_DATAGRAM_PAYLOAD,
    SERVICE_DATAGRAM,
    SERVICE_DHT,
    SERVICE_SESSION,
    Datagram,
    OverlayService,
)
from .sessions.manager import SessionManager
from .sessions.stream import SessionListener, SessionStream
from .transports import parse_uri
from .transports import serve as serve_transport

if TYPE_CHECKING:
    from .dht.service import Dht

__all__ = [
    "BEACON_REDIAL_INTERVAL",
    "DEFAULT_MAX_PEERS",
    "DEPLOYED_ROUTER_CONFIG",
    "EVENT_BUFFER",
    "FIRST_APPLICATION_SERVICE",
    "GOODBYE_GRACE",
    "GOODBYE_LINGER",
    "HANDSHAKE_MESSAGE_TIMEOUT",
    "INBOX_SIZE",
    "LOCAL_SEND_BYTES",
    "LOCAL_SEND_FRAMES",
    "MAX_BEACON_DIALS",
    "MAX_BEACON_DIALS_PER_HOST",
    "MAX_BEACON_MEMORY",
    "MAX_DATAGRAM_PAYLOAD",
    "MAX_PENDING_HANDSHAKES",
    "MAX_PENDING_HANDSHAKES_PER_HOST",
    "MAX_SUBSCRIBERS",
    "REFUSED_PEER_LIMIT",
    "ROUTER_BATCH",
    "SERVICE_DATAGRAM",
    "SERVICE_DHT",
    "SERVICE_SESSION",
    "STATIC_STABLE_AFTER",
    "Datagram",
    "Node",
    "NodeConfig",
    "NodeCounters",
    "OverlayService",
    "PeerLimitError",
    "StaticPeerState",
    "open_node",
]


class Node(RouterTaskMixin, PeeringsMixin):
    """A pinecone-trio node. Get one from `open_node`; see the module docstring."""

    _dht: Dht | None = None

    # --- running ------------------------------------------------------------------------

    async def run(
        self,
        *,
        listen: str | Sequence[str] = (),
        static_peers: str | Sequence[str] = (),
        multicast: bool = False,
        multicast_interfaces: str | Sequence[str] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run the node until cancelled. Ready (listeners bound) when started.

        The arguments are `open_node`'s; a single string where a list is expected is
        a list of one.

        Raises:
            OSError: if a listen address cannot be bound.
            ValueError: if a URI is malformed.
            TypeError: if a URI or interface name is not a string.
        """
        if self._nursery is not None:
            raise RuntimeError("a Node runs once")
        listen = _strings("listen", listen)
        static_peers = _strings("static_peers", static_peers)
        if multicast_interfaces is not None:
            multicast_interfaces = _strings("multicast_interfaces", multicast_interfaces)
        if self._config.tune_allocator:
            keep_heap_top()
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
                if self._config.dht:
                    # Imported here: pinecone_trio.dht is built on this module.
                    from .dht.service import Dht

                    self._dht = Dht(self)
                    await nursery.start(self._dht.run)
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
        `GOODBYE_GRACE` to leave through the router and the links; before that, give
        streams the application ended up to `GOODBYE_LINGER` to be delivered, and the
        DHT's outbox (the withdrawals of announce blocks just left) up to its
        `EXIT_GRACE` to reach the router."""
        if self._nursery is None or self._stopped:
            return
        # Shutdown paths, polled: at most one check per millisecond. First, what the
        # DHT's outbox holds goes to the router (it would be cancelled with the node,
        # and the records withdrawn just now stayed findable for RECORD_TTL); then
        # streams the application ended get their last bytes and FIN acknowledged (a
        # CLOSE sent at once overtook them: the peer read a broken stream instead of
        # its end).
        try:
            if self._dht is not None:
                await self._dht._drain()
            with trio.move_on_after(GOODBYE_LINGER):
                for _ in range(int(GOODBYE_LINGER * 1000)):
                    if not self._sessions.delivering:
                        break
                    await trio.sleep(0.001)
        except BaseException:
            # A Ctrl-C (it reaches even a shielded scope) cuts the linger short: the
            # CLOSEs still leave, as they did before there was a linger.
            self._sessions.close_all("the peer left")
            raise
        self._sessions.close_all("the peer left")
        # Everything out: the sessions' last packets; the router's inbox, and the
        # router task back waiting on it (an item handed straight to a waiting router
        # is in no buffer until its task runs: a review lost 1 CLOSE in 60-120 leaves
        # that way); and every peering, including a writer task still writing frames
        # it took (a link with no direct write, memory or WebSocket, which the
        # cancellation would cut short). Always checked, even with no session to close
        # and nothing drained here just now (1 ms on an idle node): an `open_dht` block
        # left just before handed its withdrawals to the router, and they may still be
        # in its inbox or on a link (a review found them lost every time on memory and
        # WebSocket links).
        with trio.move_on_after(GOODBYE_GRACE):
            for _ in range(int(GOODBYE_GRACE * 1000)):
                await trio.sleep(0.001)
                inbox = self._inbox_send.statistics()
                if (
                    not self._sessions.flushing
                    and not inbox.current_buffer_used
                    and inbox.tasks_waiting_receive
                    and all(peering.idle for peering in self._peerings.values())
                ):
                    return

    async def _prepare_handshakes(self) -> None:
        """Keep `PREPARED_HANDSHAKES` filled, one item per scheduler pass.

        Woken whenever a handshake leaves the pool half full or less, so new links and
        sessions rarely pay for the Noise object and the ephemeral key themselves.
        """
        pool = PREPARED_HANDSHAKES
        wake = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def low() -> None:
            # The pool is process-wide: a node of another `trio.run` (another thread)
            # may take from it. Only this run may touch its Event.
            try:
                here = trio.lowlevel.current_trio_token()
            except RuntimeError:
                here = None
            if here is token:
                wake.set()
                return
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(wake.set)

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

    # --- public API: peerings ---------------------------------------------------------

    @overload
    async def connect(self, target: str) -> PublicKey: ...

    @overload
    async def connect(self, target: PublicKey | bytes | str, protocol: str) -> SessionStream: ...

    async def connect(
        self, target: str | PublicKey | bytes, protocol: str | None = None
    ) -> PublicKey | SessionStream:
        """Peer with a URI, or open a session stream to a key.

        `await node.connect("tcp://host:port")` (or `ws://...`, `memory://...`) dials,
        runs the Noise handshake and adds the peering to the router; it returns the
        remote key once the peering is up (or was already up over another link).

        `await node.connect(key, "/chat/v1")` opens an end-to-end encrypted, reliable
        stream to the node with `key` (a `PublicKey`, its 32 bytes, or its 64 hex
        digits as `pinecone-trio` prints them), across any number of hops, speaking the
        named protocol (a `SessionStream`, a half-closeable `trio.abc.Stream`). It
        returns once the session's handshake is done (at once on a warm session),
        without waiting for the peer to accept the stream: the OPEN travels in front of
        your first bytes. A refused protocol is raised by the stream's next
        `receive_some` or `send_all` once the refusal arrived, as `StreamRefusedError`
        (also a `trio.BrokenResourceError`); `await stream.wait_accepted()` waits for
        the answer.

        Raises:
            LinkError: the handshake failed (wrong key, bad data, timeout).
            PeerLimitError: we or they are at the peer limit.
            OSError: the address could not be reached.
            ValueError: the URI is malformed, or the key is not 32 bytes / 64 hex digits.
            TypeError: a URI with a protocol, a key without one, or a target of another
                type.
            SessionError: (sessions) no session could be established.
            trio.ClosedResourceError: the node has stopped.
        """
        if protocol is None:
            if not isinstance(target, str):
                raise TypeError(
                    "connect(key, protocol) needs a protocol name; connect(uri) takes a "
                    f"URI string, not {type(target).__name__}"
                )
            self._check_running()
            key, _ = await self._dial_and_attach(target)
            return key
        key = _session_key(target)
        self._check_running()
        return await self._connect_session(key, protocol)

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
        """Send an encrypted, unreliable datagram named by `protocol` to `key`.

        Not fire-and-forget when there is no session with `key` yet: the first datagram
        waits for the handshake (a few ms; up to the handshake timeout, 10 s by
        default, for a key nobody answers for). Then it returns once the datagram is
        queued on the session; it may still be lost on the way (a full queue drops it:
        `sessions.statistics()["datagrams_dropped"]`). The receiver gets it only if it is
        waiting in (or has once called) `receive_datagram(protocol)`.

        Raises:
            ValueError: `data` is larger than `sessions.max_datagram_size(protocol)`, or
                the protocol name is empty or too long.
            SessionTimeoutError: no session with `key` could be set up in time (nobody
                answers for it); other `SessionError`s: the session failed or closed.
            trio.ClosedResourceError: the node has stopped.
        """
        self._check_running()
        await self._sessions.send_datagram(PublicKey(key), protocol, data)

    async def receive_datagram(self, protocol: str) -> tuple[PublicKey, bytes]:
        """The next end-to-end datagram for `protocol`, with its sender's proven key.

        Datagrams for `protocol` that arrive before the first call are dropped (nobody
        asked for them; counted in `sessions.statistics()["dropped_datagrams"]`); from
        the first call on they queue, up to `DATAGRAM_BACKLOG` (1,024), even between
        calls. Call it (or start the task that does) before peers send.

        Raises:
            trio.ClosedResourceError: the node has stopped (also while waiting).
        """
        self._check_running()
        return await self._sessions.receive_datagram(protocol)

    @property
    def sessions(self) -> SessionManager:
        """The end-to-end session manager (statistics, advanced use)."""
        return self._sessions

    @property
    def serves_dht(self) -> bool:
        """Whether this node serves the DHT itself (`NodeConfig.dht`, the default):
        `dht` is that DHT while the node runs."""
        return self._config.dht

    @property
    def dht(self) -> Dht | None:
        """The DHT this node serves (`pinecone_trio.dht.Dht`: `announce`, `lookup`,
        `status`), or None with `NodeConfig(dht=False)` (or before the node runs).

        Every node serves it by default: it stores and answers the topic records homed
        at its key whether or not the application uses the DHT, so that the topics
        homed here stay findable for everyone (docs/dht.md). Closed once the node
        stops. `open_dht(node)` yields this same object.
        """
        return self._dht

    # --- public API: overlay datagrams -----------------------------------------------

    async def send(self, destination: PublicKey | bytes, payload: bytes) -> None:
        """Send one overlay datagram to the node whose key is exactly `destination`.

        Delivery is best effort, like UDP: there may be no route yet, and relays drop
        when their queues overflow. The call waits (back-pressure) while too much of
        this node's own traffic is queued on its links.

        Raises:
            ValueError: if `payload` is larger than `MAX_DATAGRAM_PAYLOAD`.
            trio.ClosedResourceError: the node has stopped.
        """
        await self._raw.send(destination, payload)

    async def send_closest(self, target: PublicKey | bytes, payload: bytes) -> None:
        """Send a datagram to whichever node's key is closest to `target` (the DHT mode).

        Closest is the snake's rule: the smallest key >= `target`, or the highest key
        in the network when none is that high.

        Raises:
            ValueError, trio.ClosedResourceError: as `send`.
        """
        await self._raw.send_closest(target, payload)

    async def receive(self) -> Datagram:
        """The next raw datagram sent to our exact key.

        Raises:
            trio.ClosedResourceError: the node has stopped (and nothing is left queued).
        """
        return await self._raw.receive()

    async def receive_closest(self) -> Datagram:
        """The next raw closest-key datagram for which we are the closest node.

        Raises:
            trio.ClosedResourceError: as `receive`.
        """
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
        """A plain, JSON-ready snapshot of the node (keys as lowercase hex), with the
        status of the DHT it serves under "dht" (None with `NodeConfig(dht=False)`)."""
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
            "dht": None if self.dht is None else self.dht.status(),
        }


def _strings(name: str, value: str | Sequence[str]) -> list[str]:
    """`value` as a list of strings: one string is a list of one (not its characters)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} takes a string or a list of strings, not {type(value).__name__}")
    items = list(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} takes strings, not {type(item).__name__} ({item!r})")
    return items


_SESSION_TARGET: Final = (
    "with a protocol, target is the peer's key: a PublicKey, 32 bytes or 64 hex digits"
)


def _session_key(target: object) -> PublicKey:
    """The key `connect(target, protocol)` opens a session to."""
    if isinstance(target, str):
        if "://" in target:
            raise TypeError(f"connect(uri) takes no protocol ({_SESSION_TARGET}, not {target!r})")
        try:
            return PublicKey.from_hex(target)
        except ValueError:
            raise ValueError(f"{_SESSION_TARGET}, not {target!r}") from None
    if isinstance(target, (bytes, bytearray, memoryview)):
        try:
            return PublicKey(target)
        except ValueError as exc:
            raise ValueError(f"{_SESSION_TARGET}: {exc}") from None
    raise TypeError(f"{_SESSION_TARGET}, not {type(target).__name__}")


def _replace_offset(config: RouterConfig, offset: float) -> RouterConfig:
    return replace(config, wall_clock_offset=offset)


#: What a dial is expected to fail with (anything else is logged as a bug).
@asynccontextmanager
async def open_node(
    identity: Identity,
    *,
    listen: str | Sequence[str] = (),
    static_peers: str | Sequence[str] = (),
    multicast: bool = False,
    multicast_interfaces: str | Sequence[str] | None = None,
    config: NodeConfig | None = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the block.

    Args:
        identity: the node's key pair; its public key is the node's address.
        listen: URIs to accept peerings on (`tcp://host:port`, `ws://host:port/path`,
            `memory://name`); port 0 picks a free port (see `Node.listen_uris`). One
            URI may be given as a plain string.
        static_peers: URIs to keep connected, redialled with backoff (a list, or one
            URI as a string).
        multicast: find and peer with nodes on the LAN by multicast beacons.
        multicast_interfaces: limit discovery to these interface names (a list, or
            one name as a string).
        config: tunables.

    Raises:
        OSError, ValueError: a listener could not start.
        TypeError: a URI or interface name is not a string.
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
                with trio.CancelScope(shield=True):  # GOODBYE_LINGER + GOODBYE_GRACE
                    await node._say_goodbye()
            finally:
                # Whatever ends the goodbye (a second Ctrl-C arrives as an exception
                # even in a shielded scope), the node must end too, or the nursery
                # would wait for it for ever.
                run_scope.shield = False
                run_scope.cancel()
