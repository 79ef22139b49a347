"""Fuzzing the block decoder and the walks: any bytes, any msgpack shape, any flipped
byte ends in a valid block or a `HamtError`, never another exception or a hang."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import hamt
from hamt.constants import SALT_BYTES
from hamt.index import load_hamt
from hamt.wire import decode_block, encode_header, encode_node_block

SHAPES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**40), max_value=2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=4)
    | st.binary(max_size=4),
    lambda inner: st.lists(inner, max_size=6),
    max_leaves=40,
)


@given(data=st.binary(max_size=300), seq=st.integers(min_value=1, max_value=50))
def test_random_bytes(data: bytes, seq: int) -> None:
    with contextlib.suppress(hamt.CorruptNodeError):
        decode_block(data, seq)


@given(ops=SHAPES, root=SHAPES, seq=st.integers(min_value=1, max_value=8))
def test_random_shapes(ops: Any, root: Any, seq: int) -> None:
    with contextlib.suppress(hamt.CorruptNodeError):
        decode_block(encode_node_block(ops, root), seq)


async def _valid_log() -> hamt.MemoryLog:
    log = hamt.MemoryLog(bytes(32))
    async with hamt.open_hamt(log, hash_function=lambda d: (d[:1] or b"\0") * 8) as db:
        for i in range(12):
            await db.put(f"k{i % 5}/{i}", b"%d" % i)
        async with db.batch() as b:
            for i in range(12, 30):
                b.put(f"k{i % 3}", b"%d" % i)
            b.delete("k1/1")
        await db.delete("k2/2")
    return log


@settings(max_examples=150)
@given(data=st.data())
def test_flipped_bytes_never_escape(data: st.DataObject) -> None:
    log = trio.run(_valid_log)
    seq = data.draw(st.integers(min_value=1, max_value=log.length - 1))
    block = bytearray(log.blocks[seq])
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        i = data.draw(st.integers(min_value=0, max_value=len(block) - 1))
        block[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    log.blocks[seq] = bytes(block)

    async def read_all() -> None:
        reader = await load_hamt(log, hash_function=lambda d: (d[:1] or b"\0") * 8, cache_blocks=2)
        with trio.fail_after(10):
            for key in ("k0", "k1", "k2", "k0/5", "k1/1", "k3/3", "zz"):
                with contextlib.suppress(hamt.HamtError):
                    await reader.get(key)
            with contextlib.suppress(hamt.HamtError):
                _ = [x async for x in reader.items()]
            with contextlib.suppress(hamt.HamtError):
                _ = [x async for x in reader.diff(2)]

    trio.run(read_all)


def test_header_salt_is_checked() -> None:
    with pytest.raises(ValueError):
        encode_header(b"short")
    assert len(encode_header(b"\0" * SALT_BYTES)) > SALT_BYTES
