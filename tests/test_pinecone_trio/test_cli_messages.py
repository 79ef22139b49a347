"""`pinecone-trio` error lines name what they are about (repro 06_cli_messages.sh)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .cli_helpers import killed_after


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


def test_a_listen_address_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        uri = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        line = _one_error_line(_run("--key", str(tmp_path / "k"), "--listen", uri))
    assert line == f"pinecone-trio: cannot listen on {uri}: Address already in use", line


@pytest.mark.parametrize("option", ["--listen", "--connect"])
def test_memory_uris_are_refused_with_the_reason(tmp_path: Path, option: str) -> None:
    line = _one_error_line(_run("--key", str(tmp_path / "k"), option, "memory://relay"))
    assert line == (
        f"pinecone-trio: {option} memory://relay: memory:// links work only inside one "
        "Python process (for tests); use tcp://HOST:PORT or ws://HOST:PORT/PATH"
    ), line


def test_an_unknown_transport_offers_only_what_the_command_can_use(tmp_path: Path) -> None:
    line = _one_error_line(_run("--key", str(tmp_path / "k"), "--connect", "udp://h:1"))
    assert line == (
        "pinecone-trio: --connect 'udp://h:1': unknown transport "
        "(use tcp://HOST:PORT or ws://HOST:PORT/PATH)"
    ), line
    assert "memory" not in line


def test_a_ws_uri_without_a_port_shows_the_whole_form(tmp_path: Path) -> None:
    line = _one_error_line(_run("--key", str(tmp_path / "k"), "--listen", "ws://127.0.0.1/x"))
    assert line.endswith("expected ws://host:port/path"), line


def test_quiet_still_says_where_it_listens(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "pinecone_trio.cli", "--key", str(tmp_path / "k")),
            *("--quiet", "--listen", "ws://127.0.0.1:0/x"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        with killed_after(proc):
            key_line = proc.stdout.readline()
            listen_line = proc.stdout.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert re.fullmatch(r"public key [0-9a-f]{64}\n", key_line), key_line
    assert re.fullmatch(r"listening on ws://127\.0\.0\.1:[1-9][0-9]*/x\n", listen_line)
    assert proc.returncode == 0, err
    assert out == "", out  # quiet: no event or shutdown lines


def _startup_lines(*args: str, count: int) -> list[str]:
    """Start `pinecone-trio` with `args`, read `count` stdout lines, stop it (SIGTERM)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinecone_trio.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        with killed_after(proc):
            lines = [proc.stdout.readline() for _ in range(count)]
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return lines


def test_multicast_without_listen_says_what_it_does(tmp_path: Path) -> None:
    # `--multicast` with no `--listen` printed the public key and nothing else: not that
    # discovery was on, nor the ports LAN peers dial (even --quiet says where it listens).
    key_line, line = _startup_lines("--key", str(tmp_path / "k"), "--multicast", "--quiet", count=2)
    assert re.fullmatch(r"public key [0-9a-f]{64}\n", key_line), key_line
    match = re.fullmatch(
        r"multicast discovery on (.+); LAN peerings accepted on "
        r"tcp://0\.0\.0\.0:([1-9][0-9]*)(, tcp://\[::\]:[1-9][0-9]*)?\n",
        line,
    )
    assert match is not None, line


def test_a_node_that_accepts_no_peerings_says_so(tmp_path: Path) -> None:
    key = str(tmp_path / "k")
    lines = _startup_lines("--key", key, count=3)
    assert lines[1] == "no --listen, --connect or --multicast: this node peers with nobody\n"
    assert lines[2].startswith("dht on: "), lines
    lines = _startup_lines("--key", key, "--connect", "tcp://127.0.0.1:1", "--quiet", count=2)
    assert lines[1] == (
        "accepting no peerings (no --listen or --multicast): only dialling --connect\n"
    )
