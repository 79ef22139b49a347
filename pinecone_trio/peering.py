"""One peering's runtime: a reader and a writer task over a Noise link.

Theory of operation: a `Peering` exists from the moment a link's handshake succeeded
until the link ends. `Peering.run` owns one nursery with exactly two tasks:

- the **reader** pulls bytes from the link, cuts them into Pinecone frames (the 10-byte
  header says the total length), decodes each and hands it to the router task's inbox
  as a `FrameIn`. Any decode error ends the peering (research §3.1): a peer that sends
  garbage once is not trusted to frame correctly again. Going `READ_TIMEOUT` seconds
  without a byte ends it too (the other side sends keepalives when idle). Protocol
  frames are rate-limited per peering (a token bucket): a peer flooding announcements
  or bootstraps is cut off instead of eating the router's time.
- the **writer** waits for the router to queue frames (`PeerQueue`: protocol frames
  first, fair traffic with head drop), pops as many as fit in `WRITE_BATCH_BYTES`,
  encodes them and sends them in one `send_all`, so small frames share Noise messages.
  When nothing was sent for `KEEPALIVE_INTERVAL` it sends a keepalive.

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
from typing import Final

import trio

from .errors import DecodeError, RemoteProtocolError
from .identity import PublicKey
from .router.actions import FrameIn, Input, PeerType
from .router.constants import HEADER_SIZE
from .router.queues import PeerQueue, is_traffic
from .router.wire import KEEPALIVE, Frame, Keepalive, decode_frame, encode_frame, read_frame_length

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
#: Bytes of traffic payload queued per peering at most; beyond it new traffic frames
#: are dropped (and counted). This, not the frame counts, bounds a peering's memory.
PEER_QUEUE_BYTES: Final = 8 * 1024 * 1024
#: Protocol frames (announcements, bootstraps, keepalives ...) a peer may send per second
#: on average, and in one burst. Honest peers send a few per second; the snake's
#: bootstrap forwarding is about table_size / 5 per second.
PROTOCOL_FRAMES_PER_SECOND: Final = 2000.0
PROTOCOL_FRAMES_BURST: Final = 10000.0


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
        while self.used >= self.max_bytes or self.frames >= self.max_frames:
            await self._event.wait()
        self.used += size
        self.frames += 1

    def release(self, size: int) -> None:
        self.used = max(0, self.used - size)
        self.frames = max(0, self.frames - 1)
        if self.used < self.max_bytes and self.frames < self.max_frames:
            self._event.set()
            self._event = trio.Event()


class PeerFloodingError(RemoteProtocolError):
    """The peer sent protocol frames faster than `PROTOCOL_FRAMES_PER_SECOND`."""


@dataclass(slots=True)
class PeeringStatistics:
    bytes_in: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    frames_out: int = 0
    keepalives_out: int = 0


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
        inbox: trio.MemorySendChannel[Input],
        keepalives: bool = True,
        local_key: bytes = b"",
        budget: SendBudget | None = None,
        up: Input | None = None,
        on_end: Callable[[Peering], None] | None = None,
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
        self._cancel_scope = trio.CancelScope()
        self._ended = trio.Event()

    # --- called by the router task (synchronous) -------------------------------------

    def enqueue(self, frame: Frame) -> Frame | None:
        """Queue `frame` for sending; return the frame dropped to make room, if any.

        After the peering ended nothing is queued (nobody would ever pop it, and local
        traffic would hold its send budget forever): the frame itself is returned.
        """
        if self.closed:
            if is_traffic(frame):
                self._left(frame)
            return frame
        if is_traffic(frame):
            size = len(frame.payload)  # type: ignore[union-attr]
            if self.queued_bytes + size > PEER_QUEUE_BYTES:
                self.budget_drops += 1
                self._left(frame)
                return frame
            self.queued_bytes += size
        dropped = self.queue.push(frame)
        if dropped is not None and is_traffic(dropped):
            self.queued_bytes -= len(dropped.payload)  # type: ignore[union-attr]
            self._left(dropped)
        self._wakeup.set()
        return dropped

    def _left(self, frame: Frame) -> None:
        """A traffic frame left the queue (sent or dropped): release local budget."""
        if self._budget is not None and frame.source_key == self._local_key:  # type: ignore[union-attr]
            self._budget.release(len(frame.payload))  # type: ignore[union-attr]

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
        buf = bytearray()
        stats = self.statistics
        now = trio.current_time()
        bucket = _TokenBucket(PROTOCOL_FRAMES_PER_SECOND, PROTOCOL_FRAMES_BURST, now)
        inbox = self._inbox
        port = self.port
        # One cancel scope for the whole read loop; its deadline moves with every read
        # (cheaper than a scope per read). No data for READ_TIMEOUT ends the peering.
        deadline = trio.CancelScope()
        try:
            with deadline:
                await self._read_loop(buf, stats, bucket, deadline, inbox, port)
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
        self,
        buf: bytearray,
        stats: PeeringStatistics,
        bucket: _TokenBucket,
        deadline: trio.CancelScope,
        inbox: trio.MemorySendChannel[Input],
        port: int,
    ) -> None:
        while True:
            if self._keepalives:
                deadline.deadline = trio.current_time() + READ_TIMEOUT
            data = await self.link.receive_some(READ_SIZE)
            if not data:
                self._end("remote closed the link")
                return
            stats.bytes_in += len(data)
            buf += data
            start = 0
            end = len(buf)
            while end - start >= HEADER_SIZE:
                length = read_frame_length(bytes(buf[start : start + HEADER_SIZE]))
                if end - start < length:
                    break
                frame = decode_frame(bytes(buf[start : start + length]))
                start += length
                stats.frames_in += 1
                if type(frame) is Keepalive:
                    continue  # it only moved the read deadline
                if not is_traffic(frame) and not bucket.take(trio.current_time()):
                    raise PeerFloodingError("protocol frames faster than allowed")
                try:
                    inbox.send_nowait(FrameIn(port, frame))
                except trio.WouldBlock:
                    deadline.deadline = math.inf  # a busy router is not a silent peer
                    await inbox.send(FrameIn(port, frame))  # back-pressure
            del buf[:start]

    async def _writer(self) -> None:
        stats = self.statistics
        queue = self.queue
        last_send = trio.current_time()
        try:
            while True:
                if not queue:
                    self._wakeup = trio.Event()
                    if self._keepalives:
                        deadline = last_send + KEEPALIVE_INTERVAL
                        with trio.move_on_at(deadline):
                            await self._wakeup.wait()
                        if not queue:
                            if trio.current_time() < deadline:
                                continue
                            queue.push(KEEPALIVE)
                            stats.keepalives_out += 1
                    else:
                        await self._wakeup.wait()
                        continue
                parts: list[bytes] = []
                size = 0
                while size < WRITE_BATCH_BYTES:
                    frame = queue.pop()
                    if frame is None:
                        break
                    if is_traffic(frame):
                        self.queued_bytes -= len(frame.payload)  # type: ignore[union-attr]
                        self._left(frame)
                    encoded = encode_frame(frame)
                    parts.append(encoded)
                    size += len(encoded)
                if not parts:
                    continue
                with trio.move_on_after(WRITE_TIMEOUT) as timeout:
                    await self.link.send_all(b"".join(parts) if len(parts) > 1 else parts[0])
                if timeout.cancelled_caught:
                    self._end(f"write stuck for {WRITE_TIMEOUT:g} s")
                    return
                stats.frames_out += len(parts)
                stats.bytes_out += size
                last_send = trio.current_time()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._end(f"link broken: {exc or type(exc).__name__}")
        except Exception as exc:  # a bug or an odd link: end this peering, not the node
            logger.exception("writer of peer %s failed", self.public_key.short())
            self._end(f"internal error: {exc!r}")
