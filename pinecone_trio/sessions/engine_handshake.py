"""The handshake half of the session engine: INITIATION, RESPONSE, FINISH.

Theory of operation. The initiator sends INITIATION (`Session.dial`), the responder
answers RESPONSE, the initiator sends FINISH and is established; the responder is
established when FINISH verifies. `_establish` installs the keys, whichever side we are.

The overlay does not authenticate source keys: anyone can send an INITIATION in a
peer's name. So an INITIATION never changes a session by itself. Each one is answered
by a *candidate* responder handshake (`_Candidate`, at most `MAX_CANDIDATES` per
session) that lives beside our own dial or our established session, and only the
candidate whose FINISH verifies (the peer proved its identity) acts:

- on a session still in its handshake it becomes the session (`_adopt`), and our own
  dial, if we were dialling too, is dropped;
- on an established session the peer restarted: a fresh session takes over under the
  new keys and the old streams fail (`Session._replace`);
- on a session that ended meanwhile (a CLOSE overtaken by the next INITIATION) the
  pending candidates go on as a new session (`Session._promote`).

Simultaneous dials: the dial from the lower routing key wins. The lower side ignores
the peer's INITIATIONs while it dials and, once its dial completed, until the peer
confirmed it (until then a crossing INITIATION is still on its way); it also drops
the candidates it held. The higher side answers the lower side's INITIATIONs with a
candidate but keeps its own dial, so a forged INITIATION cannot cancel it; whichever
completes first is its session, and if its own dial completed first, the lower
side's FINISH still arrives and replaces it. Both end on the same keys.

Retransmission is the initiator's, so a forged INITIATION is answered once per packet
and never on a timer: INITIATION is re-sent until RESPONSE arrives (a duplicate
INITIATION gets the cached RESPONSE), then FINISH until the session is confirmed, i.e.
until any TRANSPORT packet from the responder verifies (a duplicate RESPONSE gets the
cached FINISH too). A responder with nothing to send within `max_ack_delay` of FINISH
sends a PING, and answers a re-sent FINISH with one, so an idle initiator is confirmed
too; one that never is ends by the idle timeout, as any session whose peer is silent.
"""

from __future__ import annotations

import math
from typing import final

