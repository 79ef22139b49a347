"""`SQLiteStorage`: the default backend, one SQLite database in WAL mode per store folder.

Opening (the write lock, connections, pragmas, schema creation and upgrades), reads
that check every block against its checksum, commits in one transaction each, and
the background WAL checkpointer. The row format it reads and writes is in
`hyperlog.storage_schema`; the theory of operation is the docstring of
`hyperlog.storage`: "the module docstring" below means that one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final, final

from .crypto import TreeNode, parent_node
from .errors import CorruptStorageError, HyperlogError, StorageLockedError
from .storage_schema import (
    _BLOCK_SHIFT,
    _CLEAR_HEAD,
    _HEAD,
    _HEAD_SLOT,
    _INSERT_MANY,
    _INSERT_ONE,
    _NO_PARENTS,
    _NODE_LIMIT,
    _NODE_SHIFT,
    _PARENT_SLOT,
    _SCHEMA,
    _SIZE,
    _STATE_SHIFT,
    _UPSERT_MANY,
    _UPSERT_ONE,
    APPLICATION_ID,
    CHECKSUM_SIZE,
    FULL_HASH_ABOVE,
    HEAD_IN_BLOCK_MAX,
    MAX_BLOCK_INDEX,
    MAX_LOGS_PER_STORE,
    OLDEST_SCHEMA_VERSION,
    SCHEMA_VERSION,
    _check_batch,
    _decode_head,
    _encode_head,
    _matches,
    _parents_by_block,
    _stored_sum,
    _truncated_nodes,
)
from .storage_types import Durability, Head, LogInfo, StoredLog, WriteBatch

__all__ = [
    "CACHE_KIB",
    "CHECKPOINT_CACHE_KIB",
    "CHECKPOINT_EVERY_BYTES",
    "DB_FILENAME",
    "LOCK_FILENAME",
    "MAX_META_SIZE",
    "MAX_PAGE_SIZE",
    "MIN_PAGE_SIZE",
    "PAGE_SIZE",
    "SQLiteStorage",
    "WAL_AUTOCHECKPOINT_PAGES",
    "WAL_RESTART_BYTES",
    "WRITE_CACHE_KIB",
]

#: The database file inside a store folder.
DB_FILENAME: Final = "hyperlog.sqlite3"
#: The lock file that makes a store single-writer.
LOCK_FILENAME: Final = "hyperlog.lock"
#: Page size for new databases. A 1 KiB block plus its row header is just over 1 KiB,
#: so 4 KiB pages hold 3 (25% slack) and 16 KiB pages 15 (4%). Every commit writes its
#: dirty pages whole into the WAL, so larger pages cost single appends; 16 KiB measured
#: best overall (1 KiB blocks: +9.5% on disk; 64 KiB blocks: +3.3%).
PAGE_SIZE: Final = 16384
#: Smallest and largest ``page_size`` a new store may ask for (SQLite's own bounds are
#: 512 and 65536; below 4 KiB a page is smaller than the file system's).
MIN_PAGE_SIZE: Final = 4096
MAX_PAGE_SIZE: Final = 65536
#: Page cache per connection, in KiB (SQLite's negative ``cache_size``).
CACHE_KIB: Final = 32 * 1024
#: Page cache of the write connection: it only walks the right edge of each B-tree.
WRITE_CACHE_KIB: Final = 8 * 1024
#: Page cache of the checkpoint connection (it copies WAL frames, caching nothing).
CHECKPOINT_CACHE_KIB: Final = 1024
#: WAL size (pages) after which a commit checkpoints it itself: only a safety net, in
#: case the background checkpointer falls behind (16,384 pages of 16 KiB = 256 MiB).
WAL_AUTOCHECKPOINT_PAGES: Final = 16384
#: Bytes committed after which the background thread checkpoints the WAL.
CHECKPOINT_EVERY_BYTES: Final = 8 * 1024 * 1024
#: WAL size after which the writer finishes a background checkpoint itself, so that
#: the next commit writes the WAL from its start again. A checkpoint running beside a
#: busy writer never copies the frames written meanwhile, and SQLite only starts the
#: WAL over once every frame is copied: without this step the WAL grew to the
#: auto-checkpoint size (256 MiB) and every commit appended to a growing file (~10 us
#: more CPU per single append, and a long inline checkpoint at 256 MiB).
WAL_RESTART_BYTES: Final = 32 * 1024 * 1024
#: Commits after which `SQLiteStorage.commit` finishes a due checkpoint itself, when
#: nobody called `SQLiteStorage.maintain` (the log always does, off the event loop).
_MAINTAIN_WITHIN_COMMITS: Final = 1000
#: Longest store-level metadata value.
MAX_META_SIZE: Final = 64 * 1024

# the name it had before `hyperlog.storage` was split, so logging setups still match
logger = logging.getLogger("hyperlog.storage")

_IN_CHUNK: Final = 500  # ids per "IN (...)" query, well under SQLite's variable limit
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26

#: Blobs up to this size are written as `bytearray` copies. Python 3.11's `sqlite3`
#: binds a bytearray directly but runs its adaptation-protocol lookup for every
#: `bytes` parameter (~0.3 us each): measured A/B, batches of 1,000 x 1 KiB took
#: 8.9-10.4 instead of 10.0-11.3 us of CPU per block. Above a few KiB the copy costs
#: more than the lookup.
_BIND_COPY_MAX: Final = 4096


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _has_content(conn: sqlite3.Connection) -> bool:
    """Return True unless the database is empty: no table, no application id."""
    (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    return bool(tables or app_id)


@contextlib.contextmanager
def _reporting_corruption(path: object) -> Iterator[None]:
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if _is_corruption(exc):
            raise CorruptStorageError(f"database {path} is corrupted: {exc}") from exc
        raise


@final
class SQLiteStorage:
    """The embedded default: one SQLite database per store folder.

    Args:
        path: the store folder (created if ``create`` and missing).
        readonly: open without the write lock and refuse writes.
        create: create the folder and database if they do not exist.
        durability: ``"process"`` (WAL, ``synchronous=NORMAL``: survives a killed
            process) or ``"power"`` (``synchronous=FULL``: also survives power loss).
        page_size: the SQLite page size of a *new* database (a power of two from
            `MIN_PAGE_SIZE` to `MAX_PAGE_SIZE`; an existing store keeps its own).
            Every commit writes each page it dirties whole into the WAL, so a store
            of small single appends (a HAMT's ~300-byte blocks) commits faster with
            4 KiB pages; 16 KiB (the default) packs 1 KiB blocks with 4% slack
            instead of 25% (docs/hyperlog-storage.md).

    Raises:
        ValueError: if ``durability`` or ``page_size`` is not one of the above.
        StorageLockedError: if another writer holds the store.
        CorruptStorageError: if the file is not a hyperlog database or is damaged.
        FileNotFoundError: if the store does not exist and ``create`` is False.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        create: bool = True,
        durability: Durability = "process",
        page_size: int = PAGE_SIZE,
    ) -> None:
        if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
            raise ValueError(
                f"page_size must be a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}, "
                f"not {page_size!r}"
            )
        self.path = Path(path)
        self.db_path = self.path / DB_FILENAME
        self._readonly = readonly
        self._lock_fd: int | None = None
        self._closed = False
        self._ckpt_conn: sqlite3.Connection | None = None
        self._ckpt_thread: threading.Thread | None = None
        self._ckpt_wake = threading.Event()
        self._ckpt_pending = 0
        self._ckpt_restart_due = False
        self._ckpt_commits_waited = 0
        self._page_size = page_size  # (the database's own, once open)
        self._wlock = threading.Lock()
        self._rlock = threading.Lock()
        # handle -> index of the block whose row holds the log's head (see the module
        # docstring); a log missing here keeps its head in `state`
        self._embedded: dict[int, int] = {}
        self._heads_in_blocks = True
        self._parents_in_blocks = True
        if durability not in ("process", "power"):
            raise ValueError(f"durability must be 'process' or 'power', not {durability!r}")
        exists = self.db_path.exists()
        if not exists and (readonly or not create):
            raise FileNotFoundError(f"no hyperlog store at {self.path}")
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        try:
            with _reporting_corruption(self.db_path):
                self._open(exists, durability)
        except BaseException:
            self.close()
            raise

    def _take_lock(self) -> None:
        fd = os.open(self.path / LOCK_FILENAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise StorageLockedError(
                f"store {self.path} is already open for writing (process {holder})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _connect(self, readonly: bool, cache_kib: int = CACHE_KIB) -> sqlite3.Connection:
        if readonly:
            uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA cache_size = -{cache_kib}")
        return conn

    def _open(self, exists: bool, durability: Durability) -> None:
        if not self._readonly:
            self._w = self._connect(False, WRITE_CACHE_KIB)
            w = self._w
            if exists and not _has_content(w):
                exists = False  # a creation cut short before its schema committed
            if not exists:
                os.chmod(self.db_path, 0o600)  # the database holds the writer's secret key
                w.execute(f"PRAGMA page_size = {self._page_size}")
            w.execute("PRAGMA journal_mode = WAL")
            w.execute("PRAGMA synchronous = " + ("FULL" if durability == "power" else "NORMAL"))
            w.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
            w.execute("PRAGMA journal_size_limit = 67108864")
            self._ckpt_conn = self._connect(False, CHECKPOINT_CACHE_KIB)
            self._ckpt_conn.execute(
                "PRAGMA synchronous = " + ("FULL" if durability == "power" else "NORMAL")
            )
            self._ckpt_thread = threading.Thread(
                target=self._checkpointer, name=f"hyperlog-checkpoint {self.path}", daemon=True
            )
            self._ckpt_thread.start()
            if not exists:
                w.execute("BEGIN IMMEDIATE")
                for stmt in _SCHEMA:
                    w.execute(stmt)
                w.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                w.execute("COMMIT")
        self._r = self._connect(self._readonly)
        (app_id,) = self._r.execute("PRAGMA application_id").fetchone()
        (version,) = self._r.execute("PRAGMA user_version").fetchone()
        if app_id != APPLICATION_ID:
            raise CorruptStorageError(f"{self.db_path} is not a hyperlog database")
        if not OLDEST_SCHEMA_VERSION <= version <= SCHEMA_VERSION:
            raise CorruptStorageError(
                f"{self.db_path} has schema version {version}, expected "
                f"{OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}"
            )
        if version < SCHEMA_VERSION and not self._readonly:
            self._upgrade(version)
            version = SCHEMA_VERSION
        self._heads_in_blocks = version >= 3
        self._parents_in_blocks = version >= 4
        (self._page_size,) = self._r.execute("PRAGMA page_size").fetchone()

    def _upgrade(self, version: int) -> None:
        """Bring a schema-2 or -3 database to the current schema, in one transaction.

        Adding a NULL column rewrites no row (SQLite reads it as NULL), so this is
        instant at any size. Nodes stored in ``nodes`` stay there and are still found.
        """
        w = self._w
        w.execute("BEGIN IMMEDIATE")
        try:
            if version <= 2:
                w.execute("ALTER TABLE blocks ADD COLUMN head BLOB")
            if version <= 3:
                w.execute("ALTER TABLE blocks ADD COLUMN parents BLOB")
            w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            w.execute("COMMIT")
        except BaseException:
            if w.in_transaction:
                w.execute("ROLLBACK")
            raise
        logger.info("upgraded %s from schema %d to %d", self.db_path, version, SCHEMA_VERSION)

    def _follow_upgrade(self) -> None:
        """Read an old schema as a writer beside us may have upgraded it (read-only).

        A read-only open takes no lock, so a writable open may upgrade the database
        after it; heads and parents written since are where the new schema puts them.
        """
        (version,) = self._r.execute("PRAGMA user_version").fetchone()
        self._heads_in_blocks = version >= 3
        self._parents_in_blocks = version >= 4

    @property
    def readonly(self) -> bool:
        """True if this storage was opened read-only."""
        return self._readonly

    def _writer(self) -> sqlite3.Connection:
        if self._readonly:
            raise HyperlogError(f"store {self.path} is open read-only")
        if self._closed:
            raise HyperlogError("storage is closed")
        return self._w

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise HyperlogError("storage is closed")
        return self._r

    def data_version(self) -> int:
        """Return SQLite's ``data_version`` of the read connection (see `Storage`).

        It changes when any other connection (a writer in this or another process,
        or this store's own write connection) commits.
        """
        with self._rlock, _reporting_corruption(self.db_path):
            (version,) = self._reader().execute("PRAGMA data_version").fetchone()
        return int(version)

    # -- logs -------------------------------------------------------------------

    def list_logs(self) -> list[bytes]:
        """Return the keys of every log in the store, oldest first."""
        with self._rlock, _reporting_corruption(self.db_path):
            rows = self._reader().execute("SELECT key FROM logs ORDER BY id").fetchall()
        return [bytes(k) for (k,) in rows]

    def create_log(self, info: LogInfo) -> StoredLog:
        """Add a log with an empty head (see `Storage.create_log`)."""
        with self._wlock, _reporting_corruption(self.db_path):
            w = self._writer()
            w.execute("BEGIN IMMEDIATE")
            try:
                cur = w.execute(
                    "INSERT INTO logs (key, discovery_key, manifest, secret_key) "
                    "VALUES (?, ?, ?, ?)",
                    (info.key, info.discovery_key, info.manifest, info.secret_key),
                )
                handle = cur.lastrowid
                if handle is None or handle > MAX_LOGS_PER_STORE:
                    raise ValueError(f"a store holds at most {MAX_LOGS_PER_STORE} logs")
                w.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                w.execute("ROLLBACK")
                raise ValueError(f"a log with key {info.key.hex()} already exists") from exc
            except BaseException:
                w.execute("ROLLBACK")
                raise
        return StoredLog(handle, info, Head())

    def find_log(self, key: bytes) -> StoredLog | None:
        """Return the log with this key or discovery key, or None."""
        with self._rlock, _reporting_corruption(self.db_path):
            row = (
                self._reader()
                .execute(
                    "SELECT id, key, discovery_key, manifest, secret_key FROM logs "
                    "WHERE key = ? OR discovery_key = ?",
                    (key, key),
                )
                .fetchone()
            )
            if row is None:
                return None
            if not self._parents_in_blocks:
                self._follow_upgrade()
            packed = self._r.execute(
                "SELECT value FROM state WHERE id = ?",
                ((row[0] << _STATE_SHIFT) | _HEAD_SLOT,),
            ).fetchone()
            last = None
            if self._heads_in_blocks:
                # the head, when it lives in a block row, is in the log's last block
                base = row[0] << _BLOCK_SHIFT
                last = self._r.execute(
                    "SELECT id, head FROM blocks WHERE id >= ? AND id < ? ORDER BY id DESC LIMIT 1",
                    (base, base + (1 << _BLOCK_SHIFT)),
                ).fetchone()
        handle, k, dk, manifest, secret = row
        info = LogInfo(
            bytes(k),
            bytes(dk),
            None if manifest is None else bytes(manifest),
            None if secret is None else bytes(secret),
        )
        head = Head() if packed is None else _decode_head(packed[0], self.db_path)
        self._embedded.pop(handle, None)
        if last is not None and last[1] is not None:
            in_block = _decode_head(last[1], self.db_path)
            index = last[0] - (handle << _BLOCK_SHIFT)
            if in_block.length != index + 1:
                raise CorruptStorageError(
                    f"the head stored with block {index} in {self.db_path} has length "
                    f"{in_block.length}"
                )
            self._embedded[handle] = index
            if (in_block.fork, in_block.length) >= (head.fork, head.length):
                head = in_block
        return StoredLog(handle, info, head)

    def get_meta(self, name: str) -> bytes | None:
        """Return a store-level setting, or None."""
        with self._rlock, _reporting_corruption(self.db_path):
            row = (
                self._reader().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
            )
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, value: bytes) -> None:
        """Set a store-level setting in its own transaction."""
        if len(value) > MAX_META_SIZE:
            raise ValueError(f"metadata value larger than {MAX_META_SIZE} bytes")
        with self._wlock, _reporting_corruption(self.db_path):
            self._writer().execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value)
            )

    # -- reads ------------------------------------------------------------------

    def get_block(self, handle: int, index: int) -> bytes | None:
        """Return block ``index``, or None (see `Storage.get_block`)."""
        if not 0 <= index <= MAX_BLOCK_INDEX:
            return None  # its row key would be another log's
        with self._rlock:
            try:
                row = (
                    self._reader()
                    .execute(
                        "SELECT sum, value FROM blocks WHERE id = ?",
                        ((handle << _BLOCK_SHIFT) | index,),
                    )
                    .fetchone()
                )
            except sqlite3.DatabaseError as exc:
                if _is_corruption(exc):
                    raise CorruptStorageError(f"database {self.db_path}: {exc}") from exc
                raise
        if row is None:
            return None
        value: bytes = row[1]
        if not _matches(value, row[0])[0]:
            raise CorruptStorageError(f"block {index} in {self.db_path} fails its checksum")
        return value

    def get_blocks(self, handle: int, indices: Sequence[int]) -> list[bytes | None]:
        """Return many blocks in one locked pass (see `Storage.get_blocks`)."""
        base = handle << _BLOCK_SHIFT
        found: dict[int, bytes] = {}
        # an index outside the log would be another log's row key: never looked up
        valid = [i for i in indices if 0 <= i <= MAX_BLOCK_INDEX]
        with self._rlock, _reporting_corruption(self.db_path):
            r = self._reader()
            for k in range(0, len(valid), _IN_CHUNK):
                chunk = valid[k : k + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = r.execute(
                    f"SELECT id, sum, value FROM blocks WHERE id IN ({marks})",
                    [base | i for i in chunk],
                ).fetchall()
                for key, stored, value in rows:
                    if not _matches(value, stored)[0]:
                        raise CorruptStorageError(
                            f"block {key - base} in {self.db_path} fails its checksum"
                        )
                    found[key - base] = value
        return [found.get(i) for i in indices]

    def iter_blocks(self, handle: int, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        """Yield stored blocks in ``start .. end - 1`` in order (see `Storage.iter_blocks`)."""
        base = handle << _BLOCK_SHIFT
        pos = max(start, 0)
        end = min(end, MAX_BLOCK_INDEX + 1)  # past it, keys are the next log's
        # Fetch in slices so the read lock is never held across a yield.
        while pos < end:
            with self._rlock, _reporting_corruption(self.db_path):
                rows = (
                    self._reader()
                    .execute(
                        "SELECT id, sum, value FROM blocks WHERE id >= ? AND id < ? "
                        "ORDER BY id LIMIT 256",
                        (base + pos, base + end),
                    )
                    .fetchall()
                )
            if not rows:
                return
            for key, checksum, value in rows:
                index = key - base
                if not _matches(value, checksum)[0]:
                    raise CorruptStorageError(f"block {index} in {self.db_path} fails its checksum")
                yield index, value
            pos = rows[-1][0] - base + 1

    def get_node(self, handle: int, index: int) -> TreeNode | None:
        """Return tree node ``index``, or None (see `Storage.get_node`)."""
        return self.get_nodes(handle, (index,))[0]

    def get_nodes(self, handle: int, indices: Sequence[int]) -> list[TreeNode | None]:
        """Return tree nodes by index (see the module docstring for derived nodes)."""
        nbase = handle << _NODE_SHIFT
        bbase = handle << _BLOCK_SHIFT
        out: list[TreeNode | None] = []
        in_rows = self._parents_in_blocks
        with self._rlock, _reporting_corruption(self.db_path):
            r = self._reader()
            for index in indices:
                if not 0 <= index < _NODE_LIMIT:
                    out.append(None)  # its row key would be another log's
                    continue
                if not index & 1:
                    node = self._leaf(r, bbase, index)
                    if node is not None:
                        out.append(node)
                        continue
                elif index & 3 == 3 and in_rows:
                    node = self._in_row(r, bbase, index)
                    if node is not None:
                        out.append(node)
                        continue
                row = r.execute(
                    "SELECT size, hash FROM nodes WHERE id = ?", (nbase | index,)
                ).fetchone()
                if row is not None:
                    out.append(TreeNode(index, row[0], row[1]))
                elif index & 3 == 1:
                    out.append(self._derived(r, bbase, index))
                else:
                    out.append(None)
        return out

    def _leaf(self, r: sqlite3.Connection, bbase: int, index: int) -> TreeNode | None:
        # The value is only loaded when the stored sum is not the full hash.
        row = r.execute(
            "SELECT sum, CASE WHEN length(sum) = 32 THEN NULL ELSE value END, "
            "length(value) FROM blocks WHERE id = ?",
            (bbase | (index >> 1),),
        ).fetchone()
        if row is None:
            return None
        stored, value, size = row
        if value is None:
            return TreeNode(index, size, bytes(stored))
        ok, digest = _matches(value, stored)
        if not ok:
            raise CorruptStorageError(f"block {index >> 1} in {self.db_path} fails its checksum")
        return TreeNode(index, size, digest)

    def _in_row(self, r: sqlite3.Connection, bbase: int, index: int) -> TreeNode | None:
        # a parent of depth >= 2 kept in the row of the block that completes it
        span = (index + 1) & -(index + 1)  # 2 ** depth
        slot = (span.bit_length() - 3) * _PARENT_SLOT
        row = r.execute(
            "SELECT substr(parents, ?, ?) FROM blocks WHERE id = ?",
            (slot + 1, _PARENT_SLOT, bbase | ((index + span - 1) >> 1)),
        ).fetchone()
        if row is None or row[0] is None or len(row[0]) != _PARENT_SLOT:
            return None
        data: bytes = row[0]
        return TreeNode(index, _SIZE.unpack_from(data)[0], data[8:])

    def _derived(self, r: sqlite3.Connection, bbase: int, index: int) -> TreeNode | None:
        left = self._leaf(r, bbase, index - 1)
        right = self._leaf(r, bbase, index + 1) if left is not None else None
        if left is None or right is None:
            return None
        return parent_node(index, left, right)

    def load_bitfield(self, handle: int) -> list[tuple[int, bytes]]:
        """Return every stored bitfield page of a log."""
        base = handle << _STATE_SHIFT
        with self._rlock, _reporting_corruption(self.db_path):
            rows = (
                self._reader()
                .execute(
                    "SELECT id, value FROM state WHERE id >= ? AND id < ? ORDER BY id",
                    (base, base | _HEAD_SLOT),
                )
                .fetchall()
            )
        return [(key - base, bytes(page)) for key, page in rows]

    # -- writes -----------------------------------------------------------------

    def commit(self, handle: int, batch: WriteBatch) -> None:
        """Apply ``batch`` in one transaction (see `Storage.commit`)."""
        _check_batch(batch)
        bbase = handle << _BLOCK_SHIFT
        nbase = handle << _NODE_SHIFT
        sbase = handle << _STATE_SHIFT
        with self._wlock:
            w = self._writer()
            try:
                self._commit(w, batch, bbase, nbase, sbase, handle)
            except sqlite3.DatabaseError as exc:
                if _is_corruption(exc):
                    raise CorruptStorageError(f"database {self.db_path}: {exc}") from exc
                raise
            # estimated WAL bytes: the right-edge pages of each table touched, and blocks
            size = batch.block_bytes
            if size < 0:
                size = sum(len(b[1]) for b in batch.blocks)
            self._ckpt_pending += self._page_size * 3 + size
            if self._ckpt_pending >= CHECKPOINT_EVERY_BYTES:
                self._ckpt_pending = 0
                self._ckpt_wake.set()
            if self._ckpt_restart_due:
                self._ckpt_commits_waited += 1
                if self._ckpt_commits_waited > _MAINTAIN_WITHIN_COMMITS:
                    self._finish_checkpoint(w)  # nobody calls `maintain`: do it here

    def append_one(
        self,
        handle: int,
        value: bytes,
        leaf: bytes,
        parents: list[TreeNode],
        head: tuple[int, int, int, bytes],
    ) -> None:
        """Commit one appended block (see `Storage.append_one`).

        Four statements (BEGIN, clearing the previous head's row, one INSERT carrying
        block, checksum, head and parents, COMMIT) and no `WriteBatch` or `Head`: the
        same rows `commit` writes for that batch.
        """
        fork, length, byte_length, tree_hash = head
        index = length - 1
        if not 0 <= index <= MAX_BLOCK_INDEX:
            # its row key would be another log's (the log refuses such appends first)
            raise ValueError(f"block index {index} is outside a log")
        if (
            len(value) > HEAD_IN_BLOCK_MAX
            or not self._parents_in_blocks
            or len(value) > FULL_HASH_ABOVE
        ):
            self.commit(
                handle,
                WriteBatch(
                    blocks=[(index, value, leaf)],
                    nodes=[n for n in parents if n.index & 3 != 1],
                    head=Head(fork, length, byte_length, tree_hash, None, length),
                    appended=True,
                    block_bytes=len(value),
                ),
            )
            return
        column = _NO_PARENTS
        if len(parents) > 1:  # depth 2 and up ride in this block's row, bottom-up
            column = bytearray()
            pack = _SIZE.pack
            for n in parents[1:]:
                column += pack(n.size)
                column += n.hash
        bbase = handle << _BLOCK_SHIFT
        row = (
            bbase | index,
            bytearray(leaf[:CHECKSUM_SIZE]),
            bytearray(value),
            bytearray(_HEAD.pack(fork, length, byte_length, length) + tree_hash),
            column,
        )
        with self._wlock:
            w = self._writer()
            held = self._embedded.get(handle, -1)
            try:
                w.execute("BEGIN IMMEDIATE")
                try:
                    if held >= 0:
                        w.execute(_CLEAR_HEAD, (bbase | held,))
                    w.execute(_INSERT_ONE, row)
                    w.execute("COMMIT")
                except BaseException:
                    if w.in_transaction:
                        w.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                if _is_corruption(exc):
                    raise CorruptStorageError(f"database {self.db_path}: {exc}") from exc
                raise
            self._embedded[handle] = index
            self._ckpt_pending += self._page_size * 3 + len(value)
            if self._ckpt_pending >= CHECKPOINT_EVERY_BYTES:
                self._ckpt_pending = 0
                self._ckpt_wake.set()
            if self._ckpt_restart_due:
                self._ckpt_commits_waited += 1
                if self._ckpt_commits_waited > _MAINTAIN_WITHIN_COMMITS:
                    self._finish_checkpoint(w)

    @property
    def maintenance_due(self) -> bool:
        """True when `maintain` should run (in a worker thread) before the next commit."""
        return self._ckpt_restart_due

    @property
    def write_busy(self) -> bool:
        """See `Storage.write_busy`."""
        return self._wlock.locked()

    def maintain(self) -> None:
        """Finish the background checkpoint so that the next commit restarts the WAL.

        The background pass copied all but the last few frames; this copies those
        (and syncs) between transactions. It can wait on the disk for milliseconds
        (two ``fsync``), so the log runs it in a worker thread with its write lock
        held, never on the event loop. Its failure costs nothing but a bigger WAL.
        """
        with self._wlock:
            if self._ckpt_restart_due and not self._closed:
                self._finish_checkpoint(self._writer())

    def _finish_checkpoint(self, w: sqlite3.Connection) -> None:
        self._ckpt_restart_due = False
        self._ckpt_commits_waited = 0
        try:
            w.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            logger.warning("checkpoint of %s failed", self.db_path, exc_info=True)

    def _checkpointer(self) -> None:
        """Copy the WAL into the database off the commit path (a PASSIVE checkpoint).

        Appends then only append to the WAL; the copy and its ``fsync`` happen here,
        in parallel. Checkpoints never affect durability: the WAL already holds every
        committed transaction.
        """
        conn = self._ckpt_conn
        assert conn is not None
        # Bounded by the store's lifetime: close() sets the flag and wakes us.
        while True:
            self._ckpt_wake.wait()
            self._ckpt_wake.clear()
            if self._closed:
                return
            try:
                row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                # (busy, frames in the WAL, frames copied)
                if row is not None and row[1] * self._page_size >= WAL_RESTART_BYTES:
                    self._ckpt_restart_due = True
            except sqlite3.Error:
                logger.warning("background checkpoint of %s failed", self.db_path, exc_info=True)

    def _commit(
        self,
        w: sqlite3.Connection,
        batch: WriteBatch,
        bbase: int,
        nbase: int,
        sbase: int,
        handle: int,
    ) -> None:
        w.execute("BEGIN IMMEDIATE")
        try:
            if batch.truncate is not None:
                n = batch.truncate
                w.execute(
                    "DELETE FROM blocks WHERE id >= ? AND id < ?",
                    (bbase + n, bbase + (1 << _BLOCK_SHIFT)),
                )
                w.execute(
                    "DELETE FROM nodes WHERE id >= ? AND id < ?",
                    (nbase + 2 * n, nbase + (1 << _NODE_SHIFT)),
                )
                w.executemany(
                    "DELETE FROM nodes WHERE id = ?",
                    [(nbase | i,) for i in _truncated_nodes(n)],
                )
            if batch.manifest is not None:
                w.execute("UPDATE logs SET manifest = ? WHERE id = ?", (batch.manifest, handle))
            head = batch.head
            blocks = batch.blocks
            # the block row that takes the head, if this batch writes the log's last block
            into = -1
            if head is not None and blocks and self._heads_in_blocks:
                last = head.length - 1
                if blocks[-1][0] == last:
                    if len(blocks[-1][1]) <= HEAD_IN_BLOCK_MAX:
                        into = last
                elif any(b[0] == last and len(b[1]) <= HEAD_IN_BLOCK_MAX for b in blocks):
                    into = last
            held = self._embedded.get(handle, -1)
            # clear the row that held the previous head (unless the truncation drops it)
            cut = batch.truncate
            if head is not None and 0 <= held != into and (cut is None or held < cut):
                w.execute(_CLEAR_HEAD, (bbase | held,))
            packed = None if into < 0 or head is None else bytearray(_encode_head(head))
            nodes = batch.nodes
            appended = batch.appended
            rows: dict[int, bytearray] = {}
            if appended and nodes:
                rows, nodes = _parents_by_block(nodes)
            if len(blocks) == 1:
                i, v, h = blocks[0]
                one = (
                    bbase | i,
                    bytearray(_stored_sum(v, h)),
                    bytearray(v) if len(v) <= _BIND_COPY_MAX else v,
                    packed,
                )
                if appended:
                    w.execute(_INSERT_ONE, (*one, rows.get(i, _NO_PARENTS)))
                else:
                    w.execute(_UPSERT_ONE, one)
            elif blocks:
                # rows are made one at a time as SQLite binds them (a generator): a
                # list would keep 1,000 tuples alive and feed the cyclic GC
                big = FULL_HASH_ABOVE
                copy_max = _BIND_COPY_MAX
                if appended:
                    get = rows.get
                    none = _NO_PARENTS
                    w.executemany(
                        _INSERT_MANY,
                        (
                            (
                                bbase | i,
                                h if len(v) > big else bytearray(h[:CHECKSUM_SIZE]),
                                bytearray(v) if len(v) <= copy_max else v,
                                get(i, none),
                            )
                            for i, v, h in blocks
                        ),
                    )
                else:
                    w.executemany(
                        _UPSERT_MANY,
                        (
                            (
                                bbase | i,
                                h if len(v) > big else bytearray(h[:CHECKSUM_SIZE]),
                                bytearray(v) if len(v) <= copy_max else v,
                            )
                            for i, v, h in blocks
                        ),
                    )
                if into >= 0:
                    w.execute("UPDATE blocks SET head = ? WHERE id = ?", (packed, bbase | into))
            if nodes:
                w.executemany(
                    "INSERT OR REPLACE INTO nodes (id, size, hash) VALUES (?, ?, ?)",
                    ((nbase | n.index, n.size, bytearray(n.hash)) for n in nodes),
                )
            state = [(sbase | p, data) for p, data in batch.bitfield.items()]
            if head is not None and into < 0:
                state.append((sbase | _HEAD_SLOT, _encode_head(head)))
            if state:
                w.executemany("INSERT OR REPLACE INTO state (id, value) VALUES (?, ?)", state)
            w.execute("COMMIT")
        except BaseException:
            if w.in_transaction:
                w.execute("ROLLBACK")
            raise
        if into >= 0:
            self._embedded[handle] = into
        elif head is not None or (batch.truncate is not None and held >= batch.truncate):
            self._embedded.pop(handle, None)

    def store_signature(self, handle: int, head: Head) -> None:
        """Write the signed head where the unsigned one is (see `Storage.store_signature`).

        One statement (its own transaction): the head column of the log's last block
        row when the head lives there, else the head slot in ``state``.
        """
        if head.signature is None:
            raise ValueError("store_signature needs a signed head")
        packed = bytearray(_encode_head(head))
        with self._wlock, _reporting_corruption(self.db_path):
            w = self._writer()
            held = self._embedded.get(handle, -1)
            if held >= 0 and held == head.length - 1:
                w.execute(
                    "UPDATE blocks SET head = ? WHERE id = ?",
                    (packed, (handle << _BLOCK_SHIFT) | held),
                )
            else:
                w.execute(
                    "INSERT OR REPLACE INTO state (id, value) VALUES (?, ?)",
                    ((handle << _STATE_SHIFT) | _HEAD_SLOT, packed),
                )

    # -- maintenance ------------------------------------------------------------

    def check(self, *, full: bool = False) -> None:
        """Run SQLite's ``quick_check`` (or ``integrity_check``); raise on any problem."""
        pragma = "integrity_check" if full else "quick_check"
        with self._rlock, _reporting_corruption(self.db_path):
            rows = self._reader().execute(f"PRAGMA {pragma}").fetchall()
        problems = [str(r[0]) for r in rows if r[0] != "ok"]
        if problems:
            raise CorruptStorageError(f"database {self.db_path} is corrupted: {problems[0]}")

    def size_on_disk(self) -> int:
        """Return the bytes used by the database and its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(f"{self.db_path}{suffix}")
        return total

    def close(self) -> None:
        """Close both connections and release the write lock. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._ckpt_thread is not None:
            self._ckpt_wake.set()
            self._ckpt_thread.join()
        with self._wlock, self._rlock:
            for name in ("_ckpt_conn", "_r", "_w"):
                conn = getattr(self, name, None)
                if conn is not None:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None
