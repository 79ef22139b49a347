"""`hyperlog serve --append-lines`: a writer that serves and appends, from the CLI alone.

A tester could not show live following with the CLI: `serve` holds the store, so
`hyperlog append` refuses beside it, and new blocks had to come from a library program.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from .test_cli_failures import (
    BOUND,
    CMD,
    _live_clone_holding,
    _start_serve,
    _store_with_log,
)


async def _stop(proc: trio.Process) -> None:
    """Ctrl-C, then wait for the process and close its pipes."""
    proc.send_signal(signal.SIGINT)
    with trio.fail_after(BOUND):
        await proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            await pipe.aclose()


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
        with trio.fail_after(BOUND):
            err = b""
            while b"still serving" not in err:
                assert serve.stderr is not None
                chunk = await serve.stderr.receive_some(1024)
                assert chunk, err
                err += chunk
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
    with trio.fail_after(BOUND):
        result = await trio.run_process(
            [*CMD, "serve", str(tmp_path / "r"), "--listen", "tcp://127.0.0.1:0", *APPEND],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert b"--append-lines: the log in" in result.stderr and b"not writable" in result.stderr
