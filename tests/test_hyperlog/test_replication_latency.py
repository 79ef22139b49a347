"""The sparse-get fast paths: what they skip must not change what is verified.

* `held_level` / `LogAdapter.missing_tree_nodes` guess how many uncles a request
  needs from the in-memory bitfield; the guess must never be *fewer* than the stored
  tree requires (the proof would fail and the peer be dropped) and should equal the
  exact count `Log.missing_tree_nodes` computes with one storage probe per level.

(The timer task now wakes only for a deadline earlier than the one it sleeps until;
request timeouts and hot-swaps are covered by test_replicate_memory.py's
`test_black_hole_peer_times_out` and `test_hotswap_slow_get`.)
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from hyperlog import flat_tree, wire
from hyperlog.bitfield import PAGE_BITS, Bitfield
from hyperlog.crypto import key_pair
from hyperlog.errors import BlockNotAvailableError, ReplicationError
from hyperlog.log import Log, open_store
from hyperlog.proof import ProofRequest, UpgradeRequest
from hyperlog.replication import replicate, replication_for
from hyperlog.replication.adapter import (
    LogAdapter,
    held_level,
    to_data,
    to_proof_request,
)

SEED = bytes(range(32))


def _held_level_slow(bits: Bitfield, block: int, size: int) -> int | None:
    for level in range(64):
        lo = (block >> level) << level
        if any(bits.get(i) for i in range(lo, min(lo + (1 << level), size))):
            return level
        if lo == 0 and (1 << level) >= size:
            return None
    return None


@given(
    size=st.sampled_from([64, 1000, PAGE_BITS + 5, 3 * PAGE_BITS]),
    picks=st.lists(st.integers(min_value=0, max_value=10**6), max_size=6),
    probe=st.integers(min_value=0, max_value=10**6),
)
def test_held_level_matches_a_bit_by_bit_scan(size: int, picks: list[int], probe: int) -> None:
    bits = Bitfield()
    for p in picks:
        bits.set(p % size)
    block = probe % size
    assert held_level(bits, block) == _held_level_slow(bits, block, size)


async def _fetch(adapter: LogAdapter, writer: Log, index: int) -> None:
    """Fetch `index` with exactly the guessed uncles, through the adapter (which
    remembers the nodes the verified proof stored)."""
    req = wire.Request(
        0, 1, writer.fork, block=wire.RequestBlock(index, adapter.missing_nodes(index))
    )
    data = to_data(writer.create_proof(to_proof_request(req)))
    (result,) = await adapter.apply_many([data])
    assert not isinstance(result, Exception), result
    assert adapter.has(index)


def _check_counts(adapter: LogAdapter, reader: Log, rnd: random.Random, want: int) -> None:
    n = reader.length
    # Around the next block, its sibling and random others, and tree nodes (a
    # RangeRequest's hash proof) at a few depths.
    for i in (want, want ^ 1, max(0, want - 1), rnd.randrange(n)):
        assert adapter.missing_nodes(i) == reader.missing_nodes(i), i
    for depth in (1, 3, 6):
        node = flat_tree.index(depth, rnd.randrange(n >> depth))
        assert adapter.missing_tree_nodes(node) == reader.missing_tree_nodes(node), node


async def test_missing_nodes_guess_equals_the_exact_count() -> None:
    n = 3000
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append([b"v%d" % i for i in range(n)])
        reader = await rs.open_log(writer.key)
        head = writer.create_proof(ProofRequest(0, upgrade=UpgradeRequest(0, n), manifest=True))
        await reader.apply_proofs([head])
        adapter = LogAdapter(reader)
        rnd = random.Random(4)
        try:
            fetched = []
            for _ in range(150):
                want = rnd.randrange(n)
                _check_counts(adapter, reader, rnd, want)
                await _fetch(adapter, writer, want)
                fetched.append(want)
            # A new fork drops the upper part of the tree: nothing remembered from
            # before may make us ask for too few uncles.
            await writer.truncate(n // 3)
            await writer.append([b"w%d" % i for i in range(n // 3, n)])
            head = writer.create_proof(ProofRequest(writer.fork, upgrade=UpgradeRequest(0, n)))
            (result,) = await reader.apply_proofs([head])
            assert not isinstance(result, Exception) and result.truncated_to is not None
            assert reader.fork == writer.fork
            for i in fetched:  # their old paths were remembered, then cut away
                for j in (i, i ^ 1):
                    assert adapter.missing_nodes(j) == reader.missing_nodes(j), j
            for _ in range(60):
                want = rnd.randrange(n)
                _check_counts(adapter, reader, rnd, want)
                if not reader.has(want):
                    await _fetch(adapter, writer, want)
        finally:
            adapter.close()


@pytest.mark.parametrize("part", ["value", "uncle"])
async def test_block_without_upgrade_is_verified_against_the_stored_tree(part: str) -> None:
    # Sparse gets ask for a block only (no upgrade, so no signature to check) with as
    # few uncles as the reader's remembered nodes allow. The answer must still be
    # checked against the stored tree: a wrong value or uncle drops the peer and
    # stores nothing.
    n = 2000
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append([b"v%d" % i for i in range(n)])
        reader = await rs.open_log(writer.key)
        a, b = trio.testing.memory_stream_pair()
        with trio.fail_after(60):
            async with replicate(a, writer), replicate(b, reader) as session:
                rep = replication_for(reader)
                await rep.update()
                for i in (100, 900, 1500, 1501, 1502):
                    await rep.get(i)
                port = replication_for(writer).port
                honest = port.serve

                async def tampered(request: Any) -> Any:
                    data = await honest(request)
                    if not isinstance(data, wire.Data) or data.block is None:
                        return data  # the reader's follow-up: its whole signed tree
                    assert data.upgrade is None  # a block-only answer
                    blk = data.block
                    if part == "value":
                        blk = dataclasses.replace(blk, value=blk.value + b"!")
                    else:
                        assert blk.nodes, "the request asked for at least one uncle"
                        bad = dataclasses.replace(blk.nodes[0], hash=bytes(32))
                        blk = dataclasses.replace(blk, nodes=(bad, *blk.nodes[1:]))
                    return dataclasses.replace(data, block=blk)

                port.serve = tampered  # type: ignore[method-assign]
                with pytest.raises(BlockNotAvailableError):
                    await rep.get(1504, wait=False)
                await session.wait_closed()
                assert isinstance(session.error, ReplicationError)
                assert "invalid proof" in str(session.error)
                assert not reader.has(1504)
        assert [i for i in range(n) if reader.has(i)] == [100, 900, 1500, 1501, 1502]
