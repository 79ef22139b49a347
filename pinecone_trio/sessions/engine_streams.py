"""The streams of the session engine: the stream table, its frames, the application calls.

Theory of operation. Each stream is a `_Stream` in `Session._streams`, holding its two
halves (`SendSide`, `RecvSide`, from streams.py) and its `StreamState`. The peer's
frames reach it through `_on_stream_data` and `_on_control` (which also takes the
session-level control frames: MAX_DATA, DATAGRAM, CLOSE); the application's calls are
`open_stream`, `accept_stream`, `refuse_stream` and the `stream_*` methods. A stream is
forgotten (`_forget`) when it is refused, or once the application has closed it and
nothing more can happen on it (`_maybe_forget`). Session credit: `_recv_limit` is what
we allow the peer to send on all streams together, `_send_max` what the peer allows us
and `_send_used` what we sent of it.

Rules worth knowing:
- Stream ids: the side with the lower routing key opens even ids, the other odd ones
  (a rule both sides know before the handshake, whoever initiated it).
- Streams open optimistically: OPEN(protocol) travels in front of the stream's first
  data, in the same packet (a stream with nothing written yet is corked like a short
  tail, so the first write joins it), and the opener sends at once, within the peer's
  initial credit, without waiting for the answer. The peer answers ACCEPT (lazily: it
  rides on the next packet that goes out anyway, usually the ACK or the reply) or
  REFUSE(reason) (at once). The opener keeps the stream until one of the two arrives.
- Data (or RESET_STREAM, STOP_SENDING, MAX_STREAM_DATA) for a peer's stream whose OPEN
  has not arrived yet (lost or reordered) creates the stream EARLY: its data is kept,
  within the usual credit, and it counts against `max_incoming_streams`; the OPEN,
  which the peer re-sends until acknowledged, makes it PENDING. With no room for an
  EARLY stream, the whole packet is dropped unacknowledged and the peer re-sends it.
- A refused stream counts for nothing in the session's flow control, on both sides:
  the refuser takes back what the stream's data had counted and ignores what comes
  later; the opener, on REFUSE, takes back everything it sent on it.
"""

from __future__ import annotations

from typing import Final, final

from ..errors import RemoteProtocolError, SessionError
from . import wire
from .config import SessionConfig, check_protocol_name
from .engine_base import SessionBase
from .events import DatagramReceived, IncomingStream, State, StreamBroken, StreamState
from .streams import RangeSet, RecvSide, SendSide

#: Application error code sent with RESET_STREAM / STOP_SENDING when a handle closes.
CODE_CLOSED: Final = 0
#: Our own stop code on a stream the peer refused (never on the wire).
CODE_REFUSED: Final = -1


class _DropPacket(Exception):
    """Internal: the packet cannot be taken now; drop it unacknowledged (it is re-sent)."""


@final
class _Stream:
    __slots__ = (
        "app_closed",
        "id",
        "local",
        "open_frame",
        "protocol",
        "recv",
        "refusal",
        "send",
        "state",
    )

    def __init__(
        self, stream_id: int, protocol: str, local: bool, state: StreamState, config: SessionConfig
    ) -> None:
        self.id = stream_id
        self.protocol = protocol
        self.local = local
        self.state = state
        # The peer's initial credit equals ours: both sides run the same config defaults;
        # a differing peer simply sends MAX_STREAM_DATA early.
        self.send = SendSide(config.stream_send_buffer, config.stream_window)
        self.recv = RecvSide(config.stream_window)
        self.refusal = ""
        self.app_closed = False
        # Our OPEN, until it goes out in front of the stream's first data.
        self.open_frame: wire.Open | None = None


