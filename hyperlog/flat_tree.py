"""flat-tree: in-order numbering of the nodes of an infinite binary tree.

Theory of operation
-------------------
Every node of the Merkle tree has one integer index. Leaves get even numbers (block
``i`` is node ``2 * i``), parents odd numbers, by an in-order walk::

    depth 2:         3               11
    depth 1:     1       5       9       13
    depth 0:   0   2   4   6   8   10  12  14

A node's *depth* is the number of trailing 1 bits of its index and its *offset* is its
position within that depth, so ``index(d, o) = (2o + 1) * 2**d - 1``. Everything else is
bit arithmetic on ``b = 2**depth``, the lowest set bit of ``index + 1``: the sibling is
``index ^ 2b``, the parent ``(index & ~2b) | b``, the children ``index -+ b/2`` and the
leaf span ``[index - b + 1, index + b - 1]``.

A log of ``length`` blocks is covered by ``popcount(length)`` perfect subtrees, its *full
roots* (the peaks of a Merkle mountain range), listed left to right by
`full_roots(2 * length)`.

The numbering is the one of mafintosh/flat-tree used by hypercore (docs/hyperlog.md §1).
Python integers never overflow, so unlike the JavaScript version (doubles, exact to
2**53) every function is exact for any non-negative index.
"""

from __future__ import annotations

__all__ = [
    "children",
    "contains",
    "count",
    "count_leaves",
    "depth",
    "full_roots",
    "index",
    "left_child",
    "left_span",
    "offset",
    "parent",
    "right_child",
    "right_span",
    "root_for_leaf",
    "sibling",
    "spans",
    "uncle",
]


def index(depth: int, offset: int) -> int:
    """Return the flat-tree index of the node at ``depth`` and ``offset``."""
    return (((offset << 1) | 1) << depth) - 1


def depth(i: int) -> int:
    """Return the depth of node ``i``: the number of trailing 1 bits (0 for leaves)."""
    return ((i + 1) & -(i + 1)).bit_length() - 1


def offset(i: int) -> int:
    """Return the position of node ``i`` among the nodes of its depth."""
    b = (i + 1) & -(i + 1)
    return (i + 1) // (b << 1)


def parent(i: int) -> int:
    """Return the parent of node ``i``."""
    b = (i + 1) & -(i + 1)
    return (i & ~(b << 1)) | b


def sibling(i: int) -> int:
    """Return the other child of ``i``'s parent."""
    b = (i + 1) & -(i + 1)
    return i ^ (b << 1)


def uncle(i: int) -> int:
    """Return the sibling of ``i``'s parent."""
    return sibling(parent(i))


def children(i: int) -> tuple[int, int] | None:
    """Return ``(left, right)`` children of node ``i``, or None for a leaf."""
    half = ((i + 1) & -(i + 1)) >> 1
    if half == 0:
        return None
    return i - half, i + half


def left_child(i: int) -> int | None:
    """Return the left child of ``i``, or None for a leaf."""
    half = ((i + 1) & -(i + 1)) >> 1
    return i - half if half else None


def right_child(i: int) -> int | None:
    """Return the right child of ``i``, or None for a leaf."""
    half = ((i + 1) & -(i + 1)) >> 1
    return i + half if half else None


def left_span(i: int) -> int:
    """Return the index of the leftmost leaf under ``i``."""
    return i - ((i + 1) & -(i + 1)) + 1


def right_span(i: int) -> int:
    """Return the index of the rightmost leaf under ``i``."""
    return i + ((i + 1) & -(i + 1)) - 1


def spans(i: int) -> tuple[int, int]:
    """Return ``(left_span(i), right_span(i))``: the leaf indices ``i`` covers."""
    b = (i + 1) & -(i + 1)
    return i - b + 1, i + b - 1


def count(i: int) -> int:
    """Return how many nodes the subtree rooted at ``i`` has (itself included)."""
    return (((i + 1) & -(i + 1)) << 1) - 1


def count_leaves(i: int) -> int:
    """Return how many leaves (blocks) the subtree rooted at ``i`` covers."""
    return (i + 1) & -(i + 1)


def contains(i: int, node: int) -> bool:
    """Return True if ``node`` lies inside the subtree rooted at ``i`` (``i`` included)."""
    b = (i + 1) & -(i + 1)
    return i - b < node < i + b


def full_roots(head: int) -> list[int]:
    """Return the full roots of a tree whose first missing leaf is ``head``, left to right.

    ``head`` is a leaf index, i.e. ``2 * length`` for a log of ``length`` blocks.

    Raises:
        ValueError: if ``head`` is odd or negative.
    """
    if head & 1 or head < 0:
        raise ValueError(f"full_roots needs an even, non-negative index, got {head}")
    roots: list[int] = []
    leaves = head >> 1
    start = 0  # leaf offset where the next root's subtree begins
    while leaves:
        width = 1 << (leaves.bit_length() - 1)
        roots.append(2 * start + width - 1)
        start += width
        leaves -= width
    return roots


def root_for_leaf(leaf: int, head: int) -> int:
    """Return the full root of the tree ending before ``head`` whose subtree holds ``leaf``.

    Raises:
        ValueError: if ``leaf`` is not a leaf index below ``head``.
    """
    if leaf & 1 or not 0 <= leaf < head:
        raise ValueError(f"leaf {leaf} is not inside a tree of head {head}")
    for root in full_roots(head):
        if root + ((root + 1) & -(root + 1)) > leaf:
            return root
    raise AssertionError("unreachable: the roots cover every leaf below head")
