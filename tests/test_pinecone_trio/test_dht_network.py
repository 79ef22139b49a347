"""The DHT on real nodes over memory links, in virtual time (MockClock autojump)."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio.testing

from pinecone_trio import Identity
from pinecone_trio.dht import Dht, open_dht, topic_id
from pinecone_trio.dht.constants import (
    ANNOUNCE_REFRESH_INTERVAL,
    RECORD_TTL,
    REPLICAS_ASCENDING,
    REPLICAS_DESCENDING,
    SUCCESSOR_INTERVAL,
)
from pinecone_trio.identity import PublicKey
from pinecone_trio.node import Node, open_node
from pinecone_trio.testing import Network


def ring_with_chords(n: int, chords: int, seed: int) -> list[tuple[int, int]]:
    """A ring (so one dead node never splits it) plus random chords."""
    rng = random.Random(seed)
    edges = {(i, (i + 1) % n) for i in range(n)}
    while len(edges) < n + chords:
        a, b = rng.sample(range(n), 2)
        if (b, a) not in edges:
            edges.add((a, b))
    return sorted(edges)


class DhtNetwork:
    """Nodes that each run a DHT, any of which can be killed."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.net = Network()
        self.dhts: dict[str, Dht] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._nursery = nursery

    async def _run(self, name: str, *, task_status: trio.TaskStatus[tuple[Node, Dht]]) -> None:
        with trio.CancelScope() as scope:
            self._scopes[name] = scope
            async with (
                open_node(Identity.generate(), listen=["memory://"]) as node,
                open_dht(node) as dht,
            ):
                task_status.started((node, dht))
                await trio.sleep_forever()

    async def start(self, n: int, chords: int, seed: int) -> None:
        names = [f"n{i}" for i in range(n)]
        for name in names:
            node, dht = await self._nursery.start(self._run, name)
            self.net.nodes[name] = node
            self.dhts[name] = dht
        for a, b in ring_with_chords(n, chords, seed):
            await self.net[names[a]].connect(self.net[names[b]].listen_uris[0])
            self.net.edges.append((names[a], names[b]))
        with trio.fail_after(120):
            await self.net.wait_converged()

    def kill(self, name: str) -> None:
        self._scopes.pop(name).cancel()
        del self.net.nodes[name]
        del self.dhts[name]

    async def wait_converged(self, names: list[str] | None = None) -> None:
        with trio.fail_after(120):
            await self.net.wait_converged(names)

    def component(self, name: str) -> list[str]:
        """The live nodes connected to `name` (killing several may split the graph)."""
        seen, todo = {name}, [name]
        while todo:
            here = todo.pop()
            for a, b in self.net.edges:
                for x, y in ((a, b), (b, a)):
                    if x == here and y in self.net.nodes and y not in seen:
                        seen.add(y)
                        todo.append(y)
        return sorted(seen)

    def key(self, name: str) -> PublicKey:
        return self.net[name].public_key

    def closest(self, topic: str) -> str:
        """The name of the node closest to `topic` by the snake's rule."""
        tid = topic_id(topic)
        by_key = sorted(self.net.nodes, key=lambda n: self.key(n))
        for name in by_key:
            if self.key(name) >= tid:
                return name
        return by_key[-1]

    def holders(self, topic: str, name: str) -> list[str]:
        tid, key = topic_id(topic), bytes(self.key(name))
        return [n for n, d in self.dhts.items() if d.engine.store.has(tid, key)]


@asynccontextmanager
async def dht_network(n: int = 16, chords: int = 10, seed: int = 1) -> AsyncIterator[DhtNetwork]:
    async with trio.open_nursery() as nursery:
        net = DhtNetwork(nursery)
        await net.start(n, chords, seed)
        yield net
        nursery.cancel_scope.cancel()


async def eventually(condition: Callable[[], bool], *, seconds: float) -> None:
    """Check `condition` every tenth of a (virtual) second for `seconds`."""
    for _ in range(int(seconds * 10)):
        if condition():
            return
        await trio.sleep(0.1)
    assert condition()


