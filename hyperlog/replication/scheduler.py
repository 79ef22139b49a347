"""Per-log replication engine: which peer gets which request, and when (no trio).

Theory of operation
-------------------
One `LogReplicator` exists per log and process. Every stream that replicates the
log contributes one `PeerChannel` (an open channel with one remote peer). The
replicator owns everything that spans peers:

* **wants**: single blocks asked for by `get` (priority, with waiters) and ranges
  asked for by `download` (worked lowest-first from a cursor, plus a retry set);
* **in flight**: which peer holds a request for which block. A block is normally
  requested from one peer; a *priority* block unanswered for `HOTSWAP_AFTER` is also
  asked of a second peer, and the first valid answer cancels the other;
* **upgrades**: at most one upgrade (signed-length) request in flight per log, sent
  to a peer whose sync says it is longer, or on a newer fork (then from 0, so the log
  can find the common prefix and truncate);
* **windows**: each peer has an adaptive window of requests in flight, grown by one
  per answer (slow start up to `MAX_WINDOW`) and halved on a timeout.

Each `PeerChannel` keeps what its peer told us (fork, length, have-bits) and its own
requests in flight. Inputs arrive as method calls from the session engine (decoded
messages) and from the driver (local wants, verified results, `on_timer(now)`).
Outputs are messages queued on the channel's `ChannelSink` and `Work` items for the
driver (serve a request, verify data). State only changes inside these synchronous
calls, so the Trio driver may call them from several tasks without locks.

Deliberately not handled: seek and hash requests are encoded on the wire and served,
but the scheduler never issues them; pushing unrequested blocks is not supported.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from hyperlog import flat_tree, wire
from hyperlog.crypto import leaf_hash, parent_hash
from hyperlog.errors import (
    BlockNotAvailableError,
    ForkConflictError,
    HyperlogError,
    InvalidProofError,
    InvalidSignatureError,
    RemoteProtocolError,
)
from hyperlog.replication.constants import (
    HOTSWAP_AFTER,
    INITIAL_WINDOW,
    MAX_ATTEMPTS,
    MAX_CANCELLED_IDS,
    MAX_PENDING_SERVES,
    MAX_RANGES_IN_FLIGHT,
    MAX_WANT_SPAN,
    MAX_WINDOW,
    MIN_WINDOW,
    PAGE_BITS,
    RANGE_BYTES,
    RANGE_BYTES_IN_FLIGHT,
    RANGE_LEAVES_MIN_BLOCK,
    RANGE_MIN_BLOCKS,
    REQUEST_TIMEOUT,
    SCAN_LIMIT,
)
from hyperlog.replication.have import RemoteHave
from hyperlog.replication.port import Applied, LogView, SizedView

logger = logging.getLogger(__name__)

K_BLOCK = "block"
K_UPGRADE = "upgrade"
K_CONFLICT = "conflict"  # an upgrade from 0, to check a suspected equivocation
K_RANGE = "range"  # a RangeRequest: every block of an aligned subtree

#: Bytes of values one RangeData may carry. Its other parts (at most 64 leaves and
#: `wire.MAX_PROOF_NODES` uncles of ~53 bytes each, msgpack headers) take well under
#: 64 KiB, so the frame stays within `wire.MAX_FRAME_SIZE` (MAX_BLOCK_SIZE + 64 KiB);
#: a bigger RangeData could not be encoded at all.
MAX_RANGE_VALUE_BYTES = wire.MAX_BLOCK_SIZE


class ChannelSink(Protocol):
    """Where a channel's outgoing messages and work go (the session engine)."""

    #: Feature bits both sides announced in their Hello (`wire.FEATURE_*`).
    peer_features: int

    def send(self, msg: wire.Message) -> None: ...
    def add_work(self, work: Work) -> None: ...
    def pending_serves(self) -> int: ...
    def note_deadline(self, deadline: float) -> None:
        """A timer deadline now exists at `deadline` (the driver wakes its timer only
        for deadlines earlier than the one it sleeps until)."""
        ...


@dataclass(slots=True)
class Inflight:
    id: int
    kind: str
    index: int  # block index, or the upgrade's target length
    fork: int
    sent_at: float
    deadline: float
    request: wire.Request | wire.RangeRequest
    swap_checked: bool = False
    count: int = 1  # blocks covered (a range covers several, from `index`)


@dataclass(frozen=True, slots=True)
class ServeWork:
    """Driver: build the proof for `request` and call `LogReplicator.on_served`."""

    channel: PeerChannel
    request: wire.Request | wire.RangeRequest


@dataclass(frozen=True, slots=True)
class VerifyWork:
    """Driver: verify and store `data`, then call `LogReplicator.on_applied`."""

    channel: PeerChannel
    inflight: Inflight
    data: wire.Data


@dataclass(frozen=True, slots=True)
class RangeVerifyWork:
    """Driver: verify and store a RangeData (`LogPort.apply_range`: a hash proof, then
    one proof per block, in one group), then call `LogReplicator.on_range_applied`."""

    channel: PeerChannel
    inflight: Inflight
    data: wire.RangeData


Work = ServeWork | VerifyWork | RangeVerifyWork


