"""Forced hash collisions through an injected component hash (like hypertrie's collisions.js)."""

from __future__ import annotations

import pytest

import hamt
from hamt.constants import MAX_DEPTH
from hamt.wire import decode_block

from .helpers import constant_hash, first_byte_hash


@pytest.mark.parametrize("hash_function", [constant_hash(), first_byte_hash])
async def test_colliding_keys_are_kept_apart(hash_function: hamt.ComponentHash) -> None:
    keys = ["apple", "avocado", "banana", "blueberry", "a/b", "a/c", "apple/pie"]
    async with hamt.open_hamt(hamt.MemoryLog(), hash_function=hash_function) as db:
        for i, k in enumerate(keys):
            await db.put(k, str(i).encode())
        for i, k in enumerate(keys):
            assert await db.get(k) == str(i).encode()
        assert await db.get("apricot") is None
        assert {k async for k, _ in db.items()} == set(keys)
        assert {k async for k, _ in db.items("a")} == {"a/b", "a/c"}
        assert {k async for k, _ in db.items("apple")} == {"apple", "apple/pie"}
        # Delete down to one entry: the bucket collapses, the survivor is re-homed.
        for k in keys[:-1]:
            assert await db.delete(k)
            assert await db.get(k) is None
        assert await db.get("apple/pie") == b"6"
        assert [k async for k, _ in db.items()] == ["apple/pie"]
        assert not await db.delete("apple")


async def test_constant_hash_builds_a_bucket_at_max_depth() -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log, hash_function=constant_hash()) as db:
        await db.put("x", b"1")
        await db.put("y", b"2")
        # the second put pushed "x" down a chain of single-child nodes to the bucket
        root = decode_block(log.blocks[-1], log.length - 1).root
        depth = 0
        node = root
        while depth < MAX_DEPTH:
            assert node[0] == 0 and node[1] == 1  # only chunk 0, as a child
            node = node[2]
            depth += 1
        assert sorted(k for k, _ in node) == ["x", "y"]
        history = [(c.key, c.value) async for c in db.history()]
        assert history == [("x", b"1"), ("y", b"2")]


async def test_batch_with_collisions_and_overwrites() -> None:
    async with hamt.open_hamt(hamt.MemoryLog(), hash_function=first_byte_hash) as db:
        async with db.batch() as b:
            for i in range(50):
                b.put(f"k{i}", b"v%d" % i)
            b.put("k3", b"again")
            b.delete("k4")
        assert db.version == 2
        assert await db.get("k3") == b"again"
        assert await db.get("k4") is None
        assert len([k async for k, _ in db.items()]) == 49
        changes = {c.key: c.value async for c in db.history()}
        assert changes["k3"] == b"again" and "k4" not in changes  # k4 never existed before


async def test_diff_across_collisions() -> None:
    async with hamt.open_hamt(hamt.MemoryLog(), hash_function=constant_hash()) as db:
        await db.put("a", b"1")
        await db.put("b", b"2")
        v = db.version
        await db.put("b", b"3")
        await db.delete("a")
        got = {(d.key, d.left, d.right) async for d in db.diff(v)}
        assert got == {("a", b"1", None), ("b", b"2", b"3")}


async def test_deep_paths_past_the_hash_width_share_a_bucket() -> None:
    deep = "/".join("abcdefghi")  # 9 directory components: 36 bytes of path, cut to 32
    keys = [f"{deep}/{leaf}" for leaf in ("x", "y", "z")] + [f"{deep}/x/more"]
    async with hamt.open_hamt(hamt.MemoryLog()) as db:
        for i, k in enumerate(keys):
            await db.put(k, b"%d" % i)
        await db.put("a/b", b"short")
        for i, k in enumerate(keys):
            assert await db.get(k) == b"%d" % i
        assert {k async for k, _ in db.items(deep)} == set(keys)
        assert {k async for k, _ in db.items(f"{deep}/x")} == {keys[0], keys[3]}
        assert {k async for k, _ in db.items("a/b")} == {*keys, "a/b"}
        assert await db.delete(keys[1])
        assert await db.get(keys[1]) is None and await db.get(keys[2]) == b"2"
