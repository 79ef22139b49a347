"""Proofs: every honest proof verifies, every flipped bit and every wrong context fails."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hyperlog import crypto, flat_tree
from hyperlog.crypto import TreeNode
from hyperlog.errors import InvalidProofError, InvalidRequestError, InvalidSignatureError
from hyperlog.merkle import MerkleTree, byte_offset
from hyperlog.proof import (
    BlockRequest,
    HashRequest,
    Proof,
    ProofRequest,
    SeekRequest,
    UpgradeRequest,
    create_proof,
    missing_nodes,
    missing_nodes_candidates,
    proof_node_indices,
    verify_proof,
)

KP = crypto.key_pair(b"\x01" * 32)
VERIFIER = crypto.Verifier.from_manifest(crypto.default_manifest(KP.public_key))
OTHER = crypto.key_pair(b"\x02" * 32)
OTHER_VERIFIER = crypto.Verifier.from_manifest(crypto.default_manifest(OTHER.public_key))


def nothing(index: int) -> TreeNode | None:
    return None


class Holder:
    """A writer with every node and block, able to answer any request."""

    def __init__(self, blocks: list[bytes], chunk: int = 7) -> None:
        self.blocks = blocks
        self.tree = MerkleTree()
        self.store: dict[int, TreeNode] = {}
        for i in range(0, len(blocks), chunk):
            self.append(blocks[i : i + chunk])

    def append(self, chunk: list[bytes]) -> None:
        batch = self.tree.append(chunk)
        batch.sign(VERIFIER, KP.secret_key)
        self.store.update((n.index, n) for n in batch.nodes)
        self.tree.apply(batch)

    def truncate(self, length: int) -> None:
        batch = self.tree.truncate(length, self.store.get)
        batch.sign(VERIFIER, KP.secret_key)
        self.tree.apply(batch)
        for i in [*self.store]:
            if i >= batch.delete_nodes_from or i in batch.delete_nodes:
                del self.store[i]
        self.blocks = self.blocks[:length]

    def prove(self, req: ProofRequest, manifest: bool = False) -> Proof:
        value = None
        if req.block is not None and 0 <= req.block.index < len(self.blocks):
            value = self.blocks[req.block.index]
        needed = set(proof_node_indices(self.tree, req))
        assert needed <= set(self.store)
        store = self.store

        def prefetched(i: int) -> TreeNode | None:
            # without a seek, the proof reads exactly the nodes proof_node_indices listed
            return store.get(i) if req.seek is not None or i in needed else None

        return create_proof(
            self.tree,
            req,
            prefetched,
            value=value,
            manifest=VERIFIER.manifest.encode() if manifest else None,
        )


class Reader:
    """A reader that trusts the holder's head at `length` and stores some of its nodes."""

    def __init__(self, holder: Holder, length: int, extra: Iterable[int] = ()) -> None:
        full = {i: n for i, n in holder.store.items() if flat_tree.right_span(i) < 2 * length}
        self.tree = MerkleTree.from_storage(length, full.get)
        self.tree.signature = b"\x00" * 64  # the reader trusts this head already
        self.store = {r.index: r for r in self.tree.roots}
        self.store.update((i, full[i]) for i in extra if i in full)

    def has(self, i: int) -> bool:
        return i in self.store


