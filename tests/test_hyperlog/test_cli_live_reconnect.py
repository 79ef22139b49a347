"""`hyperlog clone --live` keeps following through lost connections (real processes).

Before: a live clone said the server went away and stopped when the connection ended
(a server restarted, a laptop asleep), or when it could not be made at all, so a user
following a log had to watch it and start it again. Now it says so once, dials again
with a backoff, says when it is back and resumes; what retrying cannot mend (a server
for another log) still ends it with one line and exit status 1.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from pathlib import Path

import trio
from trio_websocket import ConnectionRejected

from hyperlog import cli_live, cli_words
from hyperlog.cli_words import KEY_HINT
from hyperlog.crypto import key_pair
from hyperlog.log import open_store

from .test_cli_failures import (
    BOUND,
    CMD,
    _blocks_held,
    _live_clone_holding,
    _start_serve,
    _stderr_of,
    _store_with_log,
)
from .test_cli_serve_append import APPEND, _stderr_until


async def _append(directory: Path, *blocks: bytes) -> None:
    async with open_store(directory, create=False) as store:
        await (await store.default_log()).append(list(blocks))


async def _wait_held(directory: Path, blocks: int) -> None:
    """Until the clone writing into `directory` holds `blocks` blocks."""
    with trio.fail_after(BOUND):
        for _ in range(BOUND * 20):  # another process's store: poll it
            if await _blocks_held(directory) >= blocks:
                return
            await trio.sleep(0.05)


async def _interrupt(proc: trio.Process) -> tuple[int, bytes]:
    """Ctrl-C: its exit status and the rest of its stderr."""
    proc.send_signal(signal.SIGINT)
    return await _exit_of(proc)


async def _exit_of(proc: trio.Process) -> tuple[int, bytes]:
    """Its exit status and the rest of its stderr, once it ends by itself."""
    with trio.fail_after(BOUND):
        rest = await _stderr_of(proc)
        return await proc.wait(), rest


async def _crash(serve: trio.Process) -> None:
    """The server dies (SIGKILL: no goodbye)."""
    serve.kill()
    with trio.fail_after(BOUND):
        await serve.wait()


async def _kill(*procs: trio.Process | None) -> None:
    """Kill what still runs, wait for it and close its pipes (the tests' `finally`)."""
    with trio.CancelScope(shield=True), trio.fail_after(BOUND):
        for proc in procs:
            if proc is None:
                continue
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    await pipe.aclose()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_a_live_clone_follows_a_server_that_restarts(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=3)
    serve, uri = await _start_serve(tmp_path / "w")
    clone = again = None
    try:
        clone = await _live_clone_holding(key, tmp_path / "r", uri, 3)
        await _crash(serve)
        err = await _stderr_until(clone, b"retrying")
        await _append(tmp_path / "w", b"while it was down", b"and more")
        # Back on the same port, with more blocks, appending what it reads.
        again, _ = await _start_serve(tmp_path / "w", uri, *APPEND, stdin=True)
        await _wait_held(tmp_path / "r", 5)  # resumed: the blocks appended meanwhile
        err += await _stderr_until(clone, b"connected again")
        assert again.stdin is not None
        await again.stdin.send_all(b"after the restart\n")
        await _wait_held(tmp_path / "r", 6)  # and it follows live again
        code, rest = await _interrupt(clone)
    finally:
        await _kill(serve, clone, again)
    err += rest
    assert code == 130, err
    lines = err.decode().splitlines()
    # Said once (not once per dial), naming the URI, why, and what is held.
    lost = [line for line in lines if "retrying" in line]
    assert lost == [
        f"hyperlog: {uri}: the peer went away (the connection broke off); "
        "length 3, 3 blocks held; retrying (Ctrl-C to stop)"
    ], err
    assert sum("connected again after" in line for line in lines) == 1, err
    assert "stopped after fetching 6 blocks" in lines[-2], err
    with trio.fail_after(BOUND):
        cat = await trio.run_process([*CMD, "cat", str(tmp_path / "r")], capture_stdout=True)
    assert cat.stdout.splitlines()[3:] == [b"while it was down", b"and more", b"after the restart"]


async def test_a_live_clone_started_before_the_server_connects_when_it_appears(
    tmp_path: Path,
) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=4)
    uri = f"tcp://127.0.0.1:{_free_port()}"
    serve = None
    clone = await trio.lowlevel.open_process(
        [*CMD, "clone", key, str(tmp_path / "r"), "--connect", uri, "--live"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        err = await _stderr_until(clone, b"retrying")
        assert f"hyperlog: {uri}: ".encode() in err and b"Connection refused" in err, err
        assert clone.returncode is None  # still there, waiting
        serve, _ = await _start_serve(tmp_path / "w", uri)
        await _wait_held(tmp_path / "r", 4)
        err += await _stderr_until(clone, b"following")
        clone.send_signal(signal.SIGTERM)
        code, rest = await _exit_of(clone)
        err += rest
    finally:
        await _kill(serve, clone)
    assert code == 143, err
    assert err.count(b"retrying") == 1 and b"connected after" in err, err
    assert b"connected again" not in err  # (it never was connected before)
    assert b"stopped after fetching 4 blocks" in err, err


async def test_a_server_for_another_log_ends_a_live_clone(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=2)
    async with open_store(tmp_path / "other") as store:
        await store.create_log(key_pair(bytes(32)))  # another key
    serve, uri = await _start_serve(tmp_path / "w")
    clone = other = None
    try:
        clone = await _live_clone_holding(key, tmp_path / "r", uri, 2)
        await _crash(serve)
        other, _ = await _start_serve(tmp_path / "other", uri)  # the same port
        code, err = await _exit_of(clone)
    finally:
        await _kill(serve, clone, other)
    assert code == 1 and b"Traceback" not in err, err
    last = err.decode().splitlines()[-1]
    held = "length 2, 2 blocks held"
    assert last == f"hyperlog: error: {uri}: the peer does not serve this log; {held}", err
    assert await _blocks_held(tmp_path / "r") == 2  # what it had is kept


async def test_a_server_restored_from_an_older_copy_ends_a_live_clone(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=3)
    shutil.copytree(tmp_path / "w", tmp_path / "older")  # the writer's backup
    await _append(tmp_path / "w", b"line 3", b"line 4")
    serve, uri = await _start_serve(tmp_path / "w")
    clone = restored = None
    try:
        clone = await _live_clone_holding(key, tmp_path / "r", uri, 5)
        await _crash(serve)
        # Restored from the backup and appended to: 6 blocks that do not extend our 5.
        await _append(tmp_path / "older", b"other 3", b"other 4", b"other 5")
        restored, _ = await _start_serve(tmp_path / "older", uri)
        code, err = await _exit_of(clone)
    finally:
        await _kill(serve, clone, restored)
    assert code == 1 and b"Traceback" not in err, err
    last = err.decode().splitlines()[-1]
    # Not "the peer was dropped (...) before serving the log; is it a `hyperlog serve`?",
    # nor (before the replication checked for it) "the server's log does not extend
    # the copy held here (peer sent an invalid proof: ...)": the fork conflict it is.
    assert last.startswith(
        "hyperlog: error: two signed histories for fork 0: the peer's (length 6) and "
        "ours (length 5) differ within the first 5 blocks"
    ), err
    assert await _blocks_held(tmp_path / "r") == 5  # what it had is kept


def test_a_name_that_does_not_resolve_is_said_in_words() -> None:
    # It said "... Temporary failure in name resolution (Unknown error -3)" (r09).
    from pinecone_trio.transports.base import os_error_in

    unresolved = socket.gaierror(-3, "Temporary failure in name resolution")
    wrapped = os_error_in(unresolved, "cannot resolve host 'nowhere.invalid'")
    assert cli_words._connect_failure("tcp://nowhere.invalid:7000", wrapped) == (
        "tcp://nowhere.invalid:7000: cannot resolve host 'nowhere.invalid': "
        "Temporary failure in name resolution"
    )
    bare = socket.gaierror(-2, "Name or service not known")
    assert cli_words._connect_failure("tcp://nowhere.invalid:7000", bare) == (
        "tcp://nowhere.invalid:7000: Name or service not known (the name did not resolve)"
    )


async def test_a_live_clone_of_a_log_the_server_does_not_serve_stops_at_once(
    tmp_path: Path,
) -> None:
    await _store_with_log(tmp_path / "w", blocks=1)
    serve, uri = await _start_serve(tmp_path / "w")
    try:
        with trio.fail_after(BOUND):
            wrong = await trio.run_process(
                [*CMD, "clone", "ab" * 32, str(tmp_path / "r"), "--connect", uri, "--live"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        await _kill(serve)
    assert wrong.returncode == 1, wrong.stderr
    refused = f"hyperlog: error: {uri}: the peer does not serve this log; {KEY_HINT}\n"
    assert wrong.stderr == refused.encode()  # (the hint about KEY since the newcomer review)
    assert not (tmp_path / "r").exists()  # nothing left behind, as without --live


async def test_a_live_clone_refused_by_a_websocket_path_stops_at_once(tmp_path: Path) -> None:
    # A wrong path is answered 404 by our listener: retried for ever before.
    key = await _store_with_log(tmp_path / "w", blocks=1)
    serve, uri = await _start_serve(tmp_path / "w", "ws://127.0.0.1:0/log")
    wrong = uri.replace("/log", "/lgo")
    try:
        with trio.fail_after(BOUND):
            done = await trio.run_process(
                [*CMD, "clone", key, str(tmp_path / "r"), "--connect", wrong, "--live"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    finally:
        await _kill(serve)
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode() == (
        f"hyperlog: error: {wrong}: WebSocket upgrade refused: HTTP 404 Not Found "
        "(no WebSocket listener on path '/lgo': check the path)\n"
    )
    assert not (tmp_path / "r").exists()


# --- the pieces, without processes -----------------------------------------------------


def test_which_failures_are_retried() -> None:
    # (Which ended sessions are retried is the policy's `transient_end`, tested in
    # test_follow_policy.py; these are the dial errors only the CLI's transport has.)
    from pinecone_trio.errors import BadHandshake, HandshakeAborted, HandshakeTimeout

    assert cli_live._transient_dial(ConnectionRefusedError(111, "Connection refused"))
    assert cli_live._transient_dial(TimeoutError("no TCP connection within 5 s"))
    assert cli_live._transient_dial(socket.gaierror(-3, "Temporary failure in name resolution"))
    assert cli_live._transient_dial(HandshakeAborted("connection lost during the handshake"))
    assert cli_live._transient_dial(HandshakeTimeout("no handshake"))
    assert not cli_live._transient_dial(BadHandshake("not a Noise peer"))
    for status, fatal in [(404, True), (403, True), (502, False), (503, False)]:
        refused = ConnectionRefusedError(f"WebSocket upgrade refused: HTTP {status}")
        refused.__cause__ = ConnectionRejected(status, (), None)
        assert cli_live._transient_dial(refused) is not fatal, status
        assert cli_live._transient_dial(refused, served_before=True), status  # (a proxy)
    assert cli_words._dial_failure("ws://h:1/x", refused) == (
        "ws://h:1/x: WebSocket upgrade refused: HTTP 503"  # (5xx: no path to check)
    )
    forbidden = ConnectionRefusedError("ws://h:1/x: WebSocket upgrade refused: HTTP 403")
    forbidden.__cause__ = ConnectionRejected(403, (), None)
    assert cli_words._dial_failure("ws://h:1/x", forbidden) == (
        "ws://h:1/x: WebSocket upgrade refused: HTTP 403 (check the path)"
    )