class StreamsMixin(SessionBase):
    """`Session`'s streams (see the module docstring)."""

    @property
    def delivering(self) -> bool:
        """Whether a stream whose sending half the application ended (FIN queued) still
        has bytes or the FIN to get acknowledged, or a datagram the application sent is
        still queued: what a graceful leave waits for before its CLOSE, as a closing
        TCP socket still delivers what it was given. (A datagram is waited for until
        it is sent, not acknowledged: it never is.)"""
        if self.state is not State.ESTABLISHED:
            return False
        if self._datagrams:
            return True
        return any(
            stream.send.fin_offset is not None
            and not stream.send.done
            and stream.state is not StreamState.REFUSED
            for stream in self._streams.values()
        )

    def _lookup(self, sid: int) -> _Stream | None:
        """The stream a peer's frame is about; None if it is finished (or refused).

        A peer's stream whose OPEN has not arrived yet is created EARLY.

        Raises:
            RemoteProtocolError: for one of our ids we never opened.
            _DropPacket: if there is no room for an EARLY stream.
        """
        stream = self._streams.get(sid)
        if stream is not None:
            return stream
        if sid % 2 == self._parity:
            if sid >= self._next_sid:
                raise RemoteProtocolError(f"frame for stream {sid}, which we never opened")
            return None  # a late frame for one of our streams already finished
        if self._seen_remote(sid):
            return None  # a late retransmission for a stream already finished
        if self._incoming >= self.config.max_incoming_streams:
            raise _DropPacket
        stream = _Stream(sid, "", False, StreamState.EARLY, self.config)
        self._streams[sid] = stream
        self._incoming += 1
        return stream

    def _on_stream_data(self, frame: wire.StreamData) -> None:
        stream = self._lookup(frame.stream_id)
        if stream is None:
            return
        if stream.state is StreamState.OPENING:
            stream.state = StreamState.OPEN  # data from the acceptor implies ACCEPT
        advanced = stream.recv.on_data(frame.offset, frame.data, frame.fin)
        if advanced:
            self._recv_highest += advanced
            if self._recv_highest > self._recv_limit:
                raise RemoteProtocolError("peer exceeded the session's flow-control credit")
            if stream.recv.stopped or stream.recv.reset_code is not None:
                self._recv_consumed += advanced
                self._credit_session()
        self.changed.add(stream.id)
        self._maybe_forget(stream)

    def _seen_remote(self, sid: int) -> bool:
        k = sid // 2
        for start, end in self._remote_seen.ranges():
            if start <= k < end:
                return True
            if start > k:
                break
        return False

    def _on_control(self, frame: wire.Frame) -> None:
        if type(frame) is wire.Open:
            self._on_open(frame)
        elif type(frame) is wire.MaxStreamData:
            stream = self._lookup(frame.stream_id)
            if stream is not None and frame.limit > stream.send.max_data:
                stream.send.max_data = frame.limit
                self._sendable[stream.id] = None
        elif type(frame) is wire.MaxData:
            if frame.limit > self._send_max:
                self._send_max = frame.limit
                for sid in self._streams:
                    self._sendable[sid] = None
        elif type(frame) is wire.Accept:
            stream = self._streams.get(frame.stream_id)
            if stream is not None and stream.state is StreamState.OPENING:
                stream.state = StreamState.OPEN
                self.changed.add(stream.id)
                self._maybe_forget(stream)
        elif type(frame) is wire.Refuse:
            stream = self._streams.get(frame.stream_id)
            if stream is not None and stream.state is StreamState.OPENING:
                self._on_refused(stream, frame.reason or "refused")
        elif type(frame) is wire.ResetStream:
            stream = self._lookup(frame.stream_id)
            if stream is not None and stream.recv.reset_code is None:
                recv = stream.recv
                if frame.final_size < recv.highest or frame.final_size > recv.limit:
                    raise RemoteProtocolError("RESET_STREAM with an impossible final size")
                if recv.fin_offset is not None and frame.final_size != recv.fin_offset:
                    raise RemoteProtocolError("RESET_STREAM contradicts the stream's final size")
                self._recv_highest += frame.final_size - recv.highest
                # Late data up to the final size must not count a second time.
                recv.highest = recv.fin_offset = frame.final_size
                recv.reset_code = frame.code
                # Every byte up to the final size is consumed now, once: the unread
                # ones here; on a stream we had stopped, those that came since were
                # counted as they came (`read_offset` followed them).
                self._recv_consumed += recv.abandon()
                self._credit_session()
                self.changed.add(stream.id)
                self._maybe_forget(stream)
        elif type(frame) is wire.StopSending:
            stream = self._lookup(frame.stream_id)
            if stream is not None and not stream.send.done:
                stream.send.stop_code = frame.code
                stream.send.retransmit = RangeSet()
                self._control.append(
                    wire.ResetStream(stream.id, frame.code, stream.send.next_offset)
                )
                self.changed.add(stream.id)
                self._maybe_forget(stream)
        elif type(frame) is wire.Datagram:
            self.events.append(DatagramReceived(frame.protocol, frame.data))
        elif type(frame) is wire.Close:
            reason = frame.reason or "no reason given"
            self._fail(
                SessionError(f"the peer closed the session: {reason}", remote_key=self.remote_key)
            )
        # PING: nothing to do but acknowledge it.

    def _on_open(self, frame: wire.Open) -> None:
        sid = frame.stream_id
        if sid % 2 == self._parity:
            raise RemoteProtocolError(f"peer opened stream {sid}, which is ours to open")
        if self._seen_remote(sid):
            return  # a retransmitted OPEN; our answer is reliable on its own
        self._remote_seen.add(sid // 2, sid // 2 + 1)
        stream = self._streams.get(sid)
        if stream is not None:  # EARLY: its data came first
            stream.protocol = frame.protocol
            stream.state = StreamState.PENDING
        elif self._incoming >= self.config.max_incoming_streams:
            # Nothing of this stream was ever counted (no EARLY state: its data was
            # dropped unacknowledged), and later data is ignored: the opener takes back
            # its credit on REFUSE.
            self._control.append(wire.Refuse(sid, "too many streams open on this session"))
            return
        else:
            stream = _Stream(sid, frame.protocol, False, StreamState.PENDING, self.config)
            self._streams[sid] = stream
            self._incoming += 1
        self.events.append(IncomingStream(sid, frame.protocol))

    def _on_refused(self, stream: _Stream, reason: str) -> None:
        """The peer refused one of our streams: stop sending, give the credit back."""
        stream.state = StreamState.REFUSED
        stream.refusal = reason
        send = stream.send
        # The refuser counts none of this stream's bytes against the session's credit.
        self._send_used -= send.next_offset
        send.retransmit = RangeSet()
        send.stop_code = CODE_REFUSED
        stream.open_frame = None
        self._sendable.pop(stream.id, None)
        self.changed.add(stream.id)
        self._maybe_forget(stream)

    # ------------------------------------------------------------ streams (application)

    def _stream(self, sid: int) -> _Stream:
        stream = self._streams.get(sid)
        if stream is None:
            raise KeyError(sid)
        return stream

    def open_stream(self, protocol: str) -> int:
        """Open a stream speaking `protocol`; returns its id (answer comes later).

        Raises:
            ValueError: if the protocol name is empty or too long.
            StreamBroken: if the session is closed.
        """
        check_protocol_name(protocol)
        if self.state is State.CLOSED:
            raise StreamBroken(str(self.error), self.error)
        sid = self._next_sid
        self._next_sid += 2
        stream = _Stream(sid, protocol, True, StreamState.OPENING, self.config)
        stream.open_frame = wire.Open(sid, protocol)
        self._streams[sid] = stream
        self._sendable[sid] = None
        return sid

    def accept_stream(self, sid: int) -> None:
        """Accept a PENDING stream (ACCEPT rides on the next packet); a stream the peer
        has meanwhile reset and the engine forgot is left alone (its reads fail)."""
        stream = self._streams.get(sid)
        if stream is not None and stream.state is StreamState.PENDING:
            stream.state = StreamState.OPEN
            if not self._lazy_control:
                self._lazy_due = self._now + self.config.max_ack_delay
            self._lazy_control.append(wire.Accept(sid))

    def refuse_stream(self, sid: int, reason: str) -> None:
        """Refuse a PENDING stream: REFUSE goes out at once, its data is forgotten.

        What its data counted against the session's credit is taken back (the opener
        does the same on REFUSE), and later data for it is ignored.
        """
        stream = self._stream(sid)
        if stream.state is StreamState.PENDING:
            self._control.append(wire.Refuse(sid, reason[:200]))
            stream.state = StreamState.REFUSED
            recv = stream.recv
            self._recv_highest -= recv.highest
            if recv.reset_code is not None or recv.stopped:
                self._recv_consumed -= recv.highest
            recv.discard()
            self._forget(stream)

    def stream_status(self, sid: int) -> StreamState:
        """OPENING, OPEN or REFUSED (a stream the engine forgot counts as OPEN).

        Raises:
            StreamBroken: if the session failed while the stream was still opening.
        """
        stream = self._streams.get(sid)
        if stream is None:
            if self.state is State.CLOSED:
                raise StreamBroken(str(self.error), self.error)
            return StreamState.OPEN
        if self.state is State.CLOSED and stream.state is not StreamState.OPEN:
            raise StreamBroken(str(self.error), self.error)
        return stream.state

    def refusal_reason(self, sid: int) -> str:
        stream = self._streams.get(sid)
        return stream.refusal if stream is not None else ""

    def _broken(self, stream: _Stream | None) -> StreamBroken | None:
        if self.state is State.CLOSED:
            return StreamBroken(str(self.error), self.error)
        if stream is None:
            return None
        if stream.state is StreamState.REFUSED:
            return StreamBroken(stream.refusal or "stream refused", refused=True)
        return None

    def stream_write(self, sid: int, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes on a stream; returns how many fit (0 when the buffer is full).

        Raises:
            StreamBroken: if the peer stopped the stream or the session failed.
        """
        stream = self._streams.get(sid)
        broken = self._broken(stream)
        if broken is not None:
            raise broken
        if stream is None or stream.send.fin_offset is not None:
            raise StreamBroken("stream already finished")
        send = stream.send
        if send.stop_code is not None:
            raise StreamBroken(f"the peer stopped reading (code {send.stop_code})")
        if send.reset_code is not None:
            raise StreamBroken("stream was reset")
        n = send.write(data)
        if n:
            self._sendable[sid] = None
            self.writes += 1
        return n

    def stream_writable(self, sid: int) -> bool:
        """Whether a write would take bytes now (or fail at once)."""
        stream = self._streams.get(sid)
        if stream is None or self._broken(stream) is not None:
            return True
        send = stream.send
        if send.stop_code is not None or send.reset_code is not None:
            return True
        return send.space() > 0 and (
            stream.state is StreamState.OPEN or stream.state is StreamState.OPENING
        )

    def stream_finish(self, sid: int) -> None:
        """Send FIN after what was written (idempotent)."""
        stream = self._streams.get(sid)
        if stream is None or stream.send.done:
            return
        stream.send.finish()
        self._sendable[sid] = None

    def stream_reset(self, sid: int, code: int = CODE_CLOSED) -> None:
        """Abandon the sending half: the peer's reads fail."""
        stream = self._streams.get(sid)
        if stream is None or stream.send.done:
            return
        send = stream.send
        send.reset_code = code
        send.retransmit = RangeSet()
        self._control.append(wire.ResetStream(sid, code, send.next_offset))
        self._maybe_forget(stream)

    def stream_read(self, sid: int, max_bytes: int) -> bytes | None:
        """Up to `max_bytes` received bytes; b"" at EOF; None if nothing yet.

        Raises:
            StreamBroken: if the peer reset the stream or the session failed.
        """
        stream = self._streams.get(sid)
        if stream is None:
            broken = self._broken(None)
            if broken is not None:
                raise broken
            return b""  # forgotten only after everything was read
        recv = stream.recv
        if recv.reset_code is not None:
            raise StreamBroken(f"the peer reset the stream (code {recv.reset_code})")
        if recv.buffered:
            data = recv.read(max_bytes)
            self._recv_consumed += len(data)
            update = recv.window_update()
            if update is not None:
                self._max_stream_data_due.add(sid)
            self._credit_session()
            self._maybe_forget(stream)
            return data
        if recv.eof:
            # The peer ended the stream before the session ended: that end stands,
            # as the data read before it does (a peer that closes its streams and
            # leaves at once sends FIN, then CLOSE).
            self._maybe_forget(stream)
            return b""
        broken = self._broken(stream)
        if broken is not None:
            raise broken
        return None

    def stream_close(self, sid: int) -> None:
        """The application closed its handle: FIN what was written, stop the peer."""
        stream = self._streams.get(sid)
        if stream is None:
            return
        stream.app_closed = True
        if stream.state is StreamState.PENDING:
            self.refuse_stream(sid, "closed")
            return
        if not stream.send.done and stream.send.fin_offset is None:
            stream.send.finish()
            self._sendable[sid] = None
        recv = stream.recv
        if not recv.done:
            recv.stopped = True
            if stream.state is not StreamState.REFUSED:
                self._control.append(wire.StopSending(sid, CODE_CLOSED))
        if recv.highest > recv.read_offset:
            # Unread and still missing bytes below the highest offset are consumed
            # now; later arrivals count as they come, the rest with the final size.
            self._recv_consumed += recv.abandon()
            self._credit_session()
        self._maybe_forget(stream)

    def _credit_session(self) -> None:
        window = self.config.session_window
        if self._recv_limit - self._recv_consumed <= window // 2:
            self._recv_limit = self._recv_consumed + window
            self._max_data_due = True

    def _maybe_forget(self, stream: _Stream) -> None:
        if not stream.app_closed:
            return
        state = stream.state
        if state is StreamState.OPENING:
            return  # the answer must still be seen: REFUSE takes back credit
        if (stream.send.done and stream.recv.settled) or state is not StreamState.OPEN:
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        if not stream.local:
            self._incoming -= 1
        self._sendable.pop(stream.id, None)
        self._max_stream_data_due.discard(stream.id)
