"""Answers to our requests, and what storing a block changes (no trio).

Data and RangeData are checked against the request they answer (a mismatch is a
protocol error, before any verification) and queued as `VerifyWork` or
`RangeVerifyWork`; the driver's verdict comes back through `on_applied` or
`on_range_applied`. A NoData, or an answer to a request we had cancelled (a late
answer), updates what we believe about the peer. A stored block completes its get
and counts in downloads, once however many answers for it were queued
(`queued_blocks`, `stored_early`); an upgrade or truncation re-aims the downloads;
a proven fork conflict freezes the log.
"""

from __future__ import annotations

import math

from hyperlog import wire
from hyperlog.errors import (
    BlockNotAvailableError,
    ForkConflictError,
    HyperlogError,
    InvalidProofError,
    InvalidSignatureError,
    RemoteProtocolError,
)
from hyperlog.replication.constants import MAX_ATTEMPTS, MAX_WINDOW
from hyperlog.replication.port import Applied
from hyperlog.replication.ranges import range_leaves_match
from hyperlog.replication.scheduler_base import ReplicatorBase
from hyperlog.replication.scheduler_state import (
    K_BLOCK,
    K_CONFLICT,
    K_RANGE,
    K_UPGRADE,
    Inflight,
    PeerChannel,
    RangeVerifyWork,
    VerifyWork,
    Work,
    blocks_of,
)


