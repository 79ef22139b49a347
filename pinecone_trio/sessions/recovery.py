"""Loss detection, RTT estimation and acknowledgement tracking (RFC 9002 in miniature).

Theory of operation. Every packet that asks for an acknowledgement (it carries anything
but ACK frames) is remembered in `Recovery.sent`, in packet-number order, with the
frames it carried as opaque records. An ACK frame names ranges of packet numbers; the
packets it newly covers are acknowledged, the newest gives an RTT sample, and then the
packets below the largest acknowledged one that are still missing are declared lost
when they are `PACKET_THRESHOLD` packets or `TIME_THRESHOLD` round trips behind
(RFC 9002 §6.1). The rest get a loss timer. When nothing comes back at all, a probe
timeout (PTO, §6.2) fires with exponential backoff and the engine sends a probe.
Lost packets' records go back to the engine for retransmission: data is re-sent, never
the packet. ACK-only packets are not remembered, not counted in flight, and never
retransmitted.

`AckTracker` is the receiving side: which packet numbers arrived (as at most
`MAX_ACK_RANGES` ranges) and when an ACK is due (immediately after two ack-eliciting
packets or a gap, else after `max_ack_delay`). The driver handles every packet that is
already waiting before it flushes, so one ACK covers a whole batch.

Not handled: ECN, pacing (links are TCP, overlay queues are the buffers), and the
handshake packet number spaces (the handshake retransmits on its own timer).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any, final

from .config import (
    GRANULARITY,
    INITIAL_RTT,
    MAX_ACK_RANGES,
    MIN_PTO,
    PACKET_THRESHOLD,
    TIME_THRESHOLD,
)

#: Largest PTO backoff exponent; beyond it the idle timeout decides.
_MAX_PTO_BACKOFF = 6


@dataclass(slots=True)
class SentPacket:
    """An ack-eliciting packet in flight and what it carried."""

    packet_number: int
    time_sent: float
    size: int
    records: list[tuple[Any, ...]] = field(default_factory=list)


@final
class RttEstimator:
    """Smoothed RTT and variance as in RFC 9002 §5."""

    __slots__ = ("_has_sample", "latest", "min_rtt", "rttvar", "smoothed")

    def __init__(self, initial: float = INITIAL_RTT) -> None:
        self.latest = 0.0
        self.min_rtt = math.inf
        self.smoothed = initial
        self.rttvar = initial / 2
        self._has_sample = False

    @property
    def has_sample(self) -> bool:
        return self._has_sample

    def update(self, latest: float, ack_delay: float) -> None:
        latest = max(latest, 0.0)
        self.latest = latest
        self.min_rtt = min(self.min_rtt, latest)
        if not self._has_sample:
            self._has_sample = True
            self.smoothed = latest
            self.rttvar = latest / 2
            return
        adjusted = latest - ack_delay if latest >= self.min_rtt + ack_delay else latest
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.smoothed - adjusted)
        self.smoothed = 0.875 * self.smoothed + 0.125 * adjusted


@final
class Recovery:
    """Sent-packet bookkeeping, loss detection and the PTO timer of one session."""

    __slots__ = (
        "bytes_in_flight",
        "largest_acked",
        "loss_time",
        "max_ack_delay",
        "pto_count",
        "rtt",
        "sent",
        "time_of_last_ack_eliciting",
    )

    def __init__(self, max_ack_delay: float) -> None:
        self.max_ack_delay = max_ack_delay
        self.rtt = RttEstimator()
        self.sent: dict[int, SentPacket] = {}
        self.largest_acked = -1
        self.bytes_in_flight = 0
        self.time_of_last_ack_eliciting = -math.inf
        self.loss_time = math.inf
        self.pto_count = 0

    def on_packet_sent(self, packet: SentPacket) -> None:
        self.sent[packet.packet_number] = packet
        self.bytes_in_flight += packet.size
        self.time_of_last_ack_eliciting = packet.time_sent

    def on_ack(
        self, ranges: tuple[tuple[int, int], ...], ack_delay: float, now: float
    ) -> tuple[list[SentPacket], list[SentPacket]]:
        """Process an ACK frame's ranges (descending); returns (acked, lost) packets."""
        largest = ranges[0][0]
        acked: list[SentPacket] = []
        if self.sent:
            ascending = ranges[::-1]
            index = 0
            lo, hi = ascending[0][1], ascending[0][0]
            for pn in list(self.sent):
                if pn > largest:
                    break
                while pn > hi:
                    index += 1
                    if index == len(ascending):
                        break
                    hi, lo = ascending[index]
                if index == len(ascending):
                    break
                if pn >= lo:
                    acked.append(self.sent.pop(pn))
        if not acked:
            return acked, []
        for packet in acked:
            self.bytes_in_flight -= packet.size
        newest = acked[-1]
        if largest > self.largest_acked:
            self.largest_acked = largest
        if newest.packet_number == largest:
            self.rtt.update(now - newest.time_sent, min(ack_delay, self.max_ack_delay))
        self.pto_count = 0
        return acked, self.detect_lost(now)

    def detect_lost(self, now: float) -> list[SentPacket]:
        """Remove and return the packets now deemed lost; re-arm the loss timer."""
        self.loss_time = math.inf
        rtt = self.rtt
        loss_delay = max(TIME_THRESHOLD * max(rtt.latest, rtt.smoothed), GRANULARITY)
        largest = self.largest_acked
        lost: list[SentPacket] = []
        for pn, packet in self.sent.items():
            if pn > largest:
                break
            # Compare exactly what the timer was armed with, so a timer that fires at
            # `time_sent + loss_delay` always finds the packet lost (no float drift).
            deadline = packet.time_sent + loss_delay
            if deadline <= now or largest >= pn + PACKET_THRESHOLD:
                lost.append(packet)
            else:
                self.loss_time = min(self.loss_time, deadline)
        for packet in lost:
            del self.sent[packet.packet_number]
            self.bytes_in_flight -= packet.size
        return lost

    def pto_interval(self) -> float:
        rtt = self.rtt
        base = max(rtt.smoothed + max(4 * rtt.rttvar, GRANULARITY) + self.max_ack_delay, MIN_PTO)
        return base * float(1 << min(self.pto_count, _MAX_PTO_BACKOFF))

    def pto_time(self) -> float:
        if not self.sent:
            return math.inf
        return self.time_of_last_ack_eliciting + self.pto_interval()

    def next_deadline(self) -> float:
        return min(self.loss_time, self.pto_time())

    def oldest_unacked(self) -> SentPacket | None:
        for packet in self.sent.values():
            return packet
        return None

    def discard_all(self) -> list[SentPacket]:
        """Forget everything in flight (the session is closing); returns it."""
        packets = list(self.sent.values())
        self.sent.clear()
        self.bytes_in_flight = 0
        self.loss_time = math.inf
        return packets


