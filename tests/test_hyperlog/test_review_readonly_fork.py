"""A read-only open beside the writer never returns another fork's blocks.

A read-only open reads the log as committed when it opened it. When the writer
truncates the log (a new fork) and appends again, the stored rows at the old indices
are the new fork's: every read then raises `LogChangedError` ("reopen it") instead of
returning them as the old fork's, or reporting the truncated blocks as corruption
(reviewer's d06 and d07).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hyperlog.errors import BlockNotAvailableError, LogChangedError
from hyperlog.log import Log, open_store
from hyperlog.proof import BlockRequest, ProofRequest


def _reads(ro: Log) -> dict[str, Callable[[], Awaitable[Any]]]:
    snap = ro.snapshot()

    async def nowait() -> bytes:
        return ro.get_nowait(1)

    async def blocks() -> list[bytes]:
        return [v async for v in ro.iter_blocks()]

    async def proof() -> object:
        return ro.create_proof(ProofRequest(ro.fork, block=BlockRequest(1, 0)))

    return {
        "get": lambda: ro.get(1),
        "get_nowait": nowait,
        "get_many": lambda: ro.get_many([0, 1, 2]),
        "iter_blocks": blocks,
        "verify": ro.verify,
        "seek": lambda: ro.seek(2),
        "byte_offset": lambda: ro.byte_offset(2),
        "create_proof": proof,
        "snapshot.get": lambda: snap.get(2),
        "snapshot.seek": lambda: snap.seek(2),
    }


@pytest.mark.parametrize("reappend", [True, False], ids=["truncate+append", "truncate"])
async def test_reads_after_the_writer_truncates_raise_log_changed(
    tmp_path: Path, reappend: bool
) -> None:
    async with open_store(tmp_path) as store:
        log = await store.create_log()
        await log.append([b"a", b"b", b"c"])
        async with open_store(tmp_path, readonly=True) as ro_store:
            ro = await ro_store.open_log(log.key, create=False)
            reads = _reads(ro)
            assert await ro.get(2) == b"c"
            for read in reads.values():
                await read()  # all fine before the writer moves
            await log.truncate(1)
            if reappend:
                await log.append([b"X", b"Y"])
            for name, read in reads.items():
                with pytest.raises(LogChangedError, match="reopen"):
                    await read()
                    pytest.fail(f"{name} returned after the log changed fork")
            assert (ro.length, ro.fork) == (3, 0)  # it does not pretend to move
        async with open_store(tmp_path, readonly=True) as ro_store:
            ro = await ro_store.open_log(log.key, create=False)
            assert ro.fork == 1
            expected = [b"a", b"X", b"Y"] if reappend else [b"a"]
            assert [v async for v in ro.iter_blocks()] == expected
            await ro.verify()


async def test_appends_beside_a_read_only_open_keep_it_readable(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        log = await store.create_log()
        await log.append([b"a", b"b", b"c"])
        async with open_store(tmp_path, readonly=True) as ro_store:
            ro = await ro_store.open_log(log.key, create=False)
            await log.append([b"d", b"e"])
            other = await store.create_log()
            await other.append(b"another log")
            assert ro.length == 3  # the head it opened
            assert [await ro.get(i) for i in range(3)] == [b"a", b"b", b"c"]
            assert [v async for v in ro.iter_blocks()] == [b"a", b"b", b"c"]
            await ro.verify()
            with pytest.raises(BlockNotAvailableError):
                await ro.get(3)
