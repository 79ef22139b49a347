"""The writer signs its head lazily: appends commit it unsigned, exposing it signs it.

An append stores blocks, nodes and the unsigned head (fork, length, byte length, tree
hash) in one transaction. The signature is made the first time something exposes the
signed head (`Log.signature`, `Log.head`, an upgrade proof, a snapshot's signature,
`verify`) and stored at close or by the next writable open. ed25519 is deterministic,
so it is the signature an eager writer (and hypercore) would have stored.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import trio

from hyperlog import cli
from hyperlog.crypto import key_pair
from hyperlog.errors import BlockNotAvailableError, CorruptStorageError
from hyperlog.log import Store, open_store
from hyperlog.proof import ProofRequest, UpgradeRequest
from hyperlog.storage import DB_FILENAME, SQLiteStorage, _decode_head

_SEED = bytes(range(32))


def _stored_head_signature(path: Path) -> bytes | None:
    """Return the signature of the newest stored head of log 1 (None: unsigned)."""
    conn = sqlite3.connect(path / DB_FILENAME)
    try:
        rows = conn.execute("SELECT head FROM blocks WHERE head IS NOT NULL").fetchall()
        rows += conn.execute("SELECT value FROM state WHERE id = ?", ((1 << 33) | (1 << 32),))
    finally:
        conn.close()
    heads = [_decode_head(r[0], path) for r in rows]
    return max(heads, key=lambda h: (h.fork, h.length)).signature


async def _crashed_writer(path: Path, blocks: list[bytes]) -> tuple[bytes, bytes]:
    """Append ``blocks`` and stop without closing the log (as a killed process would).

    Returns the log key and the expected signature of the last head.
    """
    storage = SQLiteStorage(path)
    store = Store(storage, str(path))
    log = await store.create_log(key_pair(_SEED))
    for block in blocks:
        await log.append(block)
    assert log.verifier is not None
    expected = log.verifier.sign(log.tree_hash(), log.length, log.fork, key_pair(_SEED).secret_key)
    storage.close()  # no Store.aclose: the head stays unsigned on disk
    return log.key, expected


async def test_append_commits_an_unsigned_head_and_close_stores_the_signature(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log(key_pair(_SEED))
        await log.append([b"a", b"b"])
        await log.append(b"c")
        assert log._tree.signature is None  # not signed by the append
        assert _stored_head_signature(path) is None
        signature = log.signature  # exposing it signs it (in memory)
        assert signature is not None
        assert log.verifier is not None
        assert log.verifier.verify(log.tree_hash(), 3, 0, signature)
        assert _stored_head_signature(path) is None
    assert _stored_head_signature(path) == signature
    async with open_store(path, readonly=True) as store:
        log = await store.default_log()
        assert log.signature == signature


async def test_a_reopened_writer_signs_its_unsigned_head(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _, expected = await _crashed_writer(path, [b"x", b"y", b"z"])
    assert _stored_head_signature(path) is None
    async with open_store(path) as store:
        log = await store.default_log()
        assert _stored_head_signature(path) == expected  # stored by the open itself
        assert log.signature == expected
        await log.verify()


async def test_read_only_open_with_the_secret_key_signs_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "s"
    _, expected = await _crashed_writer(path, [b"x", b"y"])
    async with open_store(path, readonly=True) as store:
        log = await store.default_log()
        assert log.signed
        assert log.signature == expected
        await log.verify()
    assert _stored_head_signature(path) is None  # a read-only open writes nothing


async def test_without_the_secret_key_the_head_stays_unsigned_and_is_never_proved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s"
    await _crashed_writer(path, [b"x", b"y", b"z"])
    conn = sqlite3.connect(path / DB_FILENAME)
    conn.execute("UPDATE logs SET secret_key = NULL")
    conn.commit()
    conn.close()
    async with open_store(path, readonly=True) as store:
        log = await store.default_log()
        assert (log.length, log.signed, log.signature) == (3, False, None)
        assert await log.get(2) == b"z"
        with pytest.raises(BlockNotAvailableError, match="no signed head"):
            log.create_proof(ProofRequest(0, upgrade=UpgradeRequest(0, 3)))
        with pytest.raises(CorruptStorageError, match="not signed yet"):
            await log.verify()
    assert await trio.to_thread.run_sync(cli.main, ["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["length"], info["signature"]) == (3, None)
    assert await trio.to_thread.run_sync(cli.main, ["info", str(path)]) == 0
    assert "signature: unsigned" in capsys.readouterr().out
    assert await trio.to_thread.run_sync(cli.main, ["verify", str(path)]) != 0
    err = capsys.readouterr().err
    assert "not signed yet" in err
    assert len(err.strip().splitlines()) == 1


async def test_cli_verify_signs_first_then_checks(tmp_path: Path) -> None:
    path = tmp_path / "s"
    await _crashed_writer(path, [b"x"] * 5)
    assert await trio.to_thread.run_sync(cli.main, ["verify", str(path)]) == 0


async def test_an_upgrade_proof_always_carries_the_signature(tmp_path: Path) -> None:
    async with open_store(tmp_path / "w") as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(_SEED))
        reader = await rs.open_log(writer.key)
        for n in range(1, 6):
            await writer.append(bytes([n]) * n)
            assert writer._tree.signature is None
            proof = writer.create_proof(
                ProofRequest(writer.fork, upgrade=UpgradeRequest(reader.length, 1), manifest=True)
            )
            assert proof.upgrade is not None
            assert proof.upgrade.signature == writer.signature
            result = await reader.apply_proof(proof)
            assert result.upgraded
            assert (reader.length, reader.signature) == (n, writer.signature)


async def test_a_snapshot_signs_its_own_head(tmp_path: Path) -> None:
    async with open_store(tmp_path / "s") as store:
        log = await store.create_log(key_pair(_SEED))
        await log.append(b"one")
        old = log.snapshot()
        await log.append(b"two")
        new = log.snapshot()
        assert new.signature == log.signature
        assert log.verifier is not None
        assert old.signature is not None
        assert log.verifier.verify(old.tree_hash(), 1, 0, old.signature)
        assert old.signature != new.signature
        assert log.head.signature == log.signature


async def test_truncation_signs_and_stores_eagerly(tmp_path: Path) -> None:
    path = tmp_path / "s"
    async with open_store(path) as store:
        log = await store.create_log(key_pair(_SEED))
        await log.append([b"a", b"b", b"c"])
        await log.truncate(2)
        assert _stored_head_signature(path) == log._tree.signature is not None


async def test_a_failure_to_store_the_signature_at_close_still_closes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Storing the signature at close is optional work (the next writable open redoes
    # it); a full disk there left the store open with its write lock held.
    path = tmp_path / "s"

    def disk_full(self: SQLiteStorage, handle: int, head: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    async with open_store(path) as store:
        log = await store.create_log(key_pair(_SEED))
        await log.append(b"kept")
        expected = log.signature
        monkeypatch.setattr(SQLiteStorage, "store_signature", disk_full)
    monkeypatch.undo()
    assert _stored_head_signature(path) is None
    async with open_store(path) as store:  # not refused: the first store released its lock
        log = await store.default_log()
        assert (log.length, log.signature) == (1, expected)
        assert await log.get(0) == b"kept"
