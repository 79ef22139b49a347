"""Regression tests for the second review of the sparse replication protocol (round I).

Each test drives the sans-IO engines (`SessionEngine`, `LogReplicator`) directly over
`FakeLog`s, or real logs over memory streams, and failed on the code before its fix.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio
import trio.testing

from hyperlog import wire
from hyperlog.crypto import key_pair
from hyperlog.errors import ForkConflictError, RemoteProtocolError
from hyperlog.log import open_store
from hyperlog.replication import replicate, replication_for, session
from hyperlog.replication.adapter import LogAdapter
from hyperlog.replication.constants import DEFAULT_GET_TIMEOUT, MAX_ATTEMPTS
from hyperlog.replication.scheduler import LogReplicator, PeerChannel
from hyperlog.storage_memory import MemoryStorage

from .test_replication_fakes import FakeLog
from .test_replication_progress import ListSink
from .test_replication_review_f import Pair, open_session

KEY = bytes(range(32))


def _connect(
    rep: LogReplicator, peer_id: int, length: int, now: float = 0.0, *, held: int | None = None
) -> tuple[ListSink, PeerChannel]:
    """A peer of fork 0 and `length` holding blocks [0, held) opens a channel and syncs."""
    sink = ListSink()
    ch = PeerChannel(sink, peer_id, peer_id, peer_id=peer_id)
    ch.owner = rep
    rep.add_peer(ch, now)
    rep.on_message(ch, wire.Sync(peer_id, 0, length, rep.view.length), now)
    rep.on_message(ch, wire.Range(peer_id, 0, length if held is None else held), now)
    return sink, ch


def _asked(sink: ListSink, index: int | None = None) -> list[wire.Request]:
    return [
        m
        for m in sink.sent
        if isinstance(m, wire.Request)
        and m.block is not None
        and (index is None or m.block.index == index)
    ]


def _refuse_all(rep: LogReplicator, peers: list[tuple[ListSink, PeerChannel]]) -> int:
    """Every peer answers every block request with NoData until none is left."""
    total = 0
    while True:
        moved = 0
        for sink, ch in peers:
            reqs = _asked(sink)
            sink.sent.clear()
            for m in reqs:
                moved += 1
                rep.on_message(ch, wire.NoData(ch.local_id, m.id), 0.0)
        total += moved
        if not moved:
            return total


class WaitingLog(FakeLog):
    """A FakeLog that says which blocks a `Log.get` still waits for (`WaitingView`)."""

    def __init__(self, key: bytes, *, length: int = 0, have: bool = True) -> None:
        super().__init__(key, length=length, have=have)
        self.waiters: set[int] = set()

    def waiting(self, index: int) -> bool:
        return index in self.waiters


# -- 1. parked wants are forgotten with their Log.get; a revived one asks one peer --


def test_parked_want_is_forgotten_when_its_log_get_gave_up() -> None:
    log = WaitingLog(KEY, length=100, have=False)
    rep = LogReplicator(log)
    log.waiters.update((7, 8))
    rep.want_block(7, 0.0, passive=True)  # Log.get(7), Log.get(8): nobody connected
    rep.want_block(8, 0.0, passive=True)
    assert set(rep.parked) == {7, 8}
    log.waiters.discard(7)  # Log.get(7) timed out (or was cancelled)
    sink, _ = _connect(rep, 1, 100, 1.0)
    assert not _asked(sink, 7), "a parked want outlived its Log.get"
    assert _asked(sink, 8), "the Log.get still waiting was not asked for"


def test_parked_want_expires_without_a_waiting_view() -> None:
    rep = LogReplicator(FakeLog(KEY, length=100, have=False))
    rep.want_block(7, 0.0, passive=True)
    rep.want_block(9, DEFAULT_GET_TIMEOUT, passive=True)
    sink, _ = _connect(rep, 1, 100, DEFAULT_GET_TIMEOUT + 1)
    assert not _asked(sink, 7), "a parked want older than DEFAULT_GET_TIMEOUT was asked"
    assert _asked(sink, 9)


def test_revived_parked_want_asks_only_the_peer_that_synced() -> None:
    # 64 Log.gets still waiting for blocks no peer holds; peers join one by one. Each
    # join used to ask every block of every connected peer again (quadratic).
    log = WaitingLog(KEY, length=1000, have=False)
    rep = LogReplicator(log)
    wanted = range(600, 664)
    log.waiters.update(wanted)
    for i in wanted:
        rep.want_block(i, 0.0, passive=True)
    peers: list[tuple[ListSink, PeerChannel]] = []
    per_join = []
    for k in range(1, 6):
        peers.append(_connect(rep, k, 1000))  # its bits past 1000 unknown: may have
        per_join.append(_refuse_all(rep, peers))
        assert set(rep.parked) == set(wanted)
    assert per_join == [len(wanted)] * 5, per_join


async def test_adapter_says_whether_a_log_get_still_waits() -> None:
    async with open_store() as ws, open_store() as rs:
        w = await ws.create_log(key_pair(KEY))
        await w.append([b"a", b"b"])
        r = await rs.open_log(w.key)
        replication_for(r)  # attaches the want listener
        adapter = LogAdapter(r)
        try:
            with pytest.raises(Exception, match="did not arrive"):
                await r.get(1, timeout=0.01)
            assert not adapter.waiting(1), "a Log.get that timed out still counts"
            async with trio.open_nursery() as nursery:

                async def wait() -> None:
                    with trio.move_on_after(5):
                        await r.get(1)

                nursery.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                assert adapter.waiting(1)
                nursery.cancel_scope.cancel()
            assert not adapter.waiting(1), "a cancelled Log.get still counts"
        finally:
            adapter.close()


# -- 2. a parked Log.get is asked again when a peer announces it or our length grows --


def test_parked_want_is_asked_again_when_its_peer_announces_the_block() -> None:
    rep = LogReplicator(FakeLog(KEY, length=100, have=False))
    sink, ch = _connect(rep, 1, 100, held=50)  # B: blocks 0..49 of 100
    rep.want_block(70, 0.0, passive=True)  # Log.get(70)
    (req,) = _asked(sink, 70)
    rep.on_message(ch, wire.NoData(1, req.id), 0.1)  # B lacks 70 for now
    assert 70 in rep.parked
    sink.sent.clear()
    rep.on_message(ch, wire.Range(1, 70, 1), 2.0)  # B fetched 70 and announces it
    assert _asked(sink, 70), "the parked Log.get was not asked of the announcing peer"


def test_parked_want_is_asked_again_after_a_bitfield_announcement() -> None:
    rep = LogReplicator(FakeLog(KEY, length=100, have=False))
    sink, ch = _connect(rep, 1, 100, held=50)
    rep.want_block(70, 0.0, passive=True)
    (req,) = _asked(sink, 70)
    rep.on_message(ch, wire.NoData(1, req.id), 0.1)
    sink.sent.clear()
    bits = bytearray(8)
    bits[(70 - 64) // 8] |= 1 << ((70 - 64) % 8)
    rep.on_message(ch, wire.Bitfield(1, 64, bytes(bits)), 2.0)
    assert _asked(sink, 70)


def test_log_get_tailing_the_log_gets_the_next_block() -> None:
    # `await log.get(log.length)`: the block does not exist yet, no peer can give it
    # (parked); the writer appends it: Sync + Range(10, 1), then our upgrade.
    p = Pair(10)
    assert p.r.length == 10
    p.rrep.want_block(10, p.now, passive=True)
    assert 10 in p.rrep.parked
    p.w.append(1)
    p.wrep.on_local_update(10, p.now)
    p.flush()
    assert p.r.length == 11
    assert p.r.has(10), "the tailing Log.get waited out its timeout"


async def test_log_get_tailing_a_live_writer_over_memory_streams() -> None:
    async with open_store() as ws, open_store() as rs:
        w = await ws.create_log(key_pair(KEY))
        await w.append([b"b%d" % i for i in range(10)])
        r = await rs.open_log(w.key)
        a, b = trio.testing.memory_stream_pair()
        async with replicate(a, w), replicate(b, r):
            rep = replication_for(r)
            await rep.wait_for_peers()
            await rep.update()
            got: list[bytes] = []
            done = trio.Event()
            async with trio.open_nursery() as nursery:

                async def tail() -> None:
                    got.append(await r.get(10, timeout=8))
                    done.set()

                nursery.start_soon(tail)
                await trio.testing.wait_all_tasks_blocked()
                await w.append([b"b10"])
                with trio.fail_after(5):  # before: waited out its 8 s, then failed
                    await done.wait()
        assert got == [b"b10"]


# -- 3. NoData(FORK) is not asked again at once, forever ---------------------------


def test_frozen_peer_is_not_asked_again_at_once_forever() -> None:
    # The writer froze its log (a fork conflict seen elsewhere): it refuses every
    # request with NoData(FORK). The reader asked it again at once, forever
    # (169,983 requests in 10,000 zero-time rounds); `flush` raises if it never settles.
    p = Pair(64)
    p.wrep.freeze(ForkConflictError("two signed trees for fork 0 (seen elsewhere)"))
    sent: list[wire.Message] = []
    send = p.rs.send

    def count(msg: wire.Message) -> None:
        sent.append(msg)
        send(msg)

    p.rs.send = count  # type: ignore[method-assign]
    d = p.rrep.want_range(0, 64, p.now)
    g = p.rrep.want_block(5, p.now)
    p.flush()
    asks = [m for m in sent if isinstance(m, wire.Request | wire.RangeRequest)]
    assert len(asks) <= 2, f"{len(asks)} requests to a peer refusing every one"
    assert not d.done and g.error is not None


def test_peer_refusing_as_another_fork_is_asked_again_after_its_sync() -> None:
    rep = LogReplicator(FakeLog(KEY, length=100, have=False))
    sink, ch = _connect(rep, 1, 100)
    rep.want_block(5, 0.0)
    (req,) = _asked(sink, 5)
    sink.sent.clear()
    rep.on_message(ch, wire.NoData(1, req.id, wire.NO_DATA_FORK), 0.0)
    assert not _asked(sink), "asked again at once after NoData(FORK)"
    rep.on_message(ch, wire.Sync(1, 0, 101, 100), 1.0)  # on our fork again
    assert _asked(sink, 5), "never asked again after a Sync showing our fork"


def test_peer_on_an_older_fork_is_not_asked_for_blocks() -> None:
    # We are on fork 1; B is still on fork 0 and holds the old history: every request
    # is refused NoData(FORK), and used to be asked again at once (20,000 round trips).
    r = FakeLog(KEY, length=100, have=False)
    r.truncate_and_fork(100)
    assert r.fork == 1
    rep = LogReplicator(r)
    sink, ch = _connect(rep, 1, 100)  # B: fork 0
    d = rep.want_range(0, 100, 0.0)
    g = rep.want_block(5, 0.0)
    for _ in range(100):
        reqs = [m for m in sink.sent if isinstance(m, wire.Request | wire.RangeRequest)]
        sink.sent.clear()
        if not reqs:
            break
        for m in reqs:
            rep.on_message(ch, wire.NoData(1, m.id, wire.NO_DATA_FORK), 0.0)
    else:
        raise AssertionError("the request / NoData(FORK) ping-pong never ended")
    assert not d.done and g.error is not None


def test_fill_gets_respects_max_attempts() -> None:
    rep = LogReplicator(FakeLog(KEY, length=100, have=False))
    sink, ch = _connect(rep, 1, 100)
    g = rep.want_block(5, 0.0)
    (req,) = _asked(sink, 5)
    sink.sent.clear()
    rep._cancel_request(ch, req.id)  # forgotten without a verdict on the peer
    g.attempts = MAX_ATTEMPTS
    rep.pump(1.0)
    assert not _asked(sink, 5), "a get past MAX_ATTEMPTS was asked again"


# -- 6. the memory store's iter_blocks survives appends from the loop thread -------


class _AppendingDict(dict[tuple[int, int], bytes]):
    """A dict that gets a new key while it is iterated: the loop thread appending
    while a worker thread reads a range (deterministically, here)."""

    def __iter__(self) -> Iterator[tuple[int, int]]:
        it = super().__iter__()
        yield next(it)
        self[(1, len(self) + 1000)] = b"appended"
        yield from it


def test_memory_store_iter_blocks_survives_a_concurrent_append() -> None:
    store = MemoryStorage()
    blocks = [(i, b"b%d" % i, b"") for i in range(100)]
    store._blocks = _AppendingDict({(1, i): v for i, v, _ in blocks})
    got = list(store.iter_blocks(1, 10, 74))  # before: RuntimeError (size changed)
    assert got == [(i, b"b%d" % i) for i in range(10, 74)]
    # A sparse span wider than the store takes a snapshot under the write lock.
    store._blocks = {(1, 5): b"x", (1, 9): b"y", (2, 7): b"z"}
    assert list(store.iter_blocks(1, 0, 2**40)) == [(5, b"x"), (9, b"y")]


# -- 4. a peer that neither reads nor sends is dropped at the unread limit ----------


def test_silent_nonreader_is_dropped_when_our_announcements_pile_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(session, "MAX_UNREAD_BYTES", limit)
    log = FakeLog(KEY, length=1)
    s, rep = open_session(log)
    # The peer never sends again nor reads: every block we store (scattered: a
    # sparse download from another peer) is announced to it.
    for k in range(10 * limit // 64):
        rep._on_stored(2 * k + 1, 64, None)  # must not raise: runs inside local calls
    assert s.outbox_bytes <= limit + 64, "the outbox grew without bound"
    assert s.unread_error is not None
    with pytest.raises(RemoteProtocolError, match="does not read"):
        s.receive(wire.Want(1, 0, 8), 0.0)


async def test_driver_ends_a_session_whose_peer_neither_reads_nor_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 64 * 1024
    monkeypatch.setattr(session, "MAX_UNREAD_BYTES", limit)
    a, _b = trio.testing.lockstep_stream_pair()  # nobody reads _b: our Hello blocks
    async with open_store() as ws:
        w = await ws.create_log(key_pair(KEY))
        async with replicate(a, w) as sess:
            await trio.testing.wait_all_tasks_blocked()
            for k in range(2 * limit // 64):  # scattered announcements of blocks
                sess.engine.send(wire.Range(1, 2 * k, 1))
            with trio.fail_after(5):
                await sess.wait_closed()
            assert isinstance(sess.error, RemoteProtocolError)
            assert "does not read" in str(sess.error)


# -- 5. announcements to a slow peer are coalesced: its backlog stays O(1) ---------


def test_burst_of_appends_queues_one_sync_and_one_range_per_peer() -> None:
    log = FakeLog(KEY, length=1)
    s, rep = open_session(log)
    before = len(s.outbox)
    for _ in range(10_000):  # single appends; the peer reads nothing meanwhile
        old = log.length
        log.append(1)
        rep.on_local_update(old, 0.0)
    added = list(s.outbox)[before:]
    # Before: 20,000 messages (a Sync and a Range per append), and an honest slow
    # follower was dropped at MAX_UNREAD_BYTES ("peer does not read").
    assert len(added) <= 2, f"{len(added)} messages queued for 10,000 appends"
    syncs = [m for m in s.outbox if isinstance(m, wire.Sync)]
    ranges = [m for m in s.outbox if isinstance(m, wire.Range)]
    assert [m.length for m in syncs] == [10_001]
    assert [(m.start, m.length) for m in ranges] == [(0, 10_001)]


def test_stale_sync_flood_from_a_nonreader_queues_one_sync() -> None:
    s, _ = open_session(FakeLog(KEY, length=300))
    before = len(s.outbox)
    for _ in range(10_000):
        s.receive(wire.Sync(1, 0, 0, 12345), 0.0)  # a stale view: we re-sync each time
    assert len(s.outbox) - before <= 1


def test_coalesced_announcements_keep_a_live_follower_exact() -> None:
    # A burst of appends while nothing is delivered: what the follower learns from
    # the coalesced Sync and Range is exact.
    p = Pair(8)
    d = p.rrep.want_range(0, None, p.now)
    p.flush()
    for _ in range(50):
        old = p.w.length
        p.w.append(1)
        p.wrep.on_local_update(old, p.now)
    p.flush()
    assert p.r.length == p.w.length == 58
    assert all(p.r.has(i) for i in range(58))
    assert d.missing == 0


def test_no_coalescing_across_a_truncation() -> None:
    log = FakeLog(KEY, length=10)
    s, rep = open_session(log)  # queued: Sync(0, 10), Range(0, 10)
    for _ in range(5):
        old = log.length
        log.append(1)
        rep.on_local_update(old, 0.0)
    log.truncate_and_fork(12)
    rep.on_local_update(15, 0.0)
    old = log.length
    log.append(1)
    rep.on_local_update(old, 0.0)
    added = [
        (type(m).__name__, getattr(m, "fork", None), getattr(m, "length", None))
        if isinstance(m, wire.Sync)
        else (type(m).__name__, m.start, m.length, m.drop)
        for m in s.outbox
        if isinstance(m, wire.Sync | wire.Range)
    ]
    assert added == [
        ("Sync", 0, 15),
        ("Range", 0, 15, False),
        ("Sync", 1, 13),  # the new fork's head: not folded into the old fork's Sync
        ("Range", 12, 3, True),
        ("Range", 12, 1, False),  # after the drop: not merged into the Range before it
    ]
