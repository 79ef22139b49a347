"""Helpers for `test_replication_races.py`: streams that hold data back on demand.

A `Gated` stream makes one side stop reading for a while, which is how the races
between a request, its cancellation and its answer are made deterministic with real
logs (the answer is already sent while the requester is not reading).
"""

from __future__ import annotations

import trio

from hyperlog.crypto import key_pair
from hyperlog.log import Log, Store

SEED = bytes(range(32))


def blocks(n: int, tag: bytes = b"b", start: int = 0) -> list[bytes]:
    return [tag + b"-%d-" % i for i in range(start, n)]


async def writer_log(store: Store, values: list[bytes]) -> Log:
    log = await store.create_log(key_pair(SEED))
    if values:
        await log.append(values)
    return log


class Gated(trio.abc.Stream):
    """Wraps a stream; while paused, `receive_some` returns nothing (data that arrives
    meanwhile is held back until `resume`)."""

    def __init__(self, inner: trio.abc.Stream, *, loose: bool = False) -> None:
        self.inner = inner
        self.paused = False
        # loose: only a receive that starts while paused waits (one already waiting
        # for data completes); strict: data received while paused is held back too.
        self.loose = loose
        self._event = trio.Event()

    def pause(self) -> None:
        self.paused = True
        self._event = trio.Event()

    def resume(self) -> None:
        self.paused = False
        self._event.set()

    async def _wait_resumed(self) -> None:
        while self.paused:
            await self._event.wait()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await self._wait_resumed()
        data = await self.inner.receive_some(max_bytes)
        if not self.loose:
            await self._wait_resumed()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.inner.aclose()
