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
from .replication import Progress, ReplicationSession, replicate, replication_for
from .storage import MemoryStorage, SQLiteStorage, Storage

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
