"""Concurrent writers and readers, and cancellation in the middle of a write."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

import hamt

from .helpers import WrappedLog


async def test_concurrent_puts_and_gets(autojump_clock: trio.testing.MockClock) -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as db:

        async def writer(w: int) -> None:
            for i in range(20):
                await db.put(f"w{w}/{i}", b"%d" % i)
                await trio.sleep(0.001 * (w % 3))

        async def reader() -> None:
            for _ in range(50):
                v = await db.get("w1/5")
                assert v in (None, b"5")
                await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            for w in range(8):
                nursery.start_soon(writer, w)
            nursery.start_soon(reader)
        assert log.length == 1 + 8 * 20
        assert len([k async for k, _ in db.items()]) == 160
        assert len([k async for k, _ in db.items("w3")]) == 20


class SlowLog(WrappedLog):
    """A view of another log whose `get` waits until released."""

    def __init__(self, inner: hamt.MemoryLog) -> None:
        super().__init__(inner)
        self.release = trio.Event()
        self.appended = 0

    async def get(self, index: int) -> bytes:
        if index > 0:
            await self.release.wait()
        return await self.inner.get(index)

    async def append(self, blocks: Sequence[bytes]) -> object:
        self.appended += 1
        return await self.inner.append(blocks)


async def test_cancelled_put_writes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    base = hamt.MemoryLog()
    async with hamt.open_hamt(base) as db:
        for i in range(40):
            await db.put(f"k{i}", b"v")
    slow = SlowLog(base)
    async with hamt.open_hamt(slow, cache_blocks=1) as db2:  # cold cache: puts must fetch
        with trio.move_on_after(5) as scope:
            await db2.put("new", b"x")  # blocks on the first fetch
        assert scope.cancelled_caught
        assert slow.appended == 0 and base.length == 41
        slow.release.set()
        await db2.put("new", b"x")  # the lock was released; state is intact
        assert await db2.get("new") == b"x" and await db2.get("k7") == b"v"
        assert base.length == 42
