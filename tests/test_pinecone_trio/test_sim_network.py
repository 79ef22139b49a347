"""The simulator's discrete-event core, link model, invariant checks and probes."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from pinecone_trio.router.actions import LocalSend
from pinecone_trio.router.wire import Bootstrap, Frame, TreeAnnouncement, frame_length
from pinecone_trio.sim.generators import build_topology, grid, line, ring
from pinecone_trio.sim.invariants import check_snake, check_tree, expected_descending
from pinecone_trio.sim.metrics import Prober, Summary, sample_pairs
from pinecone_trio.sim.network import Link, LinkModel, Network
from pinecone_trio.sim.scenarios import Run, SimOptions
from pinecone_trio.sim.topology import Graph


def converge(net: Network, limit: float = 120.0, step: float = 0.5) -> float:
    """Run until tree and snake match ground truth; return the virtual time."""
    while net.now < limit:
        net.run_until(net.now + step)
        if check_tree(net).ok and check_snake(net).ok:
            return net.now
    raise AssertionError(f"no convergence: {check_tree(net).examples} {check_snake(net).examples}")


def test_fresh_network_is_not_converged_and_checks_say_why() -> None:
    net = Network(line(6), seed=1)
    tree, snake = check_tree(net), check_snake(net)
    # Every engine starts as its own root: five of six follow the wrong root.
    assert tree.bad_nodes == 5 and not tree.ok
    assert all("follows root" in e for e in tree.examples)
    assert snake.bad_nodes == 5


def test_line_converges_to_a_tree_and_a_sorted_snake() -> None:
    net = Network(line(8), seed=2)
    converge(net)
    nodes = net.nodes
    top = max(range(8), key=lambda a: nodes[a].key)
    assert nodes[top].state.parent_port is None and nodes[top].state.coords == ()
    # Coordinates on a line grow by one hop per link away from the root.
    assert all(len(nodes[a].state.coords) == abs(a - top) for a in range(8))
    # The snake: following descending pointers from the top visits every key in order.
    by_key = {n.key: n.index for n in nodes}
    walk = [top]
    while (k := nodes[walk[-1]].state.descending_key) is not None:
        walk.append(by_key[k])
    assert [nodes[a].key for a in walk] == sorted((n.key for n in nodes), reverse=True)
    assert expected_descending(net)[walk[0]] == nodes[walk[1]].key


def test_checks_notice_a_broken_tree_and_snake() -> None:
    net = Network(ring(10), seed=3)
    converge(net)
    # Cut the ring twice: ground truth changes at once; the engines need time to follow.
    net.disconnect(0, 1)
    net.disconnect(5, 6)
    assert len(net.graph.components()) == 2
    assert not check_tree(net).ok
    assert not check_snake(net).ok
    converge(net, limit=net.now + 120)


def test_runs_are_deterministic_and_the_codec_changes_nothing() -> None:
    def run(codec: bool, seed: int) -> tuple[object, ...]:
        net = Network(grid(4, 4), seed=seed, codec=codec)
        t = converge(net)
        s = net.stats
        return (t, s.events, s.frames_sent, s.control_bytes, [n.state.coords for n in net.nodes])

    assert run(False, 7) == run(False, 7)
    assert run(True, 7) == run(False, 7)
    assert run(False, 8) != run(False, 7)


def test_links_keep_order_under_jitter_and_add_latency() -> None:
    net = Network(Graph("ab"), seed=4, link=LinkModel(latency=0.1, jitter=0.5))
    arrivals: list[tuple[float, Frame]] = []
    sent: list[Frame] = []

    def on_send(node: int, link: Link, frame: Frame) -> None:
        if node == 0:
            sent.append(frame)

    def on_receive(node: int, link: Link, frame: Frame) -> None:
        assert node == link.dst
        if node == 1:
            arrivals.append((net.now, frame))

    net.on_send = on_send
    net.on_receive = on_receive
    net.connect(0, 1)
    net.run_until(30.0)
    assert len(arrivals) >= 3
    assert [f for _, f in arrivals] == sent[: len(arrivals)]
    assert all(t >= 0.1 for t, _ in arrivals)
    assert [t for t, _ in arrivals] == sorted(t for t, _ in arrivals)


def test_loss_drops_frames_and_bandwidth_queues_them() -> None:
    lossy = Network(grid(3, 3), seed=5, link=LinkModel(loss=0.2))
    lossy.run_until(20.0)
    assert lossy.stats.frames_lost > 0
    assert 0.1 < lossy.stats.frames_lost / lossy.stats.frames_sent < 0.3
    # 2 kB/s per link: a frame leaves when the link is free and takes size/2000 s.
    model = LinkModel(latency=0.01, jitter=0.0, bandwidth=2000.0)
    slow = Network(Graph("ab"), seed=5, link=model)
    sent: dict[int, list[tuple[float, int]]] = {0: [], 1: []}
    received: dict[int, list[tuple[float, int]]] = {0: [], 1: []}

    def on_send(node: int, link: Link, frame: Frame) -> None:
        sent[node].append((slow.now, frame_length(frame)))

    def on_receive(node: int, link: Link, frame: Frame) -> None:
        received[link.src].append((slow.now, frame_length(frame)))

    slow.on_send = on_send
    slow.on_receive = on_receive
    slow.connect(0, 1)
    converge(slow)
    slow.run_until(slow.now + 20)
    assert slow.stats.frames_queue_dropped == 0
    assert len(received[0]) + len(received[1]) >= 4
    for src in (0, 1):
        first_t, first_size = sent[src][0]
        assert received[src][0][0] == pytest.approx(first_t + first_size / 2000.0 + 0.01)
        for (t0, _), (t1, size1) in zip(received[src], received[src][1:], strict=False):
            assert t1 - t0 >= size1 / 2000.0 - 1e-9


def test_ports_run_out_at_253_and_links_are_refused() -> None:
    star = Graph(str(i) for i in range(260))
    for i in range(1, 260):
        star.add_link(0, i)
    net = Network(star, seed=6)
    assert net.stats.links_refused == 259 - 253
    assert len(net.nodes[0].links) == 253
    assert net.graph.link_count() == 253


def test_probes_count_hops_like_the_engine_and_measure_stretch() -> None:
    net = Network(line(6), seed=8)
    converge(net)
    prober = Prober(net)
    assert prober.start(0, 5)
    assert prober.start(2, 3)
    assert not prober.start(1, 1)  # nothing to measure
    net.run_until(net.now + 10)
    report = prober.report()
    assert report.sent == {"first": 2, "reply": 2, "steady": 2}
    assert report.delivery_ratio == 1.0
    assert report.hop_mismatches == 0
    assert report.loops == 0
    assert report.stretch["steady"].mean == 1.0  # a line has one path
    assert report.first_with_coords == 0
    assert all(p.hops == abs(p.src - p.dst) for p in prober.probes)


def test_probes_to_another_component_are_not_counted() -> None:
    g = Graph("abcd")
    g.add_link(0, 1)
    g.add_link(2, 3)
    net = Network(g, seed=9)
    converge(net)
    prober = Prober(net)
    assert not prober.start(0, 2)
    assert prober.start(0, 1)
    net.run_until(net.now + 10)
    assert prober.report().delivery_ratio == 1.0
    pairs = sample_pairs(net, 100, random.Random(1))
    assert sorted(tuple(sorted(p)) for p in pairs) == [(0, 1), (2, 3)]


def test_lost_probes_lower_the_delivery_ratio() -> None:
    net = Network(line(4), seed=10)
    converge(net)
    prober = Prober(net)
    prober.start(0, 3)
    net.disconnect(1, 2)  # after the send: the probe cannot arrive
    net.run_until(net.now + 10)
    report = prober.report()
    assert report.sent == {"first": 1}
    assert report.delivery_ratio == 0.0
    assert math.isnan(report.stretch["first"].mean)


def test_sampled_pairs_are_seeded_and_within_components() -> None:
    net = Network(build_topology("er:300:0.01", seed=1), seed=1)
    rng1, rng2 = (random.Random(3) for _ in range(2))
    pairs = sample_pairs(net, 500, rng1)
    assert pairs == sample_pairs(net, 500, rng2)
    assert len(pairs) == 500
    index = net.graph.component_index()
    assert all(a != b and index[a] == index[b] for a, b in pairs)
    # Each unordered pair once, so no first packet follows a reply from its destination.
    assert len({(min(a, b), max(a, b)) for a, b in pairs}) == 500
    small = Network(line(5), seed=1)
    assert len(sample_pairs(small, 1000, random.Random(1))) == 10


def test_summary_uses_nearest_rank() -> None:
    s = Summary.of([float(x) for x in range(1, 101)])
    assert (s.count, s.mean, s.p50, s.p95, s.max) == (100, 50.5, 50.0, 95.0, 100.0)
    assert math.isnan(Summary.of([]).mean)


def test_local_sends_through_the_network_reach_the_application() -> None:
    net = Network(grid(3, 3), seed=11)
    converge(net)
    got: list[tuple[int, bytes]] = []
    net.on_deliver = lambda node, d: got.append((node, d.payload))
    net.local_input(0, LocalSend(destination_key=net.nodes[8].key, payload=b"hi"))
    net.run_until(net.now + 5)
    assert got == [(8, b"hi")]


def test_control_traffic_is_bootstraps_and_announcements() -> None:
    net = Network(line(5), seed=12)
    kinds: set[type] = set()
    net.on_send = lambda node, link, frame: kinds.add(type(frame))
    converge(net)
    assert kinds == {Bootstrap, TreeAnnouncement}
    assert net.stats.control_bytes > 0 and net.stats.traffic_bytes == 0


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        SimOptions(scenario="meteor")
    with pytest.raises(ValueError):
        LinkModel(loss=2.0)
    run = Run(line(3), SimOptions())
    assert dataclasses.asdict(run.options)["scenario"] == "cold"
