"""The sans-IO session engine: one end-to-end session with one remote key.

Theory of operation (docs/sessions.md has the full story).

A `Session` is named by the pair of routing keys: ours (`local_address`) and the
peer's (`remote_address`). It never imports trio and never reads a clock: the driver
feeds it packets (`receive_packet`), lets it fire timers (`handle_timer`), asks for the
packets to send (`packets_to_send`) and sleeps until `next_deadline()`. Application
calls (`open_stream`, `stream_write`, `stream_read`, ...) are synchronous and may come
from any task between checkpoints; afterwards the caller wakes the driver, which is the
only one that sends. Everything the driver must react to is queued in `events` (a list
it drains) and `changed` (the stream ids whose readiness changed).

Lifecycle: HANDSHAKE (Noise XX over INITIATION/RESPONSE/FINISH packets, each side
retransmitting its last message on a backoff timer) -> ESTABLISHED (TRANSPORT packets:
explicit packet numbers, replay window, frames) -> CLOSED (an error is recorded; every
stream reports it).

Rules worth knowing:
- Simultaneous dials: if both sides sent INITIATION, the dial from the lower routing key
  wins; the higher side drops its own handshake and answers. Both end in one session.
- A new INITIATION on an established session (the peer restarted) runs a candidate
  handshake beside it; only when that completes (so a replayed message cannot do it)
  are the old streams failed and the new keys installed.
- The initiator is "unconfirmed" until any TRANSPORT packet from the responder
  verifies; until then every probe timeout re-sends FINISH as well.
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
- Control frames (OPEN, ACCEPT, REFUSE, RESET_STREAM, STOP_SENDING) are idempotent
  and re-sent verbatim when their packet is lost; MAX_DATA/MAX_STREAM_DATA are re-sent
  with the current value; stream bytes are re-sent from the stream's buffer.
- ACKs: due at once after `ack_eliciting_threshold` ack-eliciting packets or a gap,
  else after `max_ack_delay`; an ACK is never sent alone before it is due, it rides on
  whatever packet goes out first.
- Corking: `packets_to_send(now, cork=True)` holds back a stream's fresh data that
  would only part-fill a packet (no FIN, limited by what was written, not by credit)
  and sets `corked`; the driver lets writers run once and asks again (`writes` counts
  successful writes so it can tell whether they added anything).
- A peer that breaks the protocol after authenticating (bad frame, flow-control
  violation) has the session closed with a `RemoteProtocolError` chained. Packets that
  do not authenticate are dropped and counted, never acted on.

Not done: key rotation (64-bit packet numbers never run out in practice; WireGuard
rotates every 2 minutes for forward secrecy, we keep a session's keys for its life),
connection migration (there is no path to migrate: the overlay routes by key), pacing.
"""

from __future__ import annotations

import enum
import math
import os
from collections import deque
from dataclasses import dataclass
from typing import Any, Final, final

from ..errors import DecodeError, RemoteProtocolError, SessionError, SessionTimeoutError
from ..identity import Identity, PublicKey
from . import wire
from .config import MAX_PACKET_NUMBER, MAX_PROTOCOL_NAME, REPLAY_WINDOW, SessionConfig
from .congestion import NewReno
from .crypto import PacketCipher, ReplayWindow
from .handshake import SessionHandshake
from .recovery import AckTracker, Recovery, SentPacket
from .streams import RangeSet, RecvSide, SendSide

#: Application error code sent with RESET_STREAM / STOP_SENDING when a handle closes.
CODE_CLOSED: Final = 0
#: Our own stop code on a stream the peer refused (never on the wire).
CODE_REFUSED: Final = -1
#: CLOSE codes.
CLOSE_NORMAL: Final = 0
CLOSE_PROTOCOL_ERROR: Final = 1

_HEADER_AND_TAG: Final = wire.TRANSPORT_HEADER_SIZE + wire.AEAD_TAG_SIZE
#: Upper bounds on an encoded ACCEPT frame, and on OPEN less its protocol name
#: (array header, tag, a uint64 id, a str header).
_ACCEPT_FRAME_MAX: Final = 12
_OPEN_FRAME_OVERHEAD: Final = 16


