"""Replication benchmark: hyperlog over a loopback Noise TCP link vs hypercore 11.

What it measures (the same cases as ../shared/anchors/js/bench_replicate.js):

* full: a writer store holding TOTAL bytes (1 KiB and 64 KiB blocks) is served by
  ``hyperlog serve`` in one process; a fresh reader process (SQLite store) connects,
  ``update()``s and downloads everything; time from connect to all blocks verified and
  stored, and the reader process's peak RSS. hypercore's matching case is its
  ``full-2proc`` mode (writer in a second process). Also the CPU time per block of
  each side during the download (load-proof): ``cpuUsPerBlock`` (reader process,
  all threads) and ``writerCpuUsPerBlock`` (the ``serve`` process, from /proc).
* sparse-seq: after ``update()``, 1,000 random blocks fetched with one awaited
  ``get`` at a time (ms per block); sparse-par: the same 1,000 requested at once.
  Like hypercore's ``sparse-seq`` / ``sparse-par`` modes, the writer runs in the
  reader's process and serves it over a loopback Noise TCP link (``inproc:``);
  ``sparse-seq-2proc`` is the same with ``hyperlog serve`` in a second process
  (reported, and as the informational ratio ``sparse_latency_2proc_vs_hypercore``).

The JS harness runs in the same invocation (``node bench_replicate.js hypercore
<mode>``) unless ``--no-anchor``; its medians give the ratios. ``--quick`` shrinks
the log to 4 MiB and 200 sparse gets and, since the JS harness always replicates
100 MiB, compares against the figures recorded in anchors/js/results.md instead, with
the full-replication times scaled linearly to 4 MiB (a smoke test, not a comparison;
the JSON's `anchor` says which).

Usage: python benchmarks/bench_replicate.py [--quick] [--json] [--no-anchor] [--trials N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ANCHORS = ROOT.parent / "shared" / "anchors" / "js"
#: Figures recorded in anchors/js/results.md (medians; 2-process full runs; reader RSS).
RECORDED = {
    "full-2proc-1024": {"sec": 17.5, "maxRssMiB": 189.0},
    "full-2proc-65536": {"sec": 1.37, "maxRssMiB": 214.0},
    "sparse-seq-1024": {"msPerBlock": 2.23},
    "sparse-par-1024": {"fetchSec": 0.73},
}
MiB = 2**20


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- children


def child_prep(directory: str, block_size: int, total: int) -> None:
    import trio

    from hyperlog.crypto import key_pair
    from hyperlog.log import open_store

    async def main() -> None:
        async with open_store(directory) as store:
            log = await store.create_log(key_pair(os.urandom(32)))
            pool = [os.urandom(block_size) for _ in range(256)]
            n = total // block_size
            per = max(1, MiB // block_size)
            for i in range(0, n, per):
                await log.append([pool[j % 256] for j in range(i, min(n, i + per))])
            print(log.key.hex(), flush=True)

    trio.run(main)


def child_reader(mode: str, key_hex: str, uri: str, count: int, seed: int) -> None:
    """One reader trial. `uri` is the writer's ``tcp://`` address (``hyperlog serve`` in
    another process), or ``inproc:DIR``: this process serves the store DIR itself on a
    loopback Noise TCP link and connects to it, as hypercore's sparse modes do."""
    import trio

    from hyperlog.log import open_store
    from hyperlog.replication import replicate, replication_for
    from pinecone_trio.identity import Identity
    from pinecone_trio.link.connect import connect_link, serve_links

    async def main() -> dict[str, Any]:
        async with trio.open_nursery() as server:
            if uri.startswith("inproc:"):
                async with open_store(uri[len("inproc:") :], create=False) as served:

                    async def handler(link: Any) -> None:
                        async with replicate(link, served) as session:
                            await session.wait_closed()

                    bound = await server.start(
                        serve_links, "tcp://127.0.0.1:0", Identity.generate(), handler
                    )
                    res = await trial(str(bound))
                    server.cancel_scope.cancel()
                    return res
            return await trial(uri)

    async def trial(uri: str) -> dict[str, Any]:
        tmp = tempfile.mkdtemp(prefix="hl-bench-reader-")
        try:
            async with open_store(tmp) as store:
                log = await store.open_log(bytes.fromhex(key_hex))
                rep = replication_for(log)
                t0 = time.perf_counter()
                link = await connect_link(uri, Identity.generate())
                async with link, replicate(link, log) as session, trio.open_nursery() as nursery:

                    async def watch() -> None:
                        await session.wait_closed()
                        raise RuntimeError(f"replication session ended: {session.error!r}")

                    nursery.start_soon(watch)
                    await rep.update()
                    t1 = time.perf_counter()
                    res: dict[str, Any] = {"mode": mode, "length": log.length}
                    res["connectToUpdateSec"] = t1 - t0
                    if mode == "full":
                        c1 = _cpu_seconds()
                        await rep.download(0, log.length)
                        t2 = time.perf_counter()
                        res["cpuUsPerBlock"] = 1e6 * (_cpu_seconds() - c1) / max(1, log.length)
                        if not log.has_range(0, log.length):
                            raise RuntimeError("not fully downloaded")
                        res["sec"] = t2 - t0
                        res["byteLength"] = log.byte_length
                    else:
                        rnd = random.Random(seed)
                        idx = rnd.sample(range(log.length), count)
                        nbytes = 0
                        c1 = _cpu_seconds()
                        if mode == "sparse-seq":
                            for i in idx:
                                await rep.get(i)
                            for i in idx:
                                nbytes += len(log.get_nowait(i))
                        else:
                            async with trio.open_nursery() as n:
                                for i in idx:
                                    n.start_soon(rep.get, i)
                        t2 = time.perf_counter()
                        if not all(log.has(i) for i in idx):
                            raise RuntimeError("sparse blocks missing")
                        res["fetchSec"] = t2 - t1
                        res["msPerBlock"] = 1000 * (t2 - t1) / count
                        # CPU of this process (with `inproc:`, both sides): load-proof.
                        res["cpuMsPerBlock"] = 1000 * (_cpu_seconds() - c1) / count
                        res["bytes"] = nbytes
                    nursery.cancel_scope.cancel()
            res["maxRssMiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return res
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    print("RESULT " + json.dumps(trio.run(main)), flush=True)


# --------------------------------------------------------------------------- parent


def _run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args[0]} failed:\n{out.stderr[-3000:]}")
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[7:])
    return result


