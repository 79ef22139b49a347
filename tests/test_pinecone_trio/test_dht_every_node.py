"""Every node serves the DHT by default (`NodeConfig.dht`), so a library app that calls
`open_node` and never `open_dht` is no hole in it (our closing note, "DHT holes": such
a node dropped the closest-key datagrams of the topics homed at its key, and those
topics could be neither announced nor found, by anyone).

Three nodes in a line a - b - c with keys a < b < c and a topic whose home is b (the
smallest key >= the topic id): b is the library-style node, a announces, c looks up.
Memory links in virtual time, and once over real loopback TCP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from pinecone_trio import Identity, NodeConfig, PublicKey, open_node
from pinecone_trio.dht import Dht, open_dht, topic_id
from pinecone_trio.node import GOODBYE_GRACE, Node
from pinecone_trio.testing import open_network

from .dht_helpers import sorted_identities, three_keys_and_a_topic, topic_above

_LISTEN = {"memory": "memory://", "tcp": "tcp://127.0.0.1:0"}


@asynccontextmanager
async def _line(
    transport: str, b_config: NodeConfig | None = None
) -> AsyncIterator[tuple[Node, Node, Node, str]]:
    """a - b - c, converged (a's ascending and c's descending neighbour is b), and a
    topic homed at b."""
    ida, idb, idc, topic = three_keys_and_a_topic("app/")
    listen = _LISTEN[transport]
    async with (
        open_node(idb, listen=listen, config=b_config) as b,
        open_node(ida, listen=listen) as a,
        open_node(idc, listen=listen) as c,
    ):
        await a.connect(b.listen_uris[0])
        await c.connect(b.listen_uris[0])
        home = bytes(b.public_key)
        with trio.fail_after(60):
            while a.snake_neighbours()[1] != home or c.snake_neighbours()[0] != home:
                with trio.move_on_after(0.2):  # the ascending key changes without an event
                    await a.wait_changed()
        yield a, b, c, topic


def _dht(node: Node) -> Dht:
    assert node.dht is not None
    return node.dht


async def _library_node_is_the_home(transport: str) -> None:
    async with _line(transport) as (a, b, c, topic):
        # b is what a library app runs: `open_node`, nothing about the DHT.
        async with _dht(a).announce(topic, data=b"hi") as ann:
            assert ann.acknowledged and ann.placed  # by b, the topic's home
            found = await _dht(c).lookup(topic, timeout=10)
            assert [(r.public_key, r.data) for r in found] == [(a.public_key, b"hi")]
            assert _dht(b).status()["records"] == 1
            assert b.status()["dht"]["records"] == 1
            assert _dht(b).engine.store.entry(topic_id(topic), bytes(a.public_key)) is not None
        assert b.counters.unknown_service == 0


async def test_a_node_that_never_opens_the_dht_stores_and_serves_its_topics(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await _library_node_is_the_home("memory")


async def test_a_node_that_never_opens_the_dht_serves_its_topics_over_tcp() -> None:
    with trio.fail_after(60):
        await _library_node_is_the_home("tcp")


async def test_dht_false_makes_a_hole_unless_open_dht_runs_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _line("memory", NodeConfig(dht=False)) as (a, b, c, topic):
        assert b.dht is None and b.status()["dht"] is None
        # As before every node served: b drops what it cannot serve.
        async with _dht(a).announce(topic, data=b"hi") as ann:
            assert not ann.acknowledged and not ann.placed
            assert await _dht(c).lookup(topic) == []
        assert b.counters.unknown_service > 0
        # open_dht runs a DHT of its own on b for the block, as it always did.
        async with open_dht(b) as dht_b:
            assert b.dht is None
            with pytest.raises(RuntimeError):
                async with open_dht(b):
                    pass  # pragma: no cover
            async with _dht(a).announce(topic, data=b"again") as ann:
                assert ann.acknowledged
                found = await _dht(c).lookup(topic)
                assert [r.data for r in found] == [b"again"]
        with pytest.raises(trio.ClosedResourceError):
            await dht_b.lookup(topic)


async def test_open_dht_on_a_serving_node_yields_its_dht_and_leaving_does_not_stop_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _line("memory") as (a, b, c, topic):
        async with open_dht(b) as dht_b:
            assert dht_b is b.dht
            async with open_dht(b) as again:  # nothing is split: no RuntimeError
                assert again is dht_b
            async with dht_b.announce("b's own", data=b"b") as ann:
                assert ann.acknowledged
            await trio.sleep(1.0)  # virtual: the withdrawal and its copies travel
            assert await _dht(c).lookup("b's own") == []  # withdrawn on leaving the block
        # Left open_dht: b still serves the topics homed at its key, and its DHT works.
        async with open_dht(a) as dht_a, dht_a.announce(topic, data=b"hi") as ann:
            assert ann.acknowledged
            assert [r.public_key for r in await _dht(c).lookup(topic)] == [a.public_key]
            assert [r.public_key for r in await dht_b.lookup(topic)] == [a.public_key]
        assert a.dht is dht_a  # still running: leaving open_dht(a) did not close it
        await trio.sleep(1.0)
        assert await dht_a.lookup(topic) == []  # the withdrawal reached b


async def test_leaving_open_node_right_after_an_announce_block_still_withdraws(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The node's own DHT lives as long as the node: leaving `open_node` just after an
    # announce block, the withdrawal is in its outbox and must still leave.
    ida, idb = sorted_identities(2)
    topic = topic_above(ida)
    async with open_node(idb, listen="memory://") as b:
        async with open_node(ida) as a:
            await a.connect(b.listen_uris[0])
            with trio.fail_after(60):
                await a.wait_for(lambda: a.snake_neighbours()[1] == bytes(b.public_key))
            async with _dht(a).announce(topic) as ann:
                assert ann.acknowledged  # by b, the home
        await trio.sleep(1.0)
        stored = _dht(b).engine.store.entry(topic_id(topic), bytes(ida.public_key))
        assert stored is not None and stored.withdrawn


async def test_an_idle_node_serving_the_dht_still_leaves_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        await trio.sleep(12.5)
        async with open_node(Identity.generate()) as node:
            await node.connect(net["a"].listen_uris[0])
            await trio.sleep(7.5)
            start = trio.current_time()
        # No session to close, nothing in the DHT's outbox: no goodbye to wait for (an
        # outbox with a SUCCESSOR claim in it at that instant costs a few ms).
        assert trio.current_time() - start < GOODBYE_GRACE / 10


async def test_what_serving_costs_an_idle_network(autojump_clock: trio.testing.MockClock) -> None:
    # Each node of an idle overlay sends its DHT's SUCCESSOR claim to its predecessor
    # every SUCCESSOR_INTERVAL (5 s), and nothing else: 12 datagrams a minute. Its DHT
    # tasks wake for that claim, for the claim it receives (and its timer task after
    # it) and, on a node with no predecessor, for the neighbour poll riding on no claim:
    # each wake reads the snake neighbours once, at most 3 times per 5 s (it was 8, a
    # 1 s poll of its own besides, until every node served the DHT).
    names = [f"n{i}" for i in range(20)]
    edges = [(names[i], names[(i - 1) // 2]) for i in range(1, 20)]
    async with open_network(edges) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        await trio.sleep(30)
        before = {node.public_key: _dht(node).datagrams_sent for node in net}
        reads: dict[PublicKey, int] = dict.fromkeys(before, 0)
        for node in net:
            read = node.snake_neighbours

            def counted(
                read: Callable[[], tuple[bytes | None, bytes | None]] = read,
                key: PublicKey = node.public_key,
            ) -> tuple[bytes | None, bytes | None]:
                reads[key] += 1
                return read()

            node.snake_neighbours = counted  # type: ignore[method-assign]
        await trio.sleep(60)
        lowest = min(net, key=lambda n: n.public_key)  # it has no predecessor to tell
        for node in net:
            sent = _dht(node).datagrams_sent - before[node.public_key]
            assert (sent == 0) if node is lowest else (sent in (12, 13)), sent
            assert reads[node.public_key] <= 37, reads
            assert node.counters.unknown_service == 0


@pytest.mark.parametrize("listen", ["memory://", "ws://127.0.0.1:0/dht"], ids=["memory", "ws"])
@pytest.mark.parametrize("config", [None, NodeConfig(dht=False)], ids=["served", "own"])
async def test_leaving_open_node_right_after_an_open_dht_block_still_withdraws(
    listen: str, config: NodeConfig | None
) -> None:
    # docs/dht.md's program and examples/notes.py: `open_node(...) as node, open_dht(node)
    # as dht`, an announce block, then both left at once. Found by a second reader: the
    # block's exit handed the withdrawal to the router, the node's goodbye then found
    # nothing to wait for and cancelled the router before it sent it (0 of 10 on memory
    # and WebSocket links; the record stayed findable for RECORD_TTL). Real time: a
    # WebSocket link has a writer task of its own.
    ida, idb = sorted_identities(2)
    topic = topic_above(ida, idb)
    with trio.fail_after(30):
        async with open_node(idb, listen=listen) as b:
            async with open_node(ida, config=config) as a, open_dht(a) as dht:
                await a.connect(b.listen_uris[0])
                await a.wait_for(lambda: a.snake_neighbours()[1] == bytes(b.public_key))
                async with dht.announce(topic) as ann:
                    assert ann.acknowledged  # by b, the home
            for _ in range(200):  # b's router handles what a's links delivered
                stored = _dht(b).engine.store.entry(topic_id(topic), bytes(ida.public_key))
                if stored is not None and stored.withdrawn:
                    break
                await trio.sleep(0.01)
            assert stored is not None and stored.withdrawn


async def test_open_dht_refuses_a_node_that_is_not_running() -> None:
    # A node that serves the DHT starts it in `run`: a DHT opened before would split
    # the messages between two engines (found by a second reader: 4 and 2 of 6).
    node = Node(Identity.generate())
    with pytest.raises(RuntimeError, match="running node"):
        async with open_dht(node):
            pass  # pragma: no cover


@pytest.mark.parametrize("outer", [False, True], ids=["dht-block", "node-block"])
@pytest.mark.parametrize("config", [None, NodeConfig(dht=False)], ids=["served", "own"])
@pytest.mark.parametrize("after", [False, True], ids=["in-block", "after-block"])
async def test_an_announce_cancelled_from_outside_still_withdraws(
    outer: bool, config: NodeConfig | None, after: bool
) -> None:
    # A cancel scope around the `open_dht` block (or around the node too) cancelled
    # while an announce block runs. A DHT of its own (`dht=False`) runs its sender task
    # in the cancelled scope: the withdrawal stayed in its outbox (the record findable
    # for RECORD_TTL) until `_flush` sent what the cancelled sender left.
    ida, idb = sorted_identities(2)
    topic = topic_above(ida, idb)
    with trio.fail_after(30):
        async with open_node(idb, listen="memory://") as b:
            with trio.CancelScope() as around_node:
                async with open_node(ida, config=config) as a:
                    await a.connect(b.listen_uris[0])
                    await a.wait_for(lambda: a.snake_neighbours()[1] == bytes(b.public_key))
                    with trio.CancelScope() as around_dht:
                        async with open_dht(a) as dht:
                            async with dht.announce(topic) as ann:
                                assert ann.acknowledged
                                if not after:
                                    (around_node if outer else around_dht).cancel()
                                    await trio.sleep_forever()
                                await trio.sleep(0.05)  # the sender waits on the outbox
                            # The block ended; the cancel comes in the same tick (a
                            # second reader: the withdrawal handed straight to the
                            # waiting sender, cancelled before the node had it).
                            (around_node if outer else around_dht).cancel()
                            await trio.sleep_forever()
            for _ in range(200):  # b's router handles what a's link delivered
                stored = _dht(b).engine.store.entry(topic_id(topic), bytes(ida.public_key))
                if stored is not None and stored.withdrawn:
                    break
                await trio.sleep(0.01)
            assert stored is not None and stored.withdrawn
