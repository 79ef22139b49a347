"""The handshake half of the session engine: INITIATION, RESPONSE, FINISH.

Theory of operation. The initiator sends INITIATION (`Session.dial`), the responder
answers RESPONSE, the initiator sends FINISH and is established; the responder is
established when FINISH verifies. The initiator re-sends INITIATION, the responder
RESPONSE, on a backoff timer (`Session.handle_timer`) until the answer arrives; with
none within `handshake_timeout` the session fails. A duplicate INITIATION gets the
cached RESPONSE, a duplicate RESPONSE at an unconfirmed initiator the cached FINISH.
`_establish` installs the keys, whichever side we are.

Rules worth knowing:
- Simultaneous dials: if both sides sent INITIATION, the dial from the lower routing key
  wins; the higher side drops its own handshake and answers. Both end in one session.
- A new INITIATION on an established session (the peer restarted) runs a candidate
  handshake beside it (`_Candidate`); only when that completes (so a replayed message
  cannot do it) are the old streams failed and the new keys installed
  (`Session._replace`).
- The initiator is "unconfirmed" until any TRANSPORT packet from the responder
  verifies; until then every probe timeout re-sends FINISH as well.
"""

from __future__ import annotations

import math
from typing import final

from ..errors import SessionError
from . import wire
from .crypto import PacketCipher
from .engine_base import SessionBase
from .events import HandshakeCompleted, State
from .handshake import SessionHandshake


class HandshakeMixin(SessionBase):
    """`Session`'s handshake packets (see the module docstring)."""

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
        cls, session: HandshakeMixin, hp: wire.HandshakePacket, packet: bytes, now: float
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
