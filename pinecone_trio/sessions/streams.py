"""Per-stream state: the send buffer with retransmission ranges, and reassembly.

Theory of operation. A stream is two independent halves, as in QUIC.

`SendSide` keeps every byte the application wrote and the peer has not acknowledged,
in one `bytearray` starting at stream offset `base`. Fresh data goes out from
`next_offset`; bytes declared lost go into `retransmit` and are sent again before fresh
data (from the same buffer: data is re-sent, packets are not). Acknowledged ranges
accumulate in `acked`; when they cover the front of the buffer it is trimmed. The FIN is
a flag on the last STREAM frame and is retransmitted like data. The peer's credit
(`max_data`, from MAX_STREAM_DATA) limits fresh data only.

`RecvSide` appends in-order bytes to `buffer` (what `receive_some` hands out) and keeps
out-of-order segments in a dict keyed by offset, with a heap of offsets, until the gap
before them fills. Overlapping and duplicate segments are trimmed, so a retransmission
that re-cut the data differently still delivers each byte exactly once. The peer may
not send beyond the credit we advertised (`limit`) nor change a stream's final size:
either raises `RemoteProtocolError`, which closes the session.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, bisect_right
from collections import deque
from typing import final

from ..errors import RemoteProtocolError

#: A write at least this large is kept as its own chunk (sent without copying).
_BIG_WRITE = 16 * 1024
#: Small writes are coalesced into a tail chunk up to this size.
_TAIL_LIMIT = 64 * 1024
#: A read whose first in-order chunk is at least this large returns that chunk alone,
#: as it arrived (copying a packet's worth costs more than another read call).
_READ_JOIN_BELOW = 16 * 1024


@final
class RangeSet:
    """Disjoint, sorted half-open integer ranges `[start, end)`."""

    __slots__ = ("_ends", "_starts")

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __len__(self) -> int:
        return len(self._starts)

    def first(self) -> tuple[int, int]:
        return self._starts[0], self._ends[0]

    def add(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        i = bisect_left(ends, start)
        j = bisect_right(starts, end)
        if i == j:
            starts.insert(i, start)
            ends.insert(i, end)
            return
        start = min(start, starts[i])
        end = max(end, ends[j - 1])
        starts[i:j] = [start]
        ends[i:j] = [end]

    def remove(self, start: int, end: int) -> None:
        if start >= end:
            return
        starts, ends = self._starts, self._ends
        i = bisect_right(ends, start)
        j = bisect_left(starts, end)
        if i >= j:
            return
        new_starts: list[int] = []
        new_ends: list[int] = []
        if starts[i] < start:
            new_starts.append(starts[i])
            new_ends.append(start)
        if ends[j - 1] > end:
            new_starts.append(end)
            new_ends.append(ends[j - 1])
        starts[i:j] = new_starts
        ends[i:j] = new_ends

    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self._starts, self._ends, strict=True))

    def gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of `[start, end)` that no range covers, in order."""
        starts, ends = self._starts, self._ends
        out: list[tuple[int, int]] = []
        i = bisect_right(ends, start)
        while start < end:
            if i >= len(starts) or starts[i] >= end:
                out.append((start, end))
                break
            if starts[i] > start:
                out.append((start, starts[i]))
            start = max(start, ends[i])
            i += 1
        return out


