"""Ground-truth checks of routing state: is the tree a tree, is the snake sorted.

Everything is judged against the live graph at the moment of the check, component by
component (nodes in different components cannot agree on anything):

* **Tree converged** (research §5): in every component, every node's root is the
  component's highest key, with one sequence number for the whole component; the root
  has no parent and empty coordinates; every other node's parent port leads to a live
  neighbour and its coordinates are exactly its parent's coordinates plus the port the
  parent uses towards it. Because coordinates grow by one hop along every parent link,
  this also proves the parent pointers form a spanning tree (a cycle would need
  coordinates longer than themselves).
* **Snake converged** (research §7.8): every node's descending neighbour is its true
  predecessor in the sorted key order of its component, and the lowest key has none.
  Following descending pointers from the highest key then walks the whole component in
  key order, which is what "a converged snake is the sorted key order" means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from .network import Network

#: How many violations a check lists before it stops looking (it still counts).
MAX_LISTED_VIOLATIONS: Final = 10


@final
@dataclass(slots=True)
class Check:
    """The outcome of a check: how many nodes disagree with ground truth, and examples."""

    bad_nodes: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bad_nodes == 0

    def fail(self, message: str) -> None:
        self.bad_nodes += 1
        if len(self.examples) < MAX_LISTED_VIOLATIONS:
            self.examples.append(message)


def check_tree(net: Network) -> Check:
    """Whether every component has converged on one spanning tree (see module docs)."""
    result = Check()
    nodes = net.nodes
    for members in net.components_by_key():
        top = members[-1]
        root_key = nodes[top].key
        root_seq = nodes[top].state.root[1]
        for a in members:
            state = nodes[a].state
            key, seq = state.root
            if key != root_key or seq != root_seq:
                result.fail(f"node {a} follows root {key[:4].hex()}/{seq}")
                continue
            parent_port = state.parent_port
            if a == top:
                if parent_port is not None or state.coords:
                    result.fail(f"root {a} has a parent or coordinates")
                continue
            if parent_port is None:
                result.fail(f"node {a} has no parent")
                continue
            parent = net.node_of_port(a, parent_port)
            if parent is None:
                result.fail(f"node {a}'s parent port {parent_port} is not up")
                continue
            down_port = nodes[parent].port_of[a]
            if state.coords != (*nodes[parent].state.coords, down_port):
                result.fail(f"node {a}'s coordinates do not extend its parent {parent}'s")
    return result


def check_snake(net: Network) -> Check:
    """Whether every descending neighbour is the true predecessor (see module docs)."""
    result = Check()
    nodes = net.nodes
    for members in net.components_by_key():
        previous: bytes | None = None
        for a in members:
            got = nodes[a].state.descending_key
            if got != previous:
                shown = "none" if got is None else got[:4].hex()
                result.fail(f"node {a}'s descending neighbour is {shown}")
            previous = nodes[a].key
    return result


def expected_descending(net: Network) -> dict[int, bytes | None]:
    """Each live node's true predecessor key in its component (None for the lowest)."""
    nodes = net.nodes
    truth: dict[int, bytes | None] = {}
    for members in net.components_by_key():
        previous: bytes | None = None
        for a in members:
            truth[a] = previous
            previous = nodes[a].key
    return truth
