from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from pinecone_trio._util import open_service_nursery
from pinecone_trio.errors import NodeCrashedError


async def test_body_exception_propagates_as_itself() -> None:
    with pytest.raises(KeyError):
        async with open_service_nursery("svc") as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise KeyError("mine")


async def test_body_exception_keeps_the_cause_it_was_raised_with() -> None:
    # It was raised `from None` (to hide the group): a `raise ... from cause` in the
    # block lost its cause.
    root = KeyError("root")
    with pytest.raises(ValueError) as info:
        async with open_service_nursery("svc") as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise ValueError("mine") from root
    assert info.value.__cause__ is root
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


async def test_background_failure_becomes_node_crashed() -> None:
    async def boom() -> None:
        raise RuntimeError("background")

    with pytest.raises(NodeCrashedError, match="svc crashed") as info:
        async with open_service_nursery("svc") as nursery:
            nursery.start_soon(boom)
            await trio.sleep_forever()
    assert isinstance(info.value.__cause__, BaseExceptionGroup)


async def test_outer_cancellation_passes_through() -> None:
    with trio.move_on_after(0.01) as scope:
        async with open_service_nursery("svc") as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_clean_exit_cancels_background_tasks() -> None:
    finished = []

    async def worker() -> None:
        try:
            await trio.sleep_forever()
        finally:
            finished.append(True)

    async with open_service_nursery("svc") as nursery:
        nursery.start_soon(worker)
        await trio.lowlevel.checkpoint()
    assert finished == [True]


async def test_body_exception_group_is_not_a_crash() -> None:
    with pytest.raises(ExceptionGroup) as info:
        async with open_service_nursery("svc") as nursery:
            nursery.start_soon(trio.sleep_forever)
            async with trio.open_nursery():
                raise ValueError("inner")
    assert not isinstance(info.value, NodeCrashedError)
    assert isinstance(info.value.exceptions[0], ValueError)


async def test_keyboard_interrupt_in_body_wins_over_a_background_failure() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("cleanup failed")

    with pytest.raises(KeyboardInterrupt):
        async with open_service_nursery("svc") as nursery:
            nursery.start_soon(fails_when_cancelled)
            await trio.testing.wait_all_tasks_blocked()
            raise KeyboardInterrupt
