"""Shared helpers for the hamt tests."""

from __future__ import annotations

from collections.abc import Callable


def constant_hash(value: bytes = b"\x00" * 8) -> Callable[[bytes], bytes]:
    """A component hash under which every key collides."""
    return lambda _data: value


def first_byte_hash(data: bytes) -> bytes:
    """A component hash where keys collide whenever their first byte is equal."""
    return (data[:1] or b"\x00") * 8


async def collect(aiter: object) -> list[object]:
    """Drain an async iterator into a list."""
    return [x async for x in aiter]  # type: ignore[attr-defined]
