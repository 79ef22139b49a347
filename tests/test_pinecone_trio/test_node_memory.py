"""The node over memory links in virtual time: convergence, delivery, failures."""

from __future__ import annotations

import json
import random

import pytest
import trio
import trio.testing

from pinecone_trio import Identity
from pinecone_trio.node import Datagram, Node, NodeConfig, PeerLimitError, open_node
from pinecone_trio.testing import Network, open_network


def random_connected_edges(n: int, extra: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = [f"n{i}" for i in range(n)]
    edges = [(names[i], names[rng.randrange(i)]) for i in range(1, n)]  # a random tree
    while extra:
        a, b = rng.sample(names, 2)
        if (a, b) not in edges and (b, a) not in edges:
            edges.append((a, b))
            extra -= 1
    return edges


async def deliver_all_pairs(net: Network, names: list[str], *, attempts: int = 10) -> None:
    """Send a datagram between every ordered pair until each has arrived once."""
    missing = {(a, b) for a in names for b in names if a != b}
    inboxes: dict[str, set[tuple[str, str]]] = {n: set() for n in names}
    by_key = {net[n].public_key: n for n in names}

    async def collect(name: str) -> None:
        while True:
            dg: Datagram = await net[name].receive()
            src = by_key[dg.source_key]
            assert dg.payload == f"{src}->{name}".encode()
            inboxes[name].add((src, name))

    async with trio.open_nursery() as nursery:
        for name in names:
            nursery.start_soon(collect, name)
        for _ in range(attempts):
            for a, b in sorted(missing):
                await net[a].send(net[b].public_key, f"{a}->{b}".encode())
            await trio.sleep(1.0)
            for name in names:
                missing -= inboxes[name]
            if not missing:
                break
        nursery.cancel_scope.cancel()
    assert not missing, f"{len(missing)} pairs never delivered, e.g. {sorted(missing)[:5]}"


async def test_two_nodes_peer_and_exchange(autojump_clock: trio.testing.MockClock) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        assert a.peer_keys() == [b.public_key]
        status = a.status()
        top = max(a.public_key, b.public_key)
        assert status["root_key"] == top.hex()
        assert status["peers"][0]["public_key"] == b.public_key.hex()
        await deliver_all_pairs(net, ["a", "b"])


async def test_twenty_nodes_random_topology(autojump_clock: trio.testing.MockClock) -> None:
    edges = random_connected_edges(20, 10, seed=5)
    async with open_network(edges) as net:
        with trio.fail_after(120):
            await net.wait_converged()
        await deliver_all_pairs(net, sorted(net.nodes))


async def kill_node_and_recover(listen: str) -> None:
    """A ring of 6: kill the root; the other five re-converge around the gap and
    deliver between every ordered pair."""
    names = [f"r{i}" for i in range(6)]
    edges = [(names[i], names[(i + 1) % 6]) for i in range(6)]
    net = Network()
    async with trio.open_nursery() as nursery:
        identities = {n: Identity.generate() for n in names}
        started: dict[str, trio.CancelScope] = {}

        async def run_node(name: str, *, task_status: trio.TaskStatus[Node]) -> None:
            with trio.CancelScope() as scope:
                started[name] = scope
                async with open_node(identities[name], listen=[listen]) as node:
                    task_status.started(node)
                    await trio.sleep_forever()

        for name in names:
            net.nodes[name] = await nursery.start(run_node, name)
        for a, b in edges:
            await net[a].connect(net[b].listen_uris[0])
        with trio.fail_after(60):
            await net.wait_converged()
        victim = max(names, key=lambda n: net[n].public_key)  # the root, the hardest case
        started[victim].cancel()
        del net.nodes[victim]
        survivors = sorted(net.nodes)
        with trio.fail_after(120):
            await net.wait_converged(survivors)
        await deliver_all_pairs(net, survivors)
        nursery.cancel_scope.cancel()


async def test_killed_node_routes_recover(autojump_clock: trio.testing.MockClock) -> None:
    await kill_node_and_recover("memory://")


async def test_duplicate_links_resolve_to_one(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_node(Identity.generate(), listen=["memory://"]) as a,
        open_node(Identity.generate(), listen=["memory://"]) as b,
    ):
        # both dial each other at once, twice each
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(a.connect, b.listen_uris[0])
                nursery.start_soon(b.connect, a.listen_uris[0])
        with trio.fail_after(10):
            await a.wait_for(lambda: len(a.peer_keys()) == 1)
            await b.wait_for(lambda: len(b.peer_keys()) == 1)
            await trio.sleep(2)  # let any late duplicates settle
        assert a.peer_keys() == [b.public_key]
        assert b.peer_keys() == [a.public_key]
        pa, pb = a.status()["peers"][0], b.status()["peers"][0]
        assert pa["outbound"] != pb["outbound"]  # the same link seen from both ends
        assert a.counters.duplicate_links + b.counters.duplicate_links >= 3


async def test_peer_limit_refuses_clearly(autojump_clock: trio.testing.MockClock) -> None:
    config = NodeConfig(max_peers=1)
    async with (
        open_node(Identity.generate(), listen=["memory://"], config=config) as hub,
        open_node(Identity.generate()) as first,
        open_node(Identity.generate()) as second,
    ):
        assert await first.connect(hub.listen_uris[0]) == hub.public_key
        with pytest.raises(PeerLimitError, match="peer limit"):
            await second.connect(hub.listen_uris[0])
        assert hub.counters.refused_peer_limit == 1
        assert hub.peer_keys() == [first.public_key]


async def test_static_peer_redials_with_backoff(autojump_clock: trio.testing.MockClock) -> None:
    target = Identity.generate()
    async with open_node(Identity.generate(), static_peers=["memory://late-peer"]) as node:
        with trio.fail_after(30):
            await node.wait_for(lambda: node.status()["static_peers"][0]["failures"] >= 3)
        entry = node.status()["static_peers"][0]
        assert entry["state"] in ("waiting", "dialling")
        assert "nobody is listening" in entry["last_error"]
        async with open_node(target, listen=["memory://late-peer"]):
            with trio.fail_after(60):
                await node.wait_for(lambda: node.peer_keys() == [target.public_key])
            entry = node.status()["static_peers"][0]
            assert entry["state"] == "connected"
            assert entry["public_key"] == target.public_key.hex()
        # the peer goes away: the static peer goes back to redialling
        with trio.fail_after(30):
            await node.wait_for(lambda: node.peer_keys() == [])


async def test_events_report_peers_and_root(autojump_clock: trio.testing.MockClock) -> None:
    from pinecone_trio import events

    async with (
        open_node(Identity.generate(), listen=["memory://"]) as a,
        open_node(Identity.generate()) as b,
    ):
        seen: list[events.NodeEvent] = []
        done = trio.Event()
        b_is_root = b.public_key > a.public_key

        async def watch(task_status: trio.TaskStatus[None]) -> None:
            events_iter = b.events()
            task_status.started()
            async for event in events_iter:
                seen.append(event)
                kinds = {type(e) for e in seen}
                if events.PeerConnected in kinds and (b_is_root or events.RootChanged in kinds):
                    done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(watch)
            await trio.sleep(0.1)  # the subscription registers at the first iteration
            await b.connect(a.listen_uris[0])
            with trio.fail_after(10):
                await done.wait()
            nursery.cancel_scope.cancel()
        up = next(e for e in seen if isinstance(e, events.PeerConnected))
        assert up.public_key == a.public_key
        assert "peer up" in str(up)
        if not b_is_root:
            root = next(e for e in seen if isinstance(e, events.RootChanged))
            assert root.root_key == a.public_key


async def test_status_is_json_with_every_documented_field(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # status() is assembled from the node, each peering and each static peer: pin its
    # whole shape, so no part goes missing or changes type unnoticed.
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a = net["a"]
        a.add_static_peer("memory://nobody-here")
        with trio.fail_after(60):
            await a.wait_for(lambda: a.status()["static_peers"][0]["failures"] >= 1)
        status = json.loads(json.dumps(a.status()))
    assert set(status) == {
        "public_key", "root_key", "root_seq", "coords", "parent_key", "listen", "peers",
        "snake", "tables", "router", "static_peers", "multicast", "counters", "dht",
    }  # fmt: skip
    (peer,) = status["peers"]
    assert set(peer) == {
        "public_key", "uri", "port", "type", "zone", "outbound", "coords", "bytes_in",
        "bytes_out", "frames_in", "frames_out", "queue_len", "queue_drops",
        "unencodable_dropped", "protocol_dropped", "connected_s",
    }  # fmt: skip
    assert peer["public_key"] == net["b"].public_key.hex() and peer["type"] == "remote"
    assert isinstance(peer["coords"], list) and peer["bytes_in"] > 0
    (static,) = status["static_peers"]
    assert set(static) == {
        "uri", "state", "public_key", "failures", "last_error", "next_attempt_in",
    }  # fmt: skip
    assert static["uri"] == "memory://nobody-here" and static["public_key"] is None
    assert status["multicast"] is None
    assert set(status["counters"]) == {
        "handshake_failures", "misbehaving_peers", "refused_peer_limit",
        "refused_pending_handshakes", "duplicate_links", "dial_failures", "receive_drops",
        "unknown_service", "queue_drops",
    }  # fmt: skip
    assert status["counters"]["dial_failures"] >= 1
    # The DHT every node serves (docs/dht.md), as `node.dht.status()` gives it.
    assert status["dht"]["joined"] is True and status["dht"]["records"] == 0
