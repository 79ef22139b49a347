"""A negative block index is a ValueError from `Log.get`, a snapshot's `get` and
replication's `get` alike.

`Log.get(-1)` raised BlockNotAvailableError ("block -1 does not exist", as if it might
exist some day) while `replication_for(log).get(-1)` raised ValueError.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hyperlog.errors import BlockNotAvailableError
from hyperlog.log import open_store
from hyperlog.replication import replication_for


async def test_a_negative_index_is_a_value_error_everywhere(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        log = await store.create_log()
        await log.append([b"a", b"b"])
        with pytest.raises(ValueError, match="must not be negative, got -1"):
            await log.get(-1)
        with pytest.raises(ValueError, match="must not be negative, got -1"):
            log.get_nowait(-1)
        with pytest.raises(ValueError, match="must not be negative, got -1"):
            await replication_for(log).get(-1, timeout=1)
        # With a replicator attached (it waits for missing blocks), still at once.
        with trio.fail_after(5), pytest.raises(ValueError, match="negative"):
            await log.get(-2, wait=True)
        # Past the end is still "not available": it may exist later.
        with pytest.raises(BlockNotAvailableError):
            await log.get(2, wait=False)
        with pytest.raises(BlockNotAvailableError):
            log.get_nowait(2)
        assert await log.get(1) == b"b"
        snapshot = log.snapshot()
        with pytest.raises(ValueError, match="must not be negative, got -1"):
            await snapshot.get(-1)
        with pytest.raises(BlockNotAvailableError):
            await snapshot.get(2, wait=False)
