"""NewReno congestion control (RFC 9002 §7), counted in bytes.

Theory of operation. The window starts at `initial_window_packets` full packets. In
slow start every acknowledged byte grows it by a byte; past the slow-start threshold it
grows by one packet per window acknowledged (congestion avoidance). A loss of a packet
sent after the current recovery period began halves the window (never below the
minimum) and starts a new recovery period, so one burst of losses halves it once.
Repeated probe timeouts with nothing acknowledged (`on_persistent_congestion`) collapse
it to the minimum.

The window is capped at `cap` bytes (the session's flow-control window twice over):
flow control bounds what can be in flight anyway, and an application-limited session
must not grow a window it never used into a burst later (RFC 9002 §7.8, simplified).
"""

from __future__ import annotations

import math
from typing import final


@final
class NewReno:
    """A byte-counting NewReno window."""

    __slots__ = ("_acked", "_cap", "_min", "_packet", "cwnd", "recovery_start", "ssthresh")

    def __init__(
        self, *, max_packet: int, initial_packets: int, minimum_packets: int, cap: int
    ) -> None:
        self._packet = max_packet
        self._min = minimum_packets * max_packet
        self._cap = max(cap, initial_packets * max_packet)
        self.cwnd = initial_packets * max_packet
        self.ssthresh = math.inf
        self.recovery_start = -math.inf
        self._acked = 0

    def can_send(self, bytes_in_flight: int) -> bool:
        return bytes_in_flight < self.cwnd

    def on_acked(self, size: int, time_sent: float) -> None:
        if time_sent <= self.recovery_start:
            return
        if self.cwnd < self.ssthresh:
            self.cwnd = min(self.cwnd + size, self._cap)
            return
        self._acked += size
        if self._acked >= self.cwnd:
            self._acked -= self.cwnd
            self.cwnd = min(self.cwnd + self._packet, self._cap)

    def on_lost(self, newest_time_sent: float, now: float) -> None:
        if newest_time_sent <= self.recovery_start:
            return
        self.recovery_start = now
        self.cwnd = max(self.cwnd // 2, self._min)
        self.ssthresh = self.cwnd
        self._acked = 0

    def on_persistent_congestion(self, now: float) -> None:
        self.recovery_start = now
        self.ssthresh = max(self.cwnd // 2, self._min)
        self.cwnd = self._min
        self._acked = 0
