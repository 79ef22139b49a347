"""A sparse reader of a remote HAMT over hyperlog replication (real `hyperlog.Log`s).

Real clock, like hyperlog's own replication tests: the log works in worker threads,
which autojump would race. Each test takes well under a second.
"""

from __future__ import annotations

from contextlib import aclosing

import pytest
import trio
import trio.testing

import hamt
import hyperlog
from hyperlog.log import open_store
from hyperlog.replication import replicate, replication_for


async def test_sparse_remote_get_fetches_only_the_path() -> None:
    async with open_store() as ws, open_store() as rs:
        wlog = await ws.create_log()
        async with hamt.open_hamt(wlog) as writer:
            for i in range(0, 4000, 1000):
                async with writer.batch() as b:
                    for j in range(i, i + 1000):
                        b.put(f"k{j}", b"v%d" % j)
            for j in range(50):
                await writer.put(f"single/{j}", b"s%d" % j)
            rlog = await rs.open_log(wlog.key)
            s1, s2 = trio.testing.memory_stream_pair()
            h1, h2 = trio.testing.memory_stream_pair()
            with trio.fail_after(60):
                async with (
                    replicate(s1, wlog),
                    replicate(s2, rlog),
                    trio.open_nursery() as nursery,
                ):
                    await nursery.start(hamt.serve_path_hints, h1, writer)
                    await replication_for(rlog).update()
                    assert rlog.length == wlog.length
                    async with hamt.open_hamt(rlog) as reader:
                        assert await reader.get("k1234") == b"v1234"
                        assert await reader.get("single/7") == b"s7"
                        assert await reader.get("nope") is None
                        held = rlog.statistics().blocks_held
                        assert held <= 12  # the paths only, not the 55-block log
                        client = hamt.PathHintClient(h2)
                        reply = await client.path_hint("k3999")
                        assert await reader.get("k3999", hint=reply.blocks) == b"v3999"
                        assert all(rlog.has(s) for s in reply.blocks)
                        assert {k async for k, _ in reader.items("single")} == {
                            f"single/{j}" for j in range(50)
                        }
                    # A reader that asks for hints by itself on its first local miss.
                    async with open_store() as rs2:
                        rlog2 = await rs2.open_log(wlog.key)
                        s3, s4 = trio.testing.memory_stream_pair()
                        async with replicate(s3, wlog), replicate(s4, rlog2):
                            await replication_for(rlog2).update()
                            async with hamt.open_hamt(rlog2, hints=client) as hinted:
                                assert await hinted.get("k2500") == b"v2500"
                                path = (await client.path_hint("k2500")).blocks
                                assert all(rlog2.has(s) for s in path)
                                assert await hinted.get("single/3") == b"s3"
                                assert await hinted.get("absent") is None
                    await h2.aclose()
                    nursery.cancel_scope.cancel()


async def test_reader_watch_follows_the_writer_live() -> None:
    async with open_store() as ws, open_store() as rs:
        wlog = await ws.create_log()
        async with hamt.open_hamt(wlog) as writer:
            await writer.put("a", b"1")
            rlog = await rs.open_log(wlog.key)
            s1, s2 = trio.testing.memory_stream_pair()
            with trio.fail_after(60):
                async with replicate(s1, wlog), replicate(s2, rlog):
                    await replication_for(rlog).update()
                    async with hamt.open_hamt(rlog) as reader, aclosing(reader.watch()) as it:
                        await writer.put("b", b"2")
                        await writer.delete("a")
                        got = []
                        async for change in it:
                            got.append((change.version, change.key, change.value))
                            if len(got) == 2:
                                break
                        assert got == [(3, "b", b"2"), (4, "a", None)]
                        assert await reader.get("b") == b"2"
                        assert await reader.get("a") is None


async def test_a_replica_opened_before_it_heard_the_writer_waits_for_block_0() -> None:
    # Found by a newcomer following the docs: `open_hamt` on a replica right after
    # `replicate` started raised "the log is empty and not writable" (it had not heard
    # the writer's length yet), while `rlog.get(0)` at the same moment waited and
    # fetched the block; it took an undocumented `update()` first.
    async with open_store() as ws, open_store() as rs:
        wlog = await ws.create_log()
        async with hamt.open_hamt(wlog) as writer:
            for j in range(20):
                await writer.put(f"k{j}", b"v%d" % j)
            rlog = await rs.open_log(wlog.key)
            assert rlog.length == 0
            s1, s2 = trio.testing.memory_stream_pair()
            with trio.fail_after(60):
                async with (
                    replicate(s1, wlog),
                    replicate(s2, rlog),
                    hamt.open_hamt(rlog) as reader,
                ):
                    assert reader.version == wlog.length == 21
                    assert await reader.get("k7") == b"v7"
        # No replicator, nothing to fetch block 0 from: refused at once, as before.
        async with open_store() as alone:
            lonely = await alone.open_log(wlog.key)
            with pytest.raises(hamt.ReadOnlyError, match="empty and not writable"):
                async with hamt.open_hamt(lonely):
                    pass  # pragma: no cover


async def test_a_replica_of_a_log_the_peer_does_not_serve_fails_through_wait_for_peers() -> None:
    # A mistyped key: `open_hamt` on the empty replica waits for block 0 like any read
    # (bounded by the caller); `wait_for_peers` first says at once that no peer has it.
    async with open_store() as ws, open_store() as rs, open_store() as other:
        wlog = await ws.create_log()
        await wlog.append([b"x"])
        mistyped = await rs.open_log((await other.create_log()).key)
        s1, s2 = trio.testing.memory_stream_pair()
        with trio.fail_after(30):
            async with replicate(s1, wlog), replicate(s2, mistyped):
                with pytest.raises(hyperlog.NoPeersError):
                    await replication_for(mistyped).wait_for_peers()
                with trio.move_on_after(0.2) as waited:
                    async with hamt.open_hamt(mistyped):
                        pass  # pragma: no cover
                assert waited.cancelled_caught
