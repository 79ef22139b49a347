"""Races and limits in replication found by review, each reproduced with real `Log`s.

Real clock (the log stores in worker threads, see `test_replicate_log.py`), with
generous `trio.fail_after` bounds and no speed assertions. Gated streams make one side
stop reading so that an answer is already on the wire when the requester changes its
mind (cancel, truncation): the races are then deterministic.
"""

from __future__ import annotations

from functools import partial

import trio
import trio.socket
import trio.testing

from hyperlog import wire
from hyperlog.crypto import key_pair
from hyperlog.errors import ReplicationError
from hyperlog.log import open_store
from hyperlog.replication import replicate, replication_for

from . import test_replication_fuzz as fuzz
from .replication_race_helpers import Gated, blocks, gated_replication, replicating, writer_log

# ---------------------------------------------------------------- 7: frame-size limit


async def test_range_with_big_blocks_is_fetched_block_by_block() -> None:
    # Two 5 MiB blocks inside the first 64-block range (the span comes from the
    # log's *average* block size): its RangeData would be ~10 MiB, over the frame
    # limit. The writer used to crash in its writer task; now it refuses the range
    # and the reader fetches those blocks one by one.
    values = blocks(200)
    values[10] = b"A" * (5 << 20)
    values[20] = b"B" * (5 << 20)
    with trio.fail_after(60):
        async with replicating(values) as r:
            rep = replication_for(r.reader)
            assert rep.engine.range_span() == 64
            p = await rep.download(0, 200)
            assert p.missing == 0
            assert r.writer_session.error is None and r.reader_session.error is None
            for i in (0, 10, 20, 63, 199):
                assert await r.reader.get(i) == values[i]


async def test_oversized_range_request_is_refused_not_fatal() -> None:
    # A peer asks for 64 x 256 KiB = 16 MiB in one RangeRequest (a modified reader):
    # the writer answers NoData(invalid) instead of crashing, and the blocks still
    # arrive through single-block requests.
    values = [bytes([i]) * (256 << 10) for i in range(64)]
    with trio.fail_after(60):
        async with replicating(values) as r:
            rep = replication_for(r.reader)
            rep.engine.range_span = lambda: 64  # type: ignore[method-assign]
            p = await rep.download(0, 64)
            assert p.missing == 0
            assert r.writer_session.error is None and r.reader_session.error is None
            assert await r.reader.get(63) == values[63]


