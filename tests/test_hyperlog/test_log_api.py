"""The Log API on both backends: append, get, seek, truncate, snapshots, events, reopen."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperlog.crypto import discovery_key, key_pair
from hyperlog.errors import (
    BlockNotAvailableError,
    HyperlogError,
    NotWritableError,
    StorageLockedError,
)
from hyperlog.log import AppendEvent, DownloadEvent, Log, Store, TruncateEvent, open_store
from tests.conftest import SHARED

VECTORS = json.loads((SHARED / "vectors" / "hypercore.json").read_text())


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    where = None if request.param == "memory" else tmp_path / "store"
    async with open_store(where) as s:
        yield s


async def test_vectors_key_tree_hash_and_signature(store: Store) -> None:
    log = await store.create_log(key_pair(bytes.fromhex(VECTORS["seed"])))
    result = await log.append([b.encode() for b in VECTORS["blocks"]])
    assert result.length == 5 == log.length
    assert log.key.hex() == VECTORS["defaultManifestMode"]["key"]
    assert log.tree_hash().hex() == VECTORS["treeHash"]
    assert log.signature is not None
    assert log.signature.hex() == VECTORS["defaultManifestMode"]["signature"]
    assert [r.index for r in log.roots] == VECTORS["roots"]


async def test_compat_mode_matches_vectors(store: Store) -> None:
    log = await store.create_log(key_pair(bytes.fromhex(VECTORS["seed"])), compat=True)
    await log.append([b.encode() for b in VECTORS["blocks"]])
    assert log.key.hex() == VECTORS["publicKey"]
    assert log.discovery_key.hex() == VECTORS["discoveryKey"]
    assert log.signature is not None
    assert log.signature.hex() == VECTORS["compat"]["signature"]


async def test_append_get_has_seek(store: Store) -> None:
    log = await store.create_log()
    assert log.writable and log.length == 0 and log.signature is None
    await log.append(b"first")
    await log.append([b"", b"abc", b"0123456789"])
    assert (log.length, log.byte_length) == (4, 18)
    assert [await log.get(i) for i in range(4)] == [b"first", b"", b"abc", b"0123456789"]
    assert log.has(3) and not log.has(4) and not log.has(-1)
    assert log.has_range(0, 4) and not log.has_range(0, 5)
    assert log.contiguous_length == 4
    assert await log.seek(0) == (0, 0)
    assert await log.seek(5) == (2, 0)
    assert await log.seek(17) == (3, 9)
    assert await log.byte_offset(3) == 8
    with pytest.raises(IndexError):
        await log.seek(18)
    with pytest.raises(BlockNotAvailableError):
        await log.get(4)
    with pytest.raises(BlockNotAvailableError):
        log.get_nowait(99)
    assert [b async for b in log.iter_blocks(1, 3)] == [b"", b"abc"]
    assert log.have_bits(0, 8) == b"\x0f"
    await log.verify()


async def test_append_limits(store: Store) -> None:
    log = await store.create_log()
    with pytest.raises(TypeError):
        await log.append(["text"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="exceeds"):
        await log.append(b"x" * (8 * 1024 * 1024 + 1))
    assert (await log.append([])).length == 0


async def test_truncate_bumps_fork_and_snapshots_stay_honest(store: Store) -> None:
    log = await store.create_log()
    await log.append([bytes([i]) * 10 for i in range(10)])
    snap = log.snapshot()
    before = log.tree_hash()
    await log.truncate(6)
    assert (log.length, log.fork, log.byte_length) == (6, 1, 60)
    assert not log.has(6) and log.has(5)
    await log.verify()
    await log.append([b"new"] * 3)
    assert log.length == 9 and log.fork == 1
    await log.verify()
    # the snapshot keeps its head, sees the shared prefix, and refuses the cut part
    assert snap.length == 10 and snap.fork == 0 and snap.tree_hash() == before
    assert await snap.get(5) == bytes([5]) * 10
    assert not snap.has(7)
    with pytest.raises(BlockNotAvailableError):
        await snap.get(7)
    with pytest.raises(ValueError):
        await log.truncate(20)
    with pytest.raises(ValueError):
        await log.truncate(3, fork=1)
    await log.truncate(0)
    assert log.length == 0 and log.fork == 2 and log.byte_length == 0
    await log.append(b"again")
    assert await log.get(0) == b"again"


async def test_events_and_wait_length(store: Store) -> None:
    log = await store.create_log()
    seen: list[object] = []
    remove = log.add_listener(seen.append)
    with log.subscribe() as events:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(log.wait_length, 3)
            await log.append([b"a", b"b"])
            await log.append(b"c")
        await log.truncate(1)
        got = [events.receive_nowait() for _ in range(3)]
    remove()
    await log.append(b"d")
    expected = [AppendEvent(2, 2, 0), AppendEvent(3, 3, 0), TruncateEvent(1, 1)]
    assert got == expected
    assert seen == expected
    assert log.statistics().subscribers == 0


async def test_full_subscriber_drops_and_counts(store: Store) -> None:
    log = await store.create_log()
    with log.subscribe(max_buffer=1) as events:
        await log.append(b"1")
        await log.append(b"2")
        assert events.receive_nowait() == AppendEvent(1, 1, 0)
    assert log.statistics().events_dropped == 1


async def test_reader_without_key_cannot_write(store: Store) -> None:
    writer = await store.create_log()
    reader_key = key_pair().public_key
    reader = await store.open_log(reader_key)
    assert not reader.writable
    with pytest.raises(NotWritableError):
        await reader.append(b"x")
    with pytest.raises(NotWritableError):
        await reader.truncate(0)
    assert await store.open_log(writer.key) is writer
    assert store.keys() == [writer.key, reader_key]
    with pytest.raises(KeyError):
        await store.open_log(bytes(32), create=False)


async def test_get_waits_for_a_download(store: Store) -> None:
    writer = await store.create_log()
    await writer.append([b"x", b"y"])
    async with open_store() as other:
        reader = await other.open_log(writer.key)
        wanted: list[int] = []
        reader.add_want_listener(wanted.append)
        with pytest.raises(BlockNotAvailableError):
            await reader.get(1, wait=False)
        with pytest.raises(BlockNotAvailableError):
            await reader.get(1, timeout=0.01)
        assert wanted == [1]

        from hyperlog.proof import BlockRequest, ProofRequest, UpgradeRequest

        async def deliver() -> None:
            proof = writer.create_proof(
                ProofRequest(
                    0, block=BlockRequest(1, 0), upgrade=UpgradeRequest(0, 2), manifest=True
                )
            )
            result = await reader.apply_proof(proof)
            assert result.block == 1 and result.upgraded

        with reader.subscribe() as events:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(deliver)
                assert await reader.get(1, timeout=5) == b"y"
            assert events.receive_nowait() == DownloadEvent(1, 1)
            assert events.receive_nowait() == AppendEvent(2, 2, 0)


async def test_reopen_sqlite_restores_state(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as s:
        log = await s.create_log()
        await log.append([b"a" * 100, b"b" * 200])
        await log.truncate(1)
        await log.append(b"c")
        key, head = log.key, log.head
    async with open_store(path) as s:
        log = await s.default_log()
        assert log.key == key and log.head == head and log.writable
        assert await log.get(1) == b"c"
        await log.verify()
    async with open_store(path, readonly=True) as s:
        log = await s.default_log()
        assert not log.writable
        assert await log.get(0) == b"a" * 100


async def test_tasks_opening_one_log_at_once_share_one_log_object(tmp_path: Path) -> None:
    # Each opened the log in a worker thread; both got their own `Log`, and their
    # appends wrote two different blocks (and heads) at the same index.
    path = tmp_path / "s"
    async with open_store(path) as s:
        log = await s.create_log()
        await log.append(b"zero")
        key = log.key
        reader_key = (await s.create_log()).key
    new_key = bytes(range(32))
    names = {
        "writer 1": key,
        "writer 2": key,
        "new 1": new_key,  # added once, not refused the second time
        "new 2": new_key,
        "by key": reader_key,
        "by discovery key": discovery_key(reader_key),
    }
    async with open_store(path) as s:
        got: dict[str, Log] = {}

        async def open_and_append(name: str) -> None:
            log = got[name] = await s.open_log(names[name])
            if name.startswith("writer"):
                await log.append(name.encode())

        async with trio.open_nursery() as nursery:
            for name in names:
                nursery.start_soon(open_and_append, name)
        assert got["writer 1"] is got["writer 2"]
        assert got["new 1"] is got["new 2"]
        assert got["by key"] is got["by discovery key"]
    async with open_store(path) as s:
        log = await s.open_log(key, create=False)
        assert sorted([await log.get(1), await log.get(2)]) == [b"writer 1", b"writer 2"]
        await log.verify()


async def test_logs_created_at_once_leave_the_oldest_as_the_default(tmp_path: Path) -> None:
    # Each task created its log, then saw no default and set its own: the last one
    # to finish became the default, not the first log of the store.
    path = tmp_path / "s"
    async with open_store(path) as s:
        async with trio.open_nursery() as nursery:
            for _ in range(6):
                nursery.start_soon(s.create_log)
        oldest = s.keys()[0]
        assert len(s.keys()) == 6
        assert (await s.default_log()).key == oldest
    async with open_store(path) as s:
        assert (await s.default_log()).key == oldest


async def test_second_writer_is_refused(tmp_path: Path) -> None:
    async with open_store(tmp_path / "s") as s:
        await s.create_log()
        with pytest.raises(StorageLockedError, match="already open for writing"):
            async with open_store(tmp_path / "s"):
                pass  # pragma: no cover
        async with open_store(tmp_path / "s", readonly=True) as ro:
            assert len(ro.keys()) == 1
    async with open_store(tmp_path / "s") as s:  # released on close
        assert len(s.keys()) == 1


async def test_large_batch_goes_through_a_thread(store: Store) -> None:
    log = await store.create_log()
    blocks = [bytes([i % 251]) * 4096 for i in range(200)]  # 800 KiB: above the threshold
    await log.append(blocks)
    assert log.length == 200
    assert await log.get(199) == blocks[199]
    assert [b async for b in log.iter_blocks()] == blocks
    await log.verify()


async def test_get_many_reads_in_order(store: Store) -> None:
    log = await store.create_log()
    blocks = [b"block %d" % i for i in range(300)]
    await log.append(blocks)
    picks = [299, 0, 17, 17, 150] * 20  # 100: above the thread threshold
    assert await log.get_many(picks) == [blocks[i] for i in picks]
    assert await log.get_many(picks[:3]) == [blocks[299], blocks[0], blocks[17]]
    with pytest.raises(BlockNotAvailableError):
        await log.get_many([1, 300])


async def test_closing_the_store_wakes_waiters() -> None:
    async with open_store() as s:
        log = await s.open_log(key_pair().public_key)
        log.add_want_listener(lambda i: None)
        errors: list[str] = []

        async def waiter(which: str) -> None:
            try:
                if which == "block":
                    await log.get(3, timeout=60)
                else:
                    await log.wait_length(10)
            except HyperlogError as exc:
                errors.append(str(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, "block")
            nursery.start_soon(waiter, "length")
            await trio.testing.wait_all_tasks_blocked()
            await s.aclose()
    assert len(errors) == 2 and all("closed" in e for e in errors)


async def test_writer_moves_the_contiguous_hint_instead_of_pages(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as s:
        log = await s.create_log()
        for i in range(40):
            await log.append(b"%d" % i)
        assert s.storage.load_bitfield(1) == []  # no page written by plain appends
        assert log.head.contiguous_length == 40
        await log.truncate(25)
        assert log.head.contiguous_length == 25
        await log.append([b"x"] * 5)
    async with open_store(path) as s:
        log = await s.default_log()
        assert log.length == 30 and log.contiguous_length == 30
        assert [log.has(i) for i in (0, 24, 29, 30)] == [True, True, True, False]
        assert await log.get(29) == b"x"
        await log.verify()
