"""The TCP keepalive of a live clone (``clone --live``), which makes it notice a server
that vanished without a word: keepalive probes on an idle connection, TCP_USER_TIMEOUT
on one with data in flight (Linux), over tcp:// and under ws:// alike. The follower
sets them (`hyperlog.follower.set_keepalive`, the one piece of code for both);
these are the clone's values (the follower's defaults)."""

from __future__ import annotations

from typing import Final

import trio

from .follower import TcpKeepalive, set_keepalive

#: Seconds a live clone's TCP connection may be idle before the kernel probes the peer,
#: the seconds between probes, and the unanswered probes that break the connection: a
#: vanished peer (Wi-Fi gone, no reset) is noticed within about 30 s.
LIVE_KEEPALIVE_IDLE: Final = 15
LIVE_KEEPALIVE_INTERVAL: Final = 5
LIVE_KEEPALIVE_COUNT: Final = 3
#: Seconds data a live clone sent may stay unacknowledged before the kernel breaks its
#: connection (TCP_USER_TIMEOUT, Linux only): keepalive never probes while something
#: is unacknowledged, and a downloading clone soon has something (the Cancel of a
#: request unanswered for REQUEST_TIMEOUT), so a server vanishing mid-download went
#: unnoticed for the system's ~15 minutes of retransmissions.
LIVE_USER_TIMEOUT: Final = 30

#: What `clone --live`'s follower sets on each connection.
LIVE_KEEPALIVE: Final = TcpKeepalive(
    idle=LIVE_KEEPALIVE_IDLE,
    interval=LIVE_KEEPALIVE_INTERVAL,
    count=LIVE_KEEPALIVE_COUNT,
    user_timeout=LIVE_USER_TIMEOUT,
)


def _keep_alive(stream: trio.abc.Stream) -> None:
    """Set the live clone's keepalive (`LIVE_KEEPALIVE`) on the TCP connection under
    `stream` (a tcp:// stream, or a ws:// one's), if it has one."""
    set_keepalive(stream, LIVE_KEEPALIVE)
