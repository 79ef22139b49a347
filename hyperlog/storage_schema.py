"""The on-disk format of a SQLite store: tables, schema versions, row keys and row codecs.

Everything that fixes what the bytes in a store's database mean lives here: the
tables (`_SCHEMA`) and their versions, the integer row keys (``handle << shift |
index``), the head's encoding, the ``parents`` column of a block row, block
checksums, and the statements that write block rows. `hyperlog.storage_sqlite` runs
them; `_truncated_nodes` (which nodes a truncation drops) is shared with
`hyperlog.storage_memory`. The theory of operation is the docstring of
`hyperlog.storage`: "the module docstring" below means that one.
"""

from __future__ import annotations

import struct
from typing import Final

from . import flat_tree
from .constants import MAX_LOG_LENGTH
from .crypto import TreeNode, leaf_hash
from .errors import CorruptStorageError
from .storage_types import Head, WriteBatch

__all__ = [
    "APPLICATION_ID",
    "CHECKSUM_SIZE",
    "FULL_HASH_ABOVE",
    "HEAD_IN_BLOCK_MAX",
    "MAX_BLOCK_INDEX",
    "MAX_LOGS_PER_STORE",
    "OLDEST_SCHEMA_VERSION",
    "SCHEMA_VERSION",
]

#: SQLite ``application_id``: the bytes "HYLG", so a foreign database is refused.
APPLICATION_ID: Final = 0x48594C47
#: Schema version, in SQLite's ``user_version``. Version 3 added ``blocks.head``,
#: version 4 ``blocks.parents`` (see the module docstring).
SCHEMA_VERSION: Final = 4
#: The oldest schema version this code opens (a writable open upgrades it).
OLDEST_SCHEMA_VERSION: Final = 2
#: Highest block index of a log (`MAX_LOG_LENGTH` - 1): it fits in 40 bits of the row key.
MAX_BLOCK_INDEX: Final = MAX_LOG_LENGTH - 1
#: Logs per store: the handle fits above the 42-bit node index in a signed 64-bit key.
MAX_LOGS_PER_STORE: Final = (1 << 21) - 1
#: Bytes of the leaf hash kept beside each block as its checksum.
CHECKSUM_SIZE: Final = 8
#: Blocks larger than this keep their whole 32-byte leaf hash instead of 8 bytes, so a
#: proof that needs their leaf node does not read and re-hash the block (the extra 24
#: bytes are noise next to the block; for 1 KiB blocks they would be 2.3% of the disk).
FULL_HASH_ABOVE: Final = 4096
#: The head goes into the last block's row only when that block is at most this big.
#: Clearing the previous head rewrites that row, and a row that spills into overflow
#: pages (16 KiB pages keep rows up to ~16 KiB local) is rewritten whole: for a
#: 64 KiB block that doubled the bytes an append writes. Bigger blocks keep the head
#: in ``state``, one small page beside 64 KiB of block.
HEAD_IN_BLOCK_MAX: Final = 8192

_BLOCK_SHIFT: Final = 40
_NODE_SHIFT: Final = 42
_STATE_SHIFT: Final = 33
_HEAD_SLOT: Final = 1 << 32
#: Tree nodes of a log of at most `MAX_LOG_LENGTH` blocks have indices below this.
_NODE_LIMIT: Final = 2 * MAX_LOG_LENGTH
_HEAD = struct.Struct("<QQQQ")
_SIZE = struct.Struct("<Q")
#: Bytes per parent in a block row's ``parents`` column: u64 size, 32-byte hash.
_PARENT_SLOT: Final = 40


def _truncated_nodes(length: int) -> list[int]:
    """Return the nodes below index ``2 * length`` that the cut at ``length`` invalidates.

    They are the ancestors of leaf ``2 * length`` with a smaller index: their spans
    straddle the cut. Nodes at ``2 * length`` and above are dropped by range.
    """
    out: list[int] = []
    node = 2 * length
    for _ in range(_NODE_SHIFT):
        node = flat_tree.parent(node)
        if node < 2 * length:
            out.append(node)
    return out


def _check_batch(batch: WriteBatch) -> None:
    """Refuse a batch whose indices do not fit the row keys of one log.

    A block index past `MAX_BLOCK_INDEX`, a node index at or past ``2 * MAX_LOG_LENGTH``
    or a bitfield page at or past the head slot would compose the row key of another
    log (``handle << shift | index``) and overwrite its rows. The log and proof
    verification never produce one (they refuse such lengths first); this is the last
    line of defence, checked before the transaction starts.

    Raises:
        ValueError: if an index is out of range. Nothing was written.
    """
    for i, _, _ in batch.blocks:
        if not 0 <= i <= MAX_BLOCK_INDEX:
            raise ValueError(f"block index {i} is outside a log (at most {MAX_LOG_LENGTH} blocks)")
    for n in batch.nodes:
        if not 0 <= n.index < _NODE_LIMIT:
            raise ValueError(
                f"tree node {n.index} is outside a log of at most {MAX_LOG_LENGTH} blocks"
            )
    for p in batch.bitfield:
        if not 0 <= p < _HEAD_SLOT:
            raise ValueError(f"bitfield page {p} is out of range")
    head = batch.head
    if head is not None and not 0 <= head.length <= MAX_LOG_LENGTH:
        raise ValueError(f"a head of length {head.length} exceeds {MAX_LOG_LENGTH} blocks")
    cut = batch.truncate
    if cut is not None and not 0 <= cut <= MAX_LOG_LENGTH:
        raise ValueError(f"cannot truncate to {cut} blocks")


