"""The `hamt` exception hierarchy.

```
HamtError
├── CorruptNodeError      a block does not decode as a HAMT block, or breaks the trie's rules
├── InvalidKeyError       a key is not a valid path, or too long
├── ValueTooLargeError    a value (after the codec) exceeds MAX_VALUE_BYTES
├── BatchTooLargeError    a batch holds more ops or bytes than one block may
├── ReadOnlyError         a write to a checkout or to a log you cannot append to
└── TruncatedError        a checkout's version was cut away by a truncation (another fork)
```

Missing keys are `None`, not exceptions. Nothing in this module imports trio.
"""

from __future__ import annotations

__all__ = [
    "BatchTooLargeError",
    "CorruptNodeError",
    "HamtError",
    "InvalidKeyError",
    "ReadOnlyError",
    "TruncatedError",
    "ValueTooLargeError",
]


class HamtError(Exception):
    """Base class of every error `hamt` raises on purpose."""


class CorruptNodeError(HamtError):
    """A block is not a valid HAMT block, or a pointer breaks the trie's rules.

    Raised for undecodable bytes, wrong shapes or sizes, pointers to the future or out
    of range (every pointer must go strictly backwards, which also rules out cycles),
    and entries missing from the block a pointer names. `seq` is the offending block.
    """

    def __init__(self, message: str, *, seq: int | None = None) -> None:
        super().__init__(message if seq is None else f"block {seq}: {message}")
        self.seq = seq


class InvalidKeyError(HamtError, ValueError):
    """A key is empty, too long, not a string, or has an empty path component."""


class ValueTooLargeError(HamtError, ValueError):
    """A value, after the codec, is larger than `MAX_VALUE_BYTES`."""


class BatchTooLargeError(HamtError, ValueError):
    """A batch has more than `MAX_BATCH_OPS` ops or would exceed `MAX_BLOCK_BYTES`."""


class ReadOnlyError(HamtError):
    """You wrote to a checkout, or to a HAMT whose log you cannot append to."""


class TruncatedError(HamtError):
    """A checkout's version is gone: the log was truncated below it (a new fork).

    The blocks past the cut now belong to another fork, so the checkout refuses to
    read instead of answering with that fork's data. Make a new checkout.
    """
