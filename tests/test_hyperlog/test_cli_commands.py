"""The ``hyperlog`` command: create, append, cat, info, verify, and one-line errors."""

from __future__ import annotations

import importlib.metadata
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperlog.cli import main
from hyperlog.constants import MAX_BLOCK_SIZE
from hyperlog.storage import DB_FILENAME
from tests.conftest import SHARED

VECTORS = json.loads((SHARED / "vectors" / "hypercore.json").read_text())
CMD = [sys.executable, "-m", "hyperlog.cli"]


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


def test_cat_says_when_the_range_passes_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "log")
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"".join(b"%d\n" % i for i in range(5)))
    assert _run(capsys, "create", store)[0] == 0
    assert _run(capsys, "append", store, "--lines", str(lines))[0] == 0
    # Part of the range exists: those blocks, a warning naming what was cut, status 0.
    code, out, err = _run(capsys, "cat", store, "--start", "3", "--end", "9")
    assert (code, out.splitlines()) == (0, ["3", "4"])
    assert "warning" in err and "5 blocks" in err and "3..4" in err
    # Nothing of it exists: one error line, status 1.
    for argv in (["--start", "7"], ["--start", "5", "--end", "6"], ["--start", "3", "--end", "2"]):
        code, out, err = _run(capsys, "cat", store, *argv)
        assert (code, out) == (1, ""), argv
        assert err.startswith("hyperlog: error:") and err.count("\n") == 1, err
    # The message names what was asked (it said "blocks 7..4" for --start 7).
    assert _run(capsys, "cat", store, "--start", "7")[2] == (
        "hyperlog: error: --start 7 is past the end of the log (length 5)\n"
    )
    # An empty range is no error, at the end (e.g. "everything after what I had") or
    # anywhere else.
    assert _run(capsys, "cat", store, "--start", "5") == (0, "", "")
    assert _run(capsys, "cat", store, "--start", "9", "--end", "9") == (0, "", "")


def test_a_failed_append_says_how_many_blocks_it_committed(tmp_path: Path) -> None:
    store = tmp_path / "log"
    subprocess.run([*CMD, "create", str(store)], check=True, capture_output=True)
    lines = tmp_path / "lines.txt"
    with lines.open("wb") as f:
        f.write(b"".join(b"%d\n" % i for i in range(1500)))
        f.write(b"x" * (MAX_BLOCK_SIZE + 1))  # too long for a block: fails in batch two
    proc = subprocess.run(
        [*CMD, "append", str(store), "--lines", str(lines)], capture_output=True, timeout=120
    )
    assert proc.returncode == 1
    assert b"stopped after appending 1000 blocks, length 1000" in proc.stderr, proc.stderr
    assert b"hyperlog: error: a line longer than" in proc.stderr


def test_an_interrupted_append_says_how_many_blocks_it_committed(tmp_path: Path) -> None:
    store = tmp_path / "log"
    subprocess.run([*CMD, "create", str(store)], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*CMD, "append", str(store), "--lines", "-"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None
        proc.stdin.write(b"".join(b"%d\n" % i for i in range(1000)))  # one full batch
        proc.stdin.flush()
        deadline = time.monotonic() + 60  # real time: only matters when something hangs
        while _length(store) < 1000:
            assert time.monotonic() < deadline, "the first batch was never committed"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)  # while it waits for more input
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert b"stopped after appending 1000 blocks, length 1000" in err, err
    assert b"interrupted" in err and b"Traceback" not in err


def _length(store: Path) -> int:
    proc = subprocess.run([*CMD, "info", str(store), "--json"], capture_output=True, check=True)
    length: int = json.loads(proc.stdout)["length"]
    return length


def test_append_file_with_tiny_blocks_keeps_batches_within_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 1 MiB batches of 10-byte blocks were 104,857 blocks, over MAX_BATCH_BLOCKS
    # (65,536): the append failed at its first batch (found by review).
    store = str(tmp_path / "log")
    data = tmp_path / "data.bin"
    data.write_bytes(bytes(range(256)) * 4_000)  # 1,024,000 bytes: 102,400 blocks
    assert _run(capsys, "create", store)[0] == 0
    code, _, err = _run(capsys, "append", store, "--file", str(data), "--block-size", "10")
    assert code == 0, err
    assert "appended 102400 blocks" in err


def test_append_lines_keeps_batches_within_the_byte_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1,000-line batches had no byte limit: 1,000 long lines (each a valid block) could
    # exceed MAX_BATCH_BYTES (256 MiB) and nothing was appended (found by review).
    # Scaled down here: a 10 KB batch limit, 1 KB lines, 4 KB CLI batches.
    import hyperlog.cli
    import hyperlog.log

    monkeypatch.setattr(hyperlog.log, "MAX_BATCH_BYTES", 10_000)
    monkeypatch.setattr(hyperlog.cli, "CLI_FILE_BATCH_BYTES", 4_000)
    store = str(tmp_path / "log")
    lines = tmp_path / "lines.txt"
    lines.write_bytes(b"".join(b"%04d" % i + b"x" * 995 + b"\n" for i in range(50)))
    assert _run(capsys, "create", store)[0] == 0
    code, _, err = _run(capsys, "append", store, "--lines", str(lines))
    assert code == 0, err
    assert "appended 50 blocks" in err
