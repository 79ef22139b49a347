"""The ``hyperlog serve`` and ``hyperlog clone`` commands (replication over Noise links).

``serve DIR --listen tcp://HOST:PORT`` serves every log of the store folder DIR to
whoever connects and knows a log's key (capabilities prove it without sending it).
It prints one line, ``serving KEY on URI``, once it listens.

``clone KEY DIR --connect tcp://HOST:PORT [--live] [--sparse START:[END]]`` fetches
the log KEY into the store folder DIR (created if needed), verifying every block and
the signed head; ``--sparse`` fetches only blocks START..END-1 (``START:`` to the end;
with ``--live`` only that form, following from START), ``--live`` keeps following
the writer until interrupted, dialling again whenever the connection is lost or cannot
be made (`_follow_live` says which errors it retries). A progress bar goes to stderr
when it is a terminal.
Both commands take ``ws://HOST:PORT/PATH`` URIs too (the link over a WebSocket).

Links are `pinecone_trio`'s Noise links (``connect_link`` / ``serve_links``). This is
the only hyperlog module that imports `pinecone_trio`, lazily inside the commands, so
the library itself never depends on it. `hyperlog.cli` registers `add_net_commands`
in its ``COMMAND_GROUPS`` (``python -m hyperlog.cli_net`` works too).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import shutil
import socket
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NoReturn, TextIO

import trio

from .constants import CLI_LINES_PER_BATCH, MAX_BLOCK_SIZE
from .errors import HyperlogError, InvalidProofError, ReplicationError
from .log import Log, Store, open_store
from .replication import (
    LogReplication,
    Progress,
    ReplicationSession,
    replicate,
    replication_for,
)
from .replication.constants import HELLO_TIMEOUT, OPEN_TIMEOUT
from .storage_sqlite import DB_FILENAME, LOCK_FILENAME

if TYPE_CHECKING:
    from pinecone_trio.link.stream import NoiseLink

__all__ = ["add_net_commands"]

#: Seconds `clone` waits for the peer's signed head before giving up.
CLONE_UPDATE_TIMEOUT = 30.0
#: Redraw the progress bar at most this often (seconds).
PROGRESS_INTERVAL = 0.1
#: A clone (not --live) that gets no block for this long stops and says why (the peer
#: may hold only part of the log); `--stall-timeout` changes it.
CLONE_STALL_TIMEOUT = 15.0
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
#: Seconds a live clone's TCP connection may be idle before the kernel probes the peer,
#: the seconds between probes, and the unanswered probes that break the connection: a
#: vanished peer (Wi-Fi gone, no reset) is noticed within about 30 s.
LIVE_KEEPALIVE_IDLE = 15
LIVE_KEEPALIVE_INTERVAL = 5
LIVE_KEEPALIVE_COUNT = 3
#: Seconds data a live clone sent may stay unacknowledged before the kernel breaks its
#: connection (TCP_USER_TIMEOUT, Linux only): keepalive never probes while something
#: is unacknowledged, and a downloading clone soon has something (the Cancel of a
#: request unanswered for REQUEST_TIMEOUT), so a server vanishing mid-download went
#: unnoticed for the system's ~15 minutes of retransmissions.
LIVE_USER_TIMEOUT = 30


def _parse_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("KEY must be hexadecimal") from None
    if len(key) != 32:
        raise argparse.ArgumentTypeError("KEY must be 32 bytes (64 hex digits)")
    return key


def _parse_span(text: str) -> tuple[int, int | None]:
    """`--sparse START:END`, or `START:` (END None: to the log's end, or live)."""
    start, sep, end = text.partition(":")
    try:
        a, b = int(start), (int(end) if end else None)
    except ValueError:
        raise argparse.ArgumentTypeError("--sparse takes START:END or START: (integers)") from None
    if not sep or a < 0 or (b is not None and b < a):
        raise argparse.ArgumentTypeError("--sparse takes START:END with 0 <= START <= END")
    return a, b


def _check_clone_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options `clone` cannot honour together (a usage error, exit status 2).

    A live clone follows the log without end: it used to ignore the END of
    `--sparse START:END` silently.
    """
    if args.live and args.sparse is not None and args.sparse[1] is not None:
        start, end = args.sparse
        parser.error(
            f"--sparse {start}:{end} with --live: a live clone follows the log without "
            f"end; use --sparse {start}: to follow it from block {start}"
        )


# --- serve -----------------------------------------------------------------------------


async def _cmd_serve(args: argparse.Namespace) -> int:
    from pinecone_trio.errors import PineconeError
    from pinecone_trio.identity import Identity
    from pinecone_trio.link.connect import serve_links

    _check_uri("--listen", args.listen)
    try:
        identity = Identity.load_or_create(args.identity) if args.identity else Identity.generate()
    except PineconeError as exc:
        raise HyperlogError(f"--identity {args.identity}: {exc}") from exc
    async with open_store(args.dir, create=False) as store:
        if not store.keys():
            raise HyperlogError(f"{args.dir} holds no log to serve")
        first = await store.default_log()
        source = None
        if args.append_lines is not None:
            if not first.writable:
                raise HyperlogError(f"--append-lines: the log in {args.dir} is not writable")
            source = _open_lines_source(args.append_lines)  # a bad FILE: before listening

        async def handler(link: NoiseLink) -> None:
            async with replicate(link, store) as session:  # serve everything it has
                await session.wait_closed()

        async with trio.open_nursery() as nursery:
            try:
                bound = await nursery.start(serve_links, args.listen, identity, handler)
            except OSError as exc:
                raise HyperlogError(_naming(args.listen, _reason(exc))) from exc
            except PineconeError as exc:
                raise HyperlogError(f"cannot listen on {args.listen}: {exc}") from exc
            print(f"serving {first.key.hex()} on {bound}", flush=True)
            if source is not None:
                nursery.start_soon(_append_lines_while_serving, store, first, source)
    return 0


def _open_lines_source(path: str) -> int:
    """The file descriptor `--append-lines` reads ('-': standard input)."""
    if path == "-":
        return sys.stdin.fileno()
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise HyperlogError(f"--append-lines {path}: {_reason(exc)}") from None


async def _append_lines_while_serving(store: Store, log: Log, fd: int) -> None:
    """Append each line read from `fd` as one block as soon as it is read, so readers
    following the log (`clone --live`) get it at once. The lines one read returns (up to
    64 KiB) are appended together, in batches of up to `CLI_LINES_PER_BATCH`: one
    commit per batch, not per line (measured with a live clone following: 4,100-7,400
    lines/s before, 104,000-130,000 after). When the input ends, or a line is too long
    to be a block, the log is still served (a message says how many lines were
    appended; the lines before the long one are kept).

    The descriptor is read with `os.read` in a thread, not through Python's buffered
    file: a read blocked on a terminal or a pipe holds no lock, so Ctrl-C abandons it
    and the process exits as the other commands do (a buffered `stdin` held its lock and
    aborted the interpreter at shutdown).
    """
    from .cli import CAT_FORMAT_META, _append_all

    count = 0
    pending = b""
    why = ""

    async def append(lines: list[bytes]) -> None:
        """Append `lines` (the ones before a line too long to be a block, which stops)."""
        nonlocal count, why
        fit = next((k for k, line in enumerate(lines) if len(line) > MAX_BLOCK_SIZE), None)
        if fit is not None:
            why = f"a line longer than {MAX_BLOCK_SIZE} bytes cannot be one block: stopped"
            lines = lines[:fit]
        if not lines:
            return
        first = not count
        count += await _append_all(log, iter(lines), CLI_LINES_PER_BATCH)
        if first:
            store.storage.set_meta(CAT_FORMAT_META, b"lines")

    # Bounded by the input: each pass reads some bytes or ends.
    while not why and (
        data := await trio.to_thread.run_sync(os.read, fd, 65536, abandon_on_cancel=True)
    ):
        pending += data
        *lines, pending = pending.split(b"\n")
        await append(lines)
        if not why and len(pending) > MAX_BLOCK_SIZE:
            await append([pending])  # says why
    if not why:
        if pending:  # a last line without its newline
            await append([pending])
        why = why or "input ended"
    if fd != sys.stdin.fileno():
        os.close(fd)
    print(
        f"hyperlog: --append-lines: {why} after {count} lines, length {log.length}; still serving",
        file=sys.stderr,
        flush=True,
    )


# --- clone -----------------------------------------------------------------------------


class _Bar:
    """A one-line progress bar on a terminal (nothing otherwise).

    `total` is the number of blocks to fetch, or None for a live clone, whose total is
    not known (the writer may append at any time): that shows counts, no percentage.
    """

    def __init__(self, out: TextIO, total: int | None) -> None:
        self.out = out
        self.total = total
        self.enabled = out.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, p: Progress, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < PROGRESS_INTERVAL):
            return
        self.last = now
        rate = p.bytes / max(now - self.t0, 1e-9) / 1e6
        amount = f"{p.bytes / 1e6:.1f} MB {rate:.1f} MB/s"
        if self.total is None:
            behind = f"{p.missing} to go" if p.missing else "up to date"
            line = f"live: {p.blocks} blocks fetched, {behind}, {amount}"
        elif self.total == 0:
            line = "nothing to fetch: every block asked for is already here"
        else:
            done = max(0, self.total - p.missing)
            frac = done / self.total
            width = 30
            fill = math.floor(frac * width)
            line = (
                f"[{'#' * fill}{'.' * (width - fill)}] {100 * frac:5.1f}% "
                f"{done}/{self.total} blocks {amount}"
            )
        self.out.write(f"\r{line}\x1b[K")  # erase what a longer previous line left
        if final:
            self.out.write("\n")
        self.out.flush()


def _reason(exc: BaseException) -> str:
    """An error's message without Python's spelling (`[Errno 111] ...`)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _check_uri(option: str, uri: str) -> None:
    """Refuse a URI the commands cannot use, saying which option gave it (worded as
    `pinecone-trio` words it).

    memory:// links exist only inside one Python process (they are for tests): a
    `serve` on one was reachable from no other process, yet said it was serving.

    Raises:
        HyperlogError: `uri` is not a usable tcp:// or ws:// URI.
    """
    from pinecone_trio.transports.base import check_process_uri

    try:
        check_process_uri(option, uri)
    except ValueError as exc:
        message = str(exc)
        raise HyperlogError(
            message if message.startswith(option) else f"{option}: {message}"
        ) from None


def _naming(uri: str, message: str) -> str:
    """`message` about `uri`, prefixed with the URI unless it names it already (the
    transports' errors do: a ws:// error used to show the URI twice)."""
    from pinecone_trio.transports.base import parse_uri

    names = {uri, uri.rstrip("/")}
    with contextlib.suppress(ValueError):
        names.add(str(parse_uri(uri)))
    if any(name and name in message for name in names):
        return message
    return f"{uri}: {message}"


def _os_reasons(exc: BaseException) -> list[str]:
    """The operating system's reasons inside `exc`: its own errno, then those of the
    errors it was raised from, groups opened (`trio.open_tcp_stream` says only "all
    attempts to connect to HOST:PORT failed" and puts each attempt's error, "Connection
    refused", "No route to host", in a group as its cause). Distinct, in order."""
    found: list[str] = []
    for e in _causes(exc):
        if isinstance(e, socket.gaierror):
            # A resolver's error number is no errno: os.strerror(-3) is "Unknown error
            # -3" (and macOS's EAI_NONAME, 8, is ENOEXEC's number).
            text = _UNRESOLVED
        elif isinstance(e, OSError) and e.errno:
            text = os.strerror(e.errno)
        else:
            continue
        if text not in found:
            found.append(text)
    return found


#: `_os_reasons`' words for a host name that did not resolve.
_UNRESOLVED = "the name did not resolve"


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc`, then the errors it was raised from, groups opened, in order (at most 64:
    a chain of causes is short)."""
    found: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack and len(found) < 64:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(reversed(e.exceptions))
        else:
            found.append(e)
        if e.__cause__ is not None:
            stack.append(e.__cause__)
    return found


def _refused_upgrade(exc: BaseException) -> int | None:
    """The HTTP status of a WebSocket upgrade the server refused, if `exc` is that
    (the ws:// transport raises ConnectionRefusedError from trio-websocket's
    `ConnectionRejected`)."""
    from trio_websocket import ConnectionRejected

    for e in _causes(exc):
        if isinstance(e, ConnectionRejected):
            return e.status_code
    return None


def _connect_failure(uri: str, exc: BaseException) -> str:
    """One line for a failed dial: the URI, what failed, and the OS reason (connection
    refused, timed out, no route to host) when the error carries one."""
    message = _reason(exc)
    said = message.lower()
    reasons = [
        r
        for r in _os_reasons(exc)
        if r.lower() not in said and not (r == _UNRESOLVED and "resolv" in said)
    ]
    if reasons:
        message = f"{message} ({', '.join(reasons)})"
    return _naming(uri, message)


def _dial_failure(uri: str, exc: BaseException) -> str:
    """`_connect_failure`, asking to check the path when a WebSocket upgrade was
    refused with a 4xx status (the transport asks it for 404 already)."""
    message = _connect_failure(uri, exc)
    status = _refused_upgrade(exc)
    if status is not None and 400 <= status < 500 and "check the path" not in message:
        message += " (check the path)"
    return message


def _ended(error: BaseException | None) -> str:
    """Why a replication session ended, in a user's words (not the link's: "link
    broken: the stream ended inside a frame (38164 bytes left)")."""
    if error is None:
        return "the peer closed the connection"
    if isinstance(error, _Unanswered):
        return str(error)
    if _hello_timed_out(error):
        return f"the peer sent nothing for {HELLO_TIMEOUT:g} s once the link was up (no hello)"
    if isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError):
        # The stream died: the peer stopped (Ctrl-C, a crash) or the network failed.
        reasons = _os_reasons(error)
        detail = reasons[0].lower() if reasons else "the connection broke off"
        return f"the peer went away ({detail})"
    return f"the peer was dropped ({error})"  # it broke the protocol, sent a bad proof


def _check_alive(session: ReplicationSession, uri: str, *, served: bool) -> None:
    if not session.closed.is_set():
        return
    ended = _ended(session.error)
    if not served:
        # Nothing of the log came before the end: the peer is probably no hyperlog
        # server (a pinecone-trio node, another service on that port).
        raise ReplicationError(f"{uri}: {ended} before serving the log; is it a `hyperlog serve`?")
    raise ReplicationError(f"{uri}: {ended}")


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one non-cancellation error inside nested groups, if there is exactly one."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack and len(leaves) < 2:
        exc = stack.pop()
        if isinstance(exc, BaseExceptionGroup):
            stack.extend(exc.exceptions)
        elif not isinstance(exc, trio.Cancelled):
            leaves.append(exc)
    return leaves[0] if len(leaves) == 1 else None


async def _cmd_clone(args: argparse.Namespace) -> int:
    _check_uri("--connect", args.connect)  # before the store folder is made
    # Report the one real failure as one line (the command's contract), not a group.
    try:
        return await _clone(args)
    except BaseExceptionGroup as group:
        single = _single(group)
        if single is None:
            raise
        raise single from None


class _CloneState:
    """What `_clone` must know when the clone ends early."""

    def __init__(self) -> None:
        self.confirmed = False  # the peer said it serves the log: keep what comes
        self.fresh = False  # the store held no log before this clone
        self.fetched = 0  # blocks this run fetched (and kept)
        self.span = (0, 0)  # the blocks to fetch, [start, end) (set when confirmed)
        self.progress: Progress | None = None  # the download's last progress


async def _clone(args: argparse.Namespace) -> int:
    # What this command created is removed again if the clone fails before the peer
    # confirmed the log (a mistyped key, a peer that is not there): a store holding an
    # empty log for the wrong key would hide a later clone into the folder.
    created = _missing_dirs(args.dir)
    had_store = _has_store(args.dir)
    state = _CloneState()
    try:
        return await _clone_into(args, state)
    except BaseException as exc:
        # Ctrl-C, or SIGTERM (hyperlog.cli cancels us): often inside a group, as the
        # clone's nurseries deliver it.
        stopped = (KeyboardInterrupt, trio.Cancelled)
        if state.confirmed and (
            isinstance(exc, stopped)
            or (isinstance(exc, BaseExceptionGroup) and exc.subgroup(stopped) is not None)
        ):
            print(
                f"hyperlog: stopped after fetching {state.fetched} blocks (kept: run the "
                "same clone again to resume)",
                file=sys.stderr,
            )
        raise
    finally:
        if not state.confirmed:
            if created:
                _remove_store(created[-1])  # the outermost folder this clone made
            elif state.fresh or not had_store:
                _remove_store_files(args.dir)


def _sparse_end(start: int, end: int, length: int) -> int:
    """The end of what `clone --sparse START:END` fetches, cut to the log, warning if cut.

    Raises:
        HyperlogError: nothing of a non-empty range exists (START at or past the end).
    """
    if end <= length:
        return end
    if start >= length:
        raise HyperlogError(
            f"--sparse {start}:{end}: the log has {length} blocks, none of {start}..{end - 1}"
        )
    print(
        f"hyperlog: warning: the log has {length} blocks: "
        f"fetching {start}..{length - 1} of {start}..{end - 1}",
        file=sys.stderr,
    )
    return length


def _missing_dirs(path: str) -> list[str]:
    """The folders a store at `path` would create, innermost first."""
    missing: list[str] = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


def _has_store(folder: str) -> bool:
    return os.path.exists(os.path.join(folder, DB_FILENAME))


def _remove_store(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


def _remove_store_files(folder: str) -> None:
    """Remove a store's files from a folder the user made (and keep the folder)."""
    for name in (DB_FILENAME, f"{DB_FILENAME}-wal", f"{DB_FILENAME}-shm", LOCK_FILENAME):
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(folder, name))


async def _clone_into(args: argparse.Namespace, state: _CloneState) -> int:
    async with open_store(args.dir) as store:
        held_keys = store.keys()
        state.fresh = not held_keys
        if held_keys and args.key not in held_keys:
            # The commands work on a store's first log: a second one would be invisible.
            raise HyperlogError(
                f"{args.dir} already holds the log {held_keys[0].hex()}: "
                "clone into a new or empty folder"
            )
        log = await store.open_log(args.key)
        rep = replication_for(log)
        if args.live:
            await _follow_live(args, log, rep, state)  # returns only by raising
        # The transport nursery runs a ws:// connection's reader task; it outlives the link.
        async with trio.open_nursery() as transport_nursery:
            link = await _dial(args.connect, transport_nursery)
            async with link, replicate(link, log) as session, trio.open_nursery() as nursery:
                # Watch the session: a dead connection ends the clone with its reason.
                async def watch() -> None:
                    await session.wait_closed()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(watch)
                await _confirm(args, rep, log, session, state)
                await _fetch(args, rep, log, state)
                nursery.cancel_scope.cancel()
            print(_outcome(args, log, session, state))
    return 0


async def _dial(uri: str, nursery: trio.Nursery) -> NoiseLink:
    """A Noise link to `uri` (a fresh identity: the server does not need to know us).

    Raises:
        ReplicationError: the dial or the link handshake failed; one line naming the
            URI and the reason, with the original error as its cause.
    """
    from pinecone_trio.errors import PineconeError
    from pinecone_trio.identity import Identity
    from pinecone_trio.link.connect import connect_link

    try:
        return await connect_link(uri, Identity.generate(), nursery=nursery)
    except (OSError, PineconeError) as exc:
        raise ReplicationError(_connect_failure(uri, exc)) from exc


async def _confirm(
    args: argparse.Namespace,
    rep: LogReplication,
    log: Log,
    session: ReplicationSession,
    state: _CloneState,
) -> None:
    """Wait for the peer's signed head, then settle the span to fetch: from here on,
    what is fetched is kept (a re-run resumes)."""
    await rep.update(timeout=CLONE_UPDATE_TIMEOUT)
    _check_alive(session, args.connect, served=rep.peers > 0)
    if rep.peers == 0:
        raise HyperlogError("the peer does not serve this log")
    start, end = args.sparse if args.sparse else (0, None)
    if end is None:  # (--sparse START:) to the log's end
        if start > log.length:
            raise HyperlogError(
                f"--sparse {start}: the log has {log.length} blocks, none from {start} on"
            )
        end = log.length
    state.span = (start, _sparse_end(start, end, log.length))
    state.confirmed = True


async def _fetch(
    args: argparse.Namespace, rep: LogReplication, log: Log, state: _CloneState
) -> None:
    """Download the span (a clone that is not --live)."""
    start, end = state.span

    def progress(p: Progress) -> None:
        state.fetched = p.blocks
        state.progress = p
        bar(p)

    bar = _Bar(sys.stderr, sum(1 for i in range(start, end) if not log.has(i)))
    p = await _download_or_stall(rep, start, end, progress, args.stall_timeout)
    state.progress = p
    bar(p, final=True)


def _held(log: Log) -> str:
    return f"length {log.length}, {log.statistics().blocks_held} blocks held"


def _outcome(
    args: argparse.Namespace, log: Log, session: ReplicationSession, state: _CloneState
) -> str:
    """The line a finished clone (not --live) prints.

    Raises:
        ReplicationError: the connection ended first: one line naming the URI and
            why (the peer closed it, went away, was dropped), and what is held. It used
            to be the link's words without the URI ("the connection ended (link
            broken: the stream ended inside a frame (38164 bytes left))").
    """
    ended = _ended(session.error)
    if not state.confirmed:  # it ended while we waited for the peer's head
        raise ReplicationError(
            f"{args.connect}: {ended} before serving the log; is it a `hyperlog serve`?"
        )
    start, end = state.span
    held = _held(log)
    if not log.has_range(start, end):
        raise ReplicationError(f"{args.connect}: {ended} before the download finished; {held}")
    p = state.progress or Progress(0, 0, 0)
    return f"cloned {log.key.hex()}: {held} ({p.blocks} fetched, {p.bytes} bytes)"


async def _download_or_stall(
    rep: LogReplication,
    start: int,
    end: int,
    progress: Callable[[Progress], None],
    stall_timeout: float,
) -> Progress:
    """`rep.download(start, end)`, stopped with an error once no block came for
    `stall_timeout` seconds (a peer holding only part of the log, or one that stopped
    answering): a plain download would wait for ever.

    Raises:
        ReplicationError: the download stalled; what arrived is kept.
    """
    last: Progress | None = None
    # The deadline moves on with every block that arrives.
    with trio.CancelScope(deadline=trio.current_time() + stall_timeout) as stall:

        def on_progress(p: Progress) -> None:
            nonlocal last
            last = p
            stall.deadline = trio.current_time() + stall_timeout
            progress(p)

        return await rep.download(start, end, progress=on_progress)
    missing = [i for i in range(start, end) if not rep.port.has(i)]
    offered = rep.offered(missing)
    got = 0 if last is None else last.blocks
    if last is not None:
        progress(last)
    raise ReplicationError(
        f"no block arrived for {stall_timeout:g} s: {len(missing)} of blocks "
        f"{start}..{end - 1} are missing and the peer offers {offered} of them "
        f"(it may hold only part of the log); {got} fetched and kept"
    )


# --- clone --live ------------------------------------------------------------------


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
    all redial it at once."""
    ceiling = min(LIVE_RETRY_CAP, LIVE_RETRY_FIRST * 2.0 ** min(failures, 32))
    return (rng or random).uniform(ceiling / 2, ceiling)


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


class _Unanswered(Exception):
    """The server neither opened nor refused the log's channel in time (why a live
    connection ended, as `session.error` says for the others)."""


def _invalid_proof(error: BaseException) -> bool:
    """Whether a session ended because the peer's proof did not verify against the
    blocks held here."""
    return any(isinstance(e, InvalidProofError) for e in _causes(error))


def _hello_timed_out(error: BaseException) -> bool:
    """Whether a session ended because the peer sent no hello in time (timed out, as
    opposed to a peer that sent something else: the driver chains the timeout)."""
    return isinstance(error, ReplicationError) and isinstance(error.__cause__, trio.TooSlowError)


def _keep_alive(stream: trio.abc.Stream) -> None:
    """Have the kernel probe an idle TCP connection, so a peer that vanished without a
    word (Wi-Fi gone, a laptop asleep) breaks it within about `LIVE_KEEPALIVE_IDLE` +
    `LIVE_KEEPALIVE_COUNT` x `LIVE_KEEPALIVE_INTERVAL` seconds: a live clone sends
    nothing while it waits for appends, so it would otherwise wait for ever. Where the
    system has TCP_USER_TIMEOUT (Linux), data left unacknowledged for
    `LIVE_USER_TIMEOUT` seconds breaks it too (a peer vanishing mid-download). `stream`
    is a link's transport stream: a tcp:// one, or a ws:// one, whose TCP connection
    gets the same options (it used to keep the system's defaults, and a clone over
    ws:// never noticed a vanished server)."""
    sock = _tcp_under(stream)
    if sock is None:
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, _keepalive_idle_option(), LIVE_KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), LIVE_KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), LIVE_KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), LIVE_USER_TIMEOUT * 1000),
    ]
    for level, name, value in options:
        if name is not None:
            with contextlib.suppress(OSError):  # best effort: the defaults still work
                sock.setsockopt(level, name, value)


def _keepalive_idle_option() -> int | None:
    """The option setting a connection's idle time before the first keepalive probe:
    TCP_KEEPIDLE (Linux, Windows, the BSDs), or TCP_KEEPALIVE on macOS, which names it
    so and has no TCP_KEEPIDLE (Python exposes it since 3.10). Without it a clone on a
    Mac probed only after the system's two hours."""
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE"):
        option = getattr(socket, name, None)
        if option is not None:
            return int(option)
    return None


def _tcp_under(stream: trio.abc.Stream) -> trio.SocketStream | None:
    """The TCP connection a link's transport stream runs over (None: not TCP)."""
    from pinecone_trio.transports.websocket import WebSocketStream

    if isinstance(stream, WebSocketStream):
        return stream.socket_stream
    return stream if isinstance(stream, trio.SocketStream) else None


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


# --- wiring ----------------------------------------------------------------------------


def add_net_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve`` and ``clone`` on the ``hyperlog`` command's subparsers."""
    p = subparsers.add_parser("serve", help="serve the store's logs over Noise links")
    p.add_argument("dir", metavar="DIR", help="store folder")
    p.add_argument(
        "--listen",
        required=True,
        metavar="URI",
        help="tcp://HOST:PORT or ws://HOST:PORT/PATH, e.g. tcp://127.0.0.1:7000 (port 0: any)",
    )
    p.add_argument("--identity", metavar="FILE", help="link key file (default: ephemeral)")
    p.add_argument(
        "--append-lines",
        metavar="FILE",
        help="while serving, append each line of FILE ('-' for stdin) as one block as it "
        "arrives: readers following with clone --live get it at once (serve holds the "
        "store, so `hyperlog append` cannot run beside it)",
    )
    p.set_defaults(run=_cmd_serve)

    p = subparsers.add_parser("clone", help="fetch a log by key from a serving peer")
    p.add_argument("key", metavar="KEY", type=_parse_key, help="the log key (hex)")
    p.add_argument("dir", metavar="DIR", help="store folder (created if needed)")
    p.add_argument(
        "--connect",
        required=True,
        metavar="URI",
        help="tcp://HOST:PORT or ws://HOST:PORT/PATH, e.g. tcp://127.0.0.1:7000",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="keep following the writer until Ctrl-C, reconnecting when the connection "
        "is lost or cannot be made (a server for another log, a bad proof: exit status 1)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=CLONE_STALL_TIMEOUT,
        metavar="SECONDS",
        help=(
            "without --live, stop with an error when no block arrives for this long "
            f"(default {CLONE_STALL_TIMEOUT:g})"
        ),
    )
    p.add_argument(
        "--sparse",
        type=_parse_span,
        metavar="START:[END]",
        help=(
            "fetch only blocks START..END-1 (START: to the log's end); an END past the "
            "log's length fetches what exists and warns, a START past it is an error "
            "(exit status 1). With --live only START: (follows from START)"
        ),
    )
    p.set_defaults(run=_cmd_clone, check=partial(_check_clone_args, p))


def main(argv: list[str] | None = None) -> int:
    """Run the ``hyperlog`` command with the network commands registered."""
    from . import cli, cli_net  # the canonical module (this file may run as __main__)

    if cli_net.add_net_commands not in cli.COMMAND_GROUPS:
        cli.COMMAND_GROUPS.append(cli_net.add_net_commands)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