def _encode_head(head: Head) -> bytes:
    return (
        _HEAD.pack(head.fork, head.length, head.byte_length, head.contiguous_length)
        + head.tree_hash
        + (head.signature or b"")
    )


def _decode_head(data: bytes, where: object) -> Head:
    # 32 bytes of integers, then a 32-byte tree hash (absent while empty), then a
    # 64-byte signature (absent before the first signed head).
    if len(data) not in (_HEAD.size, _HEAD.size + 32, _HEAD.size + 96):
        raise CorruptStorageError(f"a stored head in {where} has {len(data)} bytes")
    fork, length, byte_length, contiguous = _HEAD.unpack_from(data)
    tree = bytes(data[_HEAD.size : _HEAD.size + 32])
    sig = bytes(data[_HEAD.size + 32 :]) or None
    return Head(fork, length, byte_length, tree, sig, contiguous)


def _stored_sum(value: bytes | memoryview, digest: bytes) -> bytes:
    return digest if len(value) > FULL_HASH_ABOVE else digest[:CHECKSUM_SIZE]


# Row inserts. An append writes new rows whole. A downloaded block keeps the parents
# its row may hold (a writer's own row; the value is the same), and the head it holds
# unless it brings a new one (a second copy of the last block must not drop the head;
# `_commit` clears a superseded head's row itself). NULLs are written as
# literals: Python 3.11's `sqlite3` runs its adaptation lookup for a bound None as for
# bytes (~0.4 us a parameter, measured), and a row without parents binds an empty
# bytearray (the same one header byte on disk as NULL).
_INSERT_ONE: Final = (
    "INSERT OR REPLACE INTO blocks (id, sum, value, head, parents) VALUES (?, ?, ?, ?, ?)"
)
_CLEAR_HEAD: Final = "UPDATE blocks SET head = NULL WHERE id = ?"
_INSERT_MANY: Final = (
    "INSERT OR REPLACE INTO blocks (id, sum, value, head, parents) VALUES (?, ?, ?, NULL, ?)"
)
_UPSERT_ONE: Final = (
    "INSERT INTO blocks (id, sum, value, head) VALUES (?, ?, ?, ?) ON CONFLICT (id) "
    "DO UPDATE SET sum = excluded.sum, value = excluded.value, "
    "head = coalesce(excluded.head, head)"
)
_UPSERT_MANY: Final = (
    "INSERT INTO blocks (id, sum, value, head) VALUES (?, ?, ?, NULL) ON CONFLICT (id) "
    "DO UPDATE SET sum = excluded.sum, value = excluded.value"
)
_NO_PARENTS: Final = bytearray()


def _parents_by_block(nodes: list[TreeNode]) -> tuple[dict[int, bytearray], list[TreeNode]]:
    """Pack an append's parents into the rows of the blocks that complete them.

    Returns ``{block: parents column}`` and the nodes that do not go into a row.

    Raises:
        ValueError: if the nodes are not an append's parents, bottom-up per block.
    """
    # bytearrays: SQLite binds them without the adaptation lookup `bytes` pays
    rows: dict[int, bytearray] = {}
    rest: list[TreeNode] = []
    pack = _SIZE.pack
    for n in nodes:
        index = n.index
        if index & 3 != 3:  # a leaf or a depth-1 parent: not kept in rows
            rest.append(n)
            continue
        span = (index + 1) & -(index + 1)
        block = (index + span - 1) >> 1
        column = rows.get(block)
        if column is None:
            column = rows[block] = bytearray()
        if len(column) != (span.bit_length() - 3) * _PARENT_SLOT:
            raise ValueError(f"node {index} is out of order in an appended batch")
        column += pack(n.size)
        column += n.hash
    return rows, rest


def _matches(value: bytes, stored: bytes) -> tuple[bool, bytes]:
    digest = leaf_hash(value)
    return (digest if len(stored) == len(digest) else digest[:CHECKSUM_SIZE]) == stored, digest


_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS logs (
        id INTEGER PRIMARY KEY,
        key BLOB NOT NULL UNIQUE,
        discovery_key BLOB NOT NULL UNIQUE,
        manifest BLOB,
        secret_key BLOB)""",
    "CREATE TABLE IF NOT EXISTS blocks (id INTEGER PRIMARY KEY, sum BLOB NOT NULL, "
    "value BLOB NOT NULL, head BLOB, parents BLOB)",
    "CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, size INTEGER NOT NULL, "
    "hash BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL)",
)
