"""``hyperlog clone --live``: follow the writer through lost connections
(`_follow_live`): which failures are retried, the backoff, and the messages said once
per outage."""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

import trio

from .cli_clone_state import CLONE_UPDATE_TIMEOUT, _Bar, _CloneState
from .cli_keepalive import _keep_alive
from .cli_words import (
    _connect_failure,
    _dial_failure,
    _ended,
    _held,
    _hello_timed_out,
    _invalid_proof,
    _refused_upgrade,
    _Unanswered,
)
from .errors import ReplicationError
from .log import Log
from .replication import LogReplication, Progress, ReplicationSession, replicate
from .replication.constants import OPEN_TIMEOUT

if TYPE_CHECKING:
    from pinecone_trio.link.stream import NoiseLink

#: `clone --live` dials again about this long (seconds, jittered down to half) after
#: the connection was lost or could not be made ...
LIVE_RETRY_FIRST = 0.5
#: ... doubling with every failed attempt up to this (seconds): a server that comes
#: back is found within about this long, and an absent one costs a dial per half minute.
LIVE_RETRY_CAP = 30.0
#: Seconds a connection must stay up, serving the log, before the backoff starts from
#: `LIVE_RETRY_FIRST` again: a path that drops every connection right after it serves
#: used to be redialled every ~1.5 s for ever (the backoff was reset once served).
LIVE_STEADY = 10.0


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


def _retry_delay(failures: int, rng: random.Random | None = None) -> float:
    """Seconds before the next dial after `failures` failed ones since a connection
    last held for `LIVE_STEADY`: about `LIVE_RETRY_FIRST`, doubling up to
    `LIVE_RETRY_CAP`, drawn from [d/2, d] so clones that lost the same server do not
    all redial it at once (the static peers' `backoff_delay`, with these figures)."""
    from pinecone_trio.backoff import backoff_delay

    return backoff_delay(failures, rng, base=LIVE_RETRY_FIRST, cap=LIVE_RETRY_CAP)


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


def _transient_end(error: BaseException | None, *, served_before: bool = False) -> bool:
    """Whether a session ended in a way a new connection may mend: the peer closed it
    (`None`: a server stopped or restarted) or the stream broke (reset, EOF inside a
    frame, keepalive timeout); and, from a server that served the log before
    (`served_before`), no hello or no answer for the log in time (a link that stalled
    right after its handshake: lossy Wi-Fi, a paused server). A peer dropped for
    breaking the protocol, sending an invalid proof or a fork conflict is not: it
    would do it again; nor is one that never served the log and sends no hello (it
    may be no hyperlog server at all)."""
    if error is None or isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError):
        return True
    return served_before and (isinstance(error, _Unanswered) or _hello_timed_out(error))


class _Following:
    """A live clone's state across its connections."""

    def __init__(self, args: argparse.Namespace, log: Log, state: _CloneState) -> None:
        self.uri: str = args.connect
        self.start: int = args.sparse[0] if args.sparse else 0
        self.log = log
        self.state = state
        self.outage = _Outage(self.uri)
        self.bar = _Bar(sys.stderr, None)
        self.served = False  # the last connection served the log
        self.failures = 0  # failed dials or connections since one last held (`steady`)
        self.bytes = 0  # bytes fetched so far, over every connection

    def confirm(self, session: ReplicationSession, rep: LogReplication) -> _Unanswered | None:
        """Check the peer serves the log (after `rep.update`), and say so if it is back.

        Returns:
            why to drop this connection and dial again: a server that served the log
            before left the log's channel unanswered (a stalled link), or None.

        Raises:
            ReplicationError: the peer does not serve this log (it refused it: a
                server for another key; or, never served by it, it did not answer).
        """
        if session.closed.is_set():
            return None  # (the caller looks at why)
        if rep.peers == 0:
            held = f"; {_held(self.log)}" if self.state.confirmed else ""
            if self.log.discovery_key in session.engine.rejected:
                raise ReplicationError(f"{self.uri}: the peer does not serve this log{held}")
            unanswered = f"the peer did not answer for the log within {OPEN_TIMEOUT:g} s"
            if self.state.confirmed:  # it served the log before: the link stalled
                return _Unanswered(unanswered)
            raise ReplicationError(f"{self.uri}: {unanswered}; is it a `hyperlog serve`?")
        self.served = True
        self.outage.back(again=self.state.confirmed)
        if not self.state.confirmed:
            self.state.span = (self.start, self.log.length)
            self.state.confirmed = True
            print(f"following {self.log.key.hex()} live (Ctrl-C to stop)", file=sys.stderr)
        return None

    def progress(self, base: int) -> Callable[[Progress], None]:
        """The progress callback of one connection's download (counts from `base`)."""
        bytes_before = self.bytes

        def progress(p: Progress) -> None:
            total = Progress(base + p.blocks, bytes_before + p.bytes, p.missing)
            self.state.fetched = total.blocks
            self.state.progress = total
            self.bytes = total.bytes
            self.bar(total)

        return progress

    def ended(self, error: BaseException | None) -> None:
        """The connection ended: say so (once), or raise if retrying cannot mend it.

        Raises:
            ReplicationError: the session ended for a reason that is not transient.
        """
        ended = _ended(error)
        if not self.served and not self.state.confirmed:
            # Nothing of the log came, ever: maybe no hyperlog server at all.
            message = f"{self.uri}: {ended} before serving the log; is it a `hyperlog serve`?"
            if not _transient_end(error):
                raise ReplicationError(message)
            message = f"{self.uri}: {ended} before serving the log (is it a `hyperlog serve`?)"
        else:
            if not _transient_end(error, served_before=True):
                if error is not None and _invalid_proof(error):
                    # This URI served the log before, so its history changed: a server
                    # restored from an older copy and appended to since (or damaged).
                    ended = f"the server's log does not extend the copy held here ({error})"
                raise ReplicationError(f"{self.uri}: {ended}; {_held(self.log)}")
            message = f"{self.uri}: {ended}; {_held(self.log)}"
        self.failed(f"hyperlog: {message}")

    def failed(self, message: str) -> None:
        """Say (once per outage) that the connection is lost and is being retried."""
        self.outage.lost(message)

    async def hold(self) -> None:
        """Once the connection has served for `LIVE_STEADY` seconds, start the backoff
        from the beginning again (run beside the download; cancelled with it)."""
        await trio.sleep(LIVE_STEADY)
        self.failures = 0
        self.outage.steady()


