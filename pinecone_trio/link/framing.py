"""Sans-IO length-prefix framing: `2-byte big-endian length || message`.

Theory of operation
-------------------
`FrameDecoder` takes bytes as they arrive (`receive_data`) and hands out whole frames
(`next_frame`), never more than `max_frame_size` bytes each; the limit is checked as
soon as the 2-byte prefix is in, before any of the frame is buffered, and can be changed
between frames (small during the handshake, Noise's maximum afterwards).

It is built for throughput: while frames lie wholly inside one received chunk, they
are returned as zero-copy `memoryview` slices of that immutable `bytes` chunk; only a
frame that spans chunks is assembled in a `bytearray` (one copy), and appends to it are
amortised O(1), so a peer dribbling one byte at a time costs linear, not quadratic,
work. If the caller drains frames after each `receive_data`, at most one partial frame
plus one chunk is buffered.

At end of input the caller asks `buffered`: a non-zero value means the stream ended
inside a frame (`TruncatedFrame`, raised by `check_eof`).

`FrameBuffer` is the same decoder for callers that can read straight into memory (a
socket's `readv`): it owns one fixed `bytearray`, lends its free tail (`writable`) to
the reader, and returns frames as views of it. Nothing is allocated or copied per read;
only the unfinished frame (under 64 KiB) is moved to the front when the tail gets too
short to hold a whole frame. The views are valid until the next `writable` call.
"""

from __future__ import annotations

from typing import final

from ..errors import FrameTooLarge, LocalProtocolError, TruncatedFrame
from .constants import LENGTH_PREFIX_SIZE, MAX_MESSAGE_SIZE


def encode_frame(message: bytes | bytearray | memoryview) -> bytes:
    """`message` with its 2-byte big-endian length prefix.

    Raises:
        LocalProtocolError: if the message is longer than `MAX_MESSAGE_SIZE`.
    """
    if len(message) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(f"a frame holds at most {MAX_MESSAGE_SIZE} bytes")
    return len(message).to_bytes(LENGTH_PREFIX_SIZE, "big") + message


_EMPTY = memoryview(b"")
#: The most bytes one frame occupies on the wire.
MAX_FRAME_BYTES = LENGTH_PREFIX_SIZE + MAX_MESSAGE_SIZE


