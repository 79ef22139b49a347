"""`SessionStream` and `SessionListener`: the Trio face of session streams.

A `SessionStream` is a `trio.abc.HalfCloseableStream` over one stream of a session
engine. Its methods call the engine synchronously (safe: nothing else runs between
two checkpoints), wake the session's driver task so it sends, and park on a
`ParkingLot` when they must wait; the driver unparks the stream whenever the engine
reports the stream changed. Errors use Trio's vocabulary: `trio.ClosedResourceError`
after our own `aclose` (or `send_eof`, for sending), `trio.BrokenResourceError` when the
peer reset or stopped the stream or the session failed (the `SessionError` chained),
`trio.BusyResourceError` for two tasks sending (or receiving) at once.

Streams open optimistically (docs/sessions.md): `SessionManager.connect` returns once
the session is up, before the peer answered the OPEN. A refusal is reported by the
first `send_all` or `receive_some` that runs after the REFUSE arrived (and by
`wait_accepted`), as `StreamRefusedError`, which is also a
`trio.BrokenResourceError`; bytes written before it are discarded.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Final, final

import trio

from .._util import ConflictDetector
from ..errors import SessionError, StreamRefusedError
from ..identity import PublicKey
from .events import StreamBroken, StreamState

if TYPE_CHECKING:
    from .manager import _SessionHandle

#: `receive_some()` without a size returns at most this many bytes.
DEFAULT_RECEIVE_SIZE: Final = 256 * 1024


@final
class RefusedStreamError(StreamRefusedError, trio.BrokenResourceError):
    """The peer refused the stream's protocol, reported by a read or write.

    Catch it as `StreamRefusedError` (why) or as `trio.BrokenResourceError` (the stream
    cannot be used), whichever your code already handles.
    """


@final
class SessionStream(trio.abc.HalfCloseableStream):
    """One reliable, ordered, encrypted stream to a remote key, speaking `protocol`.

    Get one from `SessionManager.connect` or a listener's `accept`.

    Attributes:
        protocol: the protocol name the stream was opened with.
        remote_key: the identity the peer proved in the handshake.
        remote_address: the peer's routing key (equal to `remote_key` by default).
    """

    def __init__(self, handle: _SessionHandle, stream_id: int, protocol: str) -> None:
        self._handle = handle
        self._engine = handle.engine
        self._sid = stream_id
        self.protocol = protocol
        self.remote_address: PublicKey = handle.engine.remote_address
        self._lot = trio.lowlevel.ParkingLot()
        self._send_conflict = ConflictDetector("sending on this stream")
        self._recv_conflict = ConflictDetector("receiving on this stream")
        self._closed = False
        self._eof_sent = False

    @property
    def remote_key(self) -> PublicKey:
        key = self._engine.remote_key
        return key if key is not None else self.remote_address

    @property
    def stream_id(self) -> int:
        return self._sid

    def _wake(self) -> None:
        self._lot.unpark_all()

    def _refused(self, reason: str) -> RefusedStreamError:
        return RefusedStreamError(
            f"{self.remote_address.hex()} refused a stream for {self.protocol!r}: {reason}",
            remote_key=self.remote_key,
            protocol=self.protocol,
        )

    def _broken(self, exc: StreamBroken) -> trio.BrokenResourceError:
        if exc.refused:
            return self._refused(str(exc))
        error = trio.BrokenResourceError(str(exc))
        error.__cause__ = exc.cause if exc.cause is not None else exc
        error.__suppress_context__ = True
        return error

    async def _wait_session(self) -> None:
        """Wait for the session's handshake (connect's second half)."""
        handle = self._handle
        try:
            await handle.ready.wait()
            error = self._engine.error
            if error is not None and not self._engine.established:
                raise error
        except BaseException:
            self._close_now()
            raise

    async def wait_accepted(self) -> None:
        """Wait until the peer accepted the stream (optional: streams open optimistically).

        `connect` returns before the peer answered; use this when you only send and
        want to know the protocol was accepted (a reader learns it from its reads).

        Raises:
            StreamRefusedError: the peer refused the protocol (no listener, backlog full,
                too many streams); also a `trio.BrokenResourceError`.
            SessionError: if the session failed first.
            trio.ClosedResourceError: if this stream was closed.
        """
        engine = self._engine
        while True:
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            try:
                state = engine.stream_status(self._sid)
            except StreamBroken as exc:
                cause = exc.cause
                if isinstance(cause, SessionError):
                    raise cause from None
                raise self._broken(exc) from None
            if state is StreamState.OPEN:
                await trio.lowlevel.checkpoint()
                return
            if state is StreamState.REFUSED:
                raise self._refused(engine.refusal_reason(self._sid) or "refused")
            await self._lot.park()

    # ------------------------------------------------------------ sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue all of `data` for reliable delivery (blocks while the buffer is full).

        Raises:
            trio.ClosedResourceError: after `aclose` or `send_eof`.
            trio.BrokenResourceError: if the peer stopped the stream or the session failed.
            trio.BusyResourceError: if another task is sending on this stream.
        """
        with self._send_conflict:
            # A checkpoint in two halves around the write, as trio's sockets do (one
            # task switch, not two when the buffer is full and we park anyway).
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            try:
                self._check_send()
                view = memoryview(data).cast("B")
                engine = self._engine
                while view:
                    try:
                        n = engine.stream_write(self._sid, view)
                    except StreamBroken as exc:
                        raise self._broken(exc)  # noqa: B904 (the cause is set)
                    if n:
                        view = view[n:]
                        self._handle.wake()
                    else:
                        parked = True
                        await self._lot.park()
                        self._check_send()
            finally:
                if not parked:
                    await trio.lowlevel.cancel_shielded_checkpoint()

    def _check_send(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream was closed")
        if self._eof_sent:
            raise trio.ClosedResourceError("send_eof() was called on this stream")

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            self._check_send()
            while not self._engine.stream_writable(self._sid):
                await self._lot.park()
                self._check_send()

    async def send_eof(self) -> None:
        """Finish the sending half: the peer reads b"" after the data already sent.

        Raises:
            trio.ClosedResourceError: after `aclose`.
            trio.BusyResourceError: if another task is sending.
        """
        with self._send_conflict:
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this stream was closed")
            if not self._eof_sent:
                self._eof_sent = True
                self._engine.stream_finish(self._sid)
                self._handle.wake()

    async def reset(self, code: int = 0) -> None:
        """Abandon the sending half at once: unsent data is dropped, the peer's reads fail."""
        await trio.lowlevel.checkpoint()
        if not self._closed:
            self._eof_sent = True
            self._engine.stream_reset(self._sid, code)
            self._handle.wake()

    # ------------------------------------------------------------ receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Bytes the peer sent, in order; b"" once the peer finished sending.

        Raises:
            trio.ClosedResourceError: after `aclose`.
            trio.BrokenResourceError: if the peer reset the stream or the session failed.
            trio.BusyResourceError: if another task is receiving on this stream.
        """
        if max_bytes is None:
            max_bytes = DEFAULT_RECEIVE_SIZE
        else:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._recv_conflict:
            # A checkpoint in two halves around the read, as trio's sockets do: the
            # cancel point before anything is taken, the schedule point after (none
            # when we parked). A cancelled read never loses data, and an empty buffer
            # costs one task switch, not two.
            await trio.lowlevel.checkpoint_if_cancelled()
            parked = False
            try:
                engine = self._engine
                while True:
                    if self._closed:
                        raise trio.ClosedResourceError("this stream was closed")
                    try:
                        data = engine.stream_read(self._sid, max_bytes)
                    except StreamBroken as exc:
                        raise self._broken(exc)  # noqa: B904 (the cause is set)
                    if data is not None:
                        if data:
                            # A window update may be due: wake the driver only then.
                            self._handle.wake_if_needed(trio.current_time())
                        return data
                    parked = True
                    await self._lot.park()
            finally:
                if not parked:
                    await trio.lowlevel.cancel_shielded_checkpoint()

    # ------------------------------------------------------------ closing

    def _accept(self) -> None:
        """The application took this incoming stream: ACCEPT it (lazily, riding on
        the next packet)."""
        if not self._closed and not self._engine.is_closed:
            self._engine.accept_stream(self._sid)
            # Only if the ACCEPT's deadline comes before the driver's: it usually rides
            # on the packet that goes out anyway (the ACK, the reply).
            self._handle.wake_if_needed(trio.current_time())

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._engine.stream_close(self._sid)
        self._handle.streams.pop(self._sid, None)
        self._handle.wake()
        self._lot.unpark_all()

    async def aclose(self) -> None:
        """Close both halves: FIN what was written, tell the peer to stop sending."""
        self._close_now()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        return f"<SessionStream {self.protocol!r} #{self._sid} to {self.remote_address.short()}>"


@final
class SessionListener(trio.abc.Listener[SessionStream]):
    """Incoming streams for one protocol; from `SessionManager.listen`."""

    def __init__(self, protocol: str, backlog: int, on_close: object) -> None:
        self.protocol = protocol
        self._send, self._receive = trio.open_memory_channel[SessionStream](backlog)
        self._on_close = on_close
        self._closed = False

    def offer(self, stream: SessionStream) -> bool:
        """Queue an incoming stream; False if the backlog is full or we are closed."""
        if self._closed:
            return False
        try:
            self._send.send_nowait(stream)
        except trio.WouldBlock:
            return False
        return True

    async def accept(self) -> SessionStream:
        """The next incoming stream.

        Raises:
            trio.ClosedResourceError: if the listener was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("listener closed")
        try:
            stream = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise trio.ClosedResourceError("listener closed") from None
        stream._accept()
        return stream

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._send.close()
        while True:
            try:
                stream = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
            stream._close_now()
        if callable(self._on_close):
            self._on_close(self)

    async def aclose(self) -> None:
        self._close_now()
        await trio.lowlevel.checkpoint()
