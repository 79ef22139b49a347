"""`LogSnapshot.get(i, wait=True)` never returns another fork's block.

The snapshot checked that ``i`` was inside it only before waiting; if the log forked
while the call waited, the block that arrived was the new fork's (reviewer's d17).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hyperlog.errors import BlockNotAvailableError
from hyperlog.log import Log, LogSnapshot, open_store
from hyperlog.proof import BlockRequest, ProofRequest, UpgradeRequest


async def _fetch(reader: Log, writer: Log, index: int) -> None:
    request = ProofRequest(writer.fork, block=BlockRequest(index, reader.missing_nodes(index)))
    await reader.apply_proof(writer.create_proof(request))


async def _get_in_background(
    nursery: trio.Nursery, snap: LogSnapshot, index: int
) -> list[bytes | BaseException]:
    out: list[bytes | BaseException] = []

    async def getter() -> None:
        try:
            out.append(await snap.get(index, wait=True, timeout=30))
        except BlockNotAvailableError as exc:
            out.append(exc)

    nursery.start_soon(getter)
    await trio.testing.wait_all_tasks_blocked()
    assert out == []  # it waits
    return out


async def test_a_snapshot_get_that_waits_across_a_fork_change_raises() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log()
        await writer.append([b"fork0-block%d" % i for i in range(10)])
        reader = await rs.open_log(writer.key, manifest=writer.manifest)
        await reader.apply_proof(
            writer.create_proof(ProofRequest(0, upgrade=UpgradeRequest(0, 10)))
        )
        snap = reader.snapshot()
        async with trio.open_nursery() as nursery:
            out = await _get_in_background(nursery, snap, 7)
            await writer.truncate(5)
            await writer.append([b"FORK1-block%d" % i for i in range(5, 10)])
            up = writer.create_proof(ProofRequest(1, upgrade=UpgradeRequest(0, 10)))
            assert (await reader.apply_proof(up)).truncated_to is not None
            await _fetch(reader, writer, 7)
        assert len(out) == 1
        assert isinstance(out[0], BlockNotAvailableError), out
        assert await reader.get(7) == b"FORK1-block7"  # the log itself has it
        with pytest.raises(BlockNotAvailableError):
            await snap.get(7)


async def test_a_snapshot_get_that_waits_on_the_same_fork_returns_the_block() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log()
        await writer.append([b"block%d" % i for i in range(10)])
        reader = await rs.open_log(writer.key, manifest=writer.manifest)
        await reader.apply_proof(
            writer.create_proof(ProofRequest(0, upgrade=UpgradeRequest(0, 10)))
        )
        snap = reader.snapshot()
        async with trio.open_nursery() as nursery:
            out = await _get_in_background(nursery, snap, 7)
            await writer.append(b"block10")
            await _fetch(reader, writer, 7)
        assert out == [b"block7"]
