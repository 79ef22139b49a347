"""SQLiteStorage and MemoryStorage: same behaviour; damaged files are reported, never read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hyperlog.crypto import TreeNode, leaf_hash
from hyperlog.errors import CorruptStorageError, StorageLockedError
from hyperlog.log import open_store
from hyperlog.merkle import MerkleTree
from hyperlog.storage import (
    DB_FILENAME,
    PAGE_SIZE,
    Head,
    LogInfo,
    MemoryStorage,
    SQLiteStorage,
    Storage,
    WriteBatch,
    _truncated_nodes,
)

PATTERN = b"\xa5hyperlog-test-pattern\x5a" * 8


def _backends(tmp_path: Path) -> list[Storage]:
    return [MemoryStorage(), SQLiteStorage(tmp_path / "s")]


def test_truncated_nodes_match_the_merkle_engine() -> None:
    for old in range(1, 70):
        tree = MerkleTree().snapshot()
        batch = tree.append([b"x"] * old)
        tree.apply(batch)
        nodes = {n.index: n for n in batch.nodes}
        for new in range(old):
            cut = tree.truncate(new, nodes.get)
            assert set(cut.delete_nodes) <= set(_truncated_nodes(new))
            # every extra node we delete is outside the old tree anyway
            extra = set(_truncated_nodes(new)) - set(cut.delete_nodes)
            assert all(i not in nodes for i in extra)


def test_backends_agree(tmp_path: Path) -> None:
    for storage in _backends(tmp_path):
        info = LogInfo(b"k" * 32, b"d" * 32, b"manifest", b"s" * 64)
        stored = storage.create_log(info)
        with pytest.raises(ValueError, match="already exists"):
            storage.create_log(info)
        h = stored.handle
        values = [bytes([i]) * (10 + i) for i in range(6)] + [b"z" * 5000]
        blocks = [(i, v, leaf_hash(v)) for i, v in enumerate(values)]
        parent = TreeNode(1, 21, b"p" * 32)
        uncle = TreeNode(40, 3, b"u" * 32)  # a leaf held without its block
        head = Head(0, 7, sum(map(len, values)), b"t" * 32, b"g" * 64)
        storage.commit(h, WriteBatch(blocks=blocks, nodes=[parent, uncle], head=head))
        assert storage.get_block(h, 6) == b"z" * 5000
        assert storage.get_block(h, 7) is None
        assert storage.get_node(h, 2) == TreeNode(2, 11, leaf_hash(values[1]))
        assert storage.get_node(h, 12) == TreeNode(12, 5000, leaf_hash(values[6]))
        assert storage.get_nodes(h, [1, 40, 41]) == [parent, uncle, None]
        assert [i for i, _ in storage.iter_blocks(h, 2, 5)] == [2, 3, 4]
        found = storage.find_log(b"d" * 32)
        assert found is not None and found.head == head and found.info == info
        storage.commit(h, WriteBatch(truncate=1, bitfield={0: bytes(4096)}))
        assert storage.get_block(h, 1) is None and storage.get_block(h, 0) == values[0]
        assert storage.get_node(h, 1) is None  # node 1 spans blocks 0 and 1
        assert storage.load_bitfield(h) == [(0, bytes(4096))]
        storage.set_meta("x", b"y")
        assert storage.get_meta("x") == b"y" and storage.get_meta("nope") is None
        assert storage.list_logs() == [b"k" * 32]
        storage.check(full=True)
        storage.close()


def test_lock_is_per_store_and_released(tmp_path: Path) -> None:
    a = SQLiteStorage(tmp_path / "s")
    with pytest.raises(StorageLockedError):
        SQLiteStorage(tmp_path / "s")
    ro = SQLiteStorage(tmp_path / "s", readonly=True)
    assert ro.readonly and ro.list_logs() == []
    ro.close()
    a.close()
    SQLiteStorage(tmp_path / "s").close()
    with pytest.raises(FileNotFoundError):
        SQLiteStorage(tmp_path / "missing", create=False)
    with pytest.raises(ValueError):
        SQLiteStorage(tmp_path / "t", durability="never")  # type: ignore[arg-type]


async def _make(path: Path) -> bytes:
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append([b"plain block %d" % i for i in range(50)] + [PATTERN])
        await log.append([b"tail"] * 10)
        return log.key


def _flip_in_file(path: Path, needle: bytes, offset: int = 3) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(needle)
    assert at >= 0, "pattern not found in the database file"
    data[at + offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_flipped_block_byte_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await _make(path)
    _flip_in_file(path / DB_FILENAME, PATTERN)
    async with open_store(path) as store:
        log = await store.default_log()
        assert await log.get(0) == b"plain block 0"
        with pytest.raises(CorruptStorageError, match="checksum"):
            await log.get(50)
        with pytest.raises(CorruptStorageError):
            await log.verify()


async def test_flipped_signature_is_reported_on_open(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append(b"one")
        signature = log.signature
    assert signature is not None
    _flip_in_file(path / DB_FILENAME, signature, offset=10)
    async with open_store(path) as store:
        with pytest.raises(CorruptStorageError, match="signature"):
            await store.default_log()


async def test_damaged_btree_page_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await _make(path)
    db = path / DB_FILENAME
    with db.open("r+b") as f:
        for page in range(1, db.stat().st_size // PAGE_SIZE):
            f.seek(page * PAGE_SIZE)
            f.write(b"\xff" * 16)  # an impossible page type and header
    with pytest.raises(CorruptStorageError):
        async with open_store(path) as store:
            log = await store.default_log()
            await store.check()
            await log.verify()


async def test_garbage_and_foreign_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / DB_FILENAME).write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(CorruptStorageError):
        async with open_store(garbage):
            pass  # pragma: no cover
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / DB_FILENAME)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptStorageError, match="not a hyperlog database"):
        async with open_store(foreign):
            pass  # pragma: no cover


@pytest.mark.parametrize("left", ["empty file", "empty WAL database"])
async def test_a_store_whose_creation_was_cut_short_opens(tmp_path: Path, left: str) -> None:
    # A kill (or an error) between creating the database file and committing its
    # schema left a file every later open refused as "not a hyperlog database".
    path = tmp_path / "s"
    path.mkdir()
    if left == "empty file":
        (path / DB_FILENAME).write_bytes(b"")
    else:
        conn = sqlite3.connect(path / DB_FILENAME)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.close()
    async with open_store(path) as store:
        log = await store.create_log()
        await log.append(b"after")
    async with open_store(path, readonly=True) as store:
        log = await store.default_log()
        assert await log.get(0) == b"after"
        await log.verify()


async def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await _make(path)
    db = path / DB_FILENAME
    db.write_bytes(db.read_bytes()[: 3 * PAGE_SIZE // 2])
    with pytest.raises(CorruptStorageError):
        async with open_store(path) as store:
            log = await store.default_log()
            await store.check()
            await log.verify()
