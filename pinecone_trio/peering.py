"""One peering's runtime: a reader and a writer task over a Noise link.

Theory of operation: a `Peering` exists from the moment a link's handshake succeeded
until the link ends. `Peering.run` owns one nursery with exactly two tasks:

- the **reader** pulls bytes from the link, cuts them into Pinecone frames (the 10-byte
  header says the total length) and decodes each straight from the receive buffer.
  Every frame one read produced goes to the router task's inbox as ONE item, a
  `FrameBatch`, which the router handles in one wakeup (frame by frame, in order, each
  as the engine's `FrameIn`): the per-item channel and scheduling cost is paid once per
  read, not once per frame. At most one batch per peering is in the inbox at a time
  (the reader waits for the router to take the previous one before handing over the
  next), so a peering holds at most about two reads' worth of frames in the node
  however busy the router is: back-pressure reaches the peer through TCP. Any decode
  error ends the peering (research §3.1): a peer that sends garbage once is not trusted
  to frame correctly again; the frames before the bad one in that read are still
  handed over, none after it. Going `READ_TIMEOUT` seconds without a byte ends it too
  (the other side sends keepalives when idle). Protocol frames are rate-limited per
  peering (`_ProtocolAllowance`, token buckets): beyond `PROTOCOL_FRAMES_PER_SECOND`
  they are dropped, so they cannot eat the router's time (signature checks), and a
  peer sending `PROTOCOL_FLOOD_FACTOR` times that is cut off as flooding.
- the **writer** waits for the router to queue frames (`PeerQueue`: protocol frames
  first, fair traffic with head drop), pops as many as fit in `WRITE_BATCH_BYTES`,
  encodes them into one list of parts and sends them joined in one `send_all`, so
  small frames share Noise messages and each payload is copied once. When nothing was
  sent for `KEEPALIVE_INTERVAL` it sends a keepalive.

Writing from the router task. A node passes its peerings one shared `flush_list`.
Then `enqueue` does not wake the writer: it puts the peering on that list, and the
router, once it has handled everything its wakeup brought (a whole batch of frames),
calls `write_queued()` on each listed peering. That pops and coalesces the queued
frames exactly as the writer would and, when the link can write without waiting
(`NoiseLink.try_send`: TCP, no write in progress, nothing left over), hands them to the
kernel there and then, in the router task: a packet costs no task switch, checkpoint or
cancel scope between the router and the socket, and still shares its write with the
other frames of the same pass. Whatever cannot go that way (a memory or WebSocket
link, a write still in progress, or what the kernel did not take at once and the link
keeps) wakes the writer, which sends it in order. The queue's discipline (protocol
frames first, fair traffic with head drop) is unchanged: both pop from it alike.

The router task is the only one that pushes onto the queue (synchronously, in
`enqueue`), and the writer the only one that pops, all in one thread: no locks.
`run` first puts the node's `PeerUp` into the router inbox (so the router knows the
port before any frame from it). Ending the peering (EOF, error, `close()` from the
node) cancels both tasks; then, synchronously and in this order, the peering refuses
further frames, empties its queue (returning local send budget), calls the node's
`on_end` (which unregisters it and tells the router `PeerDown`), and sets the event
`wait_ended` waits on; only then is the link closed (bounded, shielded). Nothing the
link or the peer does makes `run` raise: an unexpected error ends this peering only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import trio

from .errors import DecodeError, LocalProtocolError, RemoteProtocolError
from .identity import PublicKey
from .link.stream import NoiseLink
from .router.actions import Input, PeerType
from .router.constants import HEADER_SIZE
from .router.queues import PeerQueue, is_traffic
from .router.wire import (
    KEEPALIVE,
    ClosestTraffic,
    Coords,
    Frame,
    Keepalive,
    Traffic,
    decode_frame_at,
    encode_frame_parts,
    frame_length_at,
)

logger = logging.getLogger(__name__)

#: Send a keepalive when nothing was sent for this long (Pinecone: 3 s).
KEEPALIVE_INTERVAL: Final = 3.0
#: A peering that delivers no byte for this long is dead (Pinecone: 5 s).
READ_TIMEOUT: Final = 5.0
#: One `send_all` may take at most this long before the peering is declared stuck.
WRITE_TIMEOUT: Final = 10.0
#: The writer coalesces queued frames into one write of at most about this many bytes.
WRITE_BATCH_BYTES: Final = 256 * 1024
#: How long closing a link politely may take before it is simply dropped.
CLOSE_TIMEOUT: Final = 1.0
#: Bytes requested from the link per read.
READ_SIZE: Final = 256 * 1024
#: Frames per fair-queue flow. Pinecone keeps 16, which assumes a writer that drains
#: concurrently with every single routed frame. Our router handles its inbox in
#: batches (a coalesced 256 KiB read at a relay is ~250 frames of one flow), so a flow
#: must hold a whole batch or a relay would drop most of every burst.
PEER_FLOW_FRAMES: Final = 512
#: Bytes of traffic queued per peering at most (`_queued_size`: payload, coordinates
#: and the frame object); beyond it new traffic frames are dropped (and counted). This,
#: not the frame counts, bounds a peering's memory.
PEER_QUEUE_BYTES: Final = 8 * 1024 * 1024
#: What a queued traffic frame costs beyond its payload: the frame object and its keys,
#: and one pointer per coordinate (a frame with an empty payload and 1,336 one-byte
#: ports holds ~10 KB; counted as nothing, 130,000 of them fitted in the flow limits).
QUEUED_FRAME_OVERHEAD: Final = 256
_COORDINATE_SLOT: Final = 8
#: Protocol frames (announcements, bootstraps ...; not keepalives) a peer may have
#: processed per second on average, and in one burst; beyond that they are dropped
#: and counted (`protocol_dropped`), and the peer stays. Honest load is the bootstraps
#: crossing the link: measured in the simulator (2026-11-22), at most 207 in any one
#: second on any link up to 16,000 nodes, but about N / 20 per second on a single link
#: joining two halves of an N-node network (2,000/s at ~40,000 nodes).
PROTOCOL_FRAMES_PER_SECOND: Final = 2000.0
PROTOCOL_FRAMES_BURST: Final = 10000.0
#: A peer sending this many times the allowance is cut off as flooding
#: (`PeerFloodingError`): dropping costs a decode per frame, not a signature check.
PROTOCOL_FLOOD_FACTOR: Final = 5.0


class SendBudget:
    """Locally originated traffic waiting in peering queues, and senders waiting for room.

    Relayed traffic is dropped when a queue overflows (Pinecone's discipline: the
    sender's congestion control sees the loss). Traffic this node originates gets
    back-pressure instead, like a full socket buffer: `Node.send` waits in `acquire`
    while more than `max_bytes` or `max_frames` of it is queued, and the writer
    releases it as frames leave (or are dropped).
    """

    __slots__ = ("_event", "frames", "max_bytes", "max_frames", "used")

    def __init__(self, max_bytes: int, max_frames: int) -> None:
        self.max_bytes = max_bytes
        self.max_frames = max_frames
        self.used = 0
        self.frames = 0
        self._event = trio.Event()

    async def acquire(self, size: int) -> None:
        """Take room for one frame of `size` bytes, waiting while the budget is full."""
        while not self.try_acquire(size):
            await self._event.wait()

    def try_acquire(self, size: int) -> bool:
        """Take room for one frame of `size` bytes if the budget is not full; False
        (nothing taken) if it is."""
        if self.used >= self.max_bytes or self.frames >= self.max_frames:
            return False
        self.used += size
        self.frames += 1
        return True

    def release(self, size: int) -> None:
        self.used = max(0, self.used - size)
        self.frames = max(0, self.frames - 1)
        if self.used < self.max_bytes and self.frames < self.max_frames:
            self._event.set()
            self._event = trio.Event()


class FrameBatch:
    """Every frame one read from a peering produced, in order: one router inbox item.

    The router feeds them to the engine one by one (as `FrameIn(port, frame)`) in one
    wakeup, then calls `done()`, which lets the peering's reader hand over its next
    batch.
    """

    __slots__ = ("_owner", "frames", "port")

    def __init__(self, port: int, frames: list[Frame], owner: Peering | None = None) -> None:
        self.port = port
        self.frames = frames
        self._owner = owner

    def done(self) -> None:
        """The router has handled every frame (called by the router task)."""
        owner = self._owner
        if owner is not None:
            owner._batch_done()

    def __repr__(self) -> str:
        return f"FrameBatch(port={self.port}, frames={len(self.frames)})"


#: What the router task's inbox carries: the engine's inputs, and frame batches.
InboxItem = Input | FrameBatch


class PeerFloodingError(RemoteProtocolError):
    """The peer sent protocol frames faster than `PROTOCOL_FLOOD_FACTOR` times
    `PROTOCOL_FRAMES_PER_SECOND`."""


@dataclass(slots=True)
class PeeringStatistics:
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    keepalives_out: int = 0
    #: Frames dropped because they cannot be encoded (e.g. a full-size payload towards
    #: coordinates learnt from a forged, impossibly deep frame: over 65,535 bytes).
    unencodable_dropped: int = 0
    #: Protocol frames from the peer dropped beyond `PROTOCOL_FRAMES_PER_SECOND`.
    protocol_dropped: int = 0


def _queued_size(frame: Traffic | ClosestTraffic) -> int:
    """What `frame` counts against `PEER_QUEUE_BYTES` while queued."""
    coordinates = len(frame.source_coords)
    if type(frame) is Traffic:
        coordinates += len(frame.destination_coords)
    return len(frame.payload) + QUEUED_FRAME_OVERHEAD + _COORDINATE_SLOT * coordinates


class _ProtocolAllowance:
    """How many of a peer's protocol frames are processed: up to the allowance, the
    rest dropped; far beyond it, the peer is flooding."""

    __slots__ = ("_flood", "_processed")

    def __init__(self, now: float) -> None:
        self._processed = _TokenBucket(PROTOCOL_FRAMES_PER_SECOND, PROTOCOL_FRAMES_BURST, now)
        self._flood = _TokenBucket(
            PROTOCOL_FLOOD_FACTOR * PROTOCOL_FRAMES_PER_SECOND,
            PROTOCOL_FLOOD_FACTOR * PROTOCOL_FRAMES_BURST,
            now,
        )

    def admit(self, now: float) -> bool:
        """Whether to process one more frame (False: drop it).

        Raises:
            PeerFloodingError: the peer is far beyond its allowance.
        """
        if not self._flood.take(now):
            raise PeerFloodingError("protocol frames far faster than allowed")
        return self._processed.take(now)


class _TokenBucket:
    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = now

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Peering:
    """A live peering on router port `port` with `public_key`.

    Created by the node after the handshake; run with `await nursery.start(p.run)` or
    simply `await p.run()`; returns when the link ends, with `end_reason` set.
    """

    def __init__(
        self,
        *,
        link: trio.abc.Stream,
        port: int,
        public_key: PublicKey,
        uri: str,
        peer_type: PeerType,
        zone: str,
        outbound: bool,
        inbox: trio.MemorySendChannel[InboxItem],
        keepalives: bool = True,
        local_key: bytes = b"",
        budget: SendBudget | None = None,
        up: Input | None = None,
        on_end: Callable[[Peering], None] | None = None,
        flush_list: list[Peering] | None = None,
    ) -> None:
        self.link = link
        self.port = port
        self.public_key = public_key
        self.uri = uri
        self.peer_type = peer_type
        self.zone = zone
        self.outbound = outbound
        self.queue = PeerQueue(seed=port, flow_frames=PEER_FLOW_FRAMES)
        self.queued_bytes = 0
        self.budget_drops = 0
        self.statistics = PeeringStatistics()
        self.end_reason = "closed"
        #: Set when the peer broke the protocol (bad frame, flooding).
        self.misbehaved = False
        #: Set once the peering has ended: `enqueue` then drops at once.
        self.closed = False
        #: Set once `up` is in the router inbox (only then does the router need a
        #: `PeerDown` for this port).
        self.announced = False
        self.connected_at = trio.current_time()
        self._inbox = inbox
        self._keepalives = keepalives
        self._local_key = local_key
        self._budget = budget
        self._up = up
        self._on_end = on_end
        self._wakeup = trio.Event()
        #: The link, when it can write synchronously (`NoiseLink.try_send`).
        self._direct: NoiseLink | None = link if isinstance(link, NoiseLink) else None
        #: When the last bytes went to the link (keepalives are due KEEPALIVE_INTERVAL
        #: after it).
        self._last_send = self.connected_at
        #: Writes made by `write_queued` in the router's task, without the writer.
        self.direct_writes = 0
        #: Where `enqueue` lists this peering for the router's `write_queued` call
        #: (None: `enqueue` wakes the writer instead).
        self._flush_list = flush_list
        self._listed = False
        #: The writer task took frames off the queue and is still writing them.
        self._writing = False
        #: A batch of this peering's is in the router inbox, not handled yet.
        self._batch_pending = False
        #: Set (and replaced) when the router finishes a batch the reader waits on.
        self._batch_event: trio.Event | None = None
        self._cancel_scope = trio.CancelScope()
        self._ended = trio.Event()

    # --- called by the router task (synchronous) -------------------------------------

    def enqueue(self, frame: Frame) -> Frame | None:
        """Queue `frame` for sending; return the frame dropped to make room, if any.

        After the peering ended nothing is queued (nobody would ever pop it, and local
        traffic would hold its send budget forever): the frame itself is returned.
        """
        t = type(frame)
        traffic = t is Traffic or t is ClosestTraffic
        if self.closed:
            if traffic:
                self._left(frame)
            return frame
        if traffic:
            payload = frame.payload  # type: ignore[union-attr]
            size = _queued_size(frame)  # type: ignore[arg-type]
            if self.queued_bytes + size > PEER_QUEUE_BYTES:
                self.budget_drops += 1
                self._left(frame)
                return frame
            if type(payload) is memoryview:
                # A forwarded payload is a view of the buffer it was read into; a queued
                # one must not keep that whole buffer alive.
                frame = frame._replace(payload=bytes(payload))  # type: ignore[union-attr]
            self.queued_bytes += size
        dropped = self.queue.push(frame)
        if dropped is not None and is_traffic(dropped):
            self.queued_bytes -= _queued_size(dropped)  # type: ignore[arg-type]
            self._left(dropped)
        flush_list = self._flush_list
        if flush_list is None:
            self._wakeup.set()
        elif not self._listed:
            self._listed = True
            flush_list.append(self)
        return dropped

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written: no frame taken by the writer task
        still on its way to the link, no write pending on the link."""
        direct = self._direct
        return not self.queue and not self._writing and (direct is None or not direct.send_pending)

    def write_queued(self) -> None:
        """Write the queued frames now, in the caller's task, if the link can (called by
        the node's router task for each peering on its `flush_list`); otherwise, and for
        whatever is left, wake the writer."""
        self._listed = False
        direct = self._direct
        queue = self.queue
        if direct is not None and not self.closed:
            while queue and direct.can_try_send:  # each pass pops at least one frame
                data, size, count = self._take_batch()
                if count:
                    direct.try_send(data)
                    self.statistics.frames_out += count
                    self.statistics.bytes_out += size
                    self.direct_writes += 1
                    self._last_send = trio.current_time()
            if not queue and not direct.send_pending and not direct.broken:
                return
        self._wakeup.set()

    def _take_batch(self) -> tuple[bytes, int, int]:
        """Pop queued frames up to about `WRITE_BATCH_BYTES` and encode them into one
        write: (bytes, encoded size, frames). Frames that cannot be encoded are dropped
        and counted."""
        pop = self.queue.pop
        parts: list[bytes | memoryview] = []
        size = 0
        count = 0
        while size < WRITE_BATCH_BYTES:
            frame = pop()
            if frame is None:
                break
            t = type(frame)
            if t is Traffic or t is ClosestTraffic:
                self.queued_bytes -= _queued_size(frame)  # type: ignore[arg-type]
                self._left(frame)
            try:
                size += encode_frame_parts(frame, parts)
            except LocalProtocolError as exc:
                # Drop the frame, not the peering (nothing was appended yet).
                self.statistics.unencodable_dropped += 1
                logger.debug("frame to %s dropped: %s", self.public_key.short(), exc)
                continue
            count += 1
        return b"".join(parts), size, count

    def _left(self, frame: Frame) -> None:
        """A traffic frame left the queue (sent or dropped): release local budget."""
        if self._budget is not None and frame.source_key == self._local_key:  # type: ignore[union-attr]
            self._budget.release(len(frame.payload))  # type: ignore[union-attr]

    def _batch_done(self) -> None:
        self._batch_pending = False
        event = self._batch_event
        if event is not None:
            self._batch_event = None
            event.set()

    def status(self, now: float, coords: Coords | None) -> dict[str, Any]:
        """This peering's part of `Node.status()` (JSON-ready); `coords` are the
        peer's tree coordinates as the router knows them."""
        stats = self.statistics
        queue_stats = self.queue.stats
        return {
            "public_key": self.public_key.hex(),
            "uri": self.uri,
            "port": self.port,
            "type": self.peer_type.name.lower(),
            "zone": self.zone,
            "outbound": self.outbound,
            "coords": list(coords) if coords is not None else None,
            "bytes_in": stats.bytes_in,
            "bytes_out": stats.bytes_out,
            "frames_in": stats.frames_in,
            "frames_out": stats.frames_out,
            "queue_len": len(self.queue),
            "queue_drops": queue_stats.dropped_traffic + queue_stats.dropped_protocol,
            "unencodable_dropped": stats.unencodable_dropped,
            "protocol_dropped": stats.protocol_dropped,
            "connected_s": round(now - self.connected_at, 3),
        }

    def close(self, reason: str) -> None:
        """End the peering (idempotent); `run` returns soon after."""
        if not self._cancel_scope.cancel_called:
            self.end_reason = reason
            self._cancel_scope.cancel()

    # --- runtime ----------------------------------------------------------------------

    async def wait_ended(self) -> None:
        await self._ended.wait()

    async def run(self) -> None:
        """Run the reader and writer until the link ends or `close` is called.

        Never raises for anything the link or the peer does: an unexpected error ends
        this peering only (logged), never the node. First sends `up` (if given) to the
        router inbox, so the router hears of the port before any of its frames; on the
        way out calls `on_end(self)` synchronously, before `wait_ended` returns.
        """
        try:
            with self._cancel_scope:
                if self._up is not None:
                    await self._inbox.send(self._up)
                    self.announced = True
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._reader)
                    nursery.start_soon(self._writer)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._end("the node is stopping")  # the router inbox is gone
        finally:
            self.closed = True
            while (frame := self.queue.pop()) is not None:
                if is_traffic(frame):
                    self._left(frame)
            self.queued_bytes = 0
            if self._on_end is not None:
                self._on_end(self)
            self._ended.set()
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_TIMEOUT):
                if self.misbehaved:
                    await trio.aclose_forcefully(self.link)
                else:
                    await self.link.aclose()  # polite: the peer sees a clean end

    def _end(self, reason: str) -> None:
        self.close(reason)

    async def _reader(self) -> None:
        stats = self.statistics
        now = trio.current_time()
        bucket = _ProtocolAllowance(now)
        # One cancel scope for the whole read loop; its deadline moves with every read
        # (cheaper than a scope per read). No data for READ_TIMEOUT ends the peering.
        deadline = trio.CancelScope()
        try:
            with deadline:
                await self._read_loop(stats, bucket, deadline)
            if deadline.cancelled_caught:
                self._end(f"no data for {READ_TIMEOUT:g} s")
        except (DecodeError, RemoteProtocolError) as exc:
            logger.info("peer %s misbehaved: %s", self.public_key.short(), exc)
            self.misbehaved = True
            self._end(f"misbehaving: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._end(f"link broken: {exc or type(exc).__name__}")
        except Exception as exc:  # a bug or an odd link: end this peering, not the node
            logger.exception("reader of peer %s failed", self.public_key.short())
            self._end(f"internal error: {exc!r}")

    async def _read_loop(
        self, stats: PeeringStatistics, bucket: _ProtocolAllowance, deadline: trio.CancelScope
    ) -> None:
        rest: bytes | bytearray = b""  # the start of a frame the previous read cut off
        keepalives = self._keepalives
        receive_some = self.link.receive_some
        while True:
            if keepalives:
                deadline.deadline = trio.current_time() + READ_TIMEOUT
            data = await receive_some(READ_SIZE)
            if not data:
                if rest:  # a clean close in the middle of a frame: say what was lost
                    self._end(f"remote closed the link inside a frame ({len(rest)} bytes lost)")
                else:
                    self._end("remote closed the link")
                return
            stats.bytes_in += len(data)
            # Frames are decoded from `data` by offset, traffic payloads as views of it
            # (the link hands over each buffer and never writes to it again). A frame
            # the previous read cut off is completed with just the bytes it lacks: one
            # frame copied, not the whole read.
            frames: list[Frame] = []
            start = 0
            try:
                if rest:
                    need = self._bytes_to_complete(rest, data)
                    if need < 0 or need > len(data):
                        rest = rest + data  # that frame goes on past this read too
                        continue
                    self._cut_frames(rest + data[:need], 0, frames, stats, bucket)
                    start = need
                start = self._cut_frames(data, start, frames, stats, bucket)
            except (DecodeError, RemoteProtocolError):
                if frames:  # what came before the bad frame is still good
                    await self._hand_over(frames, deadline)
                raise
            rest = data[start:] if start < len(data) else b""
            if frames:
                await self._hand_over(frames, deadline)

    @staticmethod
    def _bytes_to_complete(rest: bytes | bytearray, data: bytes | bytearray) -> int:
        """How many bytes of `data` complete the frame that `rest` starts; -1 while
        even its header is incomplete.

        Raises:
            DecodeError: for a malformed frame header.
        """
        if len(rest) >= HEADER_SIZE:
            return frame_length_at(rest, 0) - len(rest)
        head = rest + data[: HEADER_SIZE - len(rest)]
        if len(head) < HEADER_SIZE:
            return -1
        return frame_length_at(head, 0) - len(rest)

    @staticmethod
    def _cut_frames(
        data: bytes | bytearray,
        start: int,
        frames: list[Frame],
        stats: PeeringStatistics,
        bucket: _ProtocolAllowance,
    ) -> int:
        """Decode the whole frames in `data[start:]` into `frames`; return where the
        rest starts.

        Raises:
            DecodeError: for a malformed frame (the frames before it are in `frames`).
            PeerFloodingError: for a peer far beyond its protocol frame allowance.
        """
        end = len(data)
        append = frames.append
        while end - start >= HEADER_SIZE:
            stop = start + frame_length_at(data, start)
            if stop > end:
                break
            frame = decode_frame_at(data, start, stop)
            start = stop
            stats.frames_in += 1
            t = type(frame)
            if t is Traffic or t is ClosestTraffic:
                append(frame)
            elif t is Keepalive:
                continue  # it only moved the read deadline
            elif bucket.admit(trio.current_time()):
                append(frame)
            else:
                stats.protocol_dropped += 1  # over the allowance: the peer stays
        return start

    async def _hand_over(self, frames: list[Frame], deadline: trio.CancelScope) -> None:
        """Put `frames` into the router inbox as one batch, after the previous one."""
        if self._batch_pending:
            # The router has not finished our previous batch: wait for it (and do not
            # count the wait against the peer: a busy router is not a silent peer).
            deadline.deadline = math.inf
            while self._batch_pending:
                event = self._batch_event
                if event is None:
                    event = self._batch_event = trio.Event()
                await event.wait()
        batch = FrameBatch(self.port, frames, self)
        self._batch_pending = True
        try:
            self._inbox.send_nowait(batch)
        except trio.WouldBlock:
            deadline.deadline = math.inf
            try:
                await self._inbox.send(batch)  # back-pressure
            except BaseException:
                self._batch_pending = False
                raise
        except BaseException:
            self._batch_pending = False
            raise

    async def _writer(self) -> None:
        stats = self.statistics
        queue = self.queue
        direct = self._direct
        self._last_send = trio.current_time()
        try:
            while True:
                if not queue:
                    if direct is not None and (direct.send_pending or direct.broken):
                        # The rest of a write `enqueue` made; frames queue behind it.
                        with trio.move_on_after(WRITE_TIMEOUT) as timeout:
                            await direct.flush()  # raises if the link broke
                        if timeout.cancelled_caught:
                            self._end(f"write stuck for {WRITE_TIMEOUT:g} s")
                            return
                        self._last_send = trio.current_time()
                        continue
                    self._wakeup = trio.Event()
                    if self._keepalives:
                        deadline = self._last_send + KEEPALIVE_INTERVAL
                        with trio.move_on_at(deadline):
                            await self._wakeup.wait()
                        if not queue:
                            if trio.current_time() < self._last_send + KEEPALIVE_INTERVAL:
                                continue
                            queue.push(KEEPALIVE)
                            stats.keepalives_out += 1
                    else:
                        await self._wakeup.wait()
                        continue
                data, size, count = self._take_batch()
                if not count:
                    continue
                self._writing = True  # off the queue, not on the link yet: not idle
                try:
                    with trio.move_on_after(WRITE_TIMEOUT) as timeout:
                        await self.link.send_all(data)
                finally:
                    self._writing = False
                if timeout.cancelled_caught:
                    self._end(f"write stuck for {WRITE_TIMEOUT:g} s")
                    return
                stats.frames_out += count
                stats.bytes_out += size
                self._last_send = trio.current_time()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._end(f"link broken: {exc or type(exc).__name__}")
        except Exception as exc:  # a bug or an odd link: end this peering, not the node
            logger.exception("writer of peer %s failed", self.public_key.short())
            self._end(f"internal error: {exc!r}")
