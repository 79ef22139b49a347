"""NoiseLink as a trio.abc.Stream: conformance, data integrity, closing, failures."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pinecone_trio.errors import DecryptionFailed, LocalProtocolError, TruncatedStream
from pinecone_trio.identity import Identity
from pinecone_trio.link import MAX_PLAINTEXT_SIZE, NoiseLink

ALICE = Identity.from_seed(b"a" * 32)
BOB = Identity.from_seed(b"b" * 32)


async def handshake_pair(
    left: trio.abc.Stream, right: trio.abc.Stream, **kwargs: object
) -> tuple[NoiseLink, NoiseLink]:
    a = NoiseLink(left, ALICE, initiator=True, expected_key=BOB.public_key, **kwargs)  # type: ignore[arg-type]
    b = NoiseLink(right, BOB, initiator=False, capabilities={"x"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.do_handshake)
        nursery.start_soon(b.do_handshake)
    return a, b


async def memory_link_pair() -> tuple[NoiseLink, NoiseLink]:
    left, right = trio.testing.memory_stream_pair()
    return await handshake_pair(left, right)


async def tcp_link_pair() -> tuple[NoiseLink, NoiseLink]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with listeners[0], trio.open_nursery() as nursery:
        accepted: list[trio.abc.Stream] = []

        async def accept() -> None:
            accepted.append(await listeners[0].accept())

        nursery.start_soon(accept)
        client = await trio.open_tcp_stream("127.0.0.1", port)
    return await handshake_pair(client, accepted[0])


async def lockstep_link_pair() -> tuple[NoiseLink, NoiseLink]:
    left, right = trio.testing.lockstep_stream_pair()
    return await handshake_pair(left, right)


async def test_two_way_stream_over_memory() -> None:
    with trio.fail_after(60):
        # The lockstep (unbuffered) pair lets the checker exercise
        # wait_send_all_might_not_block on a clogged link too.
        await trio.testing.check_two_way_stream(memory_link_pair, lockstep_link_pair)


async def test_two_way_stream_over_tcp() -> None:
    with trio.fail_after(60):
        await trio.testing.check_two_way_stream(tcp_link_pair, None)


async def test_lazy_handshake_on_first_use() -> None:
    left, right = trio.testing.memory_stream_pair()
    a = NoiseLink(left, ALICE, initiator=True)
    b = NoiseLink(right, BOB, initiator=False)
    with pytest.raises(LocalProtocolError):
        _ = a.remote_key
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, b"hi")
        assert await b.receive_some() == b"hi"
    assert a.remote_key == BOB.public_key and b.remote_key == ALICE.public_key


async def test_identities_hash_and_capabilities() -> None:
    a, b = await memory_link_pair()
    assert a.remote_key == BOB.public_key
    assert b.remote_key == ALICE.public_key
    assert a.handshake_hash == b.handshake_hash
    assert a.remote_capabilities == {"x"}
    assert b.remote_capabilities == frozenset()
    assert a.handshake_result.initiator and not b.handshake_result.initiator


@pytest.mark.parametrize("size", [1, MAX_PLAINTEXT_SIZE, MAX_PLAINTEXT_SIZE + 1, 1_000_003])
async def test_large_writes_arrive_intact(size: int) -> None:
    a, b = await memory_link_pair()
    payload = bytes(i * 7 % 251 for i in range(size))
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.send_all, memoryview(payload))
        while len(got) < size:
            chunk = await b.receive_some(50_000)
            assert 0 < len(chunk) <= 50_000
            got += chunk
    assert got == payload
    frames = -(-size // MAX_PLAINTEXT_SIZE)
    assert a.statistics().bytes_sent == b.statistics().bytes_received == size
    assert a.statistics().messages_sent == b.statistics().messages_received == frames
    await a.aclose()
    assert await b.receive_some() == b""
    assert b.statistics().messages_received == frames + 1  # the close notification
    assert await b.receive_some() == b""


async def test_eof_without_close_notification_is_truncation() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = await handshake_pair(left, right)
    await a.send_all(b"data")
    await left.aclose()  # the transport ends; no encrypted close message was sent
    assert await b.receive_some() == b"data"
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    assert isinstance(info.value.__cause__, TruncatedStream)
    with pytest.raises(trio.BrokenResourceError):
        await b.receive_some()  # stays broken


async def test_tampered_transport_message_fails_authentication() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = await handshake_pair(left, right)
    # Capture one encrypted frame in flight by reading it off the raw transport.
    await a.send_all(b"secret")
    raw = await right.receive_some()
    tampered = bytearray(raw)
    tampered[5] ^= 0x40
    # Feed the tampered bytes back in as if they came from the wire.
    inject_left, inject_right = trio.testing.memory_stream_pair()
    b.transport_stream = inject_right
    await inject_left.send_all(bytes(tampered))
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    assert isinstance(info.value.__cause__, DecryptionFailed)


async def test_replayed_transport_message_fails() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = await handshake_pair(left, right)
    await a.send_all(b"pay 10")
    raw = await right.receive_some()
    inject_left, inject_right = trio.testing.memory_stream_pair()
    b.transport_stream = inject_right
    await inject_left.send_all(raw + raw)
    assert await b.receive_some() == b"pay 10"
    with pytest.raises(trio.BrokenResourceError) as info:
        await b.receive_some()
    assert isinstance(info.value.__cause__, DecryptionFailed)


@settings(max_examples=20)
@given(
    writes=st.lists(st.integers(min_value=0, max_value=140_000), min_size=1, max_size=4),
    reads=st.lists(st.integers(min_value=700, max_value=100_000), min_size=1, max_size=4),
)
def test_any_writes_and_reads_preserve_the_byte_stream(writes: list[int], reads: list[int]) -> None:
    async def main() -> None:
        a, b = await memory_link_pair()
        chunks = [bytes([n % 251]) * n for n in writes]
        expected = b"".join(chunks)
        got = bytearray()

        async def sender() -> None:
            for chunk in chunks:
                await a.send_all(chunk)
            await a.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            i = 0
            while data := await b.receive_some(reads[i % len(reads)]):
                assert len(data) <= reads[i % len(reads)]
                got += data
                i += 1
        assert got == expected

    trio.run(main)
