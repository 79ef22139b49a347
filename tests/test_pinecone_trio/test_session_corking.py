"""A bulk writer over real nodes fills its packets (the driver's autocorking)."""

from __future__ import annotations

import math

import trio
import trio.testing

from pinecone_trio.node import MAX_DATAGRAM_PAYLOAD
from pinecone_trio.testing import open_network

PROTO = "/bulk/v1"


async def test_bulk_writes_through_nodes_send_full_packets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        block = b"\x5a" * 65_536
        writes = 96
        total = writes * len(block)
        got = 0
        async with b.listen(PROTO) as listener, trio.open_nursery() as nursery:
            finished = trio.Event()

            async def sink() -> None:
                nonlocal got
                stream = await listener.accept()
                async with stream:
                    while data := await stream.receive_some(1 << 20):
                        got += len(data)
                finished.set()

            nursery.start_soon(sink)
            with trio.fail_after(60):
                client = await a.connect(b.public_key, PROTO)
                before = a.sessions.statistics()["packets_sent"]

                async def writer() -> None:
                    # In its own task, as applications write: the driver, the router,
                    # the links and the sink all compete with it for scheduler passes.
                    async with client:
                        for _ in range(writes):
                            await client.send_all(block)
                        await client.send_eof()
                        await finished.wait()

                nursery.start_soon(writer)
                await finished.wait()
        assert got == total
        packets = a.sessions.statistics()["packets_sent"] - before
        # 64 KiB writes into ~62.7 KB packets. Corking for one scheduler pass only let
        # one write in eight or so leave a short tail packet (113-114 here, now 102).
        full = math.ceil(total / MAX_DATAGRAM_PAYLOAD)
        assert packets <= full + 4, (packets, full)
