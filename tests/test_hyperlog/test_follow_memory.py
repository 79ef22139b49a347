"""The follower's Trio shell in virtual time: memory streams, memory stores and
`MockClock` with autojump, so the backoff's delays and the steady timer are checked to
the instant (the seeded jitter makes every run the same). Storage work runs inline
(`no_threads`): autojump moves the clock while a worker thread works, which would
fire timeouts no real link would see.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from hyperlog import (
    ConnectedEvent,
    DialFailedEvent,
    Follower,
    FollowError,
    FollowEvent,
    LostEvent,
    SteadyEvent,
    follow,
)
from hyperlog.crypto import key_pair
from hyperlog.follow_policy import FOLLOW_STEADY
from hyperlog.log import Log, Store, open_store
from hyperlog.replication import Progress, replicate

#: Virtual seconds any test may take.
BOUND = 600


pytestmark = pytest.mark.usefixtures("inline_storage")


class _Writer:
    """The writer's end of in-memory connections: each dial gets a stream on which
    `log` is served, until `cut`; while not `up`, dials are refused."""

    def __init__(self, log: Log, nursery: trio.Nursery) -> None:
        self.log = log
        self.nursery = nursery
        self.up = True
        self.dials: list[float] = []  # when each dial came
        self.serving = 0  # connections whose serving task runs
        self._scopes: list[trio.CancelScope] = []
        self._idle = trio.Event()

    async def dial(self) -> trio.abc.Stream:
        self.dials.append(trio.current_time())
        await trio.lowlevel.checkpoint()
        if not self.up:
            raise ConnectionRefusedError(111, "Connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        scope = trio.CancelScope()
        self._scopes.append(scope)
        self.nursery.start_soon(self._serve, theirs, scope)
        return ours

    async def _serve(self, stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
        self.serving += 1
        try:
            with scope:
                async with stream, replicate(stream, self.log) as session:
                    await session.wait_closed()
        finally:
            self.serving -= 1
            if not self.serving:
                self._idle.set()
                self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Until no connection is being served (the follower's end closed them)."""
        while self.serving:
            await self._idle.wait()

    def cut(self) -> None:
        """The writer goes away: every connection ends."""
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()


class _Events:
    """What a follower reported, and when (virtual time); `progress` too."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, FollowEvent]] = []
        self.blocks = 0  # fetched, as the progress callback says
        self._changed = trio.Event()

    def __call__(self, event: FollowEvent) -> None:
        self.seen.append((trio.current_time(), event))
        self._wake()

    def progress(self, p: Progress) -> None:
        self.blocks = p.blocks
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Until `condition()` holds, checked after each event (bounded by the
        caller's fail_after)."""
        while not condition():
            await self._changed.wait()

    def since(self, first: int, kind: type[FollowEvent]) -> bool:
        """Whether an event of `kind` came from the `first`-th event on."""
        return any(isinstance(e, kind) for _, e in self.seen[first:])

    def kinds(self) -> list[str]:
        return [type(e).__name__ for _, e in self.seen]


async def _writer_and_reader(
    ws: Store, rs: Store, blocks: list[bytes] | None = None
) -> tuple[Log, Log]:
    """A writer's log holding `blocks` (a, b, c) and an empty reader's copy of it."""
    writer = await ws.create_log(key_pair(bytes(32)))
    await writer.append([b"a", b"b", b"c"] if blocks is None else blocks)
    return writer, await rs.open_log(writer.key)


async def _held(log: Log, length: int) -> None:
    """Until `log` holds blocks 0..length-1 (bounded by the caller's fail_after)."""
    with log.subscribe() as events:
        while not log.has_range(0, length):
            await events.receive()


