"""Overlay services: many protocols sharing one node's overlay datagrams.

Every exact-key and closest-key payload the node carries starts with one service tag
byte, added on send and removed on delivery: 0 is raw application datagrams
(`Node.send` / `Node.receive`), 1 the end-to-end sessions, 2 the DHT; applications may
use tags from `FIRST_APPLICATION_SERVICE` up. Each service has its own bounded receive
queues, so a service that does not read cannot starve another.

A service whose consumer is itself synchronous and bounded (the session manager) may
instead take its exact-key datagrams straight from the node's router task through a
direct handler (`OverlayService.set_direct_handler`): no queue item, no task switch and
no copy per packet (the handler sees a memoryview of the frame's payload past the tag).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from ._queue import DropQueue
from .identity import PublicKey
from .router.actions import LocalSend, LocalSendClosest
from .router.constants import MAX_TRAFFIC_PAYLOAD

#: Datagrams buffered per service and delivery mode before new ones are dropped.
RECEIVE_BUFFER: Final = 4096

#: The first byte of every exact-key overlay payload names the service it is for, so
#: raw application datagrams and end-to-end session packets share the overlay safely.
SERVICE_DATAGRAM: Final = 0
SERVICE_SESSION: Final = 1
SERVICE_DHT: Final = 2
#: Service tags from here up are free for applications.
FIRST_APPLICATION_SERVICE: Final = 16
#: The largest payload `Node.send` takes (the router's limit less the service byte).
MAX_DATAGRAM_PAYLOAD: Final = MAX_TRAFFIC_PAYLOAD - 1

#: How a service hands a message to the node's router (with back-pressure).
LocalQueue = Callable[[LocalSend | LocalSendClosest], Awaitable[None]]
#: The same without waiting: False when the message cannot be queued at once.
LocalQueueNowait = Callable[[LocalSend | LocalSendClosest], bool]

#: A direct receiver: called as `handler(source_key, payload)` in the node's router task
#: for every exact-key datagram of the service; returns False if it dropped the datagram
#: (the node counts it in `receive_drops`). It must not block: its run time is the
#: router's, which is what pushes back on the links (TCP) when it falls behind. The
#: payload is a read-only view into the link's read buffer (no copy): a handler that
#: keeps any of it past the call must copy it (`bytes(payload)`), or it keeps that
#: whole buffer (up to 256 KiB) alive.
DirectHandler = Callable[[bytes, memoryview], bool]


@dataclass(frozen=True, slots=True)
class Datagram:
    """An overlay datagram received from `source_key`.

    `target_key` is None for traffic sent to our exact key; for closest-key traffic it
    is the key the sender aimed at (we are the node closest to it).
    """

    source_key: PublicKey
    payload: bytes
    target_key: PublicKey | None = None
    hops: int = 0


class OverlayService:
    """One service's share of the overlay: datagrams whose first payload byte is its tag.

    Get one from `Node.service(tag)` (the node owns the routing; a service only tags,
    queues and hands over). Tag 0 is the node's own raw datagrams
    (`Node.send` / `Node.receive`), tag 1 the end-to-end sessions, tag 2 the DHT;
    applications may use tags from `FIRST_APPLICATION_SERVICE` up. Each service has its
    own bounded receive queues, one per delivery mode (exact key, closest key), so one
    service that does not read cannot starve another.
    """

    def __init__(
        self,
        public_key: PublicKey,
        tag: int,
        queue_local: LocalQueue,
        queue_local_nowait: LocalQueueNowait | None = None,
    ) -> None:
        self._public_key = public_key
        self._queue_local = queue_local
        self._queue_local_nowait = queue_local_nowait
        self.tag = tag
        self._prefix = bytes((tag,))
        self._exact: DropQueue[Datagram] = DropQueue(RECEIVE_BUFFER)
        self._closest: DropQueue[Datagram] = DropQueue(RECEIVE_BUFFER)
        #: The direct handler for exact-key datagrams, if one is set (the node reads it).
        self.direct: DirectHandler | None = None
        #: Datagrams handed to the direct handler (accepted or not).
        self.direct_deliveries = 0

    @property
    def public_key(self) -> PublicKey:
        return self._public_key

    async def send(self, destination: PublicKey | bytes, payload: bytes) -> None:
        """Send `payload` to the node with exactly the key `destination`, best effort.

        Raises:
            ValueError: if `payload` is larger than `MAX_DATAGRAM_PAYLOAD`.
        """
        if len(payload) > MAX_DATAGRAM_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes > {MAX_DATAGRAM_PAYLOAD}")
        message = LocalSend(bytes(PublicKey(destination)), self._prefix + payload)
        await self._queue_local(message)

    @property
    def prefix(self) -> bytes:
        """The service tag byte that starts every payload of this service on the wire."""
        return self._prefix

    async def send_tagged(self, destination: PublicKey | bytes, tagged: bytes) -> None:
        """Like `send`, for a payload the caller already built behind our `prefix`.

        Saves copying a large payload only to put one byte in front of it.

        Raises:
            ValueError: if `tagged` does not start with this service's tag, or its
                payload is larger than `MAX_DATAGRAM_PAYLOAD`.
        """
        if tagged[:1] != self._prefix:
            raise ValueError(f"a tagged payload must start with service tag {self.tag}")
        if len(tagged) > MAX_DATAGRAM_PAYLOAD + 1:
            raise ValueError(f"payload of {len(tagged) - 1} bytes > {MAX_DATAGRAM_PAYLOAD}")
        await self._queue_local(LocalSend(bytes(PublicKey(destination)), tagged))

    def try_send_tagged(self, destination: PublicKey | bytes, tagged: bytes) -> bool:
        """`send_tagged` without waiting, from any task: False (nothing sent) if the
        node cannot queue the datagram at once (its local send budget or its router
        inbox is full, or it is stopping), True once it is queued for the router.

        Raises:
            ValueError: as `send_tagged`.
        """
        if tagged[:1] != self._prefix:
            raise ValueError(f"a tagged payload must start with service tag {self.tag}")
        if len(tagged) > MAX_DATAGRAM_PAYLOAD + 1:
            raise ValueError(f"payload of {len(tagged) - 1} bytes > {MAX_DATAGRAM_PAYLOAD}")
        queue = self._queue_local_nowait
        if queue is None:
            return False
        return queue(LocalSend(bytes(PublicKey(destination)), tagged))

    async def send_closest(self, target: PublicKey | bytes, payload: bytes) -> None:
        """Send `payload` to whichever node's key is closest to `target`.

        Closest is the snake's rule: the smallest key >= `target`, or the highest key
        in the network when none is that high (possibly this node itself).
        """
        if len(payload) > MAX_DATAGRAM_PAYLOAD:
            raise ValueError(f"payload of {len(payload)} bytes > {MAX_DATAGRAM_PAYLOAD}")
        message = LocalSendClosest(bytes(PublicKey(target)), self._prefix + payload)
        await self._queue_local(message)

    async def receive(self) -> Datagram:
        """The next datagram of this service sent to our exact key."""
        return await self._exact.get()

    async def receive_closest(self) -> Datagram:
        """The next closest-key datagram of this service for which we are the closest."""
        return await self._closest.get()

    def set_direct_handler(self, handler: DirectHandler | None) -> None:
        """Deliver exact-key datagrams by calling `handler` instead of queueing them.

        None goes back to the queue (`receive`). Closest-key datagrams always queue.
        """
        self.direct = handler

    def deliver_nowait(self, datagram: Datagram, closest: bool) -> bool:
        """Queue a delivered datagram (the node calls this); False when full."""
        return (self._closest if closest else self._exact).put_nowait(datagram)

    def close(self) -> None:
        """Wake receivers; they raise `trio.ClosedResourceError` once drained."""
        self._exact.close()
        self._closest.close()


class SessionServiceAdapter:
    """The overlay as the session manager sees it (service tag 1)."""

    def __init__(self, service: OverlayService) -> None:
        self._service = service

    @property
    def public_key(self) -> PublicKey:
        return self._service.public_key

    async def send(self, dest: PublicKey, payload: bytes) -> None:
        await self._service.send(dest, payload)

    async def receive(self) -> tuple[PublicKey, bytes]:
        datagram = await self._service.receive()
        return datagram.source_key, datagram.payload

    def set_handler(self, handler: DirectHandler | None) -> None:
        """Let the session manager take packets straight from the router task."""
        self._service.set_direct_handler(handler)

    @property
    def prefix(self) -> bytes:
        """What the manager puts in front of every packet it sends (the service tag)."""
        return self._service.prefix

    async def send_prefixed(self, dest: PublicKey, packet: bytes) -> None:
        """Send a packet built behind `prefix` (no copy to add the tag)."""
        await self._service.send_tagged(dest, packet)

    def try_send_prefixed(self, dest: PublicKey, packet: bytes) -> bool:
        """`send_prefixed` without waiting; False if the node cannot queue it at once."""
        return self._service.try_send_tagged(dest, packet)
