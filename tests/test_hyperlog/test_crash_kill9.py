"""kill -9 a writer mid-stream, many times: every reopened log verifies and keeps what was acked.

The writer is a child process that announces each operation before starting it
(``DO``) and after it returned (``OK``), then the test kills it with SIGKILL after a
random number of acknowledgements, while the next operation is in flight. The reopened
log must open, verify end to end, and be in the state after the last acknowledged
operation or after the one in flight (it may have committed without being acked), and
every acknowledged block must read back byte for byte.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from hyperlog.log import open_store

WRITER = r"""
import random, sys, trio
from hyperlog.log import open_store

def content(i, fork):
    return (b"%d:%d;" % (i, fork)) * (1 + (i * 7 + fork) % 40)

async def main(path, seed):
    rng = random.Random(seed)
    async with open_store(path) as store:
        keys = store.keys()
        log = await store.default_log() if keys else await store.create_log()
        print("READY", log.length, log.fork, flush=True)
        for _ in range(100_000):
            r = rng.random()
            if r < 0.05 and log.length > 2:
                cut = rng.randrange(log.length)
                print("DO T", cut, log.fork + 1, flush=True)
                await log.truncate(cut)
            else:
                n = 1 if r < 0.6 else rng.randrange(2, 300)
                start = log.length
                print("DO A", start + n, log.fork, flush=True)
                await log.append([content(i, log.fork) for i in range(start, start + n)])
            print("OK", log.length, log.fork, flush=True)

trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def content(i: int, fork: int) -> bytes:
    return (b"%d:%d;" % (i, fork)) * (1 + (i * 7 + fork) % 40)


@dataclass
class Model:
    """What the acknowledged history says the log holds: the fork each block was written in."""

    forks: list[int] = field(default_factory=list)
    fork: int = 0

    def apply(self, op: str, length: int, fork: int) -> Model:
        nxt = Model(list(self.forks), self.fork)
        if op == "T":
            del nxt.forks[length:]
            nxt.fork = fork
        else:
            nxt.forks += [fork] * (length - len(nxt.forks))
        return nxt


def _run_and_kill(path: Path, seed: int, acks: int, model: Model) -> tuple[Model, Model | None]:
    """Run the writer until ``acks`` OKs, SIGKILL it; return (acked, in-flight) models.

    After the kill, the rest of the child's output is read too: everything it printed
    before dying counts, so the models are exact (at most one operation is in flight).
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(seed)], stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    acked, pending = model, None
    seen = 0
    killed = False
    try:
        for raw in proc.stdout:
            words = raw.decode().split()
            if not words:
                continue  # a line cut short by the kill
            if words[0] == "READY":
                assert (int(words[1]), int(words[2])) == (len(model.forks), model.fork)
            elif words[0] == "DO" and len(words) == 4:
                pending = acked.apply(words[1], int(words[2]), int(words[3]))
            elif words[0] == "OK" and len(words) == 3 and raw.endswith(b"\n"):
                assert pending is not None
                acked, pending = pending, None
                assert (int(words[1]), int(words[2])) == (len(acked.forks), acked.fork)
                seen += 1
                if seen >= acks and not killed:
                    proc.send_signal(signal.SIGKILL)
                    killed = True
    finally:
        if not killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    return acked, pending


async def _check(path: Path, acked: Model, pending: Model | None) -> Model:
    # read-only first: the killed writer's last head is usually unsigned on disk; a
    # read-only open signs it in memory, with the bytes the writable open then stores
    async with open_store(path, readonly=True) as store:
        log = await store.default_log()
        assert log.signed
        await log.verify()
        seen = (log.length, log.fork, log.signature)
    async with open_store(path) as store:
        log = await store.default_log()
        assert (log.length, log.fork, log.signature) == seen
        await store.check()
        await log.verify()
        for state in [acked] if pending is None else [acked, pending]:
            if (log.length, log.fork) == (len(state.forks), state.fork):
                break
        else:
            raise AssertionError(
                f"reopened at length {log.length} fork {log.fork}; acked "
                f"{len(acked.forks)}/{acked.fork}, in flight {pending}"
            )
        for i, fork in enumerate(state.forks):
            assert await log.get(i) == content(i, fork), f"block {i} differs after a crash"
        return state


async def _crash_loop(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "store"
    model = Model()
    for n in range(rounds):
        acks = rng.randrange(1, 40)
        acked, pending = await trio.to_thread.run_sync(
            _run_and_kill, path, rng.randrange(1 << 30), acks, model
        )
        model = await _check(path, acked, pending)
        assert len(model.forks) >= 0, n


async def test_kill9_keeps_every_acknowledged_block(tmp_path: Path) -> None:
    await _crash_loop(tmp_path, rounds=6, seed=1)


@pytest.mark.slow
async def test_kill9_many_times(tmp_path: Path) -> None:
    await _crash_loop(tmp_path, rounds=30, seed=2)
