"""`Store` and `open_store`: the logs of one storage, one `Log` object per key.

Not to be confused with `hyperlog.storage`, the persistence layer (SQLite and memory
backends: blocks, nodes, bitfield pages, heads). A `Store` is what applications open:
it owns one `Storage`, creates writable logs and opens readers' logs in it, hands out a
single `Log` per key (so an application, a replicator and a HAMT share state and
events), and on close stores the writers' pending signatures and closes the storage.

`Log` is imported where a log is built, not at the top: `hyperlog.log` imports this
module to re-export `Store` and `open_store`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, final

import trio

from .constants import DEFAULT_LOG_META
from .crypto import KeyPair, Manifest, Verifier, default_manifest, discovery_key
from .errors import HyperlogError
from .storage import (
    PAGE_SIZE,
    Durability,
    LogInfo,
    MemoryStorage,
    SQLiteStorage,
    Storage,
    StoredLog,
)

if TYPE_CHECKING:
    from .log import Log

__all__ = ["Store", "open_store"]


@final
class Store:
    """Many logs in one storage. Get one from `open_store`.

    Each key maps to a single `Log` object for as long as the store is open.
    """

    def __init__(self, storage: Storage, path: str | None = None) -> None:
        """Internal: use `open_store`."""
        self.storage = storage
        self.path = path
        self._logs: dict[bytes, Log] = {}
        self._opening = trio.Lock()
        self._closed = False

    @property
    def readonly(self) -> bool:
        """True if the store was opened read-only."""
        return self.storage.readonly

    def keys(self) -> list[bytes]:
        """Return the keys of every log in the store, oldest first."""
        return self.storage.list_logs()

    def _check_open(self) -> None:
        if self._closed:
            raise HyperlogError("the store is closed")

    async def create_log(self, key_pair: KeyPair | None = None, *, compat: bool = False) -> Log:
        """Create a writable log signed by ``key_pair`` (a fresh one if None).

        Args:
            key_pair: the ed25519 key pair; its secret key is stored with the log.
            compat: hypercore's legacy mode (key = the public key) instead of the
                default v1 manifest.

        Raises:
            ValueError: if the store already has this log, or the key pair has no secret.
        """
        from .crypto import key_pair as new_key_pair
        from .log import Log  # deferred: hyperlog.log imports this module

        self._check_open()
        kp = key_pair if key_pair is not None else new_key_pair()
        if kp.secret_key is None:
            raise ValueError("creating a writable log needs a secret key")
        verifier = (
            Verifier.compat(kp.public_key)
            if compat
            else Verifier.from_manifest(default_manifest(kp.public_key))
        )
        info = LogInfo(
            verifier.key, discovery_key(verifier.key), verifier.manifest.encode(), kp.secret_key
        )
        # under the opening lock, and the log with its default mark in one worker call:
        # two tasks creating logs at once both saw no default and both set one, and a
        # cancellation between the two steps left the new log stored but not the default
        async with self._opening:
            stored = await trio.to_thread.run_sync(self._create_stored, info)
            log = Log(self, stored)
            self._logs[info.key] = log
        return log

    def _create_stored(self, info: LogInfo) -> StoredLog:
        """Store a new log, and make it the default if the store has none (worker thread)."""
        stored = self.storage.create_log(info)
        if self.storage.get_meta(DEFAULT_LOG_META) is None:
            self.storage.set_meta(DEFAULT_LOG_META, info.key)
        return stored

    async def open_log(
        self, key: bytes, *, manifest: Manifest | bytes | None = None, create: bool = True
    ) -> Log:
        """Return the log with this key, as a reader if it is new to this store.

        Args:
            key: the 32-byte log key (or, for a log already stored, its discovery key).
            manifest: the log's manifest when known (checked against the key); a
                reader learns it from the first proof otherwise.
            create: add the log as an empty reader if the store does not have it.

        Raises:
            KeyError: if the log is not stored and ``create`` is False.
            InvalidSignatureError: if ``manifest`` does not belong to ``key``.
            CorruptStorageError: if the stored head does not verify.
        """
        self._check_open()
        log = self._logs.get(key)
        if log is not None:
            return log
        # one opening at a time: two tasks opening one key got two `Log` objects, whose
        # appends then wrote two different blocks and heads at the same index
        async with self._opening:
            return await self._open_log(key, manifest, create)

    async def _open_log(self, key: bytes, manifest: Manifest | bytes | None, create: bool) -> Log:
        log = self._logs.get(key)  # another task may have opened it meanwhile
        if log is not None:
            return log
        stored = await trio.to_thread.run_sync(self.storage.find_log, key)
        if stored is None:
            if not create or self.storage.readonly:
                raise KeyError(f"no log with key {key.hex()} in this store")
            if len(key) != 32:
                raise ValueError("a log key is 32 bytes")
            encoded = None
            if manifest is not None:
                encoded = Verifier.for_key(key, manifest).manifest.encode()
            info = LogInfo(key, discovery_key(key), encoded, None)
            stored = await trio.to_thread.run_sync(self._create_stored, info)
        log = self._logs.get(stored.info.key)
        if log is None:
            from .log import Log  # deferred: hyperlog.log imports this module

            log = Log(self, stored)
            await trio.to_thread.run_sync(log._load, stored.head)
            self._logs[stored.info.key] = log
        return log

    async def default_log(self) -> Log:
        """Return the store's first log (the one the ``hyperlog`` command works on).

        Raises:
            KeyError: if the store holds no log.
        """
        key = self.storage.get_meta(DEFAULT_LOG_META)
        if key is None:
            keys = self.keys()
            if not keys:
                raise KeyError("the store holds no log")
            key = keys[0]
        return await self.open_log(key, create=False)

    async def check(self, *, full: bool = False) -> None:
        """Run the storage's structural check (in a worker thread).

        Raises:
            CorruptStorageError: if the database is damaged.
        """
        await trio.to_thread.run_sync(lambda: self.storage.check(full=full))

    async def aclose(self) -> None:
        """Close every log and the storage. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for log in self._logs.values():
            log._store_signature_on_close()
            log._close()
        await trio.to_thread.run_sync(self.storage.close)


