"""Shared helpers for the hamt tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import hamt


def constant_hash(value: bytes = b"\x00" * 8) -> Callable[[bytes], bytes]:
    """A component hash under which every key collides."""
    return lambda _data: value


def first_byte_hash(data: bytes) -> bytes:
    """A component hash where keys collide whenever their first byte is equal."""
    return (data[:1] or b"\x00") * 8


async def collect(aiter: object) -> list[object]:
    """Drain an async iterator into a list."""
    return [x async for x in aiter]  # type: ignore[attr-defined]


class WrappedLog:
    """A `LogLike` that hands everything to an inner `MemoryLog`: tests subclass it to
    slow, gate or fail one operation."""

    def __init__(self, inner: hamt.MemoryLog | None = None) -> None:
        self.inner = inner if inner is not None else hamt.MemoryLog()

    @property
    def key(self) -> bytes:
        return self.inner.key

    @property
    def length(self) -> int:
        return self.inner.length

    @property
    def writable(self) -> bool:
        return True

    async def get(self, index: int) -> bytes:
        return await self.inner.get(index)

    async def append(self, blocks: Sequence[bytes]) -> object:
        return await self.inner.append(blocks)
