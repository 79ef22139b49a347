"""Direct delivery: a service's handler runs in the router task, no queue, no copy."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from pinecone_trio.node import MAX_DATAGRAM_PAYLOAD, Node
from pinecone_trio.services import SERVICE_SESSION
from pinecone_trio.testing import open_network

TAG = 40


async def _send_until(sender: Node, receiver: Node, payload: bytes, done: trio.Event) -> None:
    """Resend on the raw service until `done` (the overlay may still be settling)."""
    with trio.fail_after(30):
        while not done.is_set():
            await sender.service(TAG).send(receiver.public_key, payload)
            with trio.move_on_after(0.5):
                await done.wait()


async def test_direct_handler_gets_a_view_without_queueing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        got: list[tuple[bytes, bytes, type]] = []
        done = trio.Event()

        def handler(source: bytes, payload: memoryview) -> bool:
            got.append((bytes(source), bytes(payload), type(payload)))
            done.set()
            return True

        service = b.service(TAG)
        service.set_direct_handler(handler)
        payload = bytes(range(256)) * 40
        await _send_until(a, b, payload, done)
        source, data, kind = got[0]
        assert source == a.public_key and data == payload and kind is memoryview
        assert service.direct_deliveries == len(got)
        assert b.counters.receive_drops == 0
        with pytest.raises(trio.TooSlowError), trio.fail_after(1):
            await service.receive()  # nothing went through the queue

        # Back to queueing once the handler is removed.
        service.set_direct_handler(None)
        with trio.fail_after(30):
            while True:
                await a.service(TAG).send(b.public_key, b"queued")
                with trio.move_on_after(0.5):
                    datagram = await service.receive()
                    break
        assert datagram.payload == b"queued"


async def test_refused_or_failing_direct_delivery_is_counted_and_harmless(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        refused = trio.Event()

        def refuse(source: bytes, payload: memoryview) -> bool:
            refused.set()
            return False

        b.service(TAG).set_direct_handler(refuse)
        await _send_until(a, b, b"no", refused)
        assert b.counters.receive_drops >= 1

        failed = trio.Event()

        def fail(source: bytes, payload: memoryview) -> bool:
            failed.set()
            raise RuntimeError("handler bug")

        drops = b.counters.receive_drops
        b.service(TAG).set_direct_handler(fail)
        with caplog.at_level(logging.ERROR, logger="pinecone_trio.node"):
            await _send_until(a, b, b"boom", failed)
        assert b.counters.receive_drops > drops
        assert "direct handler failed" in caplog.text

        # The router survived: raw datagrams still flow both ways.
        with trio.fail_after(30):
            while True:
                await b.send(a.public_key, b"still alive")
                with trio.move_on_after(0.5):
                    assert (await a.receive()).payload == b"still alive"
                    break


async def test_sessions_take_packets_straight_from_the_router(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b"), ("b", "c")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, c = net["a"], net["c"]
        assert c.service(SERVICE_SESSION).direct is not None
        message = bytes(range(256)) * 2000
        async with c.listen("/sink/v1") as listener, trio.open_nursery() as nursery:
            received = bytearray()
            finished = trio.Event()

            async def sink() -> None:
                stream = await listener.accept()
                async with stream:
                    while data := await stream.receive_some():
                        received.extend(data)
                    await stream.send_all(b"ok")  # a packet back (streams open optimistically)
                finished.set()

            nursery.start_soon(sink)
            with trio.fail_after(30):
                stream = await a.connect(c.public_key, "/sink/v1")
                async with stream:
                    await stream.send_all(message)
                    await stream.send_eof()
                    assert await stream.receive_some() == b"ok"
                    await finished.wait()
        assert bytes(received) == message
        # Every session packet (handshake and transport) went the direct way.
        assert c.service(SERVICE_SESSION).direct_deliveries >= 3
        assert a.service(SERVICE_SESSION).direct_deliveries >= 2
        assert c.counters.receive_drops == 0 and a.counters.receive_drops == 0


async def test_send_tagged_checks_the_tag_and_the_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        service = a.service(TAG)
        assert service.prefix == bytes((TAG,))
        with pytest.raises(ValueError, match="service tag"):
            await service.send_tagged(b.public_key, b"\x00payload")
        with pytest.raises(ValueError, match=f"> {MAX_DATAGRAM_PAYLOAD}"):
            await service.send_tagged(
                b.public_key, service.prefix + b"x" * (MAX_DATAGRAM_PAYLOAD + 1)
            )
        with trio.fail_after(30):
            while True:
                await service.send_tagged(b.public_key, service.prefix + b"tagged")
                with trio.move_on_after(0.5):
                    datagram = await b.service(TAG).receive()
                    break
        assert datagram.payload == b"tagged" and datagram.source_key == a.public_key
