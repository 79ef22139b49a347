"""Network namespaces as laptops, for tests that run the documentation's programs as a
user would (each namespace is a machine; veth pairs are cables).

Needs root and iproute2; `laptops` skips the test with the reason otherwise. Every
namespace is created with a unique name starting with `NAME_PREFIX` and deleted
whatever happens; traffic stays inside them.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

#: Every namespace and interface these tests create starts with this.
NAME_PREFIX = "ut65"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def laptops(count: int, *, line: bool) -> Iterator[list[str]]:
    """`count` namespaces; with `line`, each joined to the next by a veth pair (a cable:
    10.65.i.1 - 10.65.i.2), else each one alone with a veth pair inside it, so that
    multicast has an interface to loop back on (one laptop on a LAN)."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = secrets.token_hex(3)
    names = [f"{NAME_PREFIX}{i}{tag}" for i in range(count)]
    created: list[str] = []
    try:
        for name in names:
            try:
                _ip("netns", "add", name)
            except (subprocess.CalledProcessError, OSError) as exc:
                pytest.skip(f"cannot create network namespaces here: {exc}")
            created.append(name)
            _ip("-n", name, "link", "set", "lo", "up")
        cables = (
            [(names[i], names[i + 1], i) for i in range(count - 1)]
            if line
            else [(name, name, i) for i, name in enumerate(names)]
        )
        for left, right, i in cables:
            a, b = f"{NAME_PREFIX}{tag}{i}a", f"{NAME_PREFIX}{tag}{i}b"
            _ip("link", "add", a, "netns", left, "type", "veth", "peer", "name", b, "netns", right)
            _ip("-n", left, "addr", "add", f"10.65.{i}.1/24", "dev", a)
            if line:
                _ip("-n", right, "addr", "add", f"10.65.{i}.2/24", "dev", b)
            for ns, dev in ((left, a), (right, b)):
                _ip("-n", ns, "link", "set", dev, "multicast", "on", "up")
        yield names
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def python_blocks(markdown: Path) -> list[str]:
    """The ```python blocks of a Markdown file, as written."""
    return re.findall(r"```python\n(.*?)```", markdown.read_text(encoding="utf-8"), re.S)


class Program:
    """A process run in a namespace, its output collected line by line."""

    def __init__(self, namespace: str, args: Sequence[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", namespace, sys.executable, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first output line starting with `prefix`, waiting up to `timeout` s."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: (
                    any(line.startswith(prefix) for line in self.lines)
                    or self.proc.poll() is not None
                ),
                timeout=timeout,
            )
            for line in self.lines:
                if line.startswith(prefix):
                    return line
        raise AssertionError(f"no line {prefix!r} (waited: {found}); output:\n{self.output}")

    def wait(self, timeout: float) -> int:
        """Wait for the process to end (killed after `timeout` s); its return code."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(f"did not end in {timeout} s; output:\n{self.output}") from None
        finally:
            self._reader.join(timeout=10)

    def terminate(self, timeout: float) -> int:
        """SIGTERM the process and wait for it (killed after `timeout` s)."""
        self.proc.terminate()
        return self.wait(timeout)

    def stop(self) -> None:
        """Kill the process if it still runs (the namespace is deleted after)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=10)