@final
class SendSide:
    """What one stream still has to send, or to get acknowledged."""

    __slots__ = (
        "_chunks",
        "_head",
        "_starts",
        "acked",
        "base",
        "capacity",
        "fin_acked",
        "fin_offset",
        "fin_sent",
        "max_data",
        "next_offset",
        "reset_code",
        "retransmit",
        "stop_code",
        "write_offset",
    )

    def __init__(self, capacity: int, max_data: int) -> None:
        # The unacknowledged bytes, as chunks in offset order: large writes are kept as
        # they came (sending a whole chunk copies nothing); small ones are coalesced
        # into a growing bytearray tail. `_head` is the first live chunk.
        self._chunks: list[bytes | bytearray] = []
        self._starts: list[int] = []
        self._head = 0
        self.base = 0  # offset of the first byte not yet acknowledged
        self.write_offset = 0  # offset of the next byte the application writes
        self.next_offset = 0
        self.capacity = capacity
        self.max_data = max_data
        self.acked = RangeSet()
        self.retransmit = RangeSet()
        self.fin_offset: int | None = None
        self.fin_sent = False
        self.fin_acked = False
        self.reset_code: int | None = None  # we reset this half
        self.stop_code: int | None = None  # the peer asked us to stop (STOP_SENDING)

    @property
    def buffered(self) -> int:
        return self.write_offset - self.base

    def space(self) -> int:
        return max(0, self.capacity - (self.write_offset - self.base))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = min(len(data), self.space())
        if not n:
            return 0
        chunks = self._chunks
        if n >= _BIG_WRITE:
            whole = data.obj if type(data) is memoryview else data
            if type(whole) is bytes and len(whole) == n and len(data) == n:
                chunks.append(whole)  # immutable and complete: keep it, copy nothing
            else:
                chunks.append(bytes(data[:n]))
            self._starts.append(self.write_offset)
        else:
            tail = chunks[-1] if len(chunks) > self._head else None
            if type(tail) is bytearray and len(tail) < _TAIL_LIMIT:
                tail += data[:n]
            else:
                chunks.append(bytearray(data[:n]))
                self._starts.append(self.write_offset)
        self.write_offset += n
        return n

    def _slice(self, start: int, end: int) -> bytes | memoryview:
        """Bytes `[start, end)` of the buffer, copied only when they must be.

        A range inside one immutable chunk comes back as a view of it (the packet
        encoder copies it once, into the packet); a range across chunks is joined from
        views (one copy); a range of a growing `bytearray` tail is copied, since a view
        would pin the tail's size.
        """
        if start >= end:
            return b""
        starts, chunks = self._starts, self._chunks
        i = bisect_right(starts, start, self._head) - 1
        chunk = chunks[i]
        offset = start - starts[i]
        if end - starts[i] <= len(chunk):
            if type(chunk) is bytes:
                if offset == 0 and end - start == len(chunk):
                    return chunk
                return memoryview(chunk)[offset : end - starts[i]]
            with memoryview(chunk) as view:
                return bytes(view[offset : end - starts[i]])
        pieces: list[memoryview] = []
        try:
            while start < end:
                chunk = chunks[i]
                offset = start - starts[i]
                take = min(len(chunk) - offset, end - start)
                pieces.append(memoryview(chunk)[offset : offset + take])
                start += take
                i += 1
            return b"".join(pieces)
        finally:
            for piece in pieces:
                piece.release()

    def _trim(self, offset: int) -> None:
        """Forget the bytes before `offset` (all acknowledged)."""
        self.base = offset
        starts, chunks = self._starts, self._chunks
        head = self._head
        while head < len(chunks) - 1 and starts[head + 1] <= offset:
            chunks[head] = b""
            head += 1
        if head == len(chunks) - 1 and offset >= starts[head] + len(chunks[head]):
            chunks[head] = b""
            head += 1
        if head > 64 and head * 2 > len(chunks):
            del chunks[:head], starts[:head]
            head = 0
        self._head = head

    def finish(self) -> None:
        if self.fin_offset is None:
            self.fin_offset = self.write_offset

    @property
    def done(self) -> bool:
        """Nothing more will ever be sent: every byte and the FIN acknowledged (QUIC's
        "Data Recvd"; an acknowledged FIN alone is not enough while an earlier packet
        may still be lost), or the half abandoned."""
        if self.reset_code is not None or self.stop_code is not None:
            return True
        return self.fin_acked and self.fin_offset is not None and self.base >= self.fin_offset

    def has_fresh(self) -> bool:
        return self.next_offset < self.write_offset and self.next_offset < self.max_data

    def wants_to_send(self) -> bool:
        if self.reset_code is not None or self.stop_code is not None:
            return False
        if self.retransmit or self.has_fresh():
            return True
        return (
            self.fin_offset is not None
            and not self.fin_sent
            and self.next_offset == self.fin_offset
        )

    def _pieces(self, start: int, end: int) -> bytes | memoryview | list[bytes | memoryview]:
        """Like `_slice`, but a range across chunks comes back as a list of pieces
        (views of immutable chunks, copies of a growing tail) for the encoder to join
        straight into the plaintext: one copy of the data instead of two."""
        starts, chunks = self._starts, self._chunks
        i = bisect_right(starts, start, self._head) - 1
        if start >= end or end - starts[i] <= len(chunks[i]):
            return self._slice(start, end)
        pieces: list[bytes | memoryview] = []
        while start < end:
            chunk = chunks[i]
            offset = start - starts[i]
            take = min(len(chunk) - offset, end - start)
            if type(chunk) is bytes:
                pieces.append(memoryview(chunk)[offset : offset + take])
            else:
                with memoryview(chunk) as view:
                    pieces.append(bytes(view[offset : offset + take]))
            start += take
            i += 1
        return pieces

    def next_chunk(
        self, budget: int, session_credit: int, *, pieces: bool = False
    ) -> tuple[int, bytes | memoryview | list[bytes | memoryview], bool, int]:
        """The next range to put in a packet: (offset, data, fin, fresh bytes used).

        Retransmissions come first and never consume credit. Returns an empty, non-fin
        chunk if nothing fits. With `pieces`, a range across chunks comes back as a list
        (see `_pieces`; `wire.encode_payload` takes it as a last STREAM frame's data).
        """
        cut = self._pieces if pieces else self._slice
        if self.retransmit:
            start, end = self.retransmit.first()
            end = min(end, start + budget)
            self.retransmit.remove(start, end)
            start = max(start, self.base)
            data = cut(start, end) if start < end else b""
            fin = self.fin_offset is not None and end == self.fin_offset
            if fin:
                self.fin_sent = True
            return start, data, fin, 0
        start = self.next_offset
        end = min(self.write_offset, self.max_data, start + budget, start + session_credit)
        end = max(end, start)
        data = cut(start, end)
        self.next_offset = end
        fin = self.fin_offset is not None and end == self.fin_offset
        if fin:
            self.fin_sent = True
        return start, data, fin, end - start

    def on_acked(self, offset: int, length: int, fin: bool) -> None:
        end = offset + length
        if fin:
            self.fin_acked = True
        start = max(offset, self.base)  # a late ACK of bytes already trimmed
        if start < end:
            self.retransmit.remove(start, end)
            self.acked.add(start, end)
            if self.acked:
                start, stop = self.acked.first()
                if start <= self.base < stop:
                    self.acked.remove(start, stop)
                    self._trim(stop)

    def on_lost(self, offset: int, length: int, fin: bool) -> None:
        if self.reset_code is not None or self.stop_code is not None:
            return
        start = max(offset, self.base)
        end = offset + length
        if start < end:
            # Bytes acknowledged meanwhile (a spurious loss) are not re-sent.
            self.retransmit.add(start, end)
            for a_start, a_end in self.acked.ranges():
                if a_start >= end:
                    break
                self.retransmit.remove(a_start, a_end)
        if fin and not self.fin_acked:
            self.fin_sent = False


