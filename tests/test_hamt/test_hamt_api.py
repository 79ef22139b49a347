"""The public API: versions and checkouts, diff, history, watch, codecs, batches,
the block cache, and the HAMT on a real hyperlog `Log` stored in SQLite files."""

from __future__ import annotations

import subprocess
import sys
from contextlib import aclosing
from pathlib import Path

import pytest
import trio
import trio.testing

import hamt
from hamt.cache import BlockCache
from hamt.hashing import Hasher, derive_hash_key
from hamt.trie import Done, NeedBlock, Stepper, drive_sync, lookup
from hamt.wire import Block, decode_block, decode_header
from hyperlog.log import open_store


async def test_versions_checkout_and_history() -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as db:
        assert db.version == 1 and db.writable
        await db.put("a", b"1")
        v2 = db.version
        await db.put("b", b"2")
        await db.put("a", b"3")
        assert not await db.delete("missing")
        assert db.version == v2 + 2  # a delete of a missing key writes nothing
        await db.delete("b")
        old = db.checkout(v2)
        assert not old.writable
        assert await old.get("a") == b"1" and await old.get("b") is None
        with pytest.raises(hamt.ReadOnlyError):
            await old.put("x", b"y")
        with pytest.raises(hamt.ReadOnlyError):
            old.batch()
        with pytest.raises(ValueError):
            db.checkout(db.version + 1)
        assert [x async for x in db.checkout(1).items()] == []
        history = [(c.version, c.key, c.value) async for c in db.history()]
        assert history == [(2, "a", b"1"), (3, "b", b"2"), (4, "a", b"3"), (5, "b", None)]
        assert [(c.key, c.value) async for c in db.history(3, 4)] == [("a", b"3")]
        snap = db.snapshot()
        await db.put("c", b"4")
        assert await snap.get("c") is None and await db.get("c") == b"4"


async def test_diff() -> None:
    async with hamt.open_hamt(hamt.MemoryLog()) as db:
        async with db.batch() as b:
            for i in range(300):
                b.put(f"k/{i}", b"%d" % i)
        v = db.version
        await db.put("k/5", b"changed")
        await db.delete("k/6")
        await db.put("new", b"n")
        got = sorted([(d.key, d.left, d.right) async for d in db.diff(v)])
        assert got == [("k/5", b"5", b"changed"), ("k/6", b"6", None), ("new", None, b"n")]
        back = sorted([(d.key, d.left, d.right) async for d in db.diff(db.version, v)])
        assert back == [("k/5", b"changed", b"5"), ("k/6", None, b"6"), ("new", b"n", None)]
        assert [d async for d in db.diff(v, v)] == []
        assert len([d async for d in db.diff(1)]) == 300


async def test_batch_is_atomic() -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as db:
        with pytest.raises(RuntimeError):
            async with db.batch() as b:
                b.put("a", b"1")
                raise RuntimeError("abort")
        assert log.length == 1 and await db.get("a") is None
        async with db.batch() as b:
            b.put("a", b"1")
            b.put("b", b"2")
            b.delete("a")
            b.put("c", b"3")
        assert log.length == 2  # one block for the whole batch
        assert {k: v async for k, v in db.items()} == {"b": b"2", "c": b"3"}
        b2 = db.batch()
        b2.put("d", b"4")
        assert await b2.flush()
        with pytest.raises(hamt.HamtError):
            b2.put("e", b"5")


async def test_codecs() -> None:
    async with hamt.open_hamt(hamt.MemoryLog(), codec=hamt.JSON) as db:
        await db.put("doc", {"n": 1, "tags": ["x"]})
        assert await db.get("doc") == {"n": 1, "tags": ["x"]}
    async with hamt.open_hamt(hamt.MemoryLog(), codec=hamt.MSGPACK) as db2:
        await db2.put("doc", [1, b"raw", "s"])
        assert await db2.get("doc") == [1, b"raw", "s"]
        assert [v async for _, v in db2.items()] == [[1, b"raw", "s"]]


