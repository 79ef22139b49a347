"""The main demo runs from a fresh checkout and does what README says it does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_main_demo_runs_end_to_end() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "end-to-end session to alice open" in out
    assert "sparse get todo/123 = b'thing to do #123'" in out
    assert "every hash and the signature verified" in out
    assert "live: todo/live" in out
    assert "done: nodes closed" in out
