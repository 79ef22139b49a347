"""The replication scheduler's plain state: channels, requests, wants and work items.

Data, plus the few queries that read nothing else (a channel's free window, whether
its peer may have a block). `LogReplicator` (scheduler.py) owns all of it and is the
only one to change it; the session engine creates `PeerChannel`s and implements
`ChannelSink`, and the driver runs the `Work` items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from hyperlog import wire
from hyperlog.errors import HyperlogError, ReplicationError
from hyperlog.replication.constants import (
    INITIAL_WINDOW,
    MAX_CANCELLED_IDS,
    RANGE_BYTES,
    RANGE_INITIAL_BYTES,
    RANGE_SECONDS,
)
from hyperlog.replication.have import RemoteHave

if TYPE_CHECKING:
    from hyperlog.replication.scheduler import LogReplicator

K_BLOCK = "block"
K_UPGRADE = "upgrade"
K_CONFLICT = "conflict"  # an upgrade from 0, to check a suspected equivocation (or
# the peer's conflict proof, sent unasked: its inflight id is CONFLICT_PROOF_ID)
K_RANGE = "range"  # a RangeRequest: every block of an aligned subtree


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

    def drop(self, error: ReplicationError) -> None:
        """Drop this peer's session for `error` (a timer found it wanting: it left a
        check of its tree unanswered). Never raises: it is called from timers."""
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
        # Open on both sides but no Sync within OPEN_TIMEOUT (the session's timer
        # says): `update` and `wait_for_peers` stop waiting for it.
        self.sync_overdue = False
        # It refused a block request on our fork as another fork's (NoData(FORK))
        # while its Sync said it was on our fork (a frozen log, or a Sync in flight):
        # no block requests to it until a Sync of its shows our fork again.
        self.fork_refused = False
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
        # Why we asked its whole signed tree (a bad proof, or a Sync naming another
        # tree than ours): no requests to it until the check says conflict or not.
        self.suspect: HyperlogError | None = None
        # It sent us its conflict proof unasked (`wire.CONFLICT_PROOF_ID`): once.
        self.sent_conflict_proof = False
        self.owner: LogReplicator | None = None  # set by the session that opened it
        self.blocks_in = 0
        self.bytes_in = 0
        # Bytes its next RangeRequests aim at (`note_range`), and when its last range
        # arrived (the wire was busy with that one until then).
        self.range_target = RANGE_INITIAL_BYTES
        self.last_range_at = -math.inf
        # The fastest answer to a block or upgrade request: the round trip, which a
        # range's first byte needs before its transfer can even start.
        self.min_rtt = math.inf

    def free_slots(self) -> int:
        # Answers received but not yet verified still count: reading runs ahead of
        # storing, and this keeps what we hold per peer bounded by the window.
        return int(self.window) - len(self.inflight) - len(self.verifying)

    def awaiting_sync(self) -> bool:
        """Whether its first Sync may still come (it is neither synced nor overdue)."""
        return not self.synced and not self.sync_overdue

    def serving(self) -> bool:
        """Whether it counts as a peer for `wait_for_peers`: synced, and no check of
        its tree pending (the check ends in a fork conflict or with it dropped, unless
        a fork change overtook it)."""
        return self.synced and self.suspect is None and not self.closed

    def checking_conflict(self) -> bool:
        """Whether a check of its whole signed tree is asked or being verified."""
        return self.verifying_conflict() or any(
            x.kind == K_CONFLICT for x in self.inflight.values()
        )

    def verifying_conflict(self) -> bool:
        """Whether its whole signed tree (an answer or its conflict proof) arrived and
        waits for the driver's check."""
        return any(x.kind == K_CONFLICT for x in self.verifying.values())

    def ranges_outstanding(self) -> int:
        return sum(1 for x in self.inflight.values() if x.kind == K_RANGE) + sum(
            1 for x in self.verifying.values() if x.kind == K_RANGE
        )

    def note_range(self, inf: Inflight, size: int, now: float) -> None:
        """A range of `size` value bytes, asked for by `inf`, arrived at `now`: size the
        next ones by how long it took on the wire, from when the wire was free for it
        (the previous range's arrival, or a round trip after the request if later: a
        long round trip is not a slow link).

        At that pace the peer carries `capacity` bytes in `RANGE_SECONDS`. Twice the
        current target (or the range, if bigger: spans have a floor) or more: the target
        doubles from there (up to `RANGE_BYTES`; only doubles, as ranges read together
        arrive at once and would look infinitely fast); less than the target: it
        shrinks to that. A fast link reaches RANGE_BYTES after a few answers; on a slow
        one each range takes about a second or less, so an interrupted download keeps
        all but that (a 4 MiB range took 4 s at 8 Mbit/s and was lost whole).
        """
        rtt = self.min_rtt if self.min_rtt < math.inf else 0.0
        took = max(0.0, now - max(inf.sent_at + rtt, self.last_range_at))
        self.last_range_at = now
        capacity = size * RANGE_SECONDS / took if took > 0 else math.inf
        base = max(self.range_target, size)
        if capacity >= 2 * base:
            self.range_target = min(RANGE_BYTES, 2 * base)
        elif capacity < self.range_target:
            self.range_target = max(1, int(capacity))

    def note_range_timeout(self) -> None:
        """A range went unanswered for its whole timeout: halve the next ones."""
        self.range_target = max(1, self.range_target // 2)

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
    wanted_at: float = 0.0  # when `Log.get` asked (passive): a parked want expires
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


def blocks_of(inf: Inflight) -> range:
    """The blocks an answer to `inf` may store."""
    if inf.kind in (K_BLOCK, K_RANGE):
        return range(inf.index, inf.index + inf.count)
    return range(0)
