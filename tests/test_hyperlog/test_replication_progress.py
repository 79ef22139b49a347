"""A download's progress counts each block once, when it is first stored.

Engine level (no trio, fake logs): one reader `LogReplicator` with two peers whose
channels write into plain lists, so the test decides exactly when each answer
arrives and when each queued verification runs. The same block can then be
answered by both peers (a get hot-swapped to a second peer) before either answer
is stored; both answers are verified and stored, but the block is new only once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest

from hyperlog import wire
from hyperlog.errors import HyperlogError, InvalidProofError, ReplicationError
from hyperlog.replication.constants import HOTSWAP_AFTER
from hyperlog.replication.port import Applied
from hyperlog.replication.scheduler import (
    DownloadWant,
    LogReplicator,
    PeerChannel,
    RangeVerifyWork,
    VerifyWork,
    Work,
)

from .test_replication_fakes import FakeLog, run_sync

KEY = bytes(range(32))


def _index(r: wire.Request) -> int:
    assert r.block is not None
    return r.block.index


@dataclass
class ListSink:
    """A `ChannelSink` that only records what the replicator sends and queues."""

    peer_features: int = 0
    sent: list[wire.Message] = field(default_factory=list)
    work: list[Work] = field(default_factory=list)
    dropped: list[ReplicationError] = field(default_factory=list)

    def send(self, msg: wire.Message) -> None:
        self.sent.append(msg)

    def add_work(self, work: Work) -> None:
        self.work.append(work)

    def pending_serves(self) -> int:
        return 0

    def note_deadline(self, deadline: float) -> None:
        pass

    def drop(self, error: ReplicationError) -> None:
        self.dropped.append(error)


class TwoPeers:
    """A reader of an `n`-block log (knowing its length, holding nothing) and two
    writers that hold every block."""

    def __init__(self, n: int) -> None:
        self.writer = FakeLog(KEY, length=n)
        self.reader = FakeLog(KEY, length=n, have=False)
        self.rep = LogReplicator(self.reader)
        self.sinks = [ListSink(), ListSink()]
        self.channels = []
        for k, sink in enumerate(self.sinks):
            ch = PeerChannel(sink, k + 1, k + 1, peer_id=k + 1)
            ch.owner = self.rep
            self.rep.add_peer(ch, 0.0)
            self.rep.on_message(ch, wire.Sync(ch.remote_id, 0, n, n), 0.0)
            self.rep.on_message(ch, wire.Range(ch.remote_id, 0, n), 0.0)
            self.channels.append(ch)

    def requests(self, k: int) -> list[wire.Request]:  # each with a block
        """Block requests sent to peer `k` that are still in flight."""
        ch = self.channels[k]
        sent = self.sinks[k].sent
        return [
            m
            for m in sent
            if isinstance(m, wire.Request) and m.block is not None and m.id in ch.inflight
        ]

    def request_for(self, k: int, index: int) -> wire.Request:
        (req,) = [r for r in self.requests(k) if _index(r) == index]
        return req

    def holder(self, index: int) -> int:
        """The one peer asked for block `index`."""
        (k,) = [k for k in (0, 1) if any(_index(r) == index for r in self.requests(k))]
        return k

    def range_request(self, k: int) -> wire.RangeRequest:
        (req,) = [m for m in self.sinks[k].sent if isinstance(m, wire.RangeRequest)]
        return req

    def answer(self, k: int, req: wire.Request, *, corrupt: bool = False) -> None:
        """Peer `k` answers `req` (queued for verification, not yet stored)."""
        data = run_sync(self.writer.serve(req))
        assert isinstance(data, wire.Data) and data.block is not None
        if corrupt:
            data = wire.Data(0, 0, data.fork, wire.DataBlock(data.block.index, b"bad", ()))
        ch = self.channels[k]
        data = wire.Data(ch.remote_id, req.id, data.fork, data.block)
        self.rep.on_message(ch, data, 0.0)

    def answer_range(self, k: int) -> None:
        req = self.range_request(k)
        data = run_sync(self.writer.serve(req))
        assert isinstance(data, wire.RangeData)
        data = dataclasses.replace(data, channel=self.channels[k].remote_id, id=req.id)
        self.rep.on_message(self.channels[k], data, 0.0)

    def store(self, k: int, now: float = 1.0) -> list[HyperlogError | None]:
        """Verify and store what peer `k` answered, as the driver would."""
        errors: list[HyperlogError | None] = []
        work, self.sinks[k].work = self.sinks[k].work, []
        for w in work:
            if isinstance(w, RangeVerifyWork):
                results = run_sync(self.reader.apply_range(w.data, w.inflight.index))
                errors.append(self.rep.on_range_applied(w, results, now))
                continue
            assert isinstance(w, VerifyWork)
            result: Applied | HyperlogError
            try:
                result = run_sync(self.reader.apply(w.data))
            except HyperlogError as exc:
                result = exc
            errors.append(self.rep.on_applied(w, result, now))
        return errors


def _get_hot_swapped(net: TwoPeers) -> tuple[DownloadWant, int]:
    """A get of block 0, then a download of [0, 2); the get is slow, so block 0 is
    asked of the second peer too. Returns the download and the first peer asked."""
    net.rep.want_block(0, 0.0)
    d = net.rep.want_range(0, 2, 0.0)
    first = net.holder(0)
    net.rep.on_timer(HOTSWAP_AFTER + 0.01)
    assert net.request_for(1 - first, 0)
    return d, first


def test_block_answered_by_two_peers_counts_once() -> None:
    # Both answers to block 0 are queued before either is stored. Both verify and
    # both are stored (the second store rewrites the same bytes), but only the
    # first is a new block: counting the second too made the download report 2
    # blocks fetched and 0 missing, i.e. done, while block 1 was still missing.
    net = TwoPeers(8)
    d, first = _get_hot_swapped(net)
    net.answer(first, net.request_for(first, 0))
    net.answer(1 - first, net.request_for(1 - first, 0))
    assert net.store(0) + net.store(1) == [None, None]
    assert net.reader.has(0) and not net.reader.has(1)
    assert (d.blocks, d.bytes, d.missing, d.done) == (1, net.writer.block_size, 1, False)
    assert net.rep.stats["blocks"] == 1
    # ... and the download still completes: block 1 arrives and counts.
    k = net.holder(1)
    net.answer(k, net.request_for(k, 1))
    assert net.store(k) == [None]
    assert (d.blocks, d.missing, d.done) == (2, 0, True)
    assert net.rep.stats["blocks"] == 2


@pytest.mark.parametrize("bad_first", [True, False])
def test_block_counts_once_when_one_of_two_answers_is_invalid(bad_first: bool) -> None:
    # One of the two queued answers fails verification (its peer becomes a suspect,
    # to be checked for a fork conflict and dropped): the valid one is the block's
    # only store and counts, whichever of the two is verified first.
    net = TwoPeers(8)
    d, first = _get_hot_swapped(net)
    other = 1 - first
    net.answer(first, net.request_for(first, 0), corrupt=bad_first)
    net.answer(other, net.request_for(other, 0), corrupt=not bad_first)
    net.store(first)
    net.store(other)
    bad = first if bad_first else other
    assert isinstance(net.channels[bad].suspect, InvalidProofError)
    assert net.channels[1 - bad].suspect is None
    assert net.reader.has(0)
    assert (d.blocks, d.missing, d.done) == (1, 1, False)


@pytest.mark.parametrize("range_first", [True, False])
def test_block_in_a_range_and_in_a_hot_swapped_get_counts_once(range_first: bool) -> None:
    # A download asks one peer for blocks [0, 64) in one RangeRequest; a slow get of
    # block 5 is also asked of the other peer. Both answers carry block 5.
    net = TwoPeers(64)
    d = net.rep.want_range(0, 64, 0.0)
    ranged = 0 if net.channels[0].ranges_outstanding() else 1
    net.rep.want_block(5, 0.0)
    net.rep.on_timer(HOTSWAP_AFTER + 0.01)
    single = net.holder(5)
    assert single != ranged
    net.answer_range(ranged)
    net.answer(single, net.request_for(single, 5))
    order = [ranged, single] if range_first else [single, ranged]
    assert net.store(order[0]) + net.store(order[1]) == [None, None]
    assert (d.blocks, d.bytes, d.missing, d.done) == (64, 64 * net.writer.block_size, 0, True)
    assert net.rep.stats["blocks"] == 64
