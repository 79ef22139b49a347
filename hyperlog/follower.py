"""Follow a writer's log through lost connections: `follow` and `Follower`.

Theory of operation: one task (`Follower.run`) loops over connections. Each pass
calls the caller's `dial()` (bounded by `dial_timeout`), replicates the log over the
stream it returns (`replicate`), waits for the peer's signed head (`update`), checks
that this peer serves the log, then downloads live from `start` until the session
ends, with a timer beside it that marks the connection steady after `FOLLOW_STEADY`
seconds. What a failure means and how long to wait before the next dial are decided
by the sans-IO `FollowPolicy` (`hyperlog.follow_policy`); this shell only does the
I/O, reports the policy's events to `on_event` and sleeps. Everything fetched is
kept in the log, so each connection fetches only what is still missing.

It stops with `FollowError` when retrying cannot help (the policy says which
failures those are), with the log's `ForkConflictError` when a peer proved a fork
(the log is frozen), with a local error (storage) as it is, or when cancelled. Those
are raised outside its nurseries, so `run` raises them as themselves; `follow` runs
it in a nursery of its own and raises them from its ``async with`` as themselves too.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import NoReturn, TypeAlias, final

import trio

from .errors import ForkConflictError
from .follow_policy import (
    FOLLOW_DIAL_TIMEOUT,
    FOLLOW_UPDATE_TIMEOUT,
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

__all__ = ["Dial", "FollowStatistics", "Follower", "follow"]

#: `dial()`: a fresh stream to a peer serving the log (any `trio.abc.Stream`).
Dial: TypeAlias = Callable[[], Awaitable[trio.abc.Stream]]


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
            stops the follower. To read events from another task, pass a memory
            channel's ``send_nowait``.
        progress: called with the download's `Progress`, counted over every
            connection (blocks and bytes fetched, blocks still missing).
        retry_dial: ``(error, served_before) -> bool``: whether a failed dial may
            mend (default `transient_dial_error`: OS errors, broken streams,
            timeouts). `served_before` says whether a connection served the log.
        dial_timeout: seconds a dial may take; then it failed with `TimeoutError`.
        rng: the backoff's jitter (tests pass a seeded `random.Random`).

    Raises:
        TypeError: `start` is not an int.
        ValueError: `start` is negative.
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
        rng: random.Random | None = None,
    ) -> None:
        check_index(start, "start")
        self.log = log
        self._dial = dial
        self._start = start
        self._on_event = on_event
        self._progress = progress
        self._dial_timeout = dial_timeout
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
        return await self._follow_stream(stream, rep)

    async def _follow_stream(self, stream: trio.abc.Stream, rep: LogReplication) -> LostEvent:
        """Follow the log over one connection until it ends; the policy says what the
        end means. Its verdicts are asked for outside the nurseries, so what they
        raise is not wrapped in exception groups."""
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
        if rep.engine.frozen is not None:
            self._policy.stop()
            raise rep.engine.frozen
        if refused is not None:
            return self._policy.unanswered(refused=refused)
        return self._policy.ended(session.error)

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
    rng: random.Random | None = None,
) -> AsyncIterator[Follower]:
    """Follow `log` from whoever `dial` reaches while the block runs.

    ``async with follow(log, dial) as follower: ...``: the follower dials, replicates
    and reconnects in the background (the arguments are `Follower`'s); the block is
    entered at once (``await follower.wait_connected()`` waits for a connection).
    Leaving the block stops following.

    Raises:
        FollowError: following stopped for a reason retrying cannot mend; the block
            was cancelled. Raised as itself, not inside an exception group.
        ForkConflictError: a peer proved a fork of the log; likewise.
        Exception: what the block raised, as itself; or a local error of the
            follower's (storage), as it was raised.
    """
    follower = Follower(
        log,
        dial,
        start=start,
        on_event=on_event,
        progress=progress,
        retry_dial=retry_dial,
        dial_timeout=dial_timeout,
        rng=rng,
    )
    failure: Exception | None = None
    body_error: Exception | None = None
    async with trio.open_nursery() as nursery:

        async def run() -> None:
            nonlocal failure
            try:
                await follower.run()
            except Exception as exc:  # raised below as itself, not in a group
                failure = exc
                nursery.cancel_scope.cancel()

        nursery.start_soon(run)
        try:
            yield follower
        except Exception as exc:  # raised below as itself, not in a group
            body_error = exc
        finally:
            nursery.cancel_scope.cancel()
    # The follower's failure first: it cancelled the block, which may have raised
    # something else while it was being cancelled.
    if failure is not None:
        raise failure
    if body_error is not None:
        raise body_error
