"""The writer's cached blocks stop being tracked by the cyclic garbage collector at the
first young collection (`wire.BlockRecord`, `wire.hold_young`): a hundred thousand
cached blocks must not make every full collection walk them, nor make full
collections come more often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

import hamt
import hamt.mutate


def nest(obj: object) -> Iterator[object]:
    """`obj` and every tuple and dict inside it."""
    yield obj
    if isinstance(obj, tuple):
        for x in obj:
            yield from nest(x)
    elif isinstance(obj, dict):
        for x in obj.values():
            yield from nest(x)


async def tracked_after_one_young_collection(keys: list[str]) -> int:
    async with hamt.open_hamt(hamt.MemoryLog()) as db:
        for i in range(300):
            await db.put(f"k{i}", b"v")
        gc.collect()
        for key in keys:
            await db.put(key, b"value")
        gc.collect(0)
        count = 0
        for seq in range(db.version - len(keys), db.version):
            record = db._s.cache._d[seq]
            count += sum(gc.is_tracked(o) for o in nest(record))
        return count


async def test_written_blocks_are_untracked_by_one_young_collection() -> None:
    assert await tracked_after_one_young_collection(["new", "newer", "k5", "a/b/c"]) == 0


async def test_without_the_ring_they_stay_tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    # The mechanism the test above relies on: CPython untracks one level of a nest of
    # young tuples per collection unless something old refers to each of them.
    monkeypatch.setattr(hamt.mutate, "hold_young", lambda objs: None)
    assert await tracked_after_one_young_collection(["new", "newer", "k5", "a/b/c"]) > 0
