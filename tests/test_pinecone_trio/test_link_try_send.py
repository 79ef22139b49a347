"""`NoiseLink.try_send`: synchronous writes on the TCP fast path, what the kernel does
not take kept and sent first, refusals that leave the link untouched. Real TCP."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from pinecone_trio.link import NoiseLink
from pinecone_trio.testing import PassThroughStream

from .test_link_tcp_fast_path import SMALL_BUFFER, link_pair, tcp_pair


async def read_exactly(link: NoiseLink, count: int) -> bytes:
    got = bytearray()
    while len(got) < count:
        data = await link.receive_some(count - len(got))
        assert data, "the link ended early"
        got += data
    return bytes(got)


async def test_try_send_writes_at_once_in_order_with_send_all() -> None:
    a, b = await link_pair(*await tcp_pair())
    async with a, b:
        assert a.can_try_send
        assert a.try_send(b"one ")
        await a.send_all(b"two ")
        assert a.try_send(bytearray(b"three"))
        assert await read_exactly(b, 13) == b"one two three"
        assert a.statistics().bytes_sent == 13


async def test_what_the_kernel_did_not_take_goes_first() -> None:
    a, b = await link_pair(*await tcp_pair(SMALL_BUFFER))
    async with a, b:
        first = os.urandom(3 * 1024 * 1024)  # far beyond both socket buffers
        second = os.urandom(100_000)
        assert a.try_send(first)
        assert a.send_pending > 0
        assert not a.can_try_send
        assert not a.try_send(b"refused while bytes are pending")
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await read_exactly(b, len(first) + len(second)))

            nursery.start_soon(reader)
            await a.send_all(second)  # flushes the pending tail first
        assert a.send_pending == 0
        assert got == [first + second]


async def test_flush_writes_the_pending_tail() -> None:
    a, b = await link_pair(*await tcp_pair(SMALL_BUFFER))
    async with a, b:
        data = os.urandom(2 * 1024 * 1024)
        assert a.try_send(data)
        assert a.send_pending
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.flush)
            assert await read_exactly(b, len(data)) == data
        assert a.send_pending == 0 and a.can_try_send


async def test_close_sends_the_pending_tail_before_the_close_note() -> None:
    a, b = await link_pair(*await tcp_pair(SMALL_BUFFER))
    data = os.urandom(1024 * 1024)
    assert a.try_send(data)
    assert a.send_pending
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.aclose)
        assert await read_exactly(b, len(data)) == data
        assert await b.receive_some() == b""  # the encrypted close note, after the data
    await b.aclose()


async def test_refused_during_send_all_and_on_other_transports() -> None:
    a, b = await link_pair(*await tcp_pair(SMALL_BUFFER))
    async with a, b:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, os.urandom(2 * 1024 * 1024))
            await trio.testing.wait_all_tasks_blocked()  # the sender waits for room
            assert not a.can_try_send
            assert not a.try_send(b"x")
            nursery.start_soon(read_exactly, b, 2 * 1024 * 1024)
        assert a.try_send(b"x") and await read_exactly(b, 1) == b"x"
    left, right = trio.testing.memory_stream_pair()
    c, d = await link_pair(PassThroughStream(left), PassThroughStream(right))
    async with c, d:
        assert not c.can_try_send and not c.try_send(b"memory links go through send_all")


async def test_a_failed_write_breaks_the_link() -> None:
    a, b = await link_pair(*await tcp_pair())
    sock = a.transport_stream
    assert isinstance(sock, trio.SocketStream)
    sock.socket.close()  # the descriptor is gone under the link: the write fails
    assert a.try_send(b"lost with the connection")
    assert a.broken and not a.can_try_send
    with pytest.raises(trio.BrokenResourceError):
        await a.flush()
    await a.aclose()
    await b.aclose()
