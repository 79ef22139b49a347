"""A write that committed returns normally even if its caller was cancelled meanwhile.

Trio's rule for cancellation: `Cancelled` means the operation did not happen. An
append, truncation or proof group that waits for a worker thread cannot be stopped
once the thread runs; if the caller is cancelled meanwhile, the write still commits,
so it must return its result rather than raise `Cancelled` (a caller that retried a
"cancelled" append would write the block twice).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

from hyperlog.constants import APPEND_THREAD_THRESHOLD_BYTES
from hyperlog.log import Log, open_store
from hyperlog.proof import BlockRequest, ProofRequest, UpgradeRequest
from hyperlog.storage import MemoryStorage, WriteBatch


def _cancel_during_commit(storage: MemoryStorage, scope: trio.CancelScope) -> None:
    """Make the storage's next commits cancel ``scope`` from their worker thread."""
    commit: Callable[[int, WriteBatch], None] = storage.commit

    def cancelling(handle: int, batch: WriteBatch) -> None:
        trio.from_thread.run_sync(scope.cancel)
        commit(handle, batch)

    storage.commit = cancelling  # type: ignore[method-assign]


async def _write_cancelled(storage: MemoryStorage, write: Callable[[], Any]) -> bool:
    """Run ``write()`` in a scope its commit cancels; return True if it returned."""
    with trio.CancelScope() as scope:
        _cancel_during_commit(storage, scope)
        await write()
        return True
    return False


@pytest.mark.parametrize("operation", ["append", "truncate", "apply_proofs"])
async def test_a_write_committed_in_a_thread_is_not_reported_cancelled(operation: str) -> None:
    big = b"x" * APPEND_THREAD_THRESHOLD_BYTES  # appended in a worker thread
    writer_storage, reader_storage = MemoryStorage(), MemoryStorage()
    async with open_store(writer_storage) as ws, open_store(reader_storage) as rs:
        writer = await ws.create_log()
        await writer.append([b"a", b"b"])
        log: Log = writer
        storage = writer_storage
        if operation == "append":
            returned = await _write_cancelled(storage, lambda: writer.append(big))
            expected = (3, 2 + len(big))
        elif operation == "truncate":
            returned = await _write_cancelled(storage, lambda: writer.truncate(1))
            expected = (1, 1)
        else:
            await writer.append(big)
            log = reader = await rs.open_log(writer.key)
            storage = reader_storage
            proof = writer.create_proof(
                ProofRequest(
                    0, block=BlockRequest(2, 0), upgrade=UpgradeRequest(0, 3), manifest=True
                )
            )
            returned = await _write_cancelled(storage, lambda: reader.apply_proofs([proof]))
            expected = (3, 2 + len(big))
        assert (log.length, log.byte_length) == expected  # it committed ...
        assert returned  # ... so it returned instead of raising Cancelled
