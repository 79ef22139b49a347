"""`SendBudget`: back-pressure for locally originated traffic."""

from __future__ import annotations

import trio
import trio.testing

from pinecone_trio.peering import SendBudget


def test_try_acquire_takes_room_until_full_and_nothing_after() -> None:
    budget = SendBudget(max_bytes=1_000, max_frames=3)
    assert budget.try_acquire(600)
    assert budget.try_acquire(600)  # room is checked before a frame, as in `acquire`
    assert (budget.used, budget.frames) == (1_200, 2)
    assert not budget.try_acquire(1)  # bytes full
    assert (budget.used, budget.frames) == (1_200, 2)  # a refusal takes nothing
    budget.release(600)
    assert budget.try_acquire(1)
    assert budget.try_acquire(1)
    assert not budget.try_acquire(1)  # frames full (600 + 2 bytes, 3 frames)
    assert (budget.used, budget.frames) == (602, 3)


async def test_acquire_waits_for_a_release() -> None:
    budget = SendBudget(max_bytes=100, max_frames=10)
    assert budget.try_acquire(100)
    acquired = False

    async def sender() -> None:
        nonlocal acquired
        await budget.acquire(10)
        acquired = True

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert not acquired
        budget.release(100)
    assert acquired
    assert (budget.used, budget.frames) == (10, 1)
