"""Appends of every kind from many tasks, beside checkpoint catch-ups in worker threads.

Two logs in one store; per log two tasks append single blocks (`Storage.append_one`),
small batches (inline) and big batches (a worker thread), while the WAL thresholds are
small enough that the checkpoint's catch-up (`Storage.maintain`) runs in a worker
thread dozens of times. Every use of the write connection must hold the storage's
write lock (so no two threads ever share it), every append's result must name its
own blocks, and the reopened store must hold exactly what was acknowledged.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest
import trio

import hyperlog.storage_sqlite as storage_module
from hyperlog.constants import APPEND_THREAD_THRESHOLD_BYTES
from hyperlog.log import Log, open_store
from hyperlog.storage import SQLiteStorage

_ROUNDS = 150  # appends per task


async def test_appends_and_checkpoint_catch_ups_never_share_the_write_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "CHECKPOINT_EVERY_BYTES", 64 * 1024)
    monkeypatch.setattr(storage_module, "WAL_RESTART_BYTES", 256 * 1024)
    writer = SQLiteStorage._writer
    maintain = SQLiteStorage.maintain
    maintained: list[threading.Thread] = []

    def checked_writer(self: SQLiteStorage) -> sqlite3.Connection:
        assert self._wlock.locked(), "the write connection used without the write lock"
        return writer(self)

    def recorded_maintain(self: SQLiteStorage) -> None:
        maintained.append(threading.current_thread())
        maintain(self)

    monkeypatch.setattr(SQLiteStorage, "_writer", checked_writer)
    monkeypatch.setattr(SQLiteStorage, "maintain", recorded_maintain)
    path = tmp_path / "s"
    expected: dict[bytes, dict[int, bytes]] = {}

    async def appender(log: Log, seed: int) -> None:
        rng = random.Random(seed)
        mine = expected[log.key]
        for _ in range(_ROUNDS):
            r = rng.random()
            if r < 0.6:
                values = [rng.randbytes(rng.randrange(1, 2000))]
                result = await log.append(values[0])
            elif r < 0.95:
                values = [rng.randbytes(rng.randrange(1, 500)) for _ in range(rng.randrange(2, 40))]
                result = await log.append(values)
            else:
                values = [rng.randbytes(APPEND_THREAD_THRESHOLD_BYTES // 2) for _ in range(2)]
                result = await log.append(values)
            first = result.length - len(values)
            for k, value in enumerate(values):
                assert first + k not in mine
                mine[first + k] = value

    async with open_store(path, page_size=4096) as store:
        logs = [await store.create_log(), await store.create_log()]
        for log in logs:
            expected[log.key] = {}
        async with trio.open_nursery() as nursery:
            for n, log in enumerate(logs):
                nursery.start_soon(appender, log, 2 * n)
                nursery.start_soon(appender, log, 2 * n + 1)
    assert maintained
    assert threading.current_thread() not in maintained
    async with open_store(path, readonly=True) as store:
        for key, blocks in expected.items():
            log = await store.open_log(key, create=False)
            assert log.length == len(blocks)
            assert [await log.get(i) for i in range(log.length)] == [
                blocks[i] for i in range(len(blocks))
            ]
            await log.verify()
