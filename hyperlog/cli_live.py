"""``hyperlog clone --live``: follow the writer through lost connections
(`_follow_live`), with the library's `Follower` (`hyperlog.follower`), which decides
what is retried and when; this module dials the URI, says what happens in a user's
words (once per outage: `_Outage`) and turns a fatal `FollowError` into one line."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, NoReturn

import trio

from .cli_clone_state import _Bar, _CloneState
from .cli_keepalive import LIVE_KEEPALIVE
from .cli_words import (
    KEY_HINT,
    _connect_failure,
    _dial_failure,
    _ended,
    _held,
    _refused_upgrade,
)
from .errors import ReplicationError
from .follow_policy import (
    FOLLOW_STEADY,
    ConnectedEvent,
    DialFailedEvent,
    FollowError,
    FollowEvent,
    LostEvent,
    SteadyEvent,
)
from .follower import Follower
from .log import Log
from .replication import Progress

if TYPE_CHECKING:
    from pinecone_trio.link.stream import NoiseLink

#: Seconds a connection must stay up, serving the log, before the backoff starts from
#: its first delay again (the follower's `FOLLOW_STEADY`), and `_Outage` speaks again.
LIVE_STEADY = FOLLOW_STEADY


class _Outage:
    """Says once that the connection is lost (or cannot be made), and once that it is
    back: a clone retrying every 30 s for an hour would otherwise print 120 lines.

    A connection that comes back and drops again within `LIVE_STEADY` (a path that
    keeps dropping) makes it say so once, and then nothing until a connection has held
    for `LIVE_STEADY`: it used to say "lost" and "connected again" for every one.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.since: float | None = None  # when it was lost (None: connected)
        # When a connection came back after an outage, until it held (`steady`).
        self.back_at: float | None = None
        self.flapping = False  # said that it keeps dropping: quiet until one holds

    def lost(self, message: str) -> None:
        if self.since is not None:
            return
        now = self.since = trio.current_time()
        if self.back_at is None:
            _notice(f"{message}; retrying (Ctrl-C to stop)")
            return
        self.flapping = True
        _notice(
            f"{message}; it keeps dropping ({now - self.back_at:.1f} s after connecting "
            f"again): retrying less often, quietly until a connection holds for "
            f"{LIVE_STEADY:g} s (Ctrl-C to stop)"
        )

    def back(self, *, again: bool) -> None:
        if self.since is None:
            return
        now = trio.current_time()
        if not self.flapping:
            what = "connected again" if again else "connected"
            _notice(f"hyperlog: {self.uri}: {what} after {now - self.since:.1f} s")
            self.since = None
        self.back_at = now  # (while flapping, `since` stays: the next loss is quiet)

    def steady(self) -> None:
        """The connection has held for `LIVE_STEADY` seconds."""
        if self.flapping and self.since is not None and self.back_at is not None:
            took = self.back_at - self.since
            _notice(
                f"hyperlog: {self.uri}: connected again after {took:.1f} s "
                f"(it has held for {LIVE_STEADY:g} s)"
            )
        self.since = self.back_at = None
        self.flapping = False


def _notice(message: str) -> None:
    """One line on stderr (over the live progress bar's line on a terminal)."""
    erase = "\r\x1b[K" if sys.stderr.isatty() else ""
    sys.stderr.write(f"{erase}{message}\n")  # one write: Ctrl-C cannot split the line
    sys.stderr.flush()


def _transient_dial(exc: BaseException, *, served_before: bool = False) -> bool:
    """Whether a failed dial may succeed later: the operating system's errors
    (refused, reset, timed out, no route, a name not resolved, a WebSocket upgrade
    refused with a 5xx status) and a handshake cut off or timed out. A handshake the
    peer got wrong (`BadHandshake`, a frame too large, a message that does not
    decrypt) is not: it speaks something else; nor is an upgrade refused with a 4xx
    status (the wrong path) by a URI that never served the log (`served_before`: a
    proxy in front of a server that did may answer 404 while it restarts)."""
    status = _refused_upgrade(exc)
    if status is not None and 400 <= status < 500 and not served_before:
        return False
    from pinecone_trio.errors import (
        HandshakeAborted,
        HandshakeTimeout,
        TruncatedFrame,
        TruncatedStream,
    )

    transient = (OSError, HandshakeAborted, HandshakeTimeout, TruncatedFrame, TruncatedStream)
    return isinstance(exc, transient)


def _retry_dial(error: BaseException, served_before: bool) -> bool:
    """The follower's `retry_dial` (`_transient_dial`); what it refuses ends the clone
    (`_Following.fatal` words it)."""
    return _transient_dial(error, served_before=served_before)


