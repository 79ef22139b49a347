"""`SessionManager`: sessions to any key over an overlay datagram service.

The manager runs over anything with `public_key`, `async send(dest_key, payload)` and
`async receive() -> (source_key, payload)`: the overlay node, or
`sessions.testing.MemoryOverlay` in tests. It owns one nursery (`run`) holding

- the receive loop: it reads datagrams, finds the session by the receiver index in the
  packet (or by source key, for an INITIATION), feeds the engine synchronously and
  wakes that session's driver;
- one driver task per session: it fires the session's timers and sends everything
  but the INITIATION and the RESPONSE when the service can take those at once
  (`NowaitDatagramService`, `_send_handshake_now`); it sleeps until the engine's next
  deadline or a wake-up.

Application calls (`connect`, stream reads and writes, datagrams) call the engine
synchronously and wake the driver. Engines never see trio.

Routing key and identity are separate: `service.public_key` is the address sessions
are named by; `identity` is what the session proves inside the handshake. By default a
peer must prove the identity equal to its routing key (`require_identity_is_address`),
which is what makes the overlay's unauthenticated source key safe to use; a device that
routes under an ephemeral key turns that off and checks `stream.remote_key` itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, Protocol, final, runtime_checkable

import trio

from ..errors import PineconeError, SessionError
from ..identity import Identity, PublicKey
from . import wire
from .config import SessionConfig, check_protocol_name
from .engine import Session, random_index
from .events import (
    DatagramReceived,
    HandshakeCompleted,
    IncomingStream,
    SessionClosed,
    SessionReplaced,
    StreamBroken,
)
from .stream import SessionListener, SessionStream

logger = logging.getLogger(__name__)

#: Most sessions one manager keeps at once; INITIATIONs beyond it are dropped.
MAX_SESSIONS: Final = 4_096
#: Most sessions still in their handshake that a peer's INITIATION may create; bounds
#: what a flood of (possibly spoofed) INITIATIONs costs before any peer authenticated.
#: At the limit a new one replaces the oldest.
MAX_HALF_OPEN: Final = 256
#: Scheduler passes a driver holding back a part-filled packet gives the writers before
#: it sends it anyway. Trio runs each batch of runnable tasks in a random order, so after
#: one pass a writer that is about to write may not have run yet (about half the time
#: in a bulk transfer: a short packet); after two it has, unless it is really idle.
CORK_PASSES: Final = 2
#: Incoming streams queued on a listener before new ones are refused.
LISTEN_BACKLOG: Final = 1_024
#: Received datagrams queued per protocol before new ones are dropped.
DATAGRAM_BACKLOG: Final = 1_024


class DatagramService(Protocol):
    """What sessions need from the overlay: best-effort datagrams between keys."""

    @property
    def public_key(self) -> PublicKey: ...

    async def send(self, dest: PublicKey, payload: bytes) -> None: ...

    async def receive(self) -> tuple[PublicKey, bytes]: ...


@runtime_checkable
class DirectDatagramService(DatagramService, Protocol):
    """A service that can also hand packets over synchronously, from its own task.

    The manager then registers `handler(source_key, packet) -> bool` (False: dropped)
    and still runs its receive loop, which only ends when the service closes.
    """

    def set_handler(self, handler: Callable[[bytes, memoryview], bool] | None) -> None: ...


@runtime_checkable
class PrefixedDatagramService(DatagramService, Protocol):
    """A service that takes packets already built behind its own header bytes.

    The engines then put `prefix` in front of every packet as they assemble it, and
    the manager sends with `send_prefixed`: the node's service tag costs no copy.
    """

    @property
    def prefix(self) -> bytes: ...

    async def send_prefixed(self, dest: PublicKey, packet: bytes) -> None: ...


@runtime_checkable
class NowaitDatagramService(DatagramService, Protocol):
    """A service that can also take a datagram without waiting, from any task.

    `try_send` returns False when it cannot take the datagram at once (no room); the
    manager then leaves the packet to the session's driver, which waits in `send`.
    """

    def try_send(self, dest: PublicKey, payload: bytes) -> bool: ...


@runtime_checkable
class NowaitPrefixedDatagramService(PrefixedDatagramService, Protocol):
    """`NowaitDatagramService` for packets built behind the service's `prefix`."""

    def try_send_prefixed(self, dest: PublicKey, packet: bytes) -> bool: ...


