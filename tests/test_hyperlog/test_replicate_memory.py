"""replicate() over memory streams, in virtual time, with fake logs."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os

import pytest
import trio
import trio.testing

from hyperlog import wire
from hyperlog.errors import BlockNotAvailableError, ReplicationError
from hyperlog.replication import Progress, caps, replicate, replication_for
from hyperlog.replication.constants import INITIAL_WINDOW, MAX_OUTBOX_BYTES
from hyperlog.replication.driver import ReplicationSession

from .test_replication_fakes import FakeLog, block_value

KEY = bytes(range(32))


def assert_blocks_ok(log: FakeLog) -> None:
    for i, v in log.blocks.items():
        assert v == block_value(log.key, log.fork, i, len(v)), i


async def test_update_get_download_two_peers(autojump_clock: trio.testing.MockClock) -> None:
    writer = FakeLog(KEY, length=300)
    reader = FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with replicate(a, writer), replicate(b, reader):
            rep = replication_for(reader)
            await rep.wait_for_peers()
            assert await rep.update()
            assert reader.length == 300
            await rep.get(123)
            assert reader.has(123) and not reader.has(122)
            seen: list[Progress] = []
            p = await rep.download(0, 300, progress=seen.append)
            assert p.missing == 0 and p.blocks == 299
            assert seen and seen[-1].missing == 0
    assert sorted(reader.blocks) == list(range(300))
    assert_blocks_ok(reader)


async def test_three_peers_chain(autojump_clock: trio.testing.MockClock) -> None:
    """c fetches from b, which only has what it fetched from a."""
    a_log, b_log, c_log = FakeLog(KEY, length=100), FakeLog(KEY), FakeLog(KEY)
    ab1, ab2 = trio.testing.memory_stream_pair()
    bc1, bc2 = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with (
            replicate(ab1, a_log),
            replicate(ab2, b_log),
            replicate(bc1, b_log),
            replicate(bc2, c_log),
        ):
            b, c = replication_for(b_log), replication_for(c_log)
            await b.wait_for_peers(2)
            await b.update()
            await b.download(0, 50)
            await c.wait_for_peers()
            await c.update()
            assert c_log.length == 100
            await c.download(0, 50)
            # b lacks block 70: c's get fails fast when told not to wait ...
            with pytest.raises(BlockNotAvailableError):
                await c.get(70, wait=False)
            # ... and succeeds once b has it.
            await b.get(70)
            await c.get(70)
    assert sorted(c_log.blocks) == [*range(50), 70]
    assert_blocks_ok(c_log)


async def test_multi_peer_one_disappears(autojump_clock: trio.testing.MockClock) -> None:
    seeds = [FakeLog(KEY, length=2000), FakeLog(KEY, length=2000)]
    reader = FakeLog(KEY)
    rep = replication_for(reader)
    scopes: list[trio.CancelScope] = []
    sessions: list[ReplicationSession] = []
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            for seed in seeds:
                x, y = trio.testing.memory_stream_pair()
                scopes.append(await nursery.start(_run, x, seed, None))
                await nursery.start(_run, y, reader, sessions)
            await rep.wait_for_peers(2)
            await rep.update()

            def progress(p: Progress) -> None:
                if p.blocks >= 1000:
                    scopes[0].cancel()  # the first seed vanishes mid-download

            await rep.download(0, 2000, progress=progress)
            assert scopes[0].cancel_called
            assert sessions[0].closed.is_set() and rep.peers == 1
            nursery.cancel_scope.cancel()
    assert sorted(reader.blocks) == list(range(2000))
    assert_blocks_ok(reader)
    assert all(s.engine.channels() == [] for s in sessions)


async def _run(
    stream: trio.abc.Stream,
    log: FakeLog,
    sessions: list[ReplicationSession] | None,
    *,
    task_status: trio.TaskStatus[trio.CancelScope],
) -> None:
    with trio.CancelScope() as scope:
        async with replicate(stream, log) as s:
            if sessions is not None:
                sessions.append(s)
            task_status.started(scope)
            await s.wait_closed()


async def test_live_tail(autojump_clock: trio.testing.MockClock) -> None:
    writer, reader = FakeLog(KEY, length=10), FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    wrep, rrep = replication_for(writer), replication_for(reader)
    with trio.fail_after(60):
        async with replicate(a, writer), replicate(b, reader), trio.open_nursery() as n:
            n.start_soon(rrep.download, 0, None)
            for _ in range(5):
                old = writer.append(7)
                wrep.notify_local_update(old)
                while len(reader.blocks) < writer.length:
                    await rrep.wait_changed()
            n.cancel_scope.cancel()
    assert reader.length == 45 and sorted(reader.blocks) == list(range(45))


async def test_get_never_hangs(autojump_clock: trio.testing.MockClock) -> None:
    reader = FakeLog(KEY)
    rep = replication_for(reader)
    with trio.fail_after(100):
        with pytest.raises(BlockNotAvailableError, match="timed out"):
            await rep.get(3, timeout=5)
        with pytest.raises(BlockNotAvailableError, match="no connected peer"):
            await rep.get(3, wait=False)


class EvilLog(FakeLog):
    """Serves corrupted block values."""

    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        d = await super().serve(request)
        if isinstance(d, wire.RangeData):
            values = list(d.values)
            values[-1] = bytes([values[-1][0] ^ 1]) + values[-1][1:]
            return dataclasses.replace(d, values=tuple(values))
        if d is not None and d.block is not None:
            bad = bytes([d.block.value[0] ^ 1]) + d.block.value[1:]
            d = wire.Data(
                0, d.id, d.fork, wire.DataBlock(d.block.index, bad, ()), None, None, d.upgrade
            )
        return d


async def test_invalid_range_drops_peer(autojump_clock: trio.testing.MockClock) -> None:
    evil, good, reader = EvilLog(KEY, length=200), FakeLog(KEY, length=200), FakeLog(KEY)
    rep = replication_for(reader)
    e1, e2 = trio.testing.memory_stream_pair()
    g1, g2 = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with replicate(e1, evil), replicate(e2, reader) as bad_session:
            await rep.update()
            async with trio.open_nursery() as n:
                n.start_soon(rep.download, 0, 200)
                await bad_session.wait_closed()
                n.cancel_scope.cancel()
            assert "invalid range proof" in str(bad_session.error)
            # The fake checks each value alone; the real log refuses the whole range
            # (test_replicate_log.py). The corrupted block itself is never stored.
            assert 63 not in reader.blocks
        async with replicate(g1, good), replicate(g2, reader):
            await rep.download(0, 200)
    assert_blocks_ok(reader)
    assert sorted(reader.blocks) == list(range(200))


async def test_invalid_block_drops_peer_then_good_peer_serves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    evil, good, reader = EvilLog(KEY, length=20), FakeLog(KEY, length=20), FakeLog(KEY)
    rep = replication_for(reader)
    e1, e2 = trio.testing.memory_stream_pair()
    g1, g2 = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with replicate(e1, evil), replicate(e2, reader) as bad_session:
            await rep.update()
            with pytest.raises(BlockNotAvailableError):
                await rep.get(5, wait=False)
            await bad_session.wait_closed()
            assert isinstance(bad_session.error, ReplicationError)
            assert "invalid proof" in str(bad_session.error)
            assert reader.blocks == {}
        async with replicate(g1, good), replicate(g2, reader):
            await rep.get(5)
    assert reader.blocks == {5: block_value(KEY, 0, 5)}


async def test_serve_everything_resolve(autojump_clock: trio.testing.MockClock) -> None:
    logs = {FakeLog(os.urandom(32), length=5) for _ in range(3)}
    by_dk = {log.discovery_key: log for log in logs}
    target = next(iter(logs))
    reader = FakeLog(target.key)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with replicate(a, resolve=by_dk.get), replicate(b, reader):
            rep = replication_for(reader)
            await rep.wait_for_peers()
            await rep.update()
            await rep.download(0, 5)
    assert sorted(reader.blocks) == list(range(5))


async def test_wrong_capability_never_opens(autojump_clock: trio.testing.MockClock) -> None:
    writer, reader = FakeLog(KEY, length=5), FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        # Both sides claim the initiator role: each computes the other's capability
        # with the wrong namespace, so neither channel opens.
        async with (
            replicate(a, writer, initiator=True),
            replicate(b, reader, initiator=True) as s2,
        ):
            rep = replication_for(reader)
            assert not await rep.update()  # returns once the writer rejected our open
            assert s2.engine.bad_capabilities == 1
            assert rep.peers == 0


async def test_garbage_drops_session(autojump_clock: trio.testing.MockClock) -> None:
    reader = FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with replicate(b, reader) as s:
            await a.send_all(wire.encode_frame(wire.Hello(os.urandom(32))))
            await a.send_all(b"\x00\x00\x00\x03abc")
            await s.wait_closed()
            assert "malformed" in str(s.error)


async def test_oversized_frame_drops_session(autojump_clock: trio.testing.MockClock) -> None:
    reader = FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with replicate(b, reader) as s:
            await a.send_all(b"\xff\xff\xff\xff")
            await s.wait_closed()
            assert "exceeds" in str(s.error)


async def _fake_peer_open(stream: trio.abc.Stream, key: bytes) -> None:
    """Act as a hand-written peer: hello, then open KEY's channel as channel 1."""
    dec = wire.FrameDecoder()
    nonce = os.urandom(32)
    await stream.send_all(wire.encode_frame(wire.Hello(nonce)))
    msg = None
    while not isinstance(msg, wire.Hello):
        dec.receive_data(await stream.receive_some(65536))
        msg = dec.next_message()
    sid = caps.nonce_session_id(nonce, msg.nonce)
    cap = caps.capability(sid, key, initiator=nonce < msg.nonce)
    dk = FakeLog(key).discovery_key
    await stream.send_all(wire.encode_frame(wire.Open(1, dk, cap)))


