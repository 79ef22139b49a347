"""NoiseLink's TCP fast path (its own non-blocking I/O on a trio.SocketStream's socket):
data integrity, the hand-over from the handshake, bad input, resets, cancellation and
closing while blocked. Real TCP on 127.0.0.1 throughout."""

from __future__ import annotations

import os
import select
import socket
import struct

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pinecone_trio.errors import DecryptionFailed, TruncatedFrame, TruncatedStream
from pinecone_trio.identity import Identity
from pinecone_trio.link import MAX_PLAINTEXT_SIZE, NoiseCipher, NoiseHandshake, NoiseLink
from pinecone_trio.link.framing import FrameDecoder, encode_frame
from pinecone_trio.testing import PassThroughStream

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)
SMALL_BUFFER = 32 * 1024


async def tcp_pair(buffer_size: int | None = None) -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], trio.open_nursery() as nursery:
        accepted: list[trio.SocketStream] = []

        async def accept() -> None:
            stream = await listeners[0].accept()
            assert isinstance(stream, trio.SocketStream)
            accepted.append(stream)

        nursery.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    if buffer_size is not None:
        for stream in (client, accepted[0]):
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer_size)
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer_size)
    return client, accepted[0]


async def link_pair(left: trio.abc.Stream, right: trio.abc.Stream) -> tuple[NoiseLink, NoiseLink]:
    a = NoiseLink(left, ALICE, initiator=True, expected_key=BOB.public_key)
    b = NoiseLink(right, BOB, initiator=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.do_handshake)
        nursery.start_soon(b.do_handshake)
    return a, b


async def raw_initiator(raw: trio.SocketStream) -> tuple[NoiseHandshake, bytes]:
    """Run the dialer's side of the handshake by hand up to message 3, which it
    returns (framed) instead of sending, so a test can append anything to it."""
    hs = NoiseHandshake(ALICE, initiator=True)
    await raw.send_all(encode_frame(hs.write_message()))
    decoder = FrameDecoder()
    while (frame := decoder.next_frame()) is None:
        decoder.receive_data(await raw.receive_some(4096))
    hs.read_message(frame)
    return hs, encode_frame(hs.write_message())


async def test_socket_streams_take_the_fast_path_and_others_do_not() -> None:
    left, right = await tcp_pair()
    a, b = await link_pair(left, right)
    assert a._socket is left.socket and b._socket is right.socket
    left2, right2 = await tcp_pair()
    c, d = await link_pair(PassThroughStream(left2), right2)
    assert c._socket is None and d._socket is right2.socket
    await c.send_all(b"generic to fast")
    assert await d.receive_some() == b"generic to fast"
    await d.send_all(b"fast to generic")
    assert await c.receive_some() == b"fast to generic"
    for link in (a, b, c, d):
        await link.aclose()


@settings(max_examples=15)
@given(
    writes=st.lists(st.integers(min_value=0, max_value=300_000), min_size=1, max_size=5),
    reads=st.lists(st.integers(min_value=1, max_value=400_000), min_size=1, max_size=5),
)
def test_any_writes_and_reads_over_tcp(writes: list[int], reads: list[int]) -> None:
    async def main() -> None:
        a, b = await link_pair(*await tcp_pair())
        payload = bytes(i * 13 % 256 for i in range(sum(writes)))
        got = bytearray()

        async def sender() -> None:
            offset = 0
            for size in writes:
                await a.send_all(payload[offset : offset + size])
                offset += size
            await a.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            for step in range(len(payload) + 2):  # at least one byte per read
                chunk = await b.receive_some(reads[step % len(reads)])
                assert len(chunk) <= reads[step % len(reads)]
                if not chunk:
                    break
                got += chunk
        assert got == payload
        assert b.statistics().bytes_received == len(payload)
        await b.aclose()

    trio.run(main)


async def test_frames_that_arrived_with_the_last_handshake_message() -> None:
    raw, right = await tcp_pair()
    responder = NoiseLink(right, BOB, initiator=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder.do_handshake)
        hs, message_3 = await raw_initiator(raw)
        cipher = NoiseCipher(hs.result.send_key)
        early = b"".join(
            encode_frame(cipher.encrypt(n, b"", b"early %d " % n * 20)) for n in range(5)
        )
        await raw.send_all(message_3 + early)  # one write: the responder reads both at once
    got = bytearray()
    while len(got) < sum(len(b"early %d " % n * 20) for n in range(5)):
        got += await responder.receive_some()
    assert bytes(got) == b"".join(b"early %d " % n * 20 for n in range(5))
    await raw.send_all(encode_frame(cipher.encrypt(5, b"", b"")))  # close notification
    assert await responder.receive_some() == b""
    await responder.aclose()
    await raw.aclose()


