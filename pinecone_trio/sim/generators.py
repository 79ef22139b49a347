"""Seeded graph generators, and the one parser for ``--topology`` specs.

A spec is either a path to a path-list file or a generator name with parameters:

| spec | graph |
| --- | --- |
| ``line:N`` | a path of N nodes |
| ``ring:N`` | a cycle of N nodes |
| ``grid:RxC`` | an R by C four-neighbour grid |
| ``tree:N`` | a random recursive tree: node i links to a uniform earlier node |
| ``er:N:P`` | Erdős-Rényi G(N, P) (may be disconnected) |
| ``geometric:N:R`` | N uniform points in the unit square, linked when closer than R |
| ``ba:N:M`` | Barabási-Albert preferential attachment, M links per new node |

Every random generator takes a `random.Random`, so the same seed gives the same graph.
Random graphs may be disconnected; the simulator measures each component on its own.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Final

from .topology import MAX_NODES, Graph, load_path_list

#: Names of the generators `build_topology` understands.
GENERATORS: Final = ("line", "ring", "grid", "tree", "er", "geometric", "ba")


def _graph(n: int) -> Graph:
    if not 1 <= n <= MAX_NODES:
        raise ValueError(f"a generated graph has 1..{MAX_NODES} nodes, not {n}")
    return Graph(str(i) for i in range(n))


def line(n: int) -> Graph:
    """A path ``0 - 1 - ... - n-1``."""
    g = _graph(n)
    for i in range(n - 1):
        g.add_link(i, i + 1)
    return g


def ring(n: int) -> Graph:
    """A cycle of `n` nodes (a line when ``n < 3``)."""
    g = line(n)
    if n >= 3:
        g.add_link(n - 1, 0)
    return g


def grid(rows: int, cols: int) -> Graph:
    """A `rows` by `cols` grid, each node linked to its four neighbours."""
    if rows < 1 or cols < 1:
        raise ValueError("a grid needs at least one row and one column")
    g = _graph(rows * cols)
    for r in range(rows):
        for c in range(cols):
            i = r * cols + c
            if c + 1 < cols:
                g.add_link(i, i + 1)
            if r + 1 < rows:
                g.add_link(i, i + cols)
    return g


def random_tree(n: int, rng: random.Random) -> Graph:
    """A random recursive tree: each node ``i > 0`` links to a uniform node below it."""
    g = _graph(n)
    for i in range(1, n):
        g.add_link(i, rng.randrange(i))
    return g


def erdos_renyi(n: int, p: float, rng: random.Random) -> Graph:
    """G(n, p): each of the n(n-1)/2 links exists independently with probability `p`.

    Uses geometric skipping (Batagelj and Brandes), so the cost is the number of links.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError("p is a probability")
    g = _graph(n)
    if p <= 0.0:
        return g
    if p >= 1.0:
        for a in range(n):
            for b in range(a + 1, n):
                g.add_link(a, b)
        return g
    log_q = math.log(1.0 - p)
    v, w = 1, -1
    while v < n:
        w += 1 + int(math.log(1.0 - rng.random()) / log_q)
        while w >= v and v < n:
            w -= v
            v += 1
        if v < n:
            g.add_link(v, w)
    return g


def geometric(n: int, radius: float, rng: random.Random) -> Graph:
    """A random geometric graph: `n` uniform points in the unit square, linked when
    their Euclidean distance is below `radius` (a model of radio meshes)."""
    if radius <= 0.0:
        raise ValueError("the radius must be positive")
    g = _graph(n)
    points = [(rng.random(), rng.random()) for _ in range(n)]
    cells = max(1, int(1.0 / radius))
    size = 1.0 / cells
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, (x, y) in enumerate(points):
        key = (min(int(x / size), cells - 1), min(int(y / size), cells - 1))
        buckets.setdefault(key, []).append(i)
    r2 = radius * radius
    for (cx, cy), members in buckets.items():
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                others = buckets.get((cx + dx, cy + dy))
                if others is None:
                    continue
                for a in members:
                    ax, ay = points[a]
                    for b in others:
                        if a < b:
                            bx, by = points[b]
                            if (ax - bx) ** 2 + (ay - by) ** 2 < r2:
                                g.add_link(a, b)
    return g


def barabasi_albert(n: int, m: int, rng: random.Random) -> Graph:
    """Barabási-Albert: start from a star on ``m + 1`` nodes, then each new node links
    to `m` distinct existing nodes chosen with probability proportional to degree."""
    if m < 1:
        raise ValueError("m must be at least 1")
    if n <= m:
        raise ValueError("a Barabási-Albert graph needs more than m nodes")
    g = _graph(n)
    ends: list[int] = []  # every link contributes both ends: a degree-weighted urn
    for i in range(1, m + 1):
        g.add_link(0, i)
        ends += (0, i)
    for new in range(m + 1, n):
        chosen: set[int] = set()
        while len(chosen) < m:
            chosen.add(ends[rng.randrange(len(ends))])
        for old in sorted(chosen):
            g.add_link(new, old)
            ends += (new, old)
    return g


def _ints(parts: list[str], count: int, spec: str) -> list[int]:
    if len(parts) != count:
        raise ValueError(f"bad topology spec {spec!r}")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"bad topology spec {spec!r}") from None


def build_topology(spec: str, seed: int = 0) -> Graph:
    """Build the graph a spec names: a generator (see the module docs) or a file path.

    Raises:
        ValueError: if the spec is malformed or names no generator and no file.
        OSError: if a topology file cannot be read.
    """
    name, _, rest = spec.partition(":")
    if name not in GENERATORS or not rest:
        if Path(spec).is_file():
            return load_path_list(spec)
        raise ValueError(
            f"{spec!r} is neither a topology file nor one of the generators {', '.join(GENERATORS)}"
        )
    rng = random.Random(f"topology:{spec}:{seed}")
    parts = rest.split(":")
    builders: dict[str, Callable[[], Graph]] = {
        "line": lambda: line(_ints(parts, 1, spec)[0]),
        "ring": lambda: ring(_ints(parts, 1, spec)[0]),
        "grid": lambda: grid(*_ints(rest.lower().split("x"), 2, spec)),
        "tree": lambda: random_tree(_ints(parts, 1, spec)[0], rng),
        "er": lambda: erdos_renyi(_ints(parts[:1], 1, spec)[0], _float(parts, spec), rng),
        "geometric": lambda: geometric(_ints(parts[:1], 1, spec)[0], _float(parts, spec), rng),
        "ba": lambda: _ba(_ints(parts, 2, spec), rng),
    }
    return builders[name]()


def _ba(values: list[int], rng: random.Random) -> Graph:
    return barabasi_albert(values[0], values[1], rng)


def _float(parts: list[str], spec: str) -> float:
    if len(parts) != 2:
        raise ValueError(f"bad topology spec {spec!r}")
    try:
        value = float(parts[1])
    except ValueError:
        raise ValueError(f"bad topology spec {spec!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"bad topology spec {spec!r}")
    return value
