"""`Hamt`: the key-value store over a log, and `open_hamt`, its entry point.

This is the Trio shell around the sans-IO walks in `trie` and `mutate`: it runs a
walk, and whenever the walk yields "need block N" it takes the block from the
`BlockCache` or awaits it from the log (which, for a sparse replica, fetches it
from a peer), decodes and validates it, and sends it back. Writes hold one
`trio.Lock`, build one block per put, delete or batch, and append it as one batch;
the writer keeps the decoded trie of its latest block (`mutate.Retained`) and
builds the next block on it while the log is still at the (fork, length) it left.

A checkout is a read-only `Hamt` pinned to a version; it shares the log, the hash
key and the cache with the HAMT it came from. It also remembers the log's fork: once
the log is truncated below its version (a new fork), it refuses to read
(`TruncatedError`) instead of answering from the other fork's blocks.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast, final, overload

import trio

from .cache import BlockCache, CacheStatistics
from .codec import BYTES, Codec
from .constants import (
    DEFAULT_CACHE_BLOCKS,
    DEFAULT_CACHE_BYTES,
    HINT_TIMEOUT,
    LAZY_BLOCK_BYTES,
    MAX_BATCH_OPS,
    MAX_BLOCK_BYTES,
    MAX_VALUE_BYTES,
    SALT_BYTES,
)
from .errors import (
    BatchTooLargeError,
    HamtError,
    ReadOnlyError,
    TruncatedError,
    ValueTooLargeError,
)
from .hashing import ComponentHash, Hasher, check_key, derive_hash_key, split_prefix
from .log import LogLike, ReadableLog
from .mutate import Mutation, Retained
from .proofs import apply_block_proofs, can_apply
from .trie import DiffItem, Item, diff, iterate, lookup, path_blocks
from .wire import (
    Block,
    HintReply,
    LazyBlock,
    decode_block,
    decode_header,
    encode_header,
    header_block,
)

__all__ = ["Batch", "Change", "DiffEntry", "Hamt", "HamtStatistics", "open_hamt"]

logger = logging.getLogger(__name__)

V = TypeVar("V")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Change(Generic[V]):
    """One change made by one block: `value` None means the key was deleted.

    `version` is the HAMT's version right after the change (block number + 1).
    """

    version: int
    key: str
    value: V | None


@dataclass(frozen=True, slots=True)
class DiffEntry(Generic[V]):
    """A key whose value differs between two versions (None: absent on that side)."""

    key: str
    left: V | None
    right: V | None


@dataclass(frozen=True, slots=True)
class HamtStatistics:
    """Counters of a HAMT: blocks fetched from the log and the cache's state."""

    fetches: int
    cache: CacheStatistics


class HintSource(Protocol):
    """Something that tells which blocks a get reads (a `hamt.PathHintClient`)."""

    async def path_hint(self, key: str, version: int = 0, fork: int | None = None) -> HintReply: ...


#: The write lock of each log (see `_Shared.lock`), for as long as the log lives.
_WRITE_LOCKS: weakref.WeakKeyDictionary[object, trio.Lock] = weakref.WeakKeyDictionary()


def _write_lock(log: object) -> trio.Lock:
    try:
        lock = _WRITE_LOCKS.get(log)
        if lock is None:
            lock = _WRITE_LOCKS[log] = trio.Lock()
    except TypeError:  # a log that cannot be weakly referenced: a lock of its own
        return trio.Lock()
    return lock


