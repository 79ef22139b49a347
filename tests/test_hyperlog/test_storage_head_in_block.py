"""Schema 3: the signed head rides in the last block's row; schema-2 stores still open.

An append writes its head into the row of its last block and clears the row of the
previous head, so there is exactly one head per log: in a block row after appends
(and downloads of the last block), in ``state`` after truncations and other proofs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hyperlog.errors import CorruptStorageError
from hyperlog.log import Log, open_store
from hyperlog.proof import BlockRequest, ProofRequest, UpgradeRequest
from hyperlog.storage import (
    DB_FILENAME,
    HEAD_IN_BLOCK_MAX,
    SCHEMA_VERSION,
    SQLiteStorage,
    _decode_head,
    _encode_head,
)

from .test_storage_parents_in_rows import downgrade_parents

_HEAD_KEY = (1 << 33) | (1 << 32)  # state row of log handle 1's head


def _heads(path: Path) -> tuple[list[int], bool]:
    """Return the block indices whose row holds a head, and whether `state` holds one."""
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        rows = conn.execute("SELECT id FROM blocks WHERE head IS NOT NULL").fetchall()
        state = conn.execute("SELECT 1 FROM state WHERE id = ?", (_HEAD_KEY,)).fetchone()
    finally:
        conn.close()
    return [r[0] & ((1 << 40) - 1) for r in rows], state is not None


async def _reopened(path: Path, readonly: bool = False) -> tuple[int, int, bytes]:
    async with open_store(path, readonly=readonly) as store:
        log = await store.default_log()
        await log.verify()
        return log.length, log.fork, log.tree_hash()


async def test_one_head_follows_appends_and_truncations(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append(b"one")
        assert _heads(path) == ([0], False)
        for i in range(20):
            await log.append(b"block %d" % i)
        await log.append([b"batch %d" % i for i in range(30)])
        assert _heads(path) == ([50], False)  # the previous rows were cleared
        await log.truncate(40)
        assert _heads(path) == ([], True)
        state = log.length, log.fork, log.tree_hash()
        assert await _reopened(path, readonly=True) == state
        await log.truncate(40)  # same length, new fork: the head stays in state
        await log.append(b"after")
        assert _heads(path) == ([40], True)  # the stale state head is older
        state = log.length, log.fork, log.tree_hash()
    assert await _reopened(path) == state
    assert await _reopened(path, readonly=True) == state


async def test_a_reader_keeps_its_head_where_its_last_proof_put_it(tmp_path: Path) -> None:
    async with open_store(tmp_path / "w") as wstore:
        writer = await wstore.create_log()
        await writer.append([b"w%d" % i for i in range(9)])
        async with open_store(tmp_path / "r") as rstore:
            reader = await rstore.open_log(writer.key)
            await _download(writer, reader, block=3, upgrade=9)  # not the last block
            assert _heads(tmp_path / "r") == ([], True)
            await writer.append(b"w9")
            await _download(writer, reader, block=9, upgrade=10)  # the last block
            assert _heads(tmp_path / "r") == ([9], True)
            await writer.append(b"w10")
            await _download(writer, reader, block=5, upgrade=11)  # head back in state
            assert _heads(tmp_path / "r") == ([], True)
            await _download(writer, reader, block=10, upgrade=None)
            assert _heads(tmp_path / "r") == ([], True)  # no new head: nothing moves
    async with open_store(tmp_path / "r") as rstore:
        reader = await rstore.open_log(writer.key, create=False)
        assert (reader.length, reader.signature) == (11, writer.signature)
        assert [reader.has(i) for i in (3, 5, 9, 10, 4)] == [True] * 4 + [False]


@pytest.mark.parametrize("group", [1, 2])
async def test_a_second_copy_of_the_head_block_keeps_the_head(tmp_path: Path, group: int) -> None:
    # Two peers answer the same request: the second, verified copy of the last block
    # (no upgrade) rewrote its row and dropped the head stored there, so the reopened
    # reader came back empty.
    async with open_store(tmp_path / "w") as wstore:
        writer = await wstore.create_log()
        await writer.append([b"w%d" % i for i in range(6)])
        async with open_store(tmp_path / "r") as rstore:
            reader = await rstore.open_log(writer.key)
            await _download(writer, reader, block=5, upgrade=6)
            assert _heads(tmp_path / "r") == ([5], False)
            again = writer.create_proof(ProofRequest(0, block=BlockRequest(5, 0)))
            other = writer.create_proof(ProofRequest(0, block=BlockRequest(4, 0)))
            await reader.apply_proofs([again, other][:group])  # one row, or a batch of rows
            assert _heads(tmp_path / "r") == ([5], False)
    async with open_store(tmp_path / "r") as rstore:
        reader = await rstore.open_log(writer.key, create=False)
        assert (reader.length, reader.signature) == (6, writer.signature)
        await reader.verify()


async def _download(writer: Log, reader: Log, *, block: int, upgrade: int | None) -> None:
    up = None if upgrade is None else UpgradeRequest(reader.length, upgrade - reader.length)
    proof = writer.create_proof(
        ProofRequest(
            writer.fork,
            block=BlockRequest(block, reader.missing_nodes(block)),
            upgrade=up,
            manifest=reader.manifest is None,
        )
    )
    await reader.apply_proof(proof)


def _downgrade_to_schema_2(path: Path) -> None:
    """Rewrite a store as the schema-2 code left it: the head in `state`, no column."""
    conn = sqlite3.connect(path / DB_FILENAME, isolation_level=None)
    try:
        conn.execute("BEGIN")
        row = conn.execute("SELECT id, head FROM blocks WHERE head IS NOT NULL").fetchone()
        if row is not None:
            conn.execute(
                "INSERT OR REPLACE INTO state (id, value) VALUES (?, ?)", (_HEAD_KEY, row[1])
            )
        conn.execute("ALTER TABLE blocks DROP COLUMN head")
        downgrade_parents(conn)
        conn.execute("PRAGMA user_version = 2")
        conn.execute("COMMIT")
    finally:
        conn.close()


async def test_schema_2_store_opens_read_only_and_upgrades_when_writable(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append([b"a", b"b", b"c"])
        await log.truncate(2)
        await log.append(b"d")
        state = log.length, log.fork, log.tree_hash()
    _downgrade_to_schema_2(path)
    assert await _reopened(path, readonly=True) == state  # no upgrade without a writer
    conn = sqlite3.connect(path / DB_FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone() == (2,)
    conn.close()
    async with open_store(path) as store:
        log = await store.default_log()
        assert (log.length, log.fork, log.tree_hash()) == state
        await log.append(b"e")
        assert [await log.get(i) for i in range(4)] == [b"a", b"b", b"d", b"e"]
        state = log.length, log.fork, log.tree_hash()
    conn = sqlite3.connect(path / DB_FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
    assert _heads(path) == ([3], True)
    assert await _reopened(path) == state


@pytest.mark.parametrize("version", [1, SCHEMA_VERSION + 1])
async def test_unknown_schema_versions_are_refused(tmp_path: Path, version: int) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        await store.create_log()
    conn = sqlite3.connect(path / DB_FILENAME)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptStorageError, match=f"schema version {version}"):
        async with open_store(path):
            pass  # pragma: no cover


async def test_a_head_in_the_wrong_row_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append([b"x", b"y", b"z"])
    conn = sqlite3.connect(path / DB_FILENAME, isolation_level=None)
    (packed,) = conn.execute("SELECT head FROM blocks WHERE head IS NOT NULL").fetchone()
    head = _decode_head(packed, "test")
    assert head.length == 3
    conn.execute("UPDATE blocks SET head = NULL")
    conn.execute(
        "INSERT INTO blocks (id, sum, value, head) VALUES (?, x'00', x'00', ?)",
        ((1 << 40) | 5, _encode_head(head)),
    )
    conn.close()
    storage = SQLiteStorage(path, readonly=True)
    try:
        with pytest.raises(CorruptStorageError, match="has length 3"):
            storage.find_log(storage.list_logs()[0])
    finally:
        storage.close()


async def test_the_newer_of_two_heads_wins(tmp_path: Path) -> None:
    # Only one head is ever left behind, but if both places held one (a bug, or a
    # hand-edited file) the open must still take the newer, by (fork, length).
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append([b"p", b"q"])
        old = log.head
        await log.truncate(2)  # fork 1, same length: the head moves to `state`
        new = log.head
    conn = sqlite3.connect(path / DB_FILENAME, isolation_level=None)
    row = conn.execute("SELECT value FROM state WHERE id = ?", (_HEAD_KEY,)).fetchone()
    assert _decode_head(row[0], "test").fork == new.fork == old.fork + 1
    conn.execute("UPDATE blocks SET head = ? WHERE id = ?", (_encode_head(old), (1 << 40) | 1))
    conn.close()
    async with open_store(path) as store:
        log = await store.default_log()
        assert log.head == new


async def test_big_blocks_keep_the_head_in_state(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append(b"small")
        assert _heads(path) == ([0], False)
        await log.append(bytes(HEAD_IN_BLOCK_MAX + 1))  # its row would spill: not here
        assert _heads(path) == ([], True)
        await log.append([bytes(HEAD_IN_BLOCK_MAX + 1), b"small again"])
        assert _heads(path) == ([3], True)
        state = log.length, log.fork, log.tree_hash()
    assert await _reopened(path) == state


@pytest.mark.parametrize("schema", [2, 3])
async def test_a_read_only_store_follows_an_upgrade_made_after_it_opened(
    tmp_path: Path, schema: int
) -> None:
    # A read-only open takes no lock, so a writer may upgrade the schema beside it; its
    # later reads must look where the upgraded writer stores heads and parents (they
    # reported a missing root as corruption, or a stale head).
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append([b"old %d" % i for i in range(10)])
    if schema == 2:
        _downgrade_to_schema_2(path)
    else:
        conn = sqlite3.connect(path / DB_FILENAME, isolation_level=None)
        conn.execute("BEGIN")
        downgrade_parents(conn)
        conn.execute("PRAGMA user_version = 3")
        conn.execute("COMMIT")
        conn.close()
    async with open_store(path, readonly=True) as ro:
        async with open_store(path) as rw:
            writer = await rw.default_log()
            await writer.append([b"new %d" % i for i in range(30)])
            state = writer.length, writer.tree_hash()
        log = await ro.default_log()
        assert (log.length, log.tree_hash()) == state
        await log.verify()
