"""`Log.append` returns the length and byte length its own blocks made.

Concurrent appends from several tasks interleave at the checkpoint each append ends
with; the result must still describe the append that returned it (its last block is
at ``length - 1``), not whatever the log reached by the time the task resumed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hyperlog.log import AppendResult, open_store


@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_concurrent_appends_each_get_their_own_result(tmp_path: Path, backend: str) -> None:
    where = None if backend == "memory" else tmp_path / "s"
    async with open_store(where) as store:
        log = await store.create_log()
        results: dict[bytes, AppendResult] = {}

        async def append(data: bytes | list[bytes]) -> None:
            key = data if isinstance(data, bytes) else data[-1]
            results[key] = await log.append(data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append, b"one")
            nursery.start_soon(append, [b"two", b"three"])
            nursery.start_soon(append, b"four!")
        assert log.length == 4
        for key, result in results.items():
            assert await log.get(result.length - 1) == key
            assert result.byte_length == await log.byte_offset(result.length - 1) + len(key)
