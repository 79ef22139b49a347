"""Helpers for `test_replication_races.py`: streams that hold data back on demand.

A `Gated` stream makes one side stop reading for a while, which is how the races
between a request, its cancellation and its answer are made deterministic with real
logs (the answer is already sent while the requester is not reading).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
import trio.testing

from hyperlog.crypto import key_pair
from hyperlog.log import Log, Store, open_store
from hyperlog.replication import ReplicationSession, replicate, replication_for

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


@dataclass
class GatedReplication:
    """A writer log of `n` blocks replicating to a reader over a gated stream: `gate`
    holds back what the writer reads (our requests)."""

    writer: Log
    reader: Log
    gate: Gated
    rep: Any  # the reader's replication handle (`replication_for`)
    session: ReplicationSession  # the reader's side


@dataclass
class Replicating:
    """Two logs replicating over a memory stream pair, and both sessions."""

    writer: Log
    reader: Log
    writer_session: ReplicationSession
    reader_session: ReplicationSession


@asynccontextmanager
async def replicating(values: list[bytes]) -> AsyncIterator[Replicating]:
    """A writer holding `values` and a reader of it, in memory stores, replicating;
    the reader updated once."""
    async with open_store() as ws, open_store() as rs:
        writer = await writer_log(ws, values)
        reader = await rs.open_log(writer.key)
        a, b = trio.testing.memory_stream_pair()
        async with replicate(a, writer) as wsess, replicate(b, reader) as rsess:
            await replication_for(reader).update()
            yield Replicating(writer, reader, wsess, rsess)


@asynccontextmanager
async def gated_replication(n: int, *, loose: bool = False) -> AsyncIterator[GatedReplication]:
    """Both logs in memory stores, replicating, the reader updated once."""
    async with open_store() as ws, open_store() as rs:
        writer = await writer_log(ws, blocks(n))
        reader = await rs.open_log(writer.key)
        a, b = trio.testing.memory_stream_pair()
        gate = Gated(a, loose=loose)
        async with replicate(gate, writer), replicate(b, reader) as session:
            rep = replication_for(reader)
            await rep.update()
            yield GatedReplication(writer, reader, gate, rep, session)