async def _follow_live(
    args: argparse.Namespace, log: Log, rep: LogReplication, state: _CloneState
) -> NoReturn:
    """`clone --live`: follow the writer until stopped, through lost connections.

    When the connection ends or cannot be made, it says so once on stderr and dials
    again after a backoff (`_retry_delay`: from `LIVE_RETRY_FIRST` doubling to
    `LIVE_RETRY_CAP`, reset once a connection has served the log for `LIVE_STEADY`),
    says when it is connected again, and resumes from what the store holds
    (replication is sparse: the next download fetches only what is missing). A path
    that keeps dropping is said once (`_Outage`).

    Transient, retried: a failed dial (connection refused or reset, timed out, no
    route to host, a name not resolved: `_transient_dial`), a handshake cut off or
    timed out, and a connection that ends or breaks once up, or before the peer
    served anything (the peer closed it, a reset, EOF, the link broken, a keepalive
    timeout: `_transient_end`); and, once this URI has served the log, a link that
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
    from pinecone_trio.errors import PineconeError
    from pinecone_trio.identity import Identity
    from pinecone_trio.link.connect import connect_link

    following = _Following(args, log, state)
    # Not bounded on purpose: --live follows until Ctrl-C, SIGTERM or a fatal error;
    # each pass dials once and then waits at least LIVE_RETRY_FIRST / 2 seconds.
    while True:
        following.served = False
        # A ws:// connection's reader task runs here; it ends with the connection.
        async with trio.open_nursery() as transport_nursery:
            try:
                link = await connect_link(
                    args.connect, Identity.generate(), nursery=transport_nursery
                )
            except (OSError, PineconeError) as exc:
                if not _transient_dial(exc, served_before=state.confirmed):
                    raise ReplicationError(_dial_failure(args.connect, exc)) from exc
                following.failed(f"hyperlog: {_connect_failure(args.connect, exc)}")
            else:
                _keep_alive(link.transport_stream)
                error = await _follow_link(link, log, rep, following)
                following.ended(error)
            transport_nursery.cancel_scope.cancel()
        await trio.sleep(_retry_delay(following.failures))
        following.failures += 1


async def _follow_link(
    link: NoiseLink, log: Log, rep: LogReplication, following: _Following
) -> BaseException | None:
    """Follow the log over one connection until it ends; returns why it ended
    (`session.error`).

    Raises:
        ReplicationError: the peer does not serve this log.
        HyperlogError: a fork conflict (the download stops on it), a storage error.
    """
    async with link, replicate(link, log) as session, trio.open_nursery() as nursery:

        async def watch() -> None:
            await session.wait_closed()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await rep.update(timeout=CLONE_UPDATE_TIMEOUT)
        unanswered = following.confirm(session, rep)
        if unanswered is not None:
            nursery.cancel_scope.cancel()  # (the watch task; leaving closes the link)
            return unanswered
        nursery.start_soon(following.hold)
        progress = following.progress(following.state.fetched)
        await rep.download(following.start, None, progress=progress)  # ends with the link
    return session.error
