"""Graphs for the router simulator: loading, ground truth and degree limits.

A `Graph` is an undirected simple graph over nodes numbered ``0 .. n-1``, each with a
display name. It is the *live* link graph of a simulation: scenarios add and remove
links and nodes while a simulation runs, and every ground-truth question (which
component is a node in, how many hops apart are two nodes) is answered from the graph
as it is at that moment, by breadth-first search.

Topology files (``../shared/topologies/*.txt``, the pineconesim graph format) hold one
path per line: node names separated by whitespace, each consecutive pair a link.
Self-links and repeated links are ignored. Blank lines and lines starting with ``#``
are skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

#: The largest topology file we read, so a wrong path cannot eat the memory.
MAX_TOPOLOGY_FILE_BYTES: Final = 64 * 1024 * 1024
#: The largest number of nodes a simulation may have.
MAX_NODES: Final = 200_000
#: A router has 254 switch ports and port 0 is the router itself (research §16).
MAX_PEERS_PER_NODE: Final = 253


class Graph:
    """An undirected simple graph with named nodes; links can be added and removed.

    Removed nodes keep their number (so metrics and engines can refer to them) but are
    marked dead and have no links.
    """

    __slots__ = ("_components", "adj", "alive", "names", "version")

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: list[str] = list(names)
        self.adj: list[set[int]] = [set() for _ in self.names]
        self.alive: list[bool] = [True] * len(self.names)
        #: Incremented by every change, so callers can cache ground truth.
        self.version = 0
        self._components: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"<Graph nodes={self.node_count()} links={self.link_count()}>"

    def add_node(self, name: str | None = None) -> int:
        """Add an isolated live node and return its number."""
        if len(self.names) >= MAX_NODES:
            raise ValueError(f"a simulation holds at most {MAX_NODES} nodes")
        index = len(self.names)
        self.names.append(name if name is not None else str(index))
        self.adj.append(set())
        self.alive.append(True)
        self.version += 1
        return index

    def add_link(self, a: int, b: int) -> bool:
        """Link `a` and `b`; return whether the link is new (self-links are ignored)."""
        if a == b or b in self.adj[a]:
            return False
        if not (self.alive[a] and self.alive[b]):
            raise ValueError("cannot link a removed node")
        self.adj[a].add(b)
        self.adj[b].add(a)
        self.version += 1
        return True

    def remove_link(self, a: int, b: int) -> bool:
        """Unlink `a` and `b`; return whether there was a link."""
        if b not in self.adj[a]:
            return False
        self.adj[a].discard(b)
        self.adj[b].discard(a)
        self.version += 1
        return True

    def remove_node(self, a: int) -> list[int]:
        """Remove every link of `a`, mark it dead and return its former neighbours."""
        former = sorted(self.adj[a])
        for b in former:
            self.adj[b].discard(a)
        self.adj[a].clear()
        self.alive[a] = False
        self.version += 1
        return former

    def has_link(self, a: int, b: int) -> bool:
        return b in self.adj[a]

    def node_count(self) -> int:
        return sum(self.alive)

    def link_count(self) -> int:
        return sum(len(s) for s in self.adj) // 2

    def links(self) -> Iterator[tuple[int, int]]:
        """Every link once, as ``(a, b)`` with ``a < b``, in a deterministic order."""
        for a, neighbours in enumerate(self.adj):
            for b in sorted(neighbours):
                if a < b:
                    yield a, b

    def live_nodes(self) -> list[int]:
        return [i for i, ok in enumerate(self.alive) if ok]

    def copy(self) -> Graph:
        other = Graph(self.names)
        other.adj = [set(s) for s in self.adj]
        other.alive = list(self.alive)
        return other

    # -- ground truth -------------------------------------------------------------

    def bfs(self, source: int) -> dict[int, int]:
        """Hop distances from `source` to every node of its component."""
        dist = {source: 0}
        queue = deque([source])
        adj = self.adj
        while queue:
            a = queue.popleft()
            d = dist[a] + 1
            for b in adj[a]:
                if b not in dist:
                    dist[b] = d
                    queue.append(b)
        return dist

    def components(self) -> list[list[int]]:
        """The connected components of the live nodes, each sorted, largest first.

        The result is cached until the graph changes: do not modify it.
        """
        cached = self._components
        if cached is not None and cached[0] == self.version:
            return cached[1]
        seen = [False] * len(self.names)
        result: list[list[int]] = []
        for start in self.live_nodes():
            if seen[start]:
                continue
            seen[start] = True
            members = [start]
            queue = deque([start])
            while queue:
                a = queue.popleft()
                for b in self.adj[a]:
                    if not seen[b]:
                        seen[b] = True
                        members.append(b)
                        queue.append(b)
            members.sort()
            result.append(members)
        result.sort(key=lambda c: (-len(c), c[0]))
        self._components = (self.version, result)
        return result

    def component_index(self) -> list[int]:
        """For each node, the index of its component in `components()` (-1 if dead)."""
        index = [-1] * len(self.names)
        for i, members in enumerate(self.components()):
            for a in members:
                index[a] = i
        return index

    def is_connected(self) -> bool:
        return len(self.components()) <= 1

    def cap_degree(self, limit: int = MAX_PEERS_PER_NODE) -> int:
        """Drop links until no node has more than `limit`; return how many were dropped.

        A router cannot peer with more than 253 others (one switch port each), and a
        few hubs of the Internet samples have hundreds or thousands of links. Links
        off a breadth-first spanning forest go first (those to the best-connected
        neighbours first), so connectivity survives where it can; only then do forest
        links go, those to leaves first (each such drop isolates one node).
        """
        if limit < 1:
            raise ValueError("the degree limit must be positive")
        if all(len(s) <= limit for s in self.adj):
            return 0
        tree: set[tuple[int, int]] = set()
        seen = [False] * len(self.adj)
        order = sorted(range(len(self.adj)), key=lambda i: (len(self.adj[i]), i))
        for root in order:
            if seen[root]:
                continue
            seen[root] = True
            queue = deque([root])
            while queue:
                a = queue.popleft()
                for b in sorted(self.adj[a], key=lambda x: (len(self.adj[x]), x)):
                    if not seen[b]:
                        seen[b] = True
                        tree.add((min(a, b), max(a, b)))
                        queue.append(b)

        def cost(a: int, b: int) -> tuple[int, int, int]:
            if (min(a, b), max(a, b)) in tree:
                return (1, len(self.adj[b]), b)
            return (0, -len(self.adj[b]), b)

        dropped = 0
        for a in sorted(range(len(self.adj)), key=lambda i: (-len(self.adj[i]), i)):
            excess = len(self.adj[a]) - limit
            if excess <= 0:
                continue
            victims = sorted(self.adj[a], key=lambda b: cost(a, b))
            for b in victims[:excess]:
                self.remove_link(a, b)
                dropped += 1
        return dropped


def parse_path_list(text: str) -> Graph:
    """Build a graph from path-list text (one path of linked node names per line).

    Raises:
        ValueError: if the text names more than `MAX_NODES` nodes.
    """
    graph = Graph()
    index: dict[str, int] = {}

    def node(name: str) -> int:
        found = index.get(name)
        if found is None:
            found = index[name] = graph.add_node(name)
        return found

    for line in text.splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        previous = node(tokens[0])
        for name in tokens[1:]:
            current = node(name)
            graph.add_link(previous, current)
            previous = current
    return graph


def load_path_list(path: str | Path) -> Graph:
    """Read a topology file (see `parse_path_list`).

    Raises:
        OSError: if the file cannot be read.
        ValueError: if it is larger than `MAX_TOPOLOGY_FILE_BYTES` or too many nodes.
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_TOPOLOGY_FILE_BYTES:
        raise ValueError(f"{path} is {size} bytes, more than {MAX_TOPOLOGY_FILE_BYTES}")
    return parse_path_list(path.read_text(encoding="utf-8"))