@pytest.mark.parametrize(
    "bad",
    [
        wire.Data(1, 77, 0, wire.DataBlock(0, block_value(KEY, 0, 0), ())),  # unrequested
        # an unrequested range of big blocks (a flood of them stops at the first)
        wire.RangeData(1, 78, 0, 3, (b"v" * 300_000,) * 2, (), (wire.Node(0, 1, bytes(32)),) * 2),
        wire.Sync(1, 0, 10, 0),  # then a sync with a shorter length on the same fork
        wire.Bitfield(1, 0, b"\x01"),  # garbage-free but then an invalid upgrade answer
    ],
)
async def test_protocol_violations_drop_session(
    autojump_clock: trio.testing.MockClock, bad: wire.Message
) -> None:
    reader = FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with replicate(b, reader) as s:
            await _fake_peer_open(a, KEY)
            if isinstance(bad, wire.Sync):
                await a.send_all(wire.encode_frame(wire.Sync(1, 0, 20, 0)))
            await a.send_all(wire.encode_frame(bad))
            if isinstance(bad, wire.Bitfield):
                # Claim length 5; the reader asks for an upgrade (request id 1 on our
                # channel); answer it with a wrong signature.
                await a.send_all(wire.encode_frame(wire.Sync(1, 0, 5, 0)))
                dec = wire.FrameDecoder()
                req = None
                while not (isinstance(req, wire.Request) and req.upgrade is not None):
                    dec.receive_data(await a.receive_some(65536))
                    while (m := dec.next_message()) is not None and req is None:
                        req = m if isinstance(m, wire.Request) else None
                up = wire.DataUpgrade(0, 5, (), (), b"\x00" * 32)
                await a.send_all(wire.encode_frame(wire.Data(1, req.id, 0, upgrade=up)))

            async def drain() -> None:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    while await a.receive_some(65536):
                        pass

            async with trio.open_nursery() as n:
                n.start_soon(drain)
                await s.wait_closed()
                n.cancel_scope.cancel()
            assert isinstance(s.error, ReplicationError), s.error
    assert reader.blocks == {} and reader.length == 0


