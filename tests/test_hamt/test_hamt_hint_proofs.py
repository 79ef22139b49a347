"""Hints that carry the blocks with Merkle proofs (`hamt.proofs`): a cold reader's get
is one hint round trip, the proofs are verified by the reader's `hyperlog.Log`, and
a bad proof stores nothing (the get falls back to replication)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

import hamt
from hamt.hints import PathHintClient, serve_path_hints
from hamt.wire import BlockProofData, HintReply, HintRequest, decode_hint, encode_hint
from hyperlog.log import Log, open_store
from hyperlog.replication import replicate, replication_for


@asynccontextmanager
async def writer_with_hints(
    n: int,
) -> AsyncIterator[tuple[Log, hamt.Hamt[bytes], PathHintClient]]:
    async with open_store() as ws:
        wlog = await ws.create_log()
        async with hamt.open_hamt(wlog) as writer, trio.open_nursery() as nursery:
            for i in range(n):
                await writer.put(f"k{i}", b"v%d" % i)
            a, b = trio.testing.memory_stream_pair()
            await nursery.start(serve_path_hints, a, writer)
            yield wlog, writer, PathHintClient(b)
            await b.aclose()


@asynccontextmanager
async def reader_log(wlog: Log) -> AsyncIterator[Log]:
    """A fresh reader that learned the writer's signed head, then lost its peer."""
    async with open_store() as rs:
        rlog = await rs.open_log(wlog.key)
        s1, s2 = trio.testing.memory_stream_pair()
        async with replicate(s1, wlog), replicate(s2, rlog):
            await replication_for(rlog).update()
            await rlog.get(0)  # the header, which open_hamt reads
        yield rlog


async def test_cold_get_is_answered_by_the_hint_alone() -> None:
    with trio.fail_after(15):
        async with (
            writer_with_hints(300) as (wlog, _writer, client),
            reader_log(wlog) as rlog,
        ):
            assert rlog.statistics().blocks_held == 1
            # No replication now: without proofs in the hint, these gets could not end.
            async with hamt.open_hamt(rlog, hints=client) as reader:
                assert await reader.get("k123") == b"v123"
                assert await reader.get("k7") == b"v7"
                assert await reader.get("absent") is None
            held = rlog.statistics().blocks_held
            assert 2 < held < 30  # the paths only


async def test_proofs_verify_against_an_older_reader_head() -> None:
    with trio.fail_after(15):
        async with (
            writer_with_hints(100) as (wlog, writer, client),
            reader_log(wlog) as rlog,
        ):
            length = rlog.length
            for i in range(100, 160):  # the writer moves on; the reader does not know
                await writer.put(f"k{i}", b"w%d" % i)
            await writer.put("k5", b"changed")
            async with hamt.open_hamt(rlog, hints=client) as reader:
                assert reader.version == length
                assert await reader.get("k5") == b"v5"  # as of the reader's version
                assert await reader.get("k99") == b"v99"
                assert await reader.get("k150") is None


class Liar:
    """A hint source whose proofs carry altered blocks."""

    def __init__(self, inner: PathHintClient) -> None:
        self.inner = inner
        self.calls = 0

    async def path_hint(self, key: str, version: int = 0, fork: int | None = None) -> HintReply:
        self.calls += 1
        reply = await self.inner.path_hint(key, version, fork)
        bad = tuple(dataclasses.replace(p, value=p.value[:-1] + b"\x00") for p in reply.proofs)
        return dataclasses.replace(reply, proofs=bad)


async def test_a_bad_proof_stores_nothing_and_replication_answers() -> None:
    with trio.fail_after(15):
        async with writer_with_hints(200) as (wlog, _writer, client), open_store() as rs:
            rlog = await rs.open_log(wlog.key)
            s1, s2 = trio.testing.memory_stream_pair()
            async with replicate(s1, wlog), replicate(s2, rlog):
                await replication_for(rlog).update()
                liar = Liar(client)
                async with hamt.open_hamt(rlog, hints=liar) as reader:
                    assert await reader.get("k42") == b"v42"
                    assert await reader.get("k43") == b"v43"
                assert liar.calls >= 1
                for seq in range(1, rlog.length):
                    if rlog.has(seq):
                        assert await rlog.get(seq) == await wlog.get(seq)


def test_codec_with_proofs() -> None:
    proof = BlockProofData(5, b"block", ((10, 5, b"\x01" * 32), (13, 9, b"\x02" * 32)))
    reply = HintReply(3, 9, [8, 5], (proof,))
    assert decode_hint(encode_hint(reply)) == reply
    assert decode_hint(encode_hint(HintRequest(1, "a", 9, 2))) == HintRequest(1, "a", 9, 2)
    for bad in [
        HintReply(3, 9, [8], (proof,)),  # a proof of a block the hint does not name
        HintReply(3, 9, [5], (dataclasses.replace(proof, nodes=((1, 1, b"short"),)),)),
        HintReply(3, 9, [5], (dataclasses.replace(proof, nodes=((-1, 1, b"\x00" * 32),)),)),
        HintReply(3, 9, [5], (proof, proof, proof)),  # more proofs than blocks
        HintReply(3, 999, list(range(1, 300)), (proof,) * 257),  # over MAX_HINT_PROOFS
    ]:
        with pytest.raises(hamt.CorruptNodeError):
            decode_hint(encode_hint(bad))
    with pytest.raises(hamt.CorruptNodeError):
        decode_hint(encode_hint(HintRequest(1, "a", 9, -1)))
