"""replicate() with real `hyperlog.Log`s (Merkle proofs, signatures, SQLite/memory).

These run on the real clock: the log does storage work in worker threads, and a
MockClock with autojump would jump virtual time while a thread works (its docstring
warns about this), firing timeouts early. Each test takes well under a second.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperlog import wire
from hyperlog.crypto import key_pair
from hyperlog.errors import ForkConflictError, ReplicationError
from hyperlog.log import Log, open_store
from hyperlog.replication import replicate, replication_for
from hyperlog.replication.adapter import LogAdapter

SEED = bytes(range(32))


def blocks(n: int, tag: bytes = b"b", start: int = 0) -> list[bytes]:
    return [tag + b"-%d-" % i + bytes(i % 251 for _ in range(i % 300)) for i in range(start, n)]


async def assert_same(reader: Log, writer: Log, indices: list[int] | range) -> None:
    for i in indices:
        assert reader.has(i), i
        assert await reader.get(i) == await writer.get(i), i


async def test_sparse_then_full_memory() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(blocks(500))
        reader = await rs.open_log(writer.key)
        a, b = trio.testing.memory_stream_pair()
        with trio.fail_after(60):
            async with replicate(a, writer), replicate(b, reader):
                rep = replication_for(reader)
                assert await rep.update()
                assert (reader.length, reader.fork) == (500, 0)
                assert reader.tree_hash() == writer.tree_hash()
                for i in (0, 499, 250, 7):
                    await rep.get(i)
                await assert_same(reader, writer, [0, 7, 250, 499])
                assert not reader.has(1)
                # The Log's own get fetches through the attached replicator too.
                assert await reader.get(3, timeout=10) == await writer.get(3)
                p = await rep.download(0, 500)
                assert p.missing == 0
        await assert_same(reader, writer, range(500))
        await reader.verify()


async def test_sqlite_clone_resumes_after_stream_dies(tmp_path: Path) -> None:
    async with open_store(tmp_path / "w") as ws:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(blocks(3000))
        async with open_store(tmp_path / "r") as rs:
            reader = await rs.open_log(writer.key)
            rep = replication_for(reader)
            a, b = trio.testing.memory_stream_pair()
            with trio.fail_after(60):
                async with replicate(a, writer), replicate(b, reader) as s:
                    await rep.update()

                    def cut(p: object) -> None:
                        if reader.statistics().blocks_held >= 1000:
                            s.stream.send_stream.close()  # type: ignore[attr-defined]

                    async with trio.open_nursery() as n:
                        n.start_soon(partial(rep.download, 0, 3000, progress=cut))
                        await s.wait_closed()  # the download cannot finish: stop it
                        n.cancel_scope.cancel()
            held = reader.statistics().blocks_held
            assert 1000 <= held < 3000
        # Reopen the reader's store: what was verified is still there; resume.
        async with open_store(tmp_path / "r") as rs:
            reader = await rs.open_log(writer.key)
            assert reader.statistics().blocks_held == held
            a, b = trio.testing.memory_stream_pair()
            with trio.fail_after(60):
                async with replicate(a, writer), replicate(b, reader):
                    rep = replication_for(reader)
                    await rep.update()
                    await rep.download(0, 3000)
            await assert_same(reader, writer, range(3000))
            await reader.verify()


async def test_live_tail_and_writer_truncation() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(blocks(20))
        reader = await rs.open_log(writer.key)
        a, b = trio.testing.memory_stream_pair()
        rep = replication_for(reader)
        with trio.fail_after(60):
            async with replicate(a, writer), replicate(b, reader), trio.open_nursery() as n:
                n.start_soon(rep.download, 0, None)
                for k in range(3):
                    await writer.append(blocks(20 + 10 * (k + 1), start=20 + 10 * k))
                    await reader.wait_length(writer.length)
                    while not reader.has_range(0, writer.length):
                        await rep.wait_changed()
                await assert_same(reader, writer, range(50))
                # The writer rewrites history from block 30: a newer fork.
                await writer.truncate(30)
                await writer.append(blocks(40, tag=b"new", start=30))
                while not (reader.fork == writer.fork and reader.has_range(0, 40)):
                    await rep.wait_changed()
                n.cancel_scope.cancel()
        assert reader.length == 40
        await assert_same(reader, writer, range(40))
        await reader.verify()


async def test_three_peers_spread() -> None:
    """r2 downloads from the writer and from r1 at once; both serve part of it."""
    async with open_store() as ws, open_store() as r1s, open_store() as r2s:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(blocks(2000))
        r1 = await r1s.open_log(writer.key)
        r2 = await r2s.open_log(writer.key)
        with trio.fail_after(60):
            x1, y1 = trio.testing.memory_stream_pair()
            x2, y2 = trio.testing.memory_stream_pair()
            x3, y3 = trio.testing.memory_stream_pair()
            async with (
                replicate(x1, writer),
                replicate(y1, r1),
                replicate(x2, r1),
                replicate(y2, r2),
                replicate(x3, writer),
                replicate(y3, r2),
            ):
                rep1, rep2 = replication_for(r1), replication_for(r2)
                await rep1.update()
                await rep1.download(0, 2000)
                await rep2.wait_for_peers(2)
                await rep2.update()
                await rep2.get(1999)  # a sparse get first: its path is then partly known
                await rep2.download(0, 2000)
                chans = list(rep2.engine.peers)
                assert len(chans) == 2
                assert all(ch.blocks_in > 0 for ch in chans), [c.blocks_in for c in chans]
                assert sum(ch.blocks_in for ch in chans) == 2000
        await assert_same(r2, writer, range(2000))
        await r2.verify()


async def test_fork_conflict_freezes_and_reports_both() -> None:
    async with open_store() as s1, open_store() as s2, open_store() as rs:
        w1 = await s1.create_log(key_pair(SEED))
        w2 = await s2.create_log(key_pair(SEED))  # the same key on a second machine
        await w1.append(blocks(10, tag=b"one"))
        await w2.append(blocks(10, tag=b"two"))
        assert w1.key == w2.key and w1.tree_hash() != w2.tree_hash()
        reader = await rs.open_log(w1.key)
        rep = replication_for(reader)
        with trio.fail_after(60):
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, w1), replicate(b, reader):
                await rep.update()
                await rep.get(1)
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, w2), replicate(b, reader) as s:
                await rep.update()
                with pytest.raises(ForkConflictError) as info:
                    await rep.get(2)
                await s.wait_closed()
                assert isinstance(s.error, ReplicationError)
        (conflict,) = rep.conflicts
        assert info.value is conflict
        assert conflict.local.tree_hash == w1.tree_hash()  # type: ignore[attr-defined]
        assert conflict.remote.tree_hash == w2.tree_hash()  # type: ignore[attr-defined]
        assert not reader.has(2)  # nothing from the second history was stored
        assert await reader.get(1) == await w1.get(1)


class CorruptingAdapter(LogAdapter):
    """A serving peer that flips one byte of the last block of every range."""

    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        d = await super().serve(request)
        if isinstance(d, wire.RangeData):
            values = list(d.values)
            values[-1] = bytes([values[-1][0] ^ 1]) + values[-1][1:]
            return dataclasses.replace(d, values=tuple(values))
        return d


async def test_corrupted_range_stores_nothing() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(blocks(300))
        reader = await rs.open_log(writer.key)
        rep = replication_for(reader)
        with trio.fail_after(60):
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, CorruptingAdapter(writer)), replicate(b, reader) as s:
                await rep.update()
                async with trio.open_nursery() as n:
                    n.start_soon(rep.download, 0, 300)
                    await s.wait_closed()
                    n.cancel_scope.cancel()
                assert "invalid range proof" in str(s.error)
            # Every block of a corrupted range fails: its recomputed uncles are wrong.
            assert reader.statistics().blocks_held == 0
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, writer), replicate(b, reader):
                await rep.download(0, 300)
        await assert_same(reader, writer, range(300))
        await reader.verify()


async def test_store_serves_everything_it_has() -> None:
    async with open_store() as ws, open_store() as rs:
        logs = [await ws.create_log(key_pair(bytes([i]) * 32)) for i in range(3)]
        for i, log in enumerate(logs):
            await log.append(blocks(10 + i))
        reader = await rs.open_log(logs[2].key)
        rep = replication_for(reader)
        with trio.fail_after(30):
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, ws) as server, replicate(b, reader):
                await rep.update()
                await rep.download(0, reader.length)
                # Only the log the reader asked for was opened on this stream.
                assert [ch.local_id for ch in server.engine.channels()] == [1]
        assert reader.length == 12
        await assert_same(reader, logs[2], range(12))