@final
class _SessionHandle:
    """The Trio side of one session: its engine, its wake-up, its open streams."""

    __slots__ = ("_wake", "armed", "engine", "inbound", "ready", "sending", "streams")

    def __init__(self, engine: Session, *, inbound: bool = False) -> None:
        self.engine = engine
        # Made by a peer's INITIATION (not by our dial): what `MAX_HALF_OPEN` counts.
        self.inbound = inbound
        self.ready = trio.Event()  # set once established or closed
        self.streams: dict[int, SessionStream] = {}
        self._wake = trio.Event()
        # The deadline the driver sleeps until, or None while it runs.
        self.armed: float | None = None
        # Whether the driver is between taking packets and having sent them all (then
        # nobody else may send for the session: its packets would overtake the driver's).
        self.sending = False

    def wake(self) -> None:
        self._wake.set()

    def wake_if_needed(self, now: float) -> None:
        """Wake the driver only if it has something to do before its armed deadline.

        A received packet that needs no answer yet (an ACK is not due) leaves the driver
        asleep: one task switch less per packet on a bulk receiver.
        """
        engine = self.engine
        armed = self.armed
        if (
            armed is None
            or engine.is_closed
            or engine.wants_to_send(now)
            or engine.next_deadline() < armed
        ):
            self._wake.set()

    def reset_wake(self) -> trio.Event:
        self._wake = trio.Event()
        return self._wake


