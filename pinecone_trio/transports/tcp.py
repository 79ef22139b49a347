"""`tcp://host:port`: plain Trio TCP streams (TCP_NODELAY is on, Trio's default)."""

from __future__ import annotations

from functools import partial
from typing import final

import trio

from ..link.constants import DIAL_TIMEOUT
from .base import Address, Handler, connect_tcp, listen_tcp, run_handler


@final
class TcpTransport:
    """Dial and listen on TCP."""

    async def dial(self, address: Address, *, nursery: trio.Nursery | None) -> trio.abc.Stream:
        with trio.move_on_after(DIAL_TIMEOUT):
            return await connect_tcp(address)
        raise TimeoutError(f"{address}: no TCP connection within {DIAL_TIMEOUT} s")

    async def serve(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await listen_tcp(address)
        # With a numeric host there is exactly one listener; with a name that resolves
        # to several addresses and port 0 each may get its own port: report the first.
        host, port = listeners[0].socket.getsockname()[:2]
        bound = str(Address("tcp", host, port))
        task_status.started(bound)
        await trio.serve_listeners(partial(run_handler, handler, where=bound), listeners)
