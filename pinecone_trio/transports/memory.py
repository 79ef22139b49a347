"""`memory://name`: in-process streams for tests, named in a process-wide registry.

`serve` registers the name (an empty name gets a fresh unique one, like port 0) and
unregisters it when cancelled; `dial` hands the listener one end of a
`trio.testing.memory_stream_pair()` and returns the other.
"""

from __future__ import annotations

import itertools
from typing import Final, final

import trio

from .base import Address, Handler, run_handler

#: Connections waiting to be accepted per listener before `dial` blocks (a backlog).
ACCEPT_BACKLOG: Final = 64

_listeners: dict[str, trio.MemorySendChannel[trio.abc.Stream]] = {}
_names = itertools.count(1)


@final
class MemoryTransport:
    """Dial and listen inside this process."""

    async def dial(self, address: Address, *, nursery: trio.Nursery | None) -> trio.abc.Stream:
        channel = _listeners.get(address.host)
        if channel is None:
            raise ConnectionRefusedError(f"{address}: nobody is listening")
        import trio.testing  # here, not at the top: it imports pytest (~0.3 s per process)

        ours, theirs = trio.testing.memory_stream_pair()
        try:
            await channel.send(theirs)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ConnectionRefusedError(f"{address}: the listener closed") from None
        return ours

    async def serve(
        self,
        address: Address,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        name = address.host or f"auto-{next(_names)}"
        if name in _listeners:
            raise OSError(f"memory://{name} is already in use")
        send, receive = trio.open_memory_channel[trio.abc.Stream](ACCEPT_BACKLOG)
        _listeners[name] = send
        bound = f"memory://{name}"
        try:
            async with trio.open_nursery() as nursery, receive:
                task_status.started(bound)
                async for stream in receive:
                    nursery.start_soon(run_handler, handler, stream, bound)
        finally:
            del _listeners[name]
            send.close()
