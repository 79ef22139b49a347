"""Two signed histories of one log are found when a peer connects (real `Log`s, SQLite).

A writer restored from an older copy of its store and appended to again, or one key
writing on two machines, leaves two histories signed with the same key on one fork.
A reader holding one of them that connects to a server holding the other must say so
(`ForkConflictError`, the log's replication frozen), whatever their two lengths:
before, equal lengths exchanged nothing that showed it (the reader followed the other
history without noticing), and a longer server was dropped for an "invalid proof".

Real clock, as in test_replicate_log.py: the logs store in worker threads, which an
autojump clock would skip past.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperlog import wire
from hyperlog.crypto import key_pair
from hyperlog.errors import ForkConflictError, RemoteProtocolError, ReplicationError
from hyperlog.log import Log, open_store
from hyperlog.replication import replicate, replication_for
from hyperlog.replication.adapter import LogAdapter, SignedHead

SEED = bytes(range(32))


async def _writer(path: Path, blocks: list[bytes]) -> None:
    async with open_store(path) as store:
        log = await store.create_log(key_pair(SEED))
        await log.append(blocks)


async def _append(path: Path, blocks: list[bytes]) -> None:
    async with open_store(path) as store:
        (key,) = store.keys()
        log = await store.open_log(key)
        await log.append(blocks)


async def _clone(reader: Log, server: Log) -> None:
    """Fetch all of `server`'s log into `reader` (same history)."""
    a, b = trio.testing.memory_stream_pair()
    async with replicate(a, server), replicate(b, reader):
        rep = replication_for(reader)
        await rep.update()
        await rep.download(0, server.length)


async def _restored(tmp_path: Path, held: int, restored: int) -> tuple[Path, Path]:
    """A writer's store (`w`, `held` blocks) and a copy of it taken at 3 blocks
    (`older`) that was appended to until it holds `restored` other blocks."""
    await _writer(tmp_path / "w", [b"line %d" % i for i in range(3)])
    shutil.copytree(tmp_path / "w", tmp_path / "older")  # the backup
    await _append(tmp_path / "w", [b"line %d" % i for i in range(3, held)])
    await _append(tmp_path / "older", [b"other %d" % i for i in range(3, restored)])
    return tmp_path / "w", tmp_path / "older"


@asynccontextmanager
async def _against_restored(
    tmp_path: Path, held: int, restored: int
) -> AsyncIterator[tuple[Log, Log]]:
    """A reader that cloned the writer's `held` blocks, and the server restored from
    an older copy (`_restored`), both open: (server, reader)."""
    w, older = await _restored(tmp_path, held, restored)
    async with open_store(w) as ws, open_store(tmp_path / "r") as rs:
        writer = await ws.open_log(ws.keys()[0])
        reader = await rs.open_log(writer.key)
        with trio.fail_after(30):
            await _clone(reader, writer)
    assert reader.length == held
    async with open_store(older) as os_, open_store(tmp_path / "r") as rs:
        server = await os_.open_log(os_.keys()[0])
        yield server, await rs.open_log(server.key)


def _heads(conflict: ForkConflictError) -> tuple[SignedHead, SignedHead]:
    assert isinstance(conflict.local, SignedHead) and isinstance(conflict.remote, SignedHead)
    return conflict.local, conflict.remote


