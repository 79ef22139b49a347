"""What stops a follower comes out as itself, from `Follower.run` and from
`follow`'s ``async with``, never inside an exception group: a storage error,
`on_event` or `progress` raising (a full channel's `trio.WouldBlock` among them), a
fork conflict, Ctrl-C in the block or in the follower's task; and when the follower
and its block fail together, neither error is lost.

Before, everything that failed during a connection came out as an `ExceptionGroup`
(nested twice for a storage error) and a Ctrl-C as a `BaseExceptionGroup`, so a
program's ``except KeyboardInterrupt`` around `trio.run` never matched (exit 1 and
a traceback instead of 130). Memory streams and stores in virtual time, as in
test_follow_memory.py; one real process for Ctrl-C.
"""

from __future__ import annotations

import math
import random
import signal
import sqlite3
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from subprocess import PIPE
from typing import Any

import pytest
import trio
import trio.testing

from hyperlog import ConnectedEvent, Follower, FollowError, FollowEvent, SteadyEvent, follow
from hyperlog.crypto import key_pair
from hyperlog.errors import ForkConflictError
from hyperlog.log import Store, open_store
from hyperlog.replication import Progress

from .test_follow_memory import BOUND, _held, _Writer, _writer_and_reader

pytestmark = pytest.mark.usefixtures("inline_storage")


class Boom(Exception):
    """A caller's callback failing."""


def _raise_on(kind: type[FollowEvent]) -> Callable[[FollowEvent], None]:
    def on_event(event: FollowEvent) -> None:
        if isinstance(event, kind):
            raise Boom(f"on_event: {type(event).__name__}")

    return on_event


def _interrupt(event: FollowEvent) -> None:
    raise KeyboardInterrupt  # (as a Ctrl-C landing in the follower's task would)


def _failing_progress(progress: Progress) -> None:
    raise Boom("progress")


def _failing_storage(store: Store) -> None:
    """The reader's disk fails from now on (as SQLite says it)."""

    def commit(*args: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    store.storage.commit = commit  # type: ignore[method-assign,assignment]


#: name: (Follower's keyword arguments, a failing storage, the exception expected).
_FAILURES: dict[str, tuple[dict[str, Any], bool, type[BaseException]]] = {
    "on_event on connected": ({"on_event": _raise_on(ConnectedEvent)}, False, Boom),
    "on_event on steady": ({"on_event": _raise_on(SteadyEvent)}, False, Boom),
    "progress": ({"progress": _failing_progress}, False, Boom),
    "storage": ({}, True, sqlite3.OperationalError),
    "ctrl-c in the follower's task": ({"on_event": _interrupt}, False, KeyboardInterrupt),
}


@pytest.mark.parametrize("name", list(_FAILURES))
@pytest.mark.parametrize("entry", ["follow", "run"])
async def test_a_failure_during_a_connection_is_raised_as_itself(
    autojump_clock: trio.testing.MockClock, name: str, entry: str
) -> None:
    kwargs, storage, expected = _FAILURES[name]
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs)
        if storage:
            _failing_storage(rs)
        peer = _Writer(writer, nursery)
        with trio.fail_after(BOUND):
            with pytest.raises(BaseException) as info:
                if entry == "follow":
                    async with follow(reader, peer.dial, **kwargs):
                        await trio.sleep_forever()
                else:
                    await Follower(reader, peer.dial, **kwargs).run()
        nursery.cancel_scope.cancel()
    assert type(info.value) is expected, repr(info.value)  # not an exception group


async def test_a_full_event_channel_stops_the_follower_with_would_block(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The docs' advice is a channel with room for every event: with it, events are
    # read at leisure; without room, send_nowait's WouldBlock stops the follower.
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs)
        peer = _Writer(writer, nursery)
        unbounded_tx, unbounded_rx = trio.open_memory_channel[FollowEvent](math.inf)
        with trio.fail_after(BOUND):
            async with follow(reader, peer.dial, on_event=unbounded_tx.send_nowait) as f:
                await f.wait_connected()
                await trio.sleep(60)  # nobody reads meanwhile: connected, then steady
            assert [type(unbounded_rx.receive_nowait()) for _ in range(2)] == [
                ConnectedEvent,
                SteadyEvent,
            ]
            full_tx, _full_rx = trio.open_memory_channel[FollowEvent](0)
            with pytest.raises(trio.WouldBlock):
                async with follow(reader, peer.dial, on_event=full_tx.send_nowait):
                    await trio.sleep_forever()
        nursery.cancel_scope.cancel()


