"""`hyperlog clone` and `serve` at the edges a user's reviewer met (real processes).

Each test failed before its fix:
- a clone into a folder holding another log said "cloned", but every other command
  kept working on the first log;
- a failed clone into a folder the user made left a store with an empty log behind,
  and one into `a/b/c` left `a/b`;
- link errors (a peer that hangs up, one that speaks something else) and a bad key
  file were Python tracebacks;
- a clone from a peer holding only part of the log waited for ever, silently;
- SIGTERM killed `serve` without a word (no cleanup path ran);
- `hyperlog --version` loaded the whole overlay stack.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import trio

from hyperlog.storage_sqlite import DB_FILENAME

from .test_cli_failures import (
    BOUND,
    CMD,
    _live_clone_holding,
    _start_serve,
    _stderr_of,
    _store_with_log,
)


async def _hyperlog(*args: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(BOUND):
        return await trio.run_process(
            [*CMD, *args], capture_stdout=True, capture_stderr=True, check=False
        )


def _one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 1, result
    assert b"Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(b"hyperlog: error:"), result.stderr
    assert result.stderr.count(b"\n") == 1, result.stderr
    return result.stderr.decode()


async def test_a_clone_into_a_store_holding_another_log_is_refused(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w")
    await _hyperlog("create", str(tmp_path / "other"))
    proc, uri = await _start_serve(tmp_path / "w")
    try:
        clone = await _hyperlog("clone", key, str(tmp_path / "other"), "--connect", uri)
    finally:
        proc.kill()
        await proc.wait()
    assert "already holds the log" in _one_error_line(clone)


async def test_a_failed_clone_leaves_the_users_folder_as_it_was(tmp_path: Path) -> None:
    await _store_with_log(tmp_path / "w")
    proc, uri = await _start_serve(tmp_path / "w")
    (tmp_path / "made").mkdir()
    (tmp_path / "made" / "notes.txt").write_text("mine")
    try:
        typo = await _hyperlog("clone", "ab" * 32, str(tmp_path / "made"), "--connect", uri)
        deep = await _hyperlog("clone", "ab" * 32, str(tmp_path / "a/b/c"), "--connect", uri)
    finally:
        proc.kill()
        await proc.wait()
    assert "does not serve this log" in _one_error_line(typo)
    assert "does not serve this log" in _one_error_line(deep)
    assert sorted(p.name for p in (tmp_path / "made").iterdir()) == ["notes.txt"]
    assert not (tmp_path / "a").exists()


async def test_link_failures_and_a_bad_key_file_are_one_line(tmp_path: Path) -> None:
    # A listener that hangs up at once, and one that answers with something else.
    async def hang_up(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async def http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n" * 200)
        await stream.aclose()

    await _store_with_log(tmp_path / "w")
    (tmp_path / "bad.key").write_text("not a key")
    async with trio.open_nursery() as nursery:
        results = []
        for handler in (hang_up, http):
            serve = partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            (listener,) = await nursery.start(serve)
            port = listener.socket.getsockname()[1]
            uri = f"tcp://127.0.0.1:{port}"
            result = await _hyperlog("clone", "ab" * 32, str(tmp_path / "r"), "--connect", uri)
            results.append((uri, result))
        nursery.cancel_scope.cancel()
    for uri, result in results:
        assert uri in _one_error_line(result)
    bad = await _hyperlog(
        "serve",
        str(tmp_path / "w"),
        "--listen",
        "tcp://127.0.0.1:0",
        "--identity",
        str(tmp_path / "bad.key"),
    )
    assert "--identity" in _one_error_line(bad)


async def test_a_clone_from_a_peer_with_part_of_the_log_stops_and_says_so(
    tmp_path: Path,
) -> None:
    key = await _store_with_log(tmp_path / "w")  # 20 blocks
    proc, uri = await _start_serve(tmp_path / "w")
    try:
        part = await _hyperlog(
            "clone", key, str(tmp_path / "part"), "--connect", uri, "--sparse", "5:10"
        )
        assert part.returncode == 0, part.stderr
    finally:
        proc.kill()
        await proc.wait()
    proc, uri = await _start_serve(tmp_path / "part")  # holds blocks 5..9 only
    try:
        full = await _hyperlog(
            "clone", key, str(tmp_path / "full"), "--connect", uri, "--stall-timeout", "1"
        )
    finally:
        proc.kill()
        await proc.wait()
    message = _one_error_line(full)
    assert "no block arrived for 1 s" in message and "15 of blocks 0..19" in message
    assert "5 fetched and kept" in message
    verify = await _hyperlog("verify", str(tmp_path / "full"))
    assert verify.returncode == 0 and b"5 blocks held" in verify.stdout


async def test_sigterm_stops_serve_with_a_word(tmp_path: Path) -> None:
    await _store_with_log(tmp_path / "w")
    proc, _ = await _start_serve(tmp_path / "w")
    proc.send_signal(signal.SIGTERM)
    with trio.fail_after(BOUND):
        err = await _stderr_of(proc)
        code = await proc.wait()
    assert code == 143 and err == b"hyperlog: terminated\n"
    assert (tmp_path / "w" / DB_FILENAME).exists()


async def test_the_local_commands_do_not_load_the_overlay_stack() -> None:
    probe = (
        "import sys, contextlib, hyperlog.cli as cli\n"
        "with contextlib.suppress(SystemExit): cli.main(['--version'])\n"
        "print('pinecone_trio' in sys.modules)\n"
    )
    with trio.fail_after(BOUND):
        result = await trio.run_process(
            [sys.executable, "-c", probe], capture_stdout=True, check=True
        )
    assert result.stdout.splitlines()[-1] == b"False"


async def test_a_clone_stopped_by_sigterm_says_what_it_kept(tmp_path: Path) -> None:
    # Found by a second review: the "stopped after fetching" line never printed (the
    # cancellation reached `_clone` inside an exception group).
    key = await _store_with_log(tmp_path / "w")  # 20 blocks
    proc, uri = await _start_serve(tmp_path / "w")
    try:
        clone = await _live_clone_holding(key, tmp_path / "r", uri, 20)
        clone.send_signal(signal.SIGTERM)
        with trio.fail_after(BOUND):
            err = await _stderr_of(clone)
            code = await clone.wait()
    finally:
        proc.kill()
        await proc.wait()
    assert code == 143, err
    assert b"stopped after fetching 20 blocks" in err and err.endswith(b"terminated\n")


async def test_a_live_clone_takes_a_sparse_start_and_refuses_an_end(tmp_path: Path) -> None:
    # A live clone follows the log without end: --live --sparse 0:10 used to fetch
    # everything and keep following, silently.
    key = await _store_with_log(tmp_path / "w")  # 20 blocks
    proc, uri = await _start_serve(tmp_path / "w")
    clone = None
    try:
        refused = await _hyperlog(
            "clone", key, str(tmp_path / "r"), "--connect", uri, "--live", "--sparse", "0:10"
        )
        tail = await _hyperlog(
            "clone", key, str(tmp_path / "t"), "--connect", uri, "--sparse", "15:"
        )
        clone = await _live_clone_holding(key, tmp_path / "l", uri, 5, "--sparse", "15:")
        clone.send_signal(signal.SIGINT)
        with trio.fail_after(BOUND):
            err = await _stderr_of(clone)
            code = await clone.wait()
    finally:
        for p in (proc, clone):
            if p is not None and p.returncode is None:
                p.kill()
                await p.wait()
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.decode().splitlines()[-1] == (
        "hyperlog clone: error: --sparse 0:10 with --live: a live clone follows the log "
        "without end; use --sparse 0: to follow it from block 0"
    )
    assert not (tmp_path / "r").exists()
    assert tail.returncode == 0, tail.stderr
    assert b"length 20, 5 blocks held (5 fetched" in tail.stdout, tail.stdout
    assert code == 130, err
    assert b"stopped after fetching 5 blocks" in err, err  # blocks 15..19 only