async def test_watch_sees_local_writes(autojump_clock: trio.testing.MockClock) -> None:
    async with hamt.open_hamt(hamt.MemoryLog()) as db:
        seen: list[tuple[str, bytes | None]] = []
        done = trio.Event()

        async def watcher(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with aclosing(db.watch()) as it:
                task_status.started()
                async for change in it:
                    seen.append((change.key, change.value))
                    if len(seen) == 4:
                        done.set()
                        return

        async with trio.open_nursery() as nursery:
            await nursery.start(watcher)
            await db.put("a", b"1")
            async with db.batch() as b:
                b.put("b", b"2")
                b.put("c", b"3")
            await db.delete("a")
            with trio.fail_after(10):
                await done.wait()
        assert seen == [("a", b"1"), ("b", b"2"), ("c", b"3"), ("a", None)]


async def test_small_cache_stays_correct() -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log, cache_blocks=4, cache_bytes=4096) as db:
        for i in range(200):
            await db.put(f"key{i}", b"%d" % i)
        for i in range(200):
            assert await db.get(f"key{i}") == b"%d" % i
        stats = db.statistics()
        assert stats.cache.blocks <= 4 and stats.cache.evictions > 0 and stats.fetches > 0


async def test_sparse_get_reads_only_the_path_and_the_hint_prefetches_it() -> None:
    writer_log = hamt.MemoryLog()
    async with hamt.open_hamt(writer_log) as writer:
        for i in range(0, 2000, 100):
            async with writer.batch() as b:
                for j in range(i, i + 100):
                    b.put(f"key{j}", b"%d" % j)
        for j in range(300):
            await writer.put(f"single{j}", b"s%d" % j)
        hint = await writer.path_hint("key1234")
        assert hint[0] == writer_log.length - 1 and len(hint) <= 6

        # A "remote" reader: same blocks, empty cache, every fetch counted.
        reader_log = hamt.MemoryLog(writer_log.key, writable=False)
        reader_log.blocks = writer_log.blocks
        async with hamt.open_hamt(reader_log) as reader:
            before = reader_log.gets
            assert await reader.get("key1234") == b"1234"
            fetched = reader_log.gets - before
            assert 1 <= fetched <= len(hint)  # the path only, never the whole log
            assert reader_log.gets < 10
        async with hamt.open_hamt(reader_log) as reader2:
            await reader2.prefetch(hint)
            before = reader_log.gets
            assert await reader2.get("key1234") == b"1234"
            assert reader_log.gets == before  # everything came with the prefetch


async def test_on_hyperlog_sqlite(tmp_path: Path) -> None:
    async with open_store(tmp_path / "store") as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db:
            async with db.batch() as b:
                for i in range(500):
                    b.put(f"dir/{i}", b"v%d" % i)
            await db.put("top", b"t")
            await db.delete("dir/7")
            version = db.version
        key = log.key
    assert version == 4
    async with open_store(tmp_path / "store") as store:
        log2 = await store.open_log(key)
        assert log2.length == version
        async with hamt.open_hamt(log2) as db2:
            assert await db2.get("dir/3") == b"v3"
            assert await db2.get("dir/7") is None
            assert len([k async for k, _ in db2.items("dir")]) == 499
            assert await db2.checkout(2).get("dir/7") == b"v7"
            await db2.put("after", b"reopen")
            assert await db2.get("after") == b"reopen"


def test_public_surface() -> None:
    assert set(hamt.__all__) == {
        "BYTES", "JSON", "MSGPACK", "Batch", "BatchTooLargeError", "BytesCodec",
        "CacheStatistics", "Change", "Codec", "ComponentHash", "CorruptNodeError",
        "DiffEntry", "Hamt", "HamtError", "HamtStatistics", "InvalidKeyError", "JsonCodec",
        "LogLike", "MemoryLog", "MsgpackCodec", "PathHintClient", "ReadOnlyError",
        "TruncatedError", "ValueTooLargeError", "open_hamt", "serve_path_hints",
    }  # fmt: skip
    for name in hamt.__all__:
        assert getattr(hamt, name) is not None
    assert issubclass(hamt.CorruptNodeError, hamt.HamtError)