@final
class SessionManager:
    """End-to-end sessions to other keys over a datagram service.

    Args:
        service: the overlay's datagram API (`public_key`, `send`, `receive`).
        identity: the identity sessions prove (usually the node's own).
        config: session tunables.
        require_identity_is_address: refuse peers whose proven identity differs from
            their routing key (the default, and what `connect` checks against).

    Start it with `await nursery.start(manager.run)`; everything else needs it running.
    """

    def __init__(
        self,
        service: DatagramService,
        identity: Identity,
        *,
        config: SessionConfig | None = None,
        require_identity_is_address: bool = True,
    ) -> None:
        self._service = service
        self._identity = identity
        self._address = PublicKey(service.public_key)
        self.config = config if config is not None else SessionConfig()
        self._require = require_identity_is_address
        self._by_address: dict[PublicKey, _SessionHandle] = {}
        self._by_index: dict[int, _SessionHandle] = {}
        self._listeners: dict[str, SessionListener] = {}
        self._datagrams: dict[
            str,
            tuple[
                trio.MemorySendChannel[tuple[PublicKey, bytes]],
                trio.MemoryReceiveChannel[tuple[PublicKey, bytes]],
            ],
        ] = {}
        # How packets leave, decided once (a runtime-checkable Protocol's isinstance
        # costs tens of microseconds, too much for every new session's driver).
        self._prefix = b""
        self._send: Callable[[PublicKey, bytes], Awaitable[None]] = service.send
        self._send_nowait: Callable[[PublicKey, bytes], bool] | None = None
        if isinstance(service, PrefixedDatagramService):
            self._prefix, self._send = service.prefix, service.send_prefixed
            if isinstance(service, NowaitPrefixedDatagramService):
                self._send_nowait = service.try_send_prefixed
        elif isinstance(service, NowaitDatagramService):
            self._send_nowait = service.try_send
        self._nursery: trio.Nursery | None = None
        self._closed = False
        # Closed sessions whose CLOSE waits for their driver (it was sending when the
        # session closed, and handing the CLOSE over then would have overtaken it; or
        # the service could not take it at once).
        self._unsent_closes: set[_SessionHandle] = set()
        self._stats = {
            "dropped_no_session": 0,
            "evicted_half_open": 0,
            "dropped_datagrams": 0,
            "refused_streams": 0,
            "send_errors": 0,
        }

    @property
    def public_key(self) -> PublicKey:
        """Our routing key (what peers dial)."""
        return self._address

    @property
    def identity(self) -> Identity:
        return self._identity

    # ------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive and drive sessions until cancelled; every session dies with it."""
        if self._nursery is not None or self._closed:
            raise RuntimeError("a SessionManager runs once")
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                service = self._service
                direct = service if isinstance(service, DirectDatagramService) else None
                if direct is not None:
                    direct.set_handler(self._deliver)
                task_status.started()
                try:
                    await self._receive_loop()
                finally:
                    if direct is not None:
                        direct.set_handler(None)
                nursery.cancel_scope.cancel()  # the service closed: stop every session
        finally:
            self._closed = True
            self._nursery = None
            for handle in list(self._by_index.values()):
                handle.engine.close("the local node is shutting down")
                self._process(handle)
            for listener in list(self._listeners.values()):
                listener._close_now()
            for send, _ in self._datagrams.values():
                send.close()

    async def _receive_loop(self) -> None:
        service = self._service
        while True:
            try:
                source, packet = await service.receive()
            except (trio.ClosedResourceError, trio.EndOfChannel):
                return
            self._dispatch(PublicKey(source), packet)

    def _deliver(self, source: bytes, packet: memoryview) -> bool:
        """The direct handler: one packet from the overlay's router task."""
        if self._nursery is None:
            return False
        if not packet or packet[0] != wire.TRANSPORT:
            self._dispatch(source, bytes(packet))  # handshakes keep their own bytes
        else:
            self._dispatch(source, packet)
        return True

    def _dispatch(self, source: bytes, packet: bytes | memoryview) -> None:
        kind = packet[0] if packet else 0
        handle: _SessionHandle | None = None
        if kind == wire.TRANSPORT:
            index = wire.transport_receiver(packet)
            handle = self._by_index.get(index) if index is not None else None
        elif kind == wire.INITIATION:
            handle = self._by_address.get(source)  # type: ignore[call-overload]
            if handle is None:
                handle = self._answer(PublicKey(source), bytes(packet))
                return
        elif kind in (wire.RESPONSE, wire.FINISH):
            index = wire.handshake_receiver(packet)
            handle = self._by_index.get(index) if index is not None else None
        # The index finds the session; the source key must match too, so one peer can
        # never feed packets into another peer's session.
        if handle is None or handle.engine.remote_address != source:
            self._stats["dropped_no_session"] += 1
            return
        now = trio.current_time()
        handle.engine.receive_packet(packet, now)
        if kind == wire.INITIATION:
            # Our RESPONSE (a re-sent one, or a candidate's on a restart) goes at once.
            # A FINISH is left to the driver: the application learns the session is up
            # in this same pass and its first packet follows FINISH in one link write.
            self._send_handshake_now(handle)
        self._process(handle, wake=False)
        handle.wake_if_needed(now)

    def _answer(self, source: PublicKey, packet: bytes) -> _SessionHandle | None:
        if self._nursery is None or source == self._address:
            return None
        # Only half-open sessions a peer's INITIATION made count: our own dials to
        # silent keys must not lock every peer out. At the limit the oldest goes (its
        # peer re-sends if it is real): refusing new ones instead, a burst of forged
        # INITIATIONs would lock every real peer out for `handshake_timeout`.
        half_open = [h for h in self._by_index.values() if h.inbound and not h.engine.established]
        if len(half_open) >= MAX_HALF_OPEN:
            self._close(half_open[0], "too many half-open sessions")
            self._stats["evicted_half_open"] += 1
        if len(self._by_index) >= MAX_SESSIONS:
            self._stats["dropped_no_session"] += 1
            return None
        engine = Session.answer(
            identity=self._identity,
            local_address=self._address,
            remote_address=source,
            local_index=self._new_index(),
            expected_key=source if self._require else None,
            config=self.config,
            now=trio.current_time(),
        )
        engine.receive_packet(packet, trio.current_time())
        if not engine.wants_to_send(trio.current_time()):
            return None  # not a valid INITIATION: keep no state for it
        return self._start(engine, send_now=True, inbound=True)

    def _new_index(self) -> int:
        while True:
            index = random_index()
            if index not in self._by_index:
                return index

    def _start(
        self, engine: Session, *, send_now: bool = False, inbound: bool = False
    ) -> _SessionHandle:
        """Register a new session and start its driver; with `send_now`, first hand its
        waiting handshake packet to the service (spawning the task is not on its path)."""
        assert self._nursery is not None
        handle = _SessionHandle(engine, inbound=inbound)
        self._by_address[engine.remote_address] = handle
        self._by_index[engine.local_index] = handle
        if send_now:
            self._send_handshake_now(handle)
        self._nursery.start_soon(self._drive, handle)
        return handle

    def _dial(self, key: PublicKey) -> _SessionHandle:
        if self._closed or self._nursery is None:
            raise trio.ClosedResourceError("the session manager is not running")
        handle = self._by_address.get(key)
        if handle is not None and not handle.engine.is_closed:
            # A session a peer's INITIATION made may be waiting on a forged one: dial
            # beside it, and whichever handshake completes first is the session.
            if handle.engine.start_dial(trio.current_time()):
                handle.inbound = False
                self._send_handshake_now(handle)
                handle.wake()
            return handle
        if key == self._address:
            raise ValueError("cannot open a session to our own key")
        engine = Session.dial(
            identity=self._identity,
            local_address=self._address,
            remote_address=key,
            local_index=self._new_index(),
            expected_key=key if self._require else None,
            config=self.config,
            now=trio.current_time(),
        )
        return self._start(engine, send_now=True)

    def _send_handshake_now(self, handle: _SessionHandle) -> None:
        """Hand the engine's waiting packets to the service from this task, now.

        Used for the INITIATION (from the task that calls `connect`) and the RESPONSE
        (from the task that delivered the INITIATION: on a node, the router task, so
        the RESPONSE joins the router's current pass and leaves in its link write)
        instead of one scheduler pass later from the session's driver. Only while the
        driver is not sending itself (its packets must not be overtaken), and only what
        the service takes without waiting; the rest stays with the engine for the
        driver, which the caller wakes as usual.
        """
        send_nowait = self._send_nowait
        if send_nowait is None or handle.sending:
            return
        engine = handle.engine
        remote = engine.remote_address
        prefix = self._prefix
        for _ in range(engine.outbox_length):
            packet = engine.outbox_head()
            if not send_nowait(remote, prefix + packet if prefix else packet):
                return
            engine.outbox_sent()

    async def _drive(self, handle: _SessionHandle) -> None:
        engine = handle.engine
        prefix, send = self._prefix, self._send
        remote = engine.remote_address
        cork = True
        try:
            while True:
                wake = handle.reset_wake()
                now = trio.current_time()
                engine.handle_timer(now)
                packets = engine.packets_to_send(now, cork=cork, prefix=prefix)
                self._process(handle, wake=False)
                handle.sending = True
                closed_before = engine.is_closed  # then `packets` holds its CLOSE
                try:
                    for packet in packets:
                        if engine.is_closed and not closed_before:
                            break  # closed meanwhile: its CLOSE goes next (below)
                        try:
                            await send(remote, packet)
                        except (trio.ClosedResourceError, trio.BrokenResourceError):
                            # The overlay is shutting down under us: nothing can be sent.
                            engine.close("the overlay service closed")
                            return
                        except PineconeError as exc:
                            # Best effort, like any datagram: recovery re-sends what matters.
                            self._stats["send_errors"] += 1
                            logger.debug("session packet to %s not sent: %s", remote.short(), exc)
                        except ValueError:
                            # A packet the overlay refuses (too large) is our bug: log it
                            # and let recovery deal with the loss; never crash the node.
                            self._stats["send_errors"] += 1
                            logger.exception("session packet to %s refused", remote.short())
                finally:
                    handle.sending = False
                if engine.is_closed:
                    # Closed while we were sending (`close_session`, the node leaving):
                    # its CLOSE could not be handed over then without overtaking us.
                    await self._send_last(handle)
                    return
                if engine.corked:
                    # A part-filled packet's worth of stream data was held back: give
                    # the writers one scheduler pass, then cork again only if they
                    # wrote more (bulk transfers send full packets; a lone short write
                    # goes out after one pass, no timer).
                    writes = engine.writes
                    for _ in range(CORK_PASSES):
                        await trio.lowlevel.checkpoint()
                        if engine.writes != writes:
                            break
                    cork = engine.writes != writes
                    continue
                cork = True
                if packets and engine.wants_to_send(trio.current_time()):
                    continue
                deadline = engine.next_deadline()
                if deadline <= trio.current_time():
                    await trio.lowlevel.checkpoint()
                    continue
                handle.armed = deadline
                try:
                    with trio.move_on_at(deadline):
                        await wake.wait()
                finally:
                    handle.armed = None
        finally:
            self._unsent_closes.discard(handle)
            if not engine.is_closed:
                engine.close("the session task ended")
            self._process(handle)

    async def _send_last(self, handle: _SessionHandle) -> None:
        """Send what a closed session still holds (its CLOSE), best effort."""
        engine = handle.engine
        handle.sending = True
        try:
            for packet in engine.packets_to_send(trio.current_time(), prefix=self._prefix):
                try:
                    await self._send(engine.remote_address, packet)
                except (
                    PineconeError,
                    ValueError,
                    trio.ClosedResourceError,
                    trio.BrokenResourceError,
                ):
                    return  # the overlay is going: nothing more can be sent
        finally:
            handle.sending = False
            self._unsent_closes.discard(handle)

    @property
    def delivering(self) -> bool:
        """Whether a session has a stream the application ended whose last bytes or
        FIN the peer has not acknowledged yet (see `Session.delivering`)."""
        return any(handle.engine.delivering for handle in self._by_index.values())

    @property
    def flushing(self) -> bool:
        """Whether a closed session's CLOSE still waits for its driver to send it."""
        return bool(self._unsent_closes)

    def _process(self, handle: _SessionHandle, *, wake: bool = True) -> None:
        """React to what the engine reported: streams to wake, events to deliver.

        Wakes the session's driver too, unless the driver itself is asking.
        """
        engine = handle.engine
        if engine.events:
            events = engine.events
            engine.events = []
            for event in events:
                self._on_event(handle, event)
        if engine.changed:
            changed = engine.changed
            engine.changed = set()
            for sid in changed:
                stream = handle.streams.get(sid)
                if stream is not None:
                    stream._wake()
        if wake:
            handle.wake()

    def _on_event(self, handle: _SessionHandle, event: object) -> None:
        engine = handle.engine
        if type(event) is IncomingStream:
            listener = self._listeners.get(event.protocol)
            stream = SessionStream(handle, event.stream_id, event.protocol)
            if listener is not None and listener.offer(stream):
                # Accepted when the application takes it (`SessionListener.accept`): a
                # stream still in the backlog when the listener closes is refused, and
                # the opener never mistakes that for an empty reply.
                handle.streams[event.stream_id] = stream
            else:
                self._stats["refused_streams"] += 1
                reason = "backlog full" if listener is not None else "no listener"
                engine.refuse_stream(event.stream_id, f"{reason} for {event.protocol!r}")
        elif type(event) is DatagramReceived:
            queue = self._datagrams.get(event.protocol)
            key = engine.remote_key or engine.remote_address
            try:
                if queue is None:
                    raise trio.WouldBlock
                queue[0].send_nowait((key, event.data))
            except (trio.WouldBlock, trio.ClosedResourceError):
                self._stats["dropped_datagrams"] += 1
        elif type(event) is HandshakeCompleted:
            handle.ready.set()
        elif type(event) is SessionClosed:
            logger.debug("session with %s closed: %s", engine.remote_address.short(), event.error)
            handle.ready.set()
            if self._by_address.get(engine.remote_address) is handle:
                del self._by_address[engine.remote_address]
            if self._by_index.get(engine.local_index) is handle:
                del self._by_index[engine.local_index]
            for stream in list(handle.streams.values()):
                stream._wake()
        elif type(event) is SessionReplaced and self._nursery is not None:
            new = self._start(event.session, inbound=not event.session.established)
            if event.session.established:
                new.ready.set()  # (a promoted handshake sets it when its FINISH comes)

    # ------------------------------------------------------------ public API

    async def connect(self, key: PublicKey, protocol: str) -> SessionStream:
        """Open a stream to `key` speaking `protocol`.

        Reuses the session to `key` or starts one (Noise XX over the overlay) and waits
        for its handshake; the stream opens optimistically: you may send at once (the
        OPEN travels in front of your first bytes) and the peer's answer is not waited
        for. If the peer refuses `protocol`, the stream's next `receive_some` or
        `send_all` after the refusal arrived raises `StreamRefusedError` (also a
        `trio.BrokenResourceError`); `await stream.wait_accepted()` waits for the answer.

        Raises:
            SessionTimeoutError: the handshake did not complete in time.
            SessionError: the peer proved another key, or the session failed.
            ValueError: if `protocol` is empty or longer than 255 bytes, or `key` is ours.
            trio.ClosedResourceError: if the manager is not running.
        """
        handle = self._dial(PublicKey(key))
        try:
            sid = handle.engine.open_stream(protocol)
        except StreamBroken as exc:
            assert exc.cause is not None
            raise exc.cause from None
        stream = SessionStream(handle, sid, protocol)
        handle.streams[sid] = stream
        handle.wake()
        if handle.engine.established:
            await trio.lowlevel.checkpoint()
        else:
            await stream._wait_session()
        return stream

    @asynccontextmanager
    async def listen(self, protocol: str) -> AsyncIterator[SessionListener]:
        """Accept streams for `protocol` while the block runs.

        Raises:
            ValueError: if something already listens for `protocol`.
        """
        if self._closed:
            raise trio.ClosedResourceError("the session manager stopped")
        if protocol in self._listeners:
            raise ValueError(f"already listening for {protocol!r}")
        if not protocol or len(protocol.encode()) > 255:
            raise ValueError("a protocol name is 1..255 UTF-8 bytes")
        listener = SessionListener(protocol, LISTEN_BACKLOG, self._forget_listener)
        self._listeners[protocol] = listener
        try:
            yield listener
        finally:
            listener._close_now()

    def _forget_listener(self, listener: SessionListener) -> None:
        if self._listeners.get(listener.protocol) is listener:
            del self._listeners[listener.protocol]

    async def wait_session(self, key: PublicKey) -> None:
        """Establish (or reuse) the session to `key` without opening a stream.

        Raises:
            SessionError: if the handshake fails.
        """
        handle = self._dial(PublicKey(key))
        await handle.ready.wait()
        if handle.engine.error is not None and not handle.engine.established:
            raise handle.engine.error

    async def close_session(self, key: PublicKey, reason: str = "closed") -> None:
        """Close the session to `key`, if there is one (libp2p's `disconnect`).

        The peer is told (a CLOSE packet, best effort); streams on the session fail on
        both sides with `trio.BrokenResourceError`. The next `connect` to `key` runs a
        new handshake.
        """
        handle = self._by_address.get(PublicKey(key))
        if handle is not None:
            self._close(handle, reason)
        await trio.lowlevel.checkpoint()

    def close_all(self, reason: str = "closed") -> int:
        """Close every session now, telling each peer (CLOSE, best effort), as before
        the local node stops. Returns how many sessions there were.

        The CLOSE packets are handed to the service at once where it takes them
        without waiting; the rest stay with the sessions' drivers, so the caller should
        give the service a moment before it stops.
        """
        handles = list(self._by_index.values())
        for handle in handles:
            self._close(handle, reason)
        return len(handles)

    def _close(self, handle: _SessionHandle, reason: str) -> None:
        handle.engine.close(reason)
        # The CLOSE leaves now, from this task: a `connect` right after must not have
        # its INITIATION reach the peer first (the peer would start the new handshake
        # beside the old session, and the CLOSE would then end both).
        self._send_handshake_now(handle)
        if handle.engine.outbox_length:
            # Not taken now (the driver is sending, or the service is full): the
            # driver sends it, then ends (`_send_last`, or its next pass).
            self._unsent_closes.add(handle)
        self._process(handle)

    async def send_datagram(self, key: PublicKey, protocol: str, data: bytes) -> None:
        """Send an unreliable, encrypted datagram named by `protocol` to `key`.

        Waits for the session's handshake if there is none yet. Delivery is not
        guaranteed (it may be lost, duplicated never, reordered yes).

        Raises:
            ValueError: if the datagram is larger than `max_datagram_size(protocol)`,
                or the protocol name is empty or too long (checked before any dial).
            SessionError: if no session could be established.
        """
        check_protocol_name(protocol)
        if len(data) > self.max_datagram_size(protocol):
            raise ValueError(
                f"a datagram for {protocol!r} holds at most"
                f" {self.max_datagram_size(protocol)} bytes, not {len(data)}"
            )
        handle = self._dial(PublicKey(key))
        if not handle.engine.established:
            await handle.ready.wait()
        engine = handle.engine
        if not engine.established:
            raise engine.error or SessionError("session closed", remote_key=key)
        try:
            engine.send_datagram(protocol, bytes(data))
        except StreamBroken as exc:
            raise exc.cause or SessionError(str(exc)) from None
        handle.wake()
        await trio.lowlevel.checkpoint()

    def max_datagram_size(self, protocol: str) -> int:
        """The largest datagram `send_datagram` takes for `protocol`."""
        return Session.max_datagram_size_for(self.config, protocol)

    async def receive_datagram(self, protocol: str) -> tuple[PublicKey, bytes]:
        """The next datagram for `protocol`, with the sender's key.

        Datagrams that arrive before anyone asked for `protocol` are dropped; after the
        first call they queue (up to `DATAGRAM_BACKLOG`).
        """
        queue = self._datagrams.get(protocol)
        if queue is None:
            if self._closed:
                raise trio.ClosedResourceError("the session manager stopped")
            queue = trio.open_memory_channel[tuple[PublicKey, bytes]](DATAGRAM_BACKLOG)
            self._datagrams[protocol] = queue
        try:
            return await queue[1].receive()
        except trio.EndOfChannel:
            raise trio.ClosedResourceError("the session manager stopped") from None

    def statistics(self) -> dict[str, int]:
        """Counters summed over live sessions, plus the manager's own.

        The manager's: `sessions` (live), `dropped_no_session` (packets for no session
        we know), `evicted_half_open`, `dropped_datagrams` (received datagrams nobody
        asked for, or whose protocol queue was full), `refused_streams`, `send_errors`.
        The sessions' (`Session.stats`): packets and bytes sent and received,
        `packets_lost`, `bytes_retransmitted`, `dropped_unauthenticated`,
        `dropped_replayed`, `dropped_handshake`, `dropped_early`, `datagrams_dropped`
        (datagrams we sent that found the session's send queue full), `probes`.
        """
        totals = dict(self._stats)
        totals["sessions"] = len(self._by_index)
        for handle in self._by_index.values():
            for name, value in handle.engine.stats.items():
                totals[name] = totals.get(name, 0) + value
        return totals
