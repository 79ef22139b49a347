"""Where logs live: the `Storage` protocol, `SQLiteStorage` (the default) and `MemoryStorage`.

Theory of operation
-------------------
A *store* is one folder holding one SQLite database (`DB_FILENAME`) in WAL mode and a
lock file; the database holds any number of logs. Every log gets a small integer
handle (its row id in ``logs``) and its rows in the other tables are keyed by
``handle << shift | index``, so one B-tree per table serves every log, lookups are a
single integer-key probe, and a sparse replica stores only the blocks it has (no
sparse files, no per-log file descriptors: research notes §6 and §13). A log holds
at most `MAX_LOG_LENGTH` (2**40) blocks, so its keys never reach the next handle's;
`commit` refuses a batch that would (`storage_schema._check_batch`)::

    logs   (id, key, discovery_key, manifest, secret_key)      what never changes
    blocks (handle << 40 | index)      -> (checksum, value, head, parents)
                                          head: NULL but in the log's last block;
                                          parents: the writer's parents it completes
    nodes  (handle << 42 | node index) -> (size, hash)           parents, and leaves
                                                                 held without their block
    state  (handle << 33 | page)       -> 4 KiB "have" bitfield page
           (handle << 33 | 2**32)      -> the signed head, when it is not in a block row
    meta   (name) -> value                                       store-level settings

Where the head lives. A head (fork, length, byte length, contiguous hint, tree hash,
signature) is written in the same transaction as what it covers. When that
transaction also writes block ``length - 1`` (every append, and a download of the
last block) and that block is small (`HEAD_IN_BLOCK_MAX`), the head goes into its
row, and the row that held the previous head is cleared (it is almost always on the
same B-tree page). A single append then dirties **one** page of the blocks table
(its parents ride in the same row, schema 4) instead of a blocks page and a state
page: every dirty 16 KiB page is one WAL frame written per commit, the largest cost
of a small append. Otherwise (truncation, big blocks, a group of proofs without the
last block) the head goes into ``state`` and the block row is cleared. At open both
are read (the last block row of the log is one probe) and the newer one, by (fork,
length), is the head. A writer's append stores its head without the signature (the
log signs lazily, when the head is first exposed: docs/hyperlog.md §6);
`SQLiteStorage.store_signature` later writes the signed head over it in place.
Schema 2 and 3 stores are upgraded in place by the first writable open; read-only
opens read them as they are, and follow an upgrade a writer makes meanwhile.

Derived nodes. A leaf node is *not* stored when its block is: its size is the
block's length and its hash is recomputed from the block when a proof needs it. The
first 8 bytes of the leaf hash (the whole hash for blocks over `FULL_HASH_ABOVE`
bytes) are kept beside the block as a checksum, and every block read is checked
against it, so a damaged block is reported (`CorruptStorageError`) instead of being
returned. Likewise the depth-1 parent of two stored blocks is not stored (the log
leaves it out of its batches): `get_node` rebuilds it from the two leaves. Together
that saves one and a half 48-byte rows per block, the largest part of the on-disk
overhead of small blocks.

Parents in the block row (schema 4). A writer's append stores the parents of depth
2 and more in the row of the block that completes them (block ``right_span / 2``):
the ``parents`` column of block ``b`` holds, for depth 2, 3, ... up to the number of
trailing one bits of ``b``, 40 bytes each: the node's size (u64, little-endian) and
its hash. An append then writes no row into ``nodes`` at all: a batch of 1,000
blocks makes ~500 fewer rows, and a single append dirties one page instead of two
every fourth time. A node is looked up in its completing block's row first, then in
``nodes``, which keeps what a reader verifies from proofs (there the completing block
is usually not held) and what older schemas stored. A truncation deletes the block
rows at and past the cut, and with them exactly the parents whose span reaches past
it.

Atomicity: a `WriteBatch` (blocks, nodes, bitfield pages, the new head, an optional
truncation and manifest) is written by `Storage.commit` in **one** transaction. The
log calls it once per append batch and once per group of verified blocks, so after a
crash the database holds either all of a batch or none of it, never a head without
its nodes.

Durability (docs/hyperlog-storage.md): WAL with ``synchronous=NORMAL`` (the
``"process"`` level, the default) writes every committed transaction into the WAL
file with ``write(2)`` before `commit` returns; the kernel owns those bytes, so an
acknowledged append survives ``kill -9`` of the process. Only an operating-system
crash or power loss can drop the last transactions (never corrupt the database),
because NORMAL does not ``fsync`` the WAL on each commit. ``durability="power"``
selects ``synchronous=FULL``: one ``fsync`` per commit, durable across power loss.
hypercore 11 itself never syncs per append (research notes §6.2).

One writer: opening a store for writing takes an exclusive ``flock`` on the lock file
beside the database, so a second writer (another process, or the same process twice)
is refused with `StorageLockedError`. Read-only opens take no lock; a `Log` there
checks after each read (`data_version`, then the stored head) that the writer did not
move the log to another fork meanwhile (`LogChangedError`, docs/hyperlog-storage.md).

Threads: SQLite calls block, so the log may run them in worker threads. The storage
keeps two connections, one for writes and one for reads, each behind its own lock;
with WAL a read never waits for a write and always sees a committed state.

`MemoryStorage` implements the same protocol with dictionaries, for tests.

Modules
-------
This module is the front door: it re-exports every name of the four modules the
storage layer is made of and holds no code of its own. (Tuning constants are read
where the code using them lives: patch `hyperlog.storage_sqlite`, not this module.)

* `hyperlog.storage_types`: `LogInfo`, `Head`, `StoredLog`, `WriteBatch` and the
  `Storage` protocol, shared by the backends and the log.
* `hyperlog.storage_schema`: the SQLite store's format: tables and schema versions,
  row keys, the head and ``parents`` encodings, checksums, row-writing statements.
* `hyperlog.storage_sqlite`: `SQLiteStorage` (opening, locking, reads, commits,
  upgrades, the background checkpointer) and its tuning constants.
* `hyperlog.storage_memory`: `MemoryStorage`.
"""

