"""The serving side of `LogReplicator`: answering what a peer asks of us (no trio).

A peer's Request or RangeRequest is checked against what we hold (fork, length,
have-bits, frame size) and refused at once with a NoData, or queued as `ServeWork`;
the driver builds the proof and hands it back to `on_served`, which sends it. A Want
is answered at once with Range and Bitfield chunks, and `_send_sync` tells a peer our
head (and, to a peer that reads it, our tree hash). A frozen log (a fork conflict)
refuses every request but one for its whole signed tree, so a peer holding the other
history can find the conflict too. A peer with more than `MAX_PENDING_SERVES`
requests unanswered is dropped. Nothing here changes what we fetch.
"""

from __future__ import annotations

from hyperlog import flat_tree, wire
from hyperlog.errors import RemoteProtocolError
from hyperlog.replication.constants import MAX_PENDING_SERVES, MAX_WANT_SPAN
from hyperlog.replication.ranges import MAX_RANGE_VALUE_BYTES, subtree_bytes
from hyperlog.replication.scheduler_base import ReplicatorBase
from hyperlog.replication.scheduler_state import PeerChannel, ServeWork


class ServeMixin(ReplicatorBase):
    """`LogReplicator`'s serving side (see the module docstring)."""

    def _on_request(self, ch: PeerChannel, msg: wire.Request) -> None:
        if ch.sink.pending_serves() >= MAX_PENDING_SERVES:
            raise RemoteProtocolError(f"more than {MAX_PENDING_SERVES} requests unanswered")
        if msg.fork != self.view.fork or (self.frozen is not None and not _whole_tree(msg)):
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
        size = subtree_bytes(self.view, msg.node)
        if size is not None and size > MAX_RANGE_VALUE_BYTES:
            # Its answer would not fit in a frame (big blocks in the span, or a peer
            # asking for too much): refuse before reading anything; the requester
            # fetches these blocks one by one.
            ch.sink.send(wire.NoData(ch.local_id, msg.id, wire.NO_DATA_INVALID))
            return
        ch.sink.add_work(ServeWork(ch, msg))

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
            # Refused after a fork change during the serve (a truncation while a range
            # was read): say so, or the peer takes it for "we lack the block".
            moved = request.fork != self.view.fork
            reason = wire.NO_DATA_FORK if moved else wire.NO_DATA_NOT_AVAILABLE
            ch.sink.send(wire.NoData(ch.local_id, request.id, reason))
        elif (
            isinstance(data, wire.RangeData) and sum(map(len, data.values)) > MAX_RANGE_VALUE_BYTES
        ):
            # Too big for one frame (a view without node sizes could not refuse it
            # earlier): encoding it would fail, so refuse as `_on_range_request` does.
            ch.sink.send(wire.NoData(ch.local_id, request.id, wire.NO_DATA_INVALID))
        else:
            ch.sink.send(data)

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

    def _send_sync(self, ch: PeerChannel) -> None:
        v = self.view
        tree = None
        if self.trees is not None and ch.sink.peer_features & wire.FEATURE_FORK_CHECK:
            tree = self.trees.tree_hash_at(v.length)  # cached by the log's tree
        ch.sink.send(
            wire.Sync(
                ch.local_id,
                v.fork,
                v.length,
                ch.remote_length,
                can_upgrade=v.length > 0,
                tree_hash=tree,
            )
        )


def _whole_tree(msg: wire.Request) -> bool:
    """Whether `msg` asks only for our whole signed tree (an upgrade from 0): what a
    peer checking for a fork conflict asks. A frozen log still answers it, so a peer
    holding the other history finds the conflict too; it serves nothing else."""
    up = msg.upgrade
    return (
        up is not None
        and up.start == 0
        and msg.block is None
        and msg.hash is None
        and msg.seek is None
    )
