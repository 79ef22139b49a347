"""Test helpers: a lossy datagram path in pure virtual time, and an in-memory overlay.

`EnginePair` joins two sans-IO `Session` engines through a seeded `LossyPath` and runs
them in virtual time without Trio (h11's ConnectionPair, aioquic's roundtrip): the
loss, reordering, duplication and delay tests are exact and repeatable.

`MemoryOverlay` is the Trio-level equivalent of the node's datagram service: each
`endpoint(key)` has `public_key`, `send(dest, payload)` and `receive()`, with the same
seeded impairments applied per packet and delays served by one delivery task (use it
under `trio.testing.MockClock`). It is what `SessionManager` tests run over until
they run over real nodes.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final, final

import trio

from ..identity import Identity, PublicKey
from .config import SessionConfig
from .engine import Session, random_index
from .events import IncomingStream

#: Packets queued for one endpoint of a `MemoryOverlay` before new ones are dropped.
ENDPOINT_QUEUE: Final = 4_096


@dataclass(frozen=True, slots=True, kw_only=True)
class PathModel:
    """Seeded impairments of a datagram path.

    Attributes:
        loss: probability that a packet is dropped.
        duplicate: probability that a packet is delivered twice.
        reorder: probability that a packet is held back by an extra `reorder_delay`.
        delay: (min, max) one-way delay in seconds, drawn uniformly per packet.
        reorder_delay: extra delay of a reordered packet.
    """

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: tuple[float, float] = (0.001, 0.001)
    reorder_delay: float = 0.01


@final
class LossyPath:
    """Turns one sent packet into zero or more (delay, packet) deliveries."""

    def __init__(self, model: PathModel, seed: int) -> None:
        self.model = model
        self._rng = random.Random(seed)
        self.sent = 0
        self.dropped = 0

    def deliveries(self, packet: bytes) -> list[tuple[float, bytes]]:
        m, rng = self.model, self._rng
        self.sent += 1
        if rng.random() < m.loss:
            self.dropped += 1
            return []
        copies = 2 if rng.random() < m.duplicate else 1
        out = []
        for _ in range(copies):
            delay = rng.uniform(*m.delay)
            if rng.random() < m.reorder:
                delay += m.reorder_delay
            out.append((delay, packet))
        return out


# ---------------------------------------------------------------- sans-IO pair


@final
class EnginePair:
    """Two session engines, `a` dialling `b`, joined by lossy paths in virtual time.

    Incoming streams whose protocol is in `accept` are accepted, others refused.
    `b` exists once the first INITIATION reaches it.
    """

    def __init__(
        self,
        *,
        model: PathModel | None = None,
        seed: int = 0,
        config: SessionConfig | None = None,
        accept: frozenset[str] = frozenset({"/test/1"}),
    ) -> None:
        model = model or PathModel()
        self.config = config or SessionConfig()
        self.now = 0.0
        self.id_a = Identity.from_seed(bytes([1]) * 32)
        self.id_b = Identity.from_seed(bytes([2]) * 32)
        self.accept = accept
        self.a = Session.dial(
            identity=self.id_a,
            local_address=self.id_a.public_key,
            remote_address=self.id_b.public_key,
            local_index=random_index(),
            expected_key=self.id_b.public_key,
            config=self.config,
            now=0.0,
        )
        self.b: Session | None = None
        self.paths = {"a": LossyPath(model, seed), "b": LossyPath(model, seed + 1)}
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._seq = itertools.count()
        self.incoming: dict[str, list[IncomingStream]] = {"a": [], "b": []}
        self.events: dict[str, list[object]] = {"a": [], "b": []}
        self.tap: Callable[[str, bytes], bytes | memoryview | None] | None = None
        #: Per side, what `packets_to_send` puts in front of every packet (the tap
        #: must strip it); empty by default.
        self.prefixes: dict[str, bytes] = {"a": b"", "b": b""}

    def side(self, name: str) -> Session:
        session = self.a if name == "a" else self.b
        assert session is not None, "b does not exist yet"
        return session

    def _make_b(self) -> Session:
        self.b = Session.answer(
            identity=self.id_b,
            local_address=self.id_b.public_key,
            remote_address=self.id_a.public_key,
            local_index=random_index(),
            expected_key=self.id_a.public_key,
            config=self.config,
            now=self.now,
        )
        return self.b

    def _flush(self) -> None:
        for name, session in (("a", self.a), ("b", self.b)):
            if session is None:
                continue
            for _ in range(1_000):
                packets = session.packets_to_send(self.now, prefix=self.prefixes[name])
                self._events(name, session)
                if not packets:
                    break
                dest = "b" if name == "a" else "a"
                for packet in packets:
                    for delay, copy in self.paths[name].deliveries(packet):
                        heapq.heappush(self._queue, (self.now + delay, next(self._seq), dest, copy))

    def _events(self, name: str, session: Session) -> None:
        events = session.events
        session.events = []
        for event in events:
            self.events[name].append(event)
            if type(event) is IncomingStream:
                self.incoming[name].append(event)
                if event.protocol in self.accept:
                    session.accept_stream(event.stream_id)
                else:
                    session.refuse_stream(event.stream_id, "no listener")
        session.changed.clear()

    def step(self) -> bool:
        """Advance to the next packet arrival or timer; False if nothing is pending."""
        self._flush()
        deadline = self.a.next_deadline()
        if self.b is not None:
            deadline = min(deadline, self.b.next_deadline())
        arrival = self._queue[0][0] if self._queue else math.inf
        when = min(deadline, arrival)
        if when == math.inf:
            return False
        self.now = max(self.now, when)
        if arrival <= deadline:
            _, _, dest, queued = heapq.heappop(self._queue)
            packet: bytes | memoryview = queued
            if self.tap is not None:
                tapped = self.tap(dest, queued)
                if tapped is None:
                    return True
                packet = tapped
            target = self.b if dest == "b" else self.a
            if target is None:
                target = self._make_b()
            target.receive_packet(packet, self.now)
            self._events(dest, target)
        else:
            self.a.handle_timer(self.now)
            self._events("a", self.a)
            if self.b is not None:
                self.b.handle_timer(self.now)
                self._events("b", self.b)
        return True

    def run_until(
        self,
        condition: Callable[[], bool],
        *,
        timeout: float,
        pump: Callable[[], None] = lambda: None,
    ) -> bool:
        """Step until `condition()` holds (True) or `timeout` virtual seconds pass (False)."""
        limit = self.now + timeout
        for _ in range(10_000_000):
            pump()
            if condition():
                return True
            if self.now > limit or not self.step():
                return condition()
        raise AssertionError("run_until did not terminate")


# ---------------------------------------------------------------- Trio overlay


@final
class MemoryEndpoint:
    """One key's datagram service on a `MemoryOverlay`."""

    def __init__(self, overlay: MemoryOverlay, key: PublicKey) -> None:
        self._overlay = overlay
        self.public_key = key
        self._send, self._receive = trio.open_memory_channel[tuple[PublicKey, bytes]](
            ENDPOINT_QUEUE
        )
        self.dropped = 0
        self.up = True

    async def send(self, dest: PublicKey, payload: bytes) -> None:
        self._overlay._transmit(self.public_key, PublicKey(dest), bytes(payload))
        await trio.lowlevel.checkpoint()

    def try_send(self, dest: PublicKey, payload: bytes) -> bool:
        """`send` without the checkpoint (the manager's `NowaitDatagramService`); the
        overlay never runs out of room, so this always sends."""
        self._overlay._transmit(self.public_key, PublicKey(dest), bytes(payload))
        return True

    async def receive(self) -> tuple[PublicKey, bytes]:
        return await self._receive.receive()

    def _deliver(self, source: PublicKey, payload: bytes) -> None:
        if not self.up:
            return
        try:
            self._send.send_nowait((source, payload))
        except trio.WouldBlock:
            self.dropped += 1


