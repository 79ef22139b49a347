"""Edges a review found: two writers on one log, a new fork, hint failures, strict tags.

Each test failed before its fix:

* two `Hamt`s on one log wrote concurrently: a block built for position n landed at
  n + 1, with every pointer off by one (a corrupt root, silently lost keys);
* after a truncation, `history`, `diff` and `watch` answered from blocks cached on the
  old fork;
* one cancelled hint call left its answer unread, and every later call read the wrong
  answer and failed ("out of turn") for the rest of the connection;
* a hint peer that had gone away, or a hinted block that does not decode (even one off
  the key's path), failed the get instead of falling back to plain reads;
* a block or header whose tag was `1.0` or `True` decoded as if it were `1`.
"""

from __future__ import annotations

import msgpack
import pytest
import trio
import trio.testing

import hamt
from hamt.errors import CorruptNodeError
from hamt.hints import PathHintClient, serve_path_hints
from hamt.index import load_hamt
from hamt.wire import decode_block, decode_header

from .helpers import WrappedLog


class _YieldingLog(WrappedLog):
    """A `MemoryLog` whose reads yield to the scheduler, as any I/O-backed log does,
    and which can be truncated to a new fork (the optional `fork` of `LogLike`)."""

    def __init__(self) -> None:
        super().__init__()
        self.fork = 0

    async def get(self, index: int) -> bytes:
        await trio.lowlevel.checkpoint()
        return await self.inner.get(index)

    def truncate(self, length: int) -> None:
        del self.inner.blocks[length:]
        self.fork += 1


async def test_two_hamts_writing_one_log_take_turns() -> None:
    log = _YieldingLog()
    a = await load_hamt(log, cache_blocks=1)  # a tiny cache: writes must read the log
    for i in range(50):
        await a.put(f"k{i}", b"a%d" % i)
    b = await load_hamt(log, cache_blocks=1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.put, "k3", b"NEW-A")
        nursery.start_soon(b.put, "zzz", b"B")
    reader = await load_hamt(log)
    expected = {f"k{i}": b"a%d" % i for i in range(50)} | {"k3": b"NEW-A", "zzz": b"B"}
    assert {k: v async for k, v in reader.items()} == expected
    for key, value in expected.items():
        assert await reader.get(key) == value


async def test_history_and_diff_do_not_answer_from_an_old_fork() -> None:
    log = _YieldingLog()
    db = await load_hamt(log)
    await db.put("a", b"1")
    await db.put("b", b"OLD")  # block 2, cached by `db`
    assert [c.key async for c in db.history()] == ["a", "b"]
    log.truncate(2)  # a new fork: block 2 is gone...
    other = await load_hamt(log)
    await other.put("c", b"NEW")  # ...and another block 2 took its place
    assert [(c.version, c.key, c.value) async for c in db.history()] == [
        (2, "a", b"1"),
        (3, "c", b"NEW"),
    ]
    assert [(d.key, d.left, d.right) async for d in db.diff(2, 3)] == [("c", None, b"NEW")]


async def _filled_log() -> hamt.MemoryLog:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as writer:
        for j in range(300):
            await writer.put(f"k{j}", b"%d" % j)
    return log


async def test_a_cancelled_hint_call_does_not_spoil_the_next_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = await _filled_log()
    async with hamt.open_hamt(log) as writer:
        ours, theirs = trio.testing.memory_stream_pair()
        client = PathHintClient(theirs)
        with trio.move_on_after(0.05):  # no server yet: the call is given up
            await client.path_hint("k1")
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_path_hints, ours, writer)
            for i in range(5):
                reply = await client.path_hint(f"k{i}")
                assert reply.blocks == await writer.path_hint(f"k{i}")
            nursery.cancel_scope.cancel()


async def test_a_vanished_hint_peer_means_plain_reads() -> None:
    log = await _filled_log()
    replica = hamt.MemoryLog(log.key, writable=False)
    replica.blocks = log.blocks
    ours, theirs = trio.testing.memory_stream_pair()
    await ours.aclose()  # the hint peer went away
    async with hamt.open_hamt(replica, hints=PathHintClient(theirs)) as reader:
        assert await reader.get("k5") == b"5"


async def test_a_bad_hinted_block_off_the_path_fails_nothing() -> None:
    log = hamt.MemoryLog()
    db = await load_hamt(log)
    for i in range(20):
        await db.put(f"k{i}", b"v")
    path = await db.path_hint("k3")
    off_path = next(n for n in range(1, log.length) if n not in path)
    log.blocks[off_path] = b"\xc1 not a block"
    reader = await load_hamt(log)
    assert await reader.get("k3", hint=[*path, off_path]) == b"v"
    # A damaged block the get does need is still reported, as itself.
    log.blocks[path[-1]] = b"\xc1 not a block"
    fresh = await load_hamt(log)
    with pytest.raises(CorruptNodeError):
        await fresh.get("k3", hint=path)


@pytest.mark.parametrize("tag", [1.0, True])
def test_a_block_tag_must_be_the_integer(tag: object) -> None:
    good = msgpack.unpackb(hamt.wire.encode_node_block([], [0, 0]), use_list=True)
    decode_block(msgpack.packb(good, use_bin_type=True), 1)  # the real thing decodes
    good[0] = tag
    with pytest.raises(CorruptNodeError):
        decode_block(msgpack.packb(good, use_bin_type=True), 1)


def test_a_header_tag_and_version_must_be_integers() -> None:
    with pytest.raises(CorruptNodeError):
        decode_header(msgpack.packb([False, "hamt", True, b"s" * 16, None], use_bin_type=True))


class _GatedLog(_YieldingLog):
    """Reads of `gated` take their bytes at once, then wait for `gate` to return them:
    a read that the log's truncation overtakes."""

    def __init__(self) -> None:
        super().__init__()
        self.gated: int | None = None
        self.gate = trio.Event()
        self.reading = trio.Event()

    async def get(self, index: int) -> bytes:
        data = await self.inner.get(index)
        if index == self.gated:
            self.reading.set()
            await self.gate.wait()
        return data


async def test_a_read_overtaken_by_a_new_fork_is_not_cached() -> None:
    log = _GatedLog()
    db = await load_hamt(log)
    await db.put("a", b"1")
    await db.put("b", b"OLD")  # block 2
    reader = await load_hamt(log)
    log.gated = 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader.get, "b")  # reads old block 2, held at the gate
        await log.reading.wait()
        log.truncate(2)  # a new fork: block 2 is replaced...
        log.gated = None
        other = await load_hamt(log)
        await other.put("c", b"NEW")
        assert await reader.get("c") == b"NEW"  # ...and `reader` checked the fork
        log.gate.set()  # now the old read finishes
    assert await reader.get("b") is None
    assert [(c.key, c.value) async for c in reader.history()] == [("a", b"1"), ("c", b"NEW")]