async def test_a_fork_conflict_is_raised_through_follow_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The reader follows one copy of the writer's key, then the dial reaches another
    # copy that signed a different history (a writer restored from an older backup).
    keys = key_pair(bytes(32))
    async with (
        open_store() as sa,
        open_store() as sb,
        open_store() as rs,
        trio.open_nursery() as nursery,
    ):
        first = await sa.create_log(keys)
        await first.append([b"a", b"b", b"c"])
        other = await sb.create_log(keys)
        await other.append([b"a", b"b", b"X", b"Y"])
        reader = await rs.open_log(first.key)
        peers = [_Writer(first, nursery), _Writer(other, nursery)]

        async def dial() -> trio.abc.Stream:
            return await peers[0].dial()

        with trio.fail_after(BOUND):
            with pytest.raises(ForkConflictError):
                async with follow(reader, dial, rng=random.Random(4)) as f:
                    await f.wait_connected()
                    await _held(reader, 3)
                    peers[0].cut()
                    peers.reverse()  # the next dial reaches the other copy
                    await trio.sleep_forever()
            # The log is frozen: following it again stops at the first connection.
            with pytest.raises(ForkConflictError):
                async with follow(reader, dial):
                    await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    assert reader.length == 3


class _Stop(BaseException):
    """A BaseException of the block's own, as SystemExit or Ctrl-C are."""


@pytest.mark.parametrize("raised", [KeyboardInterrupt, _Stop, KeyError])
async def test_what_the_block_raises_comes_out_as_itself(
    autojump_clock: trio.testing.MockClock, raised: type[BaseException]
) -> None:
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs)
        with trio.fail_after(BOUND):
            with pytest.raises(raised) as info:
                async with follow(reader, _Writer(writer, nursery).dial) as f:
                    await f.wait_connected()
                    raise raised()
        nursery.cancel_scope.cancel()
    assert type(info.value) is raised


async def test_the_followers_failure_keeps_the_error_its_cancelled_block_raised(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def another_protocol() -> trio.abc.Stream:
        await trio.sleep(1)
        raise ValueError("not a peer of ours")

    async with open_store() as rs:
        reader = await rs.open_log(key_pair(bytes(32)).public_key)
        with trio.fail_after(BOUND):
            with pytest.raises(FollowError) as info:
                async with follow(reader, another_protocol):
                    try:
                        await trio.sleep_forever()
                    finally:  # (cancelled by the follower's failure)
                        raise KeyError("the block's cleanup failed")
        assert isinstance(info.value.__context__, KeyError)
        assert any("the block's cleanup failed" in note for note in info.value.__notes__)
        # The block's Ctrl-C is raised first, the follower's failure kept on it.
        with trio.fail_after(BOUND):
            with pytest.raises(KeyboardInterrupt) as interrupted:
                async with follow(reader, another_protocol):
                    try:
                        await trio.sleep_forever()
                    finally:
                        raise KeyboardInterrupt
        assert isinstance(interrupted.value.__context__, FollowError)


@pytest.mark.parametrize("bad", [-1, math.nan, 0, "5", True])
def test_dial_timeout_is_checked_at_once(bad: Any) -> None:
    async def dial() -> trio.abc.Stream:
        raise AssertionError("not called")

    log: Any = object()
    with pytest.raises(TypeError if isinstance(bad, str | bool) else ValueError):
        Follower(log, dial, dial_timeout=bad)
    Follower(log, dial, dial_timeout=math.inf)  # (no bound: allowed)


_CTRL_C_PROGRAM = """
import sys, trio
from hyperlog import follow
from hyperlog.log import open_store
from hyperlog.crypto import key_pair

async def dial():
    await trio.sleep(0.05)
    raise ConnectionRefusedError(111, "Connection refused")  # retried

async def main():
    async with open_store() as store:
        log = await store.open_log(key_pair(bytes(32)).public_key)
        async with follow(log, dial):
            print("following", flush=True)
            await trio.sleep_forever()

try:
    trio.run(main)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


async def test_ctrl_c_ends_a_following_program_with_status_130(tmp_path: Path) -> None:
    program = tmp_path / "follow_until_ctrl_c.py"
    program.write_text(_CTRL_C_PROGRAM)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            run = partial(trio.run_process, [sys.executable, str(program)], check=False)
            process = await nursery.start(partial(run, stdout=PIPE, stderr=PIPE))
            assert process.stdout is not None and process.stderr is not None
            said = b""
            while b"following\n" not in said:
                chunk = await process.stdout.receive_some()
                assert chunk, said
                said += chunk
            process.send_signal(signal.SIGINT)
            async for chunk in process.stdout:
                said += chunk
            errors = b"".join([chunk async for chunk in process.stderr])
            await process.wait()
    assert process.returncode == 130, errors.decode()
    assert said == b"following\ninterrupted\n" and b"Group" not in errors