@final
class MemoryOverlay:
    """An in-process overlay datagram network with seeded impairments.

    Use `async with open_memory_overlay(model, seed=...) as overlay`, then
    `overlay.endpoint(key)` per node. `model` may be changed at any time (a test can
    start lossless and turn loss on); `partition(a, b)` cuts a pair.
    """

    def __init__(self, model: PathModel, seed: int) -> None:
        self.model = model
        self._rng = random.Random(seed)
        self._endpoints: dict[PublicKey, MemoryEndpoint] = {}
        self._heap: list[tuple[float, int, PublicKey, PublicKey, bytes]] = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self._cut: set[frozenset[PublicKey]] = set()

    def endpoint(self, key: PublicKey) -> MemoryEndpoint:
        endpoint = MemoryEndpoint(self, PublicKey(key))
        self._endpoints[endpoint.public_key] = endpoint
        return endpoint

    def partition(self, a: PublicKey, b: PublicKey, *, cut: bool = True) -> None:
        pair = frozenset({PublicKey(a), PublicKey(b)})
        if cut:
            self._cut.add(pair)
        else:
            self._cut.discard(pair)

    def _transmit(self, source: PublicKey, dest: PublicKey, payload: bytes) -> None:
        if frozenset({source, dest}) in self._cut or dest not in self._endpoints:
            return
        m, rng = self.model, self._rng
        if rng.random() < m.loss:
            return
        copies = 2 if rng.random() < m.duplicate else 1
        now = trio.current_time()
        for _ in range(copies):
            delay = rng.uniform(*m.delay)
            if rng.random() < m.reorder:
                delay += m.reorder_delay
            if delay <= 0:
                self._endpoints[dest]._deliver(source, payload)
            else:
                heapq.heappush(self._heap, (now + delay, next(self._seq), source, dest, payload))
                self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            self._wake = trio.Event()
            now = trio.current_time()
            heap = self._heap
            while heap and heap[0][0] <= now:
                _, _, source, dest, payload = heapq.heappop(heap)
                endpoint = self._endpoints.get(dest)
                if endpoint is not None:
                    endpoint._deliver(source, payload)
            with trio.move_on_at(heap[0][0] if heap else math.inf):
                await self._wake.wait()


@asynccontextmanager
async def open_memory_overlay(
    model: PathModel | None = None, *, seed: int = 0
) -> AsyncIterator[MemoryOverlay]:
    """A `MemoryOverlay` whose delivery task runs for the duration of the block."""
    overlay = MemoryOverlay(model or PathModel(delay=(0.0, 0.0)), seed)
    async with trio.open_nursery() as nursery:
        await nursery.start(overlay.run)
        yield overlay
        nursery.cancel_scope.cancel()