def _tasks() -> int:
    """Every task of this run (the whole tree, from the root)."""

    def count(task: trio.lowlevel.Task) -> int:
        return 1 + sum(count(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return count(root)


async def test_a_follower_backs_off_while_the_writer_is_away_and_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = _Events()
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs)
        peer = _Writer(writer, nursery)
        with trio.fail_after(BOUND):
            async with follow(
                reader, peer.dial, on_event=events, progress=events.progress, rng=random.Random(1)
            ) as f:
                await f.wait_connected()
                await _held(reader, 3)
                peer.up = False
                peer.cut()
                await writer.append([b"d", b"e"])  # while it is away
                await trio.sleep(20)
                peer.up = True
                await f.wait_connected()
                await _held(reader, 5)
                await writer.append(b"f")
                await _held(reader, 6)  # and it follows live again
                await events.until(lambda: events.blocks == 6)  # (counted as it wakes)
                stats = f.statistics()
        nursery.cancel_scope.cancel()
    assert [await reader.get(i) for i in range(6)] == [b"a", b"b", b"c", b"d", b"e", b"f"]
    kinds = events.kinds()
    assert kinds[:2] == ["ConnectedEvent", "LostEvent"] and kinds[-1] == "ConnectedEvent", kinds
    assert set(kinds[2:-1]) == {"DialFailedEvent"} and len(kinds) >= 6, kinds
    assert events.seen[0][1] == ConnectedEvent(again=False)
    assert events.seen[-1][1] == ConnectedEvent(again=True)
    # Each retry came when its event said, and the delays grew (0.5 s doubling).
    retries = [(t, e) for t, e in events.seen if isinstance(e, LostEvent | DialFailedEvent)]
    for (t, e), dialled in zip(retries, peer.dials[1:], strict=True):
        assert dialled == pytest.approx(t + e.retry_in), (t, e, dialled)
    ceilings = [min(30.0, 0.5 * 2**i) for i in range(len(retries))]
    assert all(c / 2 <= e.retry_in <= c for (_, e), c in zip(retries, ceilings, strict=True))
    assert (stats.connections, stats.outages, stats.connected) == (2, 1, True)
    assert stats.blocks == 6 and stats.failures == len(retries)


async def test_the_backoff_starts_again_once_a_connection_has_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = _Events()
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs, [b"a"])
        peer = _Writer(writer, nursery)
        peer.up = False
        with trio.fail_after(BOUND):
            async with follow(reader, peer.dial, on_event=events, rng=random.Random(2)) as f:
                await trio.sleep(10)  # four or five refused dials: the backoff grew
                failures = f.statistics().failures
                peer.up = True
                await f.wait_connected()
                connected_at = trio.current_time()
                await events.until(lambda: isinstance(events.seen[-1][1], SteadyEvent))
                steady_at = events.seen[-1][0]
                assert f.statistics().failures == 0
                held = len(events.seen)
                peer.cut()
                await events.until(partial(events.since, held, LostEvent))
        nursery.cancel_scope.cancel()
    assert failures >= 4
    assert steady_at == pytest.approx(connected_at + FOLLOW_STEADY)
    lost = next(e for _, e in reversed(events.seen) if isinstance(e, LostEvent))
    assert lost.retry_in <= 0.5  # from the first delay again


async def test_a_connection_that_drops_before_it_holds_keeps_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    events = _Events()
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer, reader = await _writer_and_reader(ws, rs, [b"a"])
        peer = _Writer(writer, nursery)
        with trio.fail_after(BOUND):
            async with follow(reader, peer.dial, on_event=events, rng=random.Random(3)) as f:
                for _ in range(5):  # each connection serves, then drops within 1 s
                    await f.wait_connected()
                    await trio.sleep(1)
                    held = len(events.seen)
                    peer.cut()
                    await events.until(partial(events.since, held, LostEvent))
        nursery.cancel_scope.cancel()
    assert not any(isinstance(e, SteadyEvent) for _, e in events.seen)
    lost = [e.retry_in for _, e in events.seen if isinstance(e, LostEvent)]
    assert len(lost) == 5 and lost[-1] >= 0.5 * 2**4 / 2, lost  # it grew: 8 s or more


async def test_cancelling_a_follower_leaves_no_task_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_store() as ws, open_store() as rs:
        writer, reader = await _writer_and_reader(ws, rs, [b"a"])
        before = _tasks()
        async with trio.open_nursery() as servers:
            peer = _Writer(writer, servers)
            follower = Follower(reader, peer.dial)
            with trio.fail_after(BOUND):
                async with trio.open_nursery() as nursery:
                    await nursery.start(follower.run)
                    await follower.wait_connected()
                    assert _tasks() > before + 5  # its tasks, the session's, the writer's
                    nursery.cancel_scope.cancel()
                await peer.wait_idle()  # the writer's end saw the stream close
            assert _tasks() == before  # nothing of the follower's anywhere in the run
        assert not follower.connected
        # One follower runs in one task at a time.
        async with trio.open_nursery() as servers:
            peer = _Writer(writer, servers)
            follower = Follower(reader, peer.dial)
            async with trio.open_nursery() as nursery:
                await nursery.start(follower.run)
                with pytest.raises(RuntimeError):
                    await follower.run()
                nursery.cancel_scope.cancel()
            servers.cancel_scope.cancel()


async def test_what_stops_following_is_raised_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_store() as ws, open_store() as rs, trio.open_nursery() as nursery:
        writer = await ws.create_log(key_pair(bytes(32)))
        reader = await rs.open_log(writer.key)
        other = await ws.create_log(key_pair(bytes([1]) * 32))

        async def another_protocol() -> trio.abc.Stream:
            raise ValueError("not a peer of ours")

        with trio.fail_after(BOUND):
            with pytest.raises(FollowError) as info:
                async with follow(reader, another_protocol):
                    await trio.sleep_forever()
            assert info.value.why == "dial" and isinstance(info.value.error, ValueError)

            # A peer serving another log (memory streams: no capabilities on a link).
            with pytest.raises(FollowError) as info:
                async with follow(reader, _Writer(other, nursery).dial) as f:
                    await f.wait_connected()
            assert info.value.why == "refused"

            with pytest.raises(KeyError):  # the block's own error, not in a group
                async with follow(reader, _Writer(writer, nursery).dial) as f:
                    await f.wait_connected()
                    raise KeyError("mine")
        nursery.cancel_scope.cancel()


def test_start_is_checked_at_once() -> None:
    async def dial() -> trio.abc.Stream:
        raise AssertionError("not called")

    log: Any = object()
    with pytest.raises(ValueError):
        Follower(log, dial, start=-1)
    with pytest.raises(TypeError):
        Follower(log, dial, start=True)
