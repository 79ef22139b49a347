"""Session manager edges a review found; each test failed before its fix.

* `close_session` then `connect`: the new INITIATION often reached the peer before the
  CLOSE; the peer started the new handshake beside the old session, and the CLOSE then
  ended both. The dialler's stream went nowhere and failed after the idle timeout.
  Now the CLOSE leaves at once, and a handshake pending beside a session that ends
  goes on as a session of its own.
* `MAX_HALF_OPEN` counted our own dials: 256 dials to silent keys locked every peer out.
* A stream still in a closed listener's backlog had been accepted, so the opener read
  an empty reply; it is now refused (accepted only when the application takes it).
* `receive_datagram` and `listen` on a stopped manager waited forever.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from pinecone_trio.errors import SessionError, StreamRefusedError
from pinecone_trio.identity import Identity, PublicKey
from pinecone_trio.sessions import SessionManager, wire
from pinecone_trio.sessions.manager import MAX_HALF_OPEN
from pinecone_trio.sessions.testing import (
    MemoryEndpoint,
    MemoryOverlay,
    PathModel,
    open_memory_overlay,
)

PROTO = "/t/1"


def _identity(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


@asynccontextmanager
async def _managers(
    model: PathModel | None = None,
) -> AsyncIterator[tuple[MemoryOverlay, SessionManager, SessionManager, trio.Nursery]]:
    async with open_memory_overlay(model) as overlay, trio.open_nursery() as nursery:
        managers = []
        for n in (1, 2):
            manager = SessionManager(overlay.endpoint(_identity(n).public_key), _identity(n))
            await nursery.start(manager.run)
            managers.append(manager)
        yield overlay, managers[0], managers[1], nursery
        nursery.cancel_scope.cancel()


async def _round_trip(a: SessionManager, b: SessionManager, listener: object, n: int) -> None:
    stream = await a.connect(b.public_key, PROTO)
    await stream.send_all(b"%d" % n)
    server = await listener.accept()  # type: ignore[attr-defined]
    assert await server.receive_some() == b"%d" % n
    await server.send_all(b"ok")
    assert await stream.receive_some() == b"ok"


async def test_close_then_connect_at_once_gets_a_working_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _managers() as (_, a, b, _n), b.listen(PROTO) as listener:
        for n in range(20):
            with trio.fail_after(5):
                await _round_trip(a, b, listener, n)
            await a.close_session(b.public_key, "next round")


async def test_a_close_overtaken_by_the_next_initiation_ends_only_the_old_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _managers(PathModel(delay=(0.01, 0.01))) as (overlay, a, b, nursery):
        transmit = overlay._transmit
        hold = [False]

        def overtaken(src: PublicKey, dst: PublicKey, payload: bytes) -> None:
            # a's CLOSE (its first TRANSPORT packet once `hold` is on) arrives 15 ms
            # late, after the INITIATION of the session that follows.
            if hold[0] and src == a.public_key and payload[0] == wire.TRANSPORT:
                hold[0] = False

                async def late() -> None:
                    await trio.sleep(0.015)
                    transmit(src, dst, payload)

                nursery.start_soon(late)
                return
            transmit(src, dst, payload)

        overlay._transmit = overtaken  # type: ignore[method-assign]
        async with b.listen(PROTO) as listener:
            with trio.fail_after(5):
                await _round_trip(a, b, listener, 1)
            await trio.sleep(1)
            hold[0] = True
            await a.close_session(b.public_key, "bye")
            with trio.fail_after(5):
                await _round_trip(a, b, listener, 2)


async def test_our_own_pending_dials_do_not_lock_peers_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _managers() as (_, a, b, nursery):

        async def dial_silent(key: PublicKey) -> None:
            # The silent key times out (SessionTimeoutError): expected.
            with trio.move_on_after(30), contextlib.suppress(SessionError):
                await b.wait_session(key)

        base = bytes(_identity(100).public_key)[:-2]
        for n in range(MAX_HALF_OPEN):
            nursery.start_soon(dial_silent, PublicKey(base + n.to_bytes(2, "big")))
        await trio.testing.wait_all_tasks_blocked()
        assert b.statistics()["sessions"] >= MAX_HALF_OPEN
        async with b.listen(PROTO) as listener:
            with trio.fail_after(5):
                await _round_trip(a, b, listener, 1)


async def test_a_stream_left_in_a_closed_listeners_backlog_is_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _managers(PathModel(delay=(0.01, 0.01))) as (_, a, b, _n):
        async with b.listen(PROTO):
            stream = await a.connect(b.public_key, PROTO)
            await stream.send_all(b"request")
            await trio.sleep(0.1)  # in b's backlog; b's application never accepts it
        with pytest.raises(StreamRefusedError, match="closed"):
            await stream.wait_accepted()
        with pytest.raises(StreamRefusedError):
            await stream.receive_some()


@pytest.mark.parametrize("call", ["receive_datagram", "listen"])
async def test_a_stopped_manager_refuses_instead_of_waiting(
    autojump_clock: trio.testing.MockClock, call: str
) -> None:
    async with open_memory_overlay() as overlay:
        manager = SessionManager(overlay.endpoint(_identity(1).public_key), _identity(1))
        async with trio.open_nursery() as nursery:
            await nursery.start(manager.run)
            nursery.cancel_scope.cancel()

        async def listen_and_accept() -> None:
            async with manager.listen("/x") as listener:
                await listener.accept()

        calls: dict[str, Callable[[], object]] = {
            "receive_datagram": lambda: manager.receive_datagram("/d"),
            "listen": listen_and_accept,
        }
        with trio.fail_after(10), pytest.raises(trio.ClosedResourceError):
            await calls[call]()  # type: ignore[misc]


class _Endpoint:
    """A memory endpoint seen through `DatagramService` only (no `try_send`), or
    with a `try_send` that can be told to refuse (a full router inbox)."""

    def __init__(self, inner: MemoryEndpoint) -> None:
        self._inner = inner
        self.public_key = inner.public_key

    async def send(self, dest: PublicKey, payload: bytes) -> None:
        await self._inner.send(dest, payload)

    async def receive(self) -> tuple[PublicKey, bytes]:
        return await self._inner.receive()


class _RefusingEndpoint(_Endpoint):
    refuse = False

    def try_send(self, dest: PublicKey, payload: bytes) -> bool:
        return not self.refuse and self._inner.try_send(dest, payload)


@pytest.mark.parametrize("how", ["service full", "no try_send", "protocol error"])
async def test_a_close_left_to_the_driver_is_sent(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    # A driver that found its session already closed dropped the CLOSE it had just
    # taken from the engine: the peer learnt by its idle timeout, 15 s later (found by
    # review).
    ia, ib = _identity(1), _identity(2)
    model = PathModel(delay=(0.01, 0.01))
    async with open_memory_overlay(model) as overlay, trio.open_nursery() as nursery:
        inner = overlay.endpoint(ia.public_key)
        service = _Endpoint(inner) if how == "no try_send" else _RefusingEndpoint(inner)
        a = SessionManager(service, ia)
        b = SessionManager(overlay.endpoint(ib.public_key), ib)
        await nursery.start(a.run)
        await nursery.start(b.run)
        async with b.listen(PROTO) as listener:
            stream = await a.connect(ib.public_key, PROTO)
            await stream.send_all(b"ping")
            accepted = await listener.accept()
            assert await accepted.receive_some() == b"ping"
            await trio.sleep(1)  # a's driver asleep
            if how == "service full":
                assert isinstance(service, _RefusingEndpoint)
                service.refuse = True
            if how == "protocol error":
                handle = a._by_address[ib.public_key]
                handle.engine._fail(SessionError("bad frame"), notify_peer="bad frame")
                a._process(handle)
            else:
                await a.close_session(ib.public_key)
            start = trio.current_time()
            with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
                await accepted.receive_some()
            assert trio.current_time() - start < 1
        nursery.cancel_scope.cancel()
