"""The tree engine: append, truncate, byte offsets and seeks against a naive model."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperlog import crypto, flat_tree
from hyperlog.crypto import TreeNode
from hyperlog.errors import BlockNotAvailableError, CorruptStorageError
from hyperlog.merkle import (
    MerkleTree,
    StaleBatchError,
    byte_offset,
    byte_offset_indices,
    seek,
)
from tests.conftest import SHARED

VECTORS: dict[str, Any] = json.loads((SHARED / "vectors" / "hypercore.json").read_text())
KP = crypto.key_pair(bytes.fromhex(VECTORS["seed"]))
VERIFIER = crypto.Verifier.from_manifest(crypto.default_manifest(KP.public_key))


def nothing(index: int) -> TreeNode | None:
    return None


def naive_nodes(blocks: list[bytes]) -> dict[int, TreeNode]:
    """Every complete node of the tree over ``blocks``, built level by level."""
    nodes = {2 * i: crypto.leaf_node(i, b) for i, b in enumerate(blocks)}
    level = [nodes[2 * i] for i in range(len(blocks))]
    while len(level) > 1:
        nxt = []
        for j in range(0, len(level) - 1, 2):
            p = crypto.parent_node(flat_tree.parent(level[j].index), level[j], level[j + 1])
            nodes[p.index] = p
            nxt.append(p)
        level = nxt
    return nodes


def build(chunks: list[list[bytes]]) -> tuple[MerkleTree, dict[int, TreeNode]]:
    tree = MerkleTree()
    store: dict[int, TreeNode] = {}
    for chunk in chunks:
        batch = tree.append(chunk)
        batch.sign(VERIFIER, KP.secret_key)
        store.update((n.index, n) for n in batch.nodes)
        tree.apply(batch)
    return tree, store


def test_vector_tree_hash_and_signature() -> None:
    tree, store = build([[b.encode() for b in VECTORS["blocks"]]])
    assert tree.tree_hash().hex() == VECTORS["treeHash"]
    assert tree.signature is not None
    assert tree.signature.hex() == VECTORS["defaultManifestMode"]["signature"]
    assert {i: n for i, n in store.items()} == {
        n["index"]: TreeNode(n["index"], n["size"], bytes.fromhex(n["hash"]))
        for n in VECTORS["nodes"]
    }
    assert tree.verify_signature(VERIFIER)


blocks_st = st.lists(st.binary(max_size=40), min_size=0, max_size=70)


@given(blocks_st, st.data())
def test_append_in_any_chunking_equals_naive(blocks: list[bytes], data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blocks)), max_size=6)))
    chunks, prev = [], 0
    for c in [*cuts, len(blocks)]:
        chunks.append(blocks[prev:c])
        prev = c
    tree, store = build(chunks)
    expected = naive_nodes(blocks)
    assert store == expected
    assert tree.length == len(blocks)
    assert tree.byte_length == sum(map(len, blocks))
    assert [r.index for r in tree.roots] == flat_tree.full_roots(2 * len(blocks))
    assert tree.roots == [expected[i] for i in flat_tree.full_roots(2 * len(blocks))]
    assert MerkleTree.from_storage(tree.length, store.get).tree_hash() == tree.tree_hash()


@given(st.lists(st.binary(min_size=0, max_size=9), min_size=1, max_size=60), st.data())
def test_byte_offset_and_seek(blocks: list[bytes], data: st.DataObject) -> None:
    tree, store = build([blocks])
    i = data.draw(st.integers(0, len(blocks) - 1))
    assert byte_offset(tree, i, store.get) == sum(map(len, blocks[:i]))
    needed = set(byte_offset_indices(i, tree.length))
    assert byte_offset(tree, i, lambda n: store[n] if n in needed else None) >= 0
    if tree.byte_length:
        off = data.draw(st.integers(0, tree.byte_length - 1))
        blk, inner = seek(tree, off, store.get)
        assert sum(map(len, blocks[:blk])) + inner == off
        assert 0 <= inner < len(blocks[blk])
    with pytest.raises(IndexError):
        seek(tree, tree.byte_length, store.get)


def test_seek_with_padding() -> None:
    blocks = [b"x" * 10, b"y" * 12, b"z" * 9]
    tree, store = build([blocks])
    # padding 8: usable sizes 2, 4, 1
    assert seek(tree, 0, store.get, padding=8) == (0, 0)
    assert seek(tree, 2, store.get, padding=8) == (1, 0)
    assert seek(tree, 6, store.get, padding=8) == (2, 0)


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=40), st.data())
def test_truncate(blocks: list[bytes], data: st.DataObject) -> None:
    tree, store = build([blocks])
    new_len = data.draw(st.integers(0, len(blocks)))
    batch = tree.truncate(new_len, store.get)
    assert batch.fork == 1
    assert batch.length == new_len
    short, short_store = build([blocks[:new_len]])
    assert batch.tree_hash == short.tree_hash()
    assert batch.byte_length == short.byte_length
    # deleting what the batch says leaves exactly the shorter tree's nodes
    kept = {
        i: n
        for i, n in store.items()
        if i < batch.delete_nodes_from and i not in batch.delete_nodes
    }
    assert kept == short_store
    batch.sign(VERIFIER, KP.secret_key)
    tree.apply(batch)
    assert tree.fork == 1 and tree.length == new_len
    assert tree.verify_signature(VERIFIER)
    # appending again continues on the new fork
    again = tree.append([b"new"])
    assert again.fork == 1 and again.length == new_len + 1


def test_truncate_rejects_bad_arguments() -> None:
    tree, store = build([[b"a", b"b", b"c"]])
    with pytest.raises(ValueError):
        tree.truncate(4, store.get)
    with pytest.raises(ValueError):
        tree.truncate(1, store.get, fork=0)
    with pytest.raises(BlockNotAvailableError):
        tree.truncate(2, nothing)


def test_stale_batches_are_refused() -> None:
    tree = MerkleTree()
    first = tree.append([b"a"])
    second = tree.append([b"b"])
    tree.apply(first)
    with pytest.raises(StaleBatchError):
        tree.apply(second)


def test_corrupt_roots_are_refused() -> None:
    _, store = build([[b"a", b"b", b"c"]])
    with pytest.raises(CorruptStorageError):
        MerkleTree([store[0], store[4]])
    with pytest.raises(CorruptStorageError):
        MerkleTree.from_storage(3, nothing)
    with pytest.raises(CorruptStorageError):
        MerkleTree([TreeNode(0, 1, b"short")])


def test_snapshot_is_independent() -> None:
    tree, _ = build([[b"a"]])
    snap = tree.snapshot()
    tree.apply(tree.append([b"b"]))
    assert snap.length == 1 and tree.length == 2
    assert snap.tree_hash() != tree.tree_hash()