@contextlib.asynccontextmanager
async def open_store(
    path: str | os.PathLike[str] | Storage | None = None,
    *,
    readonly: bool = False,
    create: bool = True,
    durability: Durability = "process",
    page_size: int = PAGE_SIZE,
) -> AsyncIterator[Store]:
    """Open a store folder (SQLite), a `Storage` you built, or (None) a memory store.

    ``async with open_store("data/") as store: log = await store.create_log()``.

    Args:
        path: a folder, a `Storage` object, or None for a fresh `MemoryStorage`.
        readonly: open a folder without the write lock; writes raise `NotWritableError`.
        create: create the folder and database if missing.
        durability: ``"process"`` or ``"power"`` (see `hyperlog.storage`).
        page_size: the SQLite page size of a new store folder (`SQLiteStorage`):
            4096 suits logs of small single appends, the default 16 KiB 1 KiB blocks.

    Raises:
        ValueError: if ``durability`` or ``page_size`` is out of range.
        StorageLockedError: if another writer has the folder open.
        CorruptStorageError: if the database is not a hyperlog store or is damaged.
        FileNotFoundError: if the folder has no store and ``create`` is False.
    """
    if path is None:
        storage: Storage = MemoryStorage()
        where = None
    elif isinstance(path, str | os.PathLike):
        folder = where = os.fspath(path)
        storage = await trio.to_thread.run_sync(
            lambda: SQLiteStorage(
                folder,
                readonly=readonly,
                create=create,
                durability=durability,
                page_size=page_size,
            )
        )
    else:
        storage = path
        where = None
    store = Store(storage, where)
    try:
        yield store
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