@final
class _Shared:
    """State shared by a HAMT and its checkouts."""

    def __init__(
        self,
        log: ReadableLog,
        hasher: Hasher,
        cache: BlockCache,
        hints: HintSource | None,
        hint_timeout: float = HINT_TIMEOUT,
    ) -> None:
        self.log = log
        self.hints = hints
        self.hint_timeout = hint_timeout
        self.hasher = hasher
        self.cache = cache
        # One write lock per log, shared by every HAMT opened on it: two writers on one
        # log would each build a block for the same position.
        self.lock = _write_lock(log)
        # Set (and dropped) by the next change; made only when a watcher waits.
        self._changed: trio.Event | None = None
        self.fetches = 0
        self.closed = False
        # The writer's decoded trie of its latest block (`mutate.Retained`), valid while
        # the log is at `retained_at` = (fork, length); taken by each write.
        self.retained: Retained | None = None
        self.retained_at = (0, 0)
        # Optional fast paths of richer logs (hyperlog.Log has both): a synchronous
        # local read, and a wait for the log to grow (replication wakes `watch`).
        self.get_nowait: Callable[[int], bytes] | None = getattr(log, "get_nowait", None)
        self.wait_length: Callable[[int], Awaitable[None]] | None = getattr(
            log, "wait_length", None
        )
        self.fork = self._fork()
        # fork -> the length the log was cut to when it took that fork, from the log's
        # truncate events (see `kept`); None: the log does not say where it was cut.
        self.cuts: dict[int, int] | None = None
        self._stop_listening: Callable[[], object] | None = None
        self._listen_for_cuts()

    def _listen_for_cuts(self) -> None:
        add_listener = getattr(self.log, "add_listener", None)
        if not callable(add_listener):
            return
        try:
            from hyperlog.events import TruncateEvent
        except ImportError:  # pragma: no cover (hyperlog ships beside hamt)
            return
        cuts: dict[int, int] = {}

        def on_event(event: object) -> None:
            # Only the dict is referenced, not this object and its cache: a HAMT that
            # is never closed (`load_hamt`) leaves a few bytes behind, not its blocks.
            if isinstance(event, TruncateEvent):
                cuts[event.fork] = event.length

        self._stop_listening = add_listener(on_event)
        self.cuts = cuts

    def stop_listening(self) -> None:
        stop, self._stop_listening = self._stop_listening, None
        if stop is not None:
            stop()
            # No longer told where the log is cut: a checkout used after this (its
            # `open_hamt` block ended) treats any fork change as cutting it away.
            self.cuts = None

    def writable(self) -> bool:
        """Whether the log takes appends (a log without `writable`, e.g. a
        `hyperlog.LogSnapshot`, does not)."""
        return getattr(self.log, "writable", False) is True

    def _fork(self) -> int:
        fork = getattr(self.log, "fork", 0)
        return fork if isinstance(fork, int) else 0

    def check_fork(self) -> None:
        """Drop cached blocks when the log was truncated (a new fork): they may be stale."""
        fork = self._fork()
        if fork != self.fork:
            logger.info("log fork %d -> %d: dropping the block cache", self.fork, fork)
            self.cache.clear()
            self.retained = None
            self.fork = fork

    def kept(self, fork: int, length: int) -> int:
        """How many of the first `length` blocks the log held at fork `fork` it still
        holds: truncations keep the blocks below their cut, so this is the lowest cut
        since (0 when the fork changed and the log does not say where it was cut)."""
        if self._fork() == fork:
            return length
        if self.cuts is None:
            return 0
        for later, cut in self.cuts.items():
            if later > fork:
                length = min(length, cut)
        return length

    def changed(self) -> trio.Event:
        """The event the next change sets."""
        event = self._changed
        if event is None:
            event = self._changed = trio.Event()
        return event

    def notify(self) -> None:
        event = self._changed
        if event is not None:
            self._changed = None
            event.set()


