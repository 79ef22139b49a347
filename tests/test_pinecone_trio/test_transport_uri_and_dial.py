"""Transports behind one URI interface: tcp://, ws:// and memory:// on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from pinecone_trio import transports
from pinecone_trio.transports import Address, parse_uri


def test_parse_uri() -> None:
    assert parse_uri("tcp://127.0.0.1:0") == Address("tcp", "127.0.0.1", 0)
    assert parse_uri("ws://localhost:8080/peer") == Address("ws", "localhost", 8080, "/peer")
    assert parse_uri("ws://localhost:8080") == Address("ws", "localhost", 8080, "/")
    assert parse_uri("memory://a") == Address("memory", "a", 0)
    assert parse_uri("memory://") == Address("memory", "", 0)
    assert str(parse_uri("tcp://[::1]:5")) == "tcp://[::1]:5"
    # IPv6 link-local with a zone, bare or RFC 6874 style (what LAN discovery dials)
    assert parse_uri("tcp://[fe80::1%eth0]:7").host == "fe80::1%eth0"
    assert parse_uri("tcp://[fe80::1%25eth0]:7").host == "fe80::1%eth0"
    assert str(parse_uri("tcp://[fe80::1%eth0]:7")) == "tcp://[fe80::1%eth0]:7"
    assert str(parse_uri("ws://h:1/x")) == "ws://h:1/x"
    for bad in (
        "udp://h:1",
        "tcp://h",
        "tcp://:5",
        "tcp://h:99999",
        "tcp://h:1/path",
        "ws://h:1/p?q=1",
        "memory://a/b",
        "nonsense",
    ):
        with pytest.raises(ValueError):
            parse_uri(bad)


async def echo(stream: trio.abc.Stream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def roundtrip(stream: trio.abc.Stream, payload: bytes) -> bytes:
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, payload)
        while len(got) < len(payload):
            chunk = await stream.receive_some()
            assert chunk
            got += chunk
    return bytes(got)


@asynccontextmanager
async def serving(uri: str, handler: transports.Handler) -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(transports.serve, uri, handler)
        yield bound
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("uri", ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/link", "memory://"])
async def test_echo_over_each_transport(uri: str) -> None:
    with trio.fail_after(20):
        async with serving(uri, echo) as bound, trio.open_nursery() as nursery:
            assert bound.split("://")[0] == uri.split("://")[0]
            if not uri.startswith("memory"):
                assert not bound.endswith(":0") and ":0/" not in bound
            stream = await transports.dial(bound, nursery=nursery)
            payload = bytes(range(256)) * 2000  # 512,000 bytes: several ws messages
            assert await roundtrip(stream, payload) == payload
            assert await roundtrip(stream, b"x") == b"x"
            await stream.aclose()


@pytest.mark.parametrize("uri", ["tcp://127.0.0.1:0", "ws://127.0.0.1:0/", "memory://"])
async def test_failing_handler_does_not_stop_the_listener(uri: str) -> None:
    calls = 0

    async def flaky(stream: trio.abc.Stream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("handler bug")
        await echo(stream)

    with trio.fail_after(20):
        async with serving(uri, flaky) as bound, trio.open_nursery() as nursery:
            first = await transports.dial(bound, nursery=nursery)
            with pytest.raises(trio.BrokenResourceError):
                while True:  # the failed handler's connection is closed
                    if not await first.receive_some():
                        raise trio.BrokenResourceError  # clean EOF is fine too
            await first.aclose()
            second = await transports.dial(bound, nursery=nursery)
            assert await roundtrip(second, b"still here") == b"still here"
            await second.aclose()


async def test_memory_dial_refused_and_name_in_use() -> None:
    with pytest.raises(ConnectionRefusedError):
        await transports.dial("memory://nobody-here")
    with trio.fail_after(5):
        async with serving("memory://taken", echo) as bound:
            assert bound == "memory://taken"
            with pytest.raises(OSError, match="in use"):
                await transports.serve("memory://taken", echo)
    with pytest.raises(ConnectionRefusedError):
        await transports.dial("memory://taken")  # unregistered after the listener stops


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_dial_refused_is_the_connect_error_itself(scheme: str) -> None:
    # Bind then close a socket to find a port nobody listens on. A ws:// dial said
    # "WebSocket connection failed (ExceptionGroup(...))" before (found by review).
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()
    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError) as info:
            await transports.dial(f"{scheme}://127.0.0.1:{port}/", nursery=nursery)
    assert "Group" not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


async def test_ws_wrong_path_and_missing_nursery() -> None:
    with trio.fail_after(10):
        async with serving("ws://127.0.0.1:0/right", echo) as bound, trio.open_nursery() as n:
            with pytest.raises(ValueError, match="nursery"):
                await transports.dial(bound)
            with pytest.raises(ConnectionRefusedError):
                await transports.dial(bound.replace("/right", "/wrong"), nursery=n)


async def test_websocket_stream_is_a_trio_stream() -> None:
    async def ws_pair(nursery: trio.Nursery) -> tuple[trio.abc.Stream, trio.abc.Stream]:
        server_side: trio.MemorySendChannel[trio.abc.Stream]
        server_side, accepted = trio.open_memory_channel[trio.abc.Stream](1)

        async def handler(stream: trio.abc.Stream) -> None:
            done = trio.Event()

            class Wrapped(trio.abc.Stream):
                # Keep the handler (and thus the connection) alive until closed.
                async def send_all(self, data: bytes | bytearray | memoryview) -> None:
                    await stream.send_all(data)

                async def wait_send_all_might_not_block(self) -> None:
                    await stream.wait_send_all_might_not_block()

                async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
                    return await stream.receive_some(max_bytes)

                async def aclose(self) -> None:
                    try:
                        await stream.aclose()
                    finally:
                        done.set()

            await server_side.send(Wrapped())
            await done.wait()

        bound = await nursery.start(transports.serve, "ws://127.0.0.1:0/", handler)
        client = await transports.dial(bound, nursery=nursery)
        server = await accepted.receive()
        return client, server

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:

            async def maker() -> tuple[trio.abc.Stream, trio.abc.Stream]:
                return await ws_pair(nursery)

            await trio.testing.check_two_way_stream(maker, None)
            nursery.cancel_scope.cancel()


async def test_ws_listener_survives_bad_http() -> None:
    upgrade = (
        b"GET /p HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(20):
        async with serving("ws://127.0.0.1:0/p", echo) as bound, trio.open_nursery() as n:
            port = parse_uri(bound).port
            for junk in (
                b"\x00\xff garbage\r\n\r\n",
                upgrade[:40],
                upgrade,
                upgrade.replace(b"/p", b"/q"),
            ):
                raw = await trio.open_tcp_stream("127.0.0.1", port)
                await raw.send_all(junk)
                await raw.aclose()
            stream = await transports.dial(bound, nursery=n)
            assert await roundtrip(stream, b"fine") == b"fine"
            await stream.aclose()


async def test_ws_listener_caps_connections_waiting_for_their_upgrade(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Silent connections each hold a slot until they send their upgrade request or are
    # closed; beyond the cap, new ones are closed at once (before, every one waited up
    # to DIAL_TIMEOUT, without limit). Answered connections give their slot back.
    from pinecone_trio.transports import websocket

    monkeypatch.setattr(websocket, "MAX_PENDING_UPGRADES", 4)
    with trio.fail_after(20):
        async with serving("ws://127.0.0.1:0/p", echo) as bound, trio.open_nursery() as n:
            port = parse_uri(bound).port
            answered = []
            for _ in range(3):  # served, then idle: they must not keep their slots
                stream = await transports.dial(bound, nursery=n)
                assert await roundtrip(stream, b"up") == b"up"
                answered.append(stream)
            silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(4)]
            await trio.sleep(0.2)  # accepted by the server
            extra = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(2):  # closed at once, not after DIAL_TIMEOUT
                assert await extra.receive_some(10) == b""
            for raw in silent:
                await raw.aclose()
            await trio.sleep(0.2)  # the server sees them go
            stream = await transports.dial(bound, nursery=n)
            assert await roundtrip(stream, b"fine") == b"fine"
            for open_stream in [*answered, stream, extra]:
                await open_stream.aclose()


async def test_ws_listener_caps_pending_upgrades_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # One host's silent connections cannot take every slot (a review showed 64 from
    # one address locking every client out); another address still gets its upgrade.
    from pinecone_trio.transports import websocket

    monkeypatch.setattr(websocket, "MAX_PENDING_UPGRADES_PER_HOST", 2)
    upgrade = (
        b"GET /p HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with trio.fail_after(20):
        async with serving("ws://127.0.0.1:0/p", echo) as bound:
            port = parse_uri(bound).port
            silent = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
            await trio.sleep(0.2)
            third = await trio.open_tcp_stream("127.0.0.1", port)
            with trio.fail_after(2):
                assert await third.receive_some(10) == b""  # closed at once
            other = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.2")
            await other.send_all(upgrade)
            with trio.fail_after(2):
                assert (await other.receive_some(12)).startswith(b"HTTP/1.1 101")
            for stream in [*silent, third, other]:
                await stream.aclose()


async def test_ws_dial_to_a_server_that_closes_before_the_upgrade_fails_at_once() -> None:
    # A listener over its pending-upgrade limit closes new connections; the dialler
    # waited DIAL_TIMEOUT (10 s) for an upgrade that could not come (found by review).
    async def closer(stream: trio.SocketStream) -> None:
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, closer, 0)
        port = listeners[0].socket.getsockname()[1]
        with trio.fail_after(2), pytest.raises(ConnectionRefusedError, match="before the upgrade"):
            await transports.dial(f"ws://127.0.0.1:{port}/p", nursery=nursery)
        nursery.cancel_scope.cancel()