from __future__ import annotations

from .storage_memory import MemoryStorage as MemoryStorage
from .storage_schema import _BLOCK_SHIFT as _BLOCK_SHIFT
from .storage_schema import _CLEAR_HEAD as _CLEAR_HEAD
from .storage_schema import _HEAD as _HEAD
from .storage_schema import _HEAD_SLOT as _HEAD_SLOT
from .storage_schema import _INSERT_MANY as _INSERT_MANY
from .storage_schema import _INSERT_ONE as _INSERT_ONE
from .storage_schema import _NO_PARENTS as _NO_PARENTS
from .storage_schema import _NODE_SHIFT as _NODE_SHIFT
from .storage_schema import _PARENT_SLOT as _PARENT_SLOT
from .storage_schema import _SCHEMA as _SCHEMA
from .storage_schema import _SIZE as _SIZE
from .storage_schema import _STATE_SHIFT as _STATE_SHIFT
from .storage_schema import _UPSERT_MANY as _UPSERT_MANY
from .storage_schema import _UPSERT_ONE as _UPSERT_ONE
from .storage_schema import APPLICATION_ID as APPLICATION_ID
from .storage_schema import CHECKSUM_SIZE as CHECKSUM_SIZE
from .storage_schema import FULL_HASH_ABOVE as FULL_HASH_ABOVE
from .storage_schema import HEAD_IN_BLOCK_MAX as HEAD_IN_BLOCK_MAX
from .storage_schema import MAX_BLOCK_INDEX as MAX_BLOCK_INDEX
from .storage_schema import MAX_LOGS_PER_STORE as MAX_LOGS_PER_STORE
from .storage_schema import OLDEST_SCHEMA_VERSION as OLDEST_SCHEMA_VERSION
from .storage_schema import SCHEMA_VERSION as SCHEMA_VERSION
from .storage_schema import _decode_head as _decode_head
from .storage_schema import _encode_head as _encode_head
from .storage_schema import _matches as _matches
from .storage_schema import _parents_by_block as _parents_by_block
from .storage_schema import _stored_sum as _stored_sum
from .storage_schema import _truncated_nodes as _truncated_nodes
from .storage_sqlite import _BIND_COPY_MAX as _BIND_COPY_MAX
from .storage_sqlite import _IN_CHUNK as _IN_CHUNK
from .storage_sqlite import _MAINTAIN_WITHIN_COMMITS as _MAINTAIN_WITHIN_COMMITS
from .storage_sqlite import _SQLITE_CORRUPT as _SQLITE_CORRUPT
from .storage_sqlite import _SQLITE_NOTADB as _SQLITE_NOTADB
from .storage_sqlite import CACHE_KIB as CACHE_KIB
from .storage_sqlite import CHECKPOINT_CACHE_KIB as CHECKPOINT_CACHE_KIB
from .storage_sqlite import CHECKPOINT_EVERY_BYTES as CHECKPOINT_EVERY_BYTES
from .storage_sqlite import DB_FILENAME as DB_FILENAME
from .storage_sqlite import LOCK_FILENAME as LOCK_FILENAME
from .storage_sqlite import MAX_META_SIZE as MAX_META_SIZE
from .storage_sqlite import MAX_PAGE_SIZE as MAX_PAGE_SIZE
from .storage_sqlite import MIN_PAGE_SIZE as MIN_PAGE_SIZE
from .storage_sqlite import PAGE_SIZE as PAGE_SIZE
from .storage_sqlite import WAL_AUTOCHECKPOINT_PAGES as WAL_AUTOCHECKPOINT_PAGES
from .storage_sqlite import WAL_RESTART_BYTES as WAL_RESTART_BYTES
from .storage_sqlite import WRITE_CACHE_KIB as WRITE_CACHE_KIB
from .storage_sqlite import SQLiteStorage as SQLiteStorage
from .storage_sqlite import _has_content as _has_content
from .storage_sqlite import _is_corruption as _is_corruption
from .storage_sqlite import _reporting_corruption as _reporting_corruption
from .storage_sqlite import logger as logger
from .storage_types import Durability as Durability
from .storage_types import Head as Head
from .storage_types import LogInfo as LogInfo
from .storage_types import Storage as Storage
from .storage_types import StoredLog as StoredLog
from .storage_types import WriteBatch as WriteBatch

__all__ = [
    "DB_FILENAME",
    "LOCK_FILENAME",
    "MAX_BLOCK_INDEX",
    "MAX_LOGS_PER_STORE",
    "Durability",
    "Head",
    "LogInfo",
    "MemoryStorage",
    "SQLiteStorage",
    "Storage",
    "StoredLog",
    "WriteBatch",
]