async def test_oversized_answer_is_refused_by_on_served() -> None:
    # A view without node sizes cannot refuse the request early; the built answer is
    # refused instead of being queued (it could not be encoded).
    with trio.fail_after(30):
        async with replicating(blocks(4)) as r:
            wsess = r.writer_session
            rep = replication_for(r.writer)
            ch = rep.engine.peers[0]
            node = 1  # blocks 0-1
            req = wire.RangeRequest(ch.remote_id, 999, 0, node, 0)
            big = b"x" * (wire.MAX_BLOCK_SIZE // 2 + 1)
            data = wire.RangeData(ch.local_id, 999, 0, node, (big, big), ())
            before = len(wsess.engine.outbox)
            rep.engine.on_served(ch, req, data)
            sent = list(wsess.engine.outbox)[before:]
            assert sent == [wire.NoData(ch.local_id, 999, wire.NO_DATA_INVALID)]


async def test_unencodable_message_ends_the_session_with_an_error() -> None:
    # Whatever reaches the writer task too big to encode ends the session with a
    # reason (session.error); it used to escape from `replicate` as a ValueError.
    with trio.fail_after(30):
        async with replicating(blocks(4)) as r:
            wsess = r.writer_session
            block = wire.DataBlock(0, b"x" * wire.MAX_FRAME_SIZE, ())
            wsess.engine.send(wire.Data(1, 1, 0, block=block))
            await wsess.closed.wait()
            assert isinstance(wsess.error, ReplicationError)
            assert "MAX_FRAME_SIZE" in str(wsess.error)


# ---------------------------------------------------------------- 4: cancelled answers


async def test_answer_to_a_cancelled_get_keeps_the_peer() -> None:
    # The app gives up on a get while the writer's Data is already on its way (the
    # reader is not reading for a moment): the late answer used to be taken for
    # "data for a request we never sent" and drop a healthy peer.
    async with open_store() as ws, open_store() as rs:
        writer = await writer_log(ws, blocks(100))
        reader = await rs.open_log(writer.key)
        a, b = trio.testing.memory_stream_pair()
        gb = Gated(b)
        with trio.fail_after(30):
            async with replicate(a, writer), replicate(gb, reader) as rsess:
                rep = replication_for(reader)
                await rep.update()
                gb.pause()
                with trio.move_on_after(0.2):
                    await rep.get(10)
                assert not reader.has(10)
                await trio.sleep(0.1)  # the Data waits for the reader, behind the Cancel
                gb.resume()
                await trio.sleep(0.1)  # the reader reads the Cancel's late answer
                assert rsess.error is None and not rsess.closed.is_set()
                await rep.get(11, timeout=10)  # the same session still serves us
                assert rep.peers == 1
                assert not reader.has(10)  # the ignored answer was not stored
                await rep.get(10)


def test_late_answer_after_a_timeout_lifts_the_verdict() -> None:
    # Engine level (the fuzz harness, fake logs): the reader's upgrade request times
    # out before its answer is read. The late answer is ignored but shows the peer
    # is alive: the upgrade is asked again (with a longer timeout) and the get that
    # had failed for want of a peer gets its block; the session is not dropped.
    fuzz.test_engine_under_faults.hypothesis.inner_test(  # type: ignore[attr-defined]
        [("deliver", True, 0, 0), ("want", False, 0, 0)]
    )


# ---------------------------------------------------------------- 5: cancelled ranges


async def test_releasing_a_get_inside_a_range_leaves_no_stale_blocks() -> None:
    # A get inside a RangeRequest of a download (download stopped first): releasing
    # the get cancelled the whole range but left its other 63 blocks marked in flight
    # for good, so later gets timed out and downloads never finished.
    with trio.fail_after(60):
        async with gated_replication(1000) as g:
            rep, ga = g.rep, g.gate
            eng = rep.engine
            ga.pause()  # the writer does not read our requests for a while
            async with trio.open_nursery() as gets:
                async with trio.open_nursery() as dl:
                    dl.start_soon(rep.download, 0, 1000)
                    await trio.sleep(0.05)
                    gets.start_soon(rep.get, 5)
                    await trio.sleep(0.05)
                    assert any(x.kind == "range" for x in eng.peers[0].inflight.values())
                    dl.cancel_scope.cancel()
                gets.cancel_scope.cancel()
            ch = eng.peers[0]
            for index, reqs in eng.block_reqs.items():
                for c, rid in reqs:
                    assert rid in c.inflight or rid in c.verifying, index
            ga.resume()
            await rep.get(7, timeout=10)
            p = await rep.download(0, 64)
            assert p.missing == 0
            assert g.session.error is None and ch in eng.peers


# ---------------------------------------------------------------- 1: get vs truncation


async def test_get_in_flight_when_the_writer_truncates() -> None:
    # The writer truncates (fork 1) while our Request(fork 0, block 10) waits for it
    # to read: it answers NoData(fork). That used to count as "this peer lacks block
    # 10" (peer marked tried, have-bit dropped, never undone on the fork change), so
    # the get timed out although block 10 survived the truncation.
    with trio.fail_after(30):
        async with gated_replication(100) as g:
            writer, reader, ga = g.writer, g.reader, g.gate
            ga.pause()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(g.rep.get, 10, timeout=5, wait=False))
                await trio.sleep(0.05)  # the request is on the wire
                await writer.truncate(50)
                await writer.append(blocks(60, b"c", 50))
                await trio.sleep(0.05)
                ga.resume()
            assert reader.has(10) and reader.fork == 1
            assert g.session.error is None


# ---------------------------------------------------------------- 2: upgrade vs truncation


async def test_stale_upgrade_refusal_does_not_mark_the_new_head_failed() -> None:
    # Our upgrade request {100, 10} on fork 0 waits while the writer truncates and
    # appends (fork 1, length 120); its NoData used to mark the peer's *current* head
    # (1, 120) as failed, so we never upgraded to it.
    with trio.fail_after(30):
        async with gated_replication(100) as g:
            writer, reader, rep, ga = g.writer, g.reader, g.rep, g.gate
            ga.pause()
            await writer.append(blocks(110, b"x", 100))  # we ask for {100, 10}
            await trio.sleep(0.05)
            await writer.truncate(105)
            await writer.append(blocks(120, b"y", 105))
            await trio.sleep(0.05)
            ga.resume()  # the writer refuses the fork-0 upgrade
            await rep.update(timeout=10)
            assert (reader.fork, reader.length) == (1, 120)
            assert rep.engine.peers[0].upgrade_failed_at is None
            await rep.get(115, timeout=10, wait=False)
            assert g.session.error is None


