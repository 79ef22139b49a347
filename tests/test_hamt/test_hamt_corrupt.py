"""Bad input: undecodable blocks, pointers to the future or out of range, cycles,
oversized keys and values. Every case ends in a clear `HamtError`, never a hang
(each test runs under `trio.fail_after`) and never a wrong answer."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import hamt
from hamt.constants import MAX_BLOCK_BYTES, MAX_KEY_BYTES, MAX_VALUE_BYTES, SALT_BYTES
from hamt.hashing import chunk
from hamt.index import load_hamt
from hamt.wire import encode_header, encode_node_block

KEY = "k"


async def reader(*blocks: bytes, hash_function: Any = None) -> hamt.Hamt[bytes]:
    log = hamt.MemoryLog(writable=False)
    log.blocks = [encode_header(b"\x01" * SALT_BYTES), *blocks]
    return await load_hamt(log, hash_function=hash_function)


def one_entry_root() -> list[Any]:
    """A root whose chunk 0 holds an entry of its own block (pointers are relative)."""
    return [1, 0, 0]


ZERO = lambda _d: b"\x00" * 8  # noqa: E731 - every key's chunks are all 0


async def expect_corrupt(db: hamt.Hamt[bytes], key: str = KEY) -> None:
    with trio.fail_after(5):
        with pytest.raises(hamt.CorruptNodeError):
            await db.get(key)
        with pytest.raises(hamt.CorruptNodeError):
            _ = [x async for x in db.items()]


async def test_valid_hand_built_block_reads() -> None:
    db = await reader(encode_node_block([[KEY, b"v"]], one_entry_root()), hash_function=ZERO)
    assert await db.get(KEY) == b"v"
    assert [x async for x in db.items()] == [(KEY, b"v")]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe garbage",
        b"\x93\x01",  # truncated array
        b"\x91" * 100_000 + b"\x00",  # nesting bomb
        encode_node_block([], [0, 0])[:-1],
        encode_header(b"\x02" * SALT_BYTES),  # a header where a node belongs
    ],
)
async def test_undecodable_block(data: bytes) -> None:
    await expect_corrupt(await reader(data, hash_function=ZERO))


async def test_oversized_block_is_refused_before_decoding() -> None:
    await expect_corrupt(await reader(b"\x00" * (MAX_BLOCK_BYTES + 1)))


@pytest.mark.parametrize(
    ("ops", "root"),
    [
        ([[KEY, b"v"]], [1, 0, -1]),  # entry pointer to the future (block 2)
        ([[KEY, b"v"]], [1, 0, 1]),  # entry pointer to the header (block 0)
        ([[KEY, b"v"]], [1, 0, 5]),  # entry pointer before the log
        ([[KEY, b"v"]], [0, 1, 0]),  # child pointer to its own block: a cycle
        ([[KEY, b"v"]], [0, 1, -3]),  # child pointer to the future
        ([[KEY, b"v"]], [0, 1, 1]),  # child pointer to the header
        ([[KEY, b"v"]], [1, 0]),  # bitmap says one slot, none present
        ([[KEY, b"v"]], [1, 0, 0, 0]),  # more slots than bits
        ([[KEY, b"v"]], [1, 1, 0, 0]),  # the same chunk as entry and child
        ([[KEY, b"v"]], [1 << 16, 0, 0]),  # bitmap wider than 16 bits
        ([[KEY, b"v"]], [1, 0, "0"]),  # wrong type
        ([[KEY, b"v"]], [1, 0, 0.0]),  # wrong type
        ([[KEY, b"v"]], [0, 1, [0, 0]]),  # empty inner node
        ([[KEY, b"v"], [KEY, b"w"]], [1, 0, 0]),  # one key twice
        ([[KEY, 5]], [1, 0, 0]),  # value not bytes
        ([[KEY, b"v", 9]], [1, 0, 0]),  # unknown op flag
        ([["x" * (MAX_KEY_BYTES + 1), b"v"]], [1, 0, 0]),  # oversized key
        ({"k": 1}, [1, 0, 0]),  # ops not a list
    ],
)
async def test_malformed_node_block(ops: Any, root: Any) -> None:
    await expect_corrupt(await reader(encode_node_block(ops, root), hash_function=ZERO))


async def test_child_pointer_to_a_block_without_that_node() -> None:
    b1 = encode_node_block([["other", b"v"]], [1, 0, 0])  # holds an entry, no child
    b2 = encode_node_block([], [0, 1, 1])  # says: the subtree at chunk 0 is in block 2 - 1
    await expect_corrupt(await reader(b1, b2, hash_function=ZERO))


async def test_entry_pointer_to_a_block_without_that_entry() -> None:
    def h(data: bytes) -> bytes:
        return (b"\x55" if data == b"k" else b"\x00") * 8

    b1 = encode_node_block([["other", b"v"]], [1, 0, 0])  # "other" at chunk 0
    b2 = encode_node_block([["x", b"w"]], [1 << 5, 0, 1])  # chunk 5 -> block 1: no such entry
    db = await reader(b1, b2, hash_function=h)
    with trio.fail_after(5):
        assert await db.get(KEY) is None  # a get compares full keys: never a wrong value
        assert await db.get("other") is None
        with pytest.raises(hamt.CorruptNodeError):
            _ = [x async for x in db.items()]


async def test_deep_inline_chain_is_bounded() -> None:
    node: Any = [1, 0, 0]
    for _ in range(200):  # deeper than MAX_DEPTH
        node = [0, 1, node]
    await expect_corrupt(await reader(encode_node_block([[KEY, b"v"]], node), hash_function=ZERO))


async def test_bad_header() -> None:
    log = hamt.MemoryLog(writable=False)
    log.blocks = [encode_node_block([], [0, 0])]
    with pytest.raises(hamt.CorruptNodeError):
        await load_hamt(log)
    log.blocks = [b"\x00garbage"]
    with pytest.raises(hamt.CorruptNodeError):
        await load_hamt(log)
    with pytest.raises(hamt.ReadOnlyError):
        await load_hamt(hamt.MemoryLog(writable=False))


async def test_bad_keys_and_values_write_nothing() -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as db:
        for bad in ["", "/a", "a/", "a//b", "x" * (MAX_KEY_BYTES + 1), "\udc80", 5]:
            with pytest.raises(hamt.InvalidKeyError):
                await db.put(bad, b"v")  # type: ignore[arg-type]
        with pytest.raises(hamt.ValueTooLargeError):
            await db.put("k", b"\x00" * (MAX_VALUE_BYTES + 1))
        with pytest.raises(TypeError):
            await db.put("k", "not bytes")  # type: ignore[arg-type]
        async with db.batch() as b:
            with pytest.raises(hamt.InvalidKeyError):
                b.put("", b"v")
        assert log.length == 1  # only the header


def test_chunk_order() -> None:
    path = int.from_bytes(bytes([0x12, 0x34]) + bytes(30), "big")
    assert [chunk(path, d) for d in range(5)] == [1, 2, 3, 4, 0]