@final
class AckTracker:
    """Received packet numbers, kept as ascending inclusive `[low, high]` ranges."""

    __slots__ = ("_highs", "_lows", "ack_deadline", "eliciting_since_ack", "immediate")

    def __init__(self) -> None:
        self._lows: list[int] = []
        self._highs: list[int] = []
        self.eliciting_since_ack = 0
        self.immediate = False
        self.ack_deadline = math.inf

    @property
    def largest(self) -> int:
        return self._highs[-1] if self._highs else -1

    def on_packet(
        self,
        pn: int,
        ack_eliciting: bool,
        now: float,
        max_ack_delay: float,
        threshold: int = 2,
    ) -> None:
        """Record packet `pn` (already known to be new) and schedule an ACK.

        The ACK is due at once after `threshold` ack-eliciting packets or a packet out
        of order, else within `max_ack_delay`.
        """
        lows, highs = self._lows, self._highs
        if highs and pn == highs[-1] + 1:
            highs[-1] = pn
            in_order = True
        else:
            in_order = not highs
            i = bisect_left(lows, pn)
            # Merge with the neighbours where the new number closes a gap.
            joins_left = i > 0 and highs[i - 1] + 1 == pn
            joins_right = i < len(lows) and lows[i] - 1 == pn
            if joins_left and joins_right:
                highs[i - 1] = highs[i]
                del lows[i], highs[i]
            elif joins_left:
                highs[i - 1] = pn
            elif joins_right:
                lows[i] = pn
            else:
                lows.insert(i, pn)
                highs.insert(i, pn)
            if len(lows) > MAX_ACK_RANGES:
                del lows[0], highs[0]
        if ack_eliciting:
            self.eliciting_since_ack += 1
            if not in_order or self.eliciting_since_ack >= threshold:
                self.immediate = True
            self.ack_deadline = min(self.ack_deadline, now + max_ack_delay)

    def ack_due(self, now: float) -> bool:
        return self.immediate or now >= self.ack_deadline

    def has_unacked(self) -> bool:
        return self.eliciting_since_ack > 0

    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The ranges for an ACK frame, descending (high, low)."""
        return tuple(zip(reversed(self._highs), reversed(self._lows), strict=True))

    def on_ack_sent(self) -> None:
        self.eliciting_since_ack = 0
        self.immediate = False
        self.ack_deadline = math.inf
