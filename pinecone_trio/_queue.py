"""A bounded, drop-when-full queue from the router task to one consumer task.

A `trio.MemoryReceiveChannel` hands its consumer one item per scheduler round, while
the router task can deliver a few hundred per round: under load the consumer falls
behind and the buffer overflows although the consumer is idle most of the time. This
queue lets the consumer take items without yielding while they are there, and yields
(a full checkpoint) only every `YIELD_EVERY` items and when it must wait, so bursts are
consumed at the rate they arrive and other tasks still run.
"""

from __future__ import annotations

from collections import deque
from typing import Final, Generic, TypeVar

import trio

T = TypeVar("T")

#: A consumer takes at most this many items between two schedule points.
YIELD_EVERY: Final = 64


class DropQueue(Generic[T]):
    """Items from a synchronous producer to an async consumer; full means dropped."""

    __slots__ = ("_closed", "_count", "_event", "_items", "_max")

    def __init__(self, max_items: int) -> None:
        self._items: deque[T] = deque()
        self._max = max_items
        self._event = trio.Event()
        self._count = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T) -> bool:
        """Queue `item`; False (and nothing queued) when the queue is full or closed."""
        if self._closed or len(self._items) >= self._max:
            return False
        self._items.append(item)
        self._event.set()
        return True

    def close(self) -> None:
        """Wake the consumer; `get` raises `trio.ClosedResourceError` once drained."""
        self._closed = True
        self._event.set()

    async def get(self) -> T:
        """The next item, waiting for one if need be.

        Raises:
            trio.ClosedResourceError: if the queue was closed and is empty.
        """
        while not self._items:
            if self._closed:
                raise trio.ClosedResourceError("the node has stopped")
            # Replace the event only once it fired: every waiting consumer parks on the
            # same event (a fresh one per waiter would strand the earlier waiters).
            if self._event.is_set():
                self._event = trio.Event()
            await self._event.wait()
            self._count = 0
        self._count += 1
        if self._count >= YIELD_EVERY:
            self._count = 0
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()
        return self._items.popleft()
