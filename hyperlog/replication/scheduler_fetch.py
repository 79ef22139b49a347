"""The fetching side of `LogReplicator`: which request goes to which peer, and when.

`pump` fills the free window of every synced peer (not a suspect): first an upgrade
(at most one per log), then gets (asked again of a second peer when the first is
slow: hot-swap), then downloads (the retry set, then from each download's cursor:
one RangeRequest where the peer has a whole aligned subtree we lack, else single
blocks, and a Want for pages whose have-bits we do not know). A range's size adapts
to each peer (`peer_span`, `PeerChannel.note_range`): it starts small and grows while
answers arrive quickly, so one takes about a second or less on the wire. `on_timer` expires
requests (a check of a suspect's tree that expires drops the suspect, `ChannelSink.drop`:
it did not prove its tree when asked); a cancelled or failed request is forgotten for
every block it covers (those a download still needs go to the retry set), and gets
that no peer can serve any more fail. A failed passive want (a `Log.get`, which waits
on its own timeout) is parked instead of forgotten and asked for again when a peer
syncs.
"""

from __future__ import annotations

import math

from hyperlog import flat_tree, wire
from hyperlog.errors import BlockNotAvailableError, HyperlogError, ReplicationError
from hyperlog.replication.constants import (
    DEFAULT_GET_TIMEOUT,
    HOTSWAP_AFTER,
    MAX_ATTEMPTS,
    MAX_PARKED_WANTS,
    MAX_RANGES_IN_FLIGHT,
    MIN_WINDOW,
    PAGE_BITS,
    RANGE_BYTES,
    RANGE_BYTES_IN_FLIGHT,
    RANGE_FLIGHT_RANGES,
    RANGE_LEAVES_MIN_BLOCK,
    RANGE_MIN_BLOCKS,
    RANGE_SECONDS,
    REQUEST_TIMEOUT,
    SCAN_LIMIT,
)
from hyperlog.replication.port import WaitingView
from hyperlog.replication.ranges import MAX_RANGE_VALUE_BYTES, subtree_bytes
from hyperlog.replication.scheduler_base import ReplicatorBase
from hyperlog.replication.scheduler_state import (
    K_BLOCK,
    K_CONFLICT,
    K_RANGE,
    K_UPGRADE,
    GetWant,
    Inflight,
    PeerChannel,
)


