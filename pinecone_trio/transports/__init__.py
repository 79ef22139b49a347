"""Transports addressed by URI: `tcp://host:port`, `ws://host:port/path`, `memory://name`.

`await dial(uri)` returns a raw `trio.abc.Stream`; `await nursery.start(serve, uri,
handler)` listens, returns the bound URI (port 0 and an empty memory name pick a free
one) and calls `handler(stream)` in its own task for each connection. A handler that
raises is logged and its connection closed; the listener keeps serving.
"""

from __future__ import annotations

from typing import Final

import trio

from .base import Address as Address
from .base import Handler as Handler
from .base import Transport as Transport
from .base import parse_uri as parse_uri
from .memory import MemoryTransport
from .tcp import TcpTransport
from .websocket import WebSocketStream as WebSocketStream
from .websocket import WebSocketTransport

#: The transport serving each URI scheme.
TRANSPORTS: Final[dict[str, Transport]] = {
    "tcp": TcpTransport(),
    "ws": WebSocketTransport(),
    "memory": MemoryTransport(),
}


async def dial(uri: str, *, nursery: trio.Nursery | None = None) -> trio.abc.Stream:
    """Open a raw stream to `uri`.

    Args:
        uri: `tcp://host:port`, `ws://host:port/path` or `memory://name`.
        nursery: where a ws:// connection runs its reader task (required for ws://);
            it must outlive the stream.

    Raises:
        ValueError: if the URI is malformed (or ws:// without a nursery).
        OSError: if the address cannot be reached (TimeoutError after `DIAL_TIMEOUT`).
    """
    address = parse_uri(uri)
    return await TRANSPORTS[address.scheme].dial(address, nursery=nursery)


async def serve(
    uri: str,
    handler: Handler,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `uri` and call `handler(stream)` per connection until cancelled.

    Start with `bound = await nursery.start(serve, uri, handler)`; `bound` is the URI
    actually bound (e.g. `tcp://127.0.0.1:41234` for `tcp://127.0.0.1:0`).

    Raises:
        ValueError: if the URI is malformed.
        OSError: if the address cannot be bound.
    """
    address = parse_uri(uri)
    await TRANSPORTS[address.scheme].serve(address, handler, task_status=task_status)


__all__ = [
    "TRANSPORTS",
    "Address",
    "Handler",
    "Transport",
    "WebSocketStream",
    "dial",
    "parse_uri",
    "serve",
]
