"""`NoiseLink`: a `trio.abc.Stream` encrypted with Noise XX over any other stream.

Theory of operation
-------------------
Like `trio.SSLStream`, a `NoiseLink` wraps a transport stream and drives a sans-IO
engine: `NoiseHandshake` for the three handshake messages, then `NoiseCipher` for
transport messages. Every message travels in a frame `2-byte length || message`
(`framing.py`); handshake frames may be at most `MAX_HANDSHAKE_MESSAGE_SIZE`, transport
frames at most Noise's 65,535 bytes, i.e. 65,519 bytes of application data.

Handshake. `do_handshake()` (called for you by the first `send_all`/`receive_some`)
runs the whole handshake under `handshake_timeout`. Failures raise a `LinkError`
subclass that names the problem (`HandshakeTimeout`, `HandshakeAborted`,
`BadHandshake`, `WrongRemoteKey`, `FrameTooLarge`) and close the transport; implicit
handshakes raise `trio.BrokenResourceError` with that error as the cause.

Sending. `send_all` cuts data into maximum-size messages and encrypts them straight
into one reusable buffer with `ChaCha20Poly1305.encrypt_into` (no per-frame joins),
handing the transport up to `SEND_COALESCE_FRAMES` frames per write. Nonces count up
from 0 in each direction; the counter is advanced as each frame is built, so a
`send_all` that is cancelled or fails mid-write leaves the link broken (the peer's
counter could no longer match), exactly as `SSLStream` does.

Receiving. `receive_some` reads `receive_size` bytes at a time from the transport (large
reads matter: each Trio read costs tens of microseconds). It decrypts every complete
frame on hand, up to `max_bytes` of plaintext, in one go: one frame is returned as the
`bytes` the AEAD produced (no copy); several are decrypted straight into one
`bytearray`, so a burst of small frames costs one call, not one each. A frame larger
than `max_bytes` is handed out in pieces.

TCP fast path. Over a `trio.SocketStream` the link does its own non-blocking I/O on
the socket's descriptor once the handshake is done, as `trio.socket` does: `os.write`
of the sealed frames, and `os.readv` straight into a `FrameBuffer` (one reused buffer,
frames decrypted from views of it), waiting with `trio.lowlevel.wait_writable` /
`wait_readable` only when the kernel says so, and one scheduler checkpoint per call.
That saves a `bytes` allocation per read, a copy, and the stream layer's
per-call Python work, which at 64 KiB writes is a large share of what is not
ChaCha20-Poly1305 (docs/link.md, "Performance"). Other transports go through their
`send_all` / `receive_some` as before.

Writing without a task. On the TCP fast path `try_send(data)` seals and writes
synchronously, from whatever task calls it, when no `send_all` is in progress: the
node's router task hands a peering's frame straight to the kernel when that peering's
queue is empty, instead of waking the peering's writer task for it (a task switch, two
checkpoints and a cancel scope per write). What the kernel does not take at once is
kept, sealed, as the link's `send_pending` bytes; they go before anything else, by the
next `send_all` or by `flush()`, and while any are left `try_send` refuses, so the byte
order on the wire is the order of the calls.

Closing. An empty transport message (which `send_all` never produces) is our encrypted
close notification: `aclose` sends it (bounded by `CLOSE_TIMEOUT`) before closing the
transport, and the receiver reports end of stream only after reading it. A transport
that ends without it raises `trio.BrokenResourceError` from `TruncatedStream`, so an
attacker cannot silently cut a stream short. Garbage after the handshake fails as
`DecryptionFailed`; both arrive as the cause of `trio.BrokenResourceError`, following
Trio's stream contract.

Concurrency follows Trio's rules: one task may send while another receives; two
senders or two receivers at once get `trio.BusyResourceError`.
"""

from __future__ import annotations

import math
import operator
import os
import sys
from dataclasses import dataclass
from typing import Final, final

import trio
from cryptography.exceptions import InvalidTag

from .._util import ConflictDetector
from ..errors import (
    DecryptionFailed,
    FrameTooLarge,
    HandshakeAborted,
    HandshakeTimeout,
    LinkError,
    LocalProtocolError,
    TruncatedStream,
)
from ..identity import Identity, PublicKey
from .aead import MAX_NONCE, NONCE_PREFIX, NoiseCipher
from .constants import (
    CLOSE_TIMEOUT,
    HANDSHAKE_TIMEOUT,
    LENGTH_PREFIX_SIZE,
    MAX_HANDSHAKE_MESSAGE_SIZE,
    MAX_MESSAGE_SIZE,
    MAX_PLAINTEXT_SIZE,
    TAG_SIZE,
)
from .framing import MAX_FRAME_BYTES, FrameBuffer, FrameDecoder, encode_frame
from .handshake import HandshakeResult, NoiseHandshake

