"""Per-stream replication session: hello, channels, capabilities (no trio).

Theory of operation
-------------------
One `SessionEngine` runs per replication stream (one remote peer). It speaks the
stream-level part of the protocol and hands channel messages to the per-log
`LogReplicator`s:

1. Both sides send `Hello` (wire version and a fresh nonce) first; any other first
   message is a protocol error. The session id is the link's handshake hash when
   the driver knows one, else the two nonces (see `caps.py`).
2. For every log offered locally, we send `Open(our channel id, discovery key,
   capability)`. When the remote opens a discovery key we serve (offered, or found
   by the `resolve` callback: "serve everything I have"), we check its capability
   and, if we had not opened that log yet, open it too. A channel is live once both
   sides opened it; the log's replicator then adds it as a peer. An open for a log
   we do not have is refused (counted); a wrong capability closes that channel.
   The remote's refusals of our opens are kept in `rejected`, apart from opens it
   left unanswered for `OPEN_TIMEOUT` (`on_timer` gives up on those). A live
   channel's first Sync is due within `OPEN_TIMEOUT` too: after it, `on_timer`
   tells the replicator (`sync_overdue`), which stops waiting for that peer.
3. Channel messages carry the *sender's* channel id (protomux style): we map remote
   ids to channels. Messages for a channel the peer closed are ignored up to
   `MAX_SOFT_ERRORS`, then the peer is dropped. The last `MAX_CLOSED_CHANNEL_IDS`
   closed ids are remembered (a peer opening and closing channels forever must not
   grow our memory); a message for an older one is an error, as for an unknown id.

Outputs: `outbox` (messages to write, in order) and `work` (serves and verifications
the driver must await, in arrival order). `on_output` is called whenever either
grows, so the driver can wake its writer. `outbox_bytes` estimates what the outbox
holds: serving stops above `MAX_OUTBOX_BYTES` (the driver waits), and once more
than `MAX_UNREAD_BYTES` wait for the peer, `unread_error` is set, nothing more is
queued, the driver ends the session and `receive` raises it (it does not read; the
reader never waits for the writer, see driver.py). A replicator's timer drops the
peer the same way (`drop`, setting `dropped`). Requests
the peer cancels before we served them are dropped from `work`. Every violation
raises `RemoteProtocolError` or `DecodeError` from `receive`; the driver then closes
the stream, and the replicators requeue what this peer owed us.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from hyperlog import wire
from hyperlog.errors import RemoteProtocolError, ReplicationError
from hyperlog.replication import caps
from hyperlog.replication.constants import (
    MAX_CHANNELS,
    MAX_CLOSED_CHANNEL_IDS,
    MAX_SOFT_ERRORS,
    MAX_UNREAD_BYTES,
    OPEN_TIMEOUT,
)
from hyperlog.replication.scheduler import LogReplicator
from hyperlog.replication.scheduler_state import PeerChannel, ServeWork, Work

_peer_ids = iter(range(1, 2**62))

#: Bytes counted per node and per message envelope by `message_size`.
_NODE_BYTES = 48
_ENVELOPE_BYTES = 64


def message_size(msg: wire.Message) -> int:
    """A cheap upper-ish estimate of a message's encoded size (for outbox limits)."""
    if isinstance(msg, wire.Data):
        n = _ENVELOPE_BYTES
        if msg.block is not None:
            n += len(msg.block.value) + _NODE_BYTES * len(msg.block.nodes)
        if msg.upgrade is not None:
            up = msg.upgrade
            n += _NODE_BYTES * (len(up.nodes) + len(up.additional_nodes)) + len(up.signature)
        if msg.hash is not None:
            n += _NODE_BYTES * len(msg.hash.nodes)
        return n
    if isinstance(msg, wire.RangeData):
        nodes = len(msg.proof) + len(msg.leaves)
        return _ENVELOPE_BYTES + sum(map(len, msg.values)) + _NODE_BYTES * nodes
    if isinstance(msg, wire.Bitfield):
        return _ENVELOPE_BYTES + len(msg.bits)
    return _ENVELOPE_BYTES


@dataclass(slots=True)
class _Local:
    """A log we opened (or will open) on this session."""

    replicator: LogReplicator
    local_id: int
    opened: bool = False
    pending: bool = False  # we opened; the remote has neither opened nor rejected
    opened_at: float | None = None  # when we sent Open (for OPEN_TIMEOUT)
    remote_id: int | None = None
    channel: PeerChannel | None = None
    linked_at: float | None = None  # when both sides had opened it (its Sync is due)