@final
class Hamt(Generic[V]):
    """A hash-array-mapped trie over an append-only log. Create one with `open_hamt`.

    Every put, delete or batch appends one block; the newest block is the root, so
    `version` (the log's length) names a state and `checkout(version)` reads it.
    """

    def __init__(
        self, shared: _Shared, codec: Codec[V], version: int | None, fork: int | None = None
    ) -> None:
        self._s = shared
        self._codec = codec
        self._fixed = version
        # The log's fork when a checkout was made: its version names blocks of that fork
        # (a checkout of a checkout keeps the first one's).
        self._fixed_fork = shared._fork() if fork is None else fork

    # -- state ---------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The number of blocks this view sees (the log's length for a live HAMT)."""
        return self._fixed if self._fixed is not None else self._s.log.length

    @property
    def writable(self) -> bool:
        """Whether puts are allowed: a live HAMT on a log you can append to."""
        return self._fixed is None and self._s.writable()

    @property
    def log(self) -> ReadableLog:
        """The underlying log."""
        return self._s.log

    def checkout(self, version: int) -> Hamt[V]:
        """Return a read-only view of the HAMT as it was at `version`.

        The view remembers the log's fork: if the log is later truncated below
        `version` (a new fork), its reads raise `TruncatedError`; a truncation that
        keeps the first `version` blocks leaves it readable.

        Raises:
            ValueError: `version` is not between 1 and the current version.
        """
        if not 1 <= version <= self._s.log.length:
            raise ValueError(f"version {version} not in 1..{self._s.log.length}")
        if self._fixed is None:
            return Hamt(self._s, self._codec, version)
        # A view of a view: of the same fork, and only while that fork's blocks are
        # still there (a retired checkout must not hand out a view of the new fork).
        self._check_version()
        view: Hamt[V] = Hamt(self._s, self._codec, version, self._fixed_fork)
        view._check_version()
        return view

    def snapshot(self) -> Hamt[V]:
        """Return a read-only view pinned at the current version."""
        return self.checkout(self.version)

    def statistics(self) -> HamtStatistics:
        """Return fetch and cache counters."""
        return HamtStatistics(self._s.fetches, self._s.cache.statistics())

    # -- block access ---------------------------------------------------------------

    def _check_version(self) -> None:
        """Refuse a checkout's read once a truncation cut its version away: the log's
        blocks (and the cache's) from the cut on are another fork's."""
        v = self._fixed
        if v is None:
            return
        fork = self._fixed_fork
        kept = self._s.kept(fork, v)
        if kept < v:
            where = f"to {kept} blocks" if self._s.cuts is not None else "(the log says not where)"
            raise TruncatedError(
                f"version {v} is gone: the log was truncated {where} since this checkout "
                f"was made at fork {fork} (now fork {self._s._fork()})"
            )

    def _local(self, seq: int) -> Block | None:
        """Return block `seq` from the cache or local storage, without waiting, or None."""
        if self._fixed is not None:
            self._check_version()
        b = self._s.cache.get(seq)
        if b is not None:
            return b
        if seq == 0:
            b = header_block()
        else:
            data = self._read_nowait(seq)
            if data is None:
                return None
            b = decode_block(data, seq)
        self._s.cache.put(b)
        return b

    def _read_nowait(self, seq: int) -> bytes | None:
        """Block `seq`'s bytes from local storage without waiting (counted as a
        fetch), or None if it is not held here."""
        if self._s.get_nowait is None:
            return None
        try:
            data = self._s.get_nowait(seq)
        except Exception:  # not held locally (or damaged): the async get decides
            return None
        self._s.fetches += 1
        return data

    def _admit(self, seq: int, data: bytes, *, keep: bool = True) -> Block | LazyBlock:
        """Cache block `seq` read as `data` for a get: a large one stays encoded.
        With `keep` False only decode it (a read that a new fork overtook)."""
        if len(data) >= LAZY_BLOCK_BYTES and type(data) is bytes:
            lazy = LazyBlock(seq, data)
            if keep:
                self._s.cache.put_lazy(lazy)
            return lazy
        b = decode_block(data, seq)
        if keep:
            self._s.cache.put(b)
        return b

    def _local_read(self, seq: int) -> Block | LazyBlock | None:
        """`_local` for a get's lookup: a large block read now is kept encoded."""
        if self._fixed is not None:
            self._check_version()
        cache = self._s.cache
        rec = cache.decoded(seq)
        if rec is None:
            got = cache.kept(seq)
            if type(got) is LazyBlock:
                return got
            rec = got
        if rec is not None:
            return Block.from_record(rec)
        if seq == 0:
            return self._local(0)
        data = self._read_nowait(seq)
        return None if data is None else self._admit(seq, data)

    async def _fetch_read(self, seq: int) -> Block | LazyBlock:
        """`_fetch` for a get's lookup and prefetches (see `_local_read`)."""
        b = self._local_read(seq)
        if b is not None:
            return b
        self._s.fetches += 1
        fork = self._s._fork()
        data = await self._s.log.get(seq)
        if self._fixed is not None:
            self._check_version()  # (cut during the read)
        # A truncation during the read (and a `check_fork` by another task, which
        # emptied the cache) must not let a block of the old fork back into the cache.
        return self._admit(seq, data, keep=self._s._fork() == fork)

    async def _fetch(self, seq: int) -> Block:
        b = self._local(seq)
        if b is not None:
            return b
        self._s.fetches += 1
        fork = self._s._fork()
        b = decode_block(await self._s.log.get(seq), seq)
        if self._fixed is not None:
            self._check_version()
        if self._s._fork() == fork:  # (as in `_fetch_read`)
            self._s.cache.put(b)
        return b

    async def _root(self) -> Block:
        self._s.check_fork()
        v = self.version
        return header_block() if v <= 1 else await self._fetch(v - 1)

    async def _run(self, steps: Generator[int, Block, T]) -> T:
        try:
            seq = next(steps)
            while True:
                seq = steps.send(await self._fetch(seq))
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _drive(self, steps: Generator[Any, Block | None, None]) -> AsyncGenerator[Any, None]:
        sent: Block | None = None
        while True:
            try:
                got = steps.send(sent)
            except StopIteration:
                return
            if type(got) is int:
                sent = await self._fetch(got)
            else:
                sent = None
                yield got

    # -- reads ----------------------------------------------------------------------

    async def get(self, key: str, *, hint: Sequence[int] | None = None) -> V | None:
        """Return the value of `key`, or None if it is absent.

        On a sparse replica the blocks of the key's path that are not held are fetched
        from peers through the log's `get`, which waits for them as long as it takes:
        with the writer gone (no peer serving the log) this waits until cancelled. An
        app that may be offline bounds it: ``with trio.move_on_after(5): ...``.

        Args:
          key: a ``/``-separated path.
          hint: block numbers a peer said this lookup reads (`path_hint`); they are
            fetched concurrently first, so a sparse replica needs one round trip.

        Raises:
          InvalidKeyError: `key` is not a valid path.
          CorruptNodeError: a block on the way is not a valid HAMT block.
        """
        check_key(key)
        if hint:
            await self._prefetch(hint, best_effort=True)
        source = self._s.hints if hint is None else None
        self._s.check_fork()
        v = self.version
        root_block = None if v <= 1 else self._local_read(v - 1)
        if source is not None and v > 1 and root_block is None:
            await self._ask_hint(source, key, v)
            source = None
        root = header_block() if v <= 1 else root_block or await self._fetch_read(v - 1)
        steps = lookup(root, key, self._s.hasher.path(key), self._s.cache)
        try:
            seq = next(steps)
            while True:
                b = self._local_read(seq)
                if b is None and source is not None:
                    # The first block this get cannot read locally: ask a peer for the
                    # whole path once and fetch it all at once.
                    await self._ask_hint(source, key, v)
                    source = None
                    b = self._local_read(seq)
                seq = steps.send(b if b is not None else await self._fetch_read(seq))
        except StopIteration as stop:
            data: bytes | None = stop.value
        return None if data is None else self._codec.decode(data)

    async def _ask_hint(self, source: HintSource, key: str, version: int) -> None:
        log = self._s.log
        try:
            # Bounded: a peer that never answers costs a get `hint_timeout` seconds, then
            # the get reads plainly (the client skips the answer if it comes later).
            with trio.move_on_after(self._s.hint_timeout) as waited:
                if can_apply(log) and version == log.length:
                    # Ask for the blocks with proofs too: one round trip instead of two.
                    fork: int | None = getattr(log, "fork")  # noqa: B009 (duck-typed hyperlog.Log)
                    reply = await source.path_hint(key, version, fork)
                else:
                    fork = None
                    reply = await source.path_hint(key, version)
            if waited.cancelled_caught:
                logger.debug("path hint for %r: no answer in %s s", key, self._s.hint_timeout)
                return
            if fork is not None and reply.proofs:
                # The verified blocks go to the cache as they came: no re-read from
                # storage (and no re-hash of its checksum) before the walk.
                for p in await apply_block_proofs(log, fork, reply.proofs):
                    if 0 < p.index < version and p.index not in self._s.cache:
                        self._admit_hinted(p.index, p.value)
        except (HamtError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A hint is an optimization: a failed or vanished hint peer means plain
            # fetches, never a failed get.
            logger.debug("path hint for %r failed: %s", key, exc)
            return
        await self._prefetch(reply.blocks, best_effort=True)

    def _admit_hinted(self, seq: int, data: bytes) -> None:
        try:
            self._admit(seq, data)
        except HamtError as exc:  # read again (and reported) if the walk needs it
            logger.debug("hinted block %d not cached: %s", seq, exc)
        else:
            self._s.fetches += 1

    async def path_hint(self, key: str) -> list[int]:
        """Return the blocks a lookup of `key` reads, root first (serve this to sparse peers)."""
        check_key(key)
        root = await self._root()
        return await self._run(path_blocks(root, self._s.hasher.path(key), self._s.cache))

    async def prefetch(self, seqs: Sequence[int]) -> None:
        """Fetch blocks `seqs` into the cache, all at once."""
        await self._prefetch(seqs, best_effort=False)

    async def _prefetch(self, seqs: Sequence[int], *, best_effort: bool) -> None:
        """`prefetch`; with `best_effort` (a hint's blocks) a block that cannot be read
        is skipped, not raised: the walk reports the error of a block it really needs,
        and a hint naming a bad block off the key's path fails nothing."""
        cache = self._s.cache
        want = sorted({s for s in seqs if 0 < s < self.version and s not in cache})
        if not want:
            return
        fetch = self._fetch_quietly if best_effort else self._fetch_read
        if len(want) == 1:
            await fetch(want[0])
            return
        async with trio.open_nursery() as nursery:
            for s in want:
                nursery.start_soon(fetch, s)

    async def _fetch_quietly(self, seq: int) -> None:
        try:
            await self._fetch_read(seq)
        except Exception as exc:  # (not cancellation) see `_prefetch`
            logger.debug("hinted block %d not prefetched: %s", seq, exc)

    async def items(self, prefix: str = "") -> AsyncIterator[tuple[str, V]]:
        """Iterate over ``(key, value)`` of every key under `prefix` (all keys by default).

        `prefix` is a path: ``"users"`` lists ``users`` itself and ``users/...``. The
        order is hash order: stable, not sorted.
        """
        parts = split_prefix(prefix)
        root = await self._root()
        hasher = self._s.hasher
        if parts:
            path, depth = hasher.prefix_path(parts)
            want = "/".join(parts)
            steps = iterate(root, self._s.cache, hasher.path, path, depth)
        else:
            want = ""
            steps = iterate(root, self._s.cache, hasher.path)
        async for item in self._drive(steps):
            assert isinstance(item, Item)
            k = item.key
            if not want or k == want or k.startswith(want + "/"):
                yield k, self._codec.decode(item.value)

    def __aiter__(self) -> AsyncIterator[tuple[str, V]]:
        return self.items()

    async def diff(self, left: int, right: int | None = None) -> AsyncIterator[DiffEntry[V]]:
        """Iterate over the keys whose values differ between versions `left` and `right`.

        `right` defaults to this view's version. Unchanged subtrees are skipped unread.
        """
        self._s.check_fork()  # blocks cached from an older fork must not answer
        r = self.version if right is None else right
        for v in (left, r):
            if not 1 <= v <= self._s.log.length:
                raise ValueError(f"version {v} not in 1..{self._s.log.length}")
        lb = header_block() if left <= 1 else await self._fetch(left - 1)
        rb = header_block() if r <= 1 else await self._fetch(r - 1)
        dec = self._codec.decode
        async for d in self._drive(diff(lb, rb, self._s.cache, self._s.hasher.path)):
            assert isinstance(d, DiffItem)
            yield DiffEntry(
                d.key,
                None if d.left is None else dec(d.left),
                None if d.right is None else dec(d.right),
            )

    async def history(self, since: int = 1, until: int | None = None) -> AsyncIterator[Change[V]]:
        """Iterate over the changes after version `since` up to version `until`, oldest first.

        `until` defaults to this view's version; ``history(v1, v2)`` lists what
        ``diff(v1, v2)`` summarizes. A batch's changes share one version. Entries
        re-homed by a delete are not changes and are not reported.
        """
        self._s.check_fork()
        stop = self.version if until is None else min(until, self.version)
        for seq in range(max(since, 1), stop):
            for change in self._changes(await self._fetch(seq)):
                yield change

    def _changes(self, block: Block) -> list[Change[V]]:
        out: list[Change[V]] = []
        for op in block.ops:
            if len(op) == 1:
                out.append(Change(block.seq + 1, op[0], None))
            elif len(op) == 2:
                out.append(Change(block.seq + 1, op[0], self._codec.decode(op[1])))
        return out

    def watch(self) -> AsyncGenerator[Change[V], None]:
        """Iterate over every change made after this call, until the HAMT closes.

        Local writes wake the watcher at once; so do appends that replication makes,
        for a log with ``wait_length`` (a `hyperlog.Log`); otherwise call `refresh()`.
        Close the iterator when you stop early: ``async with aclosing(db.watch()) as it``.

        After a truncation (a new fork) the watcher goes on from the cut: it reports
        every change of the new fork's blocks, from the first block past the cut (from
        block 1 on a log that does not say where it was cut). The old fork's changes
        past the cut are not reported undone.
        """
        return self._watch(self._s.log.length)

    async def _watch(self, seen: int) -> AsyncGenerator[Change[V], None]:
        s = self._s
        fork = s._fork()
        while not s.closed:
            event = s.changed()
            while True:
                if s._fork() != fork:
                    # A new fork: its blocks from the cut on are changes not reported yet.
                    seen = max(1, min(seen, s.kept(fork, seen)))
                    fork = s._fork()
                s.check_fork()
                if seen >= s.log.length:
                    break
                block = await self._fetch(seen)
                if s._fork() != fork:
                    continue  # truncated during the read: the block may be the old fork's
                for change in self._changes(block):
                    yield change
                seen += 1
            await self._wait_change(event, seen + 1)

    async def _wait_change(self, event: trio.Event, length: int) -> None:
        wait_length = self._s.wait_length
        if wait_length is None:
            await event.wait()
            return
        async with trio.open_nursery() as nursery:

            async def first(fn: Callable[[], Awaitable[object]]) -> None:
                await fn()
                nursery.cancel_scope.cancel()

            nursery.start_soon(first, event.wait)
            nursery.start_soon(first, lambda: wait_length(length))

    def _close(self) -> None:
        self._s.closed = True
        self._s.stop_listening()
        self._s.notify()

    def refresh(self) -> None:
        """Wake `watch()` iterators: call this when the log grew by replication."""
        self._s.notify()

    # -- writes ---------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._fixed is not None:
            raise ReadOnlyError("a checkout is read-only")
        if not self._s.writable():
            raise ReadOnlyError("the log is not writable")

    def _encode_value(self, value: V) -> bytes:
        data = self._codec.encode(value)
        if len(data) > MAX_VALUE_BYTES:
            raise ValueTooLargeError(f"value of {len(data)} bytes exceeds {MAX_VALUE_BYTES}")
        return data

    async def put(self, key: str, value: V) -> None:
        """Set `key` to `value`: one block appended.

        Raises:
          InvalidKeyError, ValueTooLargeError: bad input (nothing is written).
          ReadOnlyError: this is a checkout, or the log is not writable.
        """
        if self._fixed is not None or not self._s.writable():
            self._check_writable()
        check_key(key)
        data = self._codec.encode(value)
        if len(data) > MAX_VALUE_BYTES:
            raise ValueTooLargeError(f"value of {len(data)} bytes exceeds {MAX_VALUE_BYTES}")
        await self._apply(((key, data),))

    async def delete(self, key: str) -> bool:
        """Remove `key`: one block appended if it was present. Return whether it was."""
        self._check_writable()
        check_key(key)
        return await self._apply([(key, None)])

    def batch(self) -> Batch[V]:
        """Return a `Batch`: ``async with hamt.batch() as b: b.put(k, v)``, one block at exit."""
        self._check_writable()
        return Batch(self)

    async def _apply(self, ops: Sequence[tuple[str, bytes | None]]) -> bool:
        s = self._s
        path = s.hasher.path
        # Uncontended: take the lock without a scheduling round trip (the log's append
        # checkpoints anyway); contended: wait in line.
        try:
            s.lock.acquire_nowait()
        except trio.WouldBlock:
            await s.lock.acquire()
        try:
            if s.closed:
                raise trio.ClosedResourceError("the HAMT is closed")
            s.check_fork()
            length = s.log.length
            # The writer's retained trie is the base when the log is still exactly where
            # our last write left it (same fork and length); it is taken either way, so
            # a write that fails halfway cannot leave a half-changed tree behind.
            base: Block | Retained | None = s.retained
            s.retained = None
            if base is None or s.retained_at != (s.fork, length):
                base = header_block() if length <= 1 else await self._fetch(length - 1)
            m = Mutation(base, length, path, s.cache)
            for key, data in ops:
                steps = m.delete(key, path(key)) if data is None else m.put(key, data, path(key))
                # Run synchronously while every block is cached (the usual case).
                try:
                    seq = next(steps)
                except StopIteration:
                    continue
                while True:
                    try:
                        seq = steps.send(await self._fetch(seq))
                    except StopIteration:
                        break
            if not m.changed:
                return False  # (the retained tree was taken: the next write rebuilds it)
            block_bytes, block = m.encode()
            # The block's pointers are relative to position `length`: if anything else
            # appended meanwhile (a writer outside this module; HAMTs share the lock),
            # it must not go in at another position.
            if s.log.length != length or s._fork() != s.fork:
                raise HamtError("the log changed under the HAMT (another writer?)")
            # (`_check_writable` passed: the log is a `LogLike` that takes appends)
            await cast(LogLike, s.log).append([block_bytes])
            if s.log.length != length + 1:
                raise HamtError("the log changed under the HAMT (another writer?)")
            s.cache.put(block)
            s.retained = m.retained()
            s.retained_at = (s.fork, length + 1)
        finally:
            s.lock.release()
        s.notify()
        return True


@final
class Batch(Generic[V]):
    """Operations applied atomically as one block when the ``async with`` body ends.

    Nothing is written if the body raises. Later ops on a key win over earlier ones.
    """

    def __init__(self, hamt: Hamt[V]) -> None:
        self._hamt = hamt
        self._ops: list[tuple[str, bytes | None]] = []
        self._bytes = 0
        self._done = False

    def _add(self, key: str, data: bytes | None) -> None:
        if self._done:
            raise HamtError("this batch was already applied")
        check_key(key)
        if len(self._ops) >= MAX_BATCH_OPS:
            raise BatchTooLargeError(f"more than {MAX_BATCH_OPS} ops in one batch")
        self._bytes += len(key) + (0 if data is None else len(data))
        if self._bytes > MAX_BLOCK_BYTES:
            raise BatchTooLargeError(f"batch exceeds {MAX_BLOCK_BYTES} bytes")
        self._ops.append((key, data))

    def put(self, key: str, value: V) -> None:
        """Queue a put."""
        self._add(key, self._hamt._encode_value(value))

    def delete(self, key: str) -> None:
        """Queue a delete (a no-op if the key is absent when the batch applies)."""
        self._add(key, None)

    async def flush(self) -> bool:
        """Apply the queued ops now (one block); return whether a block was written."""
        self._done = True
        return await self._hamt._apply(self._ops)

    async def __aenter__(self) -> Batch[V]:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and not self._done:
            await self.flush()


@overload
def open_hamt(
    log: ReadableLog,
    *,
    codec: None = None,
    hash_function: ComponentHash | None = None,
    cache_blocks: int = DEFAULT_CACHE_BLOCKS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    metadata: bytes | None = None,
    hints: HintSource | None = None,
    hint_timeout: float = HINT_TIMEOUT,
) -> AbstractAsyncContextManager[Hamt[bytes]]: ...


@overload
def open_hamt(
    log: ReadableLog,
    *,
    codec: Codec[V],
    hash_function: ComponentHash | None = None,
    cache_blocks: int = DEFAULT_CACHE_BLOCKS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    metadata: bytes | None = None,
    hints: HintSource | None = None,
    hint_timeout: float = HINT_TIMEOUT,
) -> AbstractAsyncContextManager[Hamt[V]]: ...


def open_hamt(
    log: ReadableLog,
    *,
    codec: Codec[Any] | None = None,
    hash_function: ComponentHash | None = None,
    cache_blocks: int = DEFAULT_CACHE_BLOCKS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    metadata: bytes | None = None,
    hints: HintSource | None = None,
    hint_timeout: float = HINT_TIMEOUT,
) -> AbstractAsyncContextManager[Hamt[Any]]:
    """Open the HAMT stored in `log`: ``async with open_hamt(log) as db: ...``.

    An empty writable log gets a header block (block 0) first. Otherwise block 0 is
    read (from peers, for a replica) and checked. A replica that is still empty (it
    has not heard the writer's length yet: `replicate` just started) waits for block 0
    from its peers, as its `get` does; bound it with `trio.fail_after`. A peer that
    never serves the log (a mistyped key) is waited for until cancelled: `await
    replication_for(log).wait_for_peers()` first fails at once with `NoPeersError`.

    Args:
      log: a `LogLike` (e.g. a `hyperlog.Log`, or a `MemoryLog`); for a read-only HAMT
        a `ReadableLog` is enough (e.g. a `hyperlog.LogSnapshot`): its `writable` is
        False and writes raise `ReadOnlyError`.
      codec: how values become bytes (default: values are bytes); see `hamt.codec`.
      hash_function: replaces the keyed BLAKE2b of path components (tests use it to
        force collisions). Every reader of a HAMT must use the same one.
      cache_blocks, cache_bytes: limits of the decoded-block LRU cache.
      metadata: stored in the header when the HAMT is created.
      hints: a `PathHintClient` to a peer holding the HAMT: a get that misses a local
        block asks it for the whole path once and fetches that at once.
      hint_timeout: seconds a get waits for the hint peer's answer before it reads
        without one (`HINT_TIMEOUT`, 2 s).

    Raises:
      CorruptNodeError: block 0 is not a HAMT header.
      ReadOnlyError: the log is empty, not writable, and cannot fetch block 0 (no
        replicator attached, or a snapshot).
    """
    return _open(
        log, codec, hash_function, cache_blocks, cache_bytes, metadata, hints, hint_timeout
    )


async def load_hamt(
    log: ReadableLog,
    codec: Codec[Any] | None = None,
    hash_function: ComponentHash | None = None,
    cache_blocks: int = DEFAULT_CACHE_BLOCKS,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    metadata: bytes | None = None,
    hints: HintSource | None = None,
    hint_timeout: float = HINT_TIMEOUT,
) -> Hamt[Any]:
    """`open_hamt` without the context: for tests that span several `trio.run` calls."""
    if log.length == 0 and getattr(log, "writable", False) is True:
        await cast(LogLike, log).append([encode_header(os.urandom(SALT_BYTES), metadata)])
        first = await log.get(0)
    elif log.length == 0:
        # A replica that has not heard the writer's length yet (just after `replicate`
        # started): its `get` waits for block 0 from peers, as every read of a sparse
        # replica does. A log that cannot fetch it (no replicator, a snapshot) says
        # "no such block" (a LookupError: hyperlog's BlockNotAvailableError, a list's
        # IndexError); anything else (storage, a closed log) propagates as it is.
        try:
            first = await log.get(0)
        except LookupError as exc:
            raise ReadOnlyError(
                f"the log is empty and not writable: nothing to open ({exc})"
            ) from exc
    else:
        first = await log.get(0)
    header = decode_header(first)
    hasher = Hasher(derive_hash_key(log.key, header.salt), hash_function)
    shared = _Shared(log, hasher, BlockCache(cache_blocks, cache_bytes), hints, hint_timeout)
    return Hamt(shared, codec if codec is not None else BYTES, None)


@asynccontextmanager
async def _open(
    log: ReadableLog,
    codec: Codec[Any] | None,
    hash_function: ComponentHash | None,
    cache_blocks: int,
    cache_bytes: int,
    metadata: bytes | None,
    hints: HintSource | None,
    hint_timeout: float,
) -> AsyncGenerator[Hamt[Any], None]:
    hamt = await load_hamt(
        log, codec, hash_function, cache_blocks, cache_bytes, metadata, hints, hint_timeout
    )
    try:
        yield hamt
    finally:
        hamt._close()