#: Bytes asked of the transport per read; large reads amortise Trio's per-call cost.
RECEIVE_SIZE: Final = 256 * 1024
#: Frames handed to the transport per write when `send_all` gets a large buffer.
SEND_COALESCE_FRAMES: Final = 4
_FRAME_OVERHEAD: Final = LENGTH_PREFIX_SIZE + TAG_SIZE
#: Bytes asked of the transport per handshake read: a whole handshake frame at most, so
#: little beyond the handshake is read before we know whether to switch decoders.
_HANDSHAKE_READ_SIZE: Final = LENGTH_PREFIX_SIZE + MAX_HANDSHAKE_MESSAGE_SIZE
#: The TCP fast path needs sockets that are file descriptors (not Windows).
_FAST_PATH: Final = sys.platform != "win32" and hasattr(os, "readv")


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    """A snapshot of one link's counters (`NoiseLink.statistics()`)."""

    #: Transport messages sent / received, the close notification included.
    messages_sent: int
    messages_received: int
    #: Application bytes sent / received (plaintext).
    bytes_sent: int
    bytes_received: int


@final
class NoiseLink(trio.abc.Stream):
    """A Noise-XX-encrypted, identity-checked stream over `transport_stream`.

    Args:
        transport_stream: the raw stream (TCP, WebSocket, memory, anything).
        identity: our key pair, proved to the peer in the handshake.
        initiator: True on the dialing side.
        expected_key: refuse the handshake unless the peer proves this identity.
        capabilities: strings advertised to the peer (see `NoiseHandshake`).
        prologue: bytes both sides must agree on.
        handshake_timeout: seconds the handshake may take.
        message_timeout: seconds we wait for each handshake message of the peer (None:
            only `handshake_timeout` applies). A listener under load sets a few seconds
            here, so a silent or stalling connection gives its slot back sooner.
        receive_size: bytes requested from the transport per read.

    Raises:
        ValueError: if `capabilities` breaks the payload limits.
    """

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        identity: Identity,
        *,
        initiator: bool,
        expected_key: PublicKey | None = None,
        capabilities: frozenset[str] | set[str] | tuple[str, ...] = frozenset(),
        prologue: bytes = b"",
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        message_timeout: float | None = None,
        receive_size: int = RECEIVE_SIZE,
    ) -> None:
        self.transport_stream = transport_stream
        self._handshake = NoiseHandshake(
            identity,
            initiator=initiator,
            expected_key=expected_key,
            prologue=prologue,
            capabilities=capabilities,
        )
        self._handshake_timeout = handshake_timeout
        self._message_timeout = math.inf if message_timeout is None else message_timeout
        self._handshake_lock = trio.Lock()
        self._result: HandshakeResult | None = None
        self._receive_size = receive_size
        self._decoder: FrameDecoder | FrameBuffer = FrameDecoder(MAX_HANDSHAKE_MESSAGE_SIZE)
        # A trio.SocketStream's socket, for the fast path (set after the handshake).
        self._socket: trio.socket.SocketType | None = None
        self._send_cipher: NoiseCipher | None = None
        self._recv_cipher: NoiseCipher | None = None
        self._send_counter = 0
        self._recv_counter = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._send_buffer = bytearray()
        self._send_view = memoryview(self._send_buffer)
        #: Sealed bytes of a `try_send` that the kernel has not taken yet.
        self._pending: bytes = b""
        self._plain: bytes | bytearray = b""
        self._held_frame: memoryview | None = None
        self._plain_pos = 0
        self._eof = False
        self._closed = False
        self._broken: BaseException | None = None
        self._send_conflict = ConflictDetector("sending on this link")
        self._receive_conflict = ConflictDetector("receiving on this link")

    # ------------------------------------------------------------------ handshake

    @property
    def handshake_result(self) -> HandshakeResult:
        """Everything the handshake established.

        Raises:
            LocalProtocolError: before the handshake has completed.
        """
        if self._result is None:
            raise LocalProtocolError("the link handshake has not completed")
        return self._result

    @property
    def remote_key(self) -> PublicKey:
        """The peer's proved ed25519 identity (after the handshake)."""
        return self.handshake_result.remote_key

    @property
    def handshake_hash(self) -> bytes:
        """Noise's 64-byte handshake hash, unique to this link (after the handshake)."""
        return self.handshake_result.handshake_hash

    @property
    def remote_capabilities(self) -> frozenset[str]:
        """The capability strings the peer advertised (after the handshake)."""
        return self.handshake_result.remote_capabilities

    def statistics(self) -> LinkStatistics:
        """Counters of messages and application bytes in each direction."""
        return LinkStatistics(
            messages_sent=self._send_counter,
            messages_received=self._recv_counter,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
        )

    async def do_handshake(self) -> None:
        """Run the handshake now, if it has not run yet; idempotent.

        Raises:
            HandshakeTimeout: no complete handshake within `handshake_timeout`.
            HandshakeAborted: the peer closed or reset the connection mid-handshake.
            BadHandshake: malformed, tampered or replayed message, or bad payload.
            WrongRemoteKey: the peer is not `expected_key`.
            FrameTooLarge: the peer announced a handshake message over the limit.
            trio.ClosedResourceError: you closed the link.
            trio.BrokenResourceError: an earlier handshake attempt failed.
        """
        async with self._handshake_lock:
            if self._result is not None:
                return
            self._check_usable()
            try:
                self._result = await self._run_handshake()
            except LinkError as exc:
                self._broken = exc
                await trio.aclose_forcefully(self.transport_stream)
                raise
            except BaseException as exc:
                if self._broken is None:
                    self._broken = exc
                raise

    async def _run_handshake(self) -> HandshakeResult:
        hs = self._handshake
        with trio.move_on_after(self._handshake_timeout) as scope:
            while not hs.complete:
                if hs.writing:
                    await self._send_handshake(encode_frame(hs.write_message()))
                    continue
                with trio.move_on_after(self._message_timeout):
                    hs.read_message(await self._receive_handshake_frame())
                    continue
                raise HandshakeTimeout(
                    f"no handshake message {hs.message_index + 1} of 3 within"
                    f" {self._message_timeout} s",
                    remote_key=hs.remote_key,
                )
        if not hs.complete:
            assert scope.cancelled_caught
            raise HandshakeTimeout(
                f"no complete handshake within {self._handshake_timeout} s"
                f" (stalled before message {hs.message_index + 1} of 3)",
                remote_key=hs.remote_key,
            )
        result = hs.result
        self._send_cipher = NoiseCipher(result.send_key)
        self._recv_cipher = NoiseCipher(result.recv_key)
        # Exactly a SocketStream: a subclass may override send_all / receive_some.
        if _FAST_PATH and type(self.transport_stream) is trio.SocketStream:
            assert isinstance(self._decoder, FrameDecoder)
            ring = FrameBuffer(max(self._receive_size, 2 * MAX_FRAME_BYTES))
            ring.receive_data(self._decoder.take_buffered())  # at most one read's worth
            self._decoder = ring
            self._socket = self.transport_stream.socket
        else:
            self._decoder.max_frame_size = MAX_MESSAGE_SIZE
        return result

    async def _send_handshake(self, frame: bytes) -> None:
        try:
            await self.transport_stream.send_all(frame)
        except trio.BrokenResourceError as exc:
            raise HandshakeAborted(
                f"connection lost sending handshake message {self._handshake.message_index}"
            ) from exc

    async def _receive_handshake_frame(self) -> memoryview:
        try:
            return await self._read_handshake_frame()
        except FrameTooLarge as exc:
            # Usually not a pinecone peer at all (an HTTP server's "HT" is 18,516).
            raise FrameTooLarge(
                f"{exc} during the handshake: the peer does not speak the pinecone link"
                " protocol (or not this version of it)"
            ) from None

    async def _read_handshake_frame(self) -> memoryview:
        while (frame := self._decoder.next_frame()) is None:
            try:
                data = await self.transport_stream.receive_some(_HANDSHAKE_READ_SIZE)
            except trio.BrokenResourceError as exc:
                raise HandshakeAborted("connection lost during the handshake") from exc
            if not data:
                self._decoder.check_eof()  # TruncatedFrame if it ended inside a frame
                raise HandshakeAborted(
                    "the peer closed the connection during the handshake"
                    f" (before message {self._handshake.message_index + 1} of 3)"
                )
            assert isinstance(self._decoder, FrameDecoder)
            self._decoder.receive_data(data)
        return frame

    async def _ensure_handshake(self) -> None:
        if self._result is None:
            try:
                await self.do_handshake()
            except LinkError as exc:
                raise trio.BrokenResourceError(f"link handshake failed: {exc}") from exc

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this link was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(
                f"this link is broken: {self._broken!r}"
            ) from self._broken

    def _break(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc

    # ------------------------------------------------------------------ sending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            if self._closed or self._broken is not None:
                self._check_usable()
            if self._result is None:
                await self._ensure_handshake()
            sock = self._socket
            if self._pending:
                assert sock is not None  # only the fast path leaves bytes pending
                await trio.lowlevel.checkpoint_if_cancelled()
                await self._write_socket(sock, memoryview(self._pending))
                self._pending = b""
            if not data:
                await trio.lowlevel.checkpoint()
                return
            with memoryview(data) as view:
                flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
                total = len(flat)
                offset = 0
                if sock is None:
                    while offset < total:
                        out, offset = self._seal(flat, offset)
                        await self._send_raw(out)
                else:
                    # Like trio.socket: a cancel point first, then write until done,
                    # and a schedule point at the end unless we had to wait anyway.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    waited = False
                    while offset < total:
                        out, offset = self._seal(flat, offset)
                        # Usually the kernel takes it all at once; anything else
                        # (a full socket, an error, a closed socket) goes the long way.
                        fd = sock.fileno()
                        try:
                            sent = os.write(fd, out) if fd >= 0 else 0
                        except OSError:
                            sent = 0
                        if sent < len(out):
                            waited = await self._write_socket(sock, out[sent:]) or waited
                    if not waited:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                self._bytes_sent += total

    @property
    def broken(self) -> bool:
        """True once the link failed (its next `send_all` or `flush` raises)."""
        return self._broken is not None

    @property
    def send_pending(self) -> int:
        """Sealed bytes of a `try_send` the kernel has not taken yet (see `flush`)."""
        return len(self._pending)

    @property
    def can_try_send(self) -> bool:
        """Whether `try_send` would take data now (see there)."""
        return (
            self._socket is not None
            and not self._pending
            and not self._send_conflict.held
            and not self._closed
            and self._broken is None
        )

    def try_send(self, data: bytes | bytearray | memoryview) -> bool:
        """Send `data` now, without a checkpoint, if the link can; False if it cannot.

        It can (`can_try_send`) on the TCP fast path after the handshake, when no task
        is in `send_all` and nothing is pending. Then all of `data` is sealed and
        written to the socket at once; what the kernel does not take stays pending
        (`send_pending`) and goes before anything else, with the next `send_all` or
        `flush()`: call one of them soon. A write error breaks the link (`broken`; the
        next `send_all` or `flush` raises `trio.BrokenResourceError`) and still returns
        True: the data is as lost as if the connection had failed a moment later.
        When False, nothing was sent and the link is unchanged.
        """
        if not self.can_try_send:
            return False
        sock = self._socket
        assert sock is not None
        with memoryview(data) as view:
            flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
            total = len(flat)
            offset = 0
            pending: list[bytes] = []
            while offset < total:  # each pass seals at least one frame
                out, offset = self._seal(flat, offset)
                if pending:
                    pending.append(bytes(out))  # the buffer is reused by the next seal
                    continue
                fd = sock.fileno()
                try:
                    if fd < 0:
                        raise trio.ClosedResourceError("the transport stream was closed")
                    sent = os.write(fd, out)
                except BlockingIOError:
                    sent = 0
                except (OSError, trio.ClosedResourceError) as exc:
                    self._break(exc)
                    return True
                if sent < len(out):
                    pending.append(bytes(out[sent:]))
            self._bytes_sent += total
        if pending:
            self._pending = b"".join(pending) if len(pending) > 1 else pending[0]
        return True

    async def flush(self) -> None:
        """Write what `try_send` left pending (a checkpoint even when nothing is).

        Raises:
            trio.BrokenResourceError: if the link broke (a write of `try_send` too).
            trio.ClosedResourceError: if this link was closed.
            trio.BusyResourceError: if another task is sending.
        """
        await self.send_all(b"")

    def _seal(self, data: memoryview, offset: int) -> tuple[memoryview, int]:
        """Encrypt up to SEND_COALESCE_FRAMES frames of `data[offset:]` into the buffer."""
        remaining = len(data) - offset
        frames = min(SEND_COALESCE_FRAMES, -(-remaining // MAX_PLAINTEXT_SIZE))
        size = min(remaining, frames * MAX_PLAINTEXT_SIZE) + frames * _FRAME_OVERHEAD
        if len(self._send_buffer) < size:
            self._send_buffer = bytearray(size)
            self._send_view = memoryview(self._send_buffer)
        buf = self._send_buffer
        out = self._send_view
        cipher = self._send_cipher
        assert cipher is not None
        counter = self._send_counter
        if counter + frames >= MAX_NONCE:
            raise LocalProtocolError("Noise nonces exhausted (rekey or reconnect)")
        aead = cipher.aead
        pos = 0
        for _ in range(frames):
            chunk = data[offset : offset + MAX_PLAINTEXT_SIZE]
            length = len(chunk) + TAG_SIZE
            buf[pos] = length >> 8
            buf[pos + 1] = length & 0xFF
            start = pos + LENGTH_PREFIX_SIZE
            nonce = NONCE_PREFIX + counter.to_bytes(8, "little")
            aead.encrypt_into(nonce, chunk, None, out[start : start + length])
            counter += 1
            offset += len(chunk)
            pos = start + length
        self._send_counter = counter
        return out[:pos], offset

    async def _send_raw(self, data: memoryview | bytes) -> None:
        try:
            await self.transport_stream.send_all(data)
        except trio.ClosedResourceError as exc:
            self._break(exc)
            if self._closed:
                raise
            raise trio.BrokenResourceError("the transport stream was closed") from exc
        except BaseException as exc:
            # Frames (and nonces) may be half-written: the link cannot continue.
            self._break(exc)
            raise

    async def _write_socket(self, sock: trio.socket.SocketType, data: memoryview) -> bool:
        """Write all of `data` to the socket's descriptor; True if we had to wait."""
        waited = False
        try:
            while data:  # each pass writes some bytes or waits for room
                fd = sock.fileno()
                if fd < 0:
                    raise trio.ClosedResourceError("the transport stream was closed")
                try:
                    sent = os.write(fd, data)
                except BlockingIOError:
                    waited = True
                    await trio.lowlevel.wait_writable(fd)
                    continue
                data = data[sent:]
        except trio.ClosedResourceError as exc:
            self._break(exc)
            if self._closed:
                raise
            raise trio.BrokenResourceError("the transport stream was closed") from exc
        except OSError as exc:
            self._break(exc)
            raise trio.BrokenResourceError(f"the connection failed: {exc}") from exc
        except BaseException as exc:
            # Frames (and nonces) may be half-written: the link cannot continue.
            self._break(exc)
            raise
        return waited

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_usable()
            try:
                await self.transport_stream.wait_send_all_might_not_block()
            except trio.ClosedResourceError:
                if self._closed:
                    raise
                raise trio.BrokenResourceError("the transport stream was closed") from None

    # ------------------------------------------------------------------ receiving

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        with self._receive_conflict:
            if self._closed or self._broken is not None:
                self._check_usable()
            checkpointed = self._result is None
            if checkpointed:
                await self._ensure_handshake()
            while True:
                if self._plain:
                    if not checkpointed:
                        await trio.lowlevel.checkpoint()
                    return self._take_plain(max_bytes)
                if self._eof:
                    if not checkpointed:
                        await trio.lowlevel.checkpoint()
                    return b""
                if self._open_available(max_bytes or self._receive_size):
                    continue
                got = await self._receive_raw()
                checkpointed = True
                if got:
                    continue
                try:
                    self._decoder.check_eof()
                    raise TruncatedStream("the transport ended without the peer's close message")
                except LinkError as exc:
                    self._break(exc)
                    raise trio.BrokenResourceError(f"link broken: {exc}") from exc

    def _open_available(self, limit: int) -> bool:
        """Decrypt the complete frames on hand (up to `limit` plaintext bytes) into
        `_plain`; False if there is none. Several frames are decrypted straight into one
        buffer, so many small frames cost one `receive_some` return, not one each."""
        held = self._held_frame  # (an empty frame is falsy: test for None)
        frame = held if held is not None else self._decoder.next_frame()
        self._held_frame = None
        if frame is None:
            return False
        cipher = self._recv_cipher
        assert cipher is not None
        frames = [frame]
        total = len(frame) - TAG_SIZE
        while total < limit and len(frame) > TAG_SIZE:
            frame = self._decoder.next_frame()
            if frame is None:
                break
            if len(frame) <= TAG_SIZE or total + len(frame) - TAG_SIZE > limit:
                self._held_frame = frame  # a close notification or garbage: handle alone
                break
            frames.append(frame)
            total += len(frame) - TAG_SIZE
        try:
            if len(frames) == 1:
                plain: bytes | bytearray = cipher.decrypt(self._recv_counter, b"", frames[0])
                self._recv_counter += 1
            else:
                # Frames here are TAG_SIZE+1..MAX_MESSAGE_SIZE bytes (the framer and the
                # loop above saw to it), so the AEAD is called directly.
                counter = self._recv_counter
                if counter + len(frames) >= MAX_NONCE:
                    raise DecryptionFailed("Noise nonces exhausted")
                aead = cipher.aead
                plain = bytearray(total)
                out = memoryview(plain)
                pos = 0
                for index, frame in enumerate(frames):
                    end = pos + len(frame) - TAG_SIZE
                    nonce = NONCE_PREFIX + counter.to_bytes(8, "little")
                    try:
                        aead.decrypt_into(nonce, frame, None, out[pos:end])
                    except InvalidTag:
                        if index == 0:
                            raise DecryptionFailed(
                                f"transport message {counter} failed authentication"
                                " (tampered, replayed, reordered or garbage)"
                            ) from None
                        # Deliver what authenticated; the bad frame fails on the next call.
                        self._held_frame = frame
                        plain = plain[:pos]  # a copy: views of the original are alive
                        break
                    counter += 1
                    pos = end
                self._recv_counter = counter
        except LinkError as exc:
            self._break(exc)
            raise trio.BrokenResourceError(f"link broken: {exc}") from exc
        if plain:
            self._plain = plain
            self._plain_pos = 0
            self._bytes_received += len(plain)
        else:
            self._eof = True  # the peer's encrypted close notification
        return True

    def _take_plain(self, max_bytes: int | None) -> bytes | bytearray:
        plain, pos = self._plain, self._plain_pos
        left = len(plain) - pos
        if max_bytes is None or max_bytes >= left:
            self._plain = b""
            return plain if pos == 0 else plain[pos:]
        self._plain_pos = pos + max_bytes
        return plain[pos : pos + max_bytes]

    async def _receive_raw(self) -> int:
        """Read more from the transport into the decoder; 0 at end of stream. A
        checkpoint."""
        try:
            decoder = self._decoder
            if isinstance(decoder, FrameBuffer):
                assert self._socket is not None
                return await self._read_socket(self._socket, decoder)
            data = await self.transport_stream.receive_some(self._receive_size)
            decoder.receive_data(data)
            return len(data)
        except trio.ClosedResourceError as exc:
            if self._closed:
                raise
            self._break(exc)
            raise trio.BrokenResourceError("the transport stream was closed") from exc
        except trio.BrokenResourceError as exc:
            self._break(exc)
            raise
        except OSError as exc:
            self._break(exc)
            raise trio.BrokenResourceError(f"the connection failed: {exc}") from exc

    @staticmethod
    async def _read_socket(sock: trio.socket.SocketType, ring: FrameBuffer) -> int:
        """Read what the socket has (waiting for something) straight into `ring`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:  # each pass reads or waits until the socket is readable
            fd = sock.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the transport stream was closed")
            try:
                count = os.readv(fd, [ring.writable()])
            except BlockingIOError:
                waited = True
                await trio.lowlevel.wait_readable(fd)
                continue
            break
        ring.wrote(count)
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return count

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Send the encrypted close notification (if possible, within `CLOSE_TIMEOUT`),
        then close the transport. Idempotent; a cancelled `aclose` still closes."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        try:
            if self._pending and self._socket is not None and not self._send_conflict.held:
                # A try_send's tail goes first, or the close note would cut into it.
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._write_socket(self._socket, memoryview(self._pending))
                    self._pending = b""
            if (
                self._send_cipher is not None
                and self._broken is None
                and not self._send_conflict.held
                and not self._pending
            ):
                note = self._send_cipher.encrypt(self._send_counter, b"", b"")
                self._send_counter += 1
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self.transport_stream.send_all(encode_frame(note))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport_stream.aclose()