@final
class RecvSide:
    """Reassembly and flow control for what the peer sends on one stream."""

    __slots__ = (
        "_chunks",
        "_heap",
        "_held",
        "_pending",
        "buffered",
        "fin_offset",
        "highest",
        "limit",
        "read_offset",
        "reset_code",
        "stopped",
        "window",
    )

    def __init__(self, window: int) -> None:
        # In-order bytes not yet read, as the chunks they arrived in (reads that take a
        # whole chunk copy nothing).
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self.read_offset = 0
        self.highest = 0
        self.window = window
        self.limit = window
        self.fin_offset: int | None = None
        self.reset_code: int | None = None
        self.stopped = False  # we told the peer to stop (the application closed)
        # Out-of-order data: disjoint pieces by offset (`_held` says which offsets they
        # cover, so overlapping segments are stored once: at most the window).
        self._pending: dict[int, bytes] = {}
        self._heap: list[int] = []
        self._held = RangeSet()

    @property
    def contiguous(self) -> int:
        return self.read_offset + self.buffered

    @property
    def eof(self) -> bool:
        """Everything up to the FIN has been received (not necessarily read)."""
        return self.fin_offset is not None and self.contiguous == self.fin_offset

    @property
    def done(self) -> bool:
        """Nothing more for the application: reset, stopped, or read to the FIN."""
        return self.reset_code is not None or self.stopped or (self.eof and not self.buffered)

    @property
    def settled(self) -> bool:
        """`done`, and the final size is known, so every byte the peer will ever send
        on this stream has been counted against the session's credit: the stream may be
        forgotten. (A stopped stream waits for the peer's RESET_STREAM or FIN.)"""
        return self.fin_offset is not None and self.done

    def abandon(self) -> int:
        """Drop what is buffered and count everything up to the highest offset as
        consumed; return how many bytes that newly counts. From here on `read_offset`
        follows `highest` (see `on_data`)."""
        gained = self.highest - self.read_offset
        self.read_offset = self.highest
        self._chunks.clear()
        self.buffered = 0
        self._pending.clear()
        self._heap.clear()
        self._held = RangeSet()
        return gained

    def on_data(self, offset: int, data: bytes, fin: bool) -> int:
        """Take a STREAM frame; returns how far the highest offset advanced.

        Raises:
            RemoteProtocolError: data beyond our credit or past/contradicting the FIN.
        """
        end = offset + len(data)
        if end > self.limit:
            raise RemoteProtocolError(
                f"stream data up to offset {end} exceeds the credit of {self.limit}"
            )
        final = self.fin_offset
        if final is not None and (end > final or (fin and end != final)):
            raise RemoteProtocolError("stream data contradicts the stream's final size")
        if fin:
            if end < self.highest:
                raise RemoteProtocolError("final size below data already received")
            self.fin_offset = end
        advanced = max(0, end - self.highest)
        self.highest += advanced
        if self.reset_code is not None or self.stopped:
            self.read_offset = self.highest  # counted as consumed on arrival (caller)
            return advanced
        contiguous = self.contiguous
        if offset <= contiguous:
            if end > contiguous:
                self._append(data[contiguous - offset :] if offset < contiguous else data)
                if self._heap:
                    self._drain()
        else:
            # Keep only what no held piece covers yet: a peer re-sending overlapping
            # ranges at shifting offsets cannot make us hold more than the window.
            held = self._held
            pending = self._pending
            for a, b in held.gaps(offset, end):
                pending[a] = data if a == offset and b == end else data[a - offset : b - offset]
                heapq.heappush(self._heap, a)
            held.add(offset, end)
        return advanced

    def _append(self, data: bytes) -> None:
        self._chunks.append(data)
        self.buffered += len(data)

    def _drain(self) -> None:
        heap, pending = self._heap, self._pending
        while heap and heap[0] <= self.contiguous:
            offset = heapq.heappop(heap)
            data = pending.pop(offset)
            contiguous = self.contiguous
            end = offset + len(data)
            if end > contiguous:
                self._append(data[contiguous - offset :])
        self._held.remove(0, self.contiguous)

    def read(self, max_bytes: int) -> bytes:
        chunks = self._chunks
        if not chunks:
            return b""
        first = chunks[0]
        if len(first) <= max_bytes:
            chunks.popleft()
            # Join small chunks up to the limit; a big first chunk goes out as it is
            # (no copy: bulk readers get one packet's worth per call).
            if (
                len(first) < _READ_JOIN_BELOW
                and chunks
                and len(chunks[0]) + len(first) <= max_bytes
            ):
                pieces = [first]
                size = len(first)
                while chunks and size + len(chunks[0]) <= max_bytes:
                    chunk = chunks.popleft()
                    pieces.append(chunk)
                    size += len(chunk)
                first = b"".join(pieces)
            data = first
        else:
            data = first[:max_bytes]
            chunks[0] = first[max_bytes:]
        self.buffered -= len(data)
        self.read_offset += len(data)
        return data

    def discard(self) -> None:
        """Drop what was received but not read (a refused stream)."""
        self.read_offset += self.buffered
        self._chunks.clear()
        self.buffered = 0
        self._pending.clear()
        self._heap.clear()
        self._held = RangeSet()

    def window_update(self) -> int | None:
        """A new credit to advertise, once the reader consumed half the window."""
        if self.fin_offset is not None or self.reset_code is not None or self.stopped:
            return None
        if self.limit - self.read_offset <= self.window // 2:
            self.limit = self.read_offset + self.window
            return self.limit
        return None
