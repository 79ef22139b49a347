"""The WAL checkpoint's final catch-up (two fsyncs) runs in a worker thread, never on the loop.

The background thread copies the WAL into the database; once the WAL passes
`WAL_RESTART_BYTES`, the last frames must be copied between two commits so the next
commit writes the WAL from its start again. The log does that step
(`Storage.maintain`) in a worker thread with its write lock held, after the append
that found it due.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import hyperlog.storage_sqlite as storage_module
from hyperlog.log import open_store
from hyperlog.storage import LogInfo, SQLiteStorage, WriteBatch

_MAX_APPENDS = 20_000  # bound on the loop below: far more than two restarts need


async def test_the_checkpoint_catch_up_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(storage_module, "CHECKPOINT_EVERY_BYTES", 256 * 1024)
    monkeypatch.setattr(storage_module, "WAL_RESTART_BYTES", 1024 * 1024)
    loop_thread = threading.current_thread()
    threads: list[threading.Thread] = []
    original = SQLiteStorage.maintain

    def recording(self: SQLiteStorage) -> None:
        threads.append(threading.current_thread())
        original(self)

    monkeypatch.setattr(SQLiteStorage, "maintain", recording)
    block = os.urandom(1024)
    async with open_store(tmp_path / "s") as store:
        log = await store.create_log()
        appended = 0
        while len(threads) < 2 and appended < _MAX_APPENDS:
            await log.append(block)
            appended += 1
        assert len(threads) >= 2, f"no catch-up in {appended} appends"
        assert loop_thread not in threads
        # the WAL was restarted: it stays near the restart size, not the 256 MiB limit
        wal = tmp_path / "s" / (storage_module.DB_FILENAME + "-wal")
        assert wal.stat().st_size < 64 * 1024 * 1024
        await log.verify()
        assert log.length == appended


def test_a_synchronous_user_still_gets_the_catch_up(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "s")
    try:
        handle = storage.create_log(LogInfo(b"k" * 32, b"d" * 32)).handle
        storage._ckpt_restart_due = True  # as the background pass sets it
        assert storage.maintenance_due
        for _ in range(storage_module._MAINTAIN_WITHIN_COMMITS):
            storage.commit(handle, WriteBatch())
        assert storage.maintenance_due  # the log would have called maintain by now
        storage.commit(handle, WriteBatch())
        assert not storage.maintenance_due  # commit did it itself
        storage._ckpt_restart_due = True
        storage.maintain()
        assert not storage.maintenance_due
    finally:
        storage.close()


async def test_an_append_waits_off_the_loop_while_another_log_holds_the_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage's write lock is per store: while log A's catch-up holds it in a
    worker thread, a small append on log B goes to a worker thread too, instead of
    blocking the event loop on that lock until the catch-up ends."""
    import trio

    release = threading.Event()
    holding = threading.Event()

    def slow_maintain(self: SQLiteStorage) -> None:
        with self._wlock:
            self._ckpt_restart_due = False
            holding.set()
            release.wait(timeout=5)  # bounded: a blocked loop cannot release it

    monkeypatch.setattr(SQLiteStorage, "maintain", slow_maintain)
    async with open_store(tmp_path / "s") as store:
        log_a = await store.create_log()
        log_b = await store.create_log()
        storage = store.storage
        assert isinstance(storage, SQLiteStorage)
        ticks_while_b_waited = 0
        b_done = trio.Event()

        async def append_b() -> None:
            await log_b.append(b"b")
            b_done.set()

        async with trio.open_nursery() as nursery:
            storage._ckpt_restart_due = True  # as the background pass sets it
            nursery.start_soon(log_a.append, b"a")  # commits, then runs the catch-up
            assert await trio.to_thread.run_sync(holding.wait, 5)
            assert storage.write_busy
            nursery.start_soon(append_b)
            for _ in range(20):  # the loop keeps running while B's append waits
                await trio.sleep(0.001)
                ticks_while_b_waited += not b_done.is_set()
            release.set()
        assert ticks_while_b_waited == 20
        assert await log_a.get(0) == b"a"
        assert await log_b.get(0) == b"b"
