"""`hyperlog serve --append-lines`: a writer that serves and appends, from the CLI alone.

A tester could not show live following with the CLI: `serve` holds the store, so
`hyperlog append` refuses beside it, and new blocks had to come from a library program.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import trio

from hyperlog.constants import MAX_BLOCK_SIZE

from .test_cli_clone_edges import _hyperlog
from .test_cli_failures import (
    BOUND,
    CMD,
    _live_clone_holding,
    _start_serve,
    _store_with_log,
)


async def _stop(proc: trio.Process, sig: int = signal.SIGINT) -> int:
    """A signal, then wait for the process and close its pipes; its exit status."""
    proc.send_signal(sig)
    with trio.fail_after(BOUND):
        code = await proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            await pipe.aclose()
    return code


async def _stderr_until(proc: trio.Process, marker: bytes) -> bytes:
    assert proc.stderr is not None
    err = b""
    with trio.fail_after(BOUND):
        while marker not in err:
            chunk = await proc.stderr.receive_some(1024)
            assert chunk, err
            err += chunk
    return err


APPEND = ("--append-lines", "-")


async def _serve_appending(directory: Path) -> tuple[trio.Process, str]:
    return await _start_serve(directory, "tcp://127.0.0.1:0", *APPEND, stdin=True)


async def test_lines_appended_while_serving_reach_a_live_clone(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=3)
    serve, uri = await _serve_appending(tmp_path / "w")
    assert serve.stdin is not None
    try:
        clone = await _live_clone_holding(key, tmp_path / "r", uri, 3)
        await serve.stdin.send_all(b"written live\nand more\n")
        await _stop(clone)
        clone = await _live_clone_holding(key, tmp_path / "r", uri, 5)  # resumes, gets both
        await _stop(clone)
        await serve.stdin.aclose()  # the input ends: still serving, and says so
        err = await _stderr_until(serve, b"still serving")
        assert b"input ended after 2 lines, length 5" in err
        with trio.fail_after(BOUND):
            cat = await trio.run_process(
                [*CMD, "cat", str(tmp_path / "r"), "--start", "3"], capture_stdout=True
            )
        assert cat.stdout == b"written live\nand more\n"
    finally:
        await _stop(serve)


async def test_append_lines_needs_a_writable_log(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=1)
    serve, uri = await _serve_appending(tmp_path / "w")
    try:
        await _stop(await _live_clone_holding(key, tmp_path / "r", uri, 1))  # a reader's store
    finally:
        await _stop(serve)
    result = await _hyperlog("serve", str(tmp_path / "r"), "--listen", "tcp://127.0.0.1:0", *APPEND)
    assert result.returncode == 1
    assert b"--append-lines: the log in" in result.stderr and b"not writable" in result.stderr


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_a_signal_while_waiting_for_input_exits_cleanly(
    tmp_path: Path, sig: int, status: int
) -> None:
    # The line reader blocked in a thread on Python's buffered stdin held its lock, and
    # the interpreter aborted at shutdown (exit -6, "Fatal Python error"; found by
    # review); a named pipe as FILE hung until a line came.
    await _store_with_log(tmp_path / "w", blocks=1)
    serve, _ = await _serve_appending(tmp_path / "w")  # its input stays open and silent
    assert serve.stderr is not None
    code = await _stop(serve, sig)
    assert code == status


async def test_a_missing_input_file_is_refused_before_serving(tmp_path: Path) -> None:
    await _store_with_log(tmp_path / "w", blocks=1)
    missing = ("--append-lines", str(tmp_path / "missing.txt"))
    result = await _hyperlog(
        "serve", str(tmp_path / "w"), "--listen", "tcp://127.0.0.1:0", *missing
    )
    assert result.returncode == 1 and result.stdout == b""  # never said "serving"
    assert b"--append-lines " in result.stderr and b"No such file" in result.stderr


async def test_a_line_too_long_for_a_block_stops_appending_not_serving(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=1)
    serve, uri = await _serve_appending(tmp_path / "w")
    assert serve.stdin is not None
    try:
        await serve.stdin.send_all(b"fine\n" + b"x" * (MAX_BLOCK_SIZE + 1))
        err = await _stderr_until(serve, b"still serving")
        assert b"cannot be one block: stopped after 1 line, length 2; still serving" in err
        # Still serving: a clone gets both blocks.
        await _stop(await _live_clone_holding(key, tmp_path / "r", uri, 2))
    finally:
        await _stop(serve)
