"""The log: a signed, append-only, Merkle-verified sequence of blocks.

Theory of operation
-------------------
A `Log` glues three parts together and owns their consistency:

* the trusted head (`hyperlog.merkle.MerkleTree`: roots, length, byte length, fork,
  signature), kept in memory;
* the "have" bitfield (`hyperlog.bitfield.Bitfield`), kept in memory;
* everything else in a `hyperlog.storage.Storage`: blocks, tree nodes, bitfield pages
  and the signed head.

Every change is two-phase: the pure engine builds a batch from the current head
(append, truncate, or a verified proof), the log writes that batch in **one** storage
transaction, and only then moves the in-memory head and bitfield forward and emits
events. A crash between the two phases loses nothing acknowledged: `append` returns
only after the transaction committed, and on reopen the head is rebuilt from storage
and its signature checked again.

Concurrency: a `Log` belongs to one Trio run. Writers (append, truncate, applying
proofs) take the log's write lock, so batches never interleave; reads need no lock
because the in-memory state only changes between checkpoints, after commits. Small
operations run inline (a thread hop would cost more than a local SQLite read or a
one-block commit); appends above `APPEND_THREAD_THRESHOLD_BYTES`, proof groups above
`THREAD_THRESHOLD_BYTES`, full verification and long scans run in a worker thread so
the event loop keeps serving other tasks.

A `Store` (`open_store`) owns one storage and hands out one `Log` object per key, so
an application, a replicator and a HAMT all share the same state and events.

Modules: this one holds the `Log`; `hyperlog.log_apply` its group commit of replicated
proofs (`apply_proofs`), `hyperlog.snapshot` the `LogSnapshot`, and `hyperlog.store`
the `Store` and `open_store`. All of them stay importable from here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, final

import trio

from . import flat_tree
from .bitfield import Bitfield
from .constants import (
    APPEND_THREAD_THRESHOLD_BYTES,
    EVENT_BUFFER,
    GET_MANY_THREAD_ABOVE,
    MAX_BATCH_BLOCKS,
    MAX_BATCH_BYTES,
    MAX_BLOCK_SIZE,
    MAX_GET_MANY,
    MAX_PROOF_GROUP,
    READ_CHUNK_BLOCKS,
)
from .crypto import Manifest, TreeNode, Verifier, leaf_hash, parent_hash, tree_hash
from .errors import (
    BlockNotAvailableError,
    CorruptStorageError,
    HyperlogError,
    LogChangedError,
    NotWritableError,
)
from .events import (
    AppendEvent,
    AppendResult,
    DownloadEvent,
    LogEvent,
    LogStatistics,
    ProofResult,
    TruncateEvent,
)
from .log_apply import _Group
from .merkle import AppendBatch, MerkleTree, _require_index, _require_int, byte_offset, seek
from .proof import (
    Proof,
    ProofRequest,
    VerifiedBatch,
    create_proof,
    missing_nodes,
    proof_node_indices,
)
from .snapshot import LogSnapshot
from .storage import Head, StoredLog, WriteBatch
from .store import Store, open_store

__all__ = [
    "AppendEvent",
    "AppendResult",
    "DownloadEvent",
    "Log",
    "LogEvent",
    "LogSnapshot",
    "LogStatistics",
    "ProofResult",
    "Store",
    "TruncateEvent",
    "open_store",
]

logger = logging.getLogger(__name__)


def _check_blocks(data: bytes | Sequence[bytes]) -> tuple[list[bytes], int]:
    """Return the blocks of an `Log.append` argument as bytes, and their total size.

    Raises:
        TypeError: if a block is not bytes-like.
        ValueError: if a block or the batch is too big.
    """
    # checked and converted to bytes in place below
    values: list[Any] = [data] if isinstance(data, _BYTES_LIKE) else list(data)
    if len(values) > MAX_BATCH_BLOCKS:
        raise ValueError(f"batch of {len(values)} blocks exceeds {MAX_BATCH_BLOCKS} blocks")
    total = 0
    for k, v in enumerate(values):  # one pass: check, convert, add up
        if type(v) is not bytes:
            if not isinstance(v, _BYTES_LIKE):
                raise TypeError(f"blocks must be bytes, not {type(v).__name__}")
            v = values[k] = bytes(v)
        n = len(v)
        if n > MAX_BLOCK_SIZE:
            raise ValueError(f"block of {n} bytes exceeds {MAX_BLOCK_SIZE}")
        total += n
    if total > MAX_BATCH_BYTES:
        raise ValueError(
            f"batch of {len(values)} blocks / {total} bytes exceeds {MAX_BATCH_BYTES} bytes"
        )
    return values, total


_BYTES_LIKE = (bytes, bytearray, memoryview)


# --- the log ---------------------------------------------------------------------------


@final
class Log:
    """One hypercore-11-compatible log. Get one from a `Store`; never construct it.

    A writable log holds its secret key and appends; a reader knows only the key
    (and, once learnt, the manifest) and stores what peers prove to it.
    """

    def __init__(self, store: Store, stored: StoredLog) -> None:
        """Internal: use `Store.create_log` / `Store.open_log`."""
        self._store = store
        self._storage = store.storage
        # A read-only open checks after its reads that no writer beside it moved the
        # log to another fork (`_check_unchanged`); `_seen_version` is the storage's
        # `data_version` at the last check that found the log unchanged.
        self._readonly = store.storage.readonly
        self._seen_version: int | None = None
        self._handle = stored.handle
        self._info = stored.info
        self._secret_key = stored.info.secret_key
        self._verifier: Verifier | None = None
        if stored.info.manifest is not None:
            self._verifier = Verifier.for_key(stored.info.key, stored.info.manifest)
        self._tree = MerkleTree()
        self._bitfield = Bitfield()
        self._write_lock = trio.Lock()
        self._subscribers: list[trio.MemorySendChannel[LogEvent]] = []
        self._listeners: list[Callable[[LogEvent], None]] = []
        self._want_listeners: list[Callable[[int], None]] = []
        self._block_waiters: dict[int, trio.Event] = {}
        self._length_waiters = trio.lowlevel.ParkingLot()
        self._events_dropped = 0
        # fork -> the length the log was cut to when that fork began (snapshots use it)
        self._cuts: dict[int, int] = {}
        self._closed = False
        # The contiguous-length hint last stored in the head (see `Head`).
        self._stored_contiguous = 0
        # False while the stored head lacks the signature of the current head (the
        # writer signs lazily: see `_sign`); `close` and a writable open store it.
        self._stored_signed = True

    def _load(self, head: Head) -> None:
        """Rebuild the in-memory state from storage and check the signed head."""
        for page, data in self._storage.load_bitfield(self._handle):
            self._bitfield.load_page(page, data)
        hint = min(head.contiguous_length, head.length)
        self._bitfield.set_range(0, hint)
        self._bitfield.clear_dirty()
        self._stored_contiguous = hint
        tree = MerkleTree.from_storage(
            head.length, self._get_node, fork=head.fork, signature=head.signature
        )
        if head.length:
            if tree.tree_hash() != head.tree_hash or tree.byte_length != head.byte_length:
                raise CorruptStorageError(
                    f"log {self.key.hex()}: stored roots do not match the signed head"
                )
            if head.signature is None:
                # The writer's last head, not signed yet (lazy signing). The writer
                # signs it now, and stores it if it can write; a store without the
                # secret key keeps it unsigned and never proves it to anyone.
                self._stored_signed = False
                if self._sign(tree) is not None and not self._storage.readonly:
                    self._store_signature(tree)
            elif self._verifier is not None and not tree.verify_signature(self._verifier):
                raise CorruptStorageError(
                    f"log {self.key.hex()}: the stored signature does not verify"
                )
        self._tree = tree
        if self._readonly:
            self._check_unchanged()  # what was just read is of the head's fork

    def _check_unchanged(self) -> None:
        """Raise `LogChangedError` if the stored log left this read-only open's fork.

        A read-only open keeps the head it loaded, while a writer beside it may
        truncate the log and write another fork's blocks at the same indices. Call
        this *after* a read: every truncation moves the stored fork forward, so if
        the stored fork is still ours now, nothing was cut since the log was loaded
        and what was read belongs to our head. Storage's `data_version` makes the
        usual case (nothing committed since the last check) one cheap query.
        """
        storage = self._storage
        version = storage.data_version()  # before the head: a later commit changes it
        if version == self._seen_version:
            return
        stored = storage.find_log(self.key)
        tree = self._tree
        if stored is None:
            raise LogChangedError(f"log {self.key.hex()} vanished under this read-only open")
        head = stored.head
        if head.fork != tree.fork or head.length < tree.length:
            raise LogChangedError(
                f"log {self.key.hex()} changed under this read-only open (fork {tree.fork}, "
                f"length {tree.length} is now fork {head.fork}, length {head.length}): "
                "reopen the store to read it"
            )
        self._seen_version = version

    def _not_stored(self, index: int) -> HyperlogError:
        """The error for a block the bitfield holds but storage does not.

        Damage (`CorruptStorageError`), unless a writer beside this read-only open
        truncated the log (`LogChangedError`, raised from here).
        """
        if self._readonly:
            self._check_unchanged()
        return CorruptStorageError(f"block {index} is marked present but is not stored")

    def _sign(self, tree: MerkleTree) -> bytes | None:
        """Sign ``tree``'s head if it is unsigned and this store holds the secret key.

        Appends leave the head unsigned (docs/hyperlog.md, "lazy signing"); whatever
        exposes the signed head (`signature`, `head`, an upgrade proof, a snapshot's
        signature, `verify`, `close`) calls this first. ed25519 is deterministic, so
        the signature is the one hypercore would have made at append time. Returns
        the signature, or None for an empty log or a head this store cannot sign.
        """
        sig = tree.signature
        if sig is None and tree.length and self._secret_key is not None:
            verifier = self._verifier
            if verifier is not None:
                sig = tree.signature = verifier.sign(
                    tree.tree_hash(), tree.length, tree.fork, self._secret_key
                )
        return sig

    def _ensure_signed(self) -> bytes | None:
        return self._sign(self._tree)

    def _store_signature(self, tree: MerkleTree) -> None:
        """Write the (now signed) current head over the stored unsigned one."""
        head = Head(
            tree.fork,
            tree.length,
            tree.byte_length,
            tree.tree_hash(),
            tree.signature,
            self._stored_contiguous,
        )
        self._storage.store_signature(self._handle, head)
        self._stored_signed = True

    def _get_node(self, index: int) -> TreeNode | None:
        return self._storage.get_node(self._handle, index)

    # -- identity and state -----------------------------------------------------

    @property
    def key(self) -> bytes:
        """The 32-byte log key (the manifest hash, or the public key in compat mode)."""
        return self._info.key

    @property
    def discovery_key(self) -> bytes:
        """The 32-byte discovery key peers announce instead of the key."""
        return self._info.discovery_key

    @property
    def manifest(self) -> Manifest | None:
        """The manifest, or None while a reader has not learnt it."""
        return None if self._verifier is None else self._verifier.manifest

    @property
    def verifier(self) -> Verifier | None:
        """The signature rule of this log, or None while the manifest is unknown."""
        return self._verifier

    @property
    def writable(self) -> bool:
        """True if this store holds the secret key, so `append` and `truncate` work."""
        return self._secret_key is not None and not self._storage.readonly

    @property
    def length(self) -> int:
        """The number of blocks in the signed head."""
        return self._tree.length

    @property
    def byte_length(self) -> int:
        """The total size in bytes of the blocks in the signed head."""
        return self._tree.byte_length

    @property
    def fork(self) -> int:
        """The fork id: bumped by every truncation."""
        return self._tree.fork

    @property
    def signature(self) -> bytes | None:
        """The raw 64-byte ed25519 signature of the head (signing it now if needed).

        None for an empty log, and for a head that is not signed yet when this store
        does not hold the writer's secret key (see `signed`).
        """
        return self._ensure_signed()

    @property
    def signed(self) -> bool:
        """False if the head is not signed and cannot be signed here (no secret key).

        Only the writer's own store can hold such a head (its last append, before it
        was signed); it is never proved to anyone. An empty log counts as signed.
        """
        return self._tree.length == 0 or self._ensure_signed() is not None

    def tree_hash(self) -> bytes:
        """Return the hash over the current roots: what the signature covers."""
        return self._tree.tree_hash()

    @property
    def roots(self) -> list[TreeNode]:
        """The full roots of the current head, left to right (a copy)."""
        return list(self._tree.roots)

    @property
    def head(self) -> Head:
        """The current signed head as stored."""
        t = self._tree
        sig = self._ensure_signed()
        return Head(t.fork, t.length, t.byte_length, t.tree_hash(), sig, self._stored_contiguous)

    @property
    def contiguous_length(self) -> int:
        """How many blocks from 0 on are all held locally."""
        return min(self._bitfield.contiguous_length, self._tree.length)

    @property
    def bitfield(self) -> Bitfield:
        """The "have" bitfield. Read it; never modify it."""
        return self._bitfield

    def has(self, index: int) -> bool:
        """Return True if block ``index`` is held locally (and inside the signed length)."""
        _require_int(index, "a block index")
        return 0 <= index < self._tree.length and self._bitfield.get(index)

    def has_range(self, start: int, end: int) -> bool:
        """Return True if every block in ``start .. end - 1`` is held locally."""
        _require_int(start, "a block index")
        _require_int(end, "a block index")
        if start >= end:
            return True
        if start < 0 or end > self._tree.length:
            return False
        return self._bitfield.first_unset(start) >= end

    def have_bits(self, start: int, count: int) -> bytes:
        """Return ``count`` have-bits from ``start`` (both multiples of 8), LSB first.

        Raises:
            ValueError: if ``start`` or ``count`` is not a multiple of 8.
        """
        _require_int(start, "a block index")
        _require_int(count, "a count")
        if start % 8 or count % 8 or start < 0 or count < 0:
            raise ValueError("have_bits needs non-negative multiples of 8")
        # Byte slices of the bitfield's pages: the cost is per page, not per run of
        # set bits (walking runs took 0.2 s per 4 KiB page of alternating bits, on
        # the loop, for every page of every Want a peer sent).
        bits = self._bitfield.bits_bytes(start, min(start + count, self._tree.length))
        return bits + bytes(count // 8 - len(bits))

    def missing_nodes(self, index: int) -> int:
        """Return how many tree nodes on block ``index``'s path up to its root are not stored.

        This is hypercore's ``nodes`` field of a block request: the responder skips
        the uncles the requester already has. 0 when ``index`` is past `length`.
        """
        _require_int(index, "a block index")
        return self.missing_tree_nodes(2 * index)

    def missing_tree_nodes(self, node: int) -> int:
        """Like `missing_nodes` for any flat-tree node index (for hash requests)."""
        _require_int(node, "a tree node index")
        if node < 0:
            return 0
        handle = self._handle
        get = self._storage.get_node
        return missing_nodes(node, self._tree.length, lambda i: get(handle, i) is not None)

    def statistics(self) -> LogStatistics:
        """Return counters: length, blocks held, subscribers, dropped events."""
        return LogStatistics(
            length=self._tree.length,
            byte_length=self._tree.byte_length,
            fork=self._tree.fork,
            blocks_held=self._bitfield.count(),
            contiguous_length=self.contiguous_length,
            subscribers=len(self._subscribers),
            events_dropped=self._events_dropped,
        )

    # -- writing ----------------------------------------------------------------

    async def append(self, data: bytes | Sequence[bytes]) -> AppendResult:
        """Append one block or a batch of blocks, signed once, in one transaction.

        When this returns, the blocks are committed: they survive a crash of the
        process (and, with ``durability="power"``, of the machine).

        Args:
            data: one block (bytes) or a sequence of blocks.

        Returns:
            The new length and byte length.

        Raises:
            NotWritableError: if this log has no secret key here or the store is read-only.
            ValueError: if a block or the batch exceeds `MAX_BLOCK_SIZE`,
                `MAX_BATCH_BLOCKS` or `MAX_BATCH_BYTES`, or the log would hold more than
                `MAX_LOG_LENGTH` (2**40) blocks.
        """
        # the common single block (bytes, or a list of one as the HAMT passes it):
        # skip the generic checks
        if type(data) is bytes:
            values = [data]
            total = len(data)
            if total > MAX_BLOCK_SIZE:
                raise ValueError(f"block of {total} bytes exceeds {MAX_BLOCK_SIZE}")
        elif type(data) is list and len(data) == 1 and type(data[0]) is bytes:
            values = [data[0]]
            total = len(values[0])
            if total > MAX_BLOCK_SIZE:
                raise ValueError(f"block of {total} bytes exceeds {MAX_BLOCK_SIZE}")
        else:
            values, total = _check_blocks(data)
        self._check_writable()
        await trio.lowlevel.checkpoint_if_cancelled()
        # A small append runs inline unless a worker thread holds the storage (another
        # log's commit or checkpoint catch-up): waiting for it there would stall the loop.
        inline = total < APPEND_THREAD_THRESHOLD_BYTES and not self._storage.write_busy
        if inline and not self._write_lock.locked():
            # Fast path: no await between building and applying the batch, so nothing
            # can interleave and the lock is not needed (it only orders operations
            # that wait for a worker thread).
            if len(values) == 1 and self._bitfield.contiguous_length == self._tree.length:
                self._append_one(values[0])
            elif values:
                batch, self._stored_contiguous = self._append_sync(values)
                self._tree.apply(batch)
                self._after_append(batch.start, batch.length)
            # taken before the checkpoint: other tasks may append while we wait
            result = AppendResult(self._tree.length, self._tree.byte_length)
            if self._storage.maintenance_due:
                await self._maintain()
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return result
        async with self._write_lock:
            if not values:
                return AppendResult(self._tree.length, self._tree.byte_length)
            if not inline or self._storage.write_busy:
                batch, hint = await trio.to_thread.run_sync(self._append_sync, values)
            else:
                batch, hint = self._append_sync(values)
            self._stored_contiguous = hint
            self._tree.apply(batch)
            self._after_append(batch.start, batch.length)
        if self._storage.maintenance_due:
            await self._maintain()
        await trio.lowlevel.cancel_shielded_checkpoint()  # committed: never `Cancelled` now
        return AppendResult(batch.length, batch.byte_length)

    async def _maintain(self) -> None:
        """Run the storage's deferred upkeep in a worker thread, appends held back.

        It finishes a WAL checkpoint (milliseconds of disk waits, once per tens of
        MiB written) off the event loop; appends meanwhile wait on the write lock.
        """
        with trio.CancelScope(shield=True):  # the append itself is already committed
            async with self._write_lock:
                if self._storage.maintenance_due:
                    await trio.to_thread.run_sync(self._storage.maintain)

    def _check_writable(self) -> None:
        if self._closed:
            raise HyperlogError("the log is closed")
        if not self.writable or self._verifier is None:
            raise NotWritableError(f"log {self.key.hex()} is not writable here")

    def _append_sync(self, values: list[bytes]) -> tuple[AppendBatch, int]:
        """Hash and commit one batch; does not touch in-memory state.

        The head is committed unsigned: the signature is made when something needs it
        (`_sign`), not per append.
        """
        batch = self._tree.append(values)
        start = batch.start
        if len(values) == 1:
            blocks = [(start, values[0], batch.leaf_hashes[0])]
        else:
            blocks = list(zip(range(start, batch.length), values, batch.leaf_hashes, strict=True))
        # Depth-1 parents of two stored blocks are derived by storage.
        parents = [node for node in batch.parents if node.index & 3 != 1]
        bf = self._bitfield
        if bf.contiguous_length == start and bf.is_prefix():
            # The log holds exactly 0..start-1 (a writer's usual state): moving the
            # contiguous hint in the head records the new blocks; no bitfield page.
            bits: dict[int, bytes] = {}
            hint = batch.length
        else:
            bits = bf.pages_after_set(start, batch.length)
            hint = self._stored_contiguous
        head = Head(batch.fork, batch.length, batch.byte_length, batch.tree_hash, None, hint)
        self._storage.commit(
            self._handle,
            WriteBatch(
                blocks=blocks,
                nodes=parents,
                bitfield=bits,
                head=head,
                appended=True,
                block_bytes=batch.byte_length - self._tree.byte_length,
            ),
        )
        return batch, hint

    def _append_one(self, value: bytes) -> None:
        """Hash, commit and apply one block (the single put): `_append_sync` and the rest
        without a `WriteBatch` or `Head`, when the log holds every block before it."""
        tree = self._tree
        bf = self._bitfield
        if not bf.is_prefix():
            batch, self._stored_contiguous = self._append_sync([value])
        else:
            batch = tree.append((value,))
            self._storage.append_one(
                self._handle,
                value,
                batch.leaf_hashes[0],
                batch.parents,
                (batch.fork, batch.length, batch.byte_length, batch.tree_hash),
            )
            self._stored_contiguous = batch.length
        tree.apply(batch)
        self._after_append(batch.start, batch.length)

    def _after_append(self, start: int, length: int) -> None:
        self._stored_signed = False
        bits = self._bitfield
        if length - start == 1:
            bits.set(start)
        else:
            bits.set_range(start, length)
        bits.clear_dirty()
        if self._subscribers or self._listeners:  # no event object nobody receives
            self._emit(AppendEvent(length, self._tree.byte_length, self._tree.fork))
        self._wake_length()

    async def truncate(self, length: int, *, fork: int | None = None) -> None:
        """Cut the log back to ``length`` blocks under a new fork, and re-sign it.

        Blocks and tree nodes past ``length`` are deleted. The fork becomes ``fork``
        (it must be higher than the current one) or the current fork + 1, so peers
        can tell the new history from the old.

        Raises:
            NotWritableError: if this log cannot sign.
            TypeError: if ``length`` or ``fork`` is not an int.
            ValueError: if ``length`` exceeds the current length, or ``fork`` is not
                higher or above 2**64 - 1.
        """
        _require_int(length, "a truncation length")
        if fork is not None:
            _require_int(fork, "a fork")
        self._check_writable()
        assert self._verifier is not None
        async with self._write_lock:
            batch = self._tree.truncate(length, self._get_node, fork=fork)
            signature = batch.sign(self._verifier, self._secret_key)
            bits = self._bitfield.copy()
            bits.take_dirty()
            bits.clear_from(length)
            hint = min(self._stored_contiguous, length)
            head = Head(
                batch.fork, batch.length, batch.byte_length, batch.tree_hash, signature, hint
            )
            wb = WriteBatch(bitfield=bits.take_dirty(), head=head, truncate=length)
            await trio.to_thread.run_sync(self._storage.commit, self._handle, wb)
            self._tree.apply(batch)
            self._stored_contiguous = hint
            self._stored_signed = True
            self._bitfield.clear_from(length)
            self._bitfield.clear_dirty()
            self._cuts[batch.fork] = length
            self._emit(TruncateEvent(length, batch.fork))
            self._wake_length()
        await trio.lowlevel.cancel_shielded_checkpoint()  # committed: never `Cancelled` now

    # -- reading ----------------------------------------------------------------

    def get_nowait(self, index: int) -> bytes:
        """Return block ``index`` if it is held locally, without waiting.

        Raises:
            TypeError: if ``index`` is not an int.
            ValueError: if ``index`` is negative.
            BlockNotAvailableError: if the block is not held here.
            CorruptStorageError: if the stored block is damaged.
        """
        _require_index(index)
        if not index < self._tree.length or not self._bitfield.get(index):
            raise BlockNotAvailableError(f"block {index} is not available locally")
        value = self._storage.get_block(self._handle, index)
        if value is None:
            raise self._not_stored(index)
        if self._readonly:
            self._check_unchanged()
        return value

    async def get(
        self,
        index: int,
        *,
        wait: bool | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> bytes:
        """Return block ``index``.

        A block held locally is read from storage (and checked against its checksum).
        A missing one is waited for only if ``wait`` is True, or ``wait`` is None and a
        replicator is attached (`add_want_listener`): the want listeners are told, and
        the call returns as soon as a verified copy is stored.

        Args:
            index: the block index.
            wait: wait for a missing block (None: only if a replicator is attached).
            timeout: seconds to wait at most (None: no limit besides cancellation).

        Raises:
            TypeError: if ``index`` is not an int.
            ValueError: if ``index`` is negative (as `LogReplication.get` says it).
            BlockNotAvailableError: if the block is missing and not waited for, or the
                wait timed out.
            CorruptStorageError: if the stored block is damaged.
        """
        _require_index(index)
        if index < self._tree.length and self._bitfield.get(index):
            value = self._storage.get_block(self._handle, index)
            if value is None:
                await trio.lowlevel.checkpoint()
                raise self._not_stored(index)
            if self._readonly:
                self._check_unchanged()
            await trio.lowlevel.checkpoint()
            return value
        if wait is False or (wait is None and not self._want_listeners):
            await trio.lowlevel.checkpoint()
            raise BlockNotAvailableError(f"block {index} is not available locally")
        try:
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                # Bounded: each pass either returns or waits for a new block/length event.
                while not self.has(index):
                    if self._closed:
                        raise HyperlogError("the log was closed while waiting for a block")
                    event = self._block_waiters.get(index)
                    if event is None:
                        event = self._block_waiters[index] = trio.Event()
                    for want in list(self._want_listeners):
                        want(index)
                    await event.wait()
                return self.get_nowait(index)
        finally:
            # Given up (timed out, cancelled) with nobody else waiting: forget the
            # event, so `waiting` says so and the table holds only live waits.
            left = self._block_waiters.get(index)
            if left is not None and not left.statistics().tasks_waiting:
                del self._block_waiters[index]
        raise BlockNotAvailableError(f"block {index} did not arrive within {timeout} s")

    def waiting(self, index: int) -> bool:
        """Whether a `get` is waiting for block `index` now (replication asks: a want
        whose `get` gave up is not worth fetching any more)."""
        event = self._block_waiters.get(index)
        return event is not None and event.statistics().tasks_waiting > 0

    async def get_many(self, indices: Sequence[int]) -> list[bytes]:
        """Return the locally held blocks at ``indices`` (in that order), read in one pass.

        The batch equivalent of many concurrent `get` calls: one storage read (in a
        worker thread when it is large), one checkpoint.

        Raises:
            ValueError: if more than `MAX_GET_MANY` indices are given.
            BlockNotAvailableError: if any block is not held locally (nothing is waited for).
            CorruptStorageError: if a stored block is damaged.
        """
        if len(indices) > MAX_GET_MANY:
            raise ValueError(f"at most {MAX_GET_MANY} blocks per get_many")
        for i in indices:
            if not self.has(i):  # (it checks that `i` is an int)
                await trio.lowlevel.checkpoint()
                raise BlockNotAvailableError(f"block {i} is not available locally")
        if len(indices) > GET_MANY_THREAD_ABOVE:
            values = await trio.to_thread.run_sync(self._storage.get_blocks, self._handle, indices)
        else:
            values = self._storage.get_blocks(self._handle, indices)
            await trio.lowlevel.checkpoint()
        out: list[bytes] = []
        for i, value in zip(indices, values, strict=True):
            if value is None:
                raise self._not_stored(i)
            out.append(value)
        if self._readonly:
            self._check_unchanged()
        return out

    async def iter_blocks(self, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Yield the locally held blocks ``start .. end - 1`` in order, reading in chunks.

        Raises:
            TypeError: if ``start`` or ``end`` is not an int.
            BlockNotAvailableError: at the first block in the range that is not held.
        """
        _require_int(start, "a block index")
        if end is not None:
            _require_int(end, "a block index")
        stop = self._tree.length if end is None else min(end, self._tree.length)
        pos = max(start, 0)
        while pos < stop:
            hi = min(pos + READ_CHUNK_BLOCKS, stop)
            if not self.has_range(pos, hi):
                raise BlockNotAvailableError(f"block {self._bitfield.first_unset(pos)} is missing")
            chunk = await trio.to_thread.run_sync(self._read_chunk, pos, hi)
            for value in chunk:
                yield value
            pos = hi

    def _read_chunk(self, start: int, end: int) -> list[bytes]:
        out: list[bytes] = []
        expected = start
        for index, value in self._storage.iter_blocks(self._handle, start, end):
            if index != expected:
                raise self._not_stored(expected)
            out.append(value)
            expected += 1
        if expected != end:
            raise self._not_stored(expected)
        if self._readonly:
            self._check_unchanged()
        return out

    async def seek(self, byte_offset: int, *, padding: int = 0) -> tuple[int, int]:
        """Return ``(block, offset_in_block)`` holding the byte at ``byte_offset``.

        Raises:
            TypeError: if ``byte_offset`` or ``padding`` is not an int.
            IndexError: if ``byte_offset`` is not below `byte_length`.
            BlockNotAvailableError: if a tree node on the way is not stored here.
        """
        _require_int(byte_offset, "a byte offset")
        _require_int(padding, "a padding")
        try:
            result = seek(self._tree, byte_offset, self._get_node, padding=padding)
        finally:
            if self._readonly:  # its nodes, and a missing one, must be of our fork
                self._check_unchanged()
        await trio.lowlevel.checkpoint()
        return result

    async def byte_offset(self, index: int) -> int:
        """Return the byte offset at which block ``index`` starts.

        Raises:
            TypeError: if ``index`` is not an int.
            IndexError: if ``index`` is not below `length`.
            BlockNotAvailableError: if a needed tree node is not stored here.
        """
        _require_int(index, "a block index")
        try:
            result = byte_offset(self._tree, index, self._get_node)
        finally:
            if self._readonly:
                self._check_unchanged()
        await trio.lowlevel.checkpoint()
        return result

    def snapshot(self) -> LogSnapshot:
        """Return a read-only view of the log as it is now (its length, fork and head)."""
        return LogSnapshot(self, self._tree.snapshot())

    # -- events -----------------------------------------------------------------

    @contextlib.contextmanager
    def subscribe(
        self, *, max_buffer: int = EVENT_BUFFER
    ) -> Iterator[trio.MemoryReceiveChannel[LogEvent]]:
        """Receive this log's events (append, download, truncate) while in the block.

        ``with log.subscribe() as events: async for event in events: ...``. Events are
        never allowed to slow the writer: when your buffer (``max_buffer``) is full,
        new events are dropped and counted in `statistics`; `length` is always current.
        """
        send, receive = trio.open_memory_channel[LogEvent](max_buffer)
        self._subscribers.append(send)
        try:
            with receive:
                yield receive
        finally:
            self._subscribers.remove(send)
            send.close()

    def add_listener(self, callback: Callable[[LogEvent], None]) -> Callable[[], None]:
        """Call ``callback(event)`` synchronously for every event; return a remover.

        For sans-IO engines (replication) that react in the same task. The callback
        must not raise or block.
        """
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def add_want_listener(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Call ``callback(index)`` when a `get` waits for a missing block; return a remover.

        A replicator registers here to learn which blocks readers are waiting for.
        """
        self._want_listeners.append(callback)
        return lambda: self._want_listeners.remove(callback)

    async def wait_length(self, length: int) -> None:
        """Return once the signed length is at least ``length`` (or the fork changed)."""
        _require_int(length, "a length")
        fork = self._tree.fork
        # Bounded: each pass waits for the next length change.
        while self._tree.length < length and self._tree.fork == fork:
            if self._closed:
                raise HyperlogError("the log was closed while waiting for its length")
            await self._length_waiters.park()
        await trio.lowlevel.checkpoint()

    def _emit(self, event: LogEvent) -> None:
        for send in self._subscribers:
            try:
                send.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._events_dropped += 1
        for callback in list(self._listeners):
            callback(event)

    def _wake_length(self) -> None:
        if self._length_waiters:  # cheap when nobody waits (the common case)
            self._length_waiters.unpark_all()

    def _wake_block(self, index: int) -> None:
        event = self._block_waiters.pop(index, None)
        if event is not None:
            event.set()

    # -- proofs (the replication boundary) ---------------------------------------

    def create_proof(self, request: ProofRequest) -> Proof:
        """Build the proof answering a peer's ``request`` from local storage.

        Synchronous and fast (``O(log n)`` node reads, prefetched in one go).

        Raises:
            InvalidRequestError: if the request is out of bounds or for another fork.
            BlockNotAvailableError: if the block or a needed node is not held here.
        """
        if request.upgrade is not None:
            self._ensure_signed()  # an unsigned head is never proved (create_proof refuses)
        tree = self._tree
        value = None
        if request.block is not None:
            index = request.block.index
            if self.has(index):
                value = self._storage.get_block(self._handle, index)
        wanted = proof_node_indices(tree, request)
        cache = {n.index: n for n in self._storage.get_nodes(self._handle, wanted) if n is not None}

        def get_node(i: int) -> TreeNode | None:
            node = cache.get(i)
            return node if node is not None else self._get_node(i)

        manifest = None
        if request.manifest and self._verifier is not None:
            manifest = self._verifier.manifest.encode()
        try:
            return create_proof(tree, request, get_node, value=value, manifest=manifest)
        finally:
            if self._readonly:  # never prove another fork's nodes or block
                self._check_unchanged()

    async def apply_proof(self, proof: Proof, *, seek_padding: int = 0) -> ProofResult:
        """Verify a peer's ``proof`` against what this log trusts, then store it atomically.

        Blocks, nodes, bitfield page and (when the proof upgrades) the new signed head
        are written in one transaction; events follow. A proof for a newer fork makes
        the log drop everything after the common prefix first (same transaction).

        Raises:
            InvalidProofError: the proof does not verify (`InvalidSignatureError` for a
                bad signature). Nothing was stored.
        """
        (result,) = await self.apply_proofs([proof], seek_padding=seek_padding)
        if isinstance(result, HyperlogError):
            raise result
        return result

    async def apply_proofs(
        self, proofs: Sequence[Proof], *, seek_padding: int = 0
    ) -> list[ProofResult | HyperlogError]:
        """Verify several proofs and store the valid ones in one transaction (group commit).

        Each proof is verified against the state the earlier ones in the group lead
        to. A proof that fails verification stores nothing; its error takes its place
        in the returned list (in order) and the others proceed.

        Raises:
            ValueError: if more than `MAX_PROOF_GROUP` proofs are given.
            HyperlogError: if the log or store is closed.
        """
        if len(proofs) > MAX_PROOF_GROUP:
            raise ValueError(f"at most {MAX_PROOF_GROUP} proofs per group")
        if self._closed:
            raise HyperlogError("the log is closed")
        async with self._write_lock:
            results: list[ProofResult | HyperlogError] = []
            group = _Group(self)
            for proof in proofs:
                batch = group.verify(proof, seek_padding)
                if isinstance(batch, VerifiedBatch) and batch.is_fork_change:
                    # A fork change rewrites the tree: it commits alone, after what came
                    # before it, and later proofs are verified against the new fork.
                    if group.pending:
                        await group.commit()
                        group = _Group(self)
                        batch = group.verify(proof, seek_padding)
                    if isinstance(batch, VerifiedBatch):
                        results.append(group.add(batch))
                        await group.commit()
                        group = _Group(self)
                        continue
                results.append(batch if isinstance(batch, HyperlogError) else group.add(batch))
            await group.commit()
        await trio.lowlevel.cancel_shielded_checkpoint()  # committed: never `Cancelled` now
        return results

    # -- verification -----------------------------------------------------------

    async def verify(self) -> None:
        """Recompute every stored hash up to the roots and check the signature.

        Reads every stored block and tree node (in a worker thread). A reader with
        a sparse copy checks each block it holds against the stored tree. An empty log
        has nothing signed to check, and passes even where the manifest is unknown (a
        reader that cloned it).

        Raises:
            CorruptStorageError: if anything stored does not match (the message says what).
            InvalidSignatureError: if the signature does not verify the roots.
        """
        self._ensure_signed()
        tree = self._tree.snapshot()
        await trio.to_thread.run_sync(self._verify_sync, tree)

    def _verify_sync(self, tree: MerkleTree) -> None:
        try:
            self._verify_stored(tree)
        finally:
            if self._readonly:  # damage found, or the writer truncated the log?
                self._check_unchanged()

    def _verify_stored(self, tree: MerkleTree) -> None:
        self._verify_signature(tree)
        # Recompute the roots from the leaves wherever the whole subtree is held,
        # otherwise check each held leaf up to the first stored ancestor that we
        # have recomputed: every stored parent must equal the hash of its children.
        level: dict[int, TreeNode] = {}
        for index, value in self._storage.iter_blocks(self._handle, 0, tree.length):
            if not self._bitfield.get(index):
                raise CorruptStorageError(f"block {index} is stored but not marked present")
            level[2 * index] = TreeNode(2 * index, len(value), leaf_hash(value))
        for i in range(tree.length):
            if self._bitfield.get(i) and 2 * i not in level:
                raise CorruptStorageError(f"block {i} is marked present but is not stored")
        roots = {r.index: r for r in tree.roots}
        # Bounded: each round moves one level up; at most 64 levels.
        for _ in range(64):
            if not level:
                break
            upper: dict[int, TreeNode] = {}
            for idx, node in level.items():
                if idx in roots:
                    if roots[idx].hash != node.hash or roots[idx].size != node.size:
                        raise CorruptStorageError(f"root {idx} does not match its subtree")
                    continue
                sib_idx = flat_tree.sibling(idx)
                sib = level.get(sib_idx) or self._storage.get_node(self._handle, sib_idx)
                if sib is None:
                    raise CorruptStorageError(f"tree node {sib_idx} is missing")
                left, right = (node, sib) if idx < sib_idx else (sib, node)
                p_idx = flat_tree.parent(idx)
                if p_idx in upper:
                    continue
                size = left.size + right.size
                parent = TreeNode(p_idx, size, parent_hash(left.hash, right.hash, size))
                stored = self._storage.get_node(self._handle, p_idx)
                if stored is not None and (stored.hash != parent.hash or stored.size != size):
                    raise CorruptStorageError(f"tree node {p_idx} does not match its children")
                upper[p_idx] = parent
            level = upper
        if tree.length and tree_hash(tree.roots) != tree.tree_hash():
            raise CorruptStorageError("the tree hash does not match the roots")

    def _verify_signature(self, tree: MerkleTree) -> None:
        """Check the signature of a non-empty head.

        An empty log (length 0) has no signed head: nothing is signed, so nothing needs
        the manifest. A reader learns the manifest with its first upgrade (the only
        proof that needs it), so a reader of an empty log does not know it, and that is
        not damage: verifying such a clone used to fail ("the manifest is unknown").
        """
        if not tree.length:
            return
        if self._verifier is None:
            raise CorruptStorageError("the manifest is unknown: the signature cannot be checked")
        if tree.signature is None:
            raise CorruptStorageError(
                "the head is not signed yet and this store has no secret key to sign it"
            )
        if not tree.verify_signature(self._verifier):
            raise CorruptStorageError("the signature does not verify the stored head")

    # -- life cycle -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once the store holding this log was closed."""
        return self._closed

    def _store_signature_on_close(self) -> None:
        """Sign the head and store the signature, if an append left it unsigned."""
        if self._stored_signed or self._closed or self._storage.readonly:
            return
        if self._ensure_signed() is None:
            return
        try:
            self._store_signature(self._tree)
        except Exception:
            # optional (a full disk must not keep the store open): the next writable
            # open signs it again (the same bytes)
            logger.warning("could not store the signature of %s", self.key.hex(), exc_info=True)

    def _close(self) -> None:
        self._closed = True
        for send in self._subscribers:
            send.close()
        for event in self._block_waiters.values():
            event.set()
        self._block_waiters.clear()
        self._wake_length()
