"""The `pinecone-trio` command: two relays peer, write status JSON, stop on SIGTERM."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pinecone_trio.cli import write_json_atomically

from .cli_helpers import killed_after


def _start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pinecone_trio.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    with killed_after(proc, timeout):
        while line := proc.stdout.readline():
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
    raise AssertionError(f"no line starting {prefix!r}")


def _wait_json(path: Path, predicate: object, timeout: float = 60.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    last: dict[str, object] = {}
    while time.monotonic() < deadline:
        if path.exists():
            last = json.loads(path.read_text())
            if predicate(last):  # type: ignore[operator]
                return last
        time.sleep(0.2)
    raise AssertionError(f"status never matched; last: {last}")


def _terminate(proc: subprocess.Popen[str]) -> str:
    """SIGTERM `proc`, wait for it (killing it after 60 s) and return its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return err


def test_two_relays_peer_and_report_status(tmp_path: Path) -> None:
    a = _start(
        "--key",
        str(tmp_path / "a.key"),
        "--listen",
        "tcp://127.0.0.1:0",
        "--status-json",
        str(tmp_path / "a.json"),
    )
    b = None
    try:
        key_a = _read_until(a, "public key ")
        uri = _read_until(a, "listening on ")
        assert uri.startswith("tcp://127.0.0.1:")
        assert (os.stat(tmp_path / "a.key").st_mode & 0o777) == 0o600
        b = _start(
            "--key",
            str(tmp_path / "b.key"),
            "--connect",
            uri,
            "--status-json",
            str(tmp_path / "b.json"),
        )
        key_b = _read_until(b, "public key ")
        status = _wait_json(tmp_path / "b.json", lambda s: len(s["peers"]) == 1)
        assert status["public_key"] == key_b
        assert status["peers"][0]["public_key"] == key_a  # type: ignore[index]
        assert status["peers"][0]["uri"] == uri  # type: ignore[index]
        assert status["root_key"] in (key_a, key_b)
        assert isinstance(status["coords"], list)
        assert status["static_peers"][0]["state"] == "connected"  # type: ignore[index]
        _wait_json(tmp_path / "a.json", lambda s: s["root_key"] == max(key_a, key_b))
    finally:
        outputs = []
        for proc in (a, b):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
        for proc in (a, b):
            if proc is not None:
                try:
                    out, _ = proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, _ = proc.communicate()
                outputs.append((proc.returncode, out))
    for returncode, out in outputs:
        assert returncode == 0, out
        assert "SIGTERM: shutting down" in out
    assert json.loads((tmp_path / "a.json").read_text())["stopped"] is True


def test_bad_key_file_is_one_clear_line(tmp_path: Path) -> None:
    key = tmp_path / "bad.key"
    key.write_text("not a key")
    key.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "pinecone_trio.cli", "--key", str(key)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"pinecone-trio: {key}: not a key file (expected 64 hex digits)"
    ]


def test_status_json_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    write_json_atomically(str(path), {"a": 1})
    write_json_atomically(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]
    with pytest.raises(TypeError):
        write_json_atomically(str(path), {"a": object()})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_startup_errors_are_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for listen, message in (
            (f"tcp://127.0.0.1:{port}", "Address already in use"),
            ("bogus://x", "unknown transport"),
        ):
            command = [sys.executable, "-m", "pinecone_trio.cli", "--key", str(tmp_path / "k")]
            proc = subprocess.run(
                [*command, "--listen", listen],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 1, proc.stderr
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and message in lines[0], proc.stderr


def test_unwritable_status_file_is_reported_not_fatal(tmp_path: Path) -> None:
    status = tmp_path / "missing-dir" / "s.json"
    command = [sys.executable, "-m", "pinecone_trio.cli", "--key", str(tmp_path / "k")]
    proc = subprocess.Popen(
        [*command, "--status-json", str(status)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _read_until(proc, "public key ")
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the first failed write, reported
        assert "cannot write" in line, line
        assert proc.poll() is None  # still running
    finally:
        err = _terminate(proc)
    assert proc.returncode == 0, err


def test_version_names_the_installed_distribution() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pinecone_trio.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"pinecone-trio {importlib.metadata.version('pinecone-trio')}\n"


def test_an_unreachable_static_peer_is_reported_and_redialled(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"tcp://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pinecone_trio.cli", "--key", str(tmp_path / "k")]
    proc = subprocess.Popen(
        [*command, "--connect", uri, "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        with killed_after(proc):
            line = proc.stderr.readline()
        assert line.startswith(f"pinecone-trio: cannot connect to {uri}: "), line
        assert "retrying" in line
        assert proc.poll() is None  # still running: the node keeps redialling
    finally:
        err = _terminate(proc)
    assert proc.returncode == 0, err


def test_python_m_pinecone_trio_is_the_same_command(tmp_path: Path) -> None:
    # `python -m pinecone_trio` said "No module named pinecone_trio.__main__".
    version = f"pinecone-trio {importlib.metadata.version('pinecone-trio')}\n"
    proc = subprocess.run(
        [sys.executable, "-m", "pinecone_trio", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (proc.returncode, proc.stdout) == (0, version), proc.stderr
    # and it runs a node, not just the parser
    key = str(tmp_path / "k")
    node = subprocess.Popen(
        [sys.executable, "-m", "pinecone_trio", "--key", key, "--listen", "tcp://127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert _read_until(node, "listening on ").startswith("tcp://127.0.0.1:")
    finally:
        err = _terminate(node)
    assert node.returncode == 0, err
