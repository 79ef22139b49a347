"""The Trio shell around `DhtEngine`: `open_dht(node)`, `announce`, `lookup`.

```python
async with open_dht(node) as dht:
    async with dht.announce("demo/chat", data=b"hello"):
        ...                                   # we are findable under the topic here
    peers = await dht.lookup("demo/chat")     # [PeerRecord(public_key, data, expires, ...)]
```

The DHT rides on the node's overlay service 2 (`SERVICE_DHT`): closest-key datagrams to
topic ids and exact-key replies. Every node runs one from its start (`Node.dht`, unless
`NodeConfig(dht=False)`), its tasks in the node's nursery; `open_dht` yields that one,
or on a node without runs one of its own for the block. `Dht.run` holds five tasks: one
reads exact-key datagrams, one closest-key datagrams, one sends what the engine asks to
send, one sleeps until the engine's next deadline (retries, refreshes, expiry, the
successor claim) and re-reads the node's snake neighbours on every wake, and one
re-reads them on every node state change. The engine is only ever touched from
synchronous code between checkpoints, so its state changes are atomic. Leaving a DHT
of its own, `open_dht` closes the outbox and gives the sender `EXIT_GRACE` (shielded)
to send what it holds, so the withdrawal of an `announce` block left just before is not
lost; leaving the node's, it waits as long for what the outbox holds to reach the node,
and so does the node when it leaves.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import trio

from .._util import open_service_nursery
from ..identity import PublicKey
from ..node import SERVICE_DHT, Node, OverlayService
from ..node_config import GOODBYE_GRACE
from .constants import LOOKUP_TIMEOUT, SUCCESSOR_INTERVAL
from .crypto import topic_id
from .engine import (
    Action,
    AnnounceDone,
    DhtEngine,
    LookupDone,
    PeerRecord,
    SendClosest,
    SendExact,
)

#: Datagrams the engine may have waiting to be sent before more are dropped (counted).
OUTBOX_SIZE: Final = 1024
#: The snake neighbours are re-read at least this often (seconds), besides on every
#: node state change and every DHT message (the router's ascending guess changes
#: without an event). The timer task re-reads them whenever it wakes and sleeps no
#: longer than this, so on a node with a predecessor the poll rides on the wake that
#: sends it our SUCCESSOR claim: an idle node wakes for the DHT once per
#: `SUCCESSOR_INTERVAL`. (It was 1 s, in a task of its own, until 2026-11-22, when
#: every node came to serve the DHT: over 20 idle nodes in one process, that wake was
#: over a third of the CPU the DHT cost.)
NEIGHBOUR_POLL_INTERVAL: Final = SUCCESSOR_INTERVAL
#: Leaving `open_dht`, what the outbox still holds (the withdrawals of the announce
#: blocks just left) is sent for at most this long, shielded (the node's goodbye grace).
EXIT_GRACE: Final = GOODBYE_GRACE

_open_on: weakref.WeakSet[Node] = weakref.WeakSet()


@dataclass(slots=True)
class Announcement:
    """What `Dht.announce` yields: the topic id, whether the first round was
    acknowledged by the node closest to it (if not, refreshes keep trying), and whether
    that node is in an overlay (`placed`). A node still alone after `ANNOUNCE_JOIN_WAIT`
    is the closest node itself: it stores and acknowledges its own record
    (`acknowledged` True, `placed` False), which nobody else can find until a join sends
    it into the overlay."""

    topic_id: bytes
    acknowledged: bool
    placed: bool = False


class _Waiter:
    __slots__ = ("acknowledged", "event", "placed", "records")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.records: tuple[PeerRecord, ...] = ()
        self.acknowledged = False
        self.placed = False


class Dht:
    """A node's DHT: `node.dht` (every node serves one by default) or `open_dht(node)`."""

    def __init__(self, node: Node, *, engine: DhtEngine | None = None) -> None:
        self._node = node
        self._service: OverlayService = node.service(SERVICE_DHT)
        self.engine = engine or DhtEngine(
            node.identity,
            first_seq=time.time_ns() // 1000,
            wall_clock=time.time,
        )
        self._outbox_send, self._outbox_recv = trio.open_memory_channel[SendExact | SendClosest](
            OUTBOX_SIZE
        )
        self._wake = trio.Event()
        #: What the timer task sleeps until (it is woken when the engine's moves earlier).
        self._timer_deadline = math.inf
        self._sender_done = trio.Event()
        #: What the sender was handing to the node when it was cancelled (`_send_one`).
        self._cut_short: SendExact | SendClosest | None = None
        #: Datagrams put in the outbox, and how many of them the sender has handed to
        #: the node since (or given up on); `_drain` waits for the second to catch up.
        self._queued = 0
        self._handed = 0
        self._handed_lot = trio.lowlevel.ParkingLot()
        self._lookups: dict[int, _Waiter] = {}
        self._announces: dict[bytes, _Waiter] = {}
        self.outbox_drops = 0
        self.datagrams_sent = 0
        self._closed = False

    @property
    def public_key(self) -> PublicKey:
        return self._node.public_key

    # ------------------------------------------------------------ tasks

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the DHT's tasks until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._update_neighbours()
                nursery.start_soon(self._receive, False)
                nursery.start_soon(self._receive, True)
                nursery.start_soon(self._send)
                nursery.start_soon(self._timers)
                nursery.start_soon(self._watch_neighbours)
                task_status.started()
        finally:
            self._closed = True
            for waiter in [*self._lookups.values(), *self._announces.values()]:
                waiter.event.set()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the DHT is closed")

    def _apply(self, actions: list[Action], *, wake: bool = True) -> None:
        """Carry out the engine's actions (synchronously), then wake the timer task, whose
        deadline may have moved (not when the timer task itself applies them)."""
        for action in actions:
            if isinstance(action, SendExact | SendClosest):
                try:
                    self._outbox_send.send_nowait(action)
                except (trio.WouldBlock, trio.ClosedResourceError):  # full, or closing
                    self.outbox_drops += 1
                else:
                    self._queued += 1
            elif isinstance(action, LookupDone):
                waiter = self._lookups.pop(action.request_id, None)
                if waiter is not None:
                    waiter.records = action.records
                    waiter.event.set()
            elif isinstance(action, AnnounceDone):
                waiter = self._announces.get(action.topic)
                if waiter is not None:
                    waiter.acknowledged = action.acknowledged
                    waiter.placed = action.placed
                    waiter.event.set()
        if wake:
            self._wake.set()

    async def _receive(self, closest: bool) -> None:
        receive = self._service.receive_closest if closest else self._service.receive
        while True:
            try:
                datagram = await receive()
            except trio.ClosedResourceError:
                return
            target = bytes(datagram.target_key) if datagram.target_key is not None else None
            # The router's view right now: a lookup that reaches us just after the snake
            # changed must be forwarded to, and name, the neighbours we have now.
            self._update_neighbours()
            self._apply(
                self.engine.on_message(
                    bytes(datagram.source_key), datagram.payload, target, trio.current_time()
                )
            )

    async def _send(self) -> None:
        try:
            async for action in self._outbox_recv:
                if not await self._send_one(action):
                    return
        finally:
            self._sender_done.set()
            self._handed_lot.unpark_all()

    async def _send_one(self, action: SendExact | SendClosest) -> bool:
        """Hand one datagram to the node; False when the node no longer takes any.

        One the sender took but a cancellation stopped before the node had it (an
        `open_dht` block of a DHT of its own, cancelled from outside in the same tick
        the withdrawal was handed straight to the waiting sender) is kept in
        `_cut_short` for `_flush` to send."""
        self.datagrams_sent += 1
        try:
            if isinstance(action, SendExact):
                await self._service.send(action.key, action.payload)
            else:
                await self._service.send_closest(action.target, action.payload)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        except trio.Cancelled:
            self._cut_short = action  # (a duplicate, if the node had it, is harmless)
            raise
        finally:
            self._handed += 1
            if self._handed_lot:
                self._handed_lot.unpark_all()
        return True

    async def _drain(self) -> None:
        """Wait until what the outbox holds now has been handed to the node (the
        withdrawals of announce blocks just left), for at most `EXIT_GRACE` and even
        when cancelled, without closing it: the DHT keeps running. (The leaving node
        then waits for its links to send it.)"""
        target = self._queued
        with trio.move_on_after(EXIT_GRACE, shield=True):
            while self._handed < target and not self._sender_done.is_set():
                await self._handed_lot.park()

    async def _flush(self) -> None:
        """Refuse new requests, then let the sender empty the outbox, for at most
        `EXIT_GRACE` and even when cancelled (the tasks are cancelled after this)."""
        self._closed = True
        self._outbox_send.close()  # the sender ends once it has sent what is queued
        with trio.move_on_after(EXIT_GRACE, shield=True):
            await self._sender_done.wait()
            # A block cancelled from outside cancelled the sender too (it runs in the
            # same scope): what it was sending and what it left in the outbox, the
            # withdrawals, are sent from here (they were lost, the records findable
            # for RECORD_TTL).
            cut, self._cut_short = self._cut_short, None
            if cut is not None and not await self._send_one(cut):
                return
            while True:
                try:
                    action = self._outbox_recv.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    return
                if not await self._send_one(action):
                    return

    async def _timers(self) -> None:
        while True:
            now = trio.current_time()
            # The neighbour poll (NEIGHBOUR_POLL_INTERVAL), on every wake: a new
            # descending neighbour is told at once by the `on_timer` just below (not
            # `_update_neighbours`: that would wake this very task for nothing).
            self.engine.set_neighbours(*self._node.snake_neighbours())
            self._apply(self.engine.on_timer(now), wake=False)
            self._timer_deadline = min(self.engine.next_deadline(), now + NEIGHBOUR_POLL_INTERVAL)
            with trio.move_on_at(self._timer_deadline):
                await self._wake.wait()
            self._wake = trio.Event()

    def _update_neighbours(self) -> None:
        self.engine.set_neighbours(*self._node.snake_neighbours())
        # A new descending neighbour makes the engine due to send it a SUCCESSOR claim
        # at once: wake the timer task if it sleeps past that (it may sleep forever on
        # an idle node, and then no claim would ever go out and every copy pushed up the
        # snake would follow the router's ascending guess, often the wrong node).
        if self.engine.next_deadline() < self._timer_deadline:
            self._wake.set()

    async def _watch_neighbours(self) -> None:
        while True:
            await self._node.wait_changed()
            self._update_neighbours()

    # ------------------------------------------------------------ public API

    async def lookup(
        self,
        topic: bytes | str,
        *,
        timeout: float = LOOKUP_TIMEOUT,  # noqa: ASYNC109 (a query window, not an error)
        enough: int | None = None,
    ) -> list[PeerRecord]:
        """The verified records announced under `topic`, the freshest first.

        Asks the node closest to the topic id and its snake neighbours; returns what
        they answered within `timeout` seconds (an empty list if nobody announces, or
        nobody answered). Records of this node itself are included. With `enough`
        (e.g. 1: any peer announcing the topic will do), it returns as soon as that
        many records are in hand instead of waiting for every node named (one that
        left a moment ago stays named for a while and costs a whole request timeout).

        A node that has joined no overlay yet (no snake neighbour: it just started, or
        lost its peers) waits for that, up to `LOOKUP_JOIN_WAIT` (4 s) within
        `timeout`, and asks then; alone, it would be the closest node to every topic
        and answer itself. Still alone at the end of that wait, it answers from its own
        store (its own records, and what it stored for others before it lost its peers).

        Raises:
            TypeError: `topic` is neither str nor bytes-like.
            ValueError: `enough` is below 1.
            LocalProtocolError: too many DHT requests in flight (`MAX_PENDING`).
            trio.ClosedResourceError: the DHT is (or got) closed.
        """
        return await self.lookup_id(topic_id(topic), timeout=timeout, enough=enough)

    async def lookup_id(
        self,
        topic: bytes,
        *,
        timeout: float = LOOKUP_TIMEOUT,  # noqa: ASYNC109 (a query window, not an error)
        enough: int | None = None,
    ) -> list[PeerRecord]:
        """`lookup` by a 32-byte topic id (`crypto.topic_id(topic)`).

        Raises:
            TypeError, ValueError: `topic` is not 32 bytes, or `enough` below 1.
            LocalProtocolError, trio.ClosedResourceError: as `lookup`.
        """
        self._check_open()
        rid, actions = self.engine.lookup(topic, trio.current_time(), timeout, enough=enough)
        waiter = self._lookups[rid] = _Waiter()
        self._apply(actions)
        try:
            await waiter.event.wait()
        finally:
            if self._lookups.pop(rid, None) is not None:
                self.engine.cancel_lookup(rid)
        self._check_open()
        return list(waiter.records)

    @asynccontextmanager
    async def announce(self, topic: bytes | str, data: bytes = b"") -> AsyncIterator[Announcement]:
        """Be findable under `topic` (with `data` attached) for the duration of the block.

        Entering waits for the first round: until the node closest to the topic id has
        acknowledged the record, or its retries are used up (about 3 s). Then the record
        is re-signed and refreshed every `ANNOUNCE_REFRESH_INTERVAL` until the block
        exits, when a signed withdrawal is sent (best effort; without it the record
        expires after `RECORD_TTL`).

        A node that has joined no overlay yet (no snake neighbour) holds the first round
        until it joins, at most `ANNOUNCE_JOIN_WAIT` (3 s); still alone then, it is the
        closest node itself and stores and acknowledges its own record. When the node
        joins an overlay (again), the record is sent again: at once if no overlay has
        acknowledged it yet or no join re-sent it lately; for a node that keeps losing
        and regaining its peers, at growing intervals (`JOIN_RESEND_PENALTY`, docs/dht.md).

        Raises:
            TypeError: `topic` is neither str nor bytes-like, or `data` is not bytes-like.
            ValueError: `data` longer than `MAX_RECORD_DATA`.
            LocalProtocolError: this DHT already announces `topic`.
            trio.ClosedResourceError: the DHT is (or got) closed.
        """
        tid = topic_id(topic)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"record data is bytes, not {type(data).__name__}")
        self._check_open()
        actions = self.engine.start_announce(tid, bytes(data), trio.current_time())
        waiter = self._announces[tid] = _Waiter()
        try:
            self._apply(actions)
            await waiter.event.wait()
            self._check_open()
            yield Announcement(tid, waiter.acknowledged, waiter.placed)
        finally:
            self._announces.pop(tid, None)
            self._apply(self.engine.stop_announce(tid, trio.current_time()))

    def status(self) -> dict[str, Any]:
        """A JSON-ready snapshot: store size, announcements, counters."""
        store = self.engine.store
        desc, asc = self.engine.neighbours
        return {
            "joined": self.engine.joined,
            "records": len(store),
            "topics": store.topic_count,
            "announcing": len(self.engine.announcing()),
            "pending": self.engine.pending(),
            "neighbours": [k.hex() if k else None for k in (desc, asc)],
            "outbox_drops": self.outbox_drops,
            "datagrams_sent": self.datagrams_sent,
            "engine": vars_of(self.engine.statistics),
            "store": vars_of(store.statistics),
        }


