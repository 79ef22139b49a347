"""`Storage.append_one` (a writer's single append) writes exactly what `commit` writes.

The single-block fast path builds its row without a `WriteBatch` or `Head`; these tests
compare every stored row against the general path, and check that a log appended one
block at a time reopens, verifies and proves like one appended in a batch.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from hyperlog.log import open_store
from hyperlog.merkle import MerkleTree
from hyperlog.storage import (
    DB_FILENAME,
    FULL_HASH_ABOVE,
    Head,
    LogInfo,
    MemoryStorage,
    SQLiteStorage,
    Storage,
    WriteBatch,
)

_INFO = LogInfo(b"k" * 32, b"d" * 32, None, None)


def _rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path / DB_FILENAME) as conn:
        blocks = conn.execute("SELECT * FROM blocks ORDER BY id").fetchall()
        nodes = conn.execute("SELECT * FROM nodes ORDER BY id").fetchall()
        state = conn.execute("SELECT * FROM state ORDER BY id").fetchall()
    return [*blocks, ("nodes",), *nodes, ("state",), *state]


def _write(storage: Storage, handle: int, values: list[bytes], *, one: bool) -> None:
    tree = MerkleTree()
    for value in values:
        batch = tree.append([value])
        head = (batch.fork, batch.length, batch.byte_length, batch.tree_hash)
        if one:
            storage.append_one(handle, value, batch.leaf_hashes[0], batch.parents, head)
        else:
            storage.commit(
                handle,
                WriteBatch(
                    blocks=[(batch.start, value, batch.leaf_hashes[0])],
                    nodes=[n for n in batch.parents if n.index & 3 != 1],
                    head=Head(*head[:3], batch.tree_hash, None, batch.length),
                    appended=True,
                    block_bytes=len(value),
                ),
            )
        tree.apply(batch)


@pytest.mark.parametrize("big", [False, True])
def test_append_one_writes_the_rows_commit_writes(tmp_path: Path, big: bool) -> None:
    # 70 blocks: parents up to depth 6 ride in rows; `big` mixes in blocks that take
    # the general path inside append_one (full leaf hash kept, head in state)
    rnd = os.urandom
    values = [rnd(FULL_HASH_ABOVE + 1 if big and i % 7 == 3 else i % 50) for i in range(70)]
    stored = []
    for one in (True, False):
        path = tmp_path / f"one-{one}"
        storage = SQLiteStorage(path)
        try:
            handle = storage.create_log(_INFO).handle
            _write(storage, handle, values, one=one)
        finally:
            storage.close()
        stored.append(_rows(path))
    assert stored[0] == stored[1]


def test_append_one_in_memory_matches_commit() -> None:
    values = [bytes([i]) * (i + 1) for i in range(20)]
    got = []
    for one in (True, False):
        storage = MemoryStorage()
        handle = storage.create_log(_INFO).handle
        _write(storage, handle, values, one=one)
        got.append(
            (
                storage.find_log(_INFO.key),
                [storage.get_node(handle, i) for i in range(2 * len(values))],
            )
        )
    assert got[0] == got[1]


async def test_single_appends_reopen_and_verify(tmp_path: Path) -> None:
    values = [os.urandom(i % 300) for i in range(300)]
    async with open_store(tmp_path / "single") as store:
        log = await store.create_log()
        for v in values:
            await log.append([v])
        key = log.key
        tree_hash = log.tree_hash()
    async with open_store(tmp_path / "single") as store:
        log = await store.open_log(key)
        assert log.length == len(values)
        assert log.tree_hash() == tree_hash
        await log.verify()
        assert [await log.get(i) for i in range(len(values))] == values
        await log.append(b"after reopen")
        await log.verify()


@pytest.mark.parametrize("page_size", [4096, 65536])
async def test_a_new_store_takes_its_page_size_and_keeps_it(tmp_path: Path, page_size: int) -> None:
    async with open_store(tmp_path / "s", page_size=page_size) as store:
        log = await store.create_log()
        for i in range(50):
            await log.append(bytes([i]) * 300)
        key = log.key
    # reopened with another page_size: the store keeps its own
    async with open_store(tmp_path / "s", page_size=16384) as store:
        log = await store.open_log(key)
        await log.verify()
        assert await log.get(49) == bytes([49]) * 300
    with sqlite3.connect(tmp_path / "s" / DB_FILENAME) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (page_size,)


@pytest.mark.parametrize("page_size", [0, 2048, 5000, 131072])
async def test_a_bad_page_size_is_refused(tmp_path: Path, page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        async with open_store(tmp_path / "s", page_size=page_size):
            pass
    assert not (tmp_path / "s").exists()
