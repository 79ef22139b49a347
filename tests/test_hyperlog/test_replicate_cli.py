"""`serve` and `clone` as separate processes over a real Noise TCP link on 127.0.0.1."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hyperlog.crypto import key_pair
from hyperlog.log import open_store

CMD = [sys.executable, "-m", "hyperlog.cli"]


async def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [*CMD, *args], capture_stdout=True, capture_stderr=True, check=False
    )


async def _info(directory: Path) -> dict[str, object]:
    p = await trio.run_process(
        [sys.executable, "-m", "hyperlog.cli", "info", str(directory), "--json"],
        capture_stdout=True,
    )
    info: dict[str, object] = json.loads(p.stdout)
    info.pop("writable")
    return info


@pytest.mark.slow
async def test_serve_and_clone_processes(tmp_path: Path) -> None:
    async with open_store(tmp_path / "w") as store:
        log = await store.create_log(key_pair(bytes(range(32))))
        await log.append([b"line %d" % i for i in range(700)])
        key = log.key.hex()
    proc = await trio.lowlevel.open_process(
        [*CMD, "serve", str(tmp_path / "w"), "--listen", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.fail_after(60):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1024)
                assert chunk, "serve exited early"
                line += chunk
        m = re.match(rb"serving ([0-9a-f]{64}) on (tcp://\S+)", line)
        assert m is not None, line
        assert m.group(1).decode() == key
        uri = m.group(2).decode()
        with trio.fail_after(120):
            full = await _run("clone", key, str(tmp_path / "r"), "--connect", uri)
            assert full.returncode == 0, full.stderr
            assert b"700 blocks held" in full.stdout
            assert await _info(tmp_path / "r") == await _info(tmp_path / "w")
            verify = await trio.run_process(
                [sys.executable, "-m", "hyperlog.cli", "verify", str(tmp_path / "r")],
                capture_stdout=True,
            )
            assert verify.stdout.startswith(b"ok:")
            sparse = await _run(
                "clone", key, str(tmp_path / "s"), "--connect", uri, "--sparse", "100:110"
            )
            assert sparse.returncode == 0, sparse.stderr
            cat = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "hyperlog.cli",
                    "cat",
                    str(tmp_path / "s"),
                    "--start",
                    "100",
                    "--end",
                    "110",
                ],
                capture_stdout=True,
            )
            assert cat.stdout.splitlines() == [b"line %d" % i for i in range(100, 110)]
            # A key the server does not have: one clear error line, exit status 1.
            other = key_pair(bytes(32)).public_key.hex()
            bad = await _run("clone", other, str(tmp_path / "x"), "--connect", uri)
            assert bad.returncode == 1
            assert bad.stderr.startswith(b"hyperlog: error:"), bad.stderr
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
