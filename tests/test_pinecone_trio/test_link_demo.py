"""The Noise-link example runs and exits 0 on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "noise_link.py"


def test_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "echo b'hello over Noise'" in result.stdout
    assert "peer proved key" in result.stdout
