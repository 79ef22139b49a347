"""A Hypothesis state machine comparing the HAMT with a dict.

Rules run puts, deletes, batches and checkouts; after every step the HAMT must
agree with the model on gets and on full iteration. Each rule runs its async
work in its own `trio.run` (MemoryLog needs no I/O).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import hamt
from hamt.index import load_hamt

from .helpers import constant_hash, first_byte_hash

# Few distinct keys so that puts overwrite and deletes hit; nested paths for prefixes.
KEYS = st.sampled_from(
    ["a", "b", "c", "a/x", "a/y", "a/x/1", "b/z", "zz", "q/r/s/t", "k" * 20, "kk", "é", "a/é"]
)
VALUES = st.binary(max_size=12)
HASHES = {"none": None, "first-byte": first_byte_hash, "constant": constant_hash()}


class HamtMachine(RuleBasedStateMachine):
    versions = Bundle("versions")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, bytes] = {}
        self.snapshots: dict[int, dict[str, bytes]] = {}
        self.db: Any = None

    def run(self, fn: Any, *args: Any) -> Any:
        return trio.run(fn, *args)

    @initialize(collide=st.sampled_from(["none", "first-byte", "constant"]))
    def setup(self, collide: str) -> None:
        self.db = self.run(
            partial(
                load_hamt,
                hamt.MemoryLog(),
                hash_function=HASHES[collide],
                cache_blocks=8,
            )
        )
        self.snapshots[self.db.version] = {}

    def _remember(self) -> None:
        self.snapshots[self.db.version] = dict(self.model)

    @rule(key=KEYS, value=VALUES)
    def put(self, key: str, value: bytes) -> None:
        self.run(self.db.put, key, value)
        self.model[key] = value
        self._remember()

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        existed = self.run(self.db.delete, key)
        assert existed == (key in self.model)
        self.model.pop(key, None)
        self._remember()

    @rule(ops=st.lists(st.tuples(KEYS, st.none() | VALUES), max_size=8))
    def batch(self, ops: list[tuple[str, bytes | None]]) -> None:
        async def go() -> None:
            async with self.db.batch() as b:
                for k, v in ops:
                    if v is None:
                        b.delete(k)
                    else:
                        b.put(k, v)

        before = self.db.version
        self.run(go)
        after = dict(self.model)
        for k, v in ops:
            if v is None:
                after.pop(k, None)
            else:
                after[k] = v
        assert self.db.version - before <= 1
        self.model = after
        self._remember()

    @precondition(lambda self: len(self.snapshots) > 1)
    @rule(data=st.data())
    def checkout(self, data: st.DataObject) -> None:
        version = data.draw(st.sampled_from(sorted(self.snapshots)))
        view = self.db.checkout(version)
        expected = self.snapshots[version]

        async def check() -> None:
            got = {k: v async for k, v in view.items()}
            assert got == expected
            for k in ("a", "a/x", "zz"):
                assert await view.get(k) == expected.get(k)
            diffs = {d.key: (d.left, d.right) async for d in self.db.diff(version)}
            want = {
                k: (expected.get(k), self.model.get(k))
                for k in expected.keys() | self.model.keys()
                if expected.get(k) != self.model.get(k)
            }
            assert diffs == want

        self.run(check)

    @rule(prefix=st.sampled_from(["a", "a/x", "b", "q/r", "nope"]))
    def listing(self, prefix: str) -> None:
        async def go() -> dict[str, bytes]:
            return {k: v async for k, v in self.db.items(prefix)}

        want = {k: v for k, v in self.model.items() if k == prefix or k.startswith(prefix + "/")}
        assert self.run(go) == want

    @invariant()
    def agrees(self) -> None:
        if self.db is None:
            return

        async def go() -> None:
            for k in ("a", "b", "c", "a/x", "a/x/1", "é", "k" * 20, "missing"):
                assert await self.db.get(k) == self.model.get(k)
            got = {k: v async for k, v in self.db.items()}
            assert got == self.model

        self.run(go)


HamtMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("HAMT_EXAMPLES", "60")), stateful_step_count=30
)
TestHamtModel = HamtMachine.TestCase
