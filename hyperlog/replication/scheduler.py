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

Layout: this module holds `LogReplicator` itself (peers, local wants, dispatch of a
peer's messages) and re-exports the names below. Its fields are set up in
`scheduler_base.py`; the rest is one mixin per side: `scheduler_serve.py` answers
what peers ask of us, `scheduler_answers.py` takes in the answers to what we asked
(and what a stored block completes), `scheduler_fetch.py` decides what to ask of
whom and expires requests. The plain state types are in `scheduler_state.py`, the
RangeData helpers in `ranges.py`.
"""

from __future__ import annotations

import logging

from hyperlog import wire
from hyperlog.errors import BlockNotAvailableError, RemoteProtocolError
from hyperlog.replication.constants import MAX_ATTEMPTS, MAX_NO_PEER_REASONS
from hyperlog.replication.ranges import (
    MAX_RANGE_VALUE_BYTES,
    range_leaves_match,
    range_proofs,
)
from hyperlog.replication.scheduler_answers import AnswersMixin
from hyperlog.replication.scheduler_fetch import FetchMixin
from hyperlog.replication.scheduler_serve import ServeMixin
from hyperlog.replication.scheduler_state import (
    K_BLOCK,
    K_CONFLICT,
    K_RANGE,
    K_UPGRADE,
    ChannelSink,
    DownloadWant,
    GetWant,
    Inflight,
    PeerChannel,
    RangeVerifyWork,
    ServeWork,
    VerifyWork,
    Work,
)

__all__ = [
    "K_BLOCK",
    "K_CONFLICT",
    "K_RANGE",
    "K_UPGRADE",
    "MAX_RANGE_VALUE_BYTES",
    "ChannelSink",
    "DownloadWant",
    "GetWant",
    "Inflight",
    "LogReplicator",
    "PeerChannel",
    "RangeVerifyWork",
    "ServeWork",
    "VerifyWork",
    "Work",
    "check_index",
    "range_leaves_match",
    "range_proofs",
]

logger = logging.getLogger(__name__)


def check_index(value: object, what: str) -> None:
    """Refuse what is not a block index (the public API calls this before any work).

    Raises:
        TypeError: `value` is not an int (a bool is not an index either).
        ValueError: `value` is negative (the flat-tree walks of a negative index
            never end: `get(-1)` used to hang the process at 100% CPU).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{what} must not be negative, got {value}")


class LogReplicator(ServeMixin, AnswersMixin, FetchMixin):
    """The sans-IO replication state of one log across all its peers.

    Its fields are set up in `ReplicatorBase.__init__` (same arguments).
    """

    # ------------------------------------------------------------------ peers

    def add_peer(self, ch: PeerChannel, now: float) -> None:
        """A channel opened on both sides: announce ourselves and start working."""
        self.refusals.pop(ch.peer_id, None)  # (its session refused it before: no more)
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

    # ------------------------------------------------------------------ sessions

    def offered(self) -> None:
        """A session offers the log (its channel is being opened): how earlier
        sessions ended no longer says whether a peer may come."""
        self.ended.clear()

    def no_peer(self, session: int, reason: str) -> None:
        """Session `session` (its peer id) will bring no peer for this log while it
        runs: the peer refused the log, left the open unanswered or closed the
        channel. Say it until the session ends (`session_ended`)."""
        self.refusals[session] = reason

    def session_ended(self, session: int, reason: str | None) -> None:
        """Session `session` ended; `reason` if it had offered the log and got no
        peer for it, or lost the one it had (its refusal, if any, says it better)."""
        why = self.refusals.pop(session, reason)
        if why is not None:
            self.ended.append(why)
            del self.ended[:-MAX_NO_PEER_REASONS]

    def sync_overdue(self, ch: PeerChannel, reason: str, now: float) -> None:
        """`ch` opened on both sides, but its peer sent no Sync within `OPEN_TIMEOUT`
        (the session's timer): `update` and `wait_for_peers` stop waiting for it, as
        for an open left unanswered, and `reason` says why its session brought no
        peer. Its first Sync, if it comes, makes it a peer again."""
        ch.sync_overdue = True
        self.no_peer(ch.peer_id, reason)
        self.refresh(now)

    def serving_peers(self) -> int:
        """Peers that count for `wait_for_peers`: synced, no check of their tree
        pending (`PeerChannel.serving`)."""
        return sum(1 for ch in self.peers if ch.serving())

    def peers_unavailable(self, n: int) -> tuple[str, ...] | None:
        """Why fewer than `n` peers can serve this log with the sessions there are,
        or None while one may still come.

        One may come while a session is opening the log's channel (the peer has
        neither opened nor refused it yet, or the Hello is not through), while a
        channel is open but not synced (for up to `OPEN_TIMEOUT`), while a peer's
        tree is being checked (the check passes, finds a fork conflict, or drops
        it), and while no session has said anything else (none has offered the
        log yet: one may be starting). A session still running says what it got
        until it ends; one that ended, until another session offers the log.
        """
        if self.serving_peers() >= n:
            return None
        if self.pending_opens > 0 or any(
            ch.awaiting_sync() or ch.suspect is not None for ch in self.peers
        ):
            return None
        reasons = (*self.refusals.values(), *self.ended)
        return reasons or None

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

        Raises:
            TypeError, ValueError: `index` is not a block index (`check_index`).
        """
        check_index(index, "a block index")
        g = self.gets.get(index)
        if g is None:
            g = self.gets[index] = GetWant(index)
        if passive:
            g.passive = True
            g.wanted_at = now
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
        """Fetch blocks [start, end) (a `download`; `end=None` follows the log live).

        Raises:
            TypeError, ValueError: `start` or `end` is not a block index, or
                `end < start`.
        """
        check_index(start, "the start of a range")
        if end is not None:
            check_index(end, "the end of a range")
            if end < start:
                raise ValueError(f"range end {end} is before its start {start}")
        d = DownloadWant(start, end, start)
        stop = self.view.length if end is None else end
        d.missing = self._missing_in(start, stop)
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
                d.missing += self._missing_in(lo, length)
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
                self._announced(ch, msg.start, msg.start + 8 * len(msg.bits), now)
                self.pump(now)
            case wire.Range():
                if msg.drop:
                    self._drop_have(ch, msg.start, msg.length)
                else:
                    ch.have.add_range(msg.start, msg.length)
                    self._announced(ch, msg.start, msg.start + msg.length, now)
                self.pump(now)
            case wire.RangeRequest():
                self._on_range_request(ch, msg)
            case wire.RangeData():
                self._on_range_data(ch, msg, now)
            case wire.Close():
                pass  # handled by the session

    def _compare_tree(self, ch: PeerChannel, msg: wire.Sync, first: bool, now: float) -> None:
        """Compare the tree hash a Sync on our fork names with ours at its length.

        Another hash means another signed history of this fork (a writer restored
        from an older copy and appended to, one key writing in two places), or a
        peer lying about its tree: ask for its whole signed tree (`_check_tree`).
        Equal lengths cost one comparison (the log caches its tree hash) and are
        compared on every Sync; a shorter peer's only on its first Sync (our hash at
        its length costs a storage read per root, and a peer found to share our
        history at connect time cannot leave it without a new fork). Nothing is
        compared with a longer peer: its upgrade proof will not verify, which
        `on_applied` checks the same way.
        """
        theirs = msg.tree_hash
        if (
            theirs is None
            or self.trees is None
            or self.frozen is not None
            or ch.suspect is not None
            or not 0 < msg.length <= self.view.length
            or not (first or msg.length == self.view.length)
        ):
            return
        ours = self.trees.tree_hash_at(msg.length)
        if ours is not None and ours != theirs:
            why = RemoteProtocolError(
                f"sync: the tree hash the peer named for fork {msg.fork}, length "
                f"{msg.length} is not its signed tree's"
            )
            self._check_tree(ch, msg.length, why, now)

    def _announced(self, ch: PeerChannel, start: int, end: int, now: float) -> None:
        """The peer says it now has blocks of [start, end): a get that tried it before
        (a NoData, a timeout) may ask it again, and one failed for want of a peer no
        longer fails. Gets never re-asked a peer that got the block later (a chain
        writer -> B -> C: C's get, refused once by B, waited out its timeout). A parked
        `Log.get` want it covers becomes a want again, asked of this peer: only
        `self.gets` used to be looked at, and such a `Log.get` waited out its timeout.

        Costs min(end - start, number of gets) (and of parked wants): a download
        elsewhere announces every block it stores to every peer.
        """
        if self.parked:
            if end - start <= len(self.parked):
                covered = [i for i in range(start, end) if i in self.parked]
            else:
                covered = [i for i in self.parked if start <= i < end]
            others = {c.peer_id for c in self.peers if c is not ch}
            for i in covered:
                if ch.have.has(i):
                    self.parked_ahead.discard(i)
                    self._revive(i, self.parked.pop(i), others, now)
        if not self.gets:
            return
        if end - start <= len(self.gets):
            found = [g for i in range(start, end) if (g := self.gets.get(i)) is not None]
        else:
            found = [g for g in self.gets.values() if start <= g.index < end]
        for g in found:
            if ch.peer_id in g.tried and ch.have.has(g.index):
                g.tried.discard(ch.peer_id)
                if isinstance(g.error, BlockNotAvailableError) and g.attempts < MAX_ATTEMPTS:
                    g.error = None

    def _on_sync(self, ch: PeerChannel, msg: wire.Sync, now: float) -> None:
        first = not ch.synced
        was_able = not first and self._blocks_from(ch)
        if not first and msg.fork < ch.remote_fork:
            # Forks only increase (hypercore's too): an older one again is a lie,
            # and on our fork it could start a check of its tree every round.
            raise RemoteProtocolError(
                f"sync: fork went backwards (from {ch.remote_fork} to {msg.fork})"
            )
        if msg.fork == ch.remote_fork and msg.length < ch.remote_length and not first:
            raise RemoteProtocolError("sync: length went backwards without a fork")
        if first and ch.sync_overdue:
            ch.sync_overdue = False  # late, but here: a peer after all
            self.refusals.pop(ch.peer_id, None)
        if (msg.fork, msg.length) != (ch.remote_fork, ch.remote_length):
            ch.upgrade_failed_at = None
        ch.remote_fork, ch.remote_length = msg.fork, msg.length
        ch.remote_can_upgrade = msg.can_upgrade
        ch.synced = True
        if msg.fork == self.view.fork:
            ch.fork_refused = False
            self._compare_tree(ch, msg, first, now)
        if self.parked and (first or (not was_able and self._blocks_from(ch))):
            # A new peer, or one that can serve our fork again: parked wants ask it.
            self._unpark(ch, now)
        if self.gets:
            self._fail_unservable()
        if msg.remote_length != self.view.length:
            # The peer has a stale view of us: tell it (never loops: our reply carries
            # its length, so its answer matches and stops here).
            self._send_sync(ch)
        self.pump(now)
        self.on_change()
