"""`hyperlog.follow` over real TCP on 127.0.0.1 with logs on SQLite: a writer's server
is killed and started again on the same port, and the follower resumes with the blocks
appended meanwhile; a server for another log stops it.

These run on the real clock (the logs work in threads; see test_replicate_log.py):
they wait for conditions, bounded by `BOUND` seconds, never for fixed times.
"""

from __future__ import annotations

import socket
from functools import partial
from pathlib import Path

import pytest
import trio

from hyperlog import ConnectedEvent, DialFailedEvent, FollowError, FollowEvent, LostEvent, follow
from hyperlog.crypto import key_pair
from hyperlog.log import Log, open_store
from hyperlog.replication import replicate

from .test_follow_memory import _writer_and_reader

#: Seconds any wait of these tests may take.
BOUND = 60


class _Seen:
    """The events a follower reported; `until` waits for one that matches."""

    def __init__(self) -> None:
        self.events: list[FollowEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: FollowEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, kind: type[FollowEvent]) -> None:
        """Until an event of `kind` came (bounded by the caller's fail_after)."""
        while not any(isinstance(e, kind) for e in self.events):
            await self._changed.wait()


class _Server:
    """Serves `log` to every TCP connection on 127.0.0.1 until `kill` (the listener
    and every connection close at once)."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self._scope = trio.CancelScope()

    async def run(
        self, port: int = 0, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with self._scope:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
            task_status.started(listeners[0].socket.getsockname()[1])
            await trio.serve_listeners(self._serve, listeners)

    def kill(self) -> None:
        self._scope.cancel()

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream, replicate(stream, self.log) as session:
            await session.wait_closed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _held(log: Log, length: int) -> None:
    """Until `log` holds blocks 0..length-1 (bounded by the caller's fail_after)."""
    with log.subscribe() as events:
        while not log.has_range(0, length):
            await events.receive()


async def test_a_follower_resumes_from_a_writer_that_restarts(tmp_path: Path) -> None:
    seen = _Seen()
    async with (
        open_store(tmp_path / "w") as ws,
        open_store(tmp_path / "r") as rs,
        trio.open_nursery() as nursery,
    ):
        writer, reader = await _writer_and_reader(ws, rs)
        first = _Server(writer)
        port = await nursery.start(first.run)
        dial = partial(trio.open_tcp_stream, "127.0.0.1", port)
        with trio.fail_after(BOUND):
            async with follow(reader, dial, on_event=seen) as follower:
                await follower.wait_connected()
                await _held(reader, 3)
                await writer.append(b"d")  # live
                await _held(reader, 4)
                first.kill()  # the writer's server dies ...
                await seen.until(LostEvent)
                await writer.append([b"e", b"f"])  # ... appends meanwhile ...
                await nursery.start(_Server(writer).run, port)  # ... and comes back
                await follower.wait_connected()
                await _held(reader, 6)
                await writer.append(b"g")  # and it follows live again
                await _held(reader, 7)
        nursery.cancel_scope.cancel()
        assert [await reader.get(i) for i in range(7)] == [bytes([c]) for c in b"abcdefg"]
        await reader.verify()
    events = seen.events
    assert events[0] == ConnectedEvent(again=False) and events[-1] == ConnectedEvent(again=True)
    assert all(isinstance(e, LostEvent | DialFailedEvent) for e in events[1:-1]), events


async def test_a_server_for_another_log_stops_the_follower(tmp_path: Path) -> None:
    async with (
        open_store(tmp_path / "w") as ws,
        open_store(tmp_path / "r") as rs,
        trio.open_nursery() as nursery,
    ):
        writer = await ws.create_log(key_pair(bytes(32)))
        await writer.append(b"a")
        other = await ws.create_log(key_pair(bytes([1]) * 32))
        reader = await rs.open_log(writer.key)
        first = _Server(writer)
        port = await nursery.start(first.run)
        dial = partial(trio.open_tcp_stream, "127.0.0.1", port)
        with trio.fail_after(BOUND):
            with pytest.raises(FollowError) as info:
                async with follow(reader, dial) as follower:
                    await follower.wait_connected()
                    await _held(reader, 1)
                    first.kill()
                    await nursery.start(_Server(other).run, port)  # another log, same port
                    await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    assert info.value.why == "refused" and info.value.served_before, info.value
    assert reader.has(0)  # what it had is kept


async def test_nothing_listening_is_waited_for(tmp_path: Path) -> None:
    # A follower started before its writer: refused dials are retried until it listens.
    seen = _Seen()
    async with (
        open_store(tmp_path / "w") as ws,
        open_store(tmp_path / "r") as rs,
        trio.open_nursery() as nursery,
    ):
        writer, reader = await _writer_and_reader(ws, rs, [b"a"])
        port = _free_port()
        with trio.fail_after(BOUND):
            dial = partial(trio.open_tcp_stream, "127.0.0.1", port)
            async with follow(reader, dial, on_event=seen) as follower:
                await seen.until(DialFailedEvent)
                await nursery.start(_Server(writer).run, port)
                await follower.wait_connected()
                await _held(reader, 1)
        nursery.cancel_scope.cancel()
    first, last = seen.events[0], seen.events[-1]
    assert isinstance(first, DialFailedEvent) and isinstance(first.error, OSError), seen.events
    assert last == ConnectedEvent(again=False)
