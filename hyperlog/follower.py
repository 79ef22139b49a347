"""Follow a writer's log through lost connections: `follow` and `Follower`.

Theory of operation: one task (`Follower.run`) loops over connections. Each pass
calls the caller's `dial()` (bounded by `dial_timeout`), sets TCP keepalive on the
connection under the stream it returns when it finds one (`set_keepalive`), replicates
the log over it (`replicate`), waits for the peer's signed head (`update`), checks
that this peer serves the log, then downloads live from `start` until the session
ends, with a timer beside it that marks the connection steady after `FOLLOW_STEADY`
seconds. What a failure means and how long to wait before the next dial are decided
by the sans-IO `FollowPolicy` (`hyperlog.follow_policy`); this shell only does the
I/O, reports the policy's events to `on_event` and sleeps. Everything fetched is
kept in the log, so each connection fetches only what is still missing.

It stops with `FollowError` when retrying cannot help (the policy says which
failures those are), with the log's `ForkConflictError` when a peer proved a fork
(the log is frozen), with a local error (storage; what `on_event` or `progress`
raised; Ctrl-C) as it is, or when cancelled. A connection's work runs in nurseries
(the session's, the steady timer's), which wrap what fails there in exception
groups: the follower takes the one failure back out (`single_failure`) and raises it as
itself from `run`; `follow` runs `run` in a nursery of its own and raises what
stopped it, or what its block raised, from its ``async with`` as itself too.
"""

from __future__ import annotations

import contextlib
import math
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, NoReturn, TypeAlias, final

import trio

from ._groups import leaves, single_failure
from .errors import ForkConflictError
from .follow_policy import (
    FOLLOW_DIAL_TIMEOUT,
    FOLLOW_KEEPALIVE_COUNT,
    FOLLOW_KEEPALIVE_IDLE,
    FOLLOW_KEEPALIVE_INTERVAL,
    FOLLOW_UPDATE_TIMEOUT,
    FOLLOW_USER_TIMEOUT,
    DialFailedEvent,
    FollowEvent,
    FollowPolicy,
    LostEvent,
    RetryDial,
    transient_dial_error,
)
from .log import Log
from .replication import LogReplication, Progress, ReplicationSession, replicate, replication_for
from .replication.scheduler import check_index

__all__ = [
    "DEFAULT_KEEPALIVE",
    "Dial",
    "FollowStatistics",
    "Follower",
    "TcpKeepalive",
    "follow",
    "set_keepalive",
]

#: `dial()`: a fresh stream to a peer serving the log (any `trio.abc.Stream`).
Dial: TypeAlias = Callable[[], Awaitable[trio.abc.Stream]]

#: The attributes naming the stream a stream wraps, which `set_keepalive` follows down
#: to a `trio.SocketStream`: ``transport_stream`` (`trio.SSLStream`, pinecone_trio's
#: Noise link), ``socket_stream`` (pinecone_trio's dialled WebSocket stream).
_WRAPPED: Final = ("transport_stream", "socket_stream")
#: Layers of wrapped streams `set_keepalive` looks through (a link over a WebSocket
#: over TCP is two).
_MAX_LAYERS: Final = 8


@final
@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """TCP options that make a follower notice a peer that vanished without a word
    (Wi-Fi gone, a laptop asleep: no reset), which it would otherwise wait for for
    ever: it sends nothing while it waits for appends.

    The kernel probes a connection idle for `idle` seconds every `interval` seconds
    and breaks it after `count` unanswered probes; on Linux, data or probes left
    unacknowledged for `user_timeout` seconds break it too (TCP_USER_TIMEOUT; a
    follower in the middle of a download is never idle). With the defaults a vanished
    peer is noticed within about 30 s.

    Raises:
        ValueError: a value is not a positive whole number of seconds (`count`: of
            probes) within what the kernel takes (up to 32767).
    """

    idle: int = FOLLOW_KEEPALIVE_IDLE
    interval: int = FOLLOW_KEEPALIVE_INTERVAL
    count: int = FOLLOW_KEEPALIVE_COUNT
    user_timeout: int = FOLLOW_USER_TIMEOUT

    def __post_init__(self) -> None:
        for name in ("idle", "interval", "count", "user_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 32767:
                raise ValueError(f"{name} must be a whole number from 1 to 32767, not {value!r}")


#: The follower's keepalive unless told otherwise (`TcpKeepalive`'s defaults).
DEFAULT_KEEPALIVE: Final = TcpKeepalive()


def set_keepalive(stream: trio.abc.Stream, keepalive: TcpKeepalive = DEFAULT_KEEPALIVE) -> bool:
    """Set `keepalive`'s options on the TCP connection `stream` runs over, and say
    whether there was one.

    It is found when `stream` is a `trio.SocketStream` over TCP, or leads to one
    through ``transport_stream`` / ``socket_stream`` attributes (`trio.SSLStream`,
    `pinecone_trio`'s Noise links and dialled WebSocket streams). Other streams (an
    overlay session stream, a memory stream) must bring their own liveness check:
    `pinecone_trio`'s session streams end after their own idle timeout. Options the
    system lacks are left out (best effort: its defaults still work).
    """
    sock = _tcp_under(stream)
    if sock is None:
        return False
    unacknowledged_ms = keepalive.user_timeout * 1000
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, _keepalive_idle_option(), keepalive.idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), keepalive.interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), keepalive.count),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), unacknowledged_ms),
    ]
    for level, name, value in options:
        if name is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, name, value)
    return True


