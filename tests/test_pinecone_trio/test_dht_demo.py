"""examples/dht_demo.py runs over real loopback TCP and exits 0 on its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parents[2] / "examples" / "dht_demo.py"


def test_dht_demo_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO), "--nodes", "12", "--seed", "7"],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "carol: lookup 'demo/chat' found 2 peers" in out
    assert "carol: alice replied 'hello from alice'" in out
    assert "carol: bob replied 'hello from bob'" in out
    assert "alice: " in out and "says 'hi from carol'" in out
