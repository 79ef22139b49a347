"""``hyperlog clone``: fetch a log by key into a store folder, verifying everything,
and remove what it made when it fails before the peer confirmed the log; ``--live``
hands over to `cli_live`."""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ._groups import single_failure
from .cli_clone_state import CLONE_UPDATE_TIMEOUT, _Bar, _CloneState
from .cli_live import _follow_live
from .cli_words import KEY_HINT, _check_uri, _connect_failure, _count, _ended, _held
from .errors import HyperlogError, ReplicationError
from .log import Log, open_store
from .replication import LogReplication, Progress, ReplicationSession, replicate, replication_for
from .storage_sqlite import DB_FILENAME, LOCK_FILENAME

if TYPE_CHECKING:
    from pinecone_trio.link.stream import NoiseLink

#: A clone (not --live) that gets no block for this long stops and says why (the peer
#: may hold only part of the log); `--stall-timeout` changes it.
CLONE_STALL_TIMEOUT = 15.0


def _check_alive(session: ReplicationSession, uri: str, *, served: bool) -> None:
    if not session.closed.is_set():
        return
    ended = _ended(session.error)
    if not served:
        # Nothing of the log came before the end: the peer is probably no hyperlog
        # server (a pinecone-trio node, another service on that port).
        raise ReplicationError(f"{uri}: {ended} before serving the log; is it a `hyperlog serve`?")
    raise ReplicationError(f"{uri}: {ended}")


async def _cmd_clone(args: argparse.Namespace) -> int:
    _check_uri("--connect", args.connect)  # before the store folder is made
    # Report the one real failure as one line (the command's contract), not a group.
    try:
        return await _clone(args)
    except BaseExceptionGroup as group:
        single = single_failure(group)
        if single is None:
            raise
        raise single from None


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
            print(state.stopped(), file=sys.stderr)
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
            f"--sparse {start}:{end}: the log has {_count(length, 'block')}, "
            f"none of {start}..{end - 1}"
        )
    print(
        f"hyperlog: warning: the log has {_count(length, 'block')}: "
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
        try:
            await _clone_log(args, log, state)
        except BaseException:
            _note_stop(args, log, state)  # (the store is still open here)
            raise
    return 0


def _note_stop(args: argparse.Namespace, log: Log, state: _CloneState) -> None:
    """Note what the copy holds of what it was to fetch as the clone ends early, for
    `_CloneState.stopped` (a live clone: up to the length the server last signed)."""
    if not state.confirmed:
        return
    start, end = state.span
    if args.live:
        end = log.length
    state.stopped_span = (start, end)
    state.length = log.length
    state.complete = log.has_range(start, end)


async def _clone_log(args: argparse.Namespace, log: Log, state: _CloneState) -> None:
    """Fetch the log (or follow it, `--live`) into the open store."""
    rep = replication_for(log)
    if args.live:
        await _follow_live(args, log, state)  # returns only by raising
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
        raise HyperlogError(f"{args.connect}: the peer does not serve this log; {KEY_HINT}")
    start, end = args.sparse if args.sparse else (0, None)
    if end is None:  # (--sparse START:) to the log's end
        if start > log.length:
            raise HyperlogError(
                f"--sparse {start}: the log has {_count(log.length, 'block')}, none from {start} on"
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