@pytest.mark.parametrize("restored", [5, 7, 4], ids=["same-length", "longer", "shorter"])
async def test_a_server_restored_from_an_older_copy_is_a_fork_conflict(
    tmp_path: Path, restored: int
) -> None:
    async with _against_restored(tmp_path, 5, restored) as (server, reader):
        assert server.length == restored and server.fork == reader.fork == 0
        rep = replication_for(reader)
        a, b = trio.testing.memory_stream_pair()
        with trio.fail_after(30):
            async with replicate(a, server) as s_server, replicate(b, reader) as s_reader:
                # Found at connect time: update() returns once the peer's tree has
                # been checked, and the log is frozen by then.
                assert not await rep.update()
                assert rep.engine.frozen is not None
                with pytest.raises(ForkConflictError) as info:
                    await rep.download(0, None)
                await s_reader.wait_closed()
                await s_server.wait_closed()
        (conflict,) = rep.conflicts
        assert info.value is conflict
        assert isinstance(s_reader.error, ReplicationError)
        assert s_reader.error.__cause__ is conflict
        local, remote = _heads(conflict)
        assert (local.fork, local.length, local.tree_hash) == (0, 5, reader.tree_hash())
        assert remote.fork == 0 and remote.length >= min(5, restored)
        assert local.signature == reader.signature and remote.signature is not None
        # Nothing of the other history was stored; later reads fail at once.
        assert reader.length == 5 and reader.tree_hash() == local.tree_hash
        assert await reader.get(4) == b"line 4"
        with pytest.raises(ForkConflictError):
            await rep.get(5)  # (blocks held are still read: 0-4)
        # The server found it too (it checked our tree as we checked its).
        (seen,) = replication_for(server).conflicts
        assert _heads(seen)[0].tree_hash == server.tree_hash()


async def test_the_same_history_is_no_conflict(tmp_path: Path) -> None:
    await _writer(tmp_path / "w", [b"line %d" % i for i in range(5)])
    async with open_store(tmp_path / "w") as ws, open_store(tmp_path / "r") as rs:
        writer = await ws.open_log(ws.keys()[0])
        reader = await rs.open_log(writer.key)
        with trio.fail_after(30):
            await _clone(reader, writer)
            rep = replication_for(reader)
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, writer) as sw, replicate(b, reader) as sr:
                assert not await rep.update()
                await writer.append([b"line 5"])
                while reader.length < 6:
                    await rep.wait_changed()
                assert not sr.closed.is_set() and not sw.closed.is_set()
        assert rep.conflicts == [] and replication_for(writer).conflicts == []
        assert rep.engine.frozen is None


class _LyingTreeHash(LogAdapter):
    """A peer whose first Sync names a tree hash that is not its own (it compares
    ours truthfully, so only the other side suspects anything)."""

    lied = False

    def tree_hash_at(self, length: int) -> bytes | None:
        if not self.lied:
            self.lied = True
            return b"\x01" * 32
        return super().tree_hash_at(length)


async def test_a_peer_lying_about_its_tree_hash_is_dropped_not_a_conflict(
    tmp_path: Path,
) -> None:
    await _writer(tmp_path / "w", [b"line %d" % i for i in range(5)])
    async with open_store(tmp_path / "w") as ws, open_store(tmp_path / "r") as rs:
        writer = await ws.open_log(ws.keys()[0])
        reader = await rs.open_log(writer.key)
        with trio.fail_after(30):
            await _clone(reader, writer)
            rep = replication_for(reader)
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, _LyingTreeHash(writer)), replicate(b, reader) as s:
                await s.wait_closed()
        assert isinstance(s.error, RemoteProtocolError), s.error
        assert "tree hash" in str(s.error)
        assert rep.conflicts == [] and rep.engine.frozen is None


async def test_a_peer_without_the_feature_gets_syncs_it_can_read(tmp_path: Path) -> None:
    """A peer announcing no FEATURE_FORK_CHECK (an older version) gets Syncs of
    seven fields, so nothing is compared at equal lengths (the older behaviour)."""
    async with _against_restored(tmp_path, 5, 5) as (server, reader):
        rep = replication_for(reader)
        a, b = trio.testing.memory_stream_pair()
        old = wire.FEATURES & ~wire.FEATURE_FORK_CHECK
        with trio.fail_after(30):
            async with replicate(a, server, features=old), replicate(b, reader) as s:
                assert not await rep.update()
                assert not s.closed.is_set()
        assert rep.conflicts == []
