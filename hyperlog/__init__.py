"""hyperlog: a hypercore-11-compatible, Merkle-verified, signed append-only log on SQLite.

```python
from hyperlog import open_store, replicate

async with open_store("data/") as store:
    log = await store.create_log()          # a writable log signed by a new key pair
    await log.append([b"hello", b"world"])  # one batch, one signature
    assert await log.get(1) == b"world"
    async with replicate(stream, log):      # any trio.abc.Stream: readers fetch and verify
        ...
```

See docs/hyperlog.md (tree, hashes, proofs), docs/hyperlog-storage.md (SQLite layout,
durability) and docs/replication.md (the replication protocol).
"""

from typing import TYPE_CHECKING, Any

from .crypto import KeyPair, Manifest, Verifier, discovery_key, key_pair
from .errors import (
    BlockNotAvailableError,
    CorruptStorageError,
    DecodeError,
    ForkConflictError,
    HyperlogError,
    InvalidProofError,
    InvalidRequestError,
    InvalidSignatureError,
    LogChangedError,
    NotWritableError,
    RemoteProtocolError,
    ReplicationError,
    StorageLockedError,
)
from .log import (
    AppendEvent,
    AppendResult,
    DownloadEvent,
    Log,
    LogSnapshot,
    Store,
    TruncateEvent,
    open_store,
)
from .merkle import MerkleTree
from .storage import MemoryStorage, SQLiteStorage, Storage

if TYPE_CHECKING:
    from .replication import Progress, ReplicationSession, replicate, replication_for

#: Imported on first use: a program that only reads or appends (the `hyperlog` command,
#: a HAMT on a local log) does not pay for the replication protocol's modules.
_LAZY = frozenset({"Progress", "ReplicationSession", "replicate", "replication_for"})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import replication

        value = getattr(replication, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AppendEvent",
    "AppendResult",
    "BlockNotAvailableError",
    "CorruptStorageError",
    "DecodeError",
    "DownloadEvent",
    "ForkConflictError",
    "HyperlogError",
    "InvalidProofError",
    "InvalidRequestError",
    "InvalidSignatureError",
    "KeyPair",
    "Log",
    "LogChangedError",
    "LogSnapshot",
    "Manifest",
    "MemoryStorage",
    "MerkleTree",
    "NotWritableError",
    "Progress",
    "RemoteProtocolError",
    "ReplicationError",
    "ReplicationSession",
    "SQLiteStorage",
    "Storage",
    "Store",
    "StorageLockedError",
    "TruncateEvent",
    "Verifier",
    "discovery_key",
    "key_pair",
    "open_store",
    "replicate",
    "replication_for",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
