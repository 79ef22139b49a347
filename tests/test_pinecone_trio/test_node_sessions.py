"""End-to-end sessions through the node API, across several overlay hops."""

from __future__ import annotations

import itertools

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
        # Streams open optimistically: the refusal comes with the first read.
        with trio.fail_after(30):
            stream = await net["a"].connect(net["b"].public_key, "/chat/v1")
        with pytest.raises(PineconeError, match="chat"), trio.fail_after(30):
            await stream.receive_some()


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


@pytest.mark.slow
async def test_stream_over_tcp_line_survives_a_rejoined_middle() -> None:
    """Five nodes in a line over real TCP; a stream across four hops keeps going when
    the middle node dies and its neighbours peer directly (or fails with a clear
    error: either is acceptable, silence or corruption is not)."""
    from pinecone_trio import Identity
    from pinecone_trio.node import Node, open_node
    from pinecone_trio.testing import Network

    names = ["l0", "l1", "l2", "l3", "l4"]
    net = Network()
    scopes: dict[str, trio.CancelScope] = {}

    async def run_node(name: str, *, task_status: trio.TaskStatus[Node]) -> None:
        with trio.CancelScope() as scope:
            scopes[name] = scope
            async with open_node(Identity.generate(), listen=["tcp://127.0.0.1:0"]) as node:
                task_status.started(node)
                await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        for name in names:
            net.nodes[name] = await nursery.start(run_node, name)
        for a, b in itertools.pairwise(names):
            await net[a].connect(net[b].listen_uris[0])
        with trio.fail_after(60):
            await net.wait_converged()
        first, last = net["l0"], net["l4"]
        chunk = bytes(range(256)) * 64  # 16 KiB
        total_chunks = 200
        received = bytearray()
        async with last.listen("/sink/v1") as listener, trio.open_nursery() as inner:

            async def sink() -> None:
                stream = await listener.accept()
                async with stream:
                    while data := await stream.receive_some():
                        received.extend(data)

            inner.start_soon(sink)
            stream = await first.connect(last.public_key, "/sink/v1")
            outcome = "completed"
            try:
                async with stream:
                    for i in range(total_chunks):
                        await stream.send_all(chunk)
                        if i == total_chunks // 4:
                            scopes["l2"].cancel()  # kill the middle node
                            del net.nodes["l2"]
                            await net["l1"].connect(net["l3"].listen_uris[0])
                    await stream.send_eof()
                    with trio.fail_after(60):
                        await stream.receive_some()  # the sink closes after EOF
            except (
                PineconeError,
                trio.BrokenResourceError,
            ) as exc:  # a clear failure is acceptable
                outcome = f"failed: {exc}"
                inner.cancel_scope.cancel()
        # whatever arrived is an intact prefix of what was sent, in order
        assert received == (chunk * total_chunks)[: len(received)]
        if outcome == "completed":
            assert len(received) == total_chunks * len(chunk)
        nursery.cancel_scope.cancel()
