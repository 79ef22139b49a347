"""`LogPort` over `hyperlog.Log`: converts wire messages to proofs and back.

The log does the cryptography: `Log.create_proof` builds the answer to a peer's
request and `Log.apply_proofs` verifies a group of proofs against what the log trusts
and stores the valid ones in one transaction (group commit). This module only maps
`wire` shapes to `hyperlog.proof` shapes and adds the fork-conflict check: when a
peer's Sync names another tree hash than ours for the same fork and length, or its
proof for *our* fork does not verify, we ask it for its whole signed tree up to a
length both of us hold (an upgrade from 0) and, if that verifies under the log's
key with other nodes than ours at that length, the two heads are a proven
equivocation (`ForkConflictError` carrying both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from hyperlog import flat_tree, wire
from hyperlog.bitfield import PAGE_BITS, Bitfield
from hyperlog.crypto import TreeNode, leaf_node, parent_node, tree_hash
from hyperlog.errors import (
    BlockNotAvailableError,
    ForkConflictError,
    HyperlogError,
    InvalidProofError,
    InvalidRequestError,
)
from hyperlog.log import AppendEvent, Log, LogEvent, ProofResult, TruncateEvent
from hyperlog.merkle import MerkleTree
from hyperlog.proof import (
    BlockProof,
    BlockRequest,
    HashProof,
    HashRequest,
    Proof,
    ProofRequest,
    SeekProof,
    SeekRequest,
    UpgradeProof,
    UpgradeRequest,
    missing_nodes,
    missing_nodes_candidates,
    verify_proof,
)
from hyperlog.replication.port import Applied
from hyperlog.replication.ranges import range_leaves_match

#: Stored tree-node indices a reader remembers to skip storage probes (~3 MiB).
MAX_KNOWN_NODES = 65536
#: Tree hashes of earlier lengths remembered (`tree_hash_at`), a few bytes each.
MAX_TREE_HASHES = 64
#: Tree level of a span of one bitfield page (PAGE_BITS blocks).
PAGE_LEVEL = PAGE_BITS.bit_length() - 1


@dataclass(frozen=True, slots=True)
class SignedHead:
    """One signed statement about the log (what a fork conflict carries, twice)."""

    fork: int
    length: int
    tree_hash: bytes
    signature: bytes | None


def _nodes_in(nodes: Sequence[wire.Node]) -> tuple[TreeNode, ...]:
    return tuple(TreeNode(n.index, n.size, n.hash) for n in nodes)


def _nodes_out(nodes: Sequence[TreeNode]) -> tuple[wire.Node, ...]:
    return tuple(wire.Node(n.index, n.size, n.hash) for n in nodes)


def to_proof_request(r: wire.Request) -> ProofRequest:
    return ProofRequest(
        r.fork,
        block=None if r.block is None else BlockRequest(r.block.index, r.block.nodes),
        hash=None if r.hash is None else HashRequest(r.hash.index, r.hash.nodes),
        seek=None if r.seek is None else SeekRequest(r.seek.bytes, r.seek.padding),
        upgrade=None if r.upgrade is None else UpgradeRequest(r.upgrade.start, r.upgrade.length),
        manifest=r.manifest,
    )


def to_data(p: Proof, channel: int = 0, request_id: int = 0) -> wire.Data:
    b, h, s, u = p.block, p.hash, p.seek, p.upgrade
    return wire.Data(
        channel,
        request_id,
        p.fork,
        None if b is None else wire.DataBlock(b.index, b.value, _nodes_out(b.nodes)),
        None if h is None else wire.DataHash(h.index, _nodes_out(h.nodes)),
        None if s is None else wire.DataSeek(s.bytes, _nodes_out(s.nodes)),
        None
        if u is None
        else wire.DataUpgrade(
            u.start, u.length, _nodes_out(u.nodes), _nodes_out(u.additional_nodes), u.signature
        ),
        p.manifest,
    )


def to_proof(d: wire.Data) -> Proof:
    b, h, s, u = d.block, d.hash, d.seek, d.upgrade
    return Proof(
        d.fork,
        block=None if b is None else BlockProof(b.index, b.value, _nodes_in(b.nodes)),
        hash=None if h is None else HashProof(h.index, _nodes_in(h.nodes)),
        seek=None if s is None else SeekProof(s.bytes, _nodes_in(s.nodes)),
        upgrade=None
        if u is None
        else UpgradeProof(
            u.start, u.length, _nodes_in(u.nodes), _nodes_in(u.additional_nodes), u.signature
        ),
        manifest=d.manifest,
    )


def held_level(bits: Bitfield, block: int) -> int | None:
    """Return the smallest L such that the aligned span of 2**L blocks around `block`
    holds a set bit of `bits` (0 if `block` is set), or None if no bit is set at all.

    One page as one integer (nearest set bits on either side) instead of one
    `first_set` per tree level; spans of whole pages use `first_set` per level.
    """
    page, off = divmod(block, PAGE_BITS)
    data = int.from_bytes(bits.page_bytes(page), "little")
    if data:
        if (data >> off) & 1:
            return 0
        level = PAGE_LEVEL
        below = data & ((1 << off) - 1)
        if below:
            level = (off ^ (below.bit_length() - 1)).bit_length()
        above = data >> off
        if above:
            level = min(level, (off ^ (off + (above & -above).bit_length() - 1)).bit_length())
        return level
    # Bounded: one step per level above a page, at most 64 levels.
    for level in range(PAGE_LEVEL + 1, 64):
        lo = (block >> level) << level
        first = bits.first_set(lo)
        if first is not None and first < lo + (1 << level):
            return level
        if first is None and lo == 0:
            return None
    return None


class LogAdapter:
    """Adapts a `hyperlog.Log` to the replication engine's `LogPort`."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.on_local_change: Callable[[int], None] | None = None
        self.on_want: Callable[[int], None] | None = None
        self._length = log.length
        # Tree nodes we know are stored (our own verified proofs stored them, or a
        # probe found them): saves a storage probe per uncle count. Forgotten on any
        # truncation (the only way a stored node goes away) and when full.
        self._known_nodes: set[int] = set()
        # (fork, length) -> tree hash at that earlier length (`tree_hash_at`).
        self._tree_hashes: dict[tuple[int, int], bytes] = {}
        self._remove = log.add_listener(self._on_event)
        self._remove_want = log.add_want_listener(self._on_want)

    def _on_want(self, index: int) -> None:
        if self.on_want is not None:
            self.on_want(index)

    def waiting(self, index: int) -> bool:
        """Whether a `Log.get` still waits for block `index` (`WaitingView`).

        `Log.get` tells its want listeners when it starts waiting, never when it
        gives up (its timeout, a cancellation): `Log.waiting` says whether it still does.
        """
        return self.log.waiting(index)

    def _on_event(self, event: LogEvent) -> None:
        if isinstance(event, TruncateEvent):
            self._known_nodes.clear()
            self._tree_hashes.clear()
        # Only local writes need announcing; verified proofs reach the engine directly.
        old, self._length = self._length, self.log.length
        if not self.log.writable or self.on_local_change is None:
            return
        if isinstance(event, AppendEvent | TruncateEvent):
            self.on_local_change(old)

    # LogView
    @property
    def key(self) -> bytes:
        return self.log.key

    @property
    def discovery_key(self) -> bytes:
        return self.log.discovery_key

    @property
    def length(self) -> int:
        return self.log.length

    @property
    def fork(self) -> int:
        return self.log.fork

    @property
    def byte_length(self) -> int:
        return self.log.byte_length

    def has(self, index: int) -> bool:
        return self.log.has(index)

    def contiguous_length(self) -> int:
        return self.log.contiguous_length

    def have_bits(self, start: int, count: int) -> bytes:
        return self.log.have_bits(start, count)

    def count_held(self, start: int, end: int) -> int:
        return self.log.bitfield.count_range(start, min(end, self.log.length))

    def missing_nodes(self, index: int) -> int:
        return self.missing_tree_nodes(2 * index)

    def missing_tree_nodes(self, node: int) -> int:
        # `Log.missing_nodes` probes storage once per level (~8 queries for a sparse
        # get). Guess instead from the in-memory bitfield (one page as one integer, see
        # `held_level`): the lowest ancestor whose span holds a block we have is stored
        # (every verified block stored its path). Confirm the guess with a probe; asking
        # for more uncles than needed is harmless, fewer would fail verification (and
        # drop the peer), so fall back to the exact count when the guess is wrong.
        path = missing_nodes_candidates(node, self.log.length)
        if not path:
            return 0
        level = held_level(self.log.bitfield, flat_tree.left_span(node) // 2)
        if level is None:
            return len(path) - 1
        k = max(1, level - flat_tree.depth(node))
        if k >= len(path):
            return len(path) - 1
        # The node just below is usually stored too: it was sent as an uncle when the
        # first block of the other half was verified. One uncle less to ask for.
        if self._has_node(path[k - 1]):
            return k - 1
        if k == len(path) - 1 or self._has_node(path[k]):
            return k
        return missing_nodes(node, self.log.length, self._has_node)

    def tree_node_size(self, node: int) -> int | None:
        n = self.log._get_node(node)
        return None if n is None else n.size

    def _has_node(self, index: int) -> bool:
        if index in self._known_nodes:
            return True
        if self.log._get_node(index) is None:
            return False
        self._remember_nodes((index,))
        return True

    def _remember_nodes(self, indices: Sequence[int]) -> None:
        if len(self._known_nodes) + len(indices) > MAX_KNOWN_NODES:
            self._known_nodes.clear()
        self._known_nodes.update(indices)

    def _remember_stored(
        self, datas: Sequence[wire.Data], results: Sequence[Applied | HyperlogError]
    ) -> None:
        """Note the tree nodes that the verified block proofs of a group stored."""
        if any(not isinstance(r, Applied) or r.truncated_to is not None for r in results):
            return  # a failure or a fork change in the group: take no shortcut
        parent = flat_tree.parent
        for d in datas:
            b = d.block
            if b is None or not b.nodes:
                continue
            stored = [n.index for n in b.nodes]
            node = 2 * b.index
            for _ in b.nodes:
                node = parent(node)
                stored.append(node)
            self._remember_nodes(stored)

    def needs_manifest(self) -> bool:
        return self.log.manifest is None

    def head(self) -> SignedHead:
        return SignedHead(self.log.fork, self.log.length, self.log.tree_hash(), self.log.signature)

    def tree_hash_at(self, length: int) -> bytes | None:
        """`TreeHashView`: the tree hash at the current length (cached by the tree),
        or at an earlier one from the stored nodes that were its roots.

        An earlier length costs one storage read per root (at most 64), so it is
        remembered: a peer behind us syncs at the same few lengths.
        """
        log = self.log
        if length == log.length:
            return log.tree_hash() if length else None
        if not 0 < length < log.length:
            return None
        key = (log.fork, length)
        found = self._tree_hashes.get(key)
        if found is None:
            roots = self._nodes_at(length)
            if roots is None:
                return None
            if len(self._tree_hashes) >= MAX_TREE_HASHES:
                self._tree_hashes.clear()
            found = self._tree_hashes[key] = tree_hash(roots)
        return found

    def _nodes_at(self, length: int) -> list[TreeNode] | None:
        """Our roots at `length` (at most our length): the tree's own at the current
        length, stored nodes (verified when they were stored) at an earlier one;
        None if one of those is not stored (a sparse copy)."""
        if length == self.log.length:
            return self.log.roots
        roots = []
        for index in flat_tree.full_roots(2 * length):
            node = self.log._get_node(index)
            if node is None:
                return None
            roots.append(node)
        return roots

    # LogPort
    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        try:
            if isinstance(request, wire.RangeRequest):
                return await self._serve_range(request)
            proof = self.log.create_proof(to_proof_request(request))
        except (BlockNotAvailableError, InvalidRequestError):
            return None
        return to_data(proof, request.channel, request.id)

    async def _serve_range(self, r: wire.RangeRequest) -> wire.RangeData:
        first = flat_tree.left_span(r.node) // 2
        end = flat_tree.right_span(r.node) // 2 + 1
        if self.log.fork != r.fork:
            raise BlockNotAvailableError(f"range asked on fork {r.fork}, the log is at another")
        # Read the blocks first (a worker thread: the loop runs meanwhile), then build
        # the proof without awaiting, under the view the blocks were read under. A
        # truncation (the only way a held block changes) always moves the fork, so an
        # unchanged fork means the values and the proof are of one history. The other
        # order sent a new fork's values under the old fork's proof when the writer
        # truncated and appended during the read, and the reader dropped us.
        values = [v async for v in self.log.iter_blocks(first, end)]
        if len(values) != end - first:
            raise BlockNotAvailableError("range not held")
        if self.log.fork != r.fork:
            raise BlockNotAvailableError("the log moved to another fork while serving a range")
        proof = self.log.create_proof(ProofRequest(r.fork, hash=HashRequest(r.node, r.nodes)))
        assert proof.hash is not None
        # Like `create_proof`'s node reads, on the loop: 64 small reads (~0.4 ms) cost
        # less than one more worker-thread round trip per range on a busy machine.
        leaves = self._leaf_nodes(first, end) if r.leaves else ()
        return wire.RangeData(
            r.channel, r.id, r.fork, r.node, tuple(values), _nodes_out(proof.hash.nodes), leaves
        )

    def _leaf_nodes(self, first: int, end: int) -> tuple[wire.Node, ...]:
        # Blocks over 4 KiB store their whole leaf hash: one small read each, no hashing.
        out = []
        for i in range(first, end):
            n = self.log._get_node(2 * i)
            if n is None:
                raise BlockNotAvailableError(f"leaf of block {i} not held")
            out.append(wire.Node(n.index, n.size, n.hash))
        return tuple(out)

    async def apply(self, data: wire.Data) -> Applied:
        (result,) = await self.apply_many([data])
        if isinstance(result, HyperlogError):
            raise result
        return result

    async def apply_many(self, datas: Sequence[wire.Data]) -> list[Applied | HyperlogError]:
        results = self._results(await self.log.apply_proofs([to_proof(d) for d in datas]))
        self._remember_stored(datas, results)
        return results

    @staticmethod
    def _results(results: Sequence[ProofResult | HyperlogError]) -> list[Applied | HyperlogError]:
        out: list[Applied | HyperlogError] = []
        for r in results:
            if isinstance(r, HyperlogError):
                out.append(r)
            else:
                out.append(Applied(r.block, r.block_size, r.upgraded, r.truncated_to))
        return out

    async def apply_range(self, data: wire.RangeData, first: int) -> list[Applied | HyperlogError]:
        # `ranges.range_proofs` with TreeNodes built once and shared by the proofs
        # (no wire.Node round trip) and minimal uncles: the hot path of a download.
        depth = flat_tree.depth(data.node)
        nodes: dict[int, TreeNode] = {}
        if data.leaves:
            # The peer's leaves (asked for with big blocks; the scheduler checked their
            # indices and sizes): the log hashes every value when it verifies its block
            # proof, so a wrong leaf fails like a wrong uncle. One hash per block.
            if not range_leaves_match(data, first, asked=True):
                raise InvalidProofError("range data: leaves are not the blocks' leaf nodes")
            level = [TreeNode(n.index, n.size, n.hash) for n in data.leaves]
        else:
            level = [leaf_node(first + k, v) for k, v in enumerate(data.values)]
        for n in level:
            nodes[n.index] = n
        for _ in range(depth):
            up = []
            for a, b in zip(level[0::2], level[1::2], strict=True):
                p = parent_node(flat_tree.parent(a.index), a, b)
                up.append(p)
                nodes[p.index] = p
            level = up
        proofs = [Proof(data.fork, hash=HashProof(data.node, _nodes_in(data.proof)))]
        # The log verifies each proof of a group against the state the earlier ones
        # lead to, so a block's uncles only need to reach a node an earlier proof of
        # this range made trusted (its path and uncles): about one uncle per block
        # instead of `depth`. If any proof fails, every later one that relies on it
        # fails too (nothing unverified is ever trusted).
        sibling, parent = flat_tree.sibling, flat_tree.parent
        known = {data.node}
        for k, v in enumerate(data.values):
            idx = 2 * (first + k)
            uncles = []
            for _ in range(depth):
                if idx in known:
                    break
                known.add(idx)
                sib = nodes[sibling(idx)]
                uncles.append(sib)
                known.add(sib.index)
                idx = parent(idx)
            proofs.append(Proof(data.fork, block=BlockProof(first + k, v, tuple(uncles))))
        return self._results(await self.log.apply_proofs(proofs))

    def check_conflict(self, data: wire.Data) -> ForkConflictError | None:
        """Verify a peer's whole signed tree (an upgrade from 0 to `at`) on its own,
        and compare its roots at `at` with our nodes there.

        The proof rebuilds the peer's roots at `at` before any additional nodes take
        them to its head, so all of them are covered by its signature, whatever its
        length: a node of ours at one of those indices with another hash means two
        signed histories of one fork, however long each is.

        Returns:
            a `ForkConflictError` (both signed heads) if they differ; None if they
            agree or cannot be compared (our fork moved on, we are shorter than `at`
            now, or a node of ours there is not stored).

        Raises:
            InvalidProofError: the peer's tree does not verify either.
        """
        up = data.upgrade
        if up is None or up.start != 0:
            raise InvalidProofError("a conflict check needs an upgrade from 0")
        verifier = self.log.verifier
        batch = verify_proof(
            MerkleTree(fork=data.fork),
            to_proof(data),
            verifier if verifier is not None else self.log.key,
            lambda i: None,
        )
        at = up.length
        if batch.fork != self.log.fork or at > self.log.length:
            return None
        mine = self._nodes_at(at)
        if mine is None:
            return None
        theirs = {n.index: n for n in batch.nodes}
        if all(
            (t := theirs.get(n.index)) is not None and (t.hash, t.size) == (n.hash, n.size)
            for n in mine
        ):
            return None
        ours = self.head()
        remote = SignedHead(batch.fork, batch.length, batch.tree_hash, batch.signature)
        if (ours.length, remote.length) == (at, at):
            what = f"two signed trees for fork {ours.fork} at length {at}"
        else:
            what = (
                f"two signed histories for fork {ours.fork}: the peer's (length "
                f"{remote.length}) and ours (length {ours.length}) differ within "
                f"the first {at} blocks"
            )
        return ForkConflictError(
            f"{what} (a writer restored from an older copy and appended to, or one key "
            "writing in two places); replication of this log is stopped",
            local=ours,
            remote=remote,
        )

    def close(self) -> None:
        self._remove()
        self._remove_want()
