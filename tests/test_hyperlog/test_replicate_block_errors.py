"""What the block inside `replicate(...)` raises comes out as itself.

From a newcomer review: `replicate` alone among the library's context managers handed
the block's exception back in an `ExceptionGroup` (its nursery), so `except
BlockNotAvailableError` around the block never matched, and Ctrl-C ended the README's
HAMT writer with a `BaseExceptionGroup[KeyboardInterrupt]` traceback (exit 1, not 130).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hyperlog import BlockNotAvailableError
from hyperlog.log import open_store
from hyperlog.replication import replicate, replication_for


class _Mine(Exception):
    pass


@pytest.mark.parametrize("raised", [_Mine, KeyboardInterrupt])
async def test_the_blocks_exception_is_raised_as_itself(raised: type[BaseException]) -> None:
    async with open_store() as ws, open_store() as rs:
        wlog = await ws.create_log()
        await wlog.append([b"a"])
        rlog = await rs.open_log(wlog.key)
        s1, s2 = trio.testing.memory_stream_pair()
        with pytest.raises(raised) as info, trio.fail_after(10):
            async with replicate(s1, wlog), replicate(s2, rlog):
                await replication_for(rlog).update()
                raise raised()
        assert type(info.value) is raised  # not a group


async def test_the_blocks_exception_keeps_its_cause() -> None:
    root = KeyError("root")
    async with open_store() as ws:
        wlog = await ws.create_log()
        s1, _s2 = trio.testing.memory_stream_pair()
        with pytest.raises(_Mine) as info:
            async with replicate(s1, wlog):
                raise _Mine() from root
        assert info.value.__cause__ is root
        assert not isinstance(info.value.__context__, BaseExceptionGroup)


async def test_a_get_that_times_out_can_be_caught_around_the_block() -> None:
    async with open_store() as ws, open_store() as rs:
        wlog = await ws.create_log()
        await wlog.append([b"a"])
        rlog = await rs.open_log(wlog.key)
        s1, s2 = trio.testing.memory_stream_pair()
        with pytest.raises(BlockNotAvailableError), trio.fail_after(10):
            async with replicate(s1, wlog), replicate(s2, rlog):
                await replication_for(rlog).update()
                await rlog.get(5, timeout=0.05)  # beyond the writer's length


async def test_an_outer_cancellation_still_just_cancels() -> None:
    async with open_store() as ws, open_store() as rs:
        wlog = await ws.create_log()
        rlog = await rs.open_log(wlog.key)
        s1, s2 = trio.testing.memory_stream_pair()
        with trio.move_on_after(0.05) as scope:
            async with replicate(s1, wlog), replicate(s2, rlog):
                await trio.sleep_forever()
        assert scope.cancelled_caught