class _Following:
    """A live clone's state across its connections, and its words for the follower's
    events (`on_event`) and fatal errors (`fatal`)."""

    def __init__(self, args: argparse.Namespace, log: Log, state: _CloneState) -> None:
        self.uri: str = args.connect
        self.start: int = args.sparse[0] if args.sparse else 0
        self.log = log
        self.state = state
        self.outage = _Outage(self.uri)
        self.bar = _Bar(sys.stderr, None)

    def on_event(self, event: FollowEvent) -> None:
        """Say what happened, once per outage (`_Outage`)."""
        if isinstance(event, ConnectedEvent):
            self.outage.back(again=event.again)
            if not event.again:
                self.state.span = (self.start, self.log.length)
                self.state.confirmed = True
                print(f"following {self.log.key.hex()} live (Ctrl-C to stop)", file=sys.stderr)
        elif isinstance(event, DialFailedEvent):
            self.outage.lost(f"hyperlog: {_connect_failure(self.uri, event.error)}")
        elif isinstance(event, LostEvent):
            ended = _ended(event.error)
            if not self.state.confirmed:
                # Nothing of the log came, ever: maybe no hyperlog server at all.
                message = f"{self.uri}: {ended} before serving the log (is it a `hyperlog serve`?)"
            else:
                message = f"{self.uri}: {ended}; {_held(self.log)}"
            self.outage.lost(f"hyperlog: {message}")
        elif isinstance(event, SteadyEvent):
            self.outage.steady()

    def progress(self, total: Progress) -> None:
        """The download's progress, over every connection."""
        self.state.fetched = total.blocks
        self.state.progress = total
        self.bar(total)

    def fatal(self, exc: FollowError) -> BaseException:
        """What to raise for a follower that stopped: one line naming the URI, why, and
        what is held once the log was served (or a dial's own error, as it is)."""
        error = exc.error
        if exc.why == "dial":
            from pinecone_trio.errors import PineconeError

            if isinstance(error, OSError | PineconeError):
                return ReplicationError(_dial_failure(self.uri, error))
            return error if error is not None else exc
        held = _held(self.log)
        if exc.why == "refused":  # (the policy's words: "the peer does not serve this log")
            # Never served by this URI: most likely a mistyped KEY (or the discovery key).
            held = f"; {held}" if exc.served_before else f"; {KEY_HINT}"
            return ReplicationError(f"{self.uri}: {exc}{held}")
        ended = _ended(error)
        if exc.why == "unanswered":  # (never served by it: it left the log unanswered)
            return ReplicationError(f"{self.uri}: {ended}; is it a `hyperlog serve`?")
        if not exc.served_before:
            # Nothing of the log came, ever: maybe no hyperlog server at all.
            message = f"{self.uri}: {ended} before serving the log; is it a `hyperlog serve`?"
            return ReplicationError(message)
        if exc.diverged:  # (a server restored from an older copy and appended to)
            ended = f"the server's log does not extend the copy held here ({error})"
        return ReplicationError(f"{self.uri}: {ended}; {held}")


async def _follow_live(args: argparse.Namespace, log: Log, state: _CloneState) -> NoReturn:
    """`clone --live`: follow the writer until stopped, through lost connections.

    When the connection ends or cannot be made, it says so once on stderr and dials
    again after a backoff (the follower's: from `FOLLOW_RETRY_FIRST` doubling to
    `FOLLOW_RETRY_CAP`, reset once a connection has served the log for `LIVE_STEADY`),
    says when it is connected again, and resumes from what the store holds
    (replication is sparse: the next download fetches only what is missing). A path
    that keeps dropping is said once (`_Outage`).

    Transient, retried: a failed dial (connection refused or reset, timed out, no
    route to host, a name not resolved: `_transient_dial`), a handshake cut off or
    timed out, and a connection that ends or breaks once up, or before the peer
    served anything (the peer closed it, a reset, EOF, the link broken, a keepalive
    timeout: the follower's `transient_end`); and, once this URI has served the log, a link that
    stalls right after its handshake (no hello within `HELLO_TIMEOUT`, the log's
    channel neither opened nor refused within `OPEN_TIMEOUT`).

    Fatal, one line and exit status 1 (or what a local error gives): the peer refuses
    the log (a server for another key; never served by this URI, one that does not
    answer for it either); it fails the link handshake (not our protocol); it is
    dropped for sending an invalid proof or signature, garbage or breaking the
    protocol, or, never served by this URI, for no hello; a fork conflict; and
    anything local (the store's errors, a bad URI, which `_cmd_clone` checks first)
    propagates as it is.
    Ctrl-C and SIGTERM stop it at any point (130, 143), saying what was kept.

    Raises:
        ReplicationError: a fatal error, as above.
        HyperlogError: a fork conflict, a storage error.
    """
    from pinecone_trio.identity import Identity
    from pinecone_trio.link.connect import connect_link

    following = _Following(args, log, state)
    stopped: FollowError | None = None
    # A ws:// connection's reader task runs here; it ends with its connection.
    async with trio.open_nursery() as transports:

        async def dial() -> NoiseLink:
            # (The follower sets LIVE_KEEPALIVE on the TCP connection under the link.)
            return await connect_link(args.connect, Identity.generate(), nursery=transports)

        follower = Follower(
            log,
            dial,
            start=following.start,
            on_event=following.on_event,
            progress=following.progress,
            retry_dial=_retry_dial,
            keepalive=LIVE_KEEPALIVE,
        )
        try:
            await follower.run()
        except FollowError as exc:
            stopped = exc
    if stopped is None:  # (run returns only by raising)
        raise AssertionError("the follower stopped without a FollowError")
    failure = following.fatal(stopped)
    if failure is stopped.error:
        raise failure  # a failed dial's own error, as it was raised (not ours to word)
    raise failure from stopped.error
