"""Schema 4: a writer's parents ride in the row of the block that completes them.

An append writes no row into ``nodes``: every parent of depth >= 2 goes into the
``parents`` column of the block ``right_span / 2``. Reads look there first, then in
``nodes`` (readers' proofs, older schemas). Schema-3 stores open read-only as they
are and are upgraded in place by a writable open.
"""

from __future__ import annotations

import random
import sqlite3
import struct
from pathlib import Path

import pytest

from hyperlog import flat_tree
from hyperlog.crypto import TreeNode
from hyperlog.log import Log, open_store
from hyperlog.merkle import MerkleTree
from hyperlog.proof import BlockRequest, ProofRequest, UpgradeRequest
from hyperlog.storage import (
    DB_FILENAME,
    SCHEMA_VERSION,
    LogInfo,
    SQLiteStorage,
    WriteBatch,
    _parents_by_block,
)

_BLOCK_MASK = (1 << 40) - 1


def downgrade_parents(conn: sqlite3.Connection) -> None:
    """Move every parent kept in a block row into ``nodes`` and drop the column
    (what a schema-3 writer stored), inside the caller's transaction."""
    rows = conn.execute("SELECT id, parents FROM blocks WHERE length(parents) > 0").fetchall()
    for key, column in rows:
        handle, block = key >> 40, key & _BLOCK_MASK
        for k in range(len(column) // 40):
            depth = k + 2
            index = 2 * block - (1 << depth) + 1  # its right span is leaf 2 * block
            (size,) = struct.unpack_from("<Q", column, 40 * k)
            conn.execute(
                "INSERT INTO nodes (id, size, hash) VALUES (?, ?, ?)",
                ((handle << 42) | index, size, column[40 * k + 8 : 40 * k + 40]),
            )
    conn.execute("ALTER TABLE blocks DROP COLUMN parents")


def _row_counts(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        (nodes,) = conn.execute("SELECT count(*) FROM nodes").fetchone()
        (rows,) = conn.execute("SELECT count(*) FROM blocks WHERE length(parents) > 0").fetchone()
    finally:
        conn.close()
    return nodes, rows


def _expected_nodes(values: list[bytes]) -> dict[int, TreeNode]:
    tree = MerkleTree()
    batch = tree.append(values)
    return {n.index: n for n in batch.nodes}


async def _check_every_node(log: Log, expected: dict[int, TreeNode]) -> None:
    indices = sorted(i for i in expected if flat_tree.right_span(i) < 2 * log.length)
    got = log._storage.get_nodes(log._handle, indices)
    assert got == [expected[i] for i in indices]


async def test_appends_store_no_node_rows_and_read_back_every_node(tmp_path: Path) -> None:
    rng = random.Random(4)
    values: list[bytes] = []
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        for size in (1, 1, 2, 3, 5, 8, 13, 100, 1, 400):
            batch = [rng.randbytes(rng.randrange(1, 300)) for _ in range(size)]
            values += batch
            await log.append(batch if size > 1 else batch[0])
        await _check_every_node(log, _expected_nodes(values))
        await log.verify()
    nodes, rows = _row_counts(path)
    assert nodes == 0
    assert rows == len(values) // 4  # blocks 3, 7, 11, ... complete a depth-2 parent
    async with open_store(path, readonly=True) as store:
        log = await store.default_log()
        await _check_every_node(log, _expected_nodes(values))
        await log.verify()


async def test_truncation_drops_the_parents_past_the_cut(tmp_path: Path) -> None:
    path = tmp_path / "s"
    values = [bytes([i]) * (i + 1) for i in range(64)]
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append(values)
        for cut in (61, 33, 32, 9):
            await log.truncate(cut)
            del values[cut:]
            assert log.length == cut
            await _check_every_node(log, _expected_nodes(values))
            more = [b"x" * k for k in range(1, 12)]
            await log.append(more)
            values += more
            await _check_every_node(log, _expected_nodes(values))
            await log.verify()
    assert _row_counts(path)[0] == 0


async def test_proofs_from_rows_verify_at_a_reader(tmp_path: Path) -> None:
    rng = random.Random(5)
    async with open_store(tmp_path / "w") as ws, open_store(tmp_path / "r") as rs:
        writer = await ws.create_log()
        for _ in range(9):
            await writer.append([rng.randbytes(50) for _ in range(rng.randrange(1, 70))])
        reader = await rs.open_log(writer.key)
        await reader.apply_proof(
            writer.create_proof(
                ProofRequest(0, upgrade=UpgradeRequest(0, writer.length), manifest=True)
            )
        )
        for block in rng.sample(range(writer.length), 40):
            req = ProofRequest(0, block=BlockRequest(block, reader.missing_nodes(block)))
            await reader.apply_proof(writer.create_proof(req))
            assert await reader.get(block) == await writer.get(block)
        await reader.verify()


def test_a_downloaded_copy_of_a_block_keeps_the_parents_of_its_row(tmp_path: Path) -> None:
    values = [b"a", b"b", b"c", b"d"]
    batch = MerkleTree().append(values)
    storage = SQLiteStorage(tmp_path / "s")
    try:
        h = storage.create_log(LogInfo(b"k" * 32, b"d" * 32)).handle
        blocks = list(zip(range(4), values, batch.leaf_hashes, strict=True))
        parents = [n for n in batch.parents if n.index & 3 != 1]
        assert [n.index for n in parents] == [3]
        storage.commit(h, WriteBatch(blocks=blocks, nodes=parents, appended=True))
        storage.commit(h, WriteBatch(blocks=[blocks[3]]))  # as a proof would store it
        assert storage.get_nodes(h, [3, 1, 5]) == [
            parents[0],
            *(n for n in batch.parents if n.index in (1, 5)),
        ]
    finally:
        storage.close()


def test_parents_out_of_order_are_refused() -> None:
    node = TreeNode(7, 8, b"h" * 32)  # depth 3: needs the depth-2 parent of block 7 first
    with pytest.raises(ValueError, match="out of order"):
        _parents_by_block([node])
    rows, rest = _parents_by_block([TreeNode(1, 2, b"x" * 32), TreeNode(3, 4, b"y" * 32)])
    assert list(rows) == [3]
    assert rest == [TreeNode(1, 2, b"x" * 32)]


@pytest.mark.parametrize("readonly_first", [True, False])
async def test_schema_3_store_opens_and_is_upgraded(tmp_path: Path, readonly_first: bool) -> None:
    path = tmp_path / "s"
    values = [bytes([i % 251]) * 30 for i in range(300)]
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append(values[:200])
        await log.append(values[200:])
    conn = sqlite3.connect(path / DB_FILENAME, isolation_level=None)
    conn.execute("BEGIN")
    downgrade_parents(conn)
    conn.execute("PRAGMA user_version = 3")
    conn.execute("COMMIT")
    conn.close()
    conn = sqlite3.connect(path / DB_FILENAME)
    (moved,) = conn.execute("SELECT count(*) FROM nodes").fetchone()
    conn.close()
    assert moved == sum(300 >> d for d in range(2, 10))  # every parent of depth >= 2
    if readonly_first:
        async with open_store(path, readonly=True) as store:
            log = await store.default_log()
            await _check_every_node(log, _expected_nodes(values))
            await log.verify()
    async with open_store(path) as store:
        log = await store.default_log()
        await _check_every_node(log, _expected_nodes(values))
        more = [b"m" * 7] * 37
        await log.append(more)
        values += more
        await _check_every_node(log, _expected_nodes(values))
        await log.verify()
    conn = sqlite3.connect(path / DB_FILENAME)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()
    assert _row_counts(path) == (moved, 337 // 4 - 300 // 4)
