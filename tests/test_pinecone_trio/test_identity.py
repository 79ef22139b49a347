from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest

from pinecone_trio import Identity, KeyFileError, PublicKey


def test_seed_gives_libsodium_key_pair() -> None:
    # RFC 8032 test 1: this seed gives this public key.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    ident = Identity.from_seed(seed)
    assert ident.public_key.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert ident.secret_key == seed + bytes(ident.public_key)
    sig = ident.sign(b"")
    assert sig.hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert ident.public_key.verify(b"", sig)
    assert not ident.public_key.verify(b"x", sig)
    assert not ident.public_key.verify(b"", sig[:-1])


def test_public_key_hex_round_trip_and_validation() -> None:
    key = Identity.generate().public_key
    assert PublicKey.from_hex(key.hex()) == key
    assert PublicKey.from_hex(key.hex().upper()) == key
    with pytest.raises(ValueError):
        PublicKey(b"\x00" * 31)
    with pytest.raises(ValueError):
        PublicKey.from_hex("zz" * 32)
    with pytest.raises(ValueError):
        PublicKey.from_hex("00" * 31)


def test_keys_order_lexicographically_like_pinecone() -> None:
    low = PublicKey(b"\x00" * 31 + b"\x01")
    mid = PublicKey(b"\x00" + b"\xff" * 31)
    high = PublicKey(b"\x01" + b"\x00" * 31)
    assert low < mid < high
    assert sorted([high, low, mid]) == [low, mid, high]
    assert max(low, high) == high


def test_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    ident = Identity.generate()
    ident.save(path)
    assert (os.stat(path).st_mode & 0o777) == 0o600
    assert Identity.load(path).public_key == ident.public_key
    with pytest.raises(KeyFileError, match="already exists"):
        ident.save(path)


def test_load_or_create(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first = Identity.load_or_create(path)
    assert Identity.load_or_create(path).public_key == first.public_key


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "expected 64 hex digits"),
        ("ab" * 31, "expected 64 hex digits"),
        ("zz" * 32, "not hex"),
        ("00" * 30 + "  00", "not hex"),  # 64 characters; fromhex would skip the spaces
        ("ab" * 600, "too large"),
    ],
)
def test_malformed_key_file_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=message):
        Identity.load(path)


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.key"
    Identity.generate().save(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        Identity.load(path)


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such key file"):
        Identity.load(tmp_path / "nope")


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    path = tmp_path / "fifo.key"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        Identity.load(path)  # used to block forever in the read


def test_a_saved_key_file_is_never_seen_half_written(tmp_path: Path) -> None:
    # The key is written to a temporary file and linked into place: no empty or partial
    # key file exists at any moment, and an existing one is never replaced.
    path = tmp_path / "k"
    first = Identity.generate()
    first.save(path)
    with pytest.raises(KeyFileError, match="already exists"):
        Identity.generate().save(path)
    assert Identity.load(path).public_key == first.public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]  # no temporary left
    second = Identity.generate()
    second.save(path, overwrite=True)
    assert Identity.load(path).public_key == second.public_key
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def _load_or_create(path: str, start: Any, out: Any) -> None:
    start.wait()
    try:
        out.put(Identity.load_or_create(path).public_key.hex())
    except Exception as exc:  # reported to the parent
        out.put(repr(exc))


def test_processes_starting_together_share_one_key(tmp_path: Path) -> None:
    # Two processes creating the same key file at once: one wins, the other loads its
    # key (it used to read the winner's still-empty file and fail).
    ctx = multiprocessing.get_context("fork")
    for i in range(20):
        path = str(tmp_path / f"race{i}.key")
        start, out = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_load_or_create, args=(path, start, out)) for _ in range(2)]
        for proc in procs:
            proc.start()
        results = [out.get(timeout=30) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
        assert results[0] == results[1] and len(results[0]) == 64, results
