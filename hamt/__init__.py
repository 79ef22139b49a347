"""hamt: a hash-array-mapped-trie key-value store built on a hyperlog.

```python
async with hamt.open_hamt(log) as db:
    await db.put("users/alice", b"...")
    assert await db.get("users/alice") == b"..."
```

See docs/hamt.md for the block format, hashing and limits.
"""

from .cache import CacheStatistics as CacheStatistics
from .codec import BYTES as BYTES
from .codec import JSON as JSON
from .codec import MSGPACK as MSGPACK
from .codec import BytesCodec as BytesCodec
from .codec import Codec as Codec
from .codec import JsonCodec as JsonCodec
from .codec import MsgpackCodec as MsgpackCodec
from .errors import BatchTooLargeError as BatchTooLargeError
from .errors import CorruptNodeError as CorruptNodeError
from .errors import HamtError as HamtError
from .errors import InvalidKeyError as InvalidKeyError
from .errors import ReadOnlyError as ReadOnlyError
from .errors import TruncatedError as TruncatedError
from .errors import ValueTooLargeError as ValueTooLargeError
from .hashing import ComponentHash as ComponentHash
from .hints import PathHintClient as PathHintClient
from .hints import serve_path_hints as serve_path_hints
from .index import Batch as Batch
from .index import Change as Change
from .index import DiffEntry as DiffEntry
from .index import Hamt as Hamt
from .index import HamtStatistics as HamtStatistics
from .index import open_hamt as open_hamt
from .log import LogLike as LogLike
from .log import MemoryLog as MemoryLog

__all__ = [
    "BYTES",
    "JSON",
    "MSGPACK",
    "Batch",
    "BatchTooLargeError",
    "BytesCodec",
    "CacheStatistics",
    "Change",
    "Codec",
    "ComponentHash",
    "CorruptNodeError",
    "DiffEntry",
    "Hamt",
    "HamtError",
    "HamtStatistics",
    "InvalidKeyError",
    "JsonCodec",
    "LogLike",
    "MemoryLog",
    "MsgpackCodec",
    "PathHintClient",
    "ReadOnlyError",
    "TruncatedError",
    "ValueTooLargeError",
    "open_hamt",
    "serve_path_hints",
]