class Server:
    """``hyperlog serve DIR --listen tcp://127.0.0.1:0`` in its own process."""

    def __init__(self, directory: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hyperlog.cli_net",
                "serve",
                directory,
                "--listen",
                "tcp://127.0.0.1:0",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        m = re.match(r"serving ([0-9a-f]{64}) on (\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"serve did not start: {line!r}")
        self.key, self.uri = m.group(1), m.group(2)

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the serve process so far (None off Linux)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _trials(
    mode: str,
    label: str,
    key: str,
    uri: str,
    count: int,
    trials: int,
    server: Server | None = None,
) -> dict[str, float]:
    """Run `trials` fresh reader processes; return the median of each numeric field."""
    rs = []
    for t in range(trials):
        before = server.cpu_seconds() if server is not None else None
        r = _run_child(mode, key, uri, str(count), str(7 + t))
        after = server.cpu_seconds() if server is not None else None
        if before is not None and after is not None and r.get("length"):
            # the serve process idles between trials: its CPU delta is this trial's
            r["writerCpuUsPerBlock"] = 1e6 * (after - before) / r["length"]
        _log(f"  [ours {label} run {t + 1}] {json.dumps(r)}")
        rs.append(r)
    keys = [k for k in rs[0] if isinstance(rs[0][k], float | int)]
    return {k: statistics.median(r[k] for r in rs) for k in keys}


def run_ours(total: int, count: int, trials: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for bs in (1024, 65536):
        tmp = tempfile.mkdtemp(prefix="hl-bench-writer-")
        try:
            t0 = time.perf_counter()
            prep = subprocess.run(
                [sys.executable, __file__, "--child", "prep", tmp, str(bs), str(total)],
                check=True,
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            key = prep.stdout.split()[-1]
            _log(f"prepared {total // bs} x {bs} B in {time.perf_counter() - t0:.1f} s")

            def trials_of(
                mode: str,
                name: str,
                uri: str,
                key: str = key,
                bs: int = bs,
                server: Server | None = None,
            ) -> None:
                out[f"{name}-{bs}"] = _trials(mode, f"{name}-{bs}", key, uri, count, trials, server)

            # Sparse gets are compared at 1 KiB (the JS figures we use), with the writer
            # in the reader's process like hypercore's sparse modes (both still talk
            # over a loopback Noise TCP link); the 2-process figure is reported too.
            if bs == 1024:
                for mode in ("sparse-seq", "sparse-par"):
                    trials_of(mode, mode, "inproc:" + tmp)
            server = Server(tmp)
            try:
                trials_of("full", "full", server.uri, server=server)
                if bs == 1024:
                    trials_of("sparse-seq", "sparse-seq-2proc", server.uri)
            finally:
                server.stop()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def run_hypercore() -> dict[str, dict[str, float]]:
    """Run the JS harness (hypercore 11) for the modes we compare; parse its medians."""
    if not (ANCHORS / "node_modules").is_dir() or shutil.which("node") is None:
        raise RuntimeError("the JS anchors are not installed")
    work = Path(tempfile.mkdtemp(prefix="hl-bench-js-"))
    try:
        # The harness writes under its own tmp/: run a private copy of the folder.
        js = work / "js"
        shutil.copytree(ANCHORS, js, symlinks=True, ignore=shutil.ignore_patterns("tmp", "raw"))
        out: dict[str, dict[str, float]] = {}
        for mode in ("full-2proc", "sparse-seq", "sparse-par"):
            _log(f"running node bench_replicate.js hypercore {mode} ...")
            p = subprocess.run(
                ["node", "bench_replicate.js", "hypercore", mode],
                cwd=js,
                capture_output=True,
                text=True,
                check=True,
            )
            for line in p.stdout.splitlines():
                if line.startswith("MEDIAN "):
                    name, _, body = line[7:].partition(" ")
                    row = json.loads(body)
                    row.pop("name", None)
                    out[name] = row
                    _log(f"  [hypercore] {name} {body}")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ratios(ours: dict[str, dict[str, float]], theirs: dict[str, Any]) -> dict[str, float]:
    r: dict[str, float] = {}
    for bs, name in ((65536, "full_64k_vs_hypercore"), (1024, "full_1k_vs_hypercore")):
        r[name] = theirs[f"full-2proc-{bs}"]["sec"] / ours[f"full-{bs}"]["sec"]
    r["sparse_latency_vs_hypercore"] = (
        theirs["sparse-seq-1024"]["msPerBlock"] / ours["sparse-seq-1024"]["msPerBlock"]
    )
    # Informational: our writer in a second process against hypercore's in-process one.
    r["sparse_latency_2proc_vs_hypercore"] = (
        theirs["sparse-seq-1024"]["msPerBlock"] / ours["sparse-seq-2proc-1024"]["msPerBlock"]
    )
    r["sparse_parallel_vs_hypercore"] = (
        theirs["sparse-par-1024"]["fetchSec"] / ours["sparse-par-1024"]["fetchSec"]
    )
    r["reader_memory_vs_hypercore"] = (
        theirs["full-2proc-1024"]["maxRssMiB"] / ours["full-1024"]["maxRssMiB"]
    )
    r["reader_memory_64k_vs_hypercore"] = (
        theirs["full-2proc-65536"]["maxRssMiB"] / ours["full-65536"]["maxRssMiB"]
    )
    return {k: round(v, 3) for k, v in r.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 MiB, 200 gets, recorded anchors")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-anchor", action="store_true", help="do not run the JS harness")
    ap.add_argument("--trials", type=int, default=None, help="trials per case (default 3; 1 quick)")
    args = ap.parse_args()
    total = 4 * MiB if args.quick else 100 * MiB
    count = 200 if args.quick else 1000
    trials = args.trials or (1 if args.quick else 3)
    ours = run_ours(total, count, trials)
    anchor = "recorded, full times scaled to this size"
    scale = total / (100 * MiB)
    theirs: dict[str, Any] = {
        k: {f: (v * scale if f == "sec" else v) for f, v in row.items()}
        for k, row in RECORDED.items()
    }
    if not args.quick and not args.no_anchor:
        theirs = run_hypercore()
        anchor = "measured"
    result = {
        "benchmark": "replicate",
        "total_bytes": total,
        "sparse_gets": count,
        "trials": trials,
        "anchor": anchor,
        "ours": ours,
        "hypercore": theirs,
        "ratios": ratios(ours, theirs),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"hyperlog replication ({total // MiB} MiB, {count} sparse gets, medians of {trials})")
    print(f"{'case':<22}{'ours':>14}{'hypercore 11':>16}")
    rows = [
        ("full 1 KiB (s)", ours["full-1024"]["sec"], theirs["full-2proc-1024"]["sec"]),
        ("full 64 KiB (s)", ours["full-65536"]["sec"], theirs["full-2proc-65536"]["sec"]),
        (
            "sparse seq (ms/get)",
            ours["sparse-seq-1024"]["msPerBlock"],
            theirs["sparse-seq-1024"]["msPerBlock"],
        ),
        (
            "sparse seq 2-proc (ms)",
            ours["sparse-seq-2proc-1024"]["msPerBlock"],
            theirs["sparse-seq-1024"]["msPerBlock"],
        ),
        (
            "sparse par (s)",
            ours["sparse-par-1024"]["fetchSec"],
            theirs["sparse-par-1024"]["fetchSec"],
        ),
        (
            "reader RSS 1 KiB (MiB)",
            ours["full-1024"]["maxRssMiB"],
            theirs["full-2proc-1024"]["maxRssMiB"],
        ),
        (
            "reader RSS 64 KiB",
            ours["full-65536"]["maxRssMiB"],
            theirs["full-2proc-65536"]["maxRssMiB"],
        ),
    ]
    for name, a, b in rows:
        print(f"{name:<22}{a:>14.3f}{b:>16.3f}")
    for bs in (1024, 65536):
        full = ours[f"full-{bs}"]
        if "cpuUsPerBlock" in full:
            writer = full.get("writerCpuUsPerBlock", float("nan"))
            print(
                f"full {bs // 1024} KiB CPU per block: reader {full['cpuUsPerBlock']:.0f} us,"
                f" writer {writer:.0f} us"
            )
    print("ratios:", json.dumps(result["ratios"]))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        what = sys.argv[2]
        if what == "prep":
            child_prep(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        else:
            child_reader(what, sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        main()
