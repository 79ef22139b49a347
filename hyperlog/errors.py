"""The hyperlog error hierarchy.

Names follow hypercore's vocabulary. Remote data that fails verification raises
`InvalidProofError` or `InvalidSignatureError`: drop that peer's data, keep the log.
Local requests that cannot be met raise `BlockNotAvailableError`, `NotWritableError`
or `InvalidRequestError`. Nothing in this module imports trio.

Other modules may add small subclasses here (additive edits only).
"""

from __future__ import annotations

__all__ = [
    "BlockNotAvailableError",
    "CorruptStorageError",
    "DecodeError",
    "HyperlogError",
    "InvalidProofError",
    "InvalidRequestError",
    "InvalidSignatureError",
    "LogChangedError",
    "NotWritableError",
    "StorageLockedError",
]


class HyperlogError(Exception):
    """Base class of every error hyperlog raises on purpose."""


class InvalidProofError(HyperlogError):
    """Remote data failed Merkle verification (hypercore's INVALID_PROOF / INVALID_CHECKSUM).

    Raised for a wrong node index, a hash that does not match, a proof for another fork
    or length than the one you trust, or a malformed proof. Nothing was stored.
    """


class InvalidSignatureError(InvalidProofError):
    """A signed tree head does not verify under the log's key (hypercore's INVALID_SIGNATURE).

    A subclass of `InvalidProofError`: code that drops bad peers can catch the base.
    """


class InvalidRequestError(HyperlogError):
    """A proof request cannot be answered: out of bounds, wrong fork, or contradictory.

    The replication layer answers such requests with `noData` (reason: invalid request).
    """


class DecodeError(HyperlogError):
    """Bytes (wire messages, a manifest, a multisig signature) could not be decoded."""


class BlockNotAvailableError(HyperlogError, LookupError):
    """The block or tree node is not held locally (hypercore's BLOCK_NOT_AVAILABLE).

    Also a `LookupError`, as `IndexError` and `KeyError` are: code written against any
    log of blocks (the `hamt` package's `ReadableLog`) catches "no such block" as one."""


class NotWritableError(HyperlogError):
    """The log has no secret key here, so it cannot append or truncate."""


class CorruptStorageError(HyperlogError):
    """Stored data is damaged or inconsistent; it is never returned as valid data."""


class LogChangedError(HyperlogError):
    """The log changed fork under a read-only open (the writer truncated it): reopen it.

    A read-only open reads the log as it was committed when it was opened. Once the
    writer beside it truncates the log, the stored blocks past the cut belong to
    another fork, so reads raise this instead of returning them.
    """


class StorageLockedError(HyperlogError):
    """The store is already open for writing (by this or another process)."""


class ReplicationError(HyperlogError):
    """Replication with a peer failed; the session with that peer is closed."""


class RemoteProtocolError(ReplicationError):
    """The peer broke the replication protocol (unrequested data, flooding, bad state).

    The peer's session is dropped; nothing it sent after the violation is stored.
    """


class ForkConflictError(HyperlogError):
    """Two different validly signed trees exist for one fork: the log is frozen.

    Attributes:
        local: our signed head (whatever the log reports, e.g. length/fork/tree hash).
        remote: the peer's contradicting signed head.
    """

    def __init__(self, message: str, *, local: object = None, remote: object = None) -> None:
        super().__init__(message)
        self.local = local
        self.remote = remote


class NoPeersError(ReplicationError):
    """Fewer peers serve a log than were waited for, and no session can bring more.

    Raised by `LogReplication.wait_for_peers` once every session that offered the log
    has an answer that is not a peer: the peer refused the log (it serves another key,
    or the capability was wrong), left its open unanswered, or the session ended.

    Attributes:
        reasons: what happened to each of those sessions, in a user's words.
    """

    def __init__(self, message: str, *, reasons: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.reasons = reasons
