"""`Log.waiting`: whether a `get` still waits for a block (replication asks it before
fetching a parked want), and a `get` that gives up leaves nothing behind."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hyperlog.errors import BlockNotAvailableError
from hyperlog.log import open_store


async def test_a_get_that_gives_up_is_no_longer_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_store() as writer_store, open_store() as reader_store:
        writer = await writer_store.create_log()
        await writer.append([b"a", b"b"])
        reader = await reader_store.open_log(writer.key, manifest=writer.manifest)
        assert not reader.waiting(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: reader.get(1, wait=True, timeout=None))
            await trio.testing.wait_all_tasks_blocked()
            assert reader.waiting(1)
            nursery.cancel_scope.cancel()
        assert not reader.waiting(1)
        with pytest.raises(BlockNotAvailableError):
            await reader.get(1, wait=True, timeout=5)
        assert not reader.waiting(1)
        assert reader._block_waiters == {}  # (before, each given-up get left its event)
