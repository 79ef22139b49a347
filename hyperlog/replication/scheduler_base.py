"""`ReplicatorBase`: every field of a `LogReplicator`, initialised in one place.

`LogReplicator` (scheduler.py) is assembled from one mixin per side of the work:
serving what peers ask of us (scheduler_serve.py), taking in the answers to what we
asked (scheduler_answers.py) and deciding what to ask of whom (scheduler_fetch.py).
Each is a subclass of `ReplicatorBase`: the fields live here, so every part sees all
of them with their types, and the few methods one part calls in another are declared
here for the type checker only (they add nothing at run time).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hyperlog.errors import HyperlogError
from hyperlog.replication.port import CountingView, LogView, TreeHashView
from hyperlog.replication.scheduler_state import DownloadWant, GetWant, PeerChannel

if TYPE_CHECKING:
    from hyperlog import wire
    from hyperlog.replication.scheduler_state import Inflight


class ReplicatorBase:
    """The fields of `LogReplicator` (see scheduler.py for what they are for)."""

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
        # The view's tree hashes, if it can give them (Syncs carry ours, and a peer's
        # is compared with it): looked up once, not per Sync.
        self.trees: TreeHashView | None = view if isinstance(view, TreeHashView) else None
        self.peers: list[PeerChannel] = []
        self.gets: dict[int, GetWant] = {}
        # Passive wants (`Log.get`) failed for want of a peer, asked again when a peer
        # syncs, with when `Log.get` asked; insertion order, at most MAX_PARKED_WANTS
        # (see scheduler_fetch.py).
        self.parked: dict[int, float] = {}
        # Parked indices that were past our length when parked (a superset: checked
        # against `parked` when used), asked again when our length covers them.
        self.parked_ahead: set[int] = set()
        self.downloads: list[DownloadWant] = []
        self.retry: set[int] = set()
        self.block_reqs: dict[int, list[tuple[PeerChannel, int]]] = {}
        self.upgrade_inflight: PeerChannel | None = None
        self.frozen: HyperlogError | None = None
        self.pending_opens = 0  # channels we opened that the remote has not answered
        # Why sessions brought no peer for this log (`wait_for_peers`): those still
        # running, by session (the peer refused the log, left the open unanswered,
        # closed the channel), and the newest of those that ended since a session
        # last offered the log.
        self.refusals: dict[int, str] = {}
        self.ended: list[str] = []
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

    def _missing_in(self, start: int, end: int) -> int:
        """How many blocks of [start, end) we lack: those held are counted over the
        log's length only, the rest is arithmetic (a `download(0, 2**40)` on a short
        log used to call `has` once per block of the range, on the loop, for hours).
        """
        if end <= start:
            return 0
        stop = min(end, self.view.length)
        beyond = end - max(start, stop)
        if stop <= start:
            return beyond
        if isinstance(self.view, CountingView):
            held = self.view.count_held(start, stop)
        else:
            held = sum(1 for i in range(start, stop) if self.view.has(i))
        return stop - start - held + beyond

    if TYPE_CHECKING:
        # Defined by one part, called by another (see the module docstring).
        def pump(self, now: float) -> None: ...
        def _fail_unservable(self, only: GetWant | None = None) -> None: ...
        def _unpark(self, ch: PeerChannel, now: float) -> None: ...
        def _blocks_from(self, ch: PeerChannel) -> bool: ...
        def _unpark_covered(self, now: float) -> None: ...
        def _revive(self, index: int, since: float, tried: set[int], now: float) -> None: ...
        def _forget_inflight(self, ch: PeerChannel, inf: Inflight, *, failed: bool) -> None: ...
        def _cancel_request(self, ch: PeerChannel, rid: int) -> None: ...
        def _request(
            self,
            ch: PeerChannel,
            kind: str,
            index: int,
            now: float,
            *,
            block: wire.RequestBlock | None = None,
            upgrade: wire.RequestUpgrade | None = None,
        ) -> int: ...
        @staticmethod
        def _drop_have(ch: PeerChannel, start: int, length: int) -> None: ...
        @staticmethod
        def _upgrade_failed(ch: PeerChannel, inf: Inflight) -> None: ...
        def _send_sync(self, ch: PeerChannel) -> None: ...
        def _check_tree(self, ch: PeerChannel, at: int, why: HyperlogError, now: float) -> None: ...
        def _count_live(self) -> None: ...
        def remove_peer(self, ch: PeerChannel, now: float) -> None: ...
