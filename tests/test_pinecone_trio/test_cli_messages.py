"""`pinecone-trio` error lines name what they are about (repro 06_cli_messages.sh)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pinecone_trio.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_key_file_in_a_missing_directory_is_named(tmp_path: Path) -> None:
    key = tmp_path / "missing-dir" / "node.key"
    line = _one_error_line(_run("--key", str(key)))
    assert line == (f"pinecone-trio: cannot write key file: No such file or directory ({key})"), (
        line
    )
