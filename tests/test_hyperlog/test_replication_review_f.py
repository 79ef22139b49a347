"""Regression tests for the sparse-replication review (round F).

Each test drives the sans-IO engines (`SessionEngine`, `LogReplicator`) directly over
`FakeLog`s, or real logs over memory streams with Trio's autojump clock, and failed
on the code before its fix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from hyperlog import flat_tree, wire
from hyperlog.bitfield import PAGE_BITS, PAGE_BYTES, Bitfield
from hyperlog.crypto import key_pair
from hyperlog.errors import HyperlogError, RemoteProtocolError
from hyperlog.log import Log, open_store
from hyperlog.replication import caps, replicate, replication_for, session
from hyperlog.replication.adapter import LogAdapter
from hyperlog.replication.constants import (
    MAX_CLOSED_CHANNEL_IDS,
    MAX_OUTBOX_BYTES,
    MAX_UNREAD_BYTES,
    REQUEST_TIMEOUT,
)
from hyperlog.replication.port import Applied
from hyperlog.replication.scheduler import (
    LogReplicator,
    PeerChannel,
    RangeVerifyWork,
    ServeWork,
    VerifyWork,
    Work,
)
from hyperlog.replication.session import SessionEngine

from .test_replication_fakes import FakeLog, run_sync
from .test_replication_progress import ListSink

KEY = bytes(range(32))
PEER_NONCE = b"\x02" * 32


class Pair:
    """A writer and a reader engine joined by a hand-driven, in-order network.

    `refuse`: ordinals (1-based) of the writer's serves answered with a one-off
    NoData(not available) instead, as a writer answers while it truncates.
    """

    def __init__(self, n: int, *, refuse: frozenset[int] = frozenset()) -> None:
        self.now = 0.0
        self.w, self.r = FakeLog(KEY, length=n), FakeLog(KEY)
        self.wrep, self.rrep = LogReplicator(self.w), LogReplicator(self.r)
        self.ws, self.rs = SessionEngine(nonce=b"\x01" * 32), SessionEngine(nonce=b"\x02" * 32)
        self.ws.add_log(self.wrep)
        self.rs.add_log(self.rrep)
        self.refuse = refuse
        self.serves = 0
        self.flush()

    def flush(self) -> None:
        for _ in range(10_000):
            moved = False
            for src, dst in ((self.ws, self.rs), (self.rs, self.ws)):
                while src.outbox:
                    dst.receive(wire.decode(wire.encode(src.pop_outbox())), self.now)
                    moved = True
            for s, log, rep in ((self.ws, self.w, self.wrep), (self.rs, self.r, self.rrep)):
                while (w := s.next_work()) is not None:
                    moved = True
                    self._run(log, rep, w)
            if not moved:
                return
        raise AssertionError("the network did not settle")

    def _run(self, log: FakeLog, rep: LogReplicator, w: Work) -> None:
        if isinstance(w, ServeWork):
            self.serves += 1
            data = None if self.serves in self.refuse else run_sync(log.serve(w.request))
            if data is not None:
                data = dataclasses.replace(data, channel=w.channel.local_id, id=w.request.id)
            rep.on_served(w.channel, w.request, data)
        elif isinstance(w, RangeVerifyWork):
            results = run_sync(log.apply_range(w.data, w.inflight.index))
            assert rep.on_range_applied(w, results, self.now) is None
        else:
            try:
                result: Applied | HyperlogError = run_sync(log.apply(w.data))
            except HyperlogError as exc:
                result = exc
            assert rep.on_applied(w, result, self.now) is None

    def tick(self, dt: float) -> None:
        self.now += dt
        for rep in (self.wrep, self.rrep):
            rep.on_timer(self.now)
        self.flush()


def open_session(log: FakeLog) -> tuple[SessionEngine, LogReplicator]:
    """A session serving `log` to a hand-played peer that opened channel 1."""
    rep = LogReplicator(log)
    s = SessionEngine(nonce=b"\x01" * 32)
    s.add_log(rep)
    s.receive(wire.Hello(PEER_NONCE, wire.FEATURES), 0.0)
    assert s.session_id is not None
    cap = caps.capability(s.session_id, log.key, initiator=s.nonce > PEER_NONCE)
    s.receive(wire.Open(1, log.discovery_key, cap), 0.0)
    assert s.channels(), "the channel did not open"
    return s, rep


# -- 1. a peer that never reads cannot grow our outbox without bound ----------------


@pytest.mark.parametrize(
    "msg",
    [
        wire.Want(1, 0, 300),
        wire.Request(1, 7, 999, wire.RequestBlock(0, 0)),  # refused at once (fork)
        # (A stale Sync, re-synced each time, no longer grows the outbox: the unsent
        # Sync is replaced. test_replication_review_i.py checks it stays O(1).)
    ],
    ids=["want", "refused-request"],
)
def test_nonreading_peer_is_dropped_at_the_unread_limit(
    msg: wire.ChannelMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real limit (32 MiB) takes half a million messages: scale it down.
    limit = 256 * 1024
    monkeypatch.setattr(session, "MAX_UNREAD_BYTES", limit, raising=False)
    s, _ = open_session(FakeLog(KEY, length=300))
    # Nobody pops the outbox: the peer never reads. (Before the fix only serves were
    # bounded, and these grew the outbox by 64 bytes per message, forever.)
    with pytest.raises(RemoteProtocolError, match="does not read"):
        for _ in range(100 * limit // 64):
            s.receive(msg, 0.0)
    assert s.outbox_bytes <= limit + 64 * 1024


def test_unread_limit_leaves_room_for_serving() -> None:
    # Serving stops at MAX_OUTBOX_BYTES plus one frame: an honest peer that is slow to
    # read what it asked for is never dropped for it.
    assert MAX_UNREAD_BYTES >= MAX_OUTBOX_BYTES + wire.MAX_FRAME_SIZE


# -- 2. one-off NoData answers from a peer that has everything never stall a download


# Serve ordinals refused (counted from the first block serve); each pair stalled the
# download before the fix (645 of the 1,711 pairs below 60 did).
STALLED = [(1, 18), (1, 40), (2, 40), (3, 54), (4, 29), (7, 47), (14, 22), (17, 48)]


@pytest.mark.parametrize("refuse", STALLED)
def test_two_one_off_nodata_do_not_stall_a_download(refuse: tuple[int, int]) -> None:
    # The first NoData forgets the peer's prefix; the Want that follows marks page 0
    # known, and the peer's answer (Range{0, 300}) restores the prefix, leaving page 0
    # behind. The second NoData then turned the rest of the prefix into "known
    # absent" (the page was there): never requested nor asked about again.
    p = Pair(300)
    assert p.r.length == 300  # upgraded; the serves counted from here are block serves
    p.refuse, p.serves = frozenset(refuse), 0
    d = p.rrep.want_range(0, 300, p.now)
    p.flush()
    for _ in range(5):
        if d.done:
            break
        p.tick(REQUEST_TIMEOUT + 1)
    missing = [i for i in range(300) if not p.r.has(i)]
    assert d.done and not missing, f"stalled, missing {missing[:5]}..."


# -- 3. a range served across a truncation is refused, not sent with a stale proof ---


async def test_range_served_across_a_truncation_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_store() as store:
        w = await store.create_log(key_pair(KEY))
        old = [b"old %d" % i for i in range(64)]
        await w.append(old)
        adapter = LogAdapter(w)
        read = Log.iter_blocks

        async def rewrite_during_read(
            log: Log, start: int = 0, end: int | None = None
        ) -> AsyncIterator[bytes]:
            # The read runs in a worker thread; the writer truncates and appends
            # meanwhile (deterministically here: just before the blocks are read).
            await log.truncate(0)
            await log.append([b"new %d" % i for i in range(64)])
            async for v in read(log, start, end):
                yield v

        monkeypatch.setattr(Log, "iter_blocks", rewrite_during_read)
        node = flat_tree.index(6, 0)  # blocks 0..63
        req = wire.RangeRequest(1, 9, 0, node, 0, False)
        data = await adapter.serve(req)
        adapter.close()
        # Before the fix: the new fork's values under the old fork's proof (built
        # before the read), which the reader refuses, dropping us. Now: refused
        # (`on_served` tells the peer it was another fork).
        assert data is None, "a range read across a fork change was served"
        assert w.fork == 1


def test_refusal_after_a_fork_change_says_other_fork() -> None:
    log = FakeLog(KEY, length=64)
    rep = LogReplicator(log)
    sink = ListSink()
    ch = PeerChannel(sink, 1, 1, peer_id=1)
    ch.owner = rep
    rep.add_peer(ch, 0.0)
    req = wire.RangeRequest(1, 5, 0, flat_tree.index(6, 0), 0, False)
    rep.on_message(ch, req, 0.0)
    log.truncate_and_fork(0)  # while the serve ran
    rep.on_served(ch, req, None)
    (nodata,) = [m for m in sink.sent if isinstance(m, wire.NoData)]
    assert nodata.reason == wire.NO_DATA_FORK


# -- 4. a late answer on the fork we just left is stale, not an invalid proof ---------


def _answer(log: FakeLog, ch: PeerChannel, req: wire.Request) -> wire.Data:
    data = run_sync(log.serve(req))
    assert isinstance(data, wire.Data)
    return dataclasses.replace(data, channel=ch.remote_id, id=req.id)


def _verify_all(log: FakeLog, rep: LogReplicator, sink: ListSink, now: float) -> list[object]:
    errors: list[object] = []
    for w in sink.work:
        assert isinstance(w, VerifyWork)
        try:
            result: Applied | HyperlogError = run_sync(log.apply(w.data))
        except HyperlogError as exc:
            result = exc
        errors.append(rep.on_applied(w, result, now))
    sink.work.clear()
    return errors


def test_late_answer_from_the_old_fork_does_not_drop_an_honest_peer() -> None:
    n = 64
    old = FakeLog(KEY, length=n)  # peer C: an honest copy of fork 0
    new = FakeLog(KEY, length=n)  # peer W: the writer, who truncates to 32 (fork 1)
    new.truncate_and_fork(32)
    new.append(8)
    reader = FakeLog(KEY, length=n, have=False)  # knows fork 0, length n
    rep = LogReplicator(reader)
    sc, sw = ListSink(), ListSink()
    c = PeerChannel(sc, 1, 1, peer_id=1)
    c.owner = rep
    rep.add_peer(c, 0.0)
    rep.on_message(c, wire.Sync(1, 0, n, n), 0.0)
    rep.on_message(c, wire.Range(1, 0, n), 0.0)
    rep.want_block(5, 0.0)
    (req,) = [m for m in sc.sent if isinstance(m, wire.Request) and m.block is not None]
    late = _answer(old, c, req)  # C answers on fork 0; slow link: it arrives later
    # Meanwhile W connects on fork 1 and the reader upgrades from it.
    w = PeerChannel(sw, 2, 2, peer_id=2)
    w.owner = rep
    rep.add_peer(w, 0.0)
    rep.on_message(w, wire.Sync(2, 1, new.length, 0), 0.0)
    (up,) = [m for m in sw.sent if isinstance(m, wire.Request) and m.upgrade is not None]
    rep.on_message(w, _answer(new, w, up), 0.5)
    assert _verify_all(reader, rep, sw, 0.5) == [None]
    assert reader.fork == 1
    # C's correct answer to what we asked (fork 0) arrives: stale, not misbehaviour.
    rep.on_message(c, late, 1.0)
    assert _verify_all(reader, rep, sc, 1.0) == [None], "the honest peer would be dropped"
    # ... and block 5 is asked for again, on fork 1.
    assert any(
        isinstance(m, wire.Request) and m.block is not None and m.block.index == 5 and m.fork == 1
        for m in sc.sent + sw.sent
    )


def test_late_range_from_the_old_fork_is_stale_and_its_blocks_retried() -> None:
    n = 64
    p = Pair(n)
    d = p.rrep.want_range(0, n, p.now)
    (ch,) = p.rrep.peers
    # Take the RangeRequest off the wire before the writer sees it.
    (req,) = [m for m in p.rs.outbox if isinstance(m, wire.RangeRequest)]
    p.rs.outbox.clear()
    p.rs.outbox_bytes = 0
    rd = run_sync(p.w.serve(req))  # answered on fork 0 ...
    assert isinstance(rd, wire.RangeData)
    p.w.truncate_and_fork(0)  # ... then the writer rewrites history and we follow
    p.w.append(n)
    p.wrep.on_local_update(n, p.now)
    p.flush()
    assert p.r.fork == 1
    late = dataclasses.replace(rd, channel=ch.remote_id, id=req.id)
    p.rs.receive(late, p.now)  # the old fork's range arrives late: not a drop
    p.flush()
    p.tick(REQUEST_TIMEOUT + 1)
    assert d.done and all(p.r.has(i) for i in range(n))


# -- 5. answering a Want costs per page, not per run of bits -------------------------


@given(
    picks=st.lists(st.integers(0, 3 * PAGE_BITS), max_size=40),
    runs=st.lists(st.tuples(st.integers(0, 3 * PAGE_BITS), st.integers(1, 200)), max_size=4),
    start=st.integers(0, 3 * PAGE_BITS // 8).map(lambda k: 8 * k),
    size=st.integers(0, 2 * PAGE_BITS),
)
def test_bits_bytes_matches_bit_by_bit(
    picks: list[int], runs: list[tuple[int, int]], start: int, size: int
) -> None:
    bits = Bitfield()
    for i in picks:
        bits.set(i)
    for lo, n in runs:
        bits.set_range(lo, lo + n)
    end = start + size
    want = 0
    for k in range(size):
        if bits.get(start + k):
            want |= 1 << k
    assert bits.bits_bytes(start, end) == want.to_bytes((size + 7) // 8, "little")


async def test_have_bits_of_alternating_pages_costs_per_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with open_store() as ws, open_store() as rs:
        w = await ws.create_log(key_pair(KEY))
        r = await rs.open_log(w.key)
        # A reader holding every other block of 4 pages (65,536 runs): its bitfield
        # loaded as stored pages, and a signed length to match (a sparse reader's
        # state, without fetching 32,768 blocks).
        pages = 4
        alternating = bytes([0x55]) * PAGE_BYTES
        for p in range(pages):
            r.bitfield.load_page(p, alternating)
        monkeypatch.setattr(r._tree, "length", pages * PAGE_BITS)
        calls = 0
        for name in ("runs", "first_set", "first_unset", "get"):
            method = getattr(Bitfield, name)

            def counted(*args: object, _m: Any = method) -> Any:
                nonlocal calls
                calls += 1
                return _m(*args)

            monkeypatch.setattr(Bitfield, name, counted)
        got = r.have_bits(0, pages * PAGE_BITS)
        monkeypatch.undo()  # before the stores close
        assert got == alternating * pages
        # Before: two searches per run (131,072 calls), ~0.2 s of loop per page.
        assert calls <= 4 * pages


# -- 6. a negative or non-int index is refused at the public API ---------------------


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda rep: rep.want_block(-1, 0.0), ValueError),
        (lambda rep: rep.want_block(1.0, 0.0), TypeError),
        (lambda rep: rep.want_block(True, 0.0), TypeError),
        (lambda rep: rep.want_range(-5, 3, 0.0), ValueError),
        (lambda rep: rep.want_range(5, 3, 0.0), ValueError),
        (lambda rep: rep.want_range(0, 2.5, 0.0), TypeError),
        (lambda rep: rep.want_range("0", None, 0.0), TypeError),
    ],
)
def test_engine_refuses_what_is_not_a_block_index(call: Any, error: type[Exception]) -> None:
    # Before: accepted; with a connected peer the flat-tree walk of a negative index
    # (the uncle count of its request) never ended, on the Trio thread.
    rep = LogReplicator(FakeLog(KEY, length=10, have=False))
    with pytest.raises(error):
        call(rep)
    assert not rep.gets and not rep.downloads


async def test_get_and_download_refuse_negative_indices() -> None:
    rep = replication_for(FakeLog(KEY, length=10, have=False))
    with pytest.raises(ValueError, match="negative"):
        await rep.get(-1, timeout=1)
    with pytest.raises(ValueError, match="negative"):
        await rep.download(-5, 3)
    with pytest.raises(ValueError, match="before its start"):
        await rep.download(5, 3)
    with pytest.raises(TypeError):
        await rep.get(2.0, timeout=1)  # type: ignore[arg-type]


# -- 7. a Log.get waiting with no peer fetches from a peer that connects later --------


def _connect(
    rep: LogReplicator, peer_id: int, length: int, now: float = 0.0, *, held: int | None = None
) -> ListSink:
    """A peer of fork 0 and `length` holding blocks [0, held) opens a channel and syncs."""
    sink = ListSink()
    ch = PeerChannel(sink, peer_id, peer_id, peer_id=peer_id)
    ch.owner = rep
    rep.add_peer(ch, now)
    rep.on_message(ch, wire.Sync(peer_id, 0, length, rep.view.length), now)
    rep.on_message(ch, wire.Range(peer_id, 0, length if held is None else held), now)
    return sink


def _asked(sink: ListSink, index: int) -> bool:
    return any(
        isinstance(m, wire.Request) and m.block is not None and m.block.index == index
        for m in sink.sent
    )


def test_passive_want_is_asked_of_a_peer_that_connects_later() -> None:
    rep = LogReplicator(FakeLog(KEY, length=20, have=False))
    g = rep.want_block(7, 0.0, passive=True)  # `Log.get(7)` with nobody connected
    assert g.error is not None  # no peer: it failed (Log.get keeps waiting)
    sink = _connect(rep, 1, 20, 1.0)
    assert _asked(sink, 7), "the waiting Log.get never asked the new peer"


async def test_log_get_waiting_before_a_peer_connects_gets_the_block() -> None:
    async with open_store() as ws, open_store() as rs:
        w = await ws.create_log(key_pair(KEY))
        await w.append([b"block %d" % i for i in range(20)])
        r = await rs.open_log(w.key)
        rep = replication_for(r)
        a, b = trio.testing.memory_stream_pair()
        async with replicate(a, w), replicate(b, r):  # learn the length, then leave
            await rep.wait_for_peers()
            await rep.update()
        while rep.peers:
            await rep.wait_changed()
        got: list[bytes] = []
        done = trio.Event()
        async with trio.open_nursery() as nursery:

            async def get() -> None:
                got.append(await r.get(7, timeout=8))
                done.set()

            nursery.start_soon(get)
            await trio.testing.wait_all_tasks_blocked()  # Log.get waits, no peer
            a, b = trio.testing.memory_stream_pair()
            async with replicate(a, w), replicate(b, r):
                with trio.fail_after(5):  # before: waited out its 8 s, then failed
                    await done.wait()
        assert got == [b"block 7"]


# -- 8. a get asks again a peer that announces the block after refusing it -----------


def test_get_reasks_a_peer_that_announces_the_block_later() -> None:
    rep = LogReplicator(FakeLog(KEY, length=100, have=False))
    sink = _connect(rep, 1, 100, held=50)  # B: blocks 0..49 of 100; 70 unknown
    g = rep.want_block(70, 0.0)
    (req,) = [m for m in sink.sent if isinstance(m, wire.Request) and m.block is not None]
    (ch,) = rep.peers
    rep.on_message(ch, wire.NoData(1, req.id), 0.1)  # B lacks it (for now)
    assert ch.peer_id in g.tried and g.error is not None
    sink.sent.clear()
    rep.on_message(ch, wire.Range(1, 70, 1), 2.0)  # B fetched it and says so
    assert _asked(sink, 70), "the get never asked B again"
    assert g.error is None and ch.peer_id not in g.tried


# -- 9. a download's count costs per held page, not per block of its range -----------


@given(
    picks=st.lists(st.integers(0, 4 * PAGE_BITS), max_size=40),
    runs=st.lists(st.tuples(st.integers(0, 4 * PAGE_BITS), st.integers(1, PAGE_BITS)), max_size=3),
    start=st.integers(-5, 5 * PAGE_BITS),
    size=st.integers(-5, 3 * PAGE_BITS),
)
def test_count_range_matches_bit_by_bit(
    picks: list[int], runs: list[tuple[int, int]], start: int, size: int
) -> None:
    bits = Bitfield()
    for i in picks:
        bits.set(i)
    for lo, n in runs:
        bits.set_range(lo, lo + n)
    want = sum(1 for i in range(max(start, 0), start + size) if bits.get(i))
    assert bits.count_range(start, start + size) == want
    assert bits.count_range(start, 2**40) == sum(1 for i in bits if i >= start)


class CountedHas(FakeLog):
    """A FakeLog whose `has` fails past a budget (a loop over a huge range)."""

    budget = 10_000

    def has(self, index: int) -> bool:
        self.budget -= 1
        assert self.budget >= 0, "has() called once per block of the range"
        return super().has(index)


@pytest.mark.parametrize(("start", "end"), [(0, 2**40), (3, 10**12), (10**9, 2**40)])
def test_download_far_past_the_length_counts_arithmetically(start: int, end: int) -> None:
    log = CountedHas(KEY, length=10, have=False)
    log.blocks = {i: b"" for i in (2, 5)}
    rep = LogReplicator(log)
    d = rep.want_range(start, end, 0.0)
    held = sum(1 for i in (2, 5) if start <= i < end)
    assert d.missing == end - start - held and not d.done


async def test_adapter_counts_held_blocks_from_the_bitfield() -> None:
    async with open_store() as ws, open_store() as rs:
        w = await ws.create_log(key_pair(KEY))
        await w.append([b"x"] * 40)
        r = await rs.open_log(w.key)
        rep = replication_for(r)
        a, b = trio.testing.memory_stream_pair()
        async with replicate(a, w), replicate(b, r):
            await rep.wait_for_peers()
            await rep.update()
            await rep.get(3)
            await rep.get(33)
        engine = rep.engine
        assert engine._missing_in(0, 2**40) == 2**40 - 2
        assert engine._missing_in(4, 40) == 35
        assert engine._missing_in(33, 34) == 0
        assert engine._missing_in(50, 60) == 10


# -- 10. opening and closing channels forever does not grow the session --------------


def test_open_close_cycles_keep_closed_ids_bounded() -> None:
    log = FakeLog(KEY, length=10)
    s, rep = open_session(log)
    assert s.session_id is not None
    cap = caps.capability(s.session_id, log.key, initiator=s.nonce > PEER_NONCE)
    s.receive(wire.Close(1, ""), 0.0)
    for k in range(2, 3 * MAX_CLOSED_CHANNEL_IDS):
        s.receive(wire.Open(k, log.discovery_key, cap), 0.0)
        s.receive(wire.Close(k, ""), 0.0)
        while s.outbox:
            s.pop_outbox()
    assert len(s._closed_remote) <= MAX_CLOSED_CHANNEL_IDS
    assert not rep.peers
    # Recent ids are still known: a message racing their close is a soft error.
    s.receive(wire.Sync(k, 0, 0, 10), 0.0)
    with pytest.raises(RemoteProtocolError, match="reused"):
        s.receive(wire.Open(k, log.discovery_key, cap), 0.0)
