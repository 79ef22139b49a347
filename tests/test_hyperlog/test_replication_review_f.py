"""Regression tests for the sparse-replication review (round F).

Each test drives the sans-IO engines (`SessionEngine`, `LogReplicator`) directly over
`FakeLog`s, or real logs over memory streams with Trio's autojump clock, and failed
on the code before its fix.
"""

from __future__ import annotations

import dataclasses

import pytest

from hyperlog import wire
from hyperlog.errors import HyperlogError, RemoteProtocolError
from hyperlog.replication import caps, session
from hyperlog.replication.constants import MAX_OUTBOX_BYTES, MAX_UNREAD_BYTES, REQUEST_TIMEOUT
from hyperlog.replication.port import Applied
from hyperlog.replication.scheduler import (
    LogReplicator,
    RangeVerifyWork,
    ServeWork,
    Work,
)
from hyperlog.replication.session import SessionEngine

from .test_replication_fakes import FakeLog, run_sync

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
        wire.Sync(1, 0, 0, 12345),  # a stale view of our length: we re-sync
    ],
    ids=["want", "refused-request", "sync"],
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
