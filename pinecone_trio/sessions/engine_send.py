"""The send path of the session engine: the outbox, packet assembly, ACKs and losses.

Theory of operation. `packets_to_send` first hands out the outbox (handshake messages
and CLOSE, built elsewhere and sent as they are), then builds TRANSPORT packets with
`_build_packet` until nothing is left to send or `max_burst_packets` is reached. A
packet carries, in this order of priority: datagrams, control frames, MAX_DATA and
MAX_STREAM_DATA, stream data (`_fill_streams`, round robin over `_sendable`), lazy
ACCEPTs, and an ACK in front. A packet that carries something to re-send if it is
lost (or a PING) goes to `Recovery` with what it carried (`SentPacket.records`:
("s", stream id, offset, size, fin), ("c", frame), ("md",), ("msd", stream id));
`_on_ack` and `_requeue` read those records back when the packet is acknowledged or
declared lost.

Rules worth knowing:
- ACKs: due at once after `ack_eliciting_threshold` ack-eliciting packets or a gap,
  else after `max_ack_delay`; an ACK is never sent alone before it is due, it rides on
  whatever packet goes out first.
- Control frames (OPEN, ACCEPT, REFUSE, RESET_STREAM, STOP_SENDING) are idempotent
  and re-sent verbatim when their packet is lost; MAX_DATA/MAX_STREAM_DATA are re-sent
  with the current value; stream bytes are re-sent from the stream's buffer.
- Corking: `packets_to_send(now, cork=True)` holds back a stream's fresh data that
  would only part-fill a packet (no FIN, limited by what was written, not by credit)
  and sets `corked`; the driver lets writers run once and asks again (`writes` counts
  successful writes so it can tell whether they added anything).
"""

from __future__ import annotations

import math
from typing import Any, Final

from ..errors import RemoteProtocolError
from . import wire
from .config import MAX_PACKET_NUMBER
from .engine_base import SessionBase
from .events import State, StreamState
from .recovery import SentPacket

_HEADER_AND_TAG: Final = wire.TRANSPORT_HEADER_SIZE + wire.AEAD_TAG_SIZE
#: Upper bounds on an encoded ACCEPT frame, and on OPEN less its protocol name
#: (array header, tag, a uint64 id, a str header).
_ACCEPT_FRAME_MAX: Final = 12
_OPEN_FRAME_OVERHEAD: Final = 16


class SendPathMixin(SessionBase):
    """`Session`'s send path (see the module docstring)."""

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
        self._confirm_at = math.inf  # any packet of ours confirms the handshake
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
        ack_room = 0
        ack_due = False
        if acks.has_unacked():
            # Room for an ACK is kept; it goes out only when due, or riding along with
            # something else (an ACK-only packet is never sent just because we could).
            ack_due = acks.ack_due(now)
            ack_ranges = acks.ranges()
            if ack_ranges:
                ack_room = wire.ack_frame_size(len(ack_ranges))
                budget -= ack_room
        may_send = self._probes > 0 or self._cc.can_send(self._recovery.bytes_in_flight)
        eliciting = False
        # Datagrams are unreliable and not congestion-controlled beyond the queue bound:
        # the application chose to send them now.
        while self._datagrams:
            dgram = self._datagrams[0]
            size = len(dgram.data) + wire.STREAM_FRAME_OVERHEAD + len(dgram.protocol.encode())
            if size > budget:
                if ack_ranges and not ack_due and not frames and size <= budget + ack_room:
                    # A datagram that fits only without the room kept for an ACK that
                    # is not due: it goes now, the ACK waits for a later packet.
                    budget += ack_room
                    ack_ranges = ()
                    continue
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

    # ------------------------------------------------------------ fate of sent packets

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