class SessionEngine:
    """The sans-IO state of one replication stream."""

    def __init__(
        self,
        *,
        handshake_hash: bytes | None = None,
        initiator: bool | None = None,
        resolve: Callable[[bytes], LogReplicator | None] | None = None,
        nonce: bytes | None = None,
        features: int = wire.FEATURES,
    ) -> None:
        self.peer_id = next(_peer_ids)
        self.nonce = nonce if nonce is not None else os.urandom(32)
        #: Our feature bits (sent in our Hello) and the peer's (from its Hello): an
        #: optional field is used only when both have its bit.
        self.features = features
        self.peer_features = 0
        self._handshake_hash = handshake_hash
        self._initiator = initiator
        self._resolve = resolve
        self.session_id: bytes | None = None
        self.outbox: deque[wire.Message] = deque([wire.Hello(self.nonce, features)])
        self.work: deque[Work] = deque()
        self.outbox_bytes = message_size(self.outbox[0])  # estimate of what `outbox` holds
        #: Set once more than `MAX_UNREAD_BYTES` wait for the peer to read them: the
        #: session must end (the driver closes it; `receive` raises it). Nothing more
        #: is queued meanwhile.
        self.unread_error: RemoteProtocolError | None = None
        #: Set when a replicator drops the peer from a timer (`drop`): the session
        #: must end (the driver closes it; `receive` raises it).
        self.dropped: ReplicationError | None = None
        # Coalescing (see `send`): messages popped so far, and per channel the last
        # Sync and the last (non-drop) Range queued, with their sequence numbers.
        self._popped = 0
        self._last_sync: dict[int, tuple[int, wire.Sync]] = {}
        self._last_range: dict[int, tuple[int, wire.Range]] = {}
        self.on_output: Callable[[], None] = lambda: None
        self._by_dk: dict[bytes, _Local] = {}
        self._by_remote: dict[int, _Local] = {}
        # Remote ids of channels closed or refused (insertion order: the oldest is
        # forgotten first, at most MAX_CLOSED_CHANNEL_IDS).
        self._closed_remote: dict[int, None] = {}
        self._cancelled: set[tuple[int, int]] = set()
        self._next_local = 1
        self._soft_errors = 0
        self._now = 0.0  # the latest time we were given (for Open timestamps)
        self._serves = 0  # ServeWork items in `work`
        #: The earliest timer deadline created (by us or by the replicators of our
        #: channels, `note_deadline`) since `next_deadline` was last called: the
        #: driver's timer, asleep until later, must wake; asleep until earlier, need not.
        self.deadline_hint = math.inf
        self.ignored_opens = 0
        self.bad_capabilities = 0
        #: Discovery keys of our logs whose open the remote refused, with its reason
        #: ("unknown log", "bad capability"): it will not serve them on this stream.
        #: An open it left unanswered for `OPEN_TIMEOUT` (it may be slow, not wrong)
        #: is not here.
        self.rejected: dict[bytes, str] = {}
        self.closed = False

    # ------------------------------------------------------------------ ChannelSink

    def send(self, msg: wire.Message) -> None:
        if self.unread_error is not None:
            return  # being dropped: it reads nothing of what we queue anyway
        if self._coalesce(msg):
            self.on_output()
            return
        seq = self._popped + len(self.outbox)
        if isinstance(msg, wire.Sync):
            last = self._last_sync.get(msg.channel)
            if last is not None and last[1].fork != msg.fork:
                self._last_range.pop(msg.channel, None)  # no Range merges across forks
            self._last_sync[msg.channel] = (seq, msg)
        elif isinstance(msg, wire.Range):
            if msg.drop:
                self._last_range.pop(msg.channel, None)
            else:
                self._last_range[msg.channel] = (seq, msg)
        elif isinstance(msg, wire.Open):
            self._last_sync.pop(msg.channel, None)
            self._last_range.pop(msg.channel, None)
        self.outbox.append(msg)
        self.outbox_bytes += message_size(msg)
        if self.outbox_bytes > MAX_UNREAD_BYTES:
            # Checked on every message queued, not only when the peer sends: a peer
            # that neither reads nor sends used to grow our outbox by a Sync and a
            # Range per local append, without bound. Never raised here: `send` runs
            # inside `Log.append` (its listeners) and other local calls.
            self.unread_error = RemoteProtocolError(
                f"peer does not read: {self.outbox_bytes} bytes queued for it "
                f"(limit {MAX_UNREAD_BYTES})"
            )
        self.on_output()

    def _unsent(self, seq: int, msg: wire.Message) -> int | None:
        """Where message `msg`, queued as number `seq`, waits in the outbox (None:
        sent already, or the outbox was changed behind our back)."""
        i = seq - self._popped
        if 0 <= i < len(self.outbox) and self.outbox[i] is msg:
            return i
        return None

    def _coalesce(self, msg: wire.Message) -> bool:
        """Fold `msg` into an unsent message of its channel, if one says it all.

        A Sync replaces the channel's unsent Sync of the same fork (the newer head
        says everything the older did); a Range extends the channel's unsent Range
        that ends where it starts (no drop in between). A slow peer's backlog of
        announcements stays O(1): every local append used to queue a Sync and a
        Range per peer, and an honest follower on a slow link was dropped at
        `MAX_UNREAD_BYTES` during a burst of single appends.
        """
        if isinstance(msg, wire.Sync):
            last = self._last_sync.get(msg.channel)
            if last is None or last[1].fork != msg.fork:
                return False
            i = self._unsent(*last)
            if i is None:
                return False
            self.outbox[i] = msg
            self._last_sync[msg.channel] = (last[0], msg)
            return True
        if isinstance(msg, wire.Range) and not msg.drop:
            lr = self._last_range.get(msg.channel)
            if lr is None or lr[1].start + lr[1].length != msg.start:
                return False
            i = self._unsent(*lr)
            if i is None:
                return False
            merged = wire.Range(msg.channel, lr[1].start, lr[1].length + msg.length)
            self.outbox[i] = merged
            self._last_range[msg.channel] = (lr[0], merged)
            return True
        return False

    def pop_outbox(self) -> wire.Message:
        """Take the next message to write (keeps `outbox_bytes` exact)."""
        msg = self.outbox.popleft()
        self._popped += 1
        self.outbox_bytes -= message_size(msg)
        return msg

    def add_work(self, work: Work) -> None:
        self.work.append(work)
        if isinstance(work, ServeWork):
            self._serves += 1
        self.on_output()

    def pending_serves(self) -> int:
        return self._serves

    def note_deadline(self, deadline: float) -> None:
        if deadline < self.deadline_hint:
            self.deadline_hint = deadline

    def drop(self, error: ReplicationError) -> None:
        """A replicator drops the peer (`ChannelSink.drop`): the session must end.
        Only the first reason is kept; the driver hears it through `on_output`."""
        if self.dropped is None and self.unread_error is None:
            self.dropped = error
        self.on_output()

    # ------------------------------------------------------------------ local API

    @property
    def ready(self) -> bool:
        """Whether the Hello exchange is complete."""
        return self.session_id is not None

    def add_log(self, rep: LogReplicator) -> None:
        """Offer `rep`'s log on this stream (opens its channel once ready)."""
        dk = rep.view.discovery_key
        if dk in self._by_dk:
            return
        if len(self._by_dk) >= MAX_CHANNELS:
            raise RemoteProtocolError(f"more than {MAX_CHANNELS} channels on one stream")
        loc = _Local(rep, self._next_local, pending=True)
        rep.pending_opens += 1
        rep.offered()
        self._next_local += 1
        self._by_dk[dk] = loc
        if self.ready:
            self._open(loc)

    def channels(self) -> list[PeerChannel]:
        return [loc.channel for loc in self._by_dk.values() if loc.channel is not None]

    def next_work(self) -> Work | None:
        """Pop the next work item, skipping serves the peer cancelled."""
        while self.work:
            w = self.work.popleft()
            if isinstance(w, ServeWork):
                self._serves -= 1
                key = (w.channel.remote_id, w.request.id)
                if key in self._cancelled:
                    self._cancelled.discard(key)
                    continue
            if w.channel.closed:
                continue
            return w
        return None

    def abandon(self, items: list[Work], now: float) -> None:
        """Work popped (or queued) that will never run: its requests go back to the pool."""
        for w in items:
            for loc in self._by_dk.values():
                if loc.channel is w.channel:
                    loc.replicator.abandon(w, now)
        if items:
            for loc in self._by_dk.values():
                loc.replicator.refresh(now)

    def close(self, now: float, why: str | None = None) -> None:
        """The stream ended (`why`, in a user's words, if it broke or the peer was
        dropped): remove every channel from its replicator, and tell each replicator
        whose log got no peer here, or lost it, how it ended (`wait_for_peers`)."""
        self.closed = True
        self.abandon(list(self.work), now)
        said = f": {why}" if why else ""
        for loc in self._by_dk.values():
            reason = None
            if loc.pending:
                reason = f"the session ended before the peer opened the log{said}"
            elif loc.channel is not None:
                reason = f"the session ended{said}"
            loc.replicator.session_ended(self.peer_id, reason)
            if loc.pending:
                self._settle(loc)
                loc.replicator.refresh(now)
            if loc.channel is not None:
                loc.replicator.remove_peer(loc.channel, now)
                loc.channel = None
        self.work.clear()
        self._serves = 0
        # Nothing is written after the stream ended: free what waited (up to
        # MAX_UNREAD_BYTES for a peer dropped for not reading).
        self.outbox.clear()
        self.outbox_bytes = 0

    # ------------------------------------------------------------------ input

    def receive(self, msg: wire.Message, now: float) -> None:
        """Handle one decoded message from the peer.

        Raises:
            RemoteProtocolError: the peer broke the protocol, or it keeps sending
                while more than `MAX_UNREAD_BYTES` of our messages wait for it to
                read them (whatever made them: answers to its wants, refusals,
                syncs, announcements); drop it.
            ReplicationError: a replicator dropped the peer already (`dropped`).
        """
        if self.closed:
            return
        if self.dropped is not None:
            raise self.dropped  # nothing more from a peer being dropped
        self._receive(msg, now)
        if self.unread_error is not None:
            # Checked per message: one read may carry thousands of small messages,
            # each answered at once (a Want by up to 32 KiB of bitfield).
            raise self.unread_error

    def _receive(self, msg: wire.Message, now: float) -> None:
        self._now = now
        if isinstance(msg, wire.Hello):
            if self.session_id is not None:
                raise RemoteProtocolError("second hello")
            self._on_hello(msg, now)
            return
        if self.session_id is None:
            raise RemoteProtocolError(f"{type(msg).__name__} before hello")
        if isinstance(msg, wire.Open):
            self._on_open(msg, now)
            return
        if isinstance(msg, wire.Reject):
            for dk, mine in self._by_dk.items():
                if mine.local_id == msg.channel and mine.opened:
                    # Refused: whatever we linked for this log is void (the remote
                    # will never serve it), so unlink it too.
                    self.rejected[dk] = msg.reason
                    mine.replicator.no_peer(
                        self.peer_id, f"the peer refused the log ({msg.reason})"
                    )
                    self._settle(mine)
                    if mine.channel is not None:
                        assert mine.remote_id is not None
                        self._by_remote.pop(mine.remote_id, None)
                        self._note_closed(mine.remote_id)
                        for w in self.work:
                            if w.channel is mine.channel:
                                mine.replicator.abandon(w, now)
                        mine.replicator.remove_peer(mine.channel, now)
                        mine.channel = None
                        mine.remote_id = None
                    mine.replicator.refresh(now)
                    return
            self._soft_error(f"reject for channel {msg.channel} we did not open")
            return
        loc = self._by_remote.get(msg.channel)
        if loc is None or loc.channel is None:
            if msg.channel not in self._closed_remote:
                raise RemoteProtocolError(f"{type(msg).__name__} on unopened channel {msg.channel}")
            # A race with a close or reject we sent: harmless unless it keeps coming.
            self._soft_error(f"{type(msg).__name__} for closed channel {msg.channel}")
            return
        ch = loc.channel
        if isinstance(msg, wire.Close):
            del self._by_remote[msg.channel]
            self._note_closed(msg.channel)
            loc.replicator.no_peer(self.peer_id, "the peer closed the log's channel")
            loc.remote_id = None
            loc.channel = None
            for w in self.work:
                if w.channel is ch:
                    loc.replicator.abandon(w, now)  # skipped by next_work from now on
            loc.replicator.remove_peer(ch, now)
            return
        if isinstance(msg, wire.Cancel):
            self._cancelled.add((msg.channel, msg.id))
            if len(self._cancelled) > 4 * len(self.work) + 64:
                live = {
                    (w.channel.remote_id, w.request.id)
                    for w in self.work
                    if isinstance(w, ServeWork)
                }
                self._cancelled &= live
            return
        loc.replicator.on_message(ch, msg, now)

    def _note_closed(self, remote_id: int) -> None:
        self._closed_remote.pop(remote_id, None)
        self._closed_remote[remote_id] = None
        if len(self._closed_remote) > MAX_CLOSED_CHANNEL_IDS:
            del self._closed_remote[next(iter(self._closed_remote))]

    @staticmethod
    def _settle(loc: _Local) -> None:
        if loc.pending:
            loc.pending = False
            loc.replicator.pending_opens -= 1

    def _soft_error(self, what: str) -> None:
        self._soft_errors += 1
        if self._soft_errors > MAX_SOFT_ERRORS:
            raise RemoteProtocolError(f"too many protocol errors; last: {what}")

    def _on_hello(self, msg: wire.Hello, now: float) -> None:
        if msg.nonce == self.nonce:
            raise RemoteProtocolError("hello: the peer echoed our nonce (a loop?)")
        self._remote_nonce = msg.nonce
        self.peer_features = msg.features & self.features
        if self._initiator is None:
            self._initiator = self.nonce < msg.nonce
        self.session_id = self._handshake_hash or caps.nonce_session_id(self.nonce, msg.nonce)
        self._now = now
        for loc in self._by_dk.values():
            self._open(loc)

    def on_timer(self, now: float) -> None:
        """Give up on opens the remote never answered (it may not speak for that log),
        and on channels it opened but sent no Sync on, `OPEN_TIMEOUT` after each."""
        self._now = now
        for loc in self._by_dk.values():
            if loc.pending and loc.opened_at is not None and loc.opened_at + OPEN_TIMEOUT <= now:
                self._settle(loc)
                loc.replicator.no_peer(
                    self.peer_id, f"the peer did not answer for the log within {OPEN_TIMEOUT:g} s"
                )
                loc.replicator.refresh(now)
            ch = loc.channel
            if (
                ch is not None
                and ch.awaiting_sync()
                and loc.linked_at is not None
                and loc.linked_at + OPEN_TIMEOUT <= now
            ):
                loc.replicator.sync_overdue(
                    ch, f"the peer opened the log but never synced in {OPEN_TIMEOUT:g} s", now
                )

    def next_deadline(self) -> float:
        """When `on_timer` has something to do (math.inf if never).

        Resets `deadline_hint`: the driver calls this (after every replicator's
        `next_deadline`) just before its timer goes to sleep.
        """
        self.deadline_hint = math.inf
        times = [
            loc.opened_at + OPEN_TIMEOUT
            for loc in self._by_dk.values()
            if loc.pending and loc.opened_at is not None
        ]
        times += [
            loc.linked_at + OPEN_TIMEOUT
            for loc in self._by_dk.values()
            if loc.linked_at is not None and loc.channel is not None and loc.channel.awaiting_sync()
        ]
        return min(times, default=math.inf)

    def _open(self, loc: _Local) -> None:
        if loc.opened:
            return
        loc.opened_at = self._now
        self.note_deadline(self._now + OPEN_TIMEOUT)
        assert self.session_id is not None and self._initiator is not None
        loc.opened = True
        cap = caps.capability(self.session_id, loc.replicator.view.key, initiator=self._initiator)
        self.send(wire.Open(loc.local_id, loc.replicator.view.discovery_key, cap))

    def _on_open(self, msg: wire.Open, now: float) -> None:
        assert self.session_id is not None and self._initiator is not None
        if msg.channel in self._by_remote or msg.channel in self._closed_remote:
            raise RemoteProtocolError(f"open: channel id {msg.channel} reused")
        loc = self._by_dk.get(msg.discovery_key)
        if loc is None:
            rep = self._resolve(msg.discovery_key) if self._resolve is not None else None
            if rep is None:
                self.ignored_opens += 1
                self._note_closed(msg.channel)
                self._soft_error("open for a log we do not have")
                self.send(wire.Reject(msg.channel, "unknown log"))
                return
            self.add_log(rep)
            loc = self._by_dk[msg.discovery_key]
        if loc.remote_id is not None:
            raise RemoteProtocolError("open: log opened twice")
        key = loc.replicator.view.key
        if not caps.check_capability(
            msg.capability, self.session_id, key, initiator=not self._initiator
        ):
            self.bad_capabilities += 1
            self._note_closed(msg.channel)
            self._soft_error("open: wrong capability")
            self.send(wire.Reject(msg.channel, "bad capability"))
            return
        self._open(loc)
        self._settle(loc)
        loc.remote_id = msg.channel
        self._by_remote[msg.channel] = loc
        loc.channel = PeerChannel(self, loc.local_id, msg.channel, self.peer_id)
        loc.channel.owner = loc.replicator
        loc.linked_at = now
        self.note_deadline(now + OPEN_TIMEOUT)  # its Sync is due (`on_timer`)
        loc.replicator.add_peer(loc.channel, now)
