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

`Session` is assembled from one mixin per subject, each a subclass of `SessionBase`
(engine_base.py, which initialises every field in one place); each module's docstring
has the rules of its subject:
- engine_handshake.py: the handshake packets, their retransmission, simultaneous dials
  and restarts (`HandshakeMixin`);
- engine_streams.py: the stream table, the frames that act on streams, flow-control
  credit and the application's stream calls (`StreamsMixin`);
- engine_send.py: the outbox, packet assembly, ACKs and corking, and what happens to a
  sent packet when it is acknowledged or lost (`SendPathMixin`);
- this module: construction, closing, the input path (decrypting packets and
  dispatching their frames), datagrams and timers. `State`, `StreamState`,
  `StreamBroken` and the events are defined in events.py and re-exported here.

Input: a peer that breaks the protocol after authenticating (bad frame, flow-control
violation) has the session closed with a `RemoteProtocolError` chained. Packets that do
not authenticate are dropped and counted, never acted on.

Not done: key rotation (64-bit packet numbers never run out in practice; WireGuard
rotates every 2 minutes for forward secrecy, we keep a session's keys for its life),
connection migration (there is no path to migrate: the overlay routes by key), pacing.
"""

from __future__ import annotations

import math
import os
from typing import Final, final

from ..errors import DecodeError, RemoteProtocolError, SessionError, SessionTimeoutError
from ..identity import Identity, PublicKey
from . import wire
from .config import SessionConfig, check_protocol_name
from .engine_handshake import HandshakeMixin, _Candidate
from .engine_send import _HEADER_AND_TAG, SendPathMixin
from .engine_streams import CODE_CLOSED, CODE_REFUSED, StreamsMixin, _DropPacket
from .events import (
    DatagramReceived,
    Event,
    HandshakeCompleted,
    IncomingStream,
    SessionClosed,
    SessionReplaced,
    State,
    StreamBroken,
    StreamState,
)

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CODE_CLOSED",
    "CODE_REFUSED",
    "DatagramReceived",
    "Event",
    "HandshakeCompleted",
    "IncomingStream",
    "Session",
    "SessionClosed",
    "SessionReplaced",
    "State",
    "StreamBroken",
    "StreamState",
    "random_index",
]

#: CLOSE codes.
CLOSE_NORMAL: Final = 0
CLOSE_PROTOCOL_ERROR: Final = 1


@final
class Session(HandshakeMixin, StreamsMixin, SendPathMixin):
    """One end-to-end session (see the module docstring).

    Use `Session.dial(...)` for the side that initiates and `Session.answer(...)` for a
    session created by an incoming INITIATION (then feed that packet to it).
    """

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

    def _successor(self, now: float) -> Session:
        """A fresh session between the same two keys, under our index."""
        new = Session(
            identity=self.identity,
            local_address=self.local_address,
            remote_address=self.remote_address,
            local_index=self.local_index,
            expected_key=self.expected_key,
            config=self.config,
            now=now,
        )
        new.keepalive = self.keepalive
        return new

    def _replace(self, candidate: _Candidate, now: float) -> None:
        """The peer's new handshake completed on our established session (it restarted,
        or its dial beat ours): a fresh session takes over under the new keys."""
        new = self._successor(now)
        new._adopt(candidate, now)
        self._candidates.clear()
        self._fail(
            SessionError(
                "the peer replaced the session (it restarted, or dialled us at the same"
                " time); its streams were lost",
                remote_key=self.remote_key,
            )
        )
        self.events.append(SessionReplaced(new))

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
        candidates = self._candidates
        self._candidates = []
        if candidates and notify_peer is None:
            self._promote(candidates)

    def _promote(self, candidates: list[_Candidate]) -> None:
        """The session ended (the peer's CLOSE, an idle timeout, our own dial timing
        out) while handshakes of the peer were pending beside it: they go on as a
        session of their own, waiting for a FINISH (a CLOSE overtaken by the next
        INITIATION, as after `close_session` then `connect`, must not end both; nor
        must our dial's timeout end the peer's dial that is about to complete)."""
        new = self._successor(self._now)
        new._candidates = candidates
        self.events.append(SessionReplaced(new))

    def close(self, reason: str = "closed") -> None:
        """Close the session: tell the peer (best effort) and fail every stream."""
        if self.state is State.CLOSED:
            return
        if self.state is State.HANDSHAKE:
            self._hs_outbox.clear()  # an unsent INITIATION or RESPONSE is moot now
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

    # ------------------------------------------------------------ datagrams

    def send_datagram(self, protocol: str, data: bytes) -> bool:
        """Queue an unreliable datagram; returns False if it was dropped (queue full).

        Raises:
            ValueError: if the name is bad or the datagram is larger than one packet.
            StreamBroken: if the session is closed.
        """
        check_protocol_name(protocol)
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
            return self._handshake_deadline()
        deadline = min(
            self._last_recv + self.config.idle_timeout,
            self._recovery.next_deadline(),
            self._acks.ack_deadline,
            self._lazy_due,
        )
        if self.wanted:
            deadline = min(deadline, self._last_eliciting_sent + self.config.keepalive_interval)
        if self._candidates or not self._confirmed or self._confirm_at != math.inf:
            deadline = min(deadline, self._handshake_deadline())
        return deadline

    def handle_timer(self, now: float) -> None:
        """Fire whatever timers are due at `now`."""
        if self.state is State.CLOSED:
            return
        self._now = now
        if self._candidates or not self._confirmed or self._confirm_at != math.inf:
            self._handshake_timers(now)
            if self.state is not State.ESTABLISHED:
                return
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


def random_index() -> int:
    """A random nonzero 32-bit session index."""
    return int.from_bytes(os.urandom(4), "big") or 1
