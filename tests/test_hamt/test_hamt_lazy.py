"""Blocks kept encoded (`wire.LazyBlock`): a get walks the nodes on its path in place.

The walk must agree with the full decode on every node of real blocks, refuse
malformed bytes with `CorruptNodeError` (never another error, a hang or another
block's answer), and the cache must hand decoded blocks to every walk but a lookup.
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hamt
import hamt.index
from hamt.cache import BlockCache
from hamt.constants import CHUNK_BITS, LAZY_PROMOTE_USES, MAX_BLOCK_BYTES, MAX_DEPTH, PATH_BITS
from hamt.errors import CorruptNodeError
from hamt.hashing import Hasher, chunk, derive_hash_key
from hamt.log import MemoryLog
from hamt.trie import drive_sync, lookup
from hamt.wire import (
    WALK_ABSENT,
    WALK_BUCKET,
    WALK_CHILD,
    WALK_ENTRY,
    Block,
    LazyBlock,
    decode_block,
    decode_header,
    encode_node_block,
)

from .helpers import constant_hash, first_byte_hash


async def _build(
    batches: list[list[tuple[str, bytes | None]]], hash_function: Any = None
) -> tuple[MemoryLog, Hasher]:
    log = MemoryLog()
    async with hamt.open_hamt(log, hash_function=hash_function) as db:
        for ops in batches:
            async with db.batch() as b:
                for k, v in ops:
                    if v is None:
                        b.delete(k)
                    else:
                        b.put(k, v)
    header = decode_header(log.blocks[0])
    return log, Hasher(derive_hash_key(log.key, header.salt), hash_function)


def _random_batches(
    seed: int, n_batches: int, per_batch: int
) -> tuple[list[list[tuple[str, bytes | None]]], dict[str, bytes]]:
    rnd = random.Random(seed)
    model: dict[str, bytes] = {}
    batches: list[list[tuple[str, bytes | None]]] = []
    for _ in range(n_batches):
        ops: list[tuple[str, bytes | None]] = []
        for _ in range(per_batch):
            if model and rnd.random() < 0.15:
                k = rnd.choice(sorted(model))
                ops.append((k, None))
                model.pop(k)
            else:
                k = f"d{rnd.randrange(4)}/{rnd.randrange(10**6):x}"
                v = rnd.randbytes(rnd.randrange(1, 40))
                ops.append((k, v))
                model[k] = v
        batches.append(ops)
    return batches, model


def _ref_walk(block: Block, path: int, depth: int) -> tuple[int, Any, int]:
    """What `LazyBlock.walk` must return, computed on the fully decoded block."""
    node = block.node_at(path, depth)
    if node is None:
        raise CorruptNodeError("no node there")
    d = depth
    while d < MAX_DEPTH:
        bit = 1 << chunk(path, d)
        dm, nm = node[0], node[1]
        if dm & bit:
            return WALK_ENTRY, block.seq - node[2 + (dm & (bit - 1)).bit_count()], d
        if not nm & bit:
            return WALK_ABSENT, None, d
        c = node[2 + dm.bit_count() + (nm & (bit - 1)).bit_count()]
        if type(c) is not tuple:
            return WALK_CHILD, block.seq - c, d + 1
        node = c
        d += 1
    return WALK_BUCKET, node, d


def _positions(block: Block) -> list[tuple[int, int]]:
    """(path prefix, depth) of every inline node of a decoded block."""
    out = []
    for pos in block._nodes or {}:
        depth = (pos.bit_length() - 1) // CHUNK_BITS
        prefix = pos ^ (1 << (CHUNK_BITS * depth))
        out.append((prefix << (PATH_BITS - CHUNK_BITS * depth) if depth else 0, depth))
    return out


@pytest.mark.parametrize("hash_function", [None, first_byte_hash, constant_hash()])
def test_walk_from_every_node_equals_the_full_decode(hash_function: Any) -> None:
    batches, _ = _random_batches(1, 6, 120)
    log, _hasher = trio.run(_build, batches, hash_function)
    rnd = random.Random(2)
    checked = 0
    for seq in range(1, log.length):
        data = log.blocks[seq]
        full = decode_block(data, seq)
        lazy = LazyBlock(seq, data)
        for prefix, depth in _positions(full):
            for c in range(16):
                low = rnd.getrandbits(max(PATH_BITS - CHUNK_BITS * (depth + 1), 0))
                shift = PATH_BITS - CHUNK_BITS * (depth + 1)
                path = prefix | (c << shift) | low if depth < MAX_DEPTH else prefix
                assert lazy.walk(path, depth) == _ref_walk(full, path, depth)
                checked += 1
        for key in full.puts:
            assert lazy.value(key) == full.puts[key]
        for op in full.ops:
            if len(op) == 1:
                assert lazy.value(op[0]) is None
        assert lazy.value("no/such/key") is None
    assert checked > 100


@pytest.mark.parametrize("hash_function", [None, first_byte_hash, constant_hash()])
def test_lookup_on_kept_blocks_equals_lookup_on_decoded_blocks(hash_function: Any) -> None:
    batches, model = _random_batches(3, 5, 80)
    log, hasher = trio.run(_build, batches, hash_function)
    root_seq = log.length - 1
    absent = [f"d{i}/absent{i}" for i in range(20)]
    kept: dict[int, LazyBlock] = {}  # (shared by the lookups, as a cache would be)

    def lazy(seq: int) -> Any:
        return kept.setdefault(seq, LazyBlock(seq, log.blocks[seq]))

    def full(seq: int) -> Block:
        return decode_block(log.blocks[seq], seq)

    for key in [*model, *absent, *(k for ops in batches for k, v in ops if v is None)]:
        path = hasher.path(key)
        got_lazy = drive_sync(
            lookup(lazy(root_seq), key, path, BlockCache(1, 1 << 30)),
            lazy,
        )
        got_full = drive_sync(lookup(full(root_seq), key, path, BlockCache(1, 1 << 30)), full)
        assert got_lazy == got_full == model.get(key)


# -- malformed bytes ---------------------------------------------------------------


def _pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


BIT0 = 1 << 0  # chunk 0 of a path of zeros
ZERO_PATH = 0


@pytest.mark.parametrize(
    ("data", "seq", "depth"),
    [
        (b"", 5, 0),  # empty
        (b"\xc1", 5, 0),  # never used byte
        (_pack([1, []]), 5, 0),  # two elements
        (_pack([2, [], [0, 0]]), 5, 0),  # wrong tag
        (_pack([True, [], [0, 0]]), 5, 0),  # a bool is not the tag
        (_pack({"a": 1}), 5, 0),  # not an array
        (_pack([1, [], 7]), 5, 0),  # root not an array
        (_pack([1, [], [BIT0]]), 5, 0),  # node too short
        (_pack([1, [], [BIT0, 0]]), 5, 0),  # bitmap says one entry, no slot
        (_pack([1, [], [BIT0, BIT0, 1]]), 5, 0),  # datamap & nodemap
        (_pack([1, [], [1 << 16, 0, 1]]), 5, 0),  # bitmap too wide
        (_pack([1, [], [-1, 0]]), 5, 0),  # negative bitmap
        (_pack([1, [], ["x", 0]]), 5, 0),  # bitmap not an int
        (_pack([1, [], [BIT0, 0, 5]]), 5, 0),  # entry pointer to block 0 (the header)
        (_pack([1, [], [BIT0, 0, -1]]), 5, 0),  # entry pointer into the future
        (_pack([1, [], [BIT0, 0, "x"]]), 5, 0),  # entry pointer not an int
        (_pack([1, [], [0, BIT0, 0]]), 5, 0),  # child pointer to itself (a cycle)
        (_pack([1, [], [0, BIT0, 5]]), 5, 0),  # child pointer to the header
        (_pack([1, [], [0, BIT0, 1.5]]), 5, 0),  # child pointer not an int
        (_pack([1, [], [0, BIT0, "x"]]), 5, 0),  # child pointer a string
        (_pack([1, [], [0, BIT0, [0, 0]]]), 5, 0),  # empty inner node
        (_pack([1, [], [0, BIT0, [1 << 3, 0, 1]]]), 5, 0),  # fine... then absent? see below
        (b"\x93\x01\x90\xdd\xff\xff\xff\xff\x00\x00", 5, 0),  # array32 claiming 4 G slots
        (_pack([1, [], [BIT0, 0, 1]])[:-1], 5, 0),  # truncated
        (_pack([1, [], [0, BIT0, 2]]), 5, 1),  # depth 1 asked, the block has a pointer there
        (_pack([1, [], [BIT0, 0, 2]]), 5, 1),  # depth 1 asked, the block has an entry there
        (_pack([1, [], [0, 0]]), 5, 1),  # depth 1 asked, the block has nothing there
    ],
)
def test_malformed_blocks_are_refused_by_the_walk(data: bytes, seq: int, depth: int) -> None:
    lazy = LazyBlock(seq, data)
    try:
        got = lazy.walk(ZERO_PATH, depth)
    except CorruptNodeError:
        return
    # The one well-formed case above: chunk 0 at depth 1 is empty.
    assert got == (WALK_ABSENT, None, 1)


def test_nesting_deeper_than_max_depth_is_refused() -> None:
    node: Any = [[["k", 1], ["j", 1]]]  # a bucket wrapped once more than allowed
    for _ in range(MAX_DEPTH + 1):
        node = [0, BIT0, node]
    with pytest.raises(CorruptNodeError):
        LazyBlock(5, _pack([1, [], node])).walk(ZERO_PATH, 0)
    bomb = b"\x93\x01\x90" + b"\x91" * 100_000 + b"\x00"
    with pytest.raises(CorruptNodeError):
        LazyBlock(5, bomb).walk(ZERO_PATH, 0)


def test_a_bucket_at_max_depth_is_checked() -> None:
    def nest(bucket: Any) -> bytes:
        node = bucket
        for _ in range(MAX_DEPTH):
            node = [0, BIT0, node]
        return _pack([1, [["a", b"1"], ["b", b"2"]], node])

    good = LazyBlock(5, nest([["a", 0], ["b", 0]]))
    assert good.walk(ZERO_PATH, 0) == (WALK_BUCKET, (("a", 0), ("b", 0)), MAX_DEPTH)
    assert good.walk(ZERO_PATH, 0) == _ref_walk(decode_block(good.data, 5), ZERO_PATH, 0)
    for bad in ([["a", 0]], [["a", 0], ["a", 0]], [["a", 9], ["b", 0]], [["a", "x"], ["b", 0]], 7):
        with pytest.raises(CorruptNodeError):
            LazyBlock(5, nest(bad)).walk(ZERO_PATH, 0)


@pytest.mark.parametrize(
    "ops",
    [
        [["k", b"1"], ["k", b"2"]],  # the key twice
        [["k", "text"]],  # value not bytes
        [["k", b"1", 1]],  # bad copy flag
        [["k", b"1", 0, 0]],  # four elements
        [7],  # an op that is not an array
        [[]],  # an empty op
        {"k": b"1"},  # ops not an array
    ],
)
def test_malformed_ops_are_refused_by_value(ops: Any) -> None:
    lazy = LazyBlock(5, _pack([1, ops, [0, 0]]))
    with pytest.raises(CorruptNodeError):
        lazy.value("k")


def test_constructor_refuses_the_header_and_oversized_blocks() -> None:
    with pytest.raises(CorruptNodeError):
        LazyBlock(0, _pack([1, [], [0, 0]]))
    with pytest.raises(CorruptNodeError):
        LazyBlock(1, b"\x00" * (MAX_BLOCK_BYTES + 1))


def test_damaged_real_blocks_never_answer_differently() -> None:
    """Truncated or bit-flipped batch blocks: the walk refuses them or agrees with the
    full decode of the same bytes (when that decodes at all)."""
    batches, _ = _random_batches(5, 3, 60)
    log, _hasher = trio.run(_build, batches, None)
    rnd = random.Random(6)
    seq = log.length - 1
    data = log.blocks[seq]
    damaged = [data[:cut] for cut in range(0, len(data), max(1, len(data) // 300))]
    for _ in range(300):
        i = rnd.randrange(len(data))
        damaged.append(data[:i] + bytes([data[i] ^ (1 << rnd.randrange(8))]) + data[i + 1 :])
    for bad in damaged:
        try:
            full: Block | None = decode_block(bad, seq)
        except CorruptNodeError:
            full = None
        lazy = LazyBlock(seq, bad)
        for _ in range(4):
            path = rnd.getrandbits(PATH_BITS)
            try:
                got = lazy.walk(path, 0)
            except CorruptNodeError:
                continue
            if full is not None:
                assert got == _ref_walk(full, path, 0)


# -- the cache -------------------------------------------------------------------------


def test_cache_hands_kept_blocks_to_lookups_and_decodes_them_for_everything_else() -> None:
    data = encode_node_block([["k", b"v"]], [BIT0, 0, 0])
    cache = BlockCache(10, 1 << 30)
    cache.put_lazy(LazyBlock(3, data))
    assert 3 in cache and len(cache) == 1 and cache.statistics().lazy == 1
    for _ in range(LAZY_PROMOTE_USES - 1):
        assert type(cache.peek(3)) is LazyBlock
    assert type(cache.peek(3)) is tuple  # read often enough: decoded in full now
    assert cache.statistics().lazy == 0 and len(cache) == 1
    cache.put_lazy(LazyBlock(3, data))  # a decoded block is not replaced
    assert cache.statistics().lazy == 0

    cache.put_lazy(LazyBlock(4, data))
    block = cache.get(4)  # any other walk: decoded at once
    assert block is not None and block.puts == {"k": b"v"} and cache.statistics().lazy == 0


def test_a_malformed_kept_block_fails_its_decode_and_leaves_the_cache() -> None:
    cache = BlockCache(10, 1 << 30)
    cache.put_lazy(LazyBlock(3, _pack([1, [], [BIT0, 0, 7]])))
    with pytest.raises(CorruptNodeError):
        cache.record(3)
    assert 3 not in cache and cache.statistics().bytes == 0


def test_kept_blocks_are_evicted_first() -> None:
    data = encode_node_block([["k", b"v"]], [BIT0, 0, 0])
    cache = BlockCache(3, 1 << 30)
    cache.put(decode_block(data, 1))
    cache.put_lazy(LazyBlock(2, data))
    cache.put(decode_block(data, 3))
    cache.put(decode_block(data, 4))
    assert 2 not in cache and 1 in cache and len(cache) == 3
    assert cache.statistics().bytes == 3 * len(data)


# -- through `Hamt` --------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    n_batches=st.integers(1, 5),
    per_batch=st.integers(1, 60),
    cache_blocks=st.sampled_from([1, 2, 4, 1000]),
)
def test_reader_with_every_block_kept_encoded_agrees_with_a_dict(
    seed: int, n_batches: int, per_batch: int, cache_blocks: int
) -> None:
    batches, model = _random_batches(seed, n_batches, per_batch)
    absent = [f"d1/none{i}" for i in range(5)]

    async def main() -> None:
        log, _ = await _build(batches)
        ro = MemoryLog(log.key, writable=False)
        ro.blocks = log.blocks
        async with hamt.open_hamt(ro, cache_blocks=cache_blocks) as db:
            for _ in range(2):  # twice: kept blocks read again, some decoded in full
                for k in [*model, *absent]:
                    assert await db.get(k) == model.get(k)
            assert dict([kv async for kv in db.items()]) == model
            for k in [*model, *absent]:
                assert await db.get(k) == model.get(k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hamt.index, "LAZY_BLOCK_BYTES", 0)
        trio.run(main)


async def test_gets_keep_large_blocks_encoded_and_other_reads_decode_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hamt.index, "LAZY_BLOCK_BYTES", 1024)
    batches, model = _random_batches(9, 4, 200)
    log, _ = await _build(batches)
    assert all(len(b) > 1024 for b in log.blocks[1:])
    ro = MemoryLog(log.key, writable=False)
    ro.blocks = log.blocks
    async with hamt.open_hamt(ro) as db:
        key = next(iter(model))
        assert await db.get(key) == model[key]
        assert db.statistics().cache.lazy >= 1
        assert dict([kv async for kv in db.items()]) == model
        assert db.statistics().cache.lazy == 0
        diffs = [d async for d in db.diff(2)]
        assert diffs