class PeerChannel:
    """One open channel: one remote peer replicating one log with us."""

    def __init__(self, sink: ChannelSink, local_id: int, remote_id: int, peer_id: int) -> None:
        self.sink = sink
        self.local_id = local_id
        self.remote_id = remote_id
        self.peer_id = peer_id
        self.remote_fork = 0
        self.remote_length = 0
        self.remote_can_upgrade = False
        self.synced = False
        self.have = RemoteHave()
        self.wanted_pages: set[int] = set()
        self.inflight: dict[int, Inflight] = {}
        # Requests we cancelled whose answer may still arrive (insertion order: the
        # oldest is forgotten first, at most MAX_CANCELLED_IDS).
        self.cancelled: dict[int, Inflight] = {}
        self.verifying: dict[int, Inflight] = {}  # answered, queued for verification
        self.window = float(INITIAL_WINDOW)
        self.srtt = 0.0
        self.upgrade_failed_at: tuple[int, int] | None = None  # (fork, length) refused
        self.closed = False
        self.suspect: HyperlogError | None = None  # a bad proof, pending a conflict check
        self.owner: LogReplicator | None = None  # set by the session that opened it
        self.blocks_in = 0
        self.bytes_in = 0

    def free_slots(self) -> int:
        # Answers received but not yet verified still count: reading runs ahead of
        # storing, and this keeps what we hold per peer bounded by the window.
        return int(self.window) - len(self.inflight) - len(self.verifying)

    def ranges_outstanding(self) -> int:
        return sum(1 for x in self.inflight.values() if x.kind == K_RANGE) + sum(
            1 for x in self.verifying.values() if x.kind == K_RANGE
        )

    def may_have(self, index: int) -> bool:
        """Known to have, or (unknown and) inside its announced length."""
        if index >= self.remote_length:
            return False
        return self.have.has(index) or not self.have.known(index)

    def note_cancelled(self, inf: Inflight) -> None:
        self.cancelled[inf.id] = inf
        if len(self.cancelled) > MAX_CANCELLED_IDS:
            del self.cancelled[next(iter(self.cancelled))]

    def take_cancelled(self, rid: int) -> Inflight | None:
        """The request `rid` if we cancelled it (its answer is expected at most once)."""
        return self.cancelled.pop(rid, None)

    def __repr__(self) -> str:
        return f"<PeerChannel peer={self.peer_id} ch={self.local_id}>"


@dataclass(slots=True)
class GetWant:
    """A `get(index)` in progress."""

    index: int
    waiters: int = 0
    passive: bool = False  # asked for by `Log.get` (no waiter to release it)
    attempts: int = 0
    tried: set[int] = field(default_factory=set)
    error: HyperlogError | None = None


@dataclass(slots=True)
class DownloadWant:
    """A `download(start, end)` in progress; `end=None` follows the log live."""

    start: int
    end: int | None
    cursor: int
    missing: int = 0
    counted_to: int = 0  # live downloads: blocks below this are counted in `missing`
    blocks: int = 0
    bytes: int = 0
    done: bool = False


