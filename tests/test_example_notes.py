"""examples/notes.py: a writer and readers as real processes over loopback TCP."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio

NOTES = Path(__file__).resolve().parent.parent / "examples" / "notes.py"
BOUND = 20  # seconds any one step may take on a shared machine (each takes well under 1)
KEYS = 40


class Output:
    """A running notes.py; its stdout and stderr merged, read line by line."""

    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._pending = b""

    async def until(self, pattern: str) -> re.Match[str]:
        """Read lines until one matches `pattern`; fail after `BOUND` seconds or at EOF."""
        assert self.proc.stdout is not None
        with trio.move_on_after(BOUND):
            while True:
                while b"\n" in self._pending:
                    line, self._pending = self._pending.split(b"\n", 1)
                    self.lines.append(line.decode())
                    if match := re.search(pattern, self.lines[-1]):
                        return match
                chunk = await self.proc.stdout.receive_some()
                if not chunk:
                    break
                self._pending += chunk
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    async def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(text.encode())

    async def interrupt(self) -> int:
        """Ctrl-C; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        with trio.fail_after(BOUND):
            return await self.proc.wait()


@asynccontextmanager
async def running(*args: str) -> AsyncIterator[Output]:
    """`notes.py ARGS` with a pipe to its input, killed at the end of the block."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(NOTES), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        yield Output(proc)
    finally:
        proc.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(BOUND):
            await proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                await pipe.aclose()


async def notes(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run `notes.py ARGS` to its end (killed if it outlasts `BOUND`)."""
    with trio.fail_after(BOUND):
        return await trio.run_process(
            [sys.executable, str(NOTES), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def expect_error(message: str, *args: str) -> None:
    """`notes.py ARGS` fails with one line on stderr, holding `message`."""
    result = await notes(*args)
    stderr = result.stderr.decode()
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr
    assert message in stderr.splitlines()[-1], stderr


async def test_a_reader_finds_the_writer_by_topic_gets_sparsely_and_follows(
    tmp_path: Path,
) -> None:
    writer_dir, reader_dir = str(tmp_path / "writer"), str(tmp_path / "reader")
    async with running("write", writer_dir, "--listen", "tcp://127.0.0.1:0") as writer:
        uri = (await writer.until(r"listening on (tcp://\S+)"))[1]
        await writer.send("".join(f"todo/{i}=thing {i}\n" for i in range(KEYS)))
        await writer.until(rf"put todo/{KEYS - 1} \(version {KEYS + 1}\)")

        got = await notes("read", reader_dir, "--peer", uri, "--get", "todo/17")
        assert got.returncode == 0, got.stderr.decode()
        assert got.stdout == b"thing 17\n"
        stderr = got.stderr.decode()
        assert "verified against the writer's signature" in stderr
        fetched = re.search(r"fetched (\d+) of (\d+) blocks", stderr)
        assert fetched is not None, stderr
        assert int(fetched[2]) == KEYS + 1  # the header block and one block per put
        assert 0 < int(fetched[1]) <= 6  # the key's path, not the log
        await expect_error("holds a reader's replica", "write", reader_dir, "--exit-at-eof")
        await expect_error(
            "topic 'elsewhere' not found",
            *("read", str(tmp_path / "r2"), "--peer", uri, "--topic", "elsewhere", "--wait", "2"),
        )

        async with running("read", reader_dir, "--peer", uri, "--follow") as follower:
            await follower.until(r"following live updates")
            assert "todo/17 = thing 17" in follower.lines
            assert sum(line.startswith("todo/") for line in follower.lines) == KEYS
            await writer.send("live/note=typed while following\n-todo/3\n")
            await follower.until(r"^live/note = typed while following$")
            await follower.until(r"^deleted todo/3$")
            assert await follower.interrupt() == 130
        assert await writer.interrupt() == 130


async def test_a_missing_peer_and_a_writers_dir_are_one_line_errors(tmp_path: Path) -> None:
    writer_dir = str(tmp_path / "writer")
    async with running("write", writer_dir, "--exit-at-eof") as writer:
        await writer.send("a=1\n")
        assert writer.proc.stdin is not None
        await writer.proc.stdin.aclose()
        with trio.fail_after(BOUND):
            assert await writer.proc.wait() == 0
    nobody = "tcp://127.0.0.1:9"  # the discard port: nothing listens there
    await expect_error("holds a writer's own log", "read", writer_dir, "--peer", nobody)
    await expect_error(
        "no peer reachable in 1 s (tcp://127.0.0.1:9: ",
        *("read", str(tmp_path / "reader"), "--peer", nobody, "--wait", "1"),
    )


async def test_a_follower_gets_the_notes_typed_after_the_writer_restarted(
    tmp_path: Path,
) -> None:
    # `read --follow` runs on `hyperlog.follow`: the writer's laptop restarts the app
    # (same DIR, same key, same log, same port); the reader says so, dials it again over
    # the overlay and prints the notes typed after the restart.
    writer_dir, reader_dir = str(tmp_path / "writer"), str(tmp_path / "reader")
    async with running("write", writer_dir, "--listen", "tcp://127.0.0.1:0") as writer:
        uri = (await writer.until(r"listening on (tcp://\S+)"))[1]
        await writer.send("before=the restart\n")
        await writer.until(r"put before")
        async with running("read", reader_dir, "--peer", uri, "--follow") as follower:
            await follower.until(r"^before = the restart$")
            await follower.until(r"following live updates")
            assert await writer.interrupt() == 130
            await follower.until(r"lost the writer")
            async with running("write", writer_dir, "--listen", uri) as again:
                await again.until(r"listening on")
                await follower.until(r"the writer is back")
                await again.send("after=the restart\n")
                await follower.until(r"^after = the restart$")
                assert await follower.interrupt() == 130
                assert await again.interrupt() == 130
