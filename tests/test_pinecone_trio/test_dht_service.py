"""The DHT's Trio shell: ownership, cancellation, errors and bad input on a small network."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from pinecone_trio import Identity, LocalProtocolError
from pinecone_trio.dht import open_dht, topic_id
from pinecone_trio.dht.constants import MAX_RECORD_DATA
from pinecone_trio.node import SERVICE_DHT, NodeConfig, open_node
from pinecone_trio.testing import open_network

#: Nodes that do not serve the DHT themselves: `open_dht` runs one of its own, for the
#: block (and the other nodes of a network are holes, answering nothing).
NO_DHT = NodeConfig(dht=False)


async def test_single_node_finds_itself(autojump_clock: trio.testing.MockClock) -> None:
    async with open_node(Identity.generate()) as node, open_dht(node) as dht:
        async with dht.announce(b"alone", data=b"me") as ann:
            assert ann.acknowledged and ann.topic_id == topic_id("alone")
            assert not ann.placed  # its own acknowledgement: nobody else holds it
            [record] = await dht.lookup("alone")
            assert record.public_key == node.public_key and record.data == b"me"
        assert await dht.lookup("alone") == []
        assert dht.engine.pending() == 0


async def test_one_dht_per_node_and_local_errors(autojump_clock: trio.testing.MockClock) -> None:
    async with open_node(Identity.generate(), config=NO_DHT) as node, open_dht(node) as dht:
        with pytest.raises(RuntimeError):
            async with open_dht(node):
                pass  # pragma: no cover
        with pytest.raises(ValueError):
            async with dht.announce("t", data=b"x" * (MAX_RECORD_DATA + 1)):
                pass  # pragma: no cover
        async with dht.announce("t"):
            with pytest.raises(LocalProtocolError):
                async with dht.announce("t"):
                    pass  # pragma: no cover
            assert len(await dht.lookup("t")) == 1
    # Closed: a new DHT can be opened on another node run.
    async with open_node(Identity.generate(), config=NO_DHT) as node, open_dht(node):
        pass


async def test_closed_dht_refuses_and_wakes_waiters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A DHT open_dht ran itself (the node serves none) is closed when its block ends.
    async with open_network([("a", "b")], config=NO_DHT) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        async with open_dht(net["a"]) as dht:
            pass
        with pytest.raises(trio.ClosedResourceError):
            await dht.lookup("x")
        with pytest.raises(trio.ClosedResourceError):
            async with dht.announce("x"):
                pass  # pragma: no cover
        # A lookup in flight when the DHT closes is woken with the same error. The topic
        # is one whose closest node is b, which runs no DHT: nobody answers.
        keys = sorted([net["a"].public_key, net["b"].public_key])

        def closest(t: str) -> bytes:
            return next((k for k in keys if k >= topic_id(t)), keys[-1])

        topic = next(t for t in (f"t{i}" for i in range(1000)) if closest(t) == net["b"].public_key)
        caught: list[BaseException] = []
        async with trio.open_nursery() as nursery, open_dht(net["a"]) as dht2:

            async def look() -> None:
                try:
                    await dht2.lookup(topic, timeout=1000)
                except trio.ClosedResourceError as exc:
                    caught.append(exc)

            nursery.start_soon(look)
            await trio.sleep(0.1)
            assert dht2.engine.pending() == 1
        assert len(caught) == 1


async def test_cancelled_lookup_leaves_nothing_pending(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b"), ("b", "c")], config=NO_DHT) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        async with open_dht(net["a"]) as dht:  # b and c run no DHT: nobody answers
            with trio.move_on_after(0.5) as scope:
                await dht.lookup("unanswered", timeout=30)
            assert scope.cancelled_caught
            assert dht.engine.pending() == 0
            start = trio.current_time()
            assert await dht.lookup("unanswered", timeout=30) == []
            # Without answers a lookup gives up after its retries, long before 30 s.
            assert trio.current_time() - start < 5


async def test_garbage_on_the_dht_service_is_counted_and_ignored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b"), ("b", "c")]) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        async with open_dht(net["a"]) as da, open_dht(net["b"]) as db, open_dht(net["c"]) as dc:
            evil = net["c"].service(SERVICE_DHT)
            for payload in (b"", b"\xc1\xc1", b"\x95\x05\x01" + b"\x00" * 40, bytes(300)):
                await evil.send(net["b"].public_key, payload)
            for _ in range(100):  # virtual time: wait for the garbage to arrive
                if db.engine.statistics.decode_errors >= 4:
                    break
                await trio.sleep(0.1)
            assert db.engine.statistics.decode_errors == 4
            async with da.announce("still works"):
                assert [r.public_key for r in await dc.lookup("still works")] == [
                    net["a"].public_key
                ]
            assert len(db.engine.store) <= 1
