"""The writer's retained trie (`mutate.Retained`): a writer keeps the decoded tree of
its latest block and builds the next block on it instead of re-reading the path.

The reference for every test is a writer without that tree: a HAMT opened afresh
before each operation builds every block from the decoded blocks. Both must write
byte-identical logs, and the retained tree must be dropped whenever the log is not
exactly where the writer left it (another writer, truncation, a failed append).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import hamt
import hamt.mutate
from hamt.index import load_hamt
from hyperlog.log import open_store

from .helpers import WrappedLog, constant_hash, first_byte_hash

KEYS = [f"k{i}" for i in range(12)] + ["a/b", "a/c", "a/b/c", "zz", "y/1", "y/2"]

Op = tuple[Any, ...]
ops_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(KEYS), st.binary(max_size=3)),
        st.tuples(st.just("del"), st.sampled_from(KEYS)),
        st.tuples(
            st.just("batch"),
            st.lists(
                st.tuples(st.sampled_from(KEYS), st.none() | st.binary(max_size=3)),
                max_size=6,
            ),
        ),
    ),
    max_size=30,
)


async def apply(db: hamt.Hamt[bytes], op: Sequence[Any], model: dict[str, bytes]) -> None:
    if op[0] == "put":
        await db.put(op[1], op[2])
        model[op[1]] = op[2]
    elif op[0] == "del":
        assert await db.delete(op[1]) == (op[1] in model)
        model.pop(op[1], None)
    else:
        async with db.batch() as b:
            for key, value in op[1]:
                if value is None:
                    b.delete(key)
                    model.pop(key, None)
                else:
                    b.put(key, value)
                    model[key] = value


async def fresh_items(log: hamt.MemoryLog, hash_function: Any) -> dict[str, bytes]:
    """Every key as a new reader with a one-block cache sees it (decoded from the bytes)."""
    copy = hamt.MemoryLog(log.key, writable=False)
    copy.blocks = list(log.blocks)
    db = await load_hamt(copy, hash_function=hash_function, cache_blocks=1)
    return {k: v async for k, v in db.items()}


async def run_against_reference(
    ops: Sequence[Sequence[Any]], hash_function: Any, cache_blocks: int = 1024
) -> None:
    log = hamt.MemoryLog()
    db = await load_hamt(log, hash_function=hash_function, cache_blocks=cache_blocks)
    ref = hamt.MemoryLog(log.key)
    ref.blocks = [log.blocks[0]]  # same salt, so the same hash key
    model: dict[str, bytes] = {}
    ref_model: dict[str, bytes] = {}
    for op in ops:
        await apply(db, op, model)
        # the reference: a new HAMT per op, so every block is built from decoded blocks
        await apply(await load_hamt(ref, hash_function=hash_function), op, ref_model)
        assert log.blocks == ref.blocks
    assert await fresh_items(log, hash_function) == model


@pytest.mark.parametrize(
    "hash_function", [None, first_byte_hash, constant_hash()], ids=["blake2b", "first", "const"]
)
@settings(max_examples=60)
@given(ops=ops_strategy)
def test_retained_tree_writes_the_same_blocks(ops: list[Op], hash_function: Any) -> None:
    trio.run(run_against_reference, ops, hash_function)


@pytest.mark.parametrize("depth", [1, 2, 65])
def test_same_blocks_whatever_depth_is_retained(
    monkeypatch: pytest.MonkeyPatch, depth: int
) -> None:
    # 1: only the root is kept, deeper nodes come from the blocks; 65: everything.
    monkeypatch.setattr(hamt.mutate, "RETAIN_DEPTH", depth)
    rnd = random.Random(7)
    ops: list[Op] = [("put", f"k{rnd.randrange(400)}", b"v") for _ in range(300)]
    ops += [("del", f"k{rnd.randrange(400)}") for _ in range(100)]
    ops += [("batch", [(f"k{rnd.randrange(400)}", None) for _ in range(50)])]
    trio.run(run_against_reference, ops, None, 4)


async def test_puts_on_the_retained_tree_read_almost_no_blocks() -> None:
    async with hamt.open_hamt(hamt.MemoryLog()) as db:
        for i in range(600):
            await db.put(f"k{i}", b"v")
        before = db.statistics().cache
        for i in range(600, 700):
            await db.put(f"k{i}", b"v")
        after = db.statistics().cache
        # Without the tree each put looks up its base block and every block on the path
        # (3+ per put here); with it, only the rare slot already holding another key.
        lookups = after.hits + after.misses - before.hits - before.misses
        assert lookups < 60


async def test_a_second_writer_on_the_log_invalidates_the_tree() -> None:
    log = hamt.MemoryLog()
    model: dict[str, bytes] = {}
    async with hamt.open_hamt(log) as one, hamt.open_hamt(log) as two:
        for i in range(40):
            writer = one if i % 3 else two
            await writer.put(f"k{i % 17}", b"%d" % i)
            model[f"k{i % 17}"] = b"%d" % i
            if i % 5 == 0:
                await writer.delete(f"k{(i * 7) % 17}")
                model.pop(f"k{(i * 7) % 17}", None)
        assert {k: v async for k, v in one.items()} == model
    assert await fresh_items(log, None) == model


class FailingLog(WrappedLog):
    """A `MemoryLog` whose next append can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False

    async def append(self, blocks: Sequence[bytes]) -> object:
        if self.fail:
            self.fail = False
            raise OSError("disk full")
        return await self.inner.append(blocks)


async def test_a_failed_append_discards_the_tree() -> None:
    log = FailingLog()
    async with hamt.open_hamt(log) as db:
        for i in range(50):
            await db.put(f"k{i}", b"v")
        log.fail = True
        with pytest.raises(OSError):
            await db.put("lost", b"x")  # changed the tree in place, then failed
        with pytest.raises(OSError):
            log.fail = True
            async with db.batch() as b:
                b.put("lost2", b"x")
                b.delete("k3")
        await db.put("kept", b"y")
        assert await db.get("lost") is None and await db.get("k3") == b"v"
    items = await fresh_items(log.inner, None)
    assert "lost" not in items and "lost2" not in items
    assert items["kept"] == b"y" and len(items) == 51


async def test_truncation_drops_the_tree() -> None:
    async with open_store() as store:
        log = await store.create_log()
        async with hamt.open_hamt(log) as db:
            for key in ("a", "b", "c"):
                await db.put(key, b"1")
            await log.truncate(3)  # drop the block that put "c" (a new fork)
            await db.put("d", b"2")  # must build on block 2, not on the tree holding "c"
            await log.truncate(2)
            await log.append(await log.get(1))  # the same length again, by hand
            await db.put("e", b"3")
        async with hamt.open_hamt(log) as fresh:
            assert {k async for k, _ in fresh.items()} == {"a", "e"}


async def test_reopened_writer_continues(tmp_path: Path) -> None:
    rnd = random.Random(3)
    model: dict[str, bytes] = {}
    for round_ in range(2):
        async with open_store(tmp_path / "store") as store:
            log = await (store.default_log() if round_ else store.create_log())
            async with hamt.open_hamt(log) as db:
                for _ in range(150):
                    key = f"k{rnd.randrange(200)}"
                    if rnd.random() < 0.2:
                        await db.delete(key)
                        model.pop(key, None)
                    else:
                        model[key] = b"%d" % rnd.randrange(1000)
                        await db.put(key, model[key])
    async with open_store(tmp_path / "store") as store:
        log = await store.default_log()
        async with hamt.open_hamt(log, cache_blocks=1) as db:
            assert {k: v async for k, v in db.items()} == model
