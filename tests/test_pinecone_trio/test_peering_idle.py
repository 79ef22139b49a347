"""`Peering.idle` stays false while the writer task is still writing frames it took.

A node's goodbye waits until every peering is idle before it cancels the links: a frame
the writer task had taken off the queue but not yet handed to the link (a memory or
WebSocket link, which has no synchronous write) looked sent, and the cancellation cut
it short (the DHT withdrawal of a block left just before the node, found by a review).
"""

from __future__ import annotations

import trio
import trio.testing

from pinecone_trio.router.wire import Traffic

from .peering_helpers import make_peering


class _HeldStream(trio.abc.Stream):
    """Every `send_all` waits until `release` is set; receives never end."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.writing = trio.Event()
        self.written = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.writing.set()
        await self.release.wait()
        self.written += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_peering_is_not_idle_while_its_writer_is_writing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stream = _HeldStream()
    peering, _inbox = make_peering(stream, keepalives=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peering.run)
        assert peering.idle
        peering.enqueue(Traffic((), (3,), b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, 0, b"hi", 1))
        with trio.fail_after(1):
            await stream.writing.wait()
        assert not peering.queue  # taken by the writer task ...
        assert not peering.idle  # ... and not on the link yet
        stream.release.set()
        for _ in range(10):  # the writer's task runs after the release
            await trio.sleep(0.001)
        assert peering.idle and stream.written > 0
        peering.close("test over")