class LogReplicator:
    """The sans-IO replication state of one log across all its peers."""

    def __init__(
        self,
        view: LogView,
        *,
        on_change: Callable[[], None] | None = None,
        on_block: Callable[[int], None] | None = None,
    ) -> None:
        """Args:
        view: the log's facts.
        on_change: called after any change (downloads, update, peers).
        on_block: called with an index when that block was stored or its `get`
            failed, so a waiting `get` wakes alone (not every waiter on every block).
        """
        self.view = view
        self.peers: list[PeerChannel] = []
        self.gets: dict[int, GetWant] = {}
        self.downloads: list[DownloadWant] = []
        self.retry: set[int] = set()
        self.block_reqs: dict[int, list[tuple[PeerChannel, int]]] = {}
        self.upgrade_inflight: PeerChannel | None = None
        self.frozen: HyperlogError | None = None
        self.pending_opens = 0  # channels we opened that the remote has not answered
        # Answers queued for verification, per block they cover, and the blocks of
        # those that an earlier answer already stored: the same block may be answered
        # twice (a hot-swapped get, a get inside a range) before either answer is
        # stored, and it must count once, when it is first stored.
        self.queued_blocks: dict[int, int] = {}
        self.stored_early: set[int] = set()
        self.next_id = 1
        self.on_change = on_change or (lambda: None)
        self.on_block = on_block or (lambda index: None)
        self.stats = {"blocks": 0, "bytes": 0, "timeouts": 0, "hotswaps": 0}

    # ------------------------------------------------------------------ peers

    def add_peer(self, ch: PeerChannel, now: float) -> None:
        """A channel opened on both sides: announce ourselves and start working."""
        self.peers.append(ch)
        if len(self.peers) > 1:
            ch.sink.note_deadline(now)  # requests in flight may now be hot-swapped
        self._send_sync(ch)
        contiguous = self.view.contiguous_length()
        if contiguous:
            ch.sink.send(wire.Range(ch.local_id, 0, contiguous))
        self.pump(now)

    def remove_peer(self, ch: PeerChannel, now: float) -> None:
        """The channel closed or its stream died: hand its requests to others."""
        if ch not in self.peers:
            return
        ch.closed = True
        self.peers.remove(ch)
        for inf in list(ch.inflight.values()):
            self._forget_inflight(ch, inf, failed=True)
        ch.inflight.clear()
        self._fail_unservable()
        self.pump(now)
        self.on_change()

    def refresh(self, now: float) -> None:
        """Re-evaluate after a change the replicator did not see (an open refused)."""
        self._fail_unservable()
        self.pump(now)
        self.on_change()

    # ------------------------------------------------------------------ local wants

    def want_block(self, index: int, now: float, *, passive: bool = False) -> GetWant:
        """Fetch block `index` with priority (a `get`).

        With `passive`, nobody will call `release_block`: the want ends when the block
        is stored or no peer can provide it (for `Log.get`'s want listeners).
        """
        g = self.gets.get(index)
        if g is None:
            g = self.gets[index] = GetWant(index)
        if passive:
            g.passive = True
        else:
            g.waiters += 1
        self.pump(now)
        self._fail_unservable(g)
        return g

    def release_block(self, g: GetWant, now: float) -> None:
        """A `get` stopped waiting (served, failed, cancelled or timed out)."""
        g.waiters -= 1
        if g.waiters <= 0 and not g.passive and self.gets.get(g.index) is g:
            del self.gets[g.index]
            if not self._needed_by_download(g.index):
                for ch, rid in self.block_reqs.pop(g.index, []):
                    self._cancel_request(ch, rid)

    def want_range(self, start: int, end: int | None, now: float) -> DownloadWant:
        d = DownloadWant(start, end, start)
        stop = self.view.length if end is None else end
        d.missing = sum(1 for i in range(start, stop) if not self.view.has(i))
        d.counted_to = max(start, stop)
        d.done = end is not None and d.missing == 0
        self.downloads.append(d)
        self.pump(now)
        return d

    def release_range(self, d: DownloadWant) -> None:
        if d in self.downloads:
            self.downloads.remove(d)

    def on_local_update(self, old_length: int, now: float) -> None:
        """The log changed locally: an append (announce it) or a truncation (drop it)."""
        length = self.view.length
        for ch in self.peers:
            self._send_sync(ch)
            if length > old_length and self.view.has(length - 1):
                ch.sink.send(wire.Range(ch.local_id, old_length, length - old_length))
            elif length < old_length:
                ch.sink.send(wire.Range(ch.local_id, length, old_length - length, drop=True))
        if length < old_length:
            self._on_upgraded(length, now, sync=False)
        self._count_live()
        self.pump(now)
        self.on_change()

    def _count_live(self) -> None:
        """Count the blocks a longer log added to live downloads (incrementally)."""
        length = self.view.length
        for d in self.downloads:
            if d.end is None and d.counted_to < length:
                lo = max(d.counted_to, d.start)
                d.missing += sum(1 for i in range(lo, length) if not self.view.has(i))
                d.counted_to = length

    # ------------------------------------------------------------------ remote messages

    def on_message(self, ch: PeerChannel, msg: wire.ChannelMessage, now: float) -> None:
        """Handle one channel message from `ch`'s peer.

        Raises:
            RemoteProtocolError: the peer broke the protocol; drop its session.
        """
        match msg:
            case wire.Sync():
                self._on_sync(ch, msg, now)
            case wire.Request():
                self._on_request(ch, msg)
            case wire.Cancel():
                pass  # handled by the session (drops the queued serve)
            case wire.Data():
                self._on_data(ch, msg, now)
            case wire.NoData():
                self._on_no_data(ch, msg, now)
            case wire.Want():
                self._on_want(ch, msg)
            case wire.Unwant():
                pass  # we answer wants at once and keep no subscription
            case wire.Bitfield():
                ch.have.add_bits(msg.start, msg.bits)
                self.pump(now)
            case wire.Range():
                if msg.drop:
                    self._drop_have(ch, msg.start, msg.length)
                else:
                    ch.have.add_range(msg.start, msg.length)
                self.pump(now)
            case wire.RangeRequest():
                self._on_range_request(ch, msg)
            case wire.RangeData():
                self._on_range_data(ch, msg, now)
            case wire.Close():
                pass  # handled by the session

    def _on_sync(self, ch: PeerChannel, msg: wire.Sync, now: float) -> None:
        first = not ch.synced
        if msg.fork == ch.remote_fork and msg.length < ch.remote_length and not first:
            raise RemoteProtocolError("sync: length went backwards without a fork")
        if (msg.fork, msg.length) != (ch.remote_fork, ch.remote_length):
            ch.upgrade_failed_at = None
        ch.remote_fork, ch.remote_length = msg.fork, msg.length
        ch.remote_can_upgrade = msg.can_upgrade
        ch.synced = True
        if self.gets:
            self._fail_unservable()
        if msg.remote_length != self.view.length:
            # The peer has a stale view of us: tell it (never loops: our reply carries
            # its length, so its answer matches and stops here).
            self._send_sync(ch)
        self.pump(now)
        self.on_change()

    def _on_request(self, ch: PeerChannel, msg: wire.Request) -> None:
        if ch.sink.pending_serves() >= MAX_PENDING_SERVES:
            raise RemoteProtocolError(f"more than {MAX_PENDING_SERVES} requests unanswered")
        if self.frozen is not None or msg.fork != self.view.fork:
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_FORK))
            return
        b = msg.block
        if b is not None and (b.index >= self.view.length or not self.view.has(b.index)):
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_NOT_AVAILABLE))
            return
        u = msg.upgrade
        if u is not None and (u.start > self.view.length or u.start + u.length > self.view.length):
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_NOT_AVAILABLE))
            return
        ch.sink.add_work(ServeWork(ch, msg))

    def _on_range_request(self, ch: PeerChannel, msg: wire.RangeRequest) -> None:
        if msg.leaves and not ch.sink.peer_features & wire.FEATURE_RANGE_LEAVES:
            raise RemoteProtocolError("range request: leaves asked for, a feature not agreed")
        if ch.sink.pending_serves() >= MAX_PENDING_SERVES:
            raise RemoteProtocolError(f"more than {MAX_PENDING_SERVES} requests unanswered")
        if self.frozen is not None or msg.fork != self.view.fork:
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_FORK))
            return
        span = 1 << flat_tree.depth(msg.node)
        first = flat_tree.left_span(msg.node) // 2
        if span > wire.MAX_RANGE_BLOCKS:
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_INVALID))
            return
        if first + span > self.view.length or not all(
            self.view.has(j) for j in range(first, first + span)
        ):
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_NOT_AVAILABLE))
            return
        size = self._subtree_bytes(msg.node)
        if size is not None and size > MAX_RANGE_VALUE_BYTES:
            # Its answer would not fit in a frame (big blocks in the span, or a peer
            # asking for too much): refuse before reading anything; the requester
            # fetches these blocks one by one.
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_INVALID))
            return
        ch.sink.add_work(ServeWork(ch, msg))

    def _subtree_bytes(self, node: int) -> int | None:
        """Byte size of the blocks under `node` if the view stores that node."""
        if isinstance(self.view, SizedView):
            return self.view.tree_node_size(node)
        return None

    def _on_range_data(self, ch: PeerChannel, msg: wire.RangeData, now: float) -> None:
        inf = ch.inflight.pop(msg.id, None)
        if inf is None and (late := ch.take_cancelled(msg.id)) is not None:
            self._on_late_answer(ch, late, now)
            return
        if inf is None or inf.kind != K_RANGE:
            raise RemoteProtocolError(f"range data for request {msg.id}, which we never sent")
        req = inf.request
        assert isinstance(req, wire.RangeRequest)
        if msg.node != req.node or msg.fork != req.fork or len(msg.values) != inf.count:
            raise RemoteProtocolError("range data: differs from the range requested")
        if msg.leaves and not range_leaves_match(msg, inf.index, asked=req.leaves):
            raise RemoteProtocolError("range data: leaves not asked for or not the blocks'")
        self._queue_verify(ch, inf, RangeVerifyWork(ch, inf, msg))

    def on_range_applied(
        self, work: RangeVerifyWork, results: list[Applied | HyperlogError], now: float
    ) -> HyperlogError | None:
        """The driver verified (or refused) a range. Returns the error to drop with."""
        ch, inf = work.channel, work.inflight
        errors = [r for r in results if isinstance(r, HyperlogError)]
        stored = {
            r.block: r.block_size for r in results if isinstance(r, Applied) and r.block is not None
        }
        new = self._unqueue(ch, inf, list(stored))
        self._forget_inflight(ch, inf, failed=bool(errors))
        rtt = max(0.0, now - inf.sent_at)
        ch.srtt = rtt if ch.srtt == 0 else 0.875 * ch.srtt + 0.125 * rtt
        for index in new:
            ch.blocks_in += 1
            ch.bytes_in += stored[index]
            self._on_stored(index, stored[index], ch)
        self.pump(now)
        self.on_change()
        return errors[0] if errors else None

    def range_span(self) -> int:
        """Blocks per RangeRequest for this log (0: use single-block requests).

        A power of two up to `MAX_RANGE_BLOCKS`, keeping a range near `RANGE_BYTES`
        for the log's average block size.
        """
        length = self.view.length
        if length == 0:
            return 0
        avg = max(1, self.view.byte_length // length)
        span = wire.MAX_RANGE_BLOCKS
        while span > 1 and span * avg > RANGE_BYTES:
            span //= 2
        return span if span >= RANGE_MIN_BLOCKS else 0

    def on_served(
        self,
        ch: PeerChannel,
        request: wire.Request | wire.RangeRequest,
        data: wire.Data | wire.RangeData | None,
    ) -> None:
        """The driver built (or failed to build) the proof for `request`."""
        if ch.closed:
            return
        if data is None:
            ch.sink.send(wire.NoData(ch.local_id, request.id, wire.NO_DATA_NOT_AVAILABLE))
        elif (
            isinstance(data, wire.RangeData) and sum(map(len, data.values)) > MAX_RANGE_VALUE_BYTES
        ):
            # Too big for one frame (a view without node sizes could not refuse it
            # earlier): encoding it would fail, so refuse as `_on_range_request` does.
            ch.sink.send(wire.NoData(ch.local_id, request.id, wire.NO_DATA_INVALID))
        else:
            ch.sink.send(data)

    def _on_data(self, ch: PeerChannel, msg: wire.Data, now: float) -> None:
        inf = ch.inflight.pop(msg.id, None)
        if inf is None and (late := ch.take_cancelled(msg.id)) is not None:
            self._on_late_answer(ch, late, now)
            return
        if inf is None or not isinstance(inf.request, wire.Request):
            raise RemoteProtocolError(f"data for request {msg.id}, which we never sent")
        req = inf.request
        if msg.fork != req.fork:
            raise RemoteProtocolError("data: fork differs from the request's")
        if (msg.block is None) != (req.block is None) or (
            msg.block is not None and req.block is not None and msg.block.index != req.block.index
        ):
            raise RemoteProtocolError("data: block differs from the one requested")
        if (msg.upgrade is None) != (req.upgrade is None):
            raise RemoteProtocolError("data: upgrade present iff requested")
        mu, ru = msg.upgrade, req.upgrade
        if mu is not None and ru is not None and (mu.start != ru.start or mu.length < ru.length):
            raise RemoteProtocolError("data: upgrade span differs from the one requested")
        if msg.hash is not None or msg.seek is not None:
            raise RemoteProtocolError("data: carries parts that were not requested")
        self._queue_verify(ch, inf, VerifyWork(ch, inf, msg))

    def _queue_verify(
        self, ch: PeerChannel, inf: Inflight, work: VerifyWork | RangeVerifyWork
    ) -> None:
        """Hand an answer to the driver for verification and storage."""
        ch.verifying[inf.id] = inf
        for index in _blocks_of(inf):
            self.queued_blocks[index] = self.queued_blocks.get(index, 0) + 1
        ch.sink.add_work(work)

    def _unqueue(self, ch: PeerChannel, inf: Inflight, stored: list[int]) -> list[int]:
        """The answer `inf` left the verification queue (verified, refused or
        abandoned) having stored the blocks `stored`.

        Returns:
            those of `stored` stored for the first time (not by another answer to the
            same block that was queued at the same time).
        """
        new = [index for index in stored if index not in self.stored_early]
        if ch.verifying.pop(inf.id, None) is None:
            return new
        self.stored_early.update(stored)
        for index in _blocks_of(inf):
            left = self.queued_blocks.pop(index, 0) - 1
            if left > 0:
                self.queued_blocks[index] = left
            else:
                self.stored_early.discard(index)
        return new

    def on_applied(
        self, work: VerifyWork, result: Applied | HyperlogError, now: float
    ) -> HyperlogError | None:
        """The driver verified (or refused) a peer's data.

        Returns:
            the error to drop the peer with, or None.
        """
        ch, inf = work.channel, work.inflight
        if isinstance(result, HyperlogError):
            self._unqueue(ch, inf, [])
            self._forget_inflight(ch, inf, failed=True)
            if (
                isinstance(result, InvalidProofError)
                and not isinstance(result, InvalidSignatureError)
                and ch.suspect is None
                and work.data.fork == self.view.fork == ch.remote_fork
                and ch.remote_length == self.view.length > 0
            ):
                # Same fork and length, yet the peer's proof does not fit our tree:
                # either a bad proof or a second signed tree. Ask for its whole tree.
                ch.suspect = result
                up = wire.RequestUpgrade(0, ch.remote_length)
                self._request(ch, K_CONFLICT, ch.remote_length, now, upgrade=up)
                return None
            self.pump(now)
            return result
        rtt = max(0.0, now - inf.sent_at)
        ch.srtt = rtt if ch.srtt == 0 else 0.875 * ch.srtt + 0.125 * rtt
        ch.window = min(float(MAX_WINDOW), ch.window + 1.0)
        stored = [] if result.block is None else [result.block]
        new = self._unqueue(ch, inf, stored)
        self._forget_inflight(ch, inf, failed=False)
        if result.block is not None and new:
            ch.blocks_in += 1
            ch.bytes_in += result.block_size
            self._on_stored(result.block, result.block_size, ch)
        if result.upgraded or result.truncated_to is not None:
            self._on_upgraded(result.truncated_to, now)
        self.pump(now)
        self.on_change()
        return None

    def abandon(self, work: Work, now: float) -> None:
        """A verification the driver will never run (its session ended): requeue."""
        if isinstance(work, VerifyWork | RangeVerifyWork):
            self._unqueue(work.channel, work.inflight, [])
            self._forget_inflight(work.channel, work.inflight, failed=True)

    def on_conflict_checked(
        self, work: VerifyWork, conflict: HyperlogError | None, now: float
    ) -> HyperlogError:
        """The driver checked a suspect peer's whole tree.

        Returns:
            the error to drop the peer with: the conflict (the log is then frozen), or
            the peer's original bad proof.
        """
        self._unqueue(work.channel, work.inflight, [])
        if isinstance(conflict, ForkConflictError):
            self.freeze(conflict)
            return conflict
        return work.channel.suspect or conflict or RemoteProtocolError("conflict check")

    def _on_no_data(self, ch: PeerChannel, msg: wire.NoData, now: float) -> None:
        inf = ch.inflight.pop(msg.id, None)
        if inf is None:
            ch.take_cancelled(msg.id)
            return  # an answer to a request we cancelled (or unknown): harmless
        if inf.kind == K_CONFLICT:
            raise RemoteProtocolError(f"refused to prove its tree after a bad proof: {ch.suspect}")
        if inf.kind == K_UPGRADE:
            self._upgrade_failed(ch, inf)
        elif inf.kind == K_RANGE and msg.reason == wire.NO_DATA_INVALID:
            pass  # too big for one frame: its blocks are retried one by one (below)
        elif (
            msg.reason == wire.NO_DATA_FORK
            or inf.fork != self.view.fork
            or inf.fork != ch.remote_fork
        ):
            # Asked on a fork that is no longer ours or the peer's (a truncation
            # crossed the request): it says nothing about which blocks the peer has.
            # Only forget the request; it is asked again on the new fork.
            pass
        else:
            self._drop_have(ch, inf.index, 1)
            g = self.gets.get(inf.index)
            if g is not None:
                g.tried.add(ch.peer_id)
        self._forget_inflight(ch, inf, failed=True)
        self._fail_unservable()
        self.pump(now)
        self.on_change()

    def _on_late_answer(self, ch: PeerChannel, inf: Inflight, now: float) -> None:
        """Data answering a request we cancelled: it crossed our Cancel on the wire.

        It is ignored (neither verified nor stored). The peer did answer, though: if
        we cancelled because it timed out, lift that verdict (the upgrade marked
        failed, the get's peer marked tried) and wait longer next time, or a slow
        only peer could never be asked again and its get would fail while the
        session lives on.
        """
        # The peer is at least this slow: later requests wait longer before timing
        # out (else a peer slower than REQUEST_TIMEOUT would time out every time).
        ch.srtt = max(ch.srtt, now - inf.sent_at)
        if inf.kind == K_UPGRADE and ch.upgrade_failed_at == (inf.fork, inf.index):
            ch.upgrade_failed_at = None
        elif inf.kind == K_BLOCK and (g := self.gets.get(inf.index)) is not None:
            g.tried.discard(ch.peer_id)
        else:
            return
        self._reopen_gets()
        self.pump(now)
        self._fail_unservable()
        self.on_change()

    @staticmethod
    def _upgrade_failed(ch: PeerChannel, inf: Inflight) -> None:
        """The peer refused (or never answered) upgrade request `inf`.

        Marks the head that request asked for, and only if it is still the peer's:
        after a Sync with a new fork or length crossed the request, the failure says
        nothing about the new head (which must be asked for, not skipped).
        """
        if (ch.remote_fork, ch.remote_length) == (inf.fork, inf.index):
            ch.upgrade_failed_at = (inf.fork, inf.index)

    def _reopen_gets(self) -> None:
        """Gets failed for want of a peer may have one again: clear their errors
        (`_fail_unservable` fails again those that still have none)."""
        for g in self.gets.values():
            if isinstance(g.error, BlockNotAvailableError) and g.attempts < MAX_ATTEMPTS:
                g.error = None

    def _on_want(self, ch: PeerChannel, msg: wire.Want) -> None:
        length = self.view.length
        start = msg.start - msg.start % 8
        end = min(length, msg.start + min(msg.length, MAX_WANT_SPAN))
        if start >= end:
            ch.sink.send(wire.Bitfield(ch.local_id, start, b""))
            return
        contiguous = min(self.view.contiguous_length(), end)
        if contiguous > start:
            ch.sink.send(wire.Range(ch.local_id, start, contiguous - start))
            start = contiguous - contiguous % 8
        chunk = 8 * wire.MAX_BITFIELD_BYTES
        while start < end:
            n = min(chunk, end - start)
            n += -n % 8
            ch.sink.send(wire.Bitfield(ch.local_id, start, self.view.have_bits(start, n)))
            start += n

    # ------------------------------------------------------------------ completion

    def _on_stored(self, index: int, size: int, source: PeerChannel | None) -> None:
        self.stats["blocks"] += 1
        self.stats["bytes"] += size
        self.retry.discard(index)
        g = self.gets.pop(index, None)
        if g is not None:
            g.error = None
            self.on_block(index)
        for ch, rid in self.block_reqs.pop(index, []):
            self._cancel_request(ch, rid)
        for d in self.downloads:
            if index >= d.start and (d.end is None or index < d.end):
                d.missing -= 1
                d.blocks += 1
                d.bytes += size
                if d.end is not None and d.missing <= 0:
                    d.done = True
        for ch in self.peers:
            if ch is not source and not ch.have.has(index):
                ch.sink.send(wire.Range(ch.local_id, index, 1))

    def _on_upgraded(self, truncated_to: int | None, now: float, *, sync: bool = True) -> None:
        if truncated_to is not None:
            # A newer fork: blocks from `truncated_to` on are gone and must be fetched
            # again from the new history.
            self.retry = {i for i in self.retry if i < truncated_to}
            self.stored_early = {i for i in self.stored_early if i < truncated_to}
            # "Peer lacks the block" verdicts were about the old history, and so were
            # the pages we asked peers about: ask again where bits are unknown.
            for g in self.gets.values():
                g.tried.clear()
            for ch in self.peers:
                ch.wanted_pages.clear()
            self._reopen_gets()
            for d in self.downloads:
                d.cursor = min(d.cursor, max(d.start, truncated_to))
                stop = self.view.length if d.end is None else d.end
                d.missing = sum(1 for i in range(d.start, stop) if not self.view.has(i))
                d.counted_to = max(d.start, stop)
                d.done = d.end is not None and d.missing == 0
        self._count_live()
        if self.gets:
            self._fail_unservable()
        if sync:
            for ch in self.peers:
                self._send_sync(ch)

    def freeze(self, error: HyperlogError) -> None:
        """Two signed trees for one fork: stop replicating this log for good."""
        self.frozen = error
        for g in list(self.gets.values()):
            g.error = error
            self.on_block(g.index)
        self.on_change()

    # ------------------------------------------------------------------ scheduling

    def pump(self, now: float) -> None:
        """Fill every peer's free window with the most useful requests."""
        if self.frozen is not None:
            return
        for ch in sorted(self.peers, key=lambda c: -c.free_slots()):
            if ch.closed or not ch.synced or ch.suspect is not None:
                continue
            self._maybe_upgrade(ch, now)
            self._fill_gets(ch, now)
            self._fill_downloads(ch, now)

    def _needs_upgrade_from(self, ch: PeerChannel) -> bool:
        if not ch.remote_can_upgrade or ch.upgrade_failed_at == (ch.remote_fork, ch.remote_length):
            return False
        if ch.remote_fork > self.view.fork:
            return True
        return ch.remote_fork == self.view.fork and ch.remote_length > self.view.length

    def _maybe_upgrade(self, ch: PeerChannel, now: float) -> None:
        if self.upgrade_inflight is not None or ch.free_slots() <= 0:
            return
        if not self._needs_upgrade_from(ch):
            return
        start = self.view.length if ch.remote_fork == self.view.fork else 0
        up = wire.RequestUpgrade(start, ch.remote_length - start)
        self._request(ch, K_UPGRADE, ch.remote_length, now, upgrade=up)
        self.upgrade_inflight = ch

    def upgrading(self) -> bool:
        """Whether an upgrade is in flight or some synced peer could give us one."""
        if self.upgrade_inflight is not None:
            return True
        return any(self._needs_upgrade_from(ch) for ch in self.peers if ch.synced)

    def settled(self) -> bool:
        """Every open channel synced and no upgrade pending: `update()` may return."""
        if self.pending_opens > 0:
            return False
        return all(ch.synced for ch in self.peers) and not self.upgrading()

    def _fill_gets(self, ch: PeerChannel, now: float) -> None:
        if not self.gets:
            return
        multi = len(self.peers) > 1
        for g in list(self.gets.values()):
            if ch.free_slots() <= 0:
                return
            i = g.index
            reqs = self.block_reqs.get(i)
            if reqs and (not multi or len(reqs) >= 2):
                continue  # in flight, and no hot-swap possible (cheap check first)
            if i >= self.view.length or self.view.has(i) or ch.peer_id in g.tried:
                continue
            if not ch.may_have(i):
                continue
            if reqs:
                # Hot-swap: only when the current holder is slow (and not us).
                c0, r0 = reqs[0]
                inf0 = c0.inflight.get(r0)  # None: answered, being verified
                if c0 is ch or inf0 is None or now - inf0.sent_at < HOTSWAP_AFTER:
                    continue
                self.stats["hotswaps"] += 1
            g.attempts += 1
            self._request_block(ch, i, now)

    def _fill_downloads(self, ch: PeerChannel, now: float) -> None:
        span = self.range_span() if self.downloads else 0
        for d in self.downloads:
            if d.done:
                continue
            if ch.free_slots() <= 0:
                return
            stop = self.view.length if d.end is None else min(d.end, self.view.length)
            for i in sorted(self.retry):
                if ch.free_slots() <= 0:
                    return
                if not d.start <= i < stop or i in self.block_reqs:
                    continue
                if ch.have.has(i):
                    self.retry.discard(i)
                    self._request_block(ch, i, now)
                elif not ch.have.known(i) and i < ch.remote_length:
                    # The cursor never revisits a retry item: ask about its page here,
                    # or a block whose bit was forgotten would wait forever.
                    self._want_page(ch, i // PAGE_BITS)
            i = d.cursor
            scanned = 0
            advancing = True
            while i < stop and scanned < SCAN_LIMIT and ch.free_slots() > 0:
                scanned += 1
                if self.view.has(i) or i in self.block_reqs:
                    if advancing:
                        d.cursor = i + 1
                    i += 1
                    continue
                if i in self.retry:
                    advancing = False
                    i += 1
                    continue
                if span and i % span == 0:
                    got = self._try_range(ch, i, span, stop, now)
                    if got is None:
                        break  # this peer's range slots are full: wait, no singles
                    if got:
                        i += span
                        if advancing:
                            d.cursor = i
                        continue
                if ch.have.has(i) and i < ch.remote_length:
                    self._request_block(ch, i, now)
                    if advancing:
                        d.cursor = i + 1
                    i += 1
                    continue
                advancing = False
                if not ch.have.known(i) and i < ch.remote_length:
                    page = i // PAGE_BITS
                    self._want_page(ch, page)
                    i = (page + 1) * PAGE_BITS
                    continue
                i += 1

    @staticmethod
    def _want_page(ch: PeerChannel, page: int) -> None:
        """Ask the peer which blocks of `page` it has (once, until we forget them)."""
        if page not in ch.wanted_pages and len(ch.wanted_pages) < 4 * SCAN_LIMIT:
            ch.wanted_pages.add(page)
            ch.have.mark_known(page)
            ch.sink.send(wire.Want(ch.local_id, page * PAGE_BITS, PAGE_BITS))

    @staticmethod
    def _drop_have(ch: PeerChannel, start: int, length: int) -> None:
        """The peer lacks [start, start + length). `RemoteHave` forgets its whole
        prefix past `start` rather than splitting it: those blocks become unknown, so
        their pages may be asked about again (a Want), or nobody would ever ask."""
        before = ch.have.contiguous
        ch.have.drop_range(start, length)
        if ch.have.contiguous < before:
            lo, hi = ch.have.contiguous // PAGE_BITS, (before - 1) // PAGE_BITS
            ch.wanted_pages = {p for p in ch.wanted_pages if not lo <= p <= hi}

    def _try_range(
        self, ch: PeerChannel, first: int, span: int, stop: int, now: float
    ) -> bool | None:
        """Request the aligned subtree [first, first + span) in one RangeRequest if the
        peer has all of it and we have none of it.

        Returns True if requested, False if single-block requests should be used
        instead, None if it would qualify but the peer's range slots are all taken.
        """
        end = first + span
        if end > stop or end > ch.remote_length:
            return False
        for j in range(first, end):
            if not ch.have.has(j) or self.view.has(j) or j in self.block_reqs or j in self.retry:
                return False
        avg = max(1, self.view.byte_length // max(1, self.view.length))
        node = flat_tree.index(span.bit_length() - 1, first // span)
        # The span comes from the log's average block size; where we already store
        # the subtree's node (an uncle of earlier proofs) its real size is known.
        size = self._subtree_bytes(node)
        if size is not None and size > MAX_RANGE_VALUE_BYTES:
            return False  # would not fit in one frame: single-block requests
        est = span * avg if size is None else max(1, size)
        cap = max(2, min(MAX_RANGES_IN_FLIGHT, RANGE_BYTES_IN_FLIGHT // est))
        if ch.ranges_outstanding() >= cap:
            return None
        rid = self.next_id
        self.next_id = self.next_id % wire.MAX_ID + 1
        fork = self.view.fork
        leaves = avg >= RANGE_LEAVES_MIN_BLOCK and bool(
            ch.sink.peer_features & wire.FEATURE_RANGE_LEAVES
        )
        nodes = self.view.missing_tree_nodes(node)
        req = wire.RangeRequest(ch.local_id, rid, fork, node, nodes, leaves)
        timeout = max(REQUEST_TIMEOUT, 8 * ch.srtt)
        ch.inflight[rid] = Inflight(rid, K_RANGE, first, fork, now, now + timeout, req, count=span)
        ch.sink.note_deadline(now + timeout)
        ch.sink.send(req)
        for j in range(first, end):
            self.block_reqs.setdefault(j, []).append((ch, rid))
        return True

    def _request_block(self, ch: PeerChannel, index: int, now: float) -> None:
        rb = wire.RequestBlock(index, self.view.missing_nodes(index))
        rid = self._request(ch, K_BLOCK, index, now, block=rb)
        self.block_reqs.setdefault(index, []).append((ch, rid))

    def _request(
        self,
        ch: PeerChannel,
        kind: str,
        index: int,
        now: float,
        *,
        block: wire.RequestBlock | None = None,
        upgrade: wire.RequestUpgrade | None = None,
    ) -> int:
        rid = self.next_id
        self.next_id = self.next_id % wire.MAX_ID + 1
        fork = ch.remote_fork if kind == K_UPGRADE else self.view.fork
        manifest = upgrade is not None and self.view.needs_manifest()
        req = wire.Request(ch.local_id, rid, fork, block=block, upgrade=upgrade, manifest=manifest)
        timeout = max(REQUEST_TIMEOUT, 8 * ch.srtt)
        ch.inflight[rid] = Inflight(rid, kind, index, fork, now, now + timeout, req)
        ch.sink.note_deadline(now + (HOTSWAP_AFTER if len(self.peers) > 1 else timeout))
        ch.sink.send(req)
        return rid

    def _cancel(self, ch: PeerChannel, rid: int) -> None:
        inf = ch.inflight.pop(rid, None)
        if inf is not None and not ch.closed:
            # The peer may have answered already: that answer is ignored, not an error.
            ch.note_cancelled(inf)
            ch.sink.send(wire.Cancel(ch.local_id, rid))

    def _cancel_request(self, ch: PeerChannel, rid: int) -> None:
        """Cancel a request for a block that is stored or no longer wanted.

        A range covers other blocks too: each of them must leave `block_reqs` (or it
        would look in flight forever, and neither a get nor a download would ask for
        it again); those a download still needs go back to the retry set.
        """
        inf = ch.inflight.get(rid)
        self._cancel(ch, rid)
        if inf is not None:
            self._forget_inflight(ch, inf, failed=True)

    def _forget_inflight(self, ch: PeerChannel, inf: Inflight, *, failed: bool) -> None:
        if inf.kind == K_CONFLICT:
            return
        if inf.kind == K_UPGRADE:
            if self.upgrade_inflight is ch:
                self.upgrade_inflight = None
            return
        for index in range(inf.index, inf.index + inf.count):
            reqs = self.block_reqs.get(index)
            if reqs is not None:
                reqs[:] = [(c, r) for c, r in reqs if not (c is ch and r == inf.id)]
                if not reqs:
                    del self.block_reqs[index]
            if (
                failed
                and not self.view.has(index)
                and index not in self.block_reqs
                and self._needed_by_download(index)
            ):
                self.retry.add(index)

    def _needed_by_download(self, index: int) -> bool:
        return any(d.start <= index and (d.end is None or index < d.end) for d in self.downloads)

    def _fail_unservable(self, only: GetWant | None = None) -> None:
        """Fail `get`s that no connected, synced peer can serve any more (or just `only`)."""
        for g in self.gets.values() if only is None else [only]:
            if g.error is not None or self.view.has(g.index) or g.index in self.block_reqs:
                continue
            if g.attempts >= MAX_ATTEMPTS:
                g.error = BlockNotAvailableError(
                    f"block {g.index}: no valid answer after {g.attempts} attempts"
                )
                self.on_block(g.index)
                continue
            pending = self.pending_opens > 0 or any(not ch.synced for ch in self.peers)
            able = [
                ch
                for ch in self.peers
                if ch.synced
                and ch.suspect is None
                and ch.peer_id not in g.tried
                and (
                    self._needs_upgrade_from(ch)
                    if g.index >= self.view.length
                    else ch.may_have(g.index)
                )
            ]
            if not pending and not able and self.upgrade_inflight is None:
                g.error = BlockNotAvailableError(f"block {g.index}: no connected peer has it")
                self.on_block(g.index)
            else:
                g.error = None
        scope = list(self.gets.values()) if only is None else [only]
        for g in [g for g in scope if g.passive and g.error is not None]:
            g.passive = False
            if g.waiters <= 0 and self.gets.get(g.index) is g:
                del self.gets[g.index]

    def _send_sync(self, ch: PeerChannel) -> None:
        v = self.view
        ch.sink.send(
            wire.Sync(ch.local_id, v.fork, v.length, ch.remote_length, can_upgrade=v.length > 0)
        )

    # ------------------------------------------------------------------ timers

    def on_timer(self, now: float) -> None:
        """Expire requests past their deadline; start hot-swaps that are due."""
        for ch in list(self.peers):
            for inf in list(ch.inflight.values()):
                if inf.deadline <= now:
                    self.stats["timeouts"] += 1
                    ch.window = max(float(MIN_WINDOW), ch.window / 2)
                    self._cancel(ch, inf.id)
                    if inf.kind == K_BLOCK:
                        g = self.gets.get(inf.index)
                        if g is not None:
                            g.tried.add(ch.peer_id)
                    elif inf.kind in (K_CONFLICT, K_RANGE):
                        pass  # ranges are retried block by block; a suspect stays idle
                    else:
                        self._upgrade_failed(ch, inf)
                    self._forget_inflight(ch, inf, failed=True)
                elif inf.sent_at + HOTSWAP_AFTER <= now:
                    inf.swap_checked = True
        self._fail_unservable()
        self.pump(now)
        self.on_change()

    def next_deadline(self) -> float:
        """When `on_timer` next has something to do (math.inf if never)."""
        t = math.inf
        for ch in self.peers:
            for inf in ch.inflight.values():
                t = min(t, inf.deadline)
                if (
                    inf.kind == K_BLOCK
                    and not inf.swap_checked
                    and inf.index in self.gets
                    and len(self.block_reqs.get(inf.index, ())) < 2
                    and len(self.peers) > 1
                ):
                    t = min(t, inf.sent_at + HOTSWAP_AFTER)
        return t


def _blocks_of(inf: Inflight) -> range:
    """The blocks an answer to `inf` may store."""
    if inf.kind in (K_BLOCK, K_RANGE):
        return range(inf.index, inf.index + inf.count)
    return range(0)


def range_leaves_match(msg: wire.RangeData, first: int, *, asked: bool) -> bool:
    """Whether `msg.leaves` were asked for and are the leaf indices and sizes of its
    values (their hashes are checked by verification, like any uncle)."""
    if not asked or len(msg.leaves) != len(msg.values):
        return False
    index = 2 * first
    for leaf, value in zip(msg.leaves, msg.values, strict=True):
        if leaf.index != index or leaf.size != len(value):
            return False
        index += 2
    return True


def range_proofs(channel: int, msg: wire.RangeData, first: int) -> list[wire.Data]:
    """Turn a RangeData into ordinary proofs the log verifies one by one.

    First the hash proof of the subtree root `msg.node` (verified against what we
    trust, it makes the root trusted), then one block proof per value whose uncles are
    recomputed here from the other values (or from `msg.leaves`, which the scheduler
    checked for shape). A wrong value or leaf changes the recomputed root, so its proof
    (and every proof of the range) fails verification: nothing is trusted because it
    came in a range.
    """
    depth = flat_tree.depth(msg.node)
    level: list[wire.Node] = []
    nodes: dict[int, wire.Node] = {}
    for k, v in enumerate(msg.values):
        n = msg.leaves[k] if msg.leaves else wire.Node(2 * (first + k), len(v), leaf_hash(v))
        level.append(n)
        nodes[n.index] = n
    for _ in range(depth):
        up = []
        for a, b in zip(level[0::2], level[1::2], strict=True):
            size = a.size + b.size
            p = wire.Node(flat_tree.parent(a.index), size, parent_hash(a.hash, b.hash, size))
            up.append(p)
            nodes[p.index] = p
        level = up
    out = [wire.Data(channel, msg.id, msg.fork, hash=wire.DataHash(msg.node, msg.proof))]
    for k, v in enumerate(msg.values):
        idx = 2 * (first + k)
        uncles = []
        for _ in range(depth):
            uncles.append(nodes[flat_tree.sibling(idx)])
            idx = flat_tree.parent(idx)
        block = wire.DataBlock(first + k, v, tuple(uncles))
        out.append(wire.Data(channel, msg.id, msg.fork, block=block))
    return out
