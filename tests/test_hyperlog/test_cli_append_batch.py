"""`hyperlog serve --append-lines`: the lines one read returns are appended as a batch.

Each line used to be its own append (one SQLite commit per line: 1,600-6,200 lines/s
with a reader following). A batch must still give every line its own block, in order,
and a live clone must still get every one of them.
"""

from __future__ import annotations

from pathlib import Path

import trio

from hyperlog.constants import MAX_BLOCK_SIZE
from hyperlog.log import open_store

from .test_cli_failures import BOUND, CMD, _live_clone_holding, _start_serve, _store_with_log
from .test_cli_serve_append import APPEND, _stderr_until, _stop

#: Lines piped at once: many reads' worth (64 KiB each) and several batches each.
LINES = 20_000


def _lines() -> list[bytes]:
    # Varied lengths, empty lines and bytes that are not text: each is one block.
    return [b"" if i % 97 == 0 else b"line %d \xff" % i + b"x" * (i % 50) for i in range(LINES)]


async def _blocks(directory: Path) -> list[bytes]:
    async with open_store(directory, readonly=True, create=False) as store:
        log = await store.default_log()
        return [block async for block in log.iter_blocks()]


async def test_lines_piped_at_once_are_one_block_each_in_order(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=1)
    serve, uri = await _start_serve(tmp_path / "w", "tcp://127.0.0.1:0", *APPEND, stdin=True)
    assert serve.stdin is not None
    lines = _lines()
    try:
        clone = await _live_clone_holding(key, tmp_path / "r", uri, 1)
        try:
            # One write, no newline after the last line: it is a block too.
            await serve.stdin.send_all(b"\n".join(lines))
            await serve.stdin.aclose()
            err = await _stderr_until(serve, b"still serving")
            assert f"input ended after {LINES} lines, length {LINES + 1}".encode() in err, err
            await _stop(await _live_clone_holding(key, tmp_path / "r", uri, LINES + 1))
        finally:
            await _stop(clone)
    finally:
        await _stop(serve)
    expected = [b"line 0", *lines]  # (_store_with_log's block first)
    assert await _blocks(tmp_path / "w") == expected
    assert await _blocks(tmp_path / "r") == expected  # the live reader got every block
    with trio.fail_after(BOUND):
        cat = await trio.run_process([*CMD, "cat", str(tmp_path / "w")], capture_stdout=True)
    assert cat.stdout == b"\n".join(expected) + b"\n"  # (marked as lines for cat)


async def test_a_line_too_long_keeps_the_lines_read_with_it_before_it(tmp_path: Path) -> None:
    await _store_with_log(tmp_path / "w", blocks=1)
    serve, _ = await _start_serve(tmp_path / "w", "tcp://127.0.0.1:0", *APPEND, stdin=True)
    assert serve.stdin is not None
    try:
        before = [b"a", b"b", b"c"]
        await serve.stdin.send_all(
            b"\n".join([*before, b"x" * (MAX_BLOCK_SIZE + 1), b"after"]) + b"\n"
        )
        err = await _stderr_until(serve, b"still serving")
        assert b"cannot be one block: stopped after 3 lines, length 4; still serving" in err
    finally:
        await _stop(serve)
    assert await _blocks(tmp_path / "w") == [b"line 0", *before]
