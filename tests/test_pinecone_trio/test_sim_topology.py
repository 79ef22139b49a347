"""Topology loading, generators and ground truth of the router simulator."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pinecone_trio.sim.generators import (
    barabasi_albert,
    build_topology,
    erdos_renyi,
    geometric,
    grid,
    random_tree,
)
from pinecone_trio.sim.topology import Graph, load_path_list, parse_path_list

TOPOLOGIES = Path(__file__).resolve().parents[3] / "shared" / "topologies"

#: (file, nodes, links) as the README of the shared topologies lists them.
SHARED_FILES = [
    ("sim.txt", 26, 48),
    ("sim-medium.txt", 91, 125),
    ("line-0050.txt", 50, 49),
    ("rtree-0050.txt", 50, 49),
    ("grid4-0049.txt", 49, 84),
    ("grid4-2025.txt", 2025, 3960),
    ("graph-250.txt", 248, 500),
    ("graph-250-2.txt", 484, 1000),
    ("sim-large.txt", 600, 20000),
    ("freifunk-bielefield.txt", 246, 483),
    ("dn42.txt", 261, 336),
    ("fc00.txt", 598, 1593),
    ("yggdrasil.txt", 2478, 8253),
    ("sim-skitter.txt", 9204, 28959),
]


def test_parse_ignores_self_and_repeated_links_and_comments() -> None:
    g = parse_path_list("# a comment\na b c a\n\nb a a d\n")
    assert g.names == ["a", "b", "c", "d"]
    assert sorted(g.links()) == [(0, 1), (0, 2), (0, 3), (1, 2)]


@pytest.mark.parametrize(("name", "nodes", "links"), SHARED_FILES)
def test_shared_files_match_their_readme(name: str, nodes: int, links: int) -> None:
    path = TOPOLOGIES / name
    if not path.exists():
        pytest.skip("the shared topologies are not beside this checkout")
    g = load_path_list(path)
    assert (g.node_count(), g.link_count()) == (nodes, links)


def test_bfs_and_components() -> None:
    g = parse_path_list("a b c d\nx y\nz")
    assert g.bfs(0) == {0: 0, 1: 1, 2: 2, 3: 3}
    assert [len(c) for c in g.components()] == [4, 2, 1]
    assert g.component_index() == [0, 0, 0, 0, 1, 1, 2]
    g.add_link(3, 4)
    assert g.bfs(0)[5] == 5
    assert g.remove_node(2) == [1, 3]
    assert [len(c) for c in g.components()] == [3, 2, 1]
    assert not g.alive[2]


@pytest.mark.parametrize(
    ("spec", "nodes", "links"),
    [("line:50", 50, 49), ("ring:10", 10, 10), ("grid:10x10", 100, 180), ("tree:40", 40, 39)],
)
def test_regular_generators(spec: str, nodes: int, links: int) -> None:
    g = build_topology(spec, seed=3)
    assert (g.node_count(), g.link_count()) == (nodes, links)
    assert g.is_connected()


def test_grid_distances_are_manhattan() -> None:
    g = grid(5, 7)
    dist = g.bfs(0)
    assert all(dist[r * 7 + c] == r + c for r in range(5) for c in range(7))


@pytest.mark.parametrize("spec", ["tree:200", "er:300:0.02", "geometric:300:0.1", "ba:300:2"])
def test_generators_are_seeded(spec: str) -> None:
    a, b, c = (build_topology(spec, seed=s) for s in (1, 1, 2))
    assert sorted(a.links()) == sorted(b.links())
    assert sorted(a.links()) != sorted(c.links())


def test_random_shapes() -> None:
    rng = random.Random(5)
    assert random_tree(500, rng).is_connected()
    ba = barabasi_albert(1000, 2, rng)
    assert ba.link_count() == 2 + (1000 - 3) * 2
    assert ba.is_connected()
    degrees = sorted(len(s) for s in ba.adj)
    assert degrees[0] >= 1 and degrees[-1] > 10 * degrees[len(degrees) // 2]  # hubs
    er = erdos_renyi(2000, 0.004, rng)
    expected = 0.004 * 2000 * 1999 / 2
    assert abs(er.link_count() - expected) < 0.1 * expected
    geo = geometric(400, 0.1, rng)
    assert geo.link_count() > 0


def test_geometric_links_exactly_the_close_pairs() -> None:
    rng = random.Random(9)
    g = geometric(150, 0.2, random.Random(9))
    points = [(rng.random(), rng.random()) for _ in range(150)]
    expected = {
        (a, b)
        for a in range(150)
        for b in range(a + 1, 150)
        if (points[a][0] - points[b][0]) ** 2 + (points[a][1] - points[b][1]) ** 2 < 0.04
    }
    assert set(g.links()) == expected


@pytest.mark.parametrize("spec", ["grid:3", "line:x", "er:10", "nope:3", "ba:3:5", "line:0"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError):
        build_topology(spec)


def test_cap_degree_keeps_connectivity_where_it_can() -> None:
    # A hub linked to 30 nodes that also form a ring: the hub may keep only 5.
    g = Graph(str(i) for i in range(31))
    for i in range(1, 31):
        g.add_link(0, i)
        g.add_link(i, i % 30 + 1)
    assert g.cap_degree(5) == 25
    assert max(len(s) for s in g.adj) <= 5
    assert g.is_connected()
    star = Graph(str(i) for i in range(11))
    for i in range(1, 11):
        star.add_link(0, i)
    assert star.cap_degree(4) == 6
    assert [len(c) for c in star.components()] == [5] + [1] * 6