def _keepalive_idle_option() -> int | None:
    """The option setting a connection's idle time before the first keepalive probe:
    TCP_KEEPIDLE (Linux, Windows, the BSDs), or TCP_KEEPALIVE on macOS, which names it
    so and has no TCP_KEEPIDLE (Python exposes it since 3.10). Without it a follower
    on a Mac would probe only after the system's two hours."""
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE"):
        option = getattr(socket, name, None)
        if option is not None:
            return int(option)
    return None


def _tcp_under(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The TCP socket `stream` runs over, through at most `_MAX_LAYERS` wrapping
    streams (None: none found, or not TCP)."""
    layer: object = stream
    for _ in range(_MAX_LAYERS):
        if isinstance(layer, trio.SocketStream):
            sock = layer.socket
            tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
            return sock if tcp and sock.type == socket.SOCK_STREAM else None
        inner = [getattr(layer, name, None) for name in _WRAPPED]
        layer = next((x for x in inner if isinstance(x, trio.abc.Stream)), None)
        if layer is None:
            return None
    return None


@final
@dataclass(frozen=True, slots=True)
class FollowStatistics:
    """A follower's counters (`Follower.statistics`).

    Attributes:
        connected: a connection serves the log now.
        served_before: a connection has served it (since the follower started).
        connections: connections that served it.
        outages: times the follower lost its connection, or could not make one.
        failures: failed dials and connections since one last held for
            `FOLLOW_STEADY` seconds (what the backoff counts).
        blocks: blocks fetched, over every connection.
        bytes: bytes of those blocks.
    """

    connected: bool
    served_before: bool
    connections: int
    outages: int
    failures: int
    blocks: int
    bytes: int


class Follower:
    """Keeps `log` replicating from whoever `dial` reaches, through lost connections.

    Start it with ``await nursery.start(follower.run)``, or use `follow`.

    Args:
        log: the log to follow (a reader's copy; what it holds is kept).
        dial: ``async () -> trio.abc.Stream``, called for every connection: a
            `pinecone_trio` link or session stream, a TCP stream, anything.
        start: follow the log from this block on (blocks before it are fetched
            only if asked for otherwise).
        on_event: called with each `FollowEvent` (connected, dial failed, lost,
            steady), in the follower's task: it must not block, and what it raises
            stops the follower (raised as itself). To read events from another
            task, pass the ``send_nowait`` of a memory channel with room for every
            event, ``trio.open_memory_channel(math.inf)``: a full channel's
            `trio.WouldBlock` stops the follower like any error of `on_event`.
        progress: called with the download's `Progress`, counted over every
            connection (blocks and bytes fetched, blocks still missing); what it
            raises stops the follower too.
        retry_dial: ``(error, served_before) -> bool``: whether a failed dial may
            mend (default `transient_dial_error`: OS errors, broken streams,
            timeouts). `served_before` says whether a connection served the log.
        dial_timeout: seconds a dial may take; then it failed with `TimeoutError`.
        keepalive: the TCP keepalive set on the connection under each dialled
            stream where `set_keepalive` finds one (a TCP stream, a Noise link, a
            WebSocket), so a peer that vanished without a reset is noticed (within
            about 30 s by default); None leaves the sockets as they are. Other
            streams must bring their own liveness check.
        rng: the backoff's jitter (tests pass a seeded `random.Random`).

    Raises:
        TypeError: `start` is not an int, `dial_timeout` not a number.
        ValueError: `start` is negative, `dial_timeout` not above 0 (or NaN).
    """

    def __init__(
        self,
        log: Log,
        dial: Dial,
        *,
        start: int = 0,
        on_event: Callable[[FollowEvent], None] | None = None,
        progress: Callable[[Progress], None] | None = None,
        retry_dial: RetryDial = transient_dial_error,
        dial_timeout: float = FOLLOW_DIAL_TIMEOUT,
        keepalive: TcpKeepalive | None = DEFAULT_KEEPALIVE,
        rng: random.Random | None = None,
    ) -> None:
        check_index(start, "start")
        if isinstance(dial_timeout, bool) or not isinstance(dial_timeout, int | float):
            raise TypeError(f"dial_timeout must be a number of seconds, not {dial_timeout!r}")
        if math.isnan(dial_timeout) or dial_timeout <= 0:
            raise ValueError(f"dial_timeout must be above 0 seconds, not {dial_timeout!r}")
        self.log = log
        self._dial = dial
        self._start = start
        self._on_event = on_event
        self._progress = progress
        self._dial_timeout = dial_timeout
        self._keepalive = keepalive
        self._policy = FollowPolicy(retry_dial=retry_dial, rng=rng)
        self._blocks = 0
        self._bytes = 0
        self._changed = trio.Event()
        self._running = False

    @property
    def connected(self) -> bool:
        """Whether a connection serves the log now."""
        return self._policy.connected

    def statistics(self) -> FollowStatistics:
        """The follower's counters now (`FollowStatistics`: an immutable snapshot)."""
        p = self._policy
        return FollowStatistics(
            connected=p.connected,
            served_before=p.served_before,
            connections=p.connections,
            outages=p.outages,
            failures=p.failures,
            blocks=self._blocks,
            bytes=self._bytes,
        )

    async def wait_connected(self) -> None:
        """Return once a connection serves the log (at once if one does now).

        Use `trio.fail_after` to bound it: a writer that is away is waited for.
        """
        while not self._policy.connected:
            await self._changed.wait()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Follow the log until cancelled; started as soon as it runs (it has not
        connected yet: `wait_connected`).

        Raises:
            FollowError: retrying cannot mend what went wrong (`FollowError.why`).
            ForkConflictError: a peer proved a fork of the log (the log is frozen).
            RuntimeError: this follower is running already.
            BaseException: a local failure as itself, not in an exception group: a
                storage error, what `on_event` or `progress` raised, Ctrl-C. (Two
                failing at the same instant come in a group.)
        """
        if self._running:
            raise RuntimeError("this follower is running already")
        self._running = True
        rep = replication_for(self.log)
        task_status.started()
        try:
            # Not bounded in count on purpose: it follows until cancelled or a fatal
            # error; each pass dials once (bounded by dial_timeout), and waits at
            # least FOLLOW_RETRY_FIRST / 2 seconds before the next.
            while True:
                event = await self._attempt(rep)
                self._emit(event)
                await trio.sleep(event.retry_in)
        finally:
            self._policy.stop()
            self._running = False
            self._notify()

    async def _attempt(self, rep: LogReplication) -> DialFailedEvent | LostEvent:
        """Dial once and follow over the connection until it ends.

        Raises:
            FollowError: see `run`.
            ForkConflictError: see `run`.
        """
        stream: trio.abc.Stream | None = None
        error: Exception | None = None
        with trio.move_on_after(self._dial_timeout):
            try:
                stream = await self._dial()
            except Exception as exc:  # (the policy's retry_dial says what it means)
                error = exc
        if stream is None:
            if error is None:
                error = TimeoutError(f"no connection within {self._dial_timeout:g} s")
            return self._policy.dial_failed(error)
        if self._keepalive is not None:
            set_keepalive(stream, self._keepalive)
        return await self._follow_stream(stream, rep)

    async def _follow_stream(self, stream: trio.abc.Stream, rep: LogReplication) -> LostEvent:
        """Follow the log over one connection until it ends; the policy says what the
        end means. Its verdicts are asked for outside the nurseries, and what fails
        inside them is taken out of their exception groups: both are raised as
        themselves."""
        failure: BaseException | None = None
        try:
            session, refused = await self._connection(stream, rep)
        except BaseExceptionGroup as group:
            failure = single_failure(group)
            if failure is None:  # only cancellations (for the scope that made them)
                raise
        if failure is not None:
            # Raised outside the handler: its own __context__ is kept, not the group.
            raise failure
        if rep.engine.frozen is not None:
            self._policy.stop()
            raise rep.engine.frozen
        if refused is not None:
            return self._policy.unanswered(refused=refused)
        return self._policy.ended(session.error)

    async def _connection(
        self, stream: trio.abc.Stream, rep: LogReplication
    ) -> tuple[ReplicationSession, bool | None]:
        """Replicate over `stream` until the connection ends. Returns its session, and
        whether the peer refused the log (None: it served it; False: it left it
        unanswered)."""
        refused: bool | None = None  # set when the peer did not serve the log
        async with stream, replicate(stream, self.log) as session, trio.open_nursery() as nursery:

            async def watch() -> None:
                await session.wait_closed()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await rep.update(timeout=FOLLOW_UPDATE_TIMEOUT)
            if not session.closed.is_set():  # (closed: `session.error` says why)
                if _serves(session, rep):
                    self._emit(self._policy.connected_at(trio.current_time()))
                    nursery.start_soon(self._hold)
                    # A live download ends only with the connection (or a fork
                    # conflict, raised below from the log's state).
                    with contextlib.suppress(ForkConflictError):
                        await rep.download(self._start, None, progress=self._counting())
                else:
                    refused = self.log.discovery_key in session.engine.rejected
            nursery.cancel_scope.cancel()  # (the watch and hold tasks; leaving closes)
        return session, refused

    async def _hold(self) -> None:
        """Mark the connection steady once it has served for `FOLLOW_STEADY` seconds
        (runs beside the download; cancelled with it)."""
        await trio.sleep_until(self._policy.next_deadline())
        event = self._policy.on_timer(trio.current_time())
        if event is not None:
            self._emit(event)

    def _counting(self) -> Callable[[Progress], None]:
        """One connection's progress callback, counted on from what came before."""
        blocks, size = self._blocks, self._bytes

        def progress(p: Progress) -> None:
            self._blocks, self._bytes = blocks + p.blocks, size + p.bytes
            if self._progress is not None:
                self._progress(Progress(self._blocks, self._bytes, p.missing))

        return progress

    def _emit(self, event: FollowEvent) -> None:
        self._notify()
        if self._on_event is not None:
            self._on_event(event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _cancelled(exc: BaseException) -> bool:
    """Whether `exc` is a cancellation (or a group of nothing else), which belongs to
    the scope that was cancelled, or an async generator being closed."""
    if isinstance(exc, BaseExceptionGroup):
        return all(isinstance(e, trio.Cancelled) for e in leaves(exc))
    return isinstance(exc, trio.Cancelled | GeneratorExit)


def _serves(session: ReplicationSession, rep: LogReplication) -> bool:
    """Whether this session's peer has the log's channel open (other sessions of the
    log, such as readers this process serves, do not count)."""
    return any(ch.peer_id == session.engine.peer_id for ch in rep.engine.peers)


@asynccontextmanager
async def follow(
    log: Log,
    dial: Dial,
    *,
    start: int = 0,
    on_event: Callable[[FollowEvent], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    retry_dial: RetryDial = transient_dial_error,
    dial_timeout: float = FOLLOW_DIAL_TIMEOUT,
    keepalive: TcpKeepalive | None = DEFAULT_KEEPALIVE,
    rng: random.Random | None = None,
) -> AsyncIterator[Follower]:
    """Follow `log` from whoever `dial` reaches while the block runs.

    ``async with follow(log, dial) as follower: ...``: the follower dials, replicates
    and reconnects in the background (the arguments are `Follower`'s, checked at
    once); the block is entered at once (``await follower.wait_connected()`` waits for
    a connection). Leaving the block stops following.

    Raises:
        FollowError: following stopped for a reason retrying cannot mend; the block
            was cancelled. Raised as itself, not inside an exception group.
        ForkConflictError: a peer proved a fork of the log; likewise.
        BaseException: what the block raised (Ctrl-C included), as itself; or a local
            failure of the follower's (storage, `on_event`, `progress`), likewise.
            When the follower failed and cancelled the block, which raised
            something else as it was cancelled, the follower's failure is raised,
            the block's error named in a note on it (and kept as its
            ``__context__`` unless that holds another error); but the block's
            Ctrl-C (any BaseException that is not an Exception) is raised before a
            follower's failure, which is kept on it the same way.
    """
    follower = Follower(
        log,
        dial,
        start=start,
        on_event=on_event,
        progress=progress,
        retry_dial=retry_dial,
        dial_timeout=dial_timeout,
        keepalive=keepalive,
        rng=rng,
    )
    failure: BaseException | None = None  # what stopped the follower
    body_error: BaseException | None = None  # what the block raised
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            nonlocal failure
            try:
                await follower.run()
            except BaseException as exc:
                if _cancelled(exc):
                    raise
                failure = exc  # raised below as itself, not in a group
                nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        try:
            yield follower
        except BaseException as exc:
            if _cancelled(exc):
                raise
            body_error = exc  # raised below as itself, not in a group
        finally:
            nursery.cancel_scope.cancel()
    first = _first_of(failure, body_error)
    if first is not None:
        raise first


def _first_of(failure: BaseException | None, body: BaseException | None) -> BaseException | None:
    """What `follow` raises: the follower's `failure` (it cancelled the block, which may
    have raised something else as it was), or the block's error when it is a Ctrl-C
    or the like (not an Exception) or the follower did not fail; the other, if any,
    is named in a note and kept as its ``__context__`` unless that holds something
    other than the cancellation the failure caused."""
    if failure is None or body is None:
        return failure if body is None else body
    first, other = (body, failure) if not isinstance(body, Exception) else (failure, body)
    first.add_note(f"(while following, {other!r} was raised too)")
    if first.__context__ is None or isinstance(first.__context__, trio.Cancelled):
        first.__context__ = other
    return first
