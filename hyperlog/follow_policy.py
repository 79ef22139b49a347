"""What a follower does when a connection fails: retry it, or stop (`FollowPolicy`).

Theory of operation: a follower (`hyperlog.follower`) keeps one log replicating from
a writer through lost connections. Its Trio shell dials, replicates and sleeps; every
decision is made here, in plain code that takes the time as an argument and never
awaits, so it is tested without sockets or a clock.

The shell tells the policy what happened, and the policy answers with an event for
the caller (or raises `FollowError` when retrying cannot help):

- `dial_failed(error)`: the dial raised. The caller's `retry_dial(error,
  served_before)` says whether it is transient (by default: the operating system's
  errors, a broken stream, a timeout) -> `DialFailedEvent`.
- `connected(now)`: a connection serves the log (its channel is open and synced) ->
  `ConnectedEvent`; `next_deadline()` is then `FOLLOW_STEADY` seconds away.
- `on_timer(now)`: at that deadline the connection has held: the backoff starts from
  `FOLLOW_RETRY_FIRST` again -> `SteadyEvent`. A connection that drops before does
  not reset it, so a path that drops every connection right after it serves is
  redialled less and less often instead of every second.
- `unanswered(refused=)`: a connection came up but its peer did not serve the log:
  it refused it (fatal: it serves other logs), or left it unanswered (fatal from a
  peer that never served the log, which may be no hyperlog peer at all; transient
  once one has: a stalled link) -> `LostEvent`.
- `ended(error)`: a connection ended with `session.error` (`transient_end` says which
  are transient) -> `LostEvent`.

Every `DialFailedEvent` and `LostEvent` carries `retry_in`, the jittered delay before
the next dial (`retry_delay`: `FOLLOW_RETRY_FIRST` doubling to `FOLLOW_RETRY_CAP`).
The policy imports trio for its exception classes only (which failures are transient
is a question about them); nothing here does I/O or reads the clock.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, final

import trio

from .errors import InvalidProofError, ReplicationError
from .replication.constants import OPEN_TIMEOUT

__all__ = [
    "FOLLOW_DIAL_TIMEOUT",
    "FOLLOW_KEEPALIVE_COUNT",
    "FOLLOW_KEEPALIVE_IDLE",
    "FOLLOW_KEEPALIVE_INTERVAL",
    "FOLLOW_RETRY_CAP",
    "FOLLOW_RETRY_FIRST",
    "FOLLOW_STEADY",
    "FOLLOW_UPDATE_TIMEOUT",
    "FOLLOW_USER_TIMEOUT",
    "ConnectedEvent",
    "DialFailedEvent",
    "FollowError",
    "FollowEvent",
    "FollowFailure",
    "FollowPolicy",
    "LostEvent",
    "RetryDial",
    "SteadyEvent",
    "UnansweredError",
    "hello_timed_out",
    "retry_delay",
    "transient_dial_error",
    "transient_end",
]

#: The first redial comes about this long (seconds, jittered down to half) after a
#: connection was lost or could not be made ...
FOLLOW_RETRY_FIRST: Final = 0.5
#: ... doubling with every failed attempt up to this (seconds): a writer that comes
#: back is found within about this long, and an absent one costs a dial per half minute.
FOLLOW_RETRY_CAP: Final = 30.0
#: Seconds a connection must serve the log before the backoff starts from
#: `FOLLOW_RETRY_FIRST` again (resetting it as soon as one served redialled a path
#: that drops every connection right after it serves every ~1.5 s for ever).
FOLLOW_STEADY: Final = 10.0
#: Seconds a new connection's peer has to send its signed head (`update`).
FOLLOW_UPDATE_TIMEOUT: Final = 30.0
#: Seconds a dial may take before it counts as failed (a `TimeoutError`, transient):
#: the dial is the caller's code and might otherwise wait for ever.
FOLLOW_DIAL_TIMEOUT: Final = 60.0
#: Seconds a follower's TCP connection may be idle before the kernel probes the peer,
#: the seconds between probes, and the unanswered probes that break the connection
#: (`hyperlog.follower.TcpKeepalive`): a follower waiting for appends sends nothing, so
#: a writer that vanished without a word (Wi-Fi gone, no reset) is noticed only so.
FOLLOW_KEEPALIVE_IDLE: Final = 15
FOLLOW_KEEPALIVE_INTERVAL: Final = 5
FOLLOW_KEEPALIVE_COUNT: Final = 3
#: Seconds data (or, on Linux, keepalive probes) may stay unacknowledged before the
#: kernel breaks the connection (TCP_USER_TIMEOUT, Linux only): keepalive never probes
#: while something is unacknowledged, and a downloading follower soon has something.
FOLLOW_USER_TIMEOUT: Final = 30

#: Why following stopped (`FollowError.why`).
FollowFailure: TypeAlias = Literal["dial", "refused", "unanswered", "ended"]
#: `retry_dial(error, served_before)`: whether a failed dial is worth another try.
RetryDial: TypeAlias = Callable[[BaseException, bool], bool]


class FollowError(ReplicationError):
    """Following a log stopped for a reason a new connection would not mend.

    Attributes:
        why: ``"dial"``: the dial failed in a way `retry_dial` calls permanent (the
            peer speaks another protocol); ``"refused"``: the peer refused the log (it
            serves other logs); ``"unanswered"``: a peer that never served the log did
            not answer for it; ``"ended"``: a connection ended for a reason that is
            not transient (an invalid proof or signature, garbage, a protocol
            violation; or, from a peer that never served the log, no hello).
        error: the failure underneath (also the ``__cause__``), or None.
        served_before: whether a connection of this follower had served the log.
        diverged: the peer's log does not extend the copy held here: it served the
            log before, and then sent a proof that does not verify against the
            blocks held here (a writer restored from an older copy and appended to
            since, or damaged); why ``"ended"``.
    """

    def __init__(
        self,
        message: str,
        *,
        why: FollowFailure,
        error: BaseException | None = None,
        served_before: bool = False,
        diverged: bool = False,
    ) -> None:
        super().__init__(message)
        self.why: FollowFailure = why
        self.error = error
        self.served_before = served_before
        self.diverged = diverged


class UnansweredError(ReplicationError):
    """The peer neither opened nor refused the log's channel within `OPEN_TIMEOUT`
    (why a connection was given up on, where `session.error` says nothing)."""


@final
@dataclass(frozen=True, slots=True)
class ConnectedEvent:
    """A connection serves the log: it is being fetched and followed.

    `again` is True when a connection of this follower served it before (it is back).
    """

    again: bool


@final
@dataclass(frozen=True, slots=True)
class DialFailedEvent:
    """A dial failed in a way that may mend; the next one comes in `retry_in` seconds."""

    error: BaseException
    retry_in: float


@final
@dataclass(frozen=True, slots=True)
class LostEvent:
    """A connection ended in a way a new one may mend; the next dial comes in
    `retry_in` seconds. `error` is why (None: the peer closed it; `UnansweredError`:
    its peer did not answer for the log)."""

    error: BaseException | None
    retry_in: float


@final
@dataclass(frozen=True, slots=True)
class SteadyEvent:
    """The connection has served for `FOLLOW_STEADY` seconds: the next loss is
    retried after `FOLLOW_RETRY_FIRST` again."""


FollowEvent: TypeAlias = ConnectedEvent | DialFailedEvent | LostEvent | SteadyEvent


def retry_delay(
    failures: int,
    rng: random.Random | None = None,
    *,
    first: float = FOLLOW_RETRY_FIRST,
    cap: float = FOLLOW_RETRY_CAP,
) -> float:
    """Seconds before the next dial after `failures` failed dials or connections since
    one last held: about `first`, doubling up to `cap`, drawn from [d/2, d] so that
    followers that lost the same writer do not all redial it at once.

    (The same rule as `pinecone_trio.backoff`, which hyperlog may not import.)

    Raises:
        ValueError: `failures` is negative.
    """
    if failures < 0:
        raise ValueError("failures must be >= 0")
    ceiling = min(cap, first * 2.0 ** min(failures, 32))
    return (rng or random).uniform(ceiling / 2, ceiling)


def transient_dial_error(error: BaseException, served_before: bool) -> bool:
    """The default `retry_dial`: the operating system's errors (refused, reset, timed
    out, no route, a name not resolved), a stream that broke and a Trio timeout are
    retried; anything else (another protocol, a bug in the dial) stops following.
    Pass your own to retry your transport's errors too (`pinecone_trio`'s
    `PineconeError`s, say)."""
    del served_before  # (the default does not care; `hyperlog clone --live` does)
    return isinstance(error, OSError | trio.BrokenResourceError | trio.TooSlowError)


def hello_timed_out(error: BaseException | None) -> bool:
    """Whether a session ended because the peer sent no hello in time (timed out, as
    opposed to a peer that sent something else: the driver chains the timeout)."""
    return isinstance(error, ReplicationError) and isinstance(error.__cause__, trio.TooSlowError)


def transient_end(error: BaseException | None, *, served_before: bool = False) -> bool:
    """Whether a session that ended with `error` (`session.error`) may be mended by a
    new connection: the peer closed it (None: a writer stopped or restarted) or the
    stream broke (reset, EOF inside a frame, keepalive timeout); and, from a peer that
    served the log before (`served_before`), no hello or no answer for the log in
    time (a link that stalled right after it came up: lossy Wi-Fi, a paused server).
    A peer dropped for breaking the protocol, an invalid proof or a fork conflict is
    not: it would do it again; nor is one that never served the log and sends no
    hello (it may be no hyperlog peer at all)."""
    if error is None or isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError):
        return True
    return served_before and (isinstance(error, UnansweredError) or hello_timed_out(error))


def _reason(error: BaseException) -> str:
    return str(error) or type(error).__name__


class FollowPolicy:
    """The follower's decisions and counters across its connections (sans-IO).

    Args:
        retry_dial: whether a failed dial may mend (`transient_dial_error`).
        rng: the jitter's random numbers (tests pass a seeded one).
    """

    def __init__(
        self, *, retry_dial: RetryDial = transient_dial_error, rng: random.Random | None = None
    ) -> None:
        self.retry_dial = retry_dial
        self.rng = rng
        self.failures = 0  # failed dials or connections since one last held (steady)
        self.served_before = False  # a connection has served the log
        self.connected = False  # a connection serves it now
        self.connections = 0  # connections that served the log
        self.outages = 0  # times the follower lost its connection (or never had one)
        self._down = False  # in an outage: its first failure counted it
        self._steady_at = math.inf

    def next_deadline(self) -> float:
        """When `on_timer` has something to do (math.inf: nothing scheduled)."""
        return self._steady_at

    def on_timer(self, now: float) -> SteadyEvent | None:
        """The connection has held until `now`: from `FOLLOW_STEADY` on, the backoff
        starts from the beginning again."""
        if now < self._steady_at:
            return None
        self._steady_at = math.inf
        self.failures = 0
        return SteadyEvent()

    def connected_at(self, now: float) -> ConnectedEvent:
        """A connection serves the log (from `now`)."""
        event = ConnectedEvent(again=self.served_before)
        self.served_before = self.connected = True
        self.connections += 1
        self._down = False
        self._steady_at = now + FOLLOW_STEADY
        return event

    def dial_failed(self, error: BaseException) -> DialFailedEvent:
        """The dial raised `error`.

        Raises:
            FollowError: `retry_dial` calls it permanent (why ``"dial"``).
        """
        if not self.retry_dial(error, self.served_before):
            self.stop()
            raise FollowError(
                f"dialling the peer failed: {_reason(error)}",
                why="dial",
                error=error,
                served_before=self.served_before,
            ) from error
        return DialFailedEvent(error, self._retry())

    def unanswered(self, *, refused: bool) -> LostEvent:
        """A connection came up, but its peer did not serve the log: it `refused` it,
        or it neither opened nor refused its channel in time.

        Raises:
            FollowError: it refused the log (why ``"refused"``), or it never answered
                for it and no connection served it before (``"unanswered"``).
        """
        if refused:
            self.stop()
            raise FollowError(
                "the peer does not serve this log", why="refused", served_before=self.served_before
            )
        error = UnansweredError(f"the peer did not answer for the log within {OPEN_TIMEOUT:g} s")
        if not self.served_before:
            self.stop()
            raise FollowError(
                f"{error} (is it a hyperlog peer?)", why="unanswered", error=error
            ) from error
        return LostEvent(error, self._retry())

    def ended(self, error: BaseException | None) -> LostEvent:
        """A connection ended; `error` is why (`session.error`: None when the peer
        closed it).

        Raises:
            FollowError: retrying cannot mend it (why ``"ended"``).
        """
        if not transient_end(error, served_before=self.served_before):
            assert error is not None  # (None is transient)
            self.stop()
            # Served before, its proof no longer verifies: its history changed.
            diverged = self.served_before and any(
                isinstance(e, InvalidProofError) for e in _causes(error)
            )
            if not self.served_before:
                message = f"the peer was dropped before serving the log: {_reason(error)}"
            elif diverged:
                message = f"the peer's log does not extend the copy held here ({error})"
            else:
                message = f"the peer was dropped: {_reason(error)}"
            raise FollowError(
                message,
                why="ended",
                error=error,
                served_before=self.served_before,
                diverged=diverged,
            ) from error
        return LostEvent(error, self._retry())

    def stop(self) -> None:
        """Following stopped (cancelled, or a local error): nothing is connected."""
        self.connected = False
        self._steady_at = math.inf

    def _retry(self) -> float:
        """The connection is down: count the outage (once) and the failure, and say
        how long to wait before the next dial."""
        self.stop()
        if not self._down:
            self._down = True
            self.outages += 1
        delay = retry_delay(self.failures, self.rng)
        self.failures += 1
        return delay


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`, then the errors it was raised from, groups opened, in order (at most 64:
    a chain of causes is short, and a cycle must not loop). `trio.open_tcp_stream`,
    say, raises an OSError caused by a group of each attempt's error."""
    found: list[BaseException] = []
    stack: list[BaseException] = [exc]
    steps = 0  # (groups count too: one whose cause is itself must not loop)
    while stack and len(found) < 64 and steps < 256:
        steps += 1
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            found.append(e)
        if e.__cause__ is not None:
            stack.append(e.__cause__)
    return found
