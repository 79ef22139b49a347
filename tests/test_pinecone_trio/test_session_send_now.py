"""INITIATION and RESPONSE leave from the task that made them (no driver pass), a
FINISH from the driver; a service that cannot take a packet at once leaves it to the
driver; the node's `try_send_tagged` queues only what it can queue without waiting."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing

from pinecone_trio.identity import Identity, PublicKey
from pinecone_trio.node import Node
from pinecone_trio.router.actions import LocalSend
from pinecone_trio.services import SERVICE_SESSION
from pinecone_trio.sessions import SessionManager, wire
from pinecone_trio.sessions.testing import MemoryEndpoint, PathModel, open_memory_overlay

ONE_WAY = 0.001


class CountingService:
    """A `MemoryEndpoint` that records which way each packet kind left."""

    def __init__(self, endpoint: MemoryEndpoint, *, take_now: bool) -> None:
        self._endpoint = endpoint
        self._take_now = take_now
        self.public_key = endpoint.public_key
        self.sent: Counter[tuple[str, int]] = Counter()

    async def send(self, dest: PublicKey, payload: bytes) -> None:
        self.sent["driver", payload[0]] += 1
        await self._endpoint.send(dest, payload)

    def try_send(self, dest: PublicKey, payload: bytes) -> bool:
        if not self._take_now:
            self.sent["refused", payload[0]] += 1
            return False
        self.sent["now", payload[0]] += 1
        return self._endpoint.try_send(dest, payload)

    async def receive(self) -> tuple[PublicKey, bytes]:
        return await self._endpoint.receive()


@pytest.mark.parametrize("take_now", [True, False])
async def test_handshake_packets_leave_without_a_driver_pass(
    autojump_clock: trio.testing.MockClock, take_now: bool
) -> None:
    ia, ib = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    model = PathModel(delay=(ONE_WAY, ONE_WAY))
    async with open_memory_overlay(model, seed=0) as overlay, trio.open_nursery() as nursery:
        sa = CountingService(overlay.endpoint(ia.public_key), take_now=take_now)
        sb = CountingService(overlay.endpoint(ib.public_key), take_now=take_now)
        a, b = SessionManager(sa, ia), SessionManager(sb, ib)
        await nursery.start(a.run)
        await nursery.start(b.run)
        start = trio.current_time()
        await a.wait_session(ib.public_key)
        # Either way the same two one-way trips (no timer), each packet sent once.
        assert trio.current_time() - start == pytest.approx(2 * ONE_WAY)
        await trio.sleep(ONE_WAY * 2)
        assert b._by_address[ia.public_key].engine.established
        if take_now:
            assert sa.sent == Counter({("now", wire.INITIATION): 1, ("driver", wire.FINISH): 1})
            assert sb.sent == Counter({("now", wire.RESPONSE): 1})
        else:
            assert sa.sent == Counter(
                {
                    ("refused", wire.INITIATION): 1,
                    ("driver", wire.INITIATION): 1,
                    ("driver", wire.FINISH): 1,
                }
            )
            assert sb.sent == Counter({("refused", wire.RESPONSE): 1, ("driver", wire.RESPONSE): 1})
        nursery.cancel_scope.cancel()


async def test_nothing_overtakes_a_sending_driver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ia, ib = Identity.from_seed(b"\x01" * 32), Identity.from_seed(b"\x02" * 32)
    async with open_memory_overlay(None, seed=0) as overlay, trio.open_nursery() as nursery:
        sa = CountingService(overlay.endpoint(ia.public_key), take_now=True)
        a = SessionManager(sa, ia)
        await nursery.start(a.run)
        handle = a._dial(ib.public_key)
        assert sa.sent[("now", wire.INITIATION)] == 1
        # While the driver is between taking packets and having sent them, a packet
        # the engine queues (here: the INITIATION again) is left to the driver.
        handle.engine._hs_outbox.append(b"\x01x")
        handle.sending = True
        a._send_handshake_now(handle)
        assert handle.engine.outbox_length == 1
        handle.sending = False
        a._send_handshake_now(handle)
        assert handle.engine.outbox_length == 0
        nursery.cancel_scope.cancel()


async def test_node_try_send_tagged_queues_only_without_waiting() -> None:
    node = Node(Identity.from_seed(b"\x03" * 32))
    service = node.service(SERVICE_SESSION)
    dest = Identity.from_seed(b"\x04" * 32).public_key
    budget = node._budget
    with pytest.raises(ValueError):
        service.try_send_tagged(dest, b"\x00wrong tag")
    assert service.try_send_tagged(dest, service.prefix + b"packet")
    assert (budget.used, budget.frames) == (7, 1)
    queued = node._inbox_recv.receive_nowait()
    assert isinstance(queued, LocalSend) and queued.payload == service.prefix + b"packet"
    # No room in the local send budget: nothing queued, nothing taken.
    budget.frames = budget.max_frames
    assert not service.try_send_tagged(dest, service.prefix + b"packet")
    assert budget.frames == budget.max_frames and budget.used == 7
    budget.frames, budget.used = 0, 0
    # The router inbox closed (the node stopping): refused, the budget given back.
    node._inbox_send.close()
    assert not service.try_send_tagged(dest, service.prefix + b"packet")
    assert (budget.used, budget.frames) == (0, 0)
    # A service made without the node's queue cannot send without waiting.
    assert not type(service)(dest, 9, node._queue_local).try_send_tagged(dest, b"\x09x")
