"""Group commit of replicated proofs: verify a batch of proofs, then store it as one write.

`Log.apply_proofs` (hyperlog/log.py) builds a `_Group` under the log's write lock. The
group verifies each proof against the state the earlier ones lead to (an overlay of the
nodes they proved over the stored tree), collects blocks, nodes, bitfield bits, the new
head and the events, writes them in **one** storage transaction (`commit`), and only
then moves the log's in-memory head and bitfield forward and emits the events: the
log's two-phase rule (see the `hyperlog.log` docstring). A proof for a newer fork
truncates to the common prefix in the same transaction.

This module reaches into the `Log`'s private state on purpose: it is the log's own
write path, kept apart only because it is long.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from . import flat_tree
from .constants import THREAD_THRESHOLD_BYTES
from .crypto import TreeNode
from .errors import HyperlogError
from .events import AppendEvent, DownloadEvent, LogEvent, ProofResult, TruncateEvent
from .proof import Proof, VerifiedBatch, verify_proof
from .storage import Head, WriteBatch

if TYPE_CHECKING:
    from .log import Log


class _Group:
    """Verified proofs waiting to be committed together, and the state they lead to."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.tree = log._tree.snapshot()
        self.verifier = log._verifier
        self.overlay: dict[int, TreeNode] = {}
        self.write = WriteBatch()
        self.blocks: dict[int, tuple[bytes, bytes]] = {}
        self.new_bits: list[int] = []
        self.events: list[LogEvent] = []
        self.truncated_to: int | None = None
        self.fork_changed = False
        self.pending = False
        self.bytes = 0

    def verify(self, proof: Proof, seek_padding: int) -> VerifiedBatch | HyperlogError:
        """Verify ``proof`` against the state this group leads to; return the error if not."""
        try:
            return verify_proof(
                self.tree,
                proof,
                self.verifier if self.verifier is not None else self.log.key,
                self.get_node,
                seek_padding=seek_padding,
            )
        except HyperlogError as exc:
            return exc

    def get_node(self, index: int) -> TreeNode | None:
        node = self.overlay.get(index)
        if node is not None:
            return node
        if self.fork_changed or (
            self.truncated_to is not None and flat_tree.right_span(index) >= 2 * self.truncated_to
        ):
            return None
        return self.log._get_node(index)

    def add(self, batch: VerifiedBatch) -> ProofResult:
        truncated_to = None
        if batch.is_fork_change:
            truncated_to = self._common_prefix(batch)
            self.write.truncate = truncated_to
            self.truncated_to = truncated_to
            self.fork_changed = True
            self.events.append(TruncateEvent(truncated_to, batch.fork))
        if batch.verifier is not None and self.verifier is None:
            self.verifier = batch.verifier
            self.write.manifest = batch.verifier.manifest.encode()
        leaf = None
        block_index = None
        if batch.block is not None:
            block_index, value = batch.block
            leaf = 2 * block_index
            for node in batch.nodes:
                if node.index == leaf:
                    self.blocks[block_index] = (value, node.hash)
                    break
            self.new_bits.append(block_index)
            self.bytes += len(value)
            self.events.append(DownloadEvent(block_index, len(value)))
        for node in batch.nodes:
            self.overlay[node.index] = node
        batch.apply_to(self.tree)
        if batch.upgraded:
            self.events.append(AppendEvent(batch.length, batch.byte_length, batch.fork))
        self.pending = True
        return ProofResult(
            block=block_index,
            block_size=0 if batch.block is None else len(batch.block[1]),
            upgraded=batch.upgraded,
            truncated_to=truncated_to,
            hash=batch.hash,
            seek=batch.seek,
        )

    def _common_prefix(self, batch: VerifiedBatch) -> int:
        """Return how many leading blocks the new fork provably shares with ours.

        A new root equal to a stored node covers a shared prefix; the first root that
        differs (or is not stored) ends it. Hypercore bisects further with hash
        requests; we re-download instead (docs/hyperlog-storage.md).
        """
        shared = 0
        limit = min(self.tree.length, batch.length)
        for root in batch.roots:
            if flat_tree.right_span(root.index) // 2 >= limit:
                break
            mine = self.log._get_node(root.index)
            if mine is None or mine.hash != root.hash or mine.size != root.size:
                break
            shared = flat_tree.right_span(root.index) // 2 + 1
        return shared

    async def commit(self) -> None:
        if not self.pending:
            return
        log = self.log
        w = self.write
        blocks = self.blocks
        w.blocks = [(i, value, digest) for i, (value, digest) in sorted(blocks.items())]
        held = set(blocks)
        bits = log._bitfield
        keep_below = w.truncate if w.truncate is not None else log._tree.length + 1

        def stored(block: int) -> bool:
            return block in held or (block < keep_below and bits.get(block))

        def derived(i: int) -> bool:
            # a leaf of a stored block, or the depth-1 parent of two stored blocks
            if not i & 1:
                return i >> 1 in held
            return i & 3 == 1 and stored((i - 1) >> 1) and stored((i + 1) >> 1)

        w.nodes = [n for i, n in sorted(self.overlay.items()) if not derived(i)]
        if w.truncate is not None:
            after = log._bitfield.copy()
            after.clear_from(w.truncate)
            for i in self.new_bits:
                after.set(i)
            w.bitfield = after.take_dirty()
        else:
            w.bitfield = log._bitfield.pages_after_set_bits(self.new_bits)
        t = self.tree
        hint = log._stored_contiguous
        if w.truncate is not None:
            hint = min(hint, w.truncate)
        if t.length != log._tree.length or t.fork != log._tree.fork or w.manifest:
            w.head = Head(t.fork, t.length, t.byte_length, t.tree_hash(), t.signature, hint)
        if self.bytes >= THREAD_THRESHOLD_BYTES or log._storage.write_busy:
            await trio.to_thread.run_sync(log._storage.commit, log._handle, w)
        else:
            log._storage.commit(log._handle, w)
        # Committed: now move memory forward (no checkpoint between here and the end).
        if self.verifier is not None and log._verifier is None:
            log._verifier = self.verifier
        if w.head is not None:
            log._stored_contiguous = w.head.contiguous_length
        if w.truncate is not None:
            log._bitfield.clear_from(w.truncate)
            log._cuts[t.fork] = w.truncate
        for i in self.new_bits:
            log._bitfield.set(i)
        log._bitfield.clear_dirty()
        log._tree = t
        for event in self.events:
            log._emit(event)
        for i in self.new_bits:
            log._wake_block(i)
        if any(not isinstance(e, DownloadEvent) for e in self.events):
            log._wake_length()
        self.pending = False
        if log._storage.maintenance_due:
            # the caller holds the write lock: no append can commit meanwhile; shielded,
            # as the commit above is done and must not be reported `Cancelled`
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(log._storage.maintain)
