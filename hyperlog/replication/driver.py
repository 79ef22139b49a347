"""Trio driver: runs replication sessions over any `trio.abc.Stream`.

`replicate(stream, *logs)` starts one session (a reader task, a writer task and a
timer task in its own nursery) around the sans-IO `SessionEngine`. Every log taking
part has one `LogReplication` (its `LogReplicator` plus Trio waiters), shared by
all the sessions that replicate it, so `get`, `download` and `update` use every
connected peer at once.

Reader: reads bytes, decodes frames, feeds the engine, then awaits the work the
engine produced (build proofs for the peer's requests; verify and store the peer's
data) in arrival order. Verification always happens before storage (inside
`LogPort.apply`). A peer that breaks the protocol, sends garbage or an invalid proof
is dropped: the session records the error in `session.error` and closes the stream;
nothing it sent after the violation was stored, and what it owed us is requeued to
the other peers. Stream failures end the session the same way; the caller's code is
never interrupted by a misbehaving peer.

Writer: drains the engine's outbox into one `send_all` per batch of messages (the
protomux "cork"). A worker task does the awaited work (serving, verifying) while the
reader keeps reading. Serving waits while more than `MAX_OUTBOX_BYTES` wait to be
sent, so a peer that asks but never reads cannot make us buffer without bound (its
unanswered requests then hit `MAX_PENDING_SERVES` and it is dropped). What the engine
answers at once (wants, refused requests, syncs) and our own announcements are
bounded by dropping instead: once more than `MAX_UNREAD_BYTES` wait for the peer, the
engine sets `unread_error` and `_on_output` ends the session (a peer that neither
reads nor sends is dropped too). The reader never waits for the writer (two peers
doing so at once would deadlock).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import trio

from hyperlog import wire
from hyperlog._groups import raise_body_alone
from hyperlog.errors import (
    BlockNotAvailableError,
    DecodeError,
    ForkConflictError,
    HyperlogError,
    InvalidProofError,
    NoPeersError,
    ReplicationError,
)
from hyperlog.replication.constants import (
    CONFLICT_GOODBYE_TIMEOUT,
    DEFAULT_GET_TIMEOUT,
    HELLO_TIMEOUT,
    MAX_ATTEMPTS,
    MAX_OUTBOX_BYTES,
)
from hyperlog.replication.port import LogPort
from hyperlog.replication.scheduler import LogReplicator, check_index
from hyperlog.replication.scheduler_state import (
    K_CONFLICT,
    DownloadWant,
    PeerChannel,
    RangeVerifyWork,
    ServeWork,
    VerifyWork,
    Work,
)
from hyperlog.replication.session import SessionEngine

logger = logging.getLogger(__name__)

#: Bytes per `receive_some`, and per batch of frames the writer sends at once.
READ_SIZE = 256 * 1024
#: Work items (requests to serve, answers to verify) queued before the reader waits.
MAX_QUEUED_WORK = 512
#: Verified proofs of one peer stored per transaction (the log allows up to 1,024).
MAX_VERIFY_GROUP = 256


#: Work the reader may do inline: serving or verifying a single block.
_INLINE_WORK = 4


def _small(w: Work) -> bool:
    if isinstance(w, ServeWork):
        return isinstance(w.request, wire.Request)
    # Not a conflict check: on a conflict it waits for the peer (`_goodbye`), which
    # the reader must see close the stream.
    return isinstance(w, VerifyWork) and w.inflight.kind != K_CONFLICT


def _inline_fits(work: Iterable[Work], outbox_bytes: int) -> bool:
    """Whether serving `work` inline cannot push the outbox over MAX_OUTBOX_BYTES.

    The reader must never wait for the writer to drain: it would stop reading, and
    two peers serving each other big blocks would each wait for the other to read
    (a deadlock). A single-block answer is at most one frame, so this bounds what
    the inline serves add; otherwise the worker serves (and may wait) instead.
    """
    serves = sum(1 for w in work if isinstance(w, ServeWork))
    return outbox_bytes + serves * wire.MAX_FRAME_SIZE <= MAX_OUTBOX_BYTES


@dataclass(frozen=True, slots=True)
class Progress:
    """Download progress: blocks and bytes fetched so far, blocks still missing."""

    blocks: int
    bytes: int
    missing: int


class LogReplication:
    """Replication state of one log in this process (shared by its sessions).

    You normally get it from `replication_for(log)`; its methods are the reader API.
    """

    def __init__(self, port: LogPort) -> None:
        self.port = port
        self._lot = trio.lowlevel.ParkingLot()
        self.engine = LogReplicator(port, on_change=self._changed, on_block=self._block_done)
        self._block_lots: dict[int, trio.lowlevel.ParkingLot] = {}
        self.conflicts: list[ForkConflictError] = []
        if isinstance(port, _Notifying):
            port.on_local_change = self.notify_local_update
            port.on_want = self._on_want

    def _on_want(self, index: int) -> None:
        # `Log.get` waits for a missing block: fetch it (the log applies its timeout).
        self.engine.want_block(index, trio.current_time(), passive=True)

    def _changed(self) -> None:
        self._lot.unpark_all()

    def _block_done(self, index: int) -> None:
        lot = self._block_lots.get(index)
        if lot is not None:
            lot.unpark_all()

    @property
    def peers(self) -> int:
        return len(self.engine.peers)

    async def wait_changed(self) -> None:
        """Sleep until the replication state of this log changes."""
        await self._lot.park()

    def notify_local_update(self, old_length: int) -> None:
        """Call after appending locally so connected peers hear about it (live)."""
        self.engine.on_local_update(old_length, trio.current_time())

    async def get(
        self,
        index: int,
        *,
        timeout: float | None = DEFAULT_GET_TIMEOUT,  # noqa: ASYNC109 - hypercore's API
        wait: bool = True,
    ) -> None:
        """Make block `index` local, fetching it from peers if needed.

        Args:
            index: the block.
            timeout: give up after this many seconds (None: wait as long as it takes).
            wait: if False, fail as soon as no connected peer can provide the block;
                if True, keep waiting for peers to connect or to get the block.

        Raises:
            TypeError: `index` is not an int.
            ValueError: `index` is negative.
            BlockNotAvailableError: timed out, or (wait=False) no peer has the block.
            ForkConflictError: the log is frozen after a fork conflict.
        """
        check_index(index, "a block index")
        if self.port.has(index):
            return
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        lot = self._block_lots.setdefault(index, trio.lowlevel.ParkingLot())
        g = self.engine.want_block(index, trio.current_time())
        try:
            with trio.move_on_at(deadline):
                # Woken only for this block (stored, failed, log frozen), not on every
                # change: 1,000 concurrent gets would otherwise wake each other 10^6 times.
                while not self.port.has(index):
                    if self.engine.frozen is not None:
                        raise self.engine.frozen
                    if g.error is not None and (not wait or g.attempts >= MAX_ATTEMPTS):
                        raise g.error
                    await lot.park()
                return
            raise BlockNotAvailableError(f"block {index}: timed out after {timeout} s")
        finally:
            self.engine.release_block(g, trio.current_time())
            if not lot.statistics().tasks_waiting and self._block_lots.get(index) is lot:
                del self._block_lots[index]

    async def download(
        self,
        start: int = 0,
        end: int | None = None,
        *,
        progress: Callable[[Progress], None] | None = None,
    ) -> Progress:
        """Fetch blocks [start, end) from peers; `end=None` follows the log live.

        A live download never returns on its own: cancel it (a cancel scope) to stop.

        Returns:
            the final progress (blocks and bytes fetched by this download).

        Raises:
            TypeError: `start` or `end` is not an int.
            ValueError: `start` is negative, or `end` is before `start`.
        """
        d = self.engine.want_range(start, end, trio.current_time())
        last = (-1, -1)
        try:
            while not d.done:
                if self.engine.frozen is not None:
                    raise self.engine.frozen
                if progress is not None and (d.blocks, d.missing) != last:
                    last = (d.blocks, d.missing)
                    progress(self._progress(d))
                await self.wait_changed()
            p = self._progress(d)
            if progress is not None:
                progress(p)
            return p
        finally:
            self.engine.release_range(d)

    @staticmethod
    def _progress(d: DownloadWant) -> Progress:
        return Progress(d.blocks, d.bytes, max(0, d.missing))

    async def update(
        self,
        *,
        timeout: float | None = DEFAULT_GET_TIMEOUT,  # noqa: ASYNC109 - hypercore's API
    ) -> bool:
        """Wait until every connected peer synced and any longer signed head is ours.

        A peer whose tree is being checked for another signed history of our fork
        (see docs/replication.md, Forks) counts as not synced yet (a check left
        unanswered drops it after the request timeout); a channel whose peer sent
        no Sync within `OPEN_TIMEOUT` is not waited for. Once the log is frozen by a
        fork conflict this returns at once (`conflicts` says why, and `get` and
        `download` raise it).

        Returns:
            whether the length or fork changed.
        """
        before = (self.port.fork, self.port.length)
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while not self.engine.settled():
                await self.wait_changed()
        return (self.port.fork, self.port.length) != before

    def offered(self, blocks: Iterable[int]) -> int:
        """How many of `blocks` a connected peer says it has (its have-bits)."""
        return sum(1 for i in blocks if any(ch.have.has(i) for ch in self.engine.peers))

    async def wait_for_peers(self, n: int = 1) -> None:
        """Wait until at least `n` peers have this log's channel open and synced, or
        until no session can bring that many.

        A peer whose tree is being checked for another signed history of our fork
        (docs/replication.md, Forks) does not count until the check passes: it
        ends in a fork conflict (raised here) or with the peer dropped, unless a
        fork change overtook it.

        It waits as long as one may still come: while a session that offered this
        log (`replicate(stream, log)`, or one serving it when the peer asks) has not
        had the peer's answer for it yet (the Hello, or the peer's open or refusal,
        for up to `OPEN_TIMEOUT`), while a channel is open but not synced yet (for
        up to `OPEN_TIMEOUT` too), while a peer's tree is being checked, and
        while no session has offered the log at all (one may be starting in a
        background task). Once every session that offered it has answered, and
        fewer than `n` peers serve the log, it raises `NoPeersError` instead of
        waiting for ever: the peers refused the log (they serve other keys, or
        the capability was wrong), left its open unanswered, opened it but never
        synced, or their sessions ended. A session that ended counts until
        another session offers the log; sessions started after the error are not
        waited for (call it again).

        Args:
            n: how many peers to wait for (an int, at least 1).

        Raises:
            TypeError, ValueError: `n` is not an int of at least 1.
            NoPeersError: fewer than `n` peers serve the log and no session can bring
                more; its `reasons` say what each session got.
            ForkConflictError: the log is frozen after a fork conflict.
        """
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"n must be an int, not {type(n).__name__}")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        while self.engine.serving_peers() < n:
            if self.engine.frozen is not None:
                raise self.engine.frozen
            reasons = self.engine.peers_unavailable(n)
            if reasons is not None:
                waited = "a peer" if n == 1 else f"{n} peers"
                raise NoPeersError(
                    f"no session can bring {waited} for this log: {'; '.join(reasons)}",
                    reasons=reasons,
                )
            await self.wait_changed()

    def _record_conflict(self, err: ForkConflictError) -> None:
        """Two signed trees for one fork: freeze the log's replication, keep both.

        A conflict found twice with one peer (our check of its tree and its proof of
        it, sent when it found the conflict too) is listed once.
        """
        heads = (err.local, err.remote)
        if not any(c is err or (c.local, c.remote) == heads for c in self.conflicts):
            logger.warning("fork conflict on log %s: %s", self.port.key.hex()[:16], err)
            self.conflicts.append(err)
        self.engine.freeze(err)


@runtime_checkable
class _Notifying(Protocol):
    """A port that reports local appends/truncations (the `hyperlog.Log` adapter)."""

    on_local_change: Callable[[int], None] | None
    on_want: Callable[[int], None] | None


_registry: weakref.WeakKeyDictionary[object, LogReplication] = weakref.WeakKeyDictionary()
_adapters: list[Callable[[object], LogPort | None]] = []


def register_adapter(adapt: Callable[[object], LogPort | None]) -> None:
    """Teach `replication_for` to wrap a log type (returns None for other types)."""
    _adapters.append(adapt)


def replication_for(log: object) -> LogReplication:
    """Return the process-wide `LogReplication` of `log` (created on first use).

    `log` is a `LogPort`, or any object a registered adapter wraps (a `hyperlog.Log`).
    """
    rep = _registry.get(log)
    if rep is None:
        from hyperlog.log import Log  # deferred: the engine modules never need it

        port: LogPort | None = None
        if isinstance(log, Log):
            from hyperlog.replication.adapter import LogAdapter

            port = LogAdapter(log)
        for adapt in _adapters:
            if port is not None:
                break
            port = adapt(log)
        rep = LogReplication(port if port is not None else cast(LogPort, log))
        _registry[log] = rep
    return rep


class ReplicationSession:
    """One replication stream with one peer. Made by `replicate`."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        handshake_hash: bytes | None,
        initiator: bool | None,
        resolve: Callable[[bytes], object | None] | None,
        features: int = wire.FEATURES,
    ) -> None:
        self.stream = stream
        self._resolve_user = resolve
        self.engine = SessionEngine(
            handshake_hash=handshake_hash,
            initiator=initiator,
            resolve=self._resolve if resolve is not None else None,
            features=features,
        )
        self._logs: dict[bytes, LogReplication] = {}
        self._out_lot = trio.lowlevel.ParkingLot()
        self._drain_lot = trio.lowlevel.ParkingLot()
        self._timer_lot = trio.lowlevel.ParkingLot()
        self._work_lot = trio.lowlevel.ParkingLot()
        self._working = False  # the reader or the worker is inside _do_work
        self._sending = False  # the writer is inside send_all
        self._worked_lot = trio.lowlevel.ParkingLot()
        self.engine.on_output = self._on_output
        self.error: BaseException | None = None
        self.closed = trio.Event()
        self._scope = trio.CancelScope()
        self._timer_at = -math.inf  # when the timer task wakes next (-inf: not sleeping)
        self.bytes_in = 0
        self.bytes_out = 0

    def _on_output(self) -> None:
        fatal = self.engine.unread_error or self.engine.dropped
        if fatal is not None and self.error is None:
            # The peer does not read what we queue for it (it may send nothing
            # either, so the reader would never see it), or a replicator's timer
            # dropped it (a check of its tree left unanswered): end the session
            # from here, which may be inside `Log.append` or another session's
            # timer, so never by raising.
            self._fail(fatal)
            self._scope.cancel()
            return
        self._out_lot.unpark_all()
        # Wake the timer only for a deadline earlier than the one it sleeps until (a
        # round trip used to wake it twice per side to recompute the same deadline).
        if self.engine.deadline_hint < self._timer_at:
            self._timer_lot.unpark_all()

    def _resolve(self, dk: bytes) -> LogReplicator | None:
        assert self._resolve_user is not None
        log = self._resolve_user(dk)
        if log is None:
            return None
        rep = replication_for(log)
        self._logs[dk] = rep
        return rep.engine

    def add(self, log: object) -> LogReplication:
        """Replicate one more log on this stream."""
        rep = replication_for(log)
        self._logs[rep.port.discovery_key] = rep
        self.engine.add_log(rep.engine)
        return rep

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self.engine.unread_error or self.engine.dropped:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._writer)
                nursery.start_soon(self._worker)
                nursery.start_soon(self._timer)
                task_status.started()
                try:
                    await self._reader()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self.engine.close(trio.current_time(), None if self.error is None else str(self.error))
            for rep in self._logs.values():
                rep.engine.on_change()
            self.closed.set()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await self.stream.aclose()

    async def _reader(self) -> None:
        dec = wire.FrameDecoder()
        try:
            with trio.fail_after(HELLO_TIMEOUT) as hello_scope:
                while not self.engine.ready:
                    await self._read_once(dec)
            del hello_scope
            while True:
                await self._read_once(dec)
        except trio.TooSlowError as exc:
            # Timed out, not refused: the cause says so (a stalled link may mend).
            error = ReplicationError("peer sent no hello in time")
            error.__cause__ = exc
            self._fail(error)
        except (DecodeError, ReplicationError, InvalidProofError) as exc:
            self._fail(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
            if self.error is None and not isinstance(exc, EOFError):
                self.error = exc

    def _fail(self, exc: BaseException) -> None:
        logger.info("dropping replication peer: %s", exc)
        if self.error is None:
            self.error = exc

    async def _read_once(self, dec: wire.FrameDecoder) -> None:
        data = await self.stream.receive_some(READ_SIZE)
        if not data:
            await self._finish_checks()
            raise EOFError
        self.bytes_in += len(data)
        dec.receive_data(data)
        # Decode and feed everything this read brought, then do the work it made: the
        # verifications of one read are stored as one group (one transaction).
        now = trio.current_time()
        while (msg := dec.next_message()) is not None:
            self.engine.receive(msg, now)
        if self.engine.work:
            work = self.engine.work
            if (
                not self._working
                and len(work) <= _INLINE_WORK
                and all(map(_small, work))
                and _inline_fits(work, self.engine.outbox_bytes)
            ):
                # A few single-block items and an idle worker: do them here and save
                # two task switches per round trip (sparse gets are latency-bound).
                self._working = True
                try:
                    await self._do_work(inline=True)
                finally:
                    self._working = False
            else:
                self._work_lot.unpark_all()
        # Backpressure: while the worker is busy (storing runs in a thread for big
        # groups) keep reading, but never queue more than MAX_QUEUED_WORK items.
        while len(self.engine.work) > MAX_QUEUED_WORK:
            await self._worked_lot.park()

    async def _finish_checks(self) -> None:
        """The peer closed the stream: run the checks of its whole signed tree that
        arrived before (at most `CONFLICT_GOODBYE_TIMEOUT`). A peer that found a fork
        conflict sends its conflict proof and closes the stream at once: the proof
        used to be queued for the worker and cancelled with the session, unread."""
        with trio.move_on_after(CONFLICT_GOODBYE_TIMEOUT):
            while any(ch.verifying_conflict() for ch in self.engine.channels()):
                self._work_lot.unpark_all()
                await self._worked_lot.park()

    async def _worker(self) -> None:
        """Verify, store and serve what the reader queued, overlapping with reading."""
        try:
            while True:
                while not self.engine.work or self._working:
                    await self._work_lot.park()
                self._working = True
                try:
                    await self._do_work()
                finally:
                    self._working = False
                self._worked_lot.unpark_all()
        except (DecodeError, ReplicationError, InvalidProofError) as exc:
            self._fail(exc)
            self._scope.cancel()

    async def _do_work(self, *, inline: bool = False) -> None:
        """Run the queued work. `inline`: on the reader task, which must not wait for
        the writer to drain (`_inline_fits` bounded what its serves add)."""
        pending: list[Work] = []
        while (w := self.engine.next_work()) is not None:
            pending.append(w)
        # Items leave `unsettled` once the engine has heard their outcome; if the
        # session ends first, the rest go back to the pool (other peers fetch them).
        unsettled = list(pending)
        try:
            group: list[VerifyWork] = []
            for w in pending:
                if isinstance(w, VerifyWork) and w.inflight.kind != K_CONFLICT:
                    if group and (
                        group[0].channel is not w.channel or len(group) >= MAX_VERIFY_GROUP
                    ):
                        await self._apply_group(group, unsettled)
                        group = []
                    group.append(w)
                    continue
                if group:
                    await self._apply_group(group, unsettled)
                    group = []
                if isinstance(w, ServeWork):
                    await self._serve(w, may_wait=not inline)
                elif isinstance(w, RangeVerifyWork):
                    await self._apply_range(w, unsettled)
                else:
                    unsettled.remove(w)  # the conflict check settles or raises
                    await self._check_conflict(w)
                if w in unsettled:
                    unsettled.remove(w)
            if group:
                await self._apply_group(group, unsettled)
        except BaseException:
            self.engine.abandon(unsettled, trio.current_time())
            raise

    async def _serve(self, w: ServeWork, *, may_wait: bool = True) -> None:
        # A peer that asks but does not read must not make us buffer without bound:
        # wait until the writer drains (its requests then pile up against
        # MAX_PENDING_SERVES and it is dropped if it keeps going). Not on the reader
        # (`may_wait=False`), which must keep reading.
        while may_wait and self.engine.outbox_bytes > MAX_OUTBOX_BYTES:
            await self._drain_lot.park()
        rep = self._rep_of(w)
        try:
            data = await rep.port.serve(w.request)
        except HyperlogError as exc:
            logger.debug("cannot serve %r: %s", w.request, exc)
            data = None
        if data is not None:
            data = dataclasses.replace(data, channel=w.channel.local_id, id=w.request.id)
        rep.engine.on_served(w.channel, w.request, data)

    async def _apply_group(self, group: list[VerifyWork], unsettled: list[Work]) -> None:
        rep = self._rep_of(group[0])
        results = await rep.port.apply_many([w.data for w in group])
        now = trio.current_time()
        failure: BaseException | None = None
        for w, result in zip(group, results, strict=True):
            unsettled.remove(w)
            if isinstance(result, ForkConflictError):
                rep._record_conflict(result)
                rep.engine.on_applied(w, result, now)
                failure = failure or ReplicationError(f"fork conflict: {result}")
                continue
            err = rep.engine.on_applied(w, result, now)
            if err is not None and failure is None:
                failure = ReplicationError(f"peer sent an invalid proof: {err}")
                failure.__cause__ = err
        if failure is not None:
            raise failure

    async def _apply_range(self, w: RangeVerifyWork, unsettled: list[Work]) -> None:
        rep = self._rep_of(w)
        results = await rep.port.apply_range(w.data, w.inflight.index)
        unsettled.remove(w)
        err = rep.engine.on_range_applied(w, results, trio.current_time())
        if err is not None:
            raise ReplicationError(f"peer sent an invalid range proof: {err}") from err

    async def _check_conflict(self, w: VerifyWork) -> None:
        """Check a peer's whole signed tree (the answer to our conflict check, or its
        conflict proof); drop the peer if the engine says so.

        On a conflict, the peer is sent our own whole signed tree first (unless it
        sent us its proof: it knows), and the stream stays open until the peer has
        it (`_goodbye`): two sides that disagree each check the other, and the first
        to find the conflict used to close the stream before the other's check was
        answered, so the other saw the stream end and learnt nothing.
        """
        rep = self._rep_of(w)
        try:
            found: HyperlogError | None = rep.port.check_conflict(w.data)
        except HyperlogError as exc:
            found = exc
        err = rep.engine.on_conflict_checked(w, found, trio.current_time())
        if err is None:
            return
        if isinstance(err, ForkConflictError):
            rep._record_conflict(err)
            failure = ReplicationError(f"fork conflict: {err}")
            failure.__cause__ = err
            self._fail(failure)  # (the goodbye may end with the stream, cancelled)
            sent = False
            if w.inflight.id != wire.CONFLICT_PROOF_ID:
                sent = await self._send_conflict_proof(rep, w)
            await self._goodbye(rep, w.channel, wait_for_peer=sent)
            raise failure
        if isinstance(err, ReplicationError):
            raise err  # (a Sync naming a tree hash its signed tree does not have)
        raise ReplicationError(f"peer sent an invalid proof: {err}") from err

    async def _send_conflict_proof(self, rep: LogReplication, w: VerifyWork) -> bool:
        """Send the peer our whole signed tree up to the length our check compared
        (`wire.CONFLICT_PROOF_ID`), if it reads such proofs: it verifies ours as we
        verified its, and finds the conflict too. Returns whether it was sent."""
        ch = w.channel
        if ch.closed or not self.engine.peer_features & wire.FEATURE_FORK_CHECK:
            return False
        ask = wire.Request(
            ch.local_id,
            wire.CONFLICT_PROOF_ID,
            w.data.fork,
            upgrade=wire.RequestUpgrade(0, w.inflight.index),
        )
        try:
            data = await rep.port.serve(ask)
        except HyperlogError:
            data = None
        if not isinstance(data, wire.Data):
            return False
        self.engine.send(dataclasses.replace(data, channel=ch.local_id, id=wire.CONFLICT_PROOF_ID))
        return True

    async def _goodbye(self, rep: LogReplication, ch: PeerChannel, *, wait_for_peer: bool) -> None:
        """Before the peer is dropped for a fork conflict, wait (at most
        `CONFLICT_GOODBYE_TIMEOUT` in all) until the writer wrote what is queued for
        it and, with `wait_for_peer` (it was sent our conflict proof), until it has
        found the conflict too: it then closes the stream (which ends this session
        from the reader) or sends its own proof. Closing first made the peer's
        writer fail on the closed stream, ending its session before it read ours.
        """
        with trio.move_on_after(CONFLICT_GOODBYE_TIMEOUT):
            while self.engine.outbox or self._sending:
                await self._drain_lot.park()
            while wait_for_peer and not ch.sent_conflict_proof and not ch.closed:
                await rep.wait_changed()

    def _rep_of(self, w: Work) -> LogReplication:
        # The channel may have closed since: its verified data is still worth storing,
        # and the engine still needs the outcome to forget the request.
        owner = w.channel.owner
        assert owner is not None
        return self._logs[owner.view.discovery_key]

    async def _writer(self) -> None:
        out = self.engine.outbox
        while True:
            while not out:
                await self._out_lot.park()
            frames = []
            size = 0
            while out and size < READ_SIZE:
                msg = self.engine.pop_outbox()
                try:
                    f = wire.encode_frame(msg)
                except ValueError as exc:
                    # A message we cannot encode (too big for a frame) is our bug, but
                    # it must end this session with a reason, not crash `replicate`.
                    self._fail(ReplicationError(f"cannot send {type(msg).__name__}: {exc}"))
                    self._scope.cancel()
                    return
                frames.append(f)
                size += len(f)
            self._sending = True
            try:
                await self.stream.send_all(b"".join(frames))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # The stream died: end the session (the reader may be blocked reading).
                if self.error is None:
                    self.error = exc
                self._scope.cancel()
                return
            finally:
                self._sending = False
            self.bytes_out += size
            self._drain_lot.unpark_all()

    async def _timer(self) -> None:
        while True:
            deadline = min(
                (rep.engine.next_deadline() for rep in self._logs.values()), default=math.inf
            )
            deadline = min(deadline, self.engine.next_deadline())
            self._timer_at = deadline
            with trio.move_on_at(deadline):
                await self._timer_lot.park()
                continue
            self._timer_at = -math.inf
            now = trio.current_time()
            self.engine.on_timer(now)
            for rep in list(self._logs.values()):
                rep.engine.on_timer(now)

    async def wait_closed(self) -> None:
        await self.closed.wait()

    def replication(self, log: object) -> LogReplication:
        return replication_for(log)


@asynccontextmanager
async def replicate(
    stream: trio.abc.Stream,
    *logs: object,
    resolve: Callable[[bytes], object | None] | None = None,
    handshake_hash: bytes | None = None,
    initiator: bool | None = None,
    features: int = wire.FEATURES,
) -> AsyncIterator[ReplicationSession]:
    """Replicate `logs` with the peer at the other end of `stream`.

    Args:
        stream: any `trio.abc.Stream` (a Noise link, a session stream, a memory stream).
        logs: the logs to offer and fetch on this stream. A `hyperlog.Store` among
            them means "serve everything I have": each of its logs (as stored when
            the session starts) is served when the remote asks for it by discovery
            key, without being offered to the remote first.
        resolve: "serve everything I have": called with a discovery key the remote
            opens that is not among `logs`; return a log to serve it, or None.
        handshake_hash: the link's Noise handshake hash, binding capabilities to this
            link (taken from `stream.handshake_hash` when the stream has one).
        initiator: this side's role for capabilities (default: from the Hello nonces).
        features: the optional protocol features to announce in our Hello
            (`hyperlog.wire.FEATURE_*`; default: every one this version speaks). Each
            is used only if the peer announces it too.

    The session ends when the stream ends, the peer misbehaves (`session.error`
    says why), or the block exits (the stream is closed). A peer that sends no Hello
    within `HELLO_TIMEOUT` ends it with a `ReplicationError` whose `__cause__` is a
    `trio.TooSlowError`; `session.engine.rejected` lists the logs the peer refused.
    """
    if handshake_hash is None:
        hh = getattr(stream, "handshake_hash", None)
        if isinstance(hh, bytes) and hh:
            handshake_hash = hh
    from hyperlog.log import Store  # deferred: the engine modules never need it

    served: dict[bytes, object] = {}
    offered = []
    for item in logs:
        if isinstance(item, Store):
            for key in item.keys():  # noqa: SIM118 - a Store, not a dict
                stored = await item.open_log(key, create=False)
                served[stored.discovery_key] = stored
        else:
            offered.append(item)
    if served:
        user_resolve = resolve

        def resolve(dk: bytes) -> object | None:
            found = served.get(dk)
            return found if found is not None or user_resolve is None else user_resolve(dk)

    session = ReplicationSession(
        stream,
        handshake_hash=handshake_hash,
        initiator=initiator,
        resolve=resolve,
        features=features,
    )
    for log in offered:
        session.add(log)
    body: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(session.run)
            try:
                yield session
            except BaseException as exc:
                body = exc
                raise
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The block's own exception (Ctrl-C included) comes out as itself, not in a
        # group of one (a newcomer's `except BlockNotAvailableError` never matched).
        raise_body_alone(group, body)
        raise
