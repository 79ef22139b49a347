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

To keep a reader's copy following a writer through lost connections, ``async with
follow(log, dial) as follower:`` redials ``dial()`` (any ``async () -> trio.abc.Stream``)
with a backoff and reports what happens to an ``on_event`` callback.

See docs/hyperlog.md (tree, hashes, proofs), docs/hyperlog-storage.md (SQLite layout,
durability) and docs/replication.md (the replication protocol, following a writer).
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
    NoPeersError,
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
    from .follow_policy import (
        ConnectedEvent,
        DialFailedEvent,
        FollowError,
        FollowEvent,
        LostEvent,
        SteadyEvent,
        UnansweredError,
    )
    from .follower import Follower, FollowStatistics, TcpKeepalive, follow, set_keepalive
    from .replication import Progress, ReplicationSession, replicate, replication_for

#: Imported on first use, from the module named: a program that only reads or appends
#: (the `hyperlog` command, a HAMT on a local log) does not pay for the replication
#: protocol's modules (the follower's import them).
_LAZY = {
    "Progress": "replication",
    "ReplicationSession": "replication",
    "replicate": "replication",
    "replication_for": "replication",
    "ConnectedEvent": "follow_policy",
    "DialFailedEvent": "follow_policy",
    "FollowError": "follow_policy",
    "FollowEvent": "follow_policy",
    "LostEvent": "follow_policy",
    "SteadyEvent": "follow_policy",
    "UnansweredError": "follow_policy",
    "FollowStatistics": "follower",
    "Follower": "follower",
    "TcpKeepalive": "follower",
    "follow": "follower",
    "set_keepalive": "follower",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{module}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AppendEvent",
    "AppendResult",
    "BlockNotAvailableError",
    "ConnectedEvent",
    "CorruptStorageError",
    "DecodeError",
    "DialFailedEvent",
    "DownloadEvent",
    "FollowError",
    "FollowEvent",
    "FollowStatistics",
    "Follower",
    "ForkConflictError",
    "HyperlogError",
    "InvalidProofError",
    "InvalidRequestError",
    "InvalidSignatureError",
    "KeyPair",
    "Log",
    "LogChangedError",
    "LogSnapshot",
    "LostEvent",
    "Manifest",
    "MemoryStorage",
    "MerkleTree",
    "NoPeersError",
    "NotWritableError",
    "Progress",
    "RemoteProtocolError",
    "ReplicationError",
    "ReplicationSession",
    "SQLiteStorage",
    "SteadyEvent",
    "Storage",
    "Store",
    "StorageLockedError",
    "TcpKeepalive",
    "TruncateEvent",
    "UnansweredError",
    "Verifier",
    "discovery_key",
    "follow",
    "key_pair",
    "open_store",
    "replicate",
    "replication_for",
    "set_keepalive",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