async def found(dht: Dht, topic: str) -> set[PublicKey]:
    return {r.public_key for r in await dht.lookup(topic, timeout=10)}


async def poll(dht: Dht, topic: str, *, until_empty: bool, seconds: int) -> float:
    """Look `topic` up once a (virtual) second until it is (non-)empty; return when."""
    for _ in range(seconds):
        if bool(await found(dht, topic)) != until_empty:
            return trio.current_time()
        await trio.sleep(1)
    raise AssertionError(f"topic still {'non-' if until_empty else ''}empty after {seconds} s")


async def test_announce_and_lookup_across_sixteen_nodes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with dht_network(16) as net:
        d = net.dhts
        async with (
            d["n1"].announce("alpha", data=b"n1 here") as a1,
            d["n2"].announce("alpha", data=b"n2 here") as a2,
            d["n3"].announce("beta") as b3,
        ):
            assert a1.acknowledged and a2.acknowledged and b3.acknowledged
            assert a1.topic_id == topic_id("alpha")
            for looker in ("n5", "n9", "n13", "n1"):
                records = await d[looker].lookup("alpha")
                assert {r.public_key: r.data for r in records} == {
                    net.key("n1"): b"n1 here",
                    net.key("n2"): b"n2 here",
                }
                assert all(r.expires > trio.current_time() for r in records)
                assert await found(d[looker], "beta") == {net.key("n3")}
            assert await found(d["n7"], "gamma") == set()
            # Stored at the closest node and replicated to some of its neighbours.
            holders = net.holders("alpha", "n1")
            assert net.closest("alpha") in holders and len(holders) >= 2
        # Leaving the block withdraws (signed ttl 0): the topic empties at once.
        start = trio.current_time()
        assert await poll(d["n5"], "alpha", until_empty=True, seconds=30) - start < 5
        assert await found(d["n5"], "beta") == set()


