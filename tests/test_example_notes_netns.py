"""examples/notes.py on two laptops on one LAN, as README.md tells users to run it.

Each laptop is a network namespace and the LAN is a veth pair between them (a cable
that carries multicast). Laptop A runs `notes.py write DIR --listen tcp://A:7400
--multicast` and a user types notes into it; laptop B, which knows no address, runs
`notes.py read DIR --multicast --get KEY` and then `--follow`, and finds the writer by
multicast discovery and the DHT topic alone: no `--peer` anywhere. Needs root and
iproute2 (skips otherwise); every process is killed and the namespaces are deleted
whatever happens. A failure says what each program printed and which sockets each
laptop had open.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

from .test_pinecone_trio.netns_helpers import Program, laptops

NOTES = Path(__file__).resolve().parent.parent / "examples" / "notes.py"
WRITER_ADDRESS = "10.65.0.1"  # A's end of the cable (`laptops` numbers it)
LISTEN = f"tcp://{WRITER_ADDRESS}:7400"
TYPED = {"milk": "2 litres", "eggs": "a dozen", "bread": "rye"}
BOUND = 60.0  # seconds any one step may take (the reader gives up after its --wait, 30 s)


class Typed(Program):
    """A `Program` whose input is a pipe: what a user types into it."""

    def __init__(self, namespace: str, args: Sequence[str], cwd: Path) -> None:
        # Program's constructor, with stdin a pipe instead of the test runner's
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, *args],
            cwd=cwd,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def type(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stop(self) -> None:
        super().stop()
        if self.proc.stdin is not None:
            self.proc.stdin.close()


def interrupt(program: Program, timeout: float) -> int:
    """Ctrl-C; the exit status (`ip netns exec` execs the program: its PID is ours)."""
    program.proc.send_signal(signal.SIGINT)
    return program.wait(timeout)


def seconds(pattern: str, program: Program) -> float:
    """The seconds a line of `program` reports, as `pattern`'s group 1."""
    match = re.search(pattern, program.output)
    assert match is not None, f"no {pattern!r} in:\n{program.output}"
    return float(match[1])


def until(program: Program, pattern: str, timeout: float) -> None:
    """Wait up to `timeout` s for a line of `program` matching `pattern`."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, program.output, re.M):
        assert time.monotonic() < deadline, f"no line {pattern!r} in:\n{program.output}"
        time.sleep(0.05)


@contextmanager
def explained(namespaces: Sequence[str], programs: Sequence[Program]) -> Iterator[None]:
    """On a failed assertion, add what every program printed and every laptop's sockets
    (taken while the programs still run: before they are killed)."""
    try:
        yield
    except AssertionError as exc:
        report = [str(exc)]
        for program in programs:
            args = program.proc.args  # ip netns exec NS python PROGRAM ARGS...
            shown = " ".join(map(str, args[4:])) if isinstance(args, list) else str(args)
            report.append(f"--- {shown}: status")
            report.append(f"{program.proc.poll()}, output:\n{program.output}")
        for ns in namespaces:
            for command in (["ss", "-uanp"], ["ss", "-tanp"], ["ip", "maddr", "show"]):
                ran = subprocess.run(
                    ["ip", "netns", "exec", ns, *command],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
                report.append(f"--- {ns}$ {' '.join(command)}\n{ran.stdout}{ran.stderr}")
        raise AssertionError("\n".join(report)) from exc


@pytest.mark.netns
@pytest.mark.slow
def test_a_reader_on_the_lan_finds_the_writer_by_multicast_and_topic(tmp_path: Path) -> None:
    writer_dir, reader_dir = tmp_path / "laptop-a" / "notes", tmp_path / "laptop-b" / "notes"
    writer_dir.parent.mkdir()
    reader_dir.parent.mkdir()
    write = [str(NOTES), "write", "notes/", "--listen", LISTEN, "--multicast"]
    get = [str(NOTES), "read", "notes/", "--multicast", "--get", "milk"]
    follow = [str(NOTES), "read", "notes/", "--multicast", "--follow"]
    assert not any("--peer" in args for args in (write, get, follow))
    running: list[Program] = []
    with laptops(2, line=True) as (ns_a, ns_b):
        try:
            with explained((ns_a, ns_b), running):
                writer = Typed(ns_a, write, writer_dir.parent)
                running.append(writer)
                writer.wait_for_line("notes: node ", timeout=BOUND)
                assert f"listening on {LISTEN}" in writer.output, writer.output
                writer.type("".join(f"{key}={value}\n" for key, value in TYPED.items()))
                writer.wait_for_line("put bread (version 4)", timeout=BOUND)
                writer.wait_for_line("notes: announced 'notes/shared' on the DHT", timeout=BOUND)

                # B asks for one note: discovery, the DHT lookup, a session, sparse blocks
                started = time.monotonic()
                getter = Program(ns_b, get, reader_dir.parent)
                running.append(getter)
                assert getter.wait(timeout=BOUND) == 0, getter.output
                get_wall = time.monotonic() - started
                assert "2 litres\n" in getter.lines, getter.output
                fetched = re.search(r"milk is set: fetched (\d+) of 4 blocks", getter.output)
                assert fetched is not None, getter.output
                found = seconds(r"found writer \S+, log \S+, in ([\d.]+) s", getter)
                got = seconds(r"milk is set: .*, ([\d.]+) s after start", getter)
                until(writer, r"^notes: \S+ is reading$", timeout=BOUND)

                # B follows (the same DIR, as a user would); A types a note after that
                started = time.monotonic()
                follower = Program(ns_b, follow, reader_dir.parent)
                running.append(follower)
                follower.wait_for_line("notes: following live updates", timeout=BOUND)
                follow_found = seconds(r"found writer \S+, log \S+, in ([\d.]+) s", follower)
                listed = [line for line in follower.lines if " = " in line]
                assert listed == [f"{k} = {v}\n" for k, v in sorted(TYPED.items())], listed
                typed = time.monotonic()
                writer.type("tea=green\n")
                follower.wait_for_line("tea = green", timeout=BOUND)
                live = time.monotonic() - typed
                follow_wall = typed - started

                assert interrupt(follower, timeout=BOUND) == 130, follower.output
                assert interrupt(writer, timeout=BOUND) == 130, writer.output
                assert "Traceback" not in writer.output + getter.output + follower.output
        finally:
            for program in running:
                program.stop()
    print(
        f"\nnotes.py over a LAN (netns): --get found the writer in {found:.2f} s and had"
        f" the value ({fetched[1]} of 4 blocks) {got:.2f} s after its start ({get_wall:.2f} s"
        f" wall, with Python's start and exit); --follow found it in {follow_found:.2f} s,"
        f" listed in {follow_wall:.2f} s wall; a typed note reached it in {live:.2f} s"
    )