def distinct_blocks(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [b"%d:" % i + rng.randbytes(rng.randint(0, 12)) for i in range(n)]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Holder, Reader, ProofRequest, int]:
    n = draw(st.integers(1, 90))
    holder = Holder(distinct_blocks(n, draw(st.integers(0, 2**32))), draw(st.integers(1, 9)))
    length = draw(st.integers(0, n))
    extra = set(draw(st.lists(st.integers(0, 2 * max(length, 1)), max_size=20)))
    reader = Reader(holder, length, extra)
    upgrade = None
    to = length
    if length < n and (length == 0 or draw(st.booleans())):
        to = draw(st.integers(length + 1, n))
        upgrade = UpgradeRequest(length, to - length)
    kind = draw(st.sampled_from(["block", "hash", "seek", "none"]))
    if kind == "seek" and upgrade is None and length < n:
        kind = "block"  # a seek without an upgrade needs the holder's length
    if kind == "none" and upgrade is None:
        kind = "block"  # nothing to upgrade: ask for a block the reader can anchor
    padding = 0
    req = ProofRequest(0, upgrade=upgrade)
    if kind == "block":
        i = draw(st.integers(0, to - 1))
        nodes = missing_nodes(2 * i, length, reader.has) if 2 * i < 2 * length else 0
        req = dataclasses.replace(req, block=BlockRequest(i, nodes))
    elif kind == "hash":
        leaf = 2 * draw(st.integers(0, to - 1))
        up_levels = draw(st.integers(0, 6))
        index = leaf
        for _ in range(up_levels):
            p = flat_tree.parent(index)
            if flat_tree.right_span(p) >= 2 * to:
                break
            if flat_tree.left_span(p) < 2 * length <= flat_tree.right_span(p):
                break  # would straddle the reader's length
            index = p
        inside = flat_tree.right_span(index) < 2 * length
        nodes = missing_nodes(index, length, reader.has) if inside else 0
        req = dataclasses.replace(req, hash=HashRequest(index, nodes))
    elif kind == "seek":
        total = sum(len(b) for b in holder.blocks[:to])
        if total == 0:
            req = dataclasses.replace(req, block=BlockRequest(0, 0)) if to else req
        else:
            padding = draw(st.sampled_from([0, 0, 1]))
            sizes = [len(b) - padding for b in holder.blocks[:to]]
            if min(sizes) < 0 or sum(sizes) <= 0:
                padding = 0
                sizes = [len(b) for b in holder.blocks[:to]]
            byte = draw(st.integers(0, sum(sizes) - 1))
            req = dataclasses.replace(req, seek=SeekRequest(byte, padding))
    return holder, reader, req, padding


def _check_batch(holder: Holder, reader: Reader, req: ProofRequest, padding: int) -> Proof:
    proof = holder.prove(req)
    batch = verify_proof(reader.tree, proof, VERIFIER, reader.store.get, seek_padding=padding)
    for node in batch.nodes:
        assert holder.store[node.index] == node  # everything verified is the real tree
    if req.block is not None:
        assert batch.block == (req.block.index, holder.blocks[req.block.index])
    if req.hash is not None:
        assert batch.hash == holder.store[req.hash.index]
    if req.seek is not None:
        assert batch.seek is not None
        blk, off = batch.seek
        sizes = [len(b) - padding for b in holder.blocks]
        assert sum(sizes[:blk]) + off == req.seek.bytes
        assert 0 <= off < sizes[blk]
    if req.upgrade is not None:
        assert batch.upgraded and batch.length == holder.tree.length
        batch.apply_to(reader.tree)
        assert reader.tree.tree_hash() == holder.tree.tree_hash()
        assert reader.tree.byte_length == holder.tree.byte_length
    return proof


@given(scenarios())
def test_every_honest_proof_verifies(s: tuple[Holder, Reader, ProofRequest, int]) -> None:
    _check_batch(*s)


def _flip_int(v: int, bit: int) -> int:
    return v ^ (1 << bit)


