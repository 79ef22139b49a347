"""A cold node joining a converged 20-node network reaches every key within 3 s (issue 5).

Deterministic: the simulator in virtual time (5 ms links with jitter). The network is the
overlay benchmark's shape (each node links to a random earlier one, 30 % also to a
second), converged for 60 s plus a seeded offset, so the joiner lands at a random phase
of everybody's 5 s bootstrap cycle. Then, like the benchmark, the joiner sends exact-key
traffic to every key every 50 ms until each destination has answered (the answer goes
back on the joiner's cached coordinates). Separately, every node sends exact-key
traffic to the joiner (no coordinates known: snake-routed) until it arrives.

Without the descending handover (docs/router.md, deviation 21) a joiner waits for its
predecessor's next periodic bootstrap, up to 5 s: the last test shows that this test
would catch that.
"""

from __future__ import annotations

import random

import pytest

from pinecone_trio.router.actions import DeliverLocal, LocalSend
from pinecone_trio.router.state import RouterConfig
from pinecone_trio.sim.network import Network
from pinecone_trio.sim.topology import Graph

NODES = 20
SETTLE_S = 60.0
PROBE_EVERY_S = 0.05
GIVE_UP_S = 10.0
TARGET_S = 3.0
SEEDS = range(12)


def _bench_graph(rng: random.Random) -> Graph:
    g = Graph([str(i) for i in range(NODES)])
    for i in range(1, NODES):
        g.add_link(i, rng.randrange(i))
        if i > 2 and rng.random() < 0.3:
            g.add_link(i, rng.randrange(i))
    return g


def _join_and_reach(
    seed: int, *, towards_joiner: bool, config: RouterConfig | None = None, links: int = 1
) -> float | None:
    """Virtual seconds from the join until every pair delivered (None: gave up)."""
    rng = random.Random(seed)
    net = Network(_bench_graph(rng), seed=seed, config=config, signatures=seed % 4 == 0)
    net.run_until(SETTLE_S + rng.random() * 5.0)
    t0 = net.now
    joiner = net.add_node()
    for peer in rng.sample(range(NODES), links):
        assert net.connect(joiner, peer)
    jkey = net.nodes[joiner].key
    done: dict[int, float] = {}

    def on_deliver(node: int, d: DeliverLocal) -> None:
        if d.payload == b"ping":
            net.local_input(node, LocalSend(destination_key=d.source_key, payload=b"pong"))
        elif d.payload in (b"pong", b"hello") and node == joiner:
            done.setdefault(net.key_index[d.source_key], net.now)

    net.on_deliver = on_deliver
    t = t0
    while len(done) < NODES and t < t0 + GIVE_UP_S:
        for i in range(NODES):
            if i in done:
                continue
            if towards_joiner:
                net.local_input(i, LocalSend(destination_key=jkey, payload=b"hello"))
            else:
                key = net.nodes[i].key
                net.local_input(joiner, LocalSend(destination_key=key, payload=b"ping"))
        t += PROBE_EVERY_S
        net.run_until(t)
    if len(done) < NODES:
        return None
    return max(done.values()) - t0


@pytest.mark.parametrize("seed", SEEDS)
def test_a_cold_joiner_reaches_every_key_within_3_s(seed: int) -> None:
    took = _join_and_reach(seed, towards_joiner=False)
    assert took is not None and took <= TARGET_S, took


@pytest.mark.parametrize("seed", SEEDS)
def test_every_key_reaches_a_cold_joiner_within_3_s(seed: int) -> None:
    took = _join_and_reach(seed, towards_joiner=True)
    assert took is not None and took <= TARGET_S, took


@pytest.mark.parametrize("seed", range(4))
def test_a_joiner_with_two_links_reaches_every_key_within_3_s(seed: int) -> None:
    took = _join_and_reach(seed, towards_joiner=False, links=2)
    assert took is not None and took <= TARGET_S, took


def test_without_the_handover_a_joiner_waits_for_the_periodic_bootstrap() -> None:
    # Pinecone's behaviour: the joiner's predecessor finds it with its next 5 s
    # bootstrap. Over these seeds that is late at least once (it is what the benchmark
    # measured before: 1.9, 3.5, 5.2 s), so the tests above can fail.
    upstream = RouterConfig(descending_handover=False)
    times = [_join_and_reach(s, towards_joiner=False, config=upstream) for s in SEEDS]
    assert any(t is None or t > TARGET_S for t in times), times
