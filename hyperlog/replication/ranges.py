"""RangeData helpers, shared by the scheduler, the log adapter and test fakes (no trio).

A RangeData answers a RangeRequest with every block of an aligned subtree (at most
`wire.MAX_RANGE_BLOCKS`) and one hash proof of the subtree's root. Here: how many
value bytes one may carry, the shape check of its optional leaves, turning it into
ordinary per-block proofs, and the byte size of a subtree the log already stores.
"""

from __future__ import annotations

from hyperlog import flat_tree, wire
from hyperlog.crypto import leaf_hash, parent_hash
from hyperlog.replication.port import LogView, SizedView

#: Bytes of values one RangeData may carry. Its other parts (at most 64 leaves and
#: `wire.MAX_PROOF_NODES` uncles of ~53 bytes each, msgpack headers) take well under
#: 64 KiB, so the frame stays within `wire.MAX_FRAME_SIZE` (MAX_BLOCK_SIZE + 64 KiB);
#: a bigger RangeData could not be encoded at all.
MAX_RANGE_VALUE_BYTES = wire.MAX_BLOCK_SIZE


def subtree_bytes(view: LogView, node: int) -> int | None:
    """Byte size of the blocks under `node` if the view stores that node."""
    if isinstance(view, SizedView):
        return view.tree_node_size(node)
    return None


def range_leaves_match(msg: wire.RangeData, first: int, *, asked: bool) -> bool:
    """Whether `msg.leaves` were asked for and are the leaf indices and sizes of its
    values (their hashes are checked by verification, like any uncle)."""
    if not asked or len(msg.leaves) != len(msg.values):
        return False
    index = 2 * first
    for leaf, value in zip(msg.leaves, msg.values, strict=True):
        if leaf.index != index or leaf.size != len(value):
            return False
        index += 2
    return True


def range_proofs(channel: int, msg: wire.RangeData, first: int) -> list[wire.Data]:
    """Turn a RangeData into ordinary proofs the log verifies one by one.

    First the hash proof of the subtree root `msg.node` (verified against what we
    trust, it makes the root trusted), then one block proof per value whose uncles are
    recomputed here from the other values (or from `msg.leaves`, which the scheduler
    checked for shape). A wrong value or leaf changes the recomputed root, so its proof
    (and every proof of the range) fails verification: nothing is trusted because it
    came in a range.
    """
    depth = flat_tree.depth(msg.node)
    level: list[wire.Node] = []
    nodes: dict[int, wire.Node] = {}
    for k, v in enumerate(msg.values):
        n = msg.leaves[k] if msg.leaves else wire.Node(2 * (first + k), len(v), leaf_hash(v))
        level.append(n)
        nodes[n.index] = n
    for _ in range(depth):
        up = []
        for a, b in zip(level[0::2], level[1::2], strict=True):
            size = a.size + b.size
            p = wire.Node(flat_tree.parent(a.index), size, parent_hash(a.hash, b.hash, size))
            up.append(p)
            nodes[p.index] = p
        level = up
    out = [wire.Data(channel, msg.id, msg.fork, hash=wire.DataHash(msg.node, msg.proof))]
    for k, v in enumerate(msg.values):
        idx = 2 * (first + k)
        uncles = []
        for _ in range(depth):
            uncles.append(nodes[flat_tree.sibling(idx)])
            idx = flat_tree.parent(idx)
        block = wire.DataBlock(first + k, v, tuple(uncles))
        out.append(wire.Data(channel, msg.id, msg.fork, block=block))
    return out
