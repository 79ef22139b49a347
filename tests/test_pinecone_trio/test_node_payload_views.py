"""Traffic payloads decoded as views of the reader's buffer (no copy per hop).

A received traffic frame's payload is a read-only view into the buffer the link handed
the peering. Whatever outlives the router pass must hold bytes of its own: a frame
forwarded onto a peer queue, a datagram queued for `receive`. These tests pin both, over
real TCP links, with many frames per read so that views share buffers.
"""

from __future__ import annotations

import trio

from pinecone_trio import Identity
from pinecone_trio.identity import FULL_MASK
from pinecone_trio.node import MAX_DATAGRAM_PAYLOAD
from pinecone_trio.router.wire import Traffic
from pinecone_trio.testing import open_network

from .peering_helpers import make_peering
from .test_node_races import _StuckStream

BOUND = 60  # real time on a shared machine: only matters when something hangs


def _payload(i: int, size: int) -> bytes:
    return i.to_bytes(4, "big") + bytes((i + j) & 0xFF for j in range(256)) * (size // 256)


async def test_datagrams_through_a_relay_arrive_intact_as_bytes() -> None:
    # a - b - c over TCP: c's frames cross b (decoded as views, forwarded), b's own are
    # delivered locally. Bursts of mixed sizes make reads hold many frames and frames
    # straddle reads.
    async with open_network([("a", "b"), ("b", "c")], transport="tcp") as net:
        with trio.fail_after(BOUND):
            await net.wait_converged()
        a, b, c = net["a"], net["b"], net["c"]
        sizes = [MAX_DATAGRAM_PAYLOAD - 4 - (MAX_DATAGRAM_PAYLOAD - 4) % 256, 1_000, 256, 20_000]
        sent = {_payload(i, sizes[i % len(sizes)]) for i in range(40)}
        with trio.fail_after(BOUND):
            for target in (c, b):
                got: set[bytes] = set()
                while got != sent:  # datagrams are best effort: re-send until all came
                    for payload in sorted(sent - got):
                        await a.send(target.public_key, payload)
                    with trio.move_on_after(1):
                        while got != sent:
                            datagram = await target.receive()
                            assert type(datagram.payload) is bytes  # not a view
                            assert datagram.payload in sent, "a corrupted payload"
                            got.add(datagram.payload)


async def test_a_queued_forwarded_frame_holds_its_own_bytes() -> None:
    # A frame that waits on a peer queue must not pin the whole read buffer its payload
    # was a view of (a peer could otherwise pin a 256 KiB buffer per tiny frame).
    me = Identity.generate().public_key
    peering, _recv = make_peering(_StuckStream(), local_key=bytes(me))
    buffer = bytearray(b"h" * 100 + b"payload" + b"t" * 100)
    view = memoryview(buffer).toreadonly()[100:107]
    frame = Traffic((), (), FULL_MASK, b"\x01" * 32, FULL_MASK, 0, view, 10)
    assert peering.enqueue(frame) is None
    queued = peering.queue.pop()
    assert queued is not None and isinstance(queued, Traffic)
    assert type(queued.payload) is bytes and queued.payload == b"payload"
    assert peering.queued_bytes == len(b"payload")
    del frame
    view.release()
    buffer.extend(b"!")  # the queue exports nothing of the buffer: it can be resized