@final
class FrameDecoder:
    """Split a byte stream into length-prefixed frames.

    Args:
        max_frame_size: the largest frame accepted (at most `MAX_MESSAGE_SIZE`); you may
            change the attribute between frames.
    """

    __slots__ = ("_chunk", "_head", "_pos", "max_frame_size")

    def __init__(self, max_frame_size: int = MAX_MESSAGE_SIZE) -> None:
        if not 0 <= max_frame_size <= MAX_MESSAGE_SIZE:
            raise ValueError(f"max_frame_size must be 0..{MAX_MESSAGE_SIZE}")
        self.max_frame_size = max_frame_size
        # Pending input is `_head` (private bytes assembling a frame that spans chunks)
        # followed by `_chunk[_pos:]` (a view of an immutable received chunk, sliced
        # into frames without copying).
        self._head = bytearray()
        self._chunk = _EMPTY
        self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._head) + len(self._chunk) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes received from the peer."""
        if not data:
            return
        if self._pos < len(self._chunk):
            # The caller did not drain: keep the unread rest (usually a partial frame).
            self._head += self._chunk[self._pos :]
        self._chunk = memoryview(data if type(data) is bytes else bytes(data))
        self._pos = 0

    def _take(self, count: int) -> None:
        """Move up to `count` bytes from the chunk to the head."""
        take = min(count, len(self._chunk) - self._pos)
        if take > 0:
            self._head += self._chunk[self._pos : self._pos + take]
            self._pos += take

    def _check_size(self, size: int) -> None:
        if size > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {size} bytes announced; the limit here is {self.max_frame_size}"
            )

    def next_frame(self) -> memoryview | None:
        """The next complete frame's contents, or None if more data is needed.

        The view stays valid after later calls (it never aliases a buffer we mutate).

        Raises:
            FrameTooLarge: if the next length prefix exceeds `max_frame_size`.
        """
        head = self._head
        if head:
            if len(head) < LENGTH_PREFIX_SIZE:
                self._take(LENGTH_PREFIX_SIZE - len(head))
                if len(head) < LENGTH_PREFIX_SIZE:
                    return None
            size = (head[0] << 8) | head[1]
            self._check_size(size)
            total = LENGTH_PREFIX_SIZE + size
            self._take(total - len(head))
            if len(head) < total:
                return None
            if len(head) == total:
                # Hand the whole bytearray over; we never touch it again.
                self._head = bytearray()
                return memoryview(head)[LENGTH_PREFIX_SIZE:]
            frame = memoryview(head[LENGTH_PREFIX_SIZE:total])
            del head[:total]
            return frame
        chunk = self._chunk
        pos = self._pos
        if len(chunk) - pos < LENGTH_PREFIX_SIZE:
            return None
        size = (chunk[pos] << 8) | chunk[pos + 1]
        self._check_size(size)
        end = pos + LENGTH_PREFIX_SIZE + size
        if end > len(chunk):
            return None
        self._pos = end
        return chunk[pos + LENGTH_PREFIX_SIZE : end]

    def check_eof(self) -> None:
        """Call at end of input.

        Raises:
            TruncatedFrame: if the input ended inside a frame.
        """
        if self.buffered:
            raise TruncatedFrame(f"the stream ended inside a frame ({self.buffered} bytes left)")

    def take_buffered(self) -> bytes:
        """Remove and return the bytes received but not yet returned as frames (to hand
        them to another decoder)."""
        rest = bytes(self._head) + self._chunk[self._pos :]
        self._head = bytearray()
        self._chunk = _EMPTY
        self._pos = 0
        return rest


@final
class FrameBuffer:
    """Split a byte stream into length-prefixed frames inside one reusable buffer.

    Use: `n = read_into(buffer.writable())`, then `buffer.wrote(n)`, then take
    `next_frame()` until it returns None. Frames are views of the internal buffer and
    are valid until the next `writable()` call.

    Args:
        size: bytes of the buffer, at least `MAX_FRAME_BYTES` (one largest frame).
        max_frame_size: the largest frame accepted (at most `MAX_MESSAGE_SIZE`); you may
            change the attribute between frames.
    """

    __slots__ = ("_buffer", "_end", "_start", "_view", "max_frame_size")

    def __init__(self, size: int, max_frame_size: int = MAX_MESSAGE_SIZE) -> None:
        if size < MAX_FRAME_BYTES:
            raise ValueError(f"a frame buffer needs at least {MAX_FRAME_BYTES} bytes")
        if not 0 <= max_frame_size <= MAX_MESSAGE_SIZE:
            raise ValueError(f"max_frame_size must be 0..{MAX_MESSAGE_SIZE}")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self._start = 0  # first byte not yet returned as a frame
        self._end = 0  # end of the received bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return self._end - self._start

    def writable(self) -> memoryview:
        """The free space to read into (never empty). Invalidates earlier frames."""
        start, end = self._start, self._end
        if start == end:
            self._start = self._end = 0
        elif len(self._buffer) - end < MAX_FRAME_BYTES:
            # Too little room for a whole frame behind the unfinished one: move it to
            # the front (it is shorter than one frame, or a frame would have been taken).
            pending = end - start
            self._view[:pending] = self._view[start:end]
            self._start, self._end = 0, pending
        return self._view[self._end :]

    def wrote(self, count: int) -> None:
        """Record that `count` bytes were written at the start of `writable()`.

        Raises:
            ValueError: if `count` is negative or more than the free space.
        """
        if not 0 <= count <= len(self._buffer) - self._end:
            raise ValueError(f"cannot record {count} bytes written")
        self._end += count

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copy `data` in (for bytes that arrived by another route).

        Raises:
            ValueError: if it does not fit; drain frames first (at most one unfinished
                frame plus `len(buffer) - MAX_FRAME_BYTES` bytes always fits).
        """
        if not data:
            return
        room = self.writable()
        if len(data) > len(room):
            raise ValueError(f"{len(data)} bytes do not fit in {len(room)} free bytes")
        room[: len(data)] = data
        self._end += len(data)

    def next_frame(self) -> memoryview | None:
        """The next complete frame's contents, or None if more data is needed.

        Raises:
            FrameTooLarge: if the next length prefix exceeds `max_frame_size`.
        """
        start = self._start
        available = self._end - start
        if available < LENGTH_PREFIX_SIZE:
            return None
        buffer = self._buffer
        size = (buffer[start] << 8) | buffer[start + 1]
        if size > self.max_frame_size:
            raise FrameTooLarge(
                f"frame of {size} bytes announced; the limit here is {self.max_frame_size}"
            )
        if available < LENGTH_PREFIX_SIZE + size:
            return None
        begin = start + LENGTH_PREFIX_SIZE
        self._start = begin + size
        return self._view[begin : begin + size]

    def check_eof(self) -> None:
        """Call at end of input.

        Raises:
            TruncatedFrame: if the input ended inside a frame.
        """
        if self.buffered:
            raise TruncatedFrame(f"the stream ended inside a frame ({self.buffered} bytes left)")