# ---------------------------------------------------------------- 3: live download vs truncations


async def test_live_download_survives_repeated_truncations_mid_transfer() -> None:
    # A live download while the writer truncates twice with requests in flight (the
    # second time growing past its old length): fork NoData used to drop have-bits
    # that no Want ever restored, and the retried blocks were never asked for again.
    n = 2000
    with trio.fail_after(60):
        async with gated_replication(n, loose=True) as g:
            writer, reader, rep, ga = g.writer, g.reader, g.rep, g.gate
            await rep.download(0, n - 600)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(rep.download, 0, None)
                for rnd, tag in enumerate([b"c", b"d"]):
                    ga.pause()
                    await trio.sleep(0.05)  # requests wait for the writer
                    cut = writer.length - 10
                    await writer.truncate(cut)
                    await writer.append(blocks(n + 300 * rnd, tag, cut))
                    ga.resume()
                    with trio.fail_after(10):
                        # Polls two logs' state (bounded by fail_after).
                        while reader.fork != writer.fork or not all(  # noqa: ASYNC110
                            reader.has(i) for i in range(writer.length)
                        ):
                            await trio.sleep(0.05)
                    if rnd == 0:
                        await writer.append(blocks(n + 300, b"e", writer.length))
                nursery.cancel_scope.cancel()
            assert g.session.error is None
            for i in (0, n - 1, n + 299):
                assert await reader.get(i) == await writer.get(i)


def _settle(net: fuzz.Net) -> None:
    for _ in range(100):
        moved = False
        for side in (net.w, net.r):
            while side.inbox:
                net.deliver(side, 0)
                moved = True
        if not moved:
            return


def test_download_asks_again_about_blocks_whose_bits_were_forgotten() -> None:
    # Engine level (fake logs): the peer cannot serve a RangeRequest (NoData, not
    # available). That forgets its whole have-prefix, and the range's blocks go to
    # the retry set, which only asked peers *known* to have a block while the cursor
    # skips retry items: nobody ever sent a Want again and the download hung.
    net = fuzz.Net()
    _settle(net)
    ch = net.r.rep.peers[0]
    d = net.r.rep.want_range(0, fuzz.LENGTH, net.now)
    net.flush()
    (rng,) = [x for x in ch.inflight.values() if x.kind == "range"]
    # The writer never sees the range request; it refuses it instead.
    net.w.inbox = [m for m in net.w.inbox if not isinstance(wire.decode(m), wire.RangeRequest)]
    refusal = wire.NoData(ch.remote_id, rng.id, wire.NO_DATA_NOT_AVAILABLE)
    net.r.session.receive(refusal, net.now)
    net.flush()
    for _ in range(5):
        _settle(net)
        net.tick(1.0)
    assert net.dead is None
    assert d.done and d.missing == 0


# ---------------------------------------------------------------- 6: inline work vs drain


async def test_two_peers_serving_each_other_big_blocks_do_not_deadlock() -> None:
    # Each side writes one log and downloads the other's, 4 blocks of 8 MiB each way,
    # over a socket pair (real kernel buffers, so a side that stops reading stalls its
    # peer's writer). The reader task used to serve small requests inline and wait
    # for its own outbox to drain: both readers stopped reading, neither drained.
    k = 4
    big = wire.MAX_BLOCK_SIZE
    async with open_store() as sa, open_store() as sb:
        x = await sa.create_log(key_pair(bytes(32)))
        y = await sb.create_log(key_pair(bytes(range(32))))
        await x.append([bytes([i]) * big for i in range(k)])
        await y.append([bytes([i + 1]) * big for i in range(k)])
        xr = await sb.open_log(x.key)
        yr = await sa.open_log(y.key)
        s1, s2 = trio.socket.socketpair()
        with trio.fail_after(60):
            async with (
                replicate(trio.SocketStream(s1), x, yr) as sess_a,
                replicate(trio.SocketStream(s2), xr, y) as sess_b,
            ):
                ra, rb = replication_for(yr), replication_for(xr)
                await ra.update()
                await rb.update()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ra.download, 0, k)
                    nursery.start_soon(rb.download, 0, k)
                assert sess_a.error is None and sess_b.error is None
        assert all(yr.has(i) and xr.has(i) for i in range(k))
