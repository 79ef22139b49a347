"""A second review's fork edges: checkouts and watchers across a truncation.

Each test failed before its fix:

* a checkout kept only its version number: after the log was truncated below it and
  grew again, it answered with the new fork's blocks (keys that never existed at its
  version appeared);
* `watch()` kept counting from the old fork's length, so it missed every change of a
  new fork until the log outgrew the length it had before the truncation;
* a HAMT opened on a `hyperlog.LogSnapshot` read fine, but `writable`, `put`, `delete`
  and `batch` raised `AttributeError` (a snapshot has no `writable` or `append`);
"""

from __future__ import annotations

import contextlib

import pytest
import trio
import trio.testing

import hamt
from hamt.errors import TruncatedError
from hamt.index import load_hamt
from hyperlog.log import open_store

from .helpers import WrappedLog


class _ForkingLog(WrappedLog):
    """A `LogLike` with a `fork` that says nothing about where it was cut."""

    def __init__(self) -> None:
        super().__init__()
        self.fork = 0

    def truncate(self, length: int) -> None:
        del self.inner.blocks[length:]
        self.fork += 1


async def _put_nine_old_keys(db: hamt.Hamt[bytes]) -> None:
    """k0..k8 = old0..old8: the HAMT is then at version 10 (a header and nine puts)."""
    for i in range(9):
        await db.put(f"k{i}", b"old%d" % i)


async def test_a_checkout_cut_away_by_a_truncation_refuses_to_read() -> None:
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db:
            await _put_nine_old_keys(db)
            old = db.checkout(10)
            kept = db.checkout(5)  # blocks 0-4: the truncation below keeps them
            assert await old.get("k8") == b"old8"
            await log.truncate(5)
            for i in range(5):
                await db.put(f"k{i + 100}", b"NEW")
            await db.put("k8", b"NEW-FORK-VALUE")
            assert log.length == 11 and log.fork == 1
            with pytest.raises(TruncatedError, match=r"version 10 is gone.*truncated to 5"):
                await old.get("k8")
            with pytest.raises(TruncatedError):
                [k async for k, _ in old.items()]
            with pytest.raises(TruncatedError):
                [c async for c in old.history()]
            with pytest.raises(TruncatedError):
                await old.path_hint("k1")
            # A checkout the truncation kept whole still reads its own version.
            assert {k: v async for k, v in kept.items()} == {
                f"k{i}": b"old%d" % i for i in range(4)
            }
            assert await kept.get("k3") == b"old3" and await kept.get("k100") is None
            # A checkout made on the new fork reads the new fork.
            new = db.checkout(10)
            assert await new.get("k104") == b"NEW" and await new.get("k8") is None


async def test_a_checkout_on_a_log_that_does_not_say_where_it_was_cut() -> None:
    log = _ForkingLog()
    db = await load_hamt(log)
    for i in range(9):
        await db.put(f"k{i}", b"old")
    old = db.checkout(10)
    log.truncate(5)
    for i in range(5):
        await db.put(f"new{i}", b"NEW")
    with pytest.raises(TruncatedError, match="says not where"):
        await old.get("k8")


async def test_a_checkout_cut_away_during_a_read_refuses_the_block() -> None:
    class _Gated(_ForkingLog):
        gate: trio.Event | None = None

        async def get(self, index: int) -> bytes:
            data = await self.inner.get(index)
            if self.gate is not None:
                await self.gate.wait()
            return data

    log = _Gated()
    db = await load_hamt(log, cache_blocks=1)
    for i in range(9):
        await db.put(f"k{i}", b"old")
    old = db.checkout(10)
    log.gate = trio.Event()
    async with trio.open_nursery() as nursery:

        async def read() -> None:
            with pytest.raises(TruncatedError):
                await old.get("k0")  # the root is cached; block 1 (k0's entry) is read

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        log.truncate(5)
        log.gate.set()


