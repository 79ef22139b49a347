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