async def test_one_walk_serves_a_synchronous_loop() -> None:
    """The sans-IO lookup, driven without Trio from a plain list of blocks."""
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as db:
        async with db.batch() as b:
            for i in range(100):
                b.put(f"d/{i}", b"%d" % i)
        await db.put("d/7", b"seven")
    header = decode_header(log.blocks[0])
    hasher = Hasher(derive_hash_key(log.key, header.salt))
    cache = BlockCache(2, 1 << 20)
    asked: list[int] = []

    def fetch(seq: int) -> Block:
        asked.append(seq)
        return decode_block(log.blocks[seq], seq)

    root = fetch(log.length - 1)
    for key, want in [("d/7", b"seven"), ("d/8", b"8"), ("d/100", None)]:
        got = drive_sync(lookup(root, key, hasher.path(key), cache), fetch)
        assert got == want
    assert set(asked) <= set(range(1, log.length))


async def test_watch_on_a_hyperlog_log() -> None:
    """With a `hyperlog.Log`, watch also waits on the log's own length (replication)."""
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db, aclosing(db.watch()) as changes:
            await db.put("x", b"1")
            async with db.batch() as b:
                b.put("y", b"2")
                b.delete("x")
            got = []
            with trio.fail_after(10):
                async for c in changes:
                    got.append((c.version, c.key, c.value))
                    if len(got) == 3:
                        break
            assert got == [(2, "x", b"1"), (3, "y", b"2"), (3, "x", None)]


async def test_diff_and_sparse_reads_touch_only_changed_paths() -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as db:
        for i in range(0, 3000, 500):
            async with db.batch() as b:
                for j in range(i, i + 500):
                    b.put(f"k{j}", b"%d" % j)
        for j in range(300):
            await db.put(f"s{j}", b"x")
        v = db.version
        await db.put("k77", b"changed")
    reader_log = hamt.MemoryLog(log.key, writable=False)
    reader_log.blocks = log.blocks
    async with hamt.open_hamt(reader_log, cache_blocks=64) as reader:
        got = [(d.key, d.left, d.right) async for d in reader.diff(v)]
        assert got == [("k77", b"77", b"changed")]
        assert reader_log.gets <= 12  # two root-to-leaf paths, not 307 blocks


def test_stepper_and_no_pinecone_import() -> None:
    log = hamt.MemoryLog()

    async def build() -> None:
        async with hamt.open_hamt(log) as db:
            for i in range(40):
                await db.put(f"k{i}", b"%d" % i)

    trio.run(build)
    hasher = Hasher(derive_hash_key(log.key, decode_header(log.blocks[0]).salt))
    cache = BlockCache(1, 1)
    root = decode_block(log.blocks[-1], log.length - 1)
    st = Stepper(lookup(root, "k3", hasher.path("k3"), cache))
    asked = 0
    while isinstance(ev := st.next_event(), NeedBlock):
        asked += 1
        with pytest.raises(ValueError):
            st.receive_block(root if ev.seq != root.seq else decode_block(log.blocks[1], 1))
        st.receive_block(decode_block(log.blocks[ev.seq], ev.seq))
    assert isinstance(ev, Done) and ev.result == b"3" and asked >= 1
    code = "import hamt, sys; assert not [m for m in sys.modules if m.startswith('pinecone_trio')]"
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_truncated_log_drops_stale_cached_blocks() -> None:
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db, hamt.open_hamt(log) as other:
            await db.put("a", b"1")
            await db.put("b", b"2")
            await db.put("c", b"3")
            assert await other.get("c") == b"3"  # `other` caches block 3
            await log.truncate(3)  # drop the block that put "c" (a new fork)
            await db.put("d", b"4")  # a different block 3
            # `other` sees the fork and drops its cache instead of reading the old block 3
            assert await other.get("d") == b"4" and await other.get("c") is None
            assert {k async for k, _ in other.items()} == {"a", "b", "d"}
