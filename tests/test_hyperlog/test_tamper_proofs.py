"""A reader refuses every tampered proof and stores nothing from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperlog.crypto import TreeNode, key_pair
from hyperlog.errors import InvalidProofError, InvalidSignatureError
from hyperlog.log import Log, Store, open_store
from hyperlog.proof import BlockRequest, Proof, ProofRequest, UpgradeRequest
from hyperlog.storage import MemoryStorage

SEED = bytes(range(32))


def _blocks(n: int) -> list[bytes]:
    return [f"block {i} ".encode() * (1 + i % 5) for i in range(n)]


def _request(reader: Log, writer: Log, index: int) -> ProofRequest:
    upgrade = None
    if reader.length < writer.length:
        upgrade = UpgradeRequest(reader.length, writer.length - reader.length)
    nodes = reader.missing_nodes(index) if index < reader.length else 0
    return ProofRequest(
        writer.fork,
        block=BlockRequest(index, nodes),
        upgrade=upgrade,
        manifest=reader.manifest is None,
    )


def _state(store: Store, log: Log) -> dict[str, Any]:
    """Everything the reader's storage holds for the log, for before/after comparisons."""
    storage = store.storage
    stored = storage.find_log(log.key)
    assert stored is not None
    handle = stored.handle
    top = 2 * 64
    return {
        "head": stored.head,
        "manifest": stored.info.manifest,
        "blocks": list(storage.iter_blocks(handle, 0, 1 << 20)),
        "nodes": [storage.get_node(handle, i) for i in range(top)],
        "bits": storage.load_bitfield(handle),
        "memory": (log.length, log.fork, log.signature, list(log.bitfield)),
    }