@pytest.mark.parametrize(
    ("after_handshake", "cause"),
    [
        (b"\x00\x20" + b"\x55" * 32, DecryptionFailed),  # garbage of plausible size
        (b"\x00\x05abc", TruncatedFrame),  # the connection ends inside a frame
        (b"", TruncatedStream),  # ends without the close notification
    ],
)
async def test_bad_input_after_the_handshake(after_handshake: bytes, cause: type) -> None:
    raw, right = await tcp_pair()
    responder = NoiseLink(right, BOB, initiator=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(responder.do_handshake)
        _, message_3 = await raw_initiator(raw)
        await raw.send_all(message_3)
    await raw.send_all(after_handshake)
    await raw.aclose()
    with pytest.raises(trio.BrokenResourceError) as info:
        await responder.receive_some()
    assert isinstance(info.value.__cause__, cause)
    with pytest.raises(trio.BrokenResourceError):
        await responder.send_all(b"no")  # the link stays broken
    await responder.aclose()


async def test_connection_reset_by_peer() -> None:
    left, right = await tcp_pair()
    _, b = await link_pair(left, right)
    await b.send_all(b"unread")  # unread data makes the close a reset
    left.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await left.aclose()
    with pytest.raises(trio.BrokenResourceError) as info:
        for _ in range(100):  # sends succeed until the reset has arrived
            await b.send_all(b"x" * 1000)
            await b.receive_some()
    assert isinstance(info.value.__cause__, OSError)
    await b.aclose()


async def test_cancelled_receive_leaves_the_link_usable() -> None:
    a, b = await link_pair(*await tcp_pair())
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.receive_some)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    await a.send_all(b"after the cancel")
    assert await b.receive_some() == b"after the cancel"
    await a.aclose()
    assert await b.receive_some() == b""
    await b.aclose()


async def test_cancelled_send_at_entry_leaves_the_link_usable() -> None:
    a, b = await link_pair(*await tcp_pair())
    with trio.CancelScope() as scope:
        scope.cancel()
        await a.send_all(b"never sent")
    await a.send_all(b"sent")
    assert await b.receive_some() == b"sent"
    await a.aclose()
    await b.aclose()


async def test_send_blocked_on_a_full_socket() -> None:
    """The peer reads nothing: send_all waits for room. Cancelling it then breaks the
    link (part of a frame may be on the wire); closing it from another task raises
    ClosedResourceError in the sender."""
    a, b = await link_pair(*await tcp_pair(SMALL_BUFFER))
    big = b"z" * (4 * 1024 * 1024)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.send_all, big)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"more")
    await a.aclose()
    await b.aclose()

    c, d = await link_pair(*await tcp_pair(SMALL_BUFFER))
    errors: list[BaseException] = []

    async def send_and_record() -> None:
        try:
            await c.send_all(big)
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_and_record)
        await trio.testing.wait_all_tasks_blocked()
        await c.aclose()
    assert len(errors) == 1
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(len(big) // 1000 + 2):  # what arrived, then the broken stream
            if not await d.receive_some():
                break
    await d.aclose()


async def test_receive_of_maximum_size_messages_in_pieces() -> None:
    a, b = await link_pair(*await tcp_pair())
    data = bytes(range(256)) * (3 * MAX_PLAINTEXT_SIZE // 256)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, data)
        got = bytearray()
        while len(got) < len(data):
            got += await b.receive_some(1000)
    assert got == data
    assert b.statistics().messages_received == a.statistics().messages_sent
    await a.aclose()
    await b.aclose()


async def tcp_link_pair() -> tuple[NoiseLink, NoiseLink]:
    return await link_pair(*await tcp_pair())


def clog(link: NoiseLink, peer: NoiseLink) -> None:
    """Fill `link`'s sending socket with valid frames until the kernel takes no more,
    as in the middle of a large `send_all`. The peer acknowledges at once
    (`TCP_QUICKACK`), so what stays queued is data its full window does not admit, which
    nothing but a read can free. If the kernel takes the last frame only in part, its
    rest is dropped: harmless here, as the checker's clogged tests never read past it
    (they stop reading once the sender can write again, or close the pair)."""
    assert link._socket is not None and peer._socket is not None
    fd = link._socket.fileno()
    message = memoryview(b"c" * 8000)
    for _ in range(100_000):  # a few dozen suffice with small buffers
        peer._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        frame = link._seal(message, 0)[0]
        try:
            written = os.write(fd, frame)
        except BlockingIOError:
            link._send_counter -= 1  # never sent
            return
        if written < len(frame):
            return
    raise AssertionError("the socket never filled up")


async def clogged_tcp_link_pair() -> tuple[NoiseLink, NoiseLink]:
    """A fast-path pair with both directions clogged (the checker flips pairs)."""
    a, b = await link_pair(*await tcp_pair(SMALL_BUFFER))
    clog(a, b)
    clog(b, a)
    for link in (a, b):
        assert link._socket is not None
        assert not select.select([], [link._socket.fileno()], [], 0)[1], "not clogged"
    return a, b


async def test_two_way_stream_over_tcp_fast_path_clogged() -> None:
    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(tcp_link_pair, clogged_tcp_link_pair)
