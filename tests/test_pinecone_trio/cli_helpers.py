"""Helpers for tests that run the `pinecone-trio` command as a real process."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def killed_after(proc: subprocess.Popen[str], timeout: float = 60.0) -> Iterator[None]:
    """Kill `proc` if the block outlasts `timeout`: `readline()` on its pipes blocks, and
    a process that hangs silently then ends the read with EOF instead of hanging the
    test run."""
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    try:
        yield
    finally:
        killer.cancel()