class State(enum.Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSED = "closed"


class StreamState(enum.Enum):
    OPENING = "opening"  # we opened it (and may send on it), no answer yet
    EARLY = "early"  # the peer's data (or control) arrived before its OPEN
    PENDING = "pending"  # the peer opened it; the driver has not accepted it yet
    OPEN = "open"
    REFUSED = "refused"


class StreamBroken(Exception):
    """A stream half cannot be used: reset by the peer, refused, or the session failed.

    The driver turns this into `trio.BrokenResourceError` (or the refusal into
    `StreamRefusedError`); `cause` is the session's error when the session failed.
    """

    def __init__(
        self, message: str, cause: BaseException | None = None, *, refused: bool = False
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.refused = refused  # the peer refused the stream's protocol (message: why)


class _DropPacket(Exception):
    """Internal: the packet cannot be taken now; drop it unacknowledged (it is re-sent)."""


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class HandshakeCompleted:
    remote_key: PublicKey


@dataclass(frozen=True, slots=True)
class IncomingStream:
    stream_id: int
    protocol: str


@dataclass(frozen=True, slots=True)
class DatagramReceived:
    protocol: str
    data: bytes


@dataclass(frozen=True, slots=True)
class SessionClosed:
    error: SessionError


@dataclass(frozen=True, slots=True)
class SessionReplaced:
    """The peer restarted and completed a new handshake: `session` takes over (same
    local index, new keys, no streams); this session is closed."""

    session: Session


Event = HandshakeCompleted | IncomingStream | DatagramReceived | SessionClosed | SessionReplaced


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


@final
class Session:
    """One end-to-end session (see the module docstring).

    Use `Session.dial(...)` for the side that initiates and `Session.answer(...)` for a
    session created by an incoming INITIATION (then feed that packet to it).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        local_address: PublicKey,
        remote_address: PublicKey,
        local_index: int,
        expected_key: PublicKey | None,
        config: SessionConfig,
        now: float,
    ) -> None:
        self.identity = identity
        self.local_address = local_address
        self.remote_address = remote_address
        self.local_index = local_index
        self.expected_key = expected_key
        self.config = config
        self.state = State.HANDSHAKE
        self.error: SessionError | None = None
        self.remote_key: PublicKey | None = None
        self.handshake_hash = b""
        self.events: list[Event] = []
        self.changed: set[int] = set()
        self.stats: dict[str, int] = {
            "packets_sent": 0,
            "packets_received": 0,
            "bytes_sent": 0,
            "bytes_received": 0,
            "packets_lost": 0,
            "bytes_retransmitted": 0,
            "dropped_unauthenticated": 0,
            "dropped_replayed": 0,
            "dropped_handshake": 0,
            "dropped_early": 0,
            "datagrams_dropped": 0,
            "probes": 0,
        }
        self.created = now
        self._now = now  # the latest `now` we were given (for calls that take none)
        # handshake
        self._hs: SessionHandshake | None = None
        self._hs_packet: bytes | None = None  # our last handshake packet, for re-sending
        self._hs_initiation = b""  # the INITIATION our current responder state answered
        self._hs_retransmit_at = math.inf
        self._hs_interval = config.handshake_retransmit
        self._hs_deadline = now + config.handshake_timeout
        self._hs_outbox: list[bytes] = []
        self._hs_sent_at = now
        self._hs_resent = False
        self._candidate: _Candidate | None = None
        self._remote_index = 0
        self._confirmed = False
        self._finish_packet: bytes | None = None
        # transport
        self._send_cipher: PacketCipher | None = None
        self._recv_cipher: PacketCipher | None = None
        self._replay = ReplayWindow(REPLAY_WINDOW)
        self._next_pn = 0
        self._recovery = Recovery(config.max_ack_delay)
        self._cc = self._new_cc()
        self._acks = AckTracker()
        self._probes = 0
        self._need_ping = False
        self._last_recv = now
        self._last_eliciting_sent = now
        self.keepalive = False
        self.corked = False  # the last `packets_to_send(cork=True)` held a tail back
        self.writes = 0  # successful `stream_write` calls, so a caller sees new data
        # streams
        self._streams: dict[int, _Stream] = {}
        self._sendable: dict[int, None] = {}
        self._parity = 0 if local_address < remote_address else 1
        self._next_sid = self._parity
        self._remote_seen = RangeSet()  # remote stream ids already opened, as id // 2
        self._incoming = 0
        self._control: deque[wire.Frame] = deque()
        # Control frames that need no packet of their own (ACCEPT): they ride on the
        # next packet that goes out anyway, the ACK at the latest.
        self._lazy_control: deque[wire.Accept] = deque()
        self._lazy_due = math.inf  # ... or, with nothing going out, by this time
        self._datagrams: deque[wire.Datagram] = deque()
        self._close_frame: wire.Close | None = None
        self._max_data_due = False
        self._max_stream_data_due: set[int] = set()
        # session flow control
        self._send_max = config.session_window
        self._send_used = 0
        self._recv_limit = config.session_window
        self._recv_highest = 0
        self._recv_consumed = 0

    def _new_cc(self) -> NewReno:
        c = self.config
        return NewReno(
            max_packet=c.max_packet_size,
            initial_packets=c.initial_window_packets,
            minimum_packets=c.minimum_window_packets,
            cap=2 * c.session_window,
        )

    # ------------------------------------------------------------ construction

    @classmethod
    def dial(
        cls,
        *,
        identity: Identity,
        local_address: PublicKey,
        remote_address: PublicKey,
        local_index: int,
        expected_key: PublicKey | None,
        config: SessionConfig,
        now: float,
    ) -> Session:
        """A session that starts a handshake to `remote_address` at once."""
        session = cls(
            identity=identity,
            local_address=local_address,
            remote_address=remote_address,
            local_index=local_index,
            expected_key=expected_key,
            config=config,
            now=now,
        )
        session._start_initiator(now)
        return session

    @classmethod
    def answer(
        cls,
        *,
        identity: Identity,
        local_address: PublicKey,
        remote_address: PublicKey,
        local_index: int,
        expected_key: PublicKey | None,
        config: SessionConfig,
        now: float,
    ) -> Session:
        """A session waiting for the INITIATION the caller is about to feed it."""
        return cls(
            identity=identity,
            local_address=local_address,
            remote_address=remote_address,
            local_index=local_index,
            expected_key=expected_key,
            config=config,
            now=now,
        )

    def _handshake(self, initiator: bool) -> SessionHandshake:
        if initiator:
            a, b = self.local_address, self.remote_address
        else:
            a, b = self.remote_address, self.local_address
        return SessionHandshake(
            self.identity,
            initiator=initiator,
            initiator_address=a,
            responder_address=b,
            expected_key=self.expected_key,
        )

    def _start_initiator(self, now: float) -> None:
        self._hs = self._handshake(True)
        self._hs_initiation = b""
        self._send_handshake(
            wire.encode_initiation(self.local_index, self._hs.write_message()), now
        )

    def _send_handshake(self, packet: bytes, now: float) -> None:
        self._hs_sent_at = now
        self._hs_resent = False
        self._hs_packet = packet
        self._hs_outbox.append(packet)
        self._hs_interval = self.config.handshake_retransmit
        self._hs_retransmit_at = now + self._hs_interval

    # ------------------------------------------------------------ properties

    @property
    def is_closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    @property
    def wanted(self) -> bool:
        """Whether keepalives should hold the session open."""
        return self.keepalive or bool(self._streams)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    @property
    def rtt(self) -> float:
        return self._recovery.rtt.smoothed

    @property
    def cwnd(self) -> int:
        return self._cc.cwnd

    def max_datagram_size(self, protocol: str) -> int:
        """The largest datagram payload one packet can carry for `protocol`."""
        return self.max_datagram_size_for(self.config, protocol)

    @staticmethod
    def max_datagram_size_for(config: SessionConfig, protocol: str) -> int:
        return (
            config.max_packet_size
            - _HEADER_AND_TAG
            - wire.PAYLOAD_OVERHEAD
            - wire.STREAM_FRAME_OVERHEAD
            - len(protocol.encode())
            - wire.ack_frame_size(0)
        )

    # ------------------------------------------------------------ closing

    def _fail(self, error: SessionError, *, notify_peer: str | None = None) -> None:
        if self.state is State.CLOSED:
            return
        if notify_peer is not None and self._send_cipher is not None:
            self._close_frame = wire.Close(CLOSE_PROTOCOL_ERROR, notify_peer[:200])
            self._flush_close()
        self.state = State.CLOSED
        self.error = error
        self._recovery.discard_all()
        self.changed.update(self._streams)
        self.events.append(SessionClosed(error))

    def close(self, reason: str = "closed") -> None:
        """Close the session: tell the peer (best effort) and fail every stream."""
        if self.state is State.CLOSED:
            return
        if self._send_cipher is not None:
            self._close_frame = wire.Close(CLOSE_NORMAL, reason[:200])
            self._flush_close()
        self.state = State.CLOSED
        self.error = SessionError(f"session closed: {reason}", remote_key=self.remote_key)
        self._recovery.discard_all()
        self.changed.update(self._streams)
        self.events.append(SessionClosed(self.error))

    def _flush_close(self) -> None:
        assert self._close_frame is not None
        packet = self._seal([wire.frame_to_wire(self._close_frame)])
        if packet is not None:
            self._hs_outbox.append(packet)

    # ------------------------------------------------------------ input

    def receive_packet(self, packet: bytes | memoryview, now: float) -> None:
        """Process one datagram from the remote address. Never raises for bad input.

        A TRANSPORT packet may be a view (the node's direct delivery); it is decrypted
        from the view and not kept. Anything else is copied once if it is a view.
        """
        if self.state is State.CLOSED or not packet:
            return
        self._now = now
        kind = packet[0]
        if kind == wire.TRANSPORT:
            self._receive_transport(packet, now)
            return
        if type(packet) is not bytes:
            packet = bytes(packet)
        try:
            hp = wire.decode_handshake_packet(packet)
        except DecodeError:
            self.stats["dropped_handshake"] += 1
            return
        if hp.kind == wire.INITIATION:
            self._on_initiation(hp, packet, now)
        elif hp.receiver != self.local_index:
            self.stats["dropped_handshake"] += 1
        elif hp.kind == wire.RESPONSE:
            self._on_response(hp, now)
        else:
            self._on_finish(hp, now)

    def _on_initiation(self, hp: wire.HandshakePacket, packet: bytes, now: float) -> None:
        if self.state is State.ESTABLISHED:
            if packet == self._hs_initiation:
                return  # a late duplicate of the handshake we completed
            candidate = self._candidate
            if candidate is not None and candidate.initiation == packet:
                self._hs_outbox.append(candidate.response)
                return
            self._candidate = _Candidate.start(self, hp, packet, now)
            if self._candidate is not None:
                self._hs_outbox.append(self._candidate.response)
            return
        hs = self._hs
        if hs is not None and hs.initiator:
            if self.local_address < self.remote_address:
                return  # simultaneous dial: ours wins, the peer will answer it
        elif hs is not None and packet == self._hs_initiation:
            assert self._hs_packet is not None
            self._hs_outbox.append(self._hs_packet)  # our RESPONSE was lost: re-send it
            return
        # Answer it (a fresh session, a newer INITIATION, or we lose the tie-break).
        responder = self._handshake(False)
        try:
            responder.read_message(hp.message)
            message = responder.write_message()
        except SessionError:
            self.stats["dropped_handshake"] += 1
            return
        self._hs = responder
        self._hs_initiation = packet
        self._remote_index = hp.sender
        self._send_handshake(
            wire.encode_response(wire.RESPONSE, self.local_index, hp.sender, message), now
        )

    def _on_response(self, hp: wire.HandshakePacket, now: float) -> None:
        hs = self._hs
        if self.state is State.ESTABLISHED:
            if hp.sender == self._remote_index and self._finish_packet and not self._confirmed:
                self._hs_outbox.append(self._finish_packet)
            return
        if hs is None or not hs.initiator:
            self.stats["dropped_handshake"] += 1
            return
        try:
            hs.read_message(hp.message)
            message = hs.write_message()
        except SessionError as exc:
            exc.remote_key = exc.remote_key or self.remote_address
            self._fail(exc)
            return
        self._remote_index = hp.sender
        self._finish_packet = wire.encode_response(
            wire.FINISH, self.local_index, hp.sender, message
        )
        self._hs_outbox.append(self._finish_packet)
        self._hs_retransmit_at = math.inf
        # The RTT sample is only trustworthy if INITIATION went out once.
        self._establish(hs, now, rtt_sample=None if self._hs_resent else now - self._hs_sent_at)
        # No PING of its own here (until 2026-11-21 one went out right behind FINISH):
        # the RTT was just sampled, a lost FINISH is re-sent when the responder re-sends
        # RESPONSE or, once we send data, with every probe until we are confirmed; the
        # first packet that goes out anyway (the OPEN and its data) asks for the ACK.

    def _on_finish(self, hp: wire.HandshakePacket, now: float) -> None:
        candidate = self._candidate
        if candidate is not None and hp.sender == candidate.remote_index:
            try:
                candidate.handshake.read_message(hp.message)
            except SessionError:
                self._candidate = None
                self.stats["dropped_handshake"] += 1
                return
            self._candidate = None
            self._replace(candidate, now)
            return
        hs = self._hs
        if (
            self.state is not State.HANDSHAKE
            or hs is None
            or hs.initiator
            or hp.sender != self._remote_index
        ):
            self.stats["dropped_handshake"] += 1
            return
        try:
            hs.read_message(hp.message)
        except SessionError:
            # Someone else's FINISH, or a forged one: the real one may still come.
            self.stats["dropped_handshake"] += 1
            return
        self._establish(hs, now, rtt_sample=None)
        self._confirmed = True

    def _establish(self, hs: SessionHandshake, now: float, rtt_sample: float | None) -> None:
        result = hs.result
        assert result is not None
        self._send_cipher = PacketCipher(result.send_key)
        self._recv_cipher = PacketCipher(result.recv_key)
        self.remote_key = result.remote_key
        self.handshake_hash = result.handshake_hash
        self.state = State.ESTABLISHED
        self._hs = None
        self._hs_packet = None
        self._hs_retransmit_at = math.inf
        self._last_recv = now
        if rtt_sample is not None and rtt_sample > 0:
            self._recovery.rtt.update(rtt_sample, 0.0)
        for sid in self._streams:
            self._sendable[sid] = None
        self.events.append(HandshakeCompleted(result.remote_key))

    def _replace(self, candidate: _Candidate, now: float) -> None:
        """The peer restarted: a fresh session takes over under the new keys."""
        new = Session(
            identity=self.identity,
            local_address=self.local_address,
            remote_address=self.remote_address,
            local_index=self.local_index,
            expected_key=self.expected_key,
            config=self.config,
            now=now,
        )
        new._remote_index = candidate.remote_index
        new._hs_initiation = candidate.initiation
        new._confirmed = True
        new._establish(candidate.handshake, now, rtt_sample=None)
        new.keepalive = self.keepalive
        self._fail(
            SessionError(
                "the peer restarted the session; its streams were lost", remote_key=self.remote_key
            )
        )
        self.events.append(SessionReplaced(new))

    def _receive_transport(self, packet: bytes | memoryview, now: float) -> None:
        recv = self._recv_cipher
        if recv is None or len(packet) < _HEADER_AND_TAG:
            self.stats["dropped_unauthenticated"] += 1
            return
        _, receiver, pn = wire.TRANSPORT_HEADER.unpack_from(packet)
        if receiver != self.local_index:
            self.stats["dropped_unauthenticated"] += 1
            return
        if not self._replay.check(pn):
            self.stats["dropped_replayed"] += 1
            return
        header = packet[: wire.TRANSPORT_HEADER_SIZE]
        plaintext = recv.open(pn, header, memoryview(packet)[wire.TRANSPORT_HEADER_SIZE :])
        if plaintext is None:
            self.stats["dropped_unauthenticated"] += 1
            return
        self._replay.mark(pn)
        self._last_recv = now
        self._confirmed = True
        self._finish_packet = None
        self.stats["packets_received"] += 1
        self.stats["bytes_received"] += len(packet)
        try:
            frames = wire.decode_payload(plaintext)
            eliciting = self._apply_frames(frames, now)
        except _DropPacket:
            # Not acknowledged, so the peer re-sends what it carried; every frame
            # already applied from it is idempotent (data is reassembled once, OPEN
            # and the answers are recognised as repeats, credit only grows).
            self.stats["dropped_early"] += 1
            return
        except RemoteProtocolError as exc:
            error = SessionError(
                f"peer broke the session protocol: {exc}", remote_key=self.remote_key
            )
            error.__cause__ = exc
            self._fail(error, notify_peer=str(exc))
            return
        if self.state is State.ESTABLISHED:
            self._acks.on_packet(
                pn, eliciting, now, self.config.max_ack_delay, self.config.ack_eliciting_threshold
            )

    def _apply_frames(self, frames: list[wire.Frame], now: float) -> bool:
        eliciting = False
        for frame in frames:
            if type(frame) is wire.StreamData:
                eliciting = True
                self._on_stream_data(frame)
            elif type(frame) is wire.Ack:
                self._on_ack(frame, now)
            else:
                eliciting = True
                self._on_control(frame)
            if self.state is not State.ESTABLISHED:
                break
        return eliciting

    def _on_ack(self, frame: wire.Ack, now: float) -> None:
        if frame.ranges[0][0] >= self._next_pn:
            raise RemoteProtocolError("ACK of a packet never sent")
        acked, lost = self._recovery.on_ack(frame.ranges, frame.delay_us / 1e6, now)
        cc = self._cc
        for packet in acked:
            cc.on_acked(packet.size, packet.time_sent)
            for record in packet.records:
                if record[0] == "s":
                    stream = self._streams.get(record[1])
                    if stream is not None:
                        stream.send.on_acked(record[2], record[3], record[4])
                        self.changed.add(stream.id)
                        self._maybe_forget(stream)
        if lost:
            self._on_lost(lost, now)

    def _on_lost(self, lost: list[SentPacket], now: float) -> None:
        self.stats["packets_lost"] += len(lost)
        self._cc.on_lost(max(p.time_sent for p in lost), now)
        for packet in lost:
            self._requeue(packet)

    def _requeue(self, packet: SentPacket) -> None:
        for record in packet.records:
            kind = record[0]
            if kind == "s":
                stream = self._streams.get(record[1])
                if stream is not None:
                    stream.send.on_lost(record[2], record[3], record[4])
                    self.stats["bytes_retransmitted"] += record[3]
                    self._sendable[stream.id] = None
            elif kind == "c":
                self._control.append(record[1])
            elif kind == "md":
                self._max_data_due = True
            elif kind == "msd":
                sid = record[1]
                if sid in self._streams:
                    self._max_stream_data_due.add(sid)

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
                extra = frame.final_size - recv.highest
                self._recv_highest += extra
                self._recv_consumed += frame.final_size - recv.read_offset
                # Late data up to the final size must not count a second time.
                recv.highest = recv.fin_offset = frame.final_size
                recv.reset_code = frame.code
                recv.discard()
                self._credit_session()
                self.changed.add(stream.id)
                self._maybe_forget(stream)
        elif type(frame) is wire.StopSending:
            stream = self._lookup(frame.stream_id)
            if stream is not None and stream.send.stop_code is None and not stream.send.fin_acked:
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
        if not protocol or len(protocol.encode()) > MAX_PROTOCOL_NAME:
            raise ValueError(f"a protocol name is 1..{MAX_PROTOCOL_NAME} UTF-8 bytes")
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
        stream = self._stream(sid)
        if stream.state is StreamState.PENDING:
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
        broken = self._broken(stream)
        if broken is not None:
            raise broken
        if recv.eof:
            self._maybe_forget(stream)
            return b""
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
        if recv.buffered:
            self._recv_consumed += recv.buffered
            recv.discard()
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
        if (stream.send.done and stream.recv.done) or state is not StreamState.OPEN:
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if self._streams.pop(stream.id, None) is None:
            return
        if not stream.local:
            self._incoming -= 1
        self._sendable.pop(stream.id, None)
        self._max_stream_data_due.discard(stream.id)

    # ------------------------------------------------------------ datagrams

    def send_datagram(self, protocol: str, data: bytes) -> bool:
        """Queue an unreliable datagram; returns False if it was dropped (queue full).

        Raises:
            ValueError: if the name is bad or the datagram is larger than one packet.
            StreamBroken: if the session is closed.
        """
        if not protocol or len(protocol.encode()) > MAX_PROTOCOL_NAME:
            raise ValueError(f"a protocol name is 1..{MAX_PROTOCOL_NAME} UTF-8 bytes")
        limit = self.max_datagram_size(protocol)
        if len(data) > limit:
            raise ValueError(f"a datagram on this session holds at most {limit} bytes")
        if self.state is State.CLOSED:
            raise StreamBroken(str(self.error), self.error)
        if len(self._datagrams) >= self.config.max_datagram_queue:
            self.stats["datagrams_dropped"] += 1
            return False
        self._datagrams.append(wire.Datagram(protocol, bytes(data)))
        return True

    # ------------------------------------------------------------ timers

    def next_deadline(self) -> float:
        """When `handle_timer` next has something to do (math.inf if never)."""
        if self.state is State.CLOSED:
            return math.inf
        if self.state is State.HANDSHAKE:
            return min(self._hs_deadline, self._hs_retransmit_at)
        deadline = min(
            self._last_recv + self.config.idle_timeout,
            self._recovery.next_deadline(),
            self._acks.ack_deadline,
            self._lazy_due,
        )
        if self.wanted:
            deadline = min(deadline, self._last_eliciting_sent + self.config.keepalive_interval)
        if self._candidate is not None:
            deadline = min(deadline, self._candidate.deadline)
        return deadline

    def handle_timer(self, now: float) -> None:
        """Fire whatever timers are due at `now`."""
        if self.state is State.CLOSED:
            return
        self._now = now
        if self.state is State.HANDSHAKE:
            if now >= self._hs_deadline:
                self._fail(
                    SessionTimeoutError(
                        f"no session with {self.remote_address.hex()}: the handshake did not"
                        f" complete within {self.config.handshake_timeout:g} s",
                        remote_key=self.remote_address,
                    )
                )
            elif now >= self._hs_retransmit_at and self._hs_packet is not None:
                self._hs_outbox.append(self._hs_packet)
                self._hs_resent = True
                self._hs_interval = min(
                    self._hs_interval * 1.5, self.config.handshake_retransmit_max
                )
                self._hs_retransmit_at = now + self._hs_interval
            return
        if self._candidate is not None and now >= self._candidate.deadline:
            self._candidate = None
        if now >= self._last_recv + self.config.idle_timeout:
            self._fail(
                SessionTimeoutError(
                    f"session with {self.remote_address.hex()} timed out: nothing heard for"
                    f" {self.config.idle_timeout:g} s",
                    remote_key=self.remote_key,
                )
            )
            return
        recovery = self._recovery
        if now >= recovery.loss_time:
            lost = recovery.detect_lost(now)
            if lost:
                self._on_lost(lost, now)
        elif now >= recovery.pto_time():
            recovery.pto_count += 1
            self.stats["probes"] += 1
            if recovery.pto_count >= 3:
                self._cc.on_persistent_congestion(now)
            self._probes = 2
            oldest = recovery.oldest_unacked()
            if oldest is not None:
                self._requeue(oldest)
            self._need_ping = True
            if not self._confirmed and self._finish_packet is not None:
                self._hs_outbox.append(self._finish_packet)
            # Re-arm the PTO from now even if the probe is only a PING.
            recovery.time_of_last_ack_eliciting = now
        if self.wanted and now >= self._last_eliciting_sent + self.config.keepalive_interval:
            self._need_ping = True

    # ------------------------------------------------------------ output

    @property
    def outbox_length(self) -> int:
        """Packets waiting to go out as they are (handshake messages, CLOSE): the first
        ones `packets_to_send` returns. A caller that can send without waiting takes
        them one by one with `outbox_head` and `outbox_sent` instead."""
        return len(self._hs_outbox)

    def outbox_head(self) -> bytes:
        """The first waiting packet (see `outbox_length`), left in place.

        Raises:
            IndexError: if nothing waits.
        """
        return self._hs_outbox[0]

    def outbox_sent(self) -> None:
        """The caller sent `outbox_head()`: forget it."""
        del self._hs_outbox[0]

    def wants_to_send(self, now: float) -> bool:
        """Whether `packets_to_send` would produce something now."""
        if self._hs_outbox:
            return True
        if self.state is not State.ESTABLISHED:
            return False
        if self._acks.has_unacked() and self._acks.ack_due(now):
            return True
        if self._need_ping or self._datagrams:
            return True
        if self._lazy_control and now >= self._lazy_due:
            return True
        if not (self._probes or self._cc.can_send(self._recovery.bytes_in_flight)):
            return False
        if self._control or self._max_data_due or self._max_stream_data_due:
            return True
        streams = self._streams
        for sid in self._sendable:
            stream = streams.get(sid)
            if (
                stream is not None
                and (stream.state is StreamState.OPEN or stream.state is StreamState.OPENING)
                and (stream.open_frame is not None or stream.send.wants_to_send())
            ):
                return True
        return False

    def packets_to_send(
        self, now: float, *, cork: bool = False, prefix: bytes = b""
    ) -> list[bytes]:
        """The datagrams to send to the remote address now (at most a burst).

        With `cork`, a stream's fresh data that would only part-fill a packet (no FIN,
        not limited by credit) is held back and `corked` is set: the caller gives the
        writer a chance to add more, then calls again without `cork` (TCP autocorking,
        one scheduler pass instead of a timer). Bulk writers then send full packets.

        Every packet starts with `prefix` (not part of the packet: the caller's own
        header, e.g. the node's service tag, put in front of a transport packet as it
        is assembled rather than copied in front of it afterwards).
        """
        out = self._hs_outbox
        self._hs_outbox = []
        if prefix and out:
            out = [prefix + packet for packet in out]
        self.corked = False
        if self.state is not State.ESTABLISHED:
            return out
        for _ in range(self.config.max_burst_packets):
            packet = self._build_packet(now, cork, prefix)
            if packet is None:
                break
            out.append(packet)
        return out

    def _seal(self, wire_frames: list[list[object]], prefix: bytes = b"") -> bytes | None:
        cipher = self._send_cipher
        if cipher is None or self._next_pn >= MAX_PACKET_NUMBER:
            return None
        pn = self._next_pn
        self._next_pn += 1
        header = wire.TRANSPORT_HEADER.pack(wire.TRANSPORT, self._remote_index, pn)
        sealed = cipher.seal(pn, header, wire.encode_payload(wire_frames))
        packet = b"".join((prefix, header, sealed)) if prefix else header + sealed
        self.stats["packets_sent"] += 1
        self.stats["bytes_sent"] += len(packet) - len(prefix)
        return packet

    def _build_packet(self, now: float, cork: bool = False, prefix: bytes = b"") -> bytes | None:
        budget = self.config.max_packet_size - _HEADER_AND_TAG - wire.PAYLOAD_OVERHEAD
        frames: list[list[object]] = []
        records: list[tuple[Any, ...]] = []
        acks = self._acks
        ack_ranges: tuple[tuple[int, int], ...] = ()
        ack_due = False
        if acks.has_unacked():
            # Room for an ACK is kept; it goes out only when due, or riding along with
            # something else (an ACK-only packet is never sent just because we could).
            ack_due = acks.ack_due(now)
            ack_ranges = acks.ranges()
            if ack_ranges:
                budget -= wire.ack_frame_size(len(ack_ranges))
        may_send = self._probes > 0 or self._cc.can_send(self._recovery.bytes_in_flight)
        eliciting = False
        # Datagrams are unreliable and not congestion-controlled beyond the queue bound:
        # the application chose to send them now.
        while self._datagrams:
            dgram = self._datagrams[0]
            size = len(dgram.data) + wire.STREAM_FRAME_OVERHEAD + len(dgram.protocol)
            if size > budget:
                break
            self._datagrams.popleft()
            frames.append(wire.frame_to_wire(dgram))
            budget -= size
            eliciting = True
        if may_send:
            control = self._control
            while control and budget > wire.CONTROL_FRAME_MAX:
                frame = control.popleft()
                frames.append(wire.frame_to_wire(frame))
                records.append(("c", frame))
                budget -= wire.CONTROL_FRAME_MAX
            if self._max_data_due and budget > wire.CONTROL_FRAME_MAX:
                self._max_data_due = False
                frames.append(wire.frame_to_wire(wire.MaxData(self._recv_limit)))
                records.append(("md",))
                budget -= wire.CONTROL_FRAME_MAX
            while self._max_stream_data_due and budget > wire.CONTROL_FRAME_MAX:
                sid = self._max_stream_data_due.pop()
                stream = self._streams.get(sid)
                if stream is not None:
                    frames.append(wire.frame_to_wire(wire.MaxStreamData(sid, stream.recv.limit)))
                    records.append(("msd", sid))
                    budget -= wire.CONTROL_FRAME_MAX
            if self._sendable and budget > wire.STREAM_FRAME_OVERHEAD:
                budget = self._fill_streams(frames, records, budget, cork)
        # ACCEPTs are tiny and, like ACKs, not held back by the congestion window
        # (`wants_to_send` says yes once they are due, whatever the window).
        lazy = self._lazy_control
        if lazy and (frames or ack_due or now >= self._lazy_due):
            while lazy and budget > _ACCEPT_FRAME_MAX:
                frame = lazy.popleft()
                frames.append([wire.ACCEPT, frame.stream_id])
                records.append(("c", frame))
                budget -= _ACCEPT_FRAME_MAX
            self._lazy_due = now + self.config.max_ack_delay if lazy else math.inf
        if records:
            eliciting = True
        if self._need_ping and not eliciting:
            if self.corked:
                pass  # the corked data will ask for the ACK; keep the PING for later
            else:
                frames.append(wire.frame_to_wire(wire.Ping()))
                eliciting = True
                self._need_ping = False
        else:
            self._need_ping = False
        if ack_ranges and (ack_due or frames):
            frames.insert(0, wire.frame_to_wire(wire.Ack(0, ack_ranges)))
            acks.on_ack_sent()
        if not frames:
            return None
        packet = self._seal(frames, prefix)
        if packet is None:
            return None
        if eliciting:
            if self._probes:
                self._probes -= 1
            self._last_eliciting_sent = now
            if records or frames[-1][0] == wire.PING:
                self._recovery.on_packet_sent(
                    SentPacket(self._next_pn - 1, now, len(packet) - len(prefix), records)
                )
        return packet

    def _fill_streams(
        self, frames: list[list[object]], records: list[tuple[Any, ...]], budget: int, cork: bool
    ) -> int:
        sendable = self._sendable
        for sid in list(sendable):
            if budget <= wire.STREAM_FRAME_OVERHEAD:
                break
            stream = self._streams.get(sid)
            if stream is None:
                del sendable[sid]
                continue
            send = stream.send
            open_frame = stream.open_frame
            if open_frame is None and not send.wants_to_send():
                del sendable[sid]
                continue
            state = stream.state
            if state is not StreamState.OPEN and state is not StreamState.OPENING:
                if state is StreamState.REFUSED:
                    del sendable[sid]
                continue  # a peer's stream not accepted yet: nothing to send on it
            credit = self._send_max - self._send_used
            if (
                cork
                and send.fin_offset is None
                and not send.retransmit
                and send.write_offset - send.next_offset < budget - wire.STREAM_FRAME_OVERHEAD
                and send.write_offset <= min(send.max_data, send.next_offset + credit)
                and (send.write_offset == 0 or self._recovery.bytes_in_flight > 0)
            ):
                # Only a tail smaller than the room left, limited by what the application
                # wrote so far (not by credit): hold it while the writer may add more.
                # A new stream's OPEN waits with it (or for the first write). As Linux's
                # autocorking, only while earlier packets are still unacknowledged: a
                # short write on an idle session (a request, a reply) goes at once.
                self.corked = True
                continue
            if open_frame is not None:
                # OPEN goes in front of the stream's first data, in the same packet.
                size = _OPEN_FRAME_OVERHEAD + len(open_frame.protocol.encode())
                if budget <= size + wire.STREAM_FRAME_OVERHEAD:
                    break
                stream.open_frame = None
                frames.append([wire.OPEN, sid, open_frame.protocol])
                records.append(("c", open_frame))
                budget -= size
                if not send.wants_to_send():
                    del sendable[sid]
                    continue
            offset, data, fin, fresh = send.next_chunk(
                budget - wire.STREAM_FRAME_OVERHEAD, credit, pieces=True
            )
            size = sum(map(len, data)) if type(data) is list else len(data)
            if not size and not fin:
                continue  # blocked by flow control
            self._send_used += fresh
            frames.append([wire.STREAM, sid, offset, fin, data])
            records.append(("s", sid, offset, size, fin))
            budget -= size + wire.STREAM_FRAME_OVERHEAD
            # Round robin: a stream that still has data goes to the back of the line.
            del sendable[sid]
            if stream.send.wants_to_send():
                sendable[sid] = None
        return budget


@final
class _Candidate:
    """A responder handshake for a new INITIATION on an established session."""

    __slots__ = ("deadline", "handshake", "initiation", "remote_index", "response")

    def __init__(
        self,
        handshake: SessionHandshake,
        initiation: bytes,
        remote_index: int,
        response: bytes,
        deadline: float,
    ) -> None:
        self.handshake = handshake
        self.initiation = initiation
        self.remote_index = remote_index
        self.response = response
        self.deadline = deadline

    @classmethod
    def start(
        cls, session: Session, hp: wire.HandshakePacket, packet: bytes, now: float
    ) -> _Candidate | None:
        hs = session._handshake(False)
        try:
            hs.read_message(hp.message)
            message = hs.write_message()
        except SessionError:
            session.stats["dropped_handshake"] += 1
            return None
        response = wire.encode_response(wire.RESPONSE, session.local_index, hp.sender, message)
        return cls(hs, packet, hp.sender, response, now + session.config.handshake_timeout)


def random_index() -> int:
    """A random nonzero 32-bit session index."""
    return int.from_bytes(os.urandom(4), "big") or 1
