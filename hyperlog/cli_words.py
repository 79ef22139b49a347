"""The network commands' failures in a user's words: a URI checked before anything
starts, a failed dial with the operating system's reason, why a replication session
ended, what a clone holds (used by `cli_serve`, `cli_clone` and `cli_live`); and, for
every command, a store folder that is a file, and counts in words ("1 block")."""

from __future__ import annotations

import contextlib
import os
import socket

import trio

from .errors import HyperlogError
from .follow_policy import UnansweredError as _Unanswered
from .follow_policy import _causes
from .follow_policy import hello_timed_out as _hello_timed_out
from .log import Log
from .replication.constants import HELLO_TIMEOUT

#: What a refused clone adds: a mistyped KEY, or the discovery key `info` prints too.
KEY_HINT = "check KEY: `hyperlog info` on the server prints the log's key (not its discovery key)"


def _count(n: int, word: str) -> str:
    """`n` and `word`, plural unless `n` is 1: "1 block", "2 blocks", "0 blocks"."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _check_store_dir(path: str) -> None:
    """Refuse a store folder DIR that is a file, or lies under one, in words (the
    operating system's were "[Errno 20] Not a directory: 'afile/hyperlog.sqlite3'";
    `create` said "[Errno 17] File exists", the others "no hyperlog store").

    Raises:
        HyperlogError: `path`, or the nearest of its parents that exists, is not a
            directory.
    """
    given = here = os.path.normpath(path)
    # Bounded by the path's depth: every pass goes one folder up, or ends at the top.
    while here and not os.path.exists(here):
        parent = os.path.dirname(here)
        if parent == here:
            return
        here = parent
    if not here or os.path.isdir(here):
        return
    if here == given:
        raise HyperlogError(f"{path} is a file, not a directory (DIR is a store folder)")
    raise HyperlogError(f"{path}: {here} is a file, not a directory (DIR is a store folder)")


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


def _held(log: Log) -> str:
    return f"length {log.length}, {_count(log.statistics().blocks_held, 'block')} held"