class FetchMixin(ReplicatorBase):
    """`LogReplicator`'s fetching side (see the module docstring)."""

    def pump(self, now: float) -> None:
        """Fill every peer's free window with the most useful requests."""
        if self.frozen is not None:
            return
        for ch in sorted(self.peers, key=lambda c: -c.free_slots()):
            if ch.closed or not ch.synced or ch.suspect is not None:
                continue
            self._maybe_upgrade(ch, now)
            if self._blocks_from(ch):
                self._fill_gets(ch, now)
                self._fill_downloads(ch, now)

    def _blocks_from(self, ch: PeerChannel) -> bool:
        """Whether `ch`'s peer can serve blocks of our fork: it says it is on our fork
        and did not refuse one as another fork's since (`fork_refused`). Any other
        peer refuses every block request with NoData(FORK), and each refusal used to
        be asked again at once, forever (a frozen peer, a peer on an older fork)."""
        return ch.remote_fork == self.view.fork and not ch.fork_refused

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
        """Every open channel synced (or given up on: no Sync within
        `OPEN_TIMEOUT`), no upgrade and no conflict check pending (or the log frozen:
        nothing more will come): `update()` may return.

        Each of those ends on its own: an upgrade or a check times out (a check that
        times out drops its peer, `_check_unanswered`), and the session's timer
        gives up on an open or a Sync that does not come."""
        if self.frozen is not None:
            return True
        if self.pending_opens > 0:
            return False
        return (
            all(not ch.awaiting_sync() and not ch.checking_conflict() for ch in self.peers)
            and not self.upgrading()
        )

    def _check_tree(self, ch: PeerChannel, at: int, why: HyperlogError, now: float) -> None:
        """Ask `ch`'s peer for its whole signed tree up to `at` (an upgrade from 0;
        `at` is at most our length and its), suspecting another signed history of
        our fork for reason `why`.

        The peer gets no other request until the driver's check (`LogPort.
        check_conflict`) says: a conflict freezes the log; the same history drops the
        peer for `why` (its proof or Sync was wrong). The answer proves the peer's
        roots at `at` under its signature whatever its length, so one request does,
        however the two lengths compare.
        """
        ch.suspect = why
        self._request(ch, K_CONFLICT, at, now, upgrade=wire.RequestUpgrade(0, at))

    def _fill_gets(self, ch: PeerChannel, now: float) -> None:
        if not self.gets:
            return
        multi = len(self.peers) > 1
        free = ch.free_slots()
        for g in list(self.gets.values()):
            if free <= 0:
                return
            if ch.peer_id in g.tried or g.attempts >= MAX_ATTEMPTS:
                continue  # first: cheap, and most gets a joining peer revived skip here
            i = g.index
            reqs = self.block_reqs.get(i)
            if reqs and (not multi or len(reqs) >= 2):
                continue  # in flight, and no hot-swap possible (cheap check first)
            if i >= self.view.length or self.view.has(i):
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
            free -= 1

    def _fill_downloads(self, ch: PeerChannel, now: float) -> None:
        span = self.peer_span(ch) if self.downloads else 0
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
                if span:
                    got = self._try_ranges(ch, i, span, stop, now)
                    if got is None:
                        break  # this peer's range slots are full: wait, no singles
                    if got:
                        i += got
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

    def range_span(self) -> int:
        """Largest blocks per RangeRequest for this log (0: use single-block requests).

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

    def peer_span(self, ch: PeerChannel) -> int:
        """Blocks per RangeRequest to `ch`'s peer (0: use single-block requests):
        `range_span`, halved while over the peer's adaptive `range_target` (what it
        carries in about `RANGE_SECONDS`), never below `RANGE_MIN_BLOCKS`."""
        span = self.range_span()
        avg = max(1, self.view.byte_length // max(1, self.view.length))
        # Bounded: each pass halves `span`, at most log2(MAX_RANGE_BLOCKS) passes.
        while span > RANGE_MIN_BLOCKS and span * avg > ch.range_target:
            span //= 2
        return span

    def _try_ranges(
        self, ch: PeerChannel, first: int, span: int, stop: int, now: float
    ) -> int | None:
        """Request the aligned subtree of `span` blocks at `first` (`_try_range`), or,
        where `first` is not a multiple of `span`, the largest aligned subtree from
        `first` (at least `RANGE_MIN_BLOCKS`).

        A peer's span grows as its ranges arrive quickly, and the cursor is then a
        multiple of the old span only: a smaller range takes it to the next multiple of
        the new one (single-block requests used to). Where less than a span of the log
        is left, single-block requests fetch the tail, as before.

        Returns:
            the blocks requested; 0 if single-block requests should be used; None if
            the peer's range slots are all taken.
        """
        size = span
        if first % span:
            if first + span > stop:
                return 0
            size = first & -first  # the largest power of two dividing `first` (< span)
            if size < RANGE_MIN_BLOCKS:
                return 0
        got = self._try_range(ch, first, size, stop, now)
        return None if got is None else size if got else 0

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
        size = subtree_bytes(self.view, node)
        if size is not None and size > MAX_RANGE_VALUE_BYTES:
            return False  # would not fit in one frame: single-block requests
        est = span * avg if size is None else max(1, size)
        # A few of this peer's current ranges, so that a slow link has only a few
        # seconds of answers queued (each ~RANGE_SECONDS), a fast one 16 MiB; plus what
        # the link carries in a round trip, so a long one does not idle it.
        rtt = ch.min_rtt if ch.min_rtt < math.inf else 0.0
        ranges = RANGE_FLIGHT_RANGES + rtt / RANGE_SECONDS
        flight = min(RANGE_BYTES_IN_FLIGHT, int(ranges * ch.range_target))
        cap = max(2, min(MAX_RANGES_IN_FLIGHT, flight // est))
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
            pending = self.pending_opens > 0 or any(ch.awaiting_sync() for ch in self.peers)
            able = [
                ch
                for ch in self.peers
                if ch.synced
                and ch.suspect is None
                and ch.peer_id not in g.tried
                and (
                    self._needs_upgrade_from(ch)
                    if g.index >= self.view.length
                    else self._blocks_from(ch) and ch.may_have(g.index)
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
            # `Log.get` keeps waiting (its own timeout) but never asks again: park the
            # index, and ask when a peer syncs (a `Log.get` waiting for a peer that
            # connects later used to wait out its whole timeout).
            self.parked.pop(g.index, None)
            self.parked[g.index] = g.wanted_at
            if g.index >= self.view.length:
                self.parked_ahead.add(g.index)  # asked again when our length covers it
            if len(self.parked) > MAX_PARKED_WANTS:
                oldest = next(iter(self.parked))
                del self.parked[oldest]
                self.parked_ahead.discard(oldest)

    def _still_wanted(self, index: int, since: float, now: float) -> bool:
        """Whether the `Log.get` that parked `index` (at `since`) still waits.

        `Log.get` never tells us when it gives up (its timeout, a cancel): ask the
        log (`WaitingView`), or, for views that cannot say, give up after
        `DEFAULT_GET_TIMEOUT`. Parked wants used to outlive their `Log.get` and be
        asked of every peer again on every peer's first sync.
        """
        if isinstance(self.view, WaitingView):
            return self.view.waiting(index)
        return now - since < DEFAULT_GET_TIMEOUT

    def _unpark(self, ch: PeerChannel, now: float) -> None:
        """`ch`'s peer synced for the first time: parked passive wants whose `Log.get`
        still waits become wants again, asked of that peer only (every other peer was
        asked when they were parked, or synced since and was asked then). The others
        are forgotten."""
        parked, self.parked = self.parked, {}
        self.parked_ahead.clear()
        others = {c.peer_id for c in self.peers if c is not ch}
        for index, since in parked.items():
            self._revive(index, since, others, now)

    def _unpark_covered(self, now: float) -> None:
        """Our length grew: parked wants for blocks past our old length (a `Log.get`
        tailing the log, `get(length)`) become wants again. They used to wait out
        their timeout although a peer announced the block."""
        ahead = [i for i in self.parked_ahead if i < self.view.length]
        for index in ahead:
            self.parked_ahead.discard(index)
            since = self.parked.pop(index, None)
            if since is not None:
                self._revive(index, since, set(), now)

    def _revive(self, index: int, since: float, tried: set[int], now: float) -> None:
        """A parked want (parked at `since`) is a passive want again, its peers
        `tried` skipped, unless the block is here or its `Log.get` gave up."""
        if self.view.has(index) or not self._still_wanted(index, since, now):
            return
        g = self.gets.get(index)
        if g is None:
            g = self.gets[index] = GetWant(index, tried=set(tried))
        g.passive = True
        g.wanted_at = since

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
                    elif inf.kind == K_RANGE:
                        ch.note_range_timeout()  # retried block by block; smaller next
                    elif inf.kind == K_CONFLICT:
                        self._check_unanswered(ch, inf, now)
                        break  # (the peer is gone, with all its requests)
                    else:
                        self._upgrade_failed(ch, inf)
                    self._forget_inflight(ch, inf, failed=True)
                elif inf.sent_at + HOTSWAP_AFTER <= now:
                    inf.swap_checked = True
        self._fail_unservable()
        self.pump(now)
        self.on_change()

    def _check_unanswered(self, ch: PeerChannel, inf: Inflight, now: float) -> None:
        """`ch`'s peer left our check of its tree (`_check_tree`) unanswered: drop it.

        It did not prove its tree when asked, after a proof of it failed or its Sync
        named another tree than ours: the same verdict as a refusal (NoData). A
        suspect used to stay connected and idle: asked nothing more, yet counted by
        `settled` (a longer one as an upgrade to come), so `update()` never returned.
        The error's cause is why it was suspected (a failed upgrade keeps its
        `InvalidProofError`, what it was dropped for at once before the checks).
        """
        waited = inf.deadline - inf.sent_at
        why = ch.suspect
        error = ReplicationError(
            f"the peer did not prove its tree when asked (no answer within {waited:g} s)"
            + ("" if why is None else f"; asked because: {why}")
        )
        error.__cause__ = why
        ch.sink.drop(error)
        self.remove_peer(ch, now)

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
