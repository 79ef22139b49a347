"""SessionManager and SessionStream over the in-memory overlay, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from pinecone_trio.errors import SessionError, SessionTimeoutError, StreamRefusedError
from pinecone_trio.identity import Identity, PublicKey
from pinecone_trio.sessions import SessionConfig, SessionManager, SessionStream
from pinecone_trio.sessions.testing import MemoryOverlay, PathModel, open_memory_overlay

PROTO = "/test/echo/1"


def _identity(n: int) -> Identity:
    return Identity.from_seed(bytes([n]) * 32)


@asynccontextmanager
async def open_managers(
    n: int = 2,
    *,
    model: PathModel | None = None,
    seed: int = 0,
    config: SessionConfig | None = None,
) -> AsyncIterator[tuple[MemoryOverlay, list[SessionManager]]]:
    async with open_memory_overlay(model, seed=seed) as overlay, trio.open_nursery() as nursery:
        managers = []
        for i in range(n):
            identity = _identity(i + 1)
            manager = SessionManager(overlay.endpoint(identity.public_key), identity, config=config)
            await nursery.start(manager.run)
            managers.append(manager)
        yield overlay, managers
        nursery.cancel_scope.cancel()


async def _stream_pair(
    a: SessionManager, b: SessionManager, protocol: str = PROTO
) -> tuple[SessionStream, SessionStream]:
    async with b.listen(protocol) as listener:
        client = await a.connect(b.public_key, protocol)
        server = await listener.accept()
    return client, server


async def test_connect_accept_roundtrip(autojump_clock: trio.testing.MockClock) -> None:
    async with open_managers() as (_, (a, b)):
        client, server = await _stream_pair(a, b)
        assert client.remote_key == b.public_key
        assert server.remote_key == a.public_key
        assert client.protocol == server.protocol == PROTO
        await client.send_all(b"hello")
        assert await server.receive_some() == b"hello"
        await server.send_all(b"world")
        assert await client.receive_some() == b"world"
        await client.aclose()
        assert await server.receive_some() == b""
        await server.aclose()


async def test_stream_calls_are_checkpoints_and_a_cancelled_read_keeps_its_data(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # receive_some and send_all checkpoint in two halves (a cancel point before the
    # buffer is touched, a schedule point after unless they parked): each call is still
    # a full checkpoint, and a read cancelled at its start takes nothing.
    async with open_managers() as (_, (a, b)):
        client, server = await _stream_pair(a, b)
        with trio.testing.assert_checkpoints():
            await client.send_all(b"first")  # room in the buffer: no park
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await server.receive_some()
        with trio.testing.assert_checkpoints():
            assert await server.receive_some() == b"first"  # data waiting: no park
        async with trio.open_nursery() as nursery:

            async def later() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await client.send_all(b"second")

            nursery.start_soon(later)
            with trio.testing.assert_checkpoints():
                assert await server.receive_some() == b"second"  # parks, then reads
        with trio.CancelScope() as scope:
            scope.cancel()
            with pytest.raises(trio.Cancelled):
                await client.send_all(b"never")
        await client.send_eof()
        assert await server.receive_some() == b""  # "never" was not queued
        await client.aclose()
        await server.aclose()
        with pytest.raises(trio.ClosedResourceError), trio.testing.assert_checkpoints():
            await server.receive_some()


async def test_half_closeable_stream_conformance(autojump_clock: trio.testing.MockClock) -> None:
    async with open_managers(model=PathModel(delay=(0.001, 0.003))) as (_, (a, b)):

        async def maker() -> tuple[SessionStream, SessionStream]:
            return await _stream_pair(a, b)

        await trio.testing.check_half_closeable_stream(maker, None)


async def test_clogged_conformance(autojump_clock: trio.testing.MockClock) -> None:
    # Tiny windows and buffers make a stream whose send_all blocks until the peer reads.
    tiny = SessionConfig(stream_window=1, session_window=1, stream_send_buffer=1)
    async with open_managers() as (_, (a, b)), open_managers(config=tiny) as (_, (c, d)):

        async def maker() -> tuple[SessionStream, SessionStream]:
            return await _stream_pair(a, b)

        async def clogged() -> tuple[SessionStream, SessionStream]:
            s1, s2 = await _stream_pair(c, d)
            for s in (s1, s2):
                with trio.move_on_after(1):
                    await s.send_all(b"x" * 10)
            return s1, s2

        await trio.testing.check_half_closeable_stream(maker, clogged)


async def test_refused_protocol_is_a_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_managers() as (_, (a, b)):
        # connect returns at once (optimistic open); the refusal comes with the read.
        stream = await a.connect(b.public_key, "/nobody/home")
        await stream.send_all(b"hello?")
        with pytest.raises(StreamRefusedError, match="no listener") as info:
            await stream.receive_some()
        assert info.value.protocol == "/nobody/home"
        assert isinstance(info.value, trio.BrokenResourceError)
        with pytest.raises(StreamRefusedError):
            await stream.send_all(b"again")
        await stream.aclose()
        # The session itself is fine: a listened protocol still works.
        client, server = await _stream_pair(a, b)
        await client.send_all(b"x")
        assert await server.receive_some() == b"x"


async def test_unreachable_key_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with open_managers() as (_, (a, _b)):
        nobody = _identity(99).public_key
        with trio.fail_after(60), pytest.raises(SessionTimeoutError, match="handshake"):
            await a.connect(nobody, PROTO)


async def test_wrong_identity_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    # The endpoint routes under key 3 but proves identity 4: a dialler of key 3 refuses.
    async with open_memory_overlay() as overlay, trio.open_nursery() as nursery:
        a = SessionManager(overlay.endpoint(_identity(1).public_key), _identity(1))
        routed = _identity(3).public_key
        b = SessionManager(overlay.endpoint(routed), _identity(4))
        await nursery.start(a.run)
        await nursery.start(b.run)
        async with b.listen(PROTO):
            with trio.fail_after(30), pytest.raises(SessionError, match="expected") as info:
                await a.connect(routed, PROTO)
        assert info.value.remote_key == _identity(4).public_key
        nursery.cancel_scope.cancel()


async def test_simultaneous_dials_make_one_session(autojump_clock: trio.testing.MockClock) -> None:
    async with open_managers(model=PathModel(delay=(0.01, 0.01))) as (_, (a, b)):
        async with a.listen(PROTO) as la, b.listen(PROTO) as lb:
            results: dict[str, SessionStream] = {}

            async def dial(name: str, m: SessionManager, key: PublicKey) -> None:
                results[name] = await m.connect(key, PROTO)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dial, "a", a, b.public_key)
                nursery.start_soon(dial, "b", b, a.public_key)
            from_b = await la.accept()
            from_a = await lb.accept()
        assert a.statistics()["sessions"] == b.statistics()["sessions"] == 1
        await results["a"].send_all(b"ab")
        assert await from_a.receive_some() == b"ab"
        await results["b"].send_all(b"ba")
        assert await from_b.receive_some() == b"ba"


async def test_datagrams_by_protocol(autojump_clock: trio.testing.MockClock) -> None:
    async with open_managers() as (_, (a, b)):
        async with trio.open_nursery() as nursery:
            got: list[tuple[PublicKey, bytes]] = []

            async def receiver() -> None:
                for _ in range(3):
                    got.append(await b.receive_datagram("/dgram/1"))

            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(3):
                await a.send_datagram(b.public_key, "/dgram/1", b"d%d" % i)
                await a.send_datagram(b.public_key, "/other", b"ignored")
        assert sorted(data for _, data in got) == [b"d0", b"d1", b"d2"]
        assert {key for key, _ in got} == {a.public_key}
        with pytest.raises(ValueError, match="at most"):
            await a.send_datagram(b.public_key, "/dgram/1", b"x" * 70_000)


async def test_thousand_concurrent_streams(autojump_clock: trio.testing.MockClock) -> None:
    count = 1_000
    async with (
        open_managers(model=PathModel(delay=(0.001, 0.002))) as (_, (a, b)),
        b.listen(PROTO) as listener,
        trio.open_nursery() as nursery,
    ):

        async def echo_server() -> None:
            async with trio.open_nursery() as inner:
                for _ in range(count):
                    stream = await listener.accept()
                    inner.start_soon(echo, stream)

        async def echo(stream: SessionStream) -> None:
            data = bytearray()
            while chunk := await stream.receive_some():
                data += chunk
            await stream.send_all(data)
            await stream.aclose()

        nursery.start_soon(echo_server)
        streams = [await a.connect(b.public_key, PROTO) for _ in range(count)]
        assert a.statistics()["sessions"] == 1

        async def client(i: int, stream: SessionStream) -> None:
            payload = (b"%05d" % i) * 200
            await stream.send_all(payload)
            await stream.send_eof()
            data = bytearray()
            while chunk := await stream.receive_some():
                data += chunk
            assert data == payload
            await stream.aclose()

        with trio.fail_after(120):
            async with trio.open_nursery() as clients:
                for i, stream in enumerate(streams):
                    clients.start_soon(client, i, stream)


@pytest.mark.parametrize("loss", [0.01, 0.1, 0.3])
async def test_stream_over_lossy_overlay(
    autojump_clock: trio.testing.MockClock, loss: float
) -> None:
    model = PathModel(loss=loss, duplicate=0.02, reorder=0.05, delay=(0.005, 0.05))
    config = SessionConfig(max_packet_size=4_096)
    payload = bytes(range(256)) * 1_000
    async with open_managers(model=model, seed=7, config=config) as (_, (a, b)):
        with trio.fail_after(600):
            client, server = await _stream_pair(a, b)

            async def send() -> None:
                await client.send_all(payload)
                await client.send_eof()

            received = bytearray()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while chunk := await server.receive_some():
                    received += chunk
        assert received == payload


async def test_peer_vanishing_breaks_streams_after_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_managers() as (overlay, (a, b)):
        client, server = await _stream_pair(a, b)
        await client.send_all(b"x")
        assert await server.receive_some() == b"x"
        overlay.partition(a.public_key, b.public_key)
        start = trio.current_time()
        with trio.fail_after(60), pytest.raises(trio.BrokenResourceError) as info:
            await client.receive_some()
        assert isinstance(info.value.__cause__, SessionTimeoutError)
        assert trio.current_time() - start >= a.config.idle_timeout - 1


async def test_keepalive_holds_a_wanted_session(autojump_clock: trio.testing.MockClock) -> None:
    async with open_managers() as (_, (a, b)):
        client, server = await _stream_pair(a, b)
        await trio.sleep(10 * a.config.idle_timeout)
        await client.send_all(b"still here")
        assert await server.receive_some() == b"still here"


async def test_restarted_peer_replaces_the_session(autojump_clock: trio.testing.MockClock) -> None:
    async with open_memory_overlay() as overlay, trio.open_nursery() as nursery:
        a = SessionManager(overlay.endpoint(_identity(1).public_key), _identity(1))
        await nursery.start(a.run)
        b_key = _identity(2).public_key
        async with trio.open_nursery() as b_nursery:
            b = SessionManager(overlay.endpoint(b_key), _identity(2))
            await b_nursery.start(b.run)
            async with a.listen(PROTO) as listener:
                old = await b.connect(a.public_key, PROTO)
                old_server = await listener.accept()
                b_nursery.cancel_scope.cancel()
        # b restarts with a fresh manager (new session index, new keys) and dials again.
        b2 = SessionManager(overlay.endpoint(b_key), _identity(2))
        await nursery.start(b2.run)
        async with a.listen(PROTO) as listener:
            new = await b2.connect(a.public_key, PROTO)
            new_server = await listener.accept()
        with pytest.raises(trio.BrokenResourceError):
            await old_server.receive_some()
        await new.send_all(b"again")
        assert await new_server.receive_some() == b"again"
        with pytest.raises(trio.BrokenResourceError):
            await old.send_all(b"x")
        nursery.cancel_scope.cancel()


async def test_garbage_and_bogus_initiations_keep_no_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from pinecone_trio.sessions import wire

    async with open_managers() as (overlay, (a, b)):
        attacker = overlay.endpoint(_identity(50).public_key)
        for i in range(300):
            junk = bytes([i % 7]) + bytes(range(i % 60))
            await attacker.send(b.public_key, junk)
            await attacker.send(b.public_key, wire.encode_initiation(i + 1, b"\x00" * 31))
        await trio.sleep(1)
        assert b.statistics()["sessions"] == 0
        # Real peers are unaffected.
        client, server = await _stream_pair(a, b)
        await client.send_all(b"ok")
        assert await server.receive_some() == b"ok"
