"""Test helpers for the replication engine: a fake log port and a sync pair.

`FakeLog` implements `LogPort` without Merkle trees: block i of a log is a value
derived from the key, and the "signature" of a head is a keyed hash. It verifies
what it is given just as strictly (a wrong value, a wrong signature or a wrong
fork is refused and nothing is stored), which is what the engine tests need;
the real `hyperlog.Log` is exercised by test_replicate_log.py.
"""

from __future__ import annotations

import hashlib
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from hyperlog import flat_tree, wire
from hyperlog.errors import ForkConflictError, HyperlogError, InvalidProofError
from hyperlog.replication.port import Applied
from hyperlog.replication.scheduler import range_proofs

T = TypeVar("T")


def block_value(key: bytes, fork: int, i: int, size: int = 64) -> bytes:
    seed = hashlib.blake2b(key + fork.to_bytes(8, "little") + i.to_bytes(8, "little")).digest()
    return (seed * (size // 64 + 1))[:size]


def head_sig(key: bytes, fork: int, length: int) -> bytes:
    return hashlib.blake2b(
        fork.to_bytes(8, "little") + length.to_bytes(8, "little"), key=key
    ).digest()


class FakeLog:
    """A `LogPort` with deterministic content and strict checks."""

    def __init__(
        self, key: bytes, *, length: int = 0, have: bool = True, block_size: int = 64
    ) -> None:
        self._key = key
        self._dk = hashlib.blake2b(b"hypercore", key=key, digest_size=32).digest()
        self._length = length
        self._fork = 0
        self.block_size = block_size
        self.blocks: dict[int, bytes] = (
            {i: block_value(key, 0, i, block_size) for i in range(length)} if have else {}
        )
        self.applied = 0
        self.refused = 0

    # LogView
    @property
    def key(self) -> bytes:
        return self._key

    @property
    def discovery_key(self) -> bytes:
        return self._dk

    @property
    def length(self) -> int:
        return self._length

    @property
    def fork(self) -> int:
        return self._fork

    @property
    def byte_length(self) -> int:
        return self._length * self.block_size

    def missing_tree_nodes(self, node: int) -> int:
        return 0

    def has(self, index: int) -> bool:
        return index in self.blocks

    def contiguous_length(self) -> int:
        i = 0
        while i in self.blocks:
            i += 1
        return i

    def have_bits(self, start: int, count: int) -> bytes:
        v = 0
        for k in range(count):
            if start + k in self.blocks:
                v |= 1 << k
        return v.to_bytes(count // 8, "little")

    def missing_nodes(self, index: int) -> int:
        return 0

    def needs_manifest(self) -> bool:
        return False

    # writer side
    def append(self, n: int) -> int:
        old = self._length
        for i in range(old, old + n):
            self.blocks[i] = block_value(self._key, self._fork, i, self.block_size)
        self._length += n
        return old

    def truncate_and_fork(self, length: int) -> None:
        for i in list(self.blocks):
            if i >= length:
                del self.blocks[i]
        self._length = length
        self._fork += 1

    # LogPort
    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        if isinstance(request, wire.RangeRequest):
            first = flat_tree.left_span(request.node) // 2
            end = flat_tree.right_span(request.node) // 2 + 1
            if any(i not in self.blocks for i in range(first, end)):
                return None
            values = tuple(self.blocks[i] for i in range(first, end))
            root = wire.Node(request.node, sum(map(len, values)), b"\x00" * 32)
            return wire.RangeData(0, request.id, self._fork, request.node, values, (root,))
        b = request.block
        block = None
        if b is not None:
            if b.index not in self.blocks:
                return None
            block = wire.DataBlock(b.index, self.blocks[b.index], ())
        up = None
        if request.upgrade is not None:
            up = wire.DataUpgrade(
                request.upgrade.start,
                self._length - request.upgrade.start,
                (),
                (),
                head_sig(self._key, self._fork, self._length),
            )
        return wire.Data(0, request.id, self._fork, block, None, None, up)

    async def apply(self, data: wire.Data) -> Applied:
        upgraded = False
        truncated = None
        new_fork, new_len = self._fork, self._length
        if data.upgrade is not None:
            u = data.upgrade
            length = u.start + u.length
            if u.signature != head_sig(self._key, data.fork, length):
                self.refused += 1
                raise InvalidProofError("bad signature")
            if data.fork < self._fork or (data.fork == self._fork and length < self._length):
                self.refused += 1
                raise InvalidProofError("stale upgrade")
            new_fork, new_len = data.fork, length
        if data.fork != new_fork:
            self.refused += 1
            raise InvalidProofError("fork mismatch")
        if data.block is not None:
            i = data.block.index
            if i >= new_len or data.block.value != block_value(
                self._key, new_fork, i, len(data.block.value)
            ):
                self.refused += 1
                raise InvalidProofError("bad block")
        if data.hash is not None:
            # A range's hash proof: the fake trusts no tree, only block values.
            self.applied += 1
            return Applied()
        if (new_fork, new_len) != (self._fork, self._length):
            if new_fork != self._fork:
                truncated = 0
                self.blocks.clear()
            self._fork, self._length = new_fork, new_len
            upgraded = True
        size = 0
        stored = None
        if data.block is not None:
            self.blocks[data.block.index] = data.block.value
            size = len(data.block.value)
            stored = data.block.index
        self.applied += 1
        return Applied(stored, size, upgraded, truncated)

    async def apply_many(self, datas: Sequence[wire.Data]) -> list[Applied | HyperlogError]:
        out: list[Applied | HyperlogError] = []
        for d in datas:
            try:
                out.append(await self.apply(d))
            except HyperlogError as exc:
                out.append(exc)
        return out

    async def apply_range(self, data: wire.RangeData, first: int) -> list[Applied | HyperlogError]:
        return await self.apply_many(range_proofs(0, data, first))

    def check_conflict(self, data: wire.Data) -> ForkConflictError | None:
        u = data.upgrade
        if u is None or u.signature != head_sig(self._key, data.fork, u.start + u.length):
            raise InvalidProofError("bad signature")
        return None


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (FakeLog's methods) to completion."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    raise AssertionError("coroutine suspended")