async def test_record_survives_closest_node_death(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with dht_network(18, seed=2) as net:
        topic = "survivor"
        owner = net.closest(topic)
        announcer, looker = [n for n in ("n0", "n1", "n2") if n != owner][:2]
        async with net.dhts[announcer].announce(topic, data=b"still here"):
            first_seq = (
                net.dhts[owner].engine.store.get(topic_id(topic), trio.current_time())[0].record.seq
            )
            # The ack can arrive while the owner's copies are still in its link queues;
            # killing it in that instant would test a crash before replication instead.
            order = sorted(net.dhts, key=lambda n: net.key(n))
            i = order.index(owner)
            beside = set(order[max(0, i - 1) : i + 2])  # the owner and its snake neighbours
            await eventually(lambda: beside <= set(net.holders(topic, announcer)), seconds=5)
            net.kill(owner)
            await net.wait_converged()
            # Right away, the copies on the dead node's neighbours answer.
            records = await net.dhts[looker].lookup(topic)
            assert [(r.public_key, r.data) for r in records] == [
                (net.key(announcer), b"still here")
            ]
            # After a refresh the new closest node holds a freshly signed record.
            new_owner = net.closest(topic)
            await trio.sleep(ANNOUNCE_REFRESH_INTERVAL * 1.2)
            entries = net.dhts[new_owner].engine.store.get(topic_id(topic), trio.current_time())
            assert [e.record.seq > first_seq for e in entries] == [True]


async def test_idle_nodes_tell_their_predecessors_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # No DHT traffic at all: the SUCCESSOR claims must still go out as soon as the snake
    # has converged (the router's ascending key is only a guess, often a wrong one).
    async with dht_network(14, chords=10, seed=4) as net:
        order = sorted(net.dhts, key=lambda n: net.key(n))
        expected = {a: bytes(net.key(b)) for a, b in itertools.pairwise(order)}

        def learned() -> bool:
            return all(
                net.dhts[a].engine.neighbours[1] == succ
                and net.dhts[a].engine.statistics.successor_claims > 0
                for a, succ in expected.items()
            )

        await eventually(learned, seconds=SUCCESSOR_INTERVAL - 0.5)


def topic_below_every_key(net: DhtNetwork) -> str:
    """A topic whose id is below every node's key: its home is the lowest node, which
    has no descending neighbour and pushes all its copies up the snake."""
    lowest = min(bytes(net.key(n)) for n in net.dhts)
    for i in range(100_000):
        if topic_id(f"low/{i}") < lowest:
            return f"low/{i}"
    raise AssertionError("no topic below the lowest key")  # pragma: no cover


async def test_copies_up_from_the_bottom_of_the_snake_reach_the_true_successors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with dht_network(18, seed=2) as net:
        topic = topic_below_every_key(net)
        order = sorted(net.dhts, key=lambda n: net.key(n))
        owner, announcer = order[0], order[-1]
        copies = REPLICAS_ASCENDING + REPLICAS_DESCENDING
        async with net.dhts[announcer].announce(topic, data=b"low"):
            # The copies reach the owner's true successors (with a hand-off if one went
            # to a wrong node just before a successor claim arrived).
            want = set(order[: 1 + copies])
            await eventually(lambda: want <= set(net.holders(topic, announcer)), seconds=5)
            net.kill(owner)
            await net.wait_converged()
            records = await net.dhts[order[5]].lookup(topic)
            assert [(r.public_key, r.data) for r in records] == [(net.key(announcer), b"low")]


async def test_reannounce_restores_topic_after_all_holders_die(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with dht_network(20, chords=20, seed=3) as net:
        topic = "phoenix"
        owner = net.closest(topic)
        announcer = next(n for n in ("n0", "n1", "n2") if n != owner)
        async with net.dhts[announcer].announce(topic):
            holders = [h for h in net.holders(topic, announcer) if h != announcer]
            for name in holders:
                net.kill(name)
            alive = net.component(announcer)
            await net.wait_converged(alive)
            looker = next(n for n in alive if n != announcer)
            start = trio.current_time()
            seconds = int(ANNOUNCE_REFRESH_INTERVAL * 2)
            when = await poll(net.dhts[looker], topic, until_empty=False, seconds=seconds)
            assert when - start <= ANNOUNCE_REFRESH_INTERVAL * 1.2
        assert RECORD_TTL > ANNOUNCE_REFRESH_INTERVAL * 2


async def test_lookups_after_a_fifth_of_the_nodes_die(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # hyperdht's churn figure: announce, kill 20 % of the nodes, look everything up.
    rng = random.Random(5)
    async with dht_network(20, chords=15, seed=5) as net, AsyncExitStack() as stack:
        names = sorted(net.dhts)
        topics = {f"churn/{i}": rng.choice(names) for i in range(10)}
        for topic, name in topics.items():
            await stack.enter_async_context(net.dhts[name].announce(topic, data=name.encode()))
        key_of = {n: net.key(n) for n in names}
        victims = rng.sample(names, 4)
        for name in victims:
            net.kill(name)
        alive = net.component(next(n for n in names if n not in victims))
        await net.wait_converged(alive)
        # Right away: every topic with a live copy in this part of the network is found,
        # including those whose announcer died (its records live until they expire).
        checked = 0
        for topic, announcer in topics.items():
            tid, key = topic_id(topic), bytes(key_of[announcer])
            if any(net.dhts[n].engine.store.has(tid, key) for n in alive):
                looker = rng.choice(alive)
                assert await found(net.dhts[looker], topic) == {key_of[announcer]}
                checked += 1
        assert checked >= 8
        # After one refresh interval, every live announcer is found again from anywhere.
        await trio.sleep(ANNOUNCE_REFRESH_INTERVAL * 1.2)
        for topic, announcer in topics.items():
            if announcer in alive:
                assert await found(net.dhts[rng.choice(alive)], topic) == {key_of[announcer]}