async def _watch_into(db: hamt.Hamt[bytes], send: trio.MemorySendChannel[tuple[int, str]]) -> None:
    async with contextlib.aclosing(db.watch()) as changes:
        async for c in changes:
            await send.send((c.version, c.key))


async def test_watch_reports_the_changes_of_a_new_fork() -> None:
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db, trio.open_nursery() as nursery:
            for i in range(9):
                await db.put(f"k{i}", b"v")
            send, receive = trio.open_memory_channel[tuple[int, str]](100)
            nursery.start_soon(_watch_into, db, send)
            await trio.testing.wait_all_tasks_blocked()
            await log.truncate(5)
            for i in range(4):
                await db.put(f"new{i}", b"v")  # versions 6..9 of the new fork
            with trio.fail_after(5):
                got = [await receive.receive() for _ in range(4)]
            assert got == [(6, "new0"), (7, "new1"), (8, "new2"), (9, "new3")]
            await db.put("new4", b"v")
            with trio.fail_after(5):
                assert await receive.receive() == (10, "new4")
            await trio.testing.wait_all_tasks_blocked()
            assert receive.statistics().current_buffer_used == 0  # nothing twice
            nursery.cancel_scope.cancel()


async def test_watch_on_a_log_that_does_not_say_where_it_was_cut_replays_it() -> None:
    log = _ForkingLog()
    db = await load_hamt(log)
    for i in range(3):
        await db.put(f"k{i}", b"v")
    async with trio.open_nursery() as nursery:
        send, receive = trio.open_memory_channel[tuple[int, str]](100)
        nursery.start_soon(_watch_into, db, send)
        await trio.testing.wait_all_tasks_blocked()
        log.truncate(2)
        await db.put("new", b"v")
        with trio.fail_after(5):
            got = [await receive.receive() for _ in range(2)]
        assert got == [(2, "k0"), (3, "new")]  # from block 1 again: nothing missed
        nursery.cancel_scope.cancel()


async def test_a_hamt_on_a_log_snapshot_is_read_only() -> None:
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db:
            await db.put("a", b"1")
            snap = log.snapshot()
            await db.put("b", b"2")  # after the snapshot: not in it
        async with hamt.open_hamt(snap) as ro:
            assert await ro.get("a") == b"1" and await ro.get("b") is None
            assert ro.version == 2 and not ro.writable
            with pytest.raises(hamt.ReadOnlyError):
                await ro.put("c", b"3")
            with pytest.raises(hamt.ReadOnlyError):
                await ro.delete("a")
            with pytest.raises(hamt.ReadOnlyError):
                ro.batch()
            assert not ro.checkout(2).writable
        empty = (await store.create_log()).snapshot()
        with pytest.raises(hamt.ReadOnlyError, match="empty and not writable"):
            async with hamt.open_hamt(empty):
                pass


async def test_a_checkout_used_after_its_block_ended_still_refuses_the_new_fork() -> None:
    # Found by a second review: closing the HAMT stopped hearing about cuts but kept
    # the (now frozen) record of them, so a fork change looked like no cut at all.
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db:
            await _put_nine_old_keys(db)
            co = db.checkout(10)
            assert await co.get("k8") == b"old8"
        await log.truncate(5)
        async with hamt.open_hamt(log) as db2:
            for i in range(6):
                await db2.put(f"k{i + 100}", b"NEW")
        with pytest.raises(TruncatedError):
            await co.get("k8")


async def test_views_of_a_retired_checkout_are_retired_too() -> None:
    # Found by a second review: `snapshot()`/`checkout()` of a checkout that a cut
    # retired were stamped with the new fork and answered from it.
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db:
            await _put_nine_old_keys(db)
            old = db.checkout(10)
            kept = db.checkout(5)
            await log.truncate(5)
            for i in range(6):
                await db.put(f"new{i}", b"NEW")
            with pytest.raises(TruncatedError):
                old.snapshot()
            with pytest.raises(TruncatedError):
                old.checkout(9)
            # A view of a checkout the cut kept is fine, and of the old fork.
            assert await kept.checkout(3).get("k1") == b"old1"
