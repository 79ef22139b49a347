"""End-to-end sessions through the node API, across several overlay hops."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pinecone_trio.errors import PineconeError
from pinecone_trio.testing import open_network


async def test_stream_and_datagram_across_three_hops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b"), ("b", "c"), ("c", "d")]) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        a, d = net["a"], net["d"]
        async with d.listen("/echo/v1") as listener, trio.open_nursery() as nursery:

            async def echo() -> None:
                stream = await listener.accept()
                assert stream.remote_key == a.public_key
                async with stream:
                    while data := await stream.receive_some():
                        await stream.send_all(data)

            nursery.start_soon(echo)
            with trio.fail_after(30):
                stream = await a.connect(d.public_key, "/echo/v1")
            assert stream.remote_key == d.public_key
            message = bytes(range(256)) * 1000
            received = bytearray()
            async with stream:
                await stream.send_all(message)
                await stream.send_eof()
                with trio.fail_after(30):
                    while chunk := await stream.receive_some():
                        received += chunk
            assert received == message

        got: list[tuple[bytes, bytes]] = []
        async with trio.open_nursery() as nursery:

            async def receive() -> None:
                key, data = await d.receive_datagram("/ping/v1")
                got.append((bytes(key), data))

            nursery.start_soon(receive)
            await trio.sleep(0.1)
            await a.send_datagram(d.public_key, "/ping/v1", b"ping")
            with trio.fail_after(10):
                while not got:
                    await trio.sleep(0.05)
                    await a.send_datagram(d.public_key, "/ping/v1", b"ping")
        assert got[0] == (bytes(a.public_key), b"ping")


async def test_unknown_protocol_is_refused_clearly(autojump_clock: trio.testing.MockClock) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        with pytest.raises(PineconeError, match="chat"), trio.fail_after(30):
            await net["a"].connect(net["b"].public_key, "/chat/v1")


async def test_raw_datagrams_and_sessions_share_the_overlay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        await a.send(b.public_key, b"\x01raw bytes that look like a session packet")
        with trio.fail_after(5):
            got = await b.receive()
        assert got.payload == b"\x01raw bytes that look like a session packet"
        assert got.source_key == a.public_key