from ..errors import SessionError, SessionTimeoutError
from . import wire
from .config import MAX_CANDIDATES
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
        self._hs_deadline = now + self.config.handshake_timeout
        self._send_handshake(
            wire.encode_initiation(self.local_index, self._hs.write_message()), now
        )

    def start_dial(self, now: float) -> bool:
        """Dial from a session a peer's INITIATION made, beside its candidates.

        `connect` on such a session must not only wait for them: the INITIATION may be
        forged. Nor should it dial at once: a real one completes within a round trip,
        and a dial of ours crossing it could make the peer replace a session it already
        uses. So the dial starts after `handshake_retransmit` (0.5 s) unless a
        candidate completed by then, or at once if none is pending. Returns whether a
        dial was started or scheduled (False: established, closed, or already so).
        """
        if self.state is not State.HANDSHAKE or self._hs is not None or self._dial_at < math.inf:
            return False
        self._now = now
        if self._candidates:
            self._dial_at = now + self.config.handshake_retransmit
        else:
            self._start_initiator(now)
        return True

    def _send_handshake(self, packet: bytes, now: float) -> None:
        self._hs_sent_at = now
        self._hs_resent = False
        self._hs_packet = packet
        self._hs_outbox.append(packet)
        self._hs_interval = self.config.handshake_retransmit
        self._hs_retransmit_at = now + self._hs_interval

    def _on_initiation(self, hp: wire.HandshakePacket, packet: bytes, now: float) -> None:
        if packet == self._hs_initiation or packet in self._superseded:
            return  # a late duplicate of a handshake that completed, or that lost
        for candidate in self._candidates:
            if candidate.initiation == packet:
                self._hs_outbox.append(candidate.response)  # our RESPONSE was lost
                return
        if self.local_address < self.remote_address and (
            (self.state is State.HANDSHAKE and self._hs is not None)
            or (self._finish_packet is not None and not self._confirmed)
        ):
            # Simultaneous dials: ours wins, and the peer will take it. Also once our
            # dial completed, until the peer confirms it: an INITIATION then crossed our
            # FINISH (answering it could leave each side on the other's keys when
            # packets are reordered). A peer that restarted within that round trip is
            # answered only after our session ends (idle timeout).
            return
        fresh = _Candidate.start(self, hp, packet, now)
        if fresh is None:
            return
        if len(self._candidates) >= MAX_CANDIDATES:
            # The oldest goes: a real peer's candidate needs only a round trip, so a
            # forger must keep MAX_CANDIDATES INITIATIONs coming every round trip to
            # crowd it out (refusing new ones instead, four forged packets every
            # `handshake_timeout` would lock the peer out).
            # (Not marked superseded: a re-sent copy of it is answered afresh.)
            del self._candidates[0]
            self.stats["dropped_handshake"] += 1
        self._candidates.append(fresh)
        self._hs_outbox.append(fresh.response)

    def _on_response(self, hp: wire.HandshakePacket, now: float) -> None:
        hs = self._hs
        if self.state is State.ESTABLISHED:
            if hp.sender == self._remote_index and self._finish_packet and not self._confirmed:
                self._hs_outbox.append(self._finish_packet)
            return
        if hs is None:
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
        if self.local_address < self.remote_address:
            self._drop_candidates()  # our dial won: the peer's will not complete here
        # The RTT sample is only trustworthy if INITIATION went out once.
        self._establish(hs, now, rtt_sample=None if self._hs_resent else now - self._hs_sent_at)
        # FINISH is re-sent on the handshake timer until we are confirmed (or the idle
        # timeout ends a session whose peer never answers).
        self._hs_interval = self.config.handshake_retransmit
        self._hs_retransmit_at = now + self._hs_interval

    def _on_finish(self, hp: wire.HandshakePacket, now: float) -> None:
        matching = [c for c in self._candidates if c.remote_index == hp.sender]
        if not matching:
            if self.state is State.ESTABLISHED and hp.sender == self._remote_index:
                # Our initiator re-sends FINISH: it has heard nothing from us yet.
                self._need_ping = True
            else:
                self.stats["dropped_handshake"] += 1
            return
        # Forged INITIATIONs may have copied the real one's sender index: try each.
        for candidate in matching:
            self._candidates.remove(candidate)
            try:
                candidate.handshake.read_message(hp.message)
            except SessionError:
                # Not this candidate's FINISH (forged on-path, or a wrong identity); the
                # Noise state is spent either way, so the candidate goes.
                self._superseded.append(candidate.initiation)
                self.stats["dropped_handshake"] += 1
                continue
            if self.state is not State.ESTABLISHED:
                self._adopt(candidate, now)
            else:
                self._replace(candidate, now)
            return

    def _adopt(self, candidate: _Candidate, now: float) -> None:
        """The peer's handshake completed before ours: it is this session's."""
        self._hs = None
        self._dial_at = math.inf
        self._drop_candidates()
        self._remote_index = candidate.remote_index
        self._hs_initiation = candidate.initiation
        self._establish(candidate.handshake, now, rtt_sample=None)
        self._confirmed = True
        # The initiator re-sends FINISH until any TRANSPORT packet of ours verifies; if
        # nothing goes out by then (an idle initiator), a PING does it.
        self._confirm_at = now + self.config.max_ack_delay

    def _drop_candidates(self) -> None:
        for candidate in self._candidates:
            self._superseded.append(candidate.initiation)
        self._candidates.clear()

    def _expire_candidates(self, now: float) -> None:
        if any(now >= c.deadline for c in self._candidates):
            self._candidates = [c for c in self._candidates if now < c.deadline]

    def _handshake_deadline(self) -> float:
        """When `_handshake_timers` next has something to do (any state)."""
        deadline = min(
            min((c.deadline for c in self._candidates), default=math.inf),
            self._dial_at,
            self._confirm_at,
        )
        if self._hs is not None:
            return min(deadline, self._hs_deadline, self._hs_retransmit_at)
        if self._finish_packet is not None and not self._confirmed:
            return min(deadline, self._hs_retransmit_at)
        if self.state is State.HANDSHAKE and not self._candidates and self._dial_at == math.inf:
            return self._hs_deadline  # answered, but no INITIATION was valid
        return deadline

    def _handshake_timers(self, now: float) -> None:
        """Expire candidates, start a deferred dial, re-send our INITIATION or FINISH,
        or give up."""
        self._expire_candidates(now)
        if now >= self._confirm_at:
            self._confirm_at = math.inf
            self._need_ping = True
        if self.state is State.HANDSHAKE and self._hs is None:
            if self._dial_at < math.inf and (now >= self._dial_at or not self._candidates):
                self._dial_at = math.inf
                self._start_initiator(now)
                return
            if not self._candidates and self._dial_at == math.inf:
                # Only the peer's INITIATIONs made this session, and none completed.
                self._fail(self._timeout_error())
                return
        dialling = self._hs is not None
        if dialling and now >= self._hs_deadline:
            self._fail(self._timeout_error())
            return
        finishing = self._finish_packet is not None and not self._confirmed
        if not (dialling or finishing) or now < self._hs_retransmit_at:
            return
        packet = self._hs_packet if dialling else self._finish_packet
        assert packet is not None
        self._hs_outbox.append(packet)
        self._hs_resent = True
        self._hs_interval = min(self._hs_interval * 1.5, self.config.handshake_retransmit_max)
        self._hs_retransmit_at = now + self._hs_interval

    def _timeout_error(self) -> SessionTimeoutError:
        return SessionTimeoutError(
            f"no session with {self.remote_address.hex()}: the handshake did not"
            f" complete within {self.config.handshake_timeout:g} s",
            remote_key=self.remote_address,
        )

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
    """A responder handshake for one of the peer's INITIATIONs (module docstring)."""

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
