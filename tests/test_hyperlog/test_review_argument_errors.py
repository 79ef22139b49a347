"""Bad numbers get the documented errors, not whatever breaks inside (reviewer's d10, d11).

A peer's fork outside 0 .. 2**64 - 1 is an `InvalidProofError` (it was a raw
`struct.error`); a local fork outside it is a `ValueError`; an index that is not an
int (``1.0``, ``True``) is a `TypeError` saying so at the public API, instead of an
operator error from storage or, with ``True`` and ``1.0``, block 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hyperlog.crypto import MAX_U64
from hyperlog.errors import InvalidProofError
from hyperlog.log import Log, open_store
from hyperlog.merkle import MerkleTree
from hyperlog.proof import ProofRequest, UpgradeRequest, verify_proof


@pytest.mark.parametrize("fork", [2**64, 2**70, -1])
async def test_a_proof_with_a_fork_outside_u64_is_an_invalid_proof(fork: int) -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log()
        await writer.append([b"a", b"b"])
        reader = await rs.open_log(writer.key, manifest=writer.manifest)
        good = writer.create_proof(ProofRequest(0, upgrade=UpgradeRequest(0, 2)))
        bad = dataclasses.replace(good, fork=fork)
        with pytest.raises(InvalidProofError, match="64-bit"):
            verify_proof(MerkleTree(), bad, reader.key, lambda i: None)
        with pytest.raises(InvalidProofError, match="64-bit"):
            await reader.apply_proof(bad)
        assert (reader.length, reader.fork) == (0, 0)
        assert (await reader.apply_proof(good)).upgraded
        assert (reader.length, reader.fork) == (2, 0)


async def test_truncate_refuses_a_fork_outside_u64(tmp_path: Path) -> None:
    async with open_store(tmp_path) as store:
        log = await store.create_log()
        await log.append([b"a", b"bb", b"ccc", b"dddd"])
        with pytest.raises(ValueError, match="64 bits"):
            await log.truncate(2, fork=2**64)
        assert (log.length, log.fork) == (4, 0)
        await log.truncate(3, fork=MAX_U64)  # the last fork there is
        with pytest.raises(ValueError, match="64 bits"):
            await log.truncate(2)  # no fork above it
        assert (log.length, log.fork) == (3, MAX_U64)
        await log.append(b"e")
    async with open_store(tmp_path) as store:
        log = await store.default_log()
        assert (log.length, log.fork) == (4, MAX_U64)
        await log.verify()


def _calls(log: Log, bad: Any) -> dict[str, Callable[[], Awaitable[Any] | Any]]:
    snap = log.snapshot()

    async def blocks() -> list[bytes]:
        return [v async for v in log.iter_blocks(bad)]

    return {
        "get": lambda: log.get(bad),
        "get_nowait": lambda: log.get_nowait(bad),
        "get_many": lambda: log.get_many([0, bad]),
        "has": lambda: log.has(bad),
        "has_range": lambda: log.has_range(0, bad),
        "have_bits": lambda: log.have_bits(bad, 8),
        "missing_nodes": lambda: log.missing_nodes(bad),
        "iter_blocks": blocks,
        "seek": lambda: log.seek(bad),
        "byte_offset": lambda: log.byte_offset(bad),
        "wait_length": lambda: log.wait_length(bad),
        "snapshot.get": lambda: snap.get(bad),
        "snapshot.has": lambda: snap.has(bad),
        "snapshot.seek": lambda: snap.seek(bad),
        "truncate": lambda: log.truncate(bad),
        "truncate fork": lambda: log.truncate(2, fork=bad),
    }


@pytest.mark.parametrize("bad", [1.0, 2.5, True, "1", None], ids=repr)
async def test_an_index_that_is_not_an_int_is_a_type_error(tmp_path: Path, bad: Any) -> None:
    async with open_store(tmp_path) as store:
        log = await store.create_log()
        await log.append([b"a", b"bb", b"ccc", b"dddd"])
        for name, call in _calls(log, bad).items():
            if bad is None and name in ("truncate fork",):
                continue  # fork=None is the default: the next fork
            with pytest.raises(TypeError, match="must be an int"):
                result = call()
                if isinstance(result, Awaitable):
                    await result
                pytest.fail(f"{name}({bad!r}) returned")
        assert (log.length, log.fork) == (4, 0)
        assert await log.get(1) == b"bb"