def _flip(proof: Proof, path: tuple[str, ...], bit: int) -> Proof:
    """Return ``proof`` with one bit flipped in the field at ``path``."""

    def flip_bytes(b: bytes) -> bytes:
        if not b:
            return b"\x01"
        k = bit % (8 * len(b))
        out = bytearray(b)
        out[k // 8] ^= 1 << (k % 8)
        return bytes(out)

    def flip_int(n: int) -> int:
        return n ^ (1 << (bit % 16))

    def walk(obj: Any, rest: tuple[str, ...]) -> Any:
        if not rest:
            if isinstance(obj, bytes):
                return flip_bytes(obj)
            return flip_int(obj)
        head, *tail = rest
        if head.isdigit():
            items = list(obj)
            items[int(head)] = walk(items[int(head)], tuple(tail))
            return tuple(items)
        return dataclasses.replace(obj, **{head: walk(getattr(obj, head), tuple(tail))})

    result: Proof = walk(proof, path)
    return result


def _fields(proof: Proof) -> list[tuple[str, ...]]:
    """Every flippable leaf field of a proof."""
    out: list[tuple[str, ...]] = [("fork",)]
    if proof.block is not None:
        out += [("block", "index"), ("block", "value")]
        for k in range(len(proof.block.nodes)):
            out += [("block", "nodes", str(k), f) for f in ("index", "size", "hash")]
    if proof.upgrade is not None:
        out += [("upgrade", "start"), ("upgrade", "length"), ("upgrade", "signature")]
        for name in ("nodes", "additional_nodes"):
            for k in range(len(getattr(proof.upgrade, name))):
                out += [("upgrade", name, str(k), f) for f in ("index", "size", "hash")]
    return out


async def _pair(length: int) -> tuple[Store, Log, Store, Log]:
    wstore = Store(MemoryStorage())
    writer = await wstore.create_log(key_pair(SEED))
    await writer.append(_blocks(length))
    rstore = Store(MemoryStorage())
    reader = await rstore.open_log(writer.key)
    return wstore, writer, rstore, reader


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(
    length=st.integers(1, 40),
    first=st.integers(0, 39),
    second=st.integers(0, 39),
    pick=st.integers(0, 10_000),
    bit=st.integers(0, 10_000),
)
def test_any_flipped_bit_is_refused_and_nothing_stored(
    length: int, first: int, second: int, pick: int, bit: int
) -> None:
    async def main() -> None:
        _, writer, rstore, reader = await _pair(length)
        # The reader first trusts one honest block (so later proofs use stored nodes).
        await reader.apply_proof(writer.create_proof(_request(reader, writer, first % length)))
        await writer.append(_blocks(length + 3)[length:])  # and the writer moved on
        honest = writer.create_proof(_request(reader, writer, second % length))
        fields = _fields(honest)
        bad = _flip(honest, fields[pick % len(fields)], bit)
        before = _state(rstore, reader)
        with pytest.raises(InvalidProofError):
            await reader.apply_proof(bad)
        assert _state(rstore, reader) == before
        # the honest proof still applies afterwards
        result = await reader.apply_proof(honest)
        assert result.block == second % length and result.upgraded
        assert await reader.get(second % length) == _blocks(length)[second % length]

    trio.run(main)


async def test_wrong_signature_and_foreign_head_are_refused(tmp_path: Path) -> None:
    _, writer, _, _ = await _pair(10)
    # a second writer with another key, same blocks
    other = await Store(MemoryStorage()).create_log(key_pair(bytes(32)))
    await other.append(_blocks(10))
    async with open_store(tmp_path / "reader") as rstore:
        reader = await rstore.open_log(writer.key)
        honest = writer.create_proof(_request(reader, writer, 3))
        assert honest.upgrade is not None
        forged = dataclasses.replace(
            honest, upgrade=dataclasses.replace(honest.upgrade, signature=bytes(64))
        )
        before = _state(rstore, reader)
        with pytest.raises(InvalidSignatureError):
            await reader.apply_proof(forged)
        # the other key's signed head over the very same tree
        foreign_sig = other.create_proof(_request(reader, other, 3))
        assert foreign_sig.upgrade is not None
        mixed = dataclasses.replace(
            honest,
            upgrade=dataclasses.replace(honest.upgrade, signature=foreign_sig.upgrade.signature),
        )
        with pytest.raises(InvalidSignatureError):
            await reader.apply_proof(mixed)
        # the other log's whole proof, with its own manifest
        with pytest.raises(InvalidProofError):
            await reader.apply_proof(foreign_sig)
        assert _state(rstore, reader) == before
        assert reader.length == 0 and reader.manifest is None
        await reader.apply_proof(honest)
        assert reader.length == 10 and await reader.get(3) == _blocks(10)[3]
        await reader.verify()


async def test_group_commit_keeps_good_proofs_and_reports_bad_ones() -> None:
    _, writer, _, reader = await _pair(16)
    first = writer.create_proof(_request(reader, writer, 0))
    await reader.apply_proof(first)
    proofs = [writer.create_proof(_request(reader, writer, i)) for i in (1, 5, 9)]
    assert proofs[1].block is not None
    bad_block = dataclasses.replace(proofs[1].block, value=b"evil")
    proofs[1] = dataclasses.replace(proofs[1], block=bad_block)
    results = await reader.apply_proofs(proofs)
    assert isinstance(results[1], InvalidProofError)
    assert [r.block for r in (results[0], results[2]) if not isinstance(r, Exception)] == [1, 9]
    assert reader.has(1) and reader.has(9) and not reader.has(5)
    await reader.verify()


async def test_sparse_reader_stores_uncle_leaves_and_serves_proofs() -> None:
    _, writer, rstore, reader = await _pair(33)
    for i in (32, 7, 8, 20):
        await reader.apply_proof(writer.create_proof(_request(reader, writer, i)))
    assert [i for i in range(33) if reader.has(i)] == [7, 8, 20, 32]
    await reader.verify()
    # the sparse reader can prove what it has to a third party
    third = await Store(MemoryStorage()).open_log(writer.key)
    proof = reader.create_proof(_request(third, reader, 8))
    await third.apply_proof(proof)
    assert await third.get(8) == _blocks(33)[8]
    node = rstore.storage.get_node(1, 2 * 9)  # block 9's leaf came as an uncle of block 8
    assert isinstance(node, TreeNode) and not reader.has(9)


async def test_reader_follows_a_truncated_writer() -> None:
    _, writer, _, reader = await _pair(12)
    await reader.apply_proof(writer.create_proof(_request(reader, writer, 11)))
    await reader.apply_proof(writer.create_proof(_request(reader, writer, 2)))
    await writer.truncate(8)
    await writer.append([b"rewritten"] * 6)
    proof = writer.create_proof(
        ProofRequest(
            writer.fork, block=BlockRequest(13, 0), upgrade=UpgradeRequest(0, writer.length)
        )
    )
    result = await reader.apply_proof(proof)
    assert result.upgraded and result.truncated_to is not None and result.truncated_to <= 8
    assert reader.fork == writer.fork and reader.length == 14
    assert not reader.has(11)
    assert await reader.get(13) == b"rewritten"
    await reader.verify()


async def test_group_with_a_fork_change_then_more_blocks() -> None:
    _, writer, _, reader = await _pair(12)
    await reader.apply_proof(writer.create_proof(_request(reader, writer, 11)))
    await writer.truncate(8)
    await writer.append([b"rewritten"] * 6)
    fork_proof = writer.create_proof(
        ProofRequest(writer.fork, block=BlockRequest(13, 0), upgrade=UpgradeRequest(0, 14))
    )
    twin = await Store(MemoryStorage()).open_log(writer.key)
    await twin.apply_proof(
        writer.create_proof(
            ProofRequest(
                writer.fork,
                block=BlockRequest(13, 0),
                upgrade=UpgradeRequest(0, 14),
                manifest=True,
            )
        )
    )
    later = writer.create_proof(
        ProofRequest(writer.fork, block=BlockRequest(9, twin.missing_nodes(9)))
    )
    results = await reader.apply_proofs([fork_proof, later])
    assert not any(isinstance(r, Exception) for r in results), results
    assert reader.fork == writer.fork and reader.has(9) and reader.has(13)
    assert await reader.get(9) == b"rewritten"
    await reader.verify()