def _flip_bytes(b: bytes, pos: int) -> bytes:
    if not b:
        return b"\x00"
    pos %= len(b) * 8
    out = bytearray(b)
    out[pos // 8] ^= 1 << (pos % 8)
    return bytes(out)


def _node_mutations(nodes: tuple[TreeNode, ...], rng: random.Random) -> Iterator[Any]:
    for k, n in enumerate(nodes):
        for field, val in (
            ("index", TreeNode(_flip_int(n.index, rng.choice([0, 1, 2, 5])), n.size, n.hash)),
            ("size", TreeNode(n.index, _flip_int(n.size, rng.choice([0, 3, 40])), n.hash)),
            ("hash", TreeNode(n.index, n.size, _flip_bytes(n.hash, rng.randrange(256)))),
        ):
            yield f"nodes[{k}].{field}", (*nodes[:k], val, *nodes[k + 1 :])


def mutations(proof: Proof, rng: random.Random) -> Iterator[tuple[str, Proof]]:
    """Every field of the proof, each with one bit flipped."""
    for bit in (0, 1, 3):
        yield "fork", dataclasses.replace(proof, fork=_flip_int(proof.fork, bit))
    if proof.block is not None:
        b = proof.block
        yield (
            "block.index",
            dataclasses.replace(
                proof, block=dataclasses.replace(b, index=_flip_int(b.index, rng.choice([0, 1, 4])))
            ),
        )
        yield (
            "block.value",
            dataclasses.replace(
                proof, block=dataclasses.replace(b, value=_flip_bytes(b.value, rng.randrange(999)))
            ),
        )
        for name, nodes in _node_mutations(b.nodes, rng):
            yield (
                f"block.{name}",
                dataclasses.replace(proof, block=dataclasses.replace(b, nodes=nodes)),
            )
    if proof.hash is not None:
        h = proof.hash
        yield (
            "hash.index",
            dataclasses.replace(
                proof, hash=dataclasses.replace(h, index=_flip_int(h.index, rng.choice([0, 1, 4])))
            ),
        )
        for name, nodes in _node_mutations(h.nodes, rng):
            yield (
                f"hash.{name}",
                dataclasses.replace(proof, hash=dataclasses.replace(h, nodes=nodes)),
            )
    if proof.seek is not None:
        sk = proof.seek
        yield (
            "seek.bytes",
            dataclasses.replace(
                proof,
                seek=dataclasses.replace(sk, bytes=_flip_int(sk.bytes, rng.choice([0, 2, 6]))),
            ),
        )
        for name, nodes in _node_mutations(sk.nodes, rng):
            yield (
                f"seek.{name}",
                dataclasses.replace(proof, seek=dataclasses.replace(sk, nodes=nodes)),
            )
    if proof.upgrade is not None:
        u = proof.upgrade
        for bit in (0, 1, 2, 5):
            yield (
                "upgrade.start",
                dataclasses.replace(
                    proof, upgrade=dataclasses.replace(u, start=_flip_int(u.start, bit))
                ),
            )
            yield (
                "upgrade.length",
                dataclasses.replace(
                    proof, upgrade=dataclasses.replace(u, length=_flip_int(u.length, bit))
                ),
            )
        yield (
            "upgrade.signature",
            dataclasses.replace(
                proof,
                upgrade=dataclasses.replace(
                    u, signature=_flip_bytes(u.signature, rng.randrange(512))
                ),
            ),
        )
        for name, nodes in _node_mutations(u.nodes, rng):
            yield (
                f"upgrade.{name}",
                dataclasses.replace(proof, upgrade=dataclasses.replace(u, nodes=nodes)),
            )
        for name, nodes in _node_mutations(u.additional_nodes, rng):
            yield (
                f"upgrade.additional_{name}",
                dataclasses.replace(proof, upgrade=dataclasses.replace(u, additional_nodes=nodes)),
            )
    if proof.manifest is not None:
        yield (
            "manifest",
            dataclasses.replace(proof, manifest=_flip_bytes(proof.manifest, rng.randrange(560))),
        )


@settings(max_examples=60)
@given(scenarios(), st.integers(0, 2**32))
def test_any_flipped_bit_fails(s: tuple[Holder, Reader, ProofRequest, int], seed: int) -> None:
    holder, reader, req, padding = s
    proof = holder.prove(dataclasses.replace(req, manifest=True), manifest=True)
    assert proof.manifest is not None
    rng = random.Random(seed)
    before = (reader.tree.tree_hash(), reader.tree.length, dict(reader.store))
    count = 0
    for name, bad in mutations(proof, rng):
        count += 1
        if name == "seek.bytes" and bad.seek is not None:
            # the echoed offset is not authenticated, only checked to lie in the leaf
            try:
                batch = verify_proof(
                    reader.tree, bad, VERIFIER, reader.store.get, seek_padding=padding
                )
            except InvalidProofError:
                continue
            assert batch.seek is not None
            blk, off = batch.seek
            sizes = [len(b) - padding for b in holder.blocks]
            assert sum(sizes[:blk]) + off == bad.seek.bytes
            assert 0 <= off < sizes[blk]  # the proven leaf really holds the byte
            continue
        with pytest.raises(InvalidProofError):
            verify_proof(reader.tree, bad, VERIFIER, reader.store.get, seek_padding=padding)
    assert count > 3
    # failed verifications changed nothing
    assert before == (reader.tree.tree_hash(), reader.tree.length, dict(reader.store))


@given(scenarios())
def test_wrong_key_fork_or_length_fails(s: tuple[Holder, Reader, ProofRequest, int]) -> None:
    holder, reader, req, padding = s
    proof = holder.prove(req)
    if proof.upgrade is not None:
        with pytest.raises(InvalidSignatureError):
            verify_proof(reader.tree, proof, OTHER_VERIFIER, reader.store.get, seek_padding=padding)
        # a reader of another length cannot use an upgrade from this one
        other_len = reader.tree.length + 1 if reader.tree.length < holder.tree.length else 0
        if other_len != reader.tree.length and other_len <= holder.tree.length:
            other = Reader(holder, other_len)
            with pytest.raises(InvalidProofError):
                verify_proof(other.tree, proof, VERIFIER, other.store.get, seek_padding=padding)
    # a reader on a later fork refuses proofs of an older one
    later = reader.tree.snapshot()
    later.fork = 1
    with pytest.raises(InvalidProofError):
        verify_proof(later, proof, VERIFIER, reader.store.get, seek_padding=padding)


def test_proof_against_another_logs_nodes_fails() -> None:
    holder = Holder(distinct_blocks(20, 1))
    impostor = Holder(distinct_blocks(20, 2))
    reader = Reader(holder, 20, set(range(0, 40)))
    req = ProofRequest(0, block=BlockRequest(5, missing_nodes(10, 20, lambda i: False)))
    with pytest.raises(InvalidProofError):
        verify_proof(reader.tree, impostor.prove(req), VERIFIER, reader.store.get)


def test_vector_shape_block2_length5() -> None:
    holder = Holder([b"hello", b"world", b"hyper", b"log", b"!"], chunk=5)
    proof = holder.prove(ProofRequest(0, block=BlockRequest(2, 0), upgrade=UpgradeRequest(0, 5)))
    assert proof.block is not None and proof.upgrade is not None
    assert [n.index for n in proof.block.nodes] == [6, 1]
    assert [n.index for n in proof.upgrade.nodes] == [8]
    assert proof.upgrade.additional_nodes == ()


def test_additional_nodes_upgrade_past_requested_length() -> None:
    holder = Holder(distinct_blocks(8, 3), chunk=8)
    proof = holder.prove(ProofRequest(0, upgrade=UpgradeRequest(0, 5)))
    assert proof.upgrade is not None
    assert [n.index for n in proof.upgrade.nodes] == [3, 8]
    assert [n.index for n in proof.upgrade.additional_nodes] == [10, 13]
    reader = Reader(holder, 0)
    batch = verify_proof(reader.tree, proof, VERIFIER, reader.store.get)
    assert batch.length == 8


@pytest.mark.parametrize("start", [1, 3, 4, 5, 6, 7, 9, 16, 31])
def test_upgrade_from_each_reader_length(start: int) -> None:
    holder = Holder(distinct_blocks(40, start), chunk=40)
    reader = Reader(holder, start)
    for step in range(1, 40 - start + 1):
        proof = holder.prove(ProofRequest(0, upgrade=UpgradeRequest(start, step)))
        batch = verify_proof(reader.tree, proof, VERIFIER, reader.store.get)
        assert batch.length == 40 and batch.tree_hash == holder.tree.tree_hash()


def test_missing_nodes() -> None:
    holder = Holder(distinct_blocks(16, 4), chunk=16)
    reader = Reader(holder, 16, {5})
    assert missing_nodes_candidates(4, 16) == [4, 5, 3, 7, 15]
    assert missing_nodes(4, 16, reader.has) == 1  # node 5 is stored
    assert missing_nodes(8, 16, reader.has) == 4  # walks up to the root 15
    assert missing_nodes(40, 16, reader.has) == 0  # outside the tree
    # the proof with that count anchors on node 5
    proof = holder.prove(ProofRequest(0, block=BlockRequest(2, 1)))
    assert proof.block is not None and [n.index for n in proof.block.nodes] == [6]
    batch = verify_proof(reader.tree, proof, VERIFIER, reader.store.get)
    assert batch.block == (2, holder.blocks[2])


def test_manifest_travels_with_the_proof() -> None:
    holder = Holder(distinct_blocks(10, 5))
    reader = MerkleTree()
    req = ProofRequest(0, block=BlockRequest(3, 0), upgrade=UpgradeRequest(0, 10), manifest=True)
    proof = holder.prove(req, manifest=True)
    batch = verify_proof(reader, proof, VERIFIER.key, nothing)
    assert batch.verifier is not None and batch.verifier.key == VERIFIER.key
    without = dataclasses.replace(proof, manifest=None)
    with pytest.raises(InvalidProofError):
        verify_proof(reader, without, VERIFIER.key, nothing)
    with pytest.raises(InvalidProofError):
        verify_proof(reader, proof, OTHER_VERIFIER.key, nothing)


def test_fork_change_needs_full_upgrade() -> None:
    holder = Holder(distinct_blocks(12, 6))
    reader = Reader(holder, 12)
    holder.truncate(7)
    holder.append([b"fork1:%d" % i for i in range(5)])
    holder.blocks += [b"fork1:%d" % i for i in range(5)]
    assert holder.tree.fork == 1
    full = holder.prove(ProofRequest(1, block=BlockRequest(9, 0), upgrade=UpgradeRequest(0, 12)))
    batch = verify_proof(reader.tree, full, VERIFIER, reader.store.get)
    assert batch.is_fork_change and batch.fork == 1 and batch.length == 12
    batch.apply_to(reader.tree)
    assert reader.tree.tree_hash() == holder.tree.tree_hash()
    with pytest.raises(InvalidRequestError):
        holder.prove(ProofRequest(0, upgrade=UpgradeRequest(0, 12)))


@pytest.mark.parametrize(
    "req",
    [
        ProofRequest(1, block=BlockRequest(0, 0)),
        ProofRequest(0),
        ProofRequest(0, block=BlockRequest(10, 0)),
        ProofRequest(0, block=BlockRequest(-1, 0)),
        ProofRequest(0, block=BlockRequest(1, 30)),
        ProofRequest(0, block=BlockRequest(1, 0), hash=HashRequest(1, 0)),
        ProofRequest(0, block=BlockRequest(1, 0), seek=SeekRequest(3)),
        ProofRequest(0, hash=HashRequest(15, 0)),
        ProofRequest(0, upgrade=UpgradeRequest(0, 11)),
        ProofRequest(0, upgrade=UpgradeRequest(4, 0)),
        ProofRequest(0, seek=SeekRequest(10**6)),
        ProofRequest(0, seek=SeekRequest(1, padding=-1)),
        ProofRequest(0, hash=HashRequest(9, 0), upgrade=UpgradeRequest(5, 5)),
    ],
)
def test_bad_requests_are_refused(req: ProofRequest) -> None:
    holder = Holder(distinct_blocks(10, 7))
    with pytest.raises(InvalidRequestError):
        holder.prove(req)


def test_byte_offset_after_sparse_download() -> None:
    holder = Holder(distinct_blocks(33, 8))
    reader = Reader(holder, 0)
    proof = holder.prove(ProofRequest(0, block=BlockRequest(20, 0), upgrade=UpgradeRequest(0, 33)))
    batch = verify_proof(reader.tree, proof, VERIFIER, reader.store.get)
    reader.store.update((n.index, n) for n in batch.nodes)
    batch.apply_to(reader.tree)
    assert byte_offset(reader.tree, 20, reader.store.get) == sum(len(b) for b in holder.blocks[:20])


def test_seek_without_upgrade_and_from_inside_the_trusted_tree() -> None:
    holder = Holder(distinct_blocks(21, 9))
    sizes = [len(b) for b in holder.blocks]
    full = Reader(holder, 21)
    for byte in (0, 1, sum(sizes[:7]), sum(sizes) - 1):
        proof = holder.prove(ProofRequest(0, seek=SeekRequest(byte)))
        batch = verify_proof(full.tree, proof, VERIFIER, full.store.get)
        assert batch.seek is not None and not batch.upgraded
        blk, off = batch.seek
        assert sum(sizes[:blk]) + off == byte
    # a reader of length 12 seeking into its own part while upgrading
    part = Reader(holder, 12)
    proof = holder.prove(ProofRequest(0, seek=SeekRequest(3), upgrade=UpgradeRequest(12, 9)))
    batch = verify_proof(part.tree, proof, VERIFIER, part.store.get)
    assert batch.seek == (0, 3) and batch.length == 21


def test_compat_log_proofs() -> None:
    verifier = crypto.Verifier.compat(KP.public_key)
    tree = MerkleTree()
    blocks = distinct_blocks(13, 10)
    batch = tree.append(blocks)
    batch.sign(verifier, KP.secret_key)
    store = {n.index: n for n in batch.nodes}
    tree.apply(batch)
    req = ProofRequest(0, block=BlockRequest(11, 0), upgrade=UpgradeRequest(0, 13))
    proof = create_proof(tree, req, store.get, value=blocks[11])
    got = verify_proof(MerkleTree(), proof, verifier, nothing)
    assert got.block == (11, blocks[11]) and got.length == 13
    with pytest.raises(InvalidSignatureError):
        verify_proof(MerkleTree(), proof, VERIFIER, nothing)  # manifest mode, same key pair


@pytest.mark.parametrize("seed", range(3))
def test_large_tree_random_requests(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(2000, 5000)
    holder = Holder(distinct_blocks(n, seed), chunk=rng.randint(1, 500))
    for _ in range(40):
        length = rng.randint(0, n - 1)
        reader = Reader(holder, length)
        i = rng.randrange(n)
        if i < length and rng.random() < 0.5:
            req = ProofRequest(0, block=BlockRequest(i, missing_nodes(2 * i, length, reader.has)))
        else:
            to = rng.randint(max(length, i) + 1, n)
            nodes = missing_nodes(2 * i, length, reader.has) if i < length else 0
            req = ProofRequest(
                0, block=BlockRequest(i, nodes), upgrade=UpgradeRequest(length, to - length)
            )
        _check_batch(holder, reader, req, 0)


@given(
    st.integers(1, 60),
    st.integers(0, 2**32),
    st.data(),
)
def test_fork_change_proofs(n: int, seed: int, data: st.DataObject) -> None:
    holder = Holder(distinct_blocks(n, seed), chunk=data.draw(st.integers(1, 9)))
    reader = Reader(holder, data.draw(st.integers(0, n)))
    cut = data.draw(st.integers(0, n))
    holder.truncate(cut)
    extra = [b"fork1-%d" % i for i in range(data.draw(st.integers(0 if cut else 1, 20)))]
    if extra:
        holder.append(extra)
        holder.blocks += extra
    m = holder.tree.length
    i = data.draw(st.integers(0, m - 1))
    proof = holder.prove(ProofRequest(1, block=BlockRequest(i, 0), upgrade=UpgradeRequest(0, m)))
    batch = verify_proof(reader.tree, proof, VERIFIER, reader.store.get)
    assert batch.is_fork_change and batch.fork == 1 and batch.length == m
    assert batch.block == (i, holder.blocks[i])
    for node in batch.nodes:
        assert holder.store[node.index] == node
    # a new fork's data is only accepted as a full upgrade
    if 0 < reader.tree.length < m:
        start = reader.tree.length
        partial = holder.prove(ProofRequest(1, upgrade=UpgradeRequest(start, m - start)))
        with pytest.raises(InvalidProofError):
            verify_proof(reader.tree, partial, VERIFIER, reader.store.get)
    plain = holder.prove(ProofRequest(1, block=BlockRequest(i, 0)))
    with pytest.raises(InvalidProofError):
        verify_proof(reader.tree, plain, VERIFIER, reader.store.get)
    batch.apply_to(reader.tree)
    assert reader.tree.fork == 1 and reader.tree.tree_hash() == holder.tree.tree_hash()


def test_manifest_only_request() -> None:
    holder = Holder(distinct_blocks(4, 11))
    proof = holder.prove(ProofRequest(0, manifest=True), manifest=True)
    assert proof.manifest is not None and proof.upgrade is None and proof.block is None
    reader = MerkleTree()
    batch = verify_proof(reader, proof, VERIFIER.key, nothing)
    assert batch.verifier is not None and not batch.upgraded and batch.nodes == []
    with pytest.raises(InvalidProofError):
        verify_proof(reader, dataclasses.replace(proof, manifest=None), VERIFIER.key, nothing)


@given(scenarios(), st.data())
def test_extra_or_missing_upgrade_nodes_fail(
    s: tuple[Holder, Reader, ProofRequest, int], data: st.DataObject
) -> None:
    holder, reader, req, padding = s
    proof = holder.prove(req)
    spare = TreeNode(2**40 + 1, 1, bytes(32))  # never anybody's sibling or root
    variants: list[Proof] = []
    if proof.upgrade is not None:
        u = proof.upgrade
        variants.append(
            dataclasses.replace(proof, upgrade=dataclasses.replace(u, nodes=(*u.nodes, spare)))
        )
        if u.nodes:
            variants.append(
                dataclasses.replace(proof, upgrade=dataclasses.replace(u, nodes=u.nodes[:-1]))
            )
    for part in ("block", "hash", "seek"):
        p = getattr(proof, part)
        if p is not None:
            more = dataclasses.replace(p, nodes=(*p.nodes, spare))
            variants.append(dataclasses.replace(proof, **{part: more}))
    for bad in variants:
        with pytest.raises(InvalidProofError):
            verify_proof(reader.tree, bad, VERIFIER, reader.store.get, seek_padding=padding)


def test_seek_bytes_outside_the_proven_leaf_fail() -> None:
    holder = Holder(distinct_blocks(30, 12))
    reader = Reader(holder, 0)
    proof = holder.prove(ProofRequest(0, seek=SeekRequest(5), upgrade=UpgradeRequest(0, 30)))
    assert proof.seek is not None
    moved = dataclasses.replace(proof, seek=dataclasses.replace(proof.seek, bytes=200))
    with pytest.raises(InvalidProofError):
        verify_proof(reader.tree, moved, VERIFIER, reader.store.get)
