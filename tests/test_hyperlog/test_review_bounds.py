"""A log holds at most `MAX_LOG_LENGTH` (2**40) blocks, and nothing past it reaches storage.

The SQLite store keys a block row ``handle << 40 | index``: a block index of 2**40 or
more would be the row of another log in the same store. Remote proofs claiming such a
length, block or node are refused (`InvalidProofError`), local appends stop at the
limit, and the storage refuses (or, for reads, never looks up) such row keys itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperlog import flat_tree, merkle
from hyperlog.constants import MAX_LOG_LENGTH
from hyperlog.crypto import (
    TreeNode,
    Verifier,
    default_manifest,
    key_pair,
    leaf_hash,
    parent_hash,
    tree_hash,
)
from hyperlog.errors import InvalidProofError
from hyperlog.log import Log, open_store
from hyperlog.merkle import MerkleTree
from hyperlog.proof import (
    MAX_INDEX,
    BlockProof,
    HashProof,
    Proof,
    UpgradeProof,
    verify_proof,
)
from hyperlog.storage import MAX_BLOCK_INDEX, MemoryStorage, SQLiteStorage, Storage
from hyperlog.storage_types import LogInfo, WriteBatch


def _parent(index: int, a: TreeNode, b: TreeNode) -> TreeNode:
    size = a.size + b.size
    return TreeNode(index, size, parent_hash(a.hash, b.hash, size))


def _signer() -> tuple[Verifier, bytes]:
    kp = key_pair()
    return Verifier.from_manifest(default_manifest(kp.public_key)), kp.secret_key


def _upgrade(ver: Verifier, secret: bytes, roots: list[TreeNode], length: int) -> Proof:
    sig = ver.sign(tree_hash(roots), length, 0, secret)
    return Proof(
        0,
        upgrade=UpgradeProof(0, length, tuple(roots), (), sig),
        manifest=ver.manifest.encode(),
    )


async def _victim(log: Log) -> None:
    assert await log.get(5) == b"my block 5"
    await log.verify()


def test_limits_agree() -> None:
    assert MAX_LOG_LENGTH == 2**40
    assert MAX_BLOCK_INDEX == MAX_LOG_LENGTH - 1
    assert MAX_INDEX == 2 * MAX_LOG_LENGTH


async def test_a_proof_past_the_limit_cannot_overwrite_another_logs_block(tmp_path: Path) -> None:
    # The reviewer's attack (d08): a writer signs a head of 2**40 + 8 blocks and proves
    # block 2**40 + 5, whose row key is block 5 of the next log in the reader's store.
    ver, secret = _signer()
    first = MAX_LOG_LENGTH
    evil = b"ATTACKER-CONTROLLED"
    values = [evil if k == 5 else b"filler%d" % k for k in range(8)]
    leaves = [TreeNode(2 * (first + k), len(v), leaf_hash(v)) for k, v in enumerate(values)]
    d1 = [_parent(2 * (first + 2 * k) + 1, leaves[2 * k], leaves[2 * k + 1]) for k in range(4)]
    d2 = [_parent(2 * (first + 4 * k) + 3, d1[2 * k], d1[2 * k + 1]) for k in range(2)]
    right = _parent(2 * first + 7, d2[0], d2[1])
    left = TreeNode(MAX_LOG_LENGTH - 1, 123, b"\x11" * 32)
    up = _upgrade(ver, secret, [left, right], MAX_LOG_LENGTH + 8)
    block = BlockProof(first + 5, evil, (leaves[4], d1[3], d2[0]))
    async with open_store(tmp_path) as store:
        await store.create_log()
        attacker = await store.open_log(ver.key)
        mine = await store.create_log()
        await mine.append([b"my block %d" % i for i in range(10)])
        with pytest.raises(InvalidProofError, match="at most"):
            await attacker.apply_proof(up)
        both = Proof(0, block=block, upgrade=up.upgrade, manifest=up.manifest)
        with pytest.raises(InvalidProofError):
            await attacker.apply_proof(both)
        with pytest.raises(InvalidProofError):
            await attacker.apply_proof(Proof(0, block=block, manifest=up.manifest))
        assert attacker.length == 0
        await _victim(mine)


async def test_a_huge_signed_length_is_an_invalid_proof_not_an_overflow() -> None:
    # d18: at length 2**62 + 1 the SQLite commit raised a raw OverflowError.
    ver, secret = _signer()
    roots = [TreeNode(2**62 - 1, 1, b"\x01" * 32), TreeNode(2**63, 1, b"\x02" * 32)]
    async with open_store() as store:
        reader = await store.open_log(ver.key)
        with pytest.raises(InvalidProofError):
            await reader.apply_proof(_upgrade(ver, secret, roots, 2**62 + 1))
        assert reader.length == 0


async def test_a_log_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    # The bound is inclusive: 2**40 blocks, the last one at index 2**40 - 1, fit.
    ver, secret = _signer()
    last = MAX_BLOCK_INDEX
    value = b"the very last block"
    node = TreeNode(2 * last, len(value), leaf_hash(value))
    uncles = []
    while node.index != MAX_LOG_LENGTH - 1:
        sib = flat_tree.sibling(node.index)
        uncle = TreeNode(sib, flat_tree.count_leaves(sib), bytes([len(uncles)]) * 32)
        uncles.append(uncle)
        a, b = (uncle, node) if sib < node.index else (node, uncle)
        node = _parent(flat_tree.parent(node.index), a, b)
    async with open_store(tmp_path) as store:
        reader = await store.open_log(ver.key)
        mine = await store.create_log()
        await mine.append([b"my block %d" % i for i in range(10)])
        await reader.apply_proof(_upgrade(ver, secret, [node], MAX_LOG_LENGTH))
        assert reader.length == MAX_LOG_LENGTH
        result = await reader.apply_proof(Proof(0, block=BlockProof(last, value, tuple(uncles))))
        assert result.block == last
        assert await reader.get(last) == value
        await _victim(mine)
    async with open_store(tmp_path) as store:
        reader = await store.open_log(ver.key, create=False)
        assert reader.length == MAX_LOG_LENGTH
        assert await reader.get(last) == value


def test_verify_proof_refuses_indices_past_the_limit() -> None:
    ver, secret = _signer()
    tree = MerkleTree()
    value = b"x"
    leaf = TreeNode(2 * MAX_LOG_LENGTH, 1, leaf_hash(value))
    with pytest.raises(InvalidProofError, match="out of range"):
        verify_proof(tree, Proof(0, block=BlockProof(MAX_LOG_LENGTH, value, ())), ver, no_node)
    with pytest.raises(InvalidProofError, match="out of range"):
        verify_proof(tree, Proof(0, hash=HashProof(leaf.index, (leaf,))), ver, no_node)
    node = TreeNode(2 * MAX_LOG_LENGTH, 2, b"\x03" * 32)
    with pytest.raises(InvalidProofError, match="out of range"):
        verify_proof(tree, _upgrade(ver, secret, [node], 8), ver, no_node)
    with pytest.raises(InvalidProofError, match="at most"):
        verify_proof(tree, _upgrade(ver, secret, [node], MAX_LOG_LENGTH + 1), ver, no_node)


def no_node(index: int) -> None:
    return None


def _two_logs(storage: Storage) -> tuple[int, int]:
    handles = []
    for k in range(2):
        info = LogInfo(bytes([k]) * 32, bytes([k + 100]) * 32, None, None)
        handles.append(storage.create_log(info).handle)
    return handles[0], handles[1]


@pytest.mark.parametrize("backend", ["sqlite", "memory"])
def test_storage_never_writes_another_logs_rows(tmp_path: Path, backend: str) -> None:
    storage: Storage = SQLiteStorage(tmp_path) if backend == "sqlite" else MemoryStorage()
    try:
        mine, other = _two_logs(storage)
        value = b"the other log's block 0"
        storage.commit(other, WriteBatch(blocks=[(0, value, leaf_hash(value))]))
        evil = b"evil"
        bad_batches = [
            WriteBatch(blocks=[(MAX_LOG_LENGTH, evil, leaf_hash(evil))]),
            WriteBatch(blocks=[(-1, evil, leaf_hash(evil))]),
            WriteBatch(nodes=[TreeNode(2 * MAX_LOG_LENGTH, 4, b"\x05" * 32)]),
            WriteBatch(bitfield={1 << 32: b"\xff" * 4096}),
            WriteBatch(truncate=MAX_LOG_LENGTH + 1),
        ]
        for batch in bad_batches:
            with pytest.raises(ValueError):
                storage.commit(mine, batch)
        with pytest.raises(ValueError):
            storage.append_one(
                mine, evil, leaf_hash(evil), [], (0, MAX_LOG_LENGTH + 1, 4, b"\x00" * 32)
            )
        assert storage.get_block(other, 0) == value
        # reads past the limit are not another log's rows either
        assert storage.get_block(mine, MAX_LOG_LENGTH) is None
        assert storage.get_blocks(mine, [MAX_LOG_LENGTH, 0]) == [None, None]
        assert list(storage.iter_blocks(mine, 0, MAX_LOG_LENGTH + 10)) == []
        assert storage.get_node(mine, 2 * MAX_LOG_LENGTH) is None
        assert storage.get_node(mine, 1 << 42) is None
        assert storage.get_node(other, 0) is not None
    finally:
        storage.close()


def test_the_engine_appends_up_to_the_limit_and_no_further() -> None:
    length = MAX_LOG_LENGTH - 1
    roots = [
        TreeNode(i, flat_tree.count_leaves(i), bytes([k]) * 32)
        for k, i in enumerate(flat_tree.full_roots(2 * length))
    ]
    tree = MerkleTree(roots)
    assert tree.length == length
    with pytest.raises(ValueError, match="at most"):
        tree.append([b"a", b"b"])
    assert tree.append([b"a"]).length == MAX_LOG_LENGTH


async def test_append_stops_at_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(merkle, "MAX_LOG_LENGTH", 4)
    async with open_store() as store:
        log = await store.create_log()
        await log.append([b"a", b"b", b"c"])
        with pytest.raises(ValueError, match="at most 4 blocks"):
            await log.append([b"d", b"e"])
        assert log.length == 3
        await log.append(b"d")
        for data in (b"e", [b"e"], [b"e", b"f"], [b"e"] * 300):
            with pytest.raises(ValueError, match="at most 4 blocks"):
                await log.append(data)
        assert (log.length, await log.get(3)) == (4, b"d")
        await log.verify()
