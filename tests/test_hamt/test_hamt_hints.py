"""Path hints over a stream: a sparse reader asks a peer which blocks a get reads,
prefetches them all at once, and then answers the get without another fetch."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import hamt
from hamt.hints import PathHintClient, _Framer, serve_path_hints
from hamt.wire import HintReply, HintRequest, decode_hint, encode_hint


async def test_hinted_sparse_get_needs_one_batch_of_fetches() -> None:
    wlog = hamt.MemoryLog()
    async with hamt.open_hamt(wlog) as writer:
        for i in range(0, 3000, 500):
            async with writer.batch() as batch:
                for j in range(i, i + 500):
                    batch.put(f"k{j}", b"%d" % j)
        for j in range(200):
            await writer.put(f"s{j}", b"s")
        rlog = hamt.MemoryLog(wlog.key, writable=False)
        rlog.blocks = wlog.blocks
        a, b = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery, hamt.open_hamt(rlog) as reader:
            await nursery.start(serve_path_hints, a, writer)
            client = PathHintClient(b)
            for key, want in [("k1234", b"1234"), ("s7", b"s"), ("absent", None)]:
                reply = await client.path_hint(key)
                assert reply.version == wlog.length and reply.blocks[0] == wlog.length - 1
                await reader.prefetch(reply.blocks)
                before = rlog.gets
                assert await reader.get(key) == want
                assert rlog.gets == before  # the hint covered the whole path
            assert (await client.path_hint("a//b")).blocks == []  # invalid key: no hint
            await b.aclose()


def test_framer_and_codec() -> None:
    f = _Framer()
    payload = encode_hint(HintRequest(7, "a/b"))
    data = len(payload).to_bytes(4, "big") + payload
    for byte in data[:-1]:
        f.receive_data(bytes([byte]))
        assert f.next_frame() is None
    f.receive_data(data[-1:])
    frame = f.next_frame()
    assert frame is not None and decode_hint(frame) == HintRequest(7, "a/b")
    assert decode_hint(encode_hint(HintReply(1, 10, [9, 3]))) == HintReply(1, 10, [9, 3])
    f.receive_data(b"\xff\xff\xff\xff")
    with pytest.raises(hamt.CorruptNodeError):
        f.next_frame()
    for bad in [
        b"garbage",
        encode_hint(HintReply(1, 10, [10])),  # a block at or past the version
        encode_hint(HintReply(1, 10, [0])),
        encode_hint(HintRequest(1, "")),
    ]:
        with pytest.raises(hamt.CorruptNodeError):
            decode_hint(bad)


async def test_reader_asks_for_a_hint_once_per_get_on_a_miss() -> None:
    wlog = hamt.MemoryLog()
    async with hamt.open_hamt(wlog) as writer:
        for j in range(400):
            await writer.put(f"k{j}", b"%d" % j)
        calls: list[tuple[str, int]] = []

        class Source:
            async def path_hint(
                self, key: str, version: int = 0, fork: int | None = None
            ) -> HintReply:
                calls.append((key, version))
                return HintReply(0, version, await writer.checkout(version).path_hint(key))

        rlog = hamt.MemoryLog(wlog.key, writable=False)
        rlog.blocks = wlog.blocks
        async with hamt.open_hamt(rlog, hints=Source()) as reader:
            before = rlog.gets
            assert await reader.get("k123") == b"123"
            assert calls == [("k123", wlog.length)]
            hinted = len(await writer.path_hint("k123"))
            assert rlog.gets - before == hinted  # exactly the hinted blocks, fetched together
            assert await reader.get("k123") == b"123"
            assert len(calls) == 1  # everything local now: no second hint
