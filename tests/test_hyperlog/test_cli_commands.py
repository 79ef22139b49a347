"""The ``hyperlog`` command: create, append, cat, info, verify, and one-line errors."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hyperlog.cli import main
from hyperlog.storage import DB_FILENAME
from tests.conftest import SHARED

VECTORS = json.loads((SHARED / "vectors" / "hypercore.json").read_text())


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_append_info_matches_hypercore_vectors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "log")
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"\n".join(b.encode() for b in VECTORS["blocks"]) + b"\n")
    code, out, _ = _run(capsys, "create", store, "--seed", VECTORS["seed"])
    assert code == 0 and out.strip() == VECTORS["defaultManifestMode"]["key"]
    assert _run(capsys, "append", store, "--lines", str(lines))[0] == 0
    code, out, _ = _run(capsys, "info", store, "--json")
    info = json.loads(out)
    assert code == 0
    assert set(info) == {
        "key",
        "discovery_key",
        "length",
        "byte_length",
        "fork",
        "tree_hash",
        "signature",
        "writable",
    }
    assert info["key"] == VECTORS["defaultManifestMode"]["key"]
    assert info["tree_hash"] == VECTORS["treeHash"]
    assert info["signature"] == VECTORS["defaultManifestMode"]["signature"]
    assert (info["length"], info["fork"], info["writable"]) == (5, 0, True)
    code, out, _ = _run(capsys, "cat", store)
    assert out.encode() == lines.read_bytes()
    code, out, _ = _run(capsys, "cat", store, "--start", "1", "--end", "3")
    assert out.splitlines() == VECTORS["blocks"][1:3]
    code, out, _ = _run(capsys, "verify", store)
    assert code == 0 and out.startswith("ok:")
    code, out, _ = _run(capsys, "info", store)
    assert f"tree_hash: {VECTORS['treeHash']}" in out


def test_compat_and_file_blocks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "log")
    data = bytes(range(256)) * 40  # 10,240 bytes
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    assert _run(capsys, "create", store, "--seed", VECTORS["seed"], "--compat")[0] == 0
    assert _run(capsys, "append", store, "--file", str(src), "--block-size", "4096")[0] == 0
    info = json.loads(_run(capsys, "info", store, "--json")[1])
    assert info["key"] == VECTORS["publicKey"]
    assert (info["length"], info["byte_length"]) == (3, len(data))
    # cat writes bytes: run it as a process to compare binary output exactly
    for flags in ([], ["--raw"]):
        proc = subprocess.run(
            [sys.executable, "-m", "hyperlog.cli", "cat", store, *flags],
            capture_output=True,
            check=True,
        )
        assert proc.stdout == data
    proc = subprocess.run(
        [sys.executable, "-m", "hyperlog.cli", "cat", store, "--lines", "--start", "2"],
        capture_output=True,
        check=True,
    )
    assert proc.stdout == data[8192:] + b"\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "{missing}"], "no hyperlog store"),
        (["append", "{missing}", "--lines", "-"], "no hyperlog store"),
        (["verify", "{missing}"], "no hyperlog store"),
    ],
)
def test_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    argv = [a.format(missing=tmp_path / "nope") for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_bad_usage_and_second_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "log")
    with pytest.raises(SystemExit) as exc:
        main(["create", store, "--seed", "abcd"])
    assert exc.value.code == 2
    capsys.readouterr()
    assert _run(capsys, "create", store)[0] == 0
    code, _, err = _run(capsys, "create", store)
    assert code == 1 and "already holds a log" in err


def test_verify_reports_a_corrupted_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "log"
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"".join(b"line number %06d with some text\n" % i for i in range(300)))
    assert _run(capsys, "create", str(store))[0] == 0
    assert _run(capsys, "append", str(store), "--lines", str(lines))[0] == 0
    assert _run(capsys, "verify", str(store))[0] == 0
    db = store / DB_FILENAME
    data = bytearray(db.read_bytes())
    at = data.find(b"line number 000123")
    assert at >= 0
    data[at + 5] ^= 0x20
    db.write_bytes(bytes(data))
    code, out, err = _run(capsys, "verify", str(store))
    assert code == 1 and out == ""
    assert "block 123" in err and err.count("\n") == 1


def test_console_script_runs(tmp_path: Path) -> None:
    store = tmp_path / "log"
    subprocess.run(
        [sys.executable, "-m", "hyperlog.cli", "create", str(store)],
        check=True,
        capture_output=True,
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hyperlog.cli", "append", str(store), "--lines", "-"],
        input=b"".join(b"%d\n" % i for i in range(2500)),
        capture_output=True,
        check=True,
    )
    assert b"appended 2500 blocks" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "hyperlog.cli", "info", str(store), "--json"],
        capture_output=True,
        check=True,
    )
    assert json.loads(proc.stdout)["length"] == 2500


def test_version_names_the_installed_distribution(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"hyperlog {importlib.metadata.version('pinecone-trio')}\n"