async def test_silent_peer_hello_timeout(autojump_clock: trio.testing.MockClock) -> None:
    reader = FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(30):
        async with replicate(b, reader) as s:
            await s.wait_closed()
            assert "hello" in str(s.error)
    del a


class SlowLog(FakeLog):
    """Answers requests only after `delay` seconds (math.inf: never)."""

    def __init__(self, *args: object, delay: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.delay = delay

    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        if request.__class__ is wire.Request and getattr(request, "upgrade", None) is None:
            await trio.sleep(self.delay)
        return await super().serve(request)


async def _two_seeds(nursery: trio.Nursery, reader: FakeLog, slow: FakeLog, fast: FakeLog) -> None:
    for seed in (slow, fast):
        x, y = trio.testing.memory_stream_pair()
        await nursery.start(_run, x, seed, None)
        await nursery.start(_run, y, reader, None)


async def test_hotswap_slow_get(autojump_clock: trio.testing.MockClock) -> None:
    """A get stuck at a slow peer is also asked of a faster one that connects later."""
    slow, fast = SlowLog(KEY, length=100, delay=60), FakeLog(KEY, length=100)
    reader = FakeLog(KEY)
    rep = replication_for(reader)
    with trio.fail_after(100):
        async with trio.open_nursery() as n:
            x, y = trio.testing.memory_stream_pair()
            await n.start(_run, x, slow, None)
            await n.start(_run, y, reader, None)
            await rep.wait_for_peers(1)
            await rep.update()
            t0 = trio.current_time()
            n.start_soon(rep.get, 50)
            await trio.testing.wait_all_tasks_blocked()
            ((first, _),) = rep.engine.block_reqs[50]  # asked of the slow peer
            x, y = trio.testing.memory_stream_pair()
            await n.start(_run, x, fast, None)
            await n.start(_run, y, reader, None)
            while not reader.has(50):
                await rep.wait_changed()
            assert trio.current_time() - t0 < 10  # not the slow peer's 60 s
            assert rep.engine.stats["hotswaps"] == 1
            assert first.blocks_in == 0  # the slow peer never delivered it
            n.cancel_scope.cancel()


async def test_black_hole_peer_times_out(autojump_clock: trio.testing.MockClock) -> None:
    """A peer that never answers block requests: its requests time out, its window
    halves, and the download completes from the other peer."""
    hole, good = SlowLog(KEY, length=40, delay=math.inf), FakeLog(KEY, length=40)
    reader = FakeLog(KEY)
    rep = replication_for(reader)
    with trio.fail_after(200):
        async with trio.open_nursery() as n:
            await _two_seeds(n, reader, hole, good)
            await rep.wait_for_peers(2)
            await rep.update()
            await rep.download(0, 40)
            windows = sorted(ch.window for ch in rep.engine.peers)
            n.cancel_scope.cancel()
    assert sorted(reader.blocks) == list(range(40))
    assert_blocks_ok(reader)
    assert rep.engine.stats["timeouts"] > 0
    assert windows[0] < INITIAL_WINDOW < windows[1]


async def test_peer_that_never_reads_is_bounded_and_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests from a peer that never reads our answers: we stop serving at
    MAX_OUTBOX_BYTES and drop it once MAX_PENDING_SERVES requests wait."""
    writer = FakeLog(KEY, length=400, block_size=64 * 1024)
    a, b = trio.testing.lockstep_stream_pair()  # no buffering: our writes block
    with trio.fail_after(60):
        async with replicate(b, writer) as s:
            await _fake_peer_open(a, KEY)
            peak = 0
            for i in range(1000):
                if s.closed.is_set():
                    break
                peak = max(peak, s.engine.outbox_bytes)
                request = wire.Request(1, i + 1, 0, wire.RequestBlock(i % 400, 0))
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await a.send_all(wire.encode_frame(request))
            await s.wait_closed()
            assert "unanswered" in str(s.error), s.error
            assert peak <= MAX_OUTBOX_BYTES + 2 * writer.block_size
