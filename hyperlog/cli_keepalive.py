"""The socket options that make a live clone notice a server that vanished without a
word: TCP keepalive on an idle connection, TCP_USER_TIMEOUT on one with data in
flight (Linux), over tcp:// and under ws:// alike (`_keep_alive`)."""

from __future__ import annotations

import contextlib
import socket

import trio

#: Seconds a live clone's TCP connection may be idle before the kernel probes the peer,
#: the seconds between probes, and the unanswered probes that break the connection: a
#: vanished peer (Wi-Fi gone, no reset) is noticed within about 30 s.
LIVE_KEEPALIVE_IDLE = 15
LIVE_KEEPALIVE_INTERVAL = 5
LIVE_KEEPALIVE_COUNT = 3
#: Seconds data a live clone sent may stay unacknowledged before the kernel breaks its
#: connection (TCP_USER_TIMEOUT, Linux only): keepalive never probes while something
#: is unacknowledged, and a downloading clone soon has something (the Cancel of a
#: request unanswered for REQUEST_TIMEOUT), so a server vanishing mid-download went
#: unnoticed for the system's ~15 minutes of retransmissions.
LIVE_USER_TIMEOUT = 30


def _keep_alive(stream: trio.abc.Stream) -> None:
    """Have the kernel probe an idle TCP connection, so a peer that vanished without a
    word (Wi-Fi gone, a laptop asleep) breaks it within about `LIVE_KEEPALIVE_IDLE` +
    `LIVE_KEEPALIVE_COUNT` x `LIVE_KEEPALIVE_INTERVAL` seconds: a live clone sends
    nothing while it waits for appends, so it would otherwise wait for ever. Where the
    system has TCP_USER_TIMEOUT (Linux), data left unacknowledged for
    `LIVE_USER_TIMEOUT` seconds breaks it too (a peer vanishing mid-download). `stream`
    is a link's transport stream: a tcp:// one, or a ws:// one, whose TCP connection
    gets the same options (it used to keep the system's defaults, and a clone over
    ws:// never noticed a vanished server)."""
    sock = _tcp_under(stream)
    if sock is None:
        return
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, _keepalive_idle_option(), LIVE_KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), LIVE_KEEPALIVE_INTERVAL),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), LIVE_KEEPALIVE_COUNT),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), LIVE_USER_TIMEOUT * 1000),
    ]
    for level, name, value in options:
        if name is not None:
            with contextlib.suppress(OSError):  # best effort: the defaults still work
                sock.setsockopt(level, name, value)


def _keepalive_idle_option() -> int | None:
    """The option setting a connection's idle time before the first keepalive probe:
    TCP_KEEPIDLE (Linux, Windows, the BSDs), or TCP_KEEPALIVE on macOS, which names it
    so and has no TCP_KEEPIDLE (Python exposes it since 3.10). Without it a clone on a
    Mac probed only after the system's two hours."""
    for name in ("TCP_KEEPIDLE", "TCP_KEEPALIVE"):
        option = getattr(socket, name, None)
        if option is not None:
            return int(option)
    return None


def _tcp_under(stream: trio.abc.Stream) -> trio.SocketStream | None:
    """The TCP connection a link's transport stream runs over (None: not TCP)."""
    from pinecone_trio.transports.websocket import WebSocketStream

    if isinstance(stream, WebSocketStream):
        return stream.socket_stream
    return stream if isinstance(stream, trio.SocketStream) else None