def vars_of(obj: object) -> dict[str, int]:
    """A slotted statistics dataclass as a plain dict."""
    return {name: getattr(obj, name) for name in getattr(obj, "__slots__", ())}


@asynccontextmanager
async def open_dht(node: Node) -> AsyncIterator[Dht]:
    """The DHT of `node`, for the duration of the block.

    A node serves the DHT itself by default (`node.dht`, `NodeConfig.dht`): then this
    yields that running DHT, and leaving the block does not stop it (the node serves
    until it stops); it only waits, up to `EXIT_GRACE`, for the withdrawals of announce
    blocks left just before to be handed to the node, as a DHT of its own would. On a
    node started with `NodeConfig(dht=False)`, it runs a DHT of its own on the node for
    the duration of the block, as before 2026-11-22 (the node is a hole in the DHT
    while no block runs: docs/dht.md).

    Raises:
        RuntimeError: a DHT of its own is already open on this node (it would split
            the messages; not raised when the node serves the DHT itself).
        RuntimeError: the node is not running (a node that serves the DHT itself
            starts it in `Node.run`: a DHT opened before would split the messages).
        NodeCrashedError: a background task of a DHT of its own failed (the node's
            own DHT failing stops the node: `open_node` raises it).
    """
    served = node.dht
    if served is None and node.serves_dht:
        raise RuntimeError("open_dht needs a running node (open_node): it serves the DHT itself")
    if served is not None:
        try:
            yield served
        finally:
            # The withdrawal of an announce block left just now is still in the outbox.
            await served._drain()
        return
    if node in _open_on:
        raise RuntimeError("a DHT is already open on this node")
    _open_on.add(node)
    try:
        dht = Dht(node)
        async with open_service_nursery("dht") as nursery:
            await nursery.start(dht.run)
            try:
                yield dht
            finally:
                # Before the service nursery cancels the sender: the withdrawal of an
                # announce block left just now is still in the outbox (a review found
                # it lost, the record findable for RECORD_TTL).
                await dht._flush()
    finally:
        _open_on.discard(node)