class AnswersMixin(ReplicatorBase):
    """`LogReplicator`'s handling of answers (see the module docstring)."""

    def _on_data(self, ch: PeerChannel, msg: wire.Data, now: float) -> None:
        if msg.id == wire.CONFLICT_PROOF_ID:
            self._on_conflict_proof(ch, msg, now)
            return
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
        ch.min_rtt = min(ch.min_rtt, now - inf.sent_at)  # small answers: the round trip
        self._queue_verify(ch, inf, VerifyWork(ch, inf, msg))

    def _on_conflict_proof(self, ch: PeerChannel, msg: wire.Data, now: float) -> None:
        """The peer found a fork conflict with us and sent its whole signed tree up to
        a length we both hold (`wire.CONFLICT_PROOF_ID`), as hypercore does, before
        dropping us: the driver checks it as it checks the answer to our own
        `_check_tree`, so this side learns of the conflict too, even when the peer
        found it first and closes the stream before answering our own check.

        One per channel; a proof about a head we left (another fork, a length we no
        longer hold) is ignored, as is one that reaches a frozen log.

        Raises:
            RemoteProtocolError: the peer did not announce FEATURE_FORK_CHECK, sent
                more than one, or sent something else than an upgrade from 0.
        """
        if not ch.sink.peer_features & wire.FEATURE_FORK_CHECK:
            raise RemoteProtocolError(f"data for request {msg.id}, which we never sent")
        up = msg.upgrade
        if up is None or up.start != 0 or (msg.block, msg.hash, msg.seek) != (None, None, None):
            raise RemoteProtocolError("a conflict proof is a whole signed tree (upgrade from 0)")
        if ch.sent_conflict_proof:
            raise RemoteProtocolError("a second conflict proof")
        ch.sent_conflict_proof = True
        if self.frozen is not None or msg.fork != self.view.fork or up.length > self.view.length:
            self.on_change()  # (a session waiting to drop this peer: it knows now)
            return
        req = wire.Request(ch.local_id, msg.id, msg.fork, upgrade=wire.RequestUpgrade(0, up.length))
        inf = Inflight(msg.id, K_CONFLICT, up.length, msg.fork, now, math.inf, req)
        self._queue_verify(ch, inf, VerifyWork(ch, inf, msg))

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
        ch.note_range(inf, sum(map(len, msg.values)), now)  # sizes the next ranges
        self._queue_verify(ch, inf, RangeVerifyWork(ch, inf, msg))

    def _queue_verify(
        self, ch: PeerChannel, inf: Inflight, work: VerifyWork | RangeVerifyWork
    ) -> None:
        """Hand an answer to the driver for verification and storage."""
        ch.verifying[inf.id] = inf
        for index in blocks_of(inf):
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
        for index in blocks_of(inf):
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
            if self._stale(work):
                self.pump(now)
                self.on_change()
                return None
            if (
                isinstance(result, InvalidProofError)
                and self.frozen is None
                and work.data.fork == self.view.fork == ch.remote_fork
            ):
                if ch.suspect is not None:
                    # Its tree is being checked already (a Sync named another tree
                    # hash, or an earlier proof failed): the check decides.
                    self.pump(now)
                    return None
                at = min(ch.remote_length, self.view.length)
                if at > 0 and (
                    inf.kind == K_UPGRADE or not isinstance(result, InvalidSignatureError)
                ):
                    # The peer's proof does not fit our tree on our own fork: a bad
                    # proof, or another signed history (an upgrade from a longer peer
                    # that does not extend ours: a writer restored from an older copy
                    # and appended to). Ask for its whole tree up to a length both
                    # hold; it was dropped as "invalid proof" before.
                    self._check_tree(ch, at, result, now)
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
        return errors[0] if errors and not self._stale(work) else None

    def _stale(self, work: VerifyWork | RangeVerifyWork) -> bool:
        """Whether `work` answers a request made on a fork we have since left.

        Its fork is the one we asked on (`_on_data` checks), so an honest peer's
        correct answer fails verification once a truncation moved us on while it was
        on the wire or queued: that is stale, not misbehaviour (the request is only
        forgotten, and asked again on our fork). Honest peers used to be dropped for
        it ("invalid proof") after every fork change.
        """
        return work.data.fork < self.view.fork

    def abandon(self, work: Work, now: float) -> None:
        """A verification the driver will never run (its session ended): requeue."""
        if isinstance(work, VerifyWork | RangeVerifyWork):
            self._unqueue(work.channel, work.inflight, [])
            self._forget_inflight(work.channel, work.inflight, failed=True)

    def on_conflict_checked(
        self, work: VerifyWork, conflict: HyperlogError | None, now: float
    ) -> HyperlogError | None:
        """The driver checked a peer's whole signed tree (`LogPort.check_conflict`):
        the answer to our `_check_tree`, or its conflict proof sent unasked.

        Returns:
            the error to drop the peer with: the conflict (the log is then frozen),
            the tree's own failure, or (our check found the same history) the
            reason we suspected it; None to keep it: its unasked proof shows no
            conflict, or our check was overtaken by a change of our fork.
        """
        ch = work.channel
        self._unqueue(ch, work.inflight, [])
        if isinstance(conflict, ForkConflictError):
            self.freeze(conflict)
            return conflict
        unasked = work.inflight.id == wire.CONFLICT_PROOF_ID
        if conflict is None and (unasked or work.data.fork != self.view.fork):
            if not unasked:
                ch.suspect = None  # asked about a fork we left: nothing to say
                self.pump(now)
                self.on_change()
            return None
        if unasked:
            return conflict
        return ch.suspect or conflict or RemoteProtocolError("conflict check")

    def _on_no_data(self, ch: PeerChannel, msg: wire.NoData, now: float) -> None:
        inf = ch.inflight.pop(msg.id, None)
        if inf is None:
            ch.take_cancelled(msg.id)
            return  # an answer to a request we cancelled (or unknown): harmless
        if inf.kind == K_CONFLICT:
            if msg.reason == wire.NO_DATA_FORK and inf.fork != ch.remote_fork:
                # It moved to a newer fork (its Sync came first): that fork's upgrade
                # from 0 is verified against the log's key anyway. Not a refusal.
                ch.suspect = None
                self.pump(now)
                self.on_change()
                return
            raise RemoteProtocolError(f"refused to prove its tree: {ch.suspect}")
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
            # Only forget the request; it is asked again on the new fork. Refused
            # although both were on our fork (a frozen log, or the peer moved and
            # its Sync is on the way): ask it for no block until its next Sync
            # shows our fork, or the same block was asked again at once, forever.
            if (
                msg.reason == wire.NO_DATA_FORK
                and inf.kind in (K_BLOCK, K_RANGE)
                and inf.fork == self.view.fork == ch.remote_fork
            ):
                ch.fork_refused = True
        else:
            self._drop_have(ch, inf.index, 1)
            g = self.gets.get(inf.index)
            if g is not None:
                g.tried.add(ch.peer_id)
        self._forget_inflight(ch, inf, failed=True)
        if inf.kind in (K_BLOCK, K_RANGE):
            # Only the gets of the refused blocks can have lost a peer (forgetting a
            # peer's bits makes them unknown, so may-have): one check each, not one
            # per get (1,024 parked gets refused by a joining peer cost 10^6).
            for index in blocks_of(inf):
                if (g := self.gets.get(index)) is not None:
                    self._fail_unservable(g)
        else:
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

    # ------------------------------------------------------------------ completion

    def _on_stored(self, index: int, size: int, source: PeerChannel | None) -> None:
        self.stats["blocks"] += 1
        self.stats["bytes"] += size
        self.retry.discard(index)
        if self.parked.pop(index, None) is not None:
            self.parked_ahead.discard(index)
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
                ch.fork_refused = False  # refused on the fork we left
            self._reopen_gets()
            for d in self.downloads:
                d.cursor = min(d.cursor, max(d.start, truncated_to))
                stop = self.view.length if d.end is None else d.end
                d.missing = self._missing_in(d.start, stop)
                d.counted_to = max(d.start, stop)
                d.done = d.end is not None and d.missing == 0
        self._count_live()
        if self.parked_ahead:
            self._unpark_covered(now)
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
