"""hyperlog append/read benchmark, side by side with JavaScript hypercore 11.

Runs, each trial in a fresh child process (clean heap, like the JS harness):

* appends: 1 KiB blocks one awaited ``append`` each, and in batches of 1,000;
  64 KiB blocks one per call, and 16 per call;
* random local ``get`` on a 1 KiB-block log: one awaited get at a time, and 1,000
  in flight (1,000 Trio tasks per round);
* the store folder's size after closing (on-disk overhead) and the child's peak RSS;

and, unless ``--no-anchor``, the same cases of ``../shared/anchors/js/bench_append.js``
and ``bench_read.js`` (hypercore 11.37.1 on RocksDB), interleaved with ours in the same
run. The JS programs run unmodified from a temporary copy of the anchor folder; with
``--quick`` the copy's block counts are lowered to ours (the only change).

    python benchmarks/bench_log.py                 # full sizes, ~5 minutes
    python benchmarks/bench_log.py --quick --json  # CI-sized, one JSON object

Ratios are ours/theirs for throughput (higher is better), theirs/ours for get latency
and memory, and ours/theirs for disk overhead (lower is better).
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

HERE = Path(__file__).resolve().parent
ANCHOR_JS = HERE.parent.parent / "shared" / "anchors" / "js"

APPEND_CASES: dict[str, dict[str, int]] = {
    "single-1k": {"blockSize": 1024, "blocks": 100_000, "batch": 1},
    "batch-1k": {"blockSize": 1024, "blocks": 100_000, "batch": 1000},
    "single-64k": {"blockSize": 65536, "blocks": 4096, "batch": 1},
    "batch-64k": {"blockSize": 65536, "blocks": 4096, "batch": 16},
}
QUICK_BLOCKS = {"single-1k": 5000, "batch-1k": 20_000, "single-64k": 256, "batch-64k": 512}
READ_BLOCKS = 100_000
QUICK_READ_BLOCKS = 20_000
IN_FLIGHT = 1000


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- our side: child processes ---------------------------------------------------------


async def _child_append(name: str, blocks: int, folder: Path) -> dict[str, Any]:
    from hyperlog.log import open_store

    case = APPEND_CASES[name]
    size, batch = case["blockSize"], case["batch"]
    pool_size = 1024 if size == 1024 else 64
    pool = [os.urandom(size) for _ in range(pool_size)]
    async with open_store(folder) as store:
        log = await store.create_log()
        t0 = time.perf_counter()
        c0 = time.process_time()
        if batch == 1:
            for i in range(blocks):
                await log.append(pool[i % pool_size])
        else:
            for i in range(0, blocks, batch):
                await log.append([pool[(i + j) % pool_size] for j in range(batch)])
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
        if log.length != blocks:
            raise RuntimeError(f"length {log.length} != {blocks}")
    t2 = time.perf_counter()
    disk = _du(folder)
    total = blocks * size
    return {
        "case": name,
        "impl": "hyperlog",
        "blocks": blocks,
        "blockSize": size,
        "batch": batch,
        "appendSec": t1 - t0,
        "cpuSec": cpu,
        "blocksPerSec": blocks / (t1 - t0),
        "MBps": total / 1e6 / (t1 - t0),
        "closeSec": t2 - t1,
        "diskMiB": disk / 2**20,
        "diskOverheadPct": 100 * (disk - total) / total,
        "maxRssMiB": _max_rss_mib(),
    }


async def _child_build(blocks: int, folder: Path) -> dict[str, Any]:
    from hyperlog.log import open_store

    pool = [os.urandom(1024) for _ in range(1024)]
    async with open_store(folder) as store:
        log = await store.create_log()
        for i in range(0, blocks, 1000):
            await log.append([pool[(i + j) % 1024] for j in range(min(1000, blocks - i))])
    return {"built": blocks, "diskMiB": _du(folder) / 2**20}


async def _child_read(mode: str, blocks: int, folder: Path, seed: int) -> dict[str, Any]:
    import trio

    from hyperlog.log import open_store

    rng = random.Random(seed)
    gets = blocks
    idx = [rng.randrange(blocks) for _ in range(gets)]
    total = 0
    async with open_store(folder, readonly=True) as store:
        log = await store.default_log()
        if log.length != blocks:
            raise RuntimeError(f"bad length {log.length}")
        t0 = time.perf_counter()
        c0 = time.process_time()
        if mode == "seq":
            for i in idx:
                total += len(await log.get(i))
        elif mode == "many":
            for k in range(0, gets, IN_FLIGHT):
                total += sum(map(len, await log.get_many(idx[k : k + IN_FLIGHT])))
        else:
            sizes: list[int] = []

            async def one(i: int) -> None:
                sizes.append(len(await log.get(i)))

            for k in range(0, gets, IN_FLIGHT):
                async with trio.open_nursery() as nursery:
                    for i in idx[k : k + IN_FLIGHT]:
                        nursery.start_soon(one, i)
            total = sum(sizes)
        t1 = time.perf_counter()
        cpu = time.process_time() - c0
    if total != gets * 1024:
        raise RuntimeError("bad byte count")
    return {
        "mode": mode,
        "impl": "hyperlog",
        "gets": gets,
        "sec": t1 - t0,
        "cpuSec": cpu,
        "getsPerSec": gets / (t1 - t0),
        "usPerGet": 1e6 * (t1 - t0) / gets,
        "maxRssMiB": _max_rss_mib(),
    }


def _child_main(argv: list[str]) -> None:
    import trio

    kind, *rest = argv
    if kind == "append":
        name, blocks, folder = rest
        result = trio.run(_child_append, name, int(blocks), Path(folder))
    elif kind == "build":
        blocks, folder = rest
        result = trio.run(_child_build, int(blocks), Path(folder))
    else:
        mode, blocks, folder, seed = rest
        result = trio.run(_child_read, mode, int(blocks), Path(folder), int(seed))
    print("RESULT " + json.dumps(result), flush=True)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_child(cmd: list[str], cwd: Path | None = None, expect: bool = True) -> dict[str, Any]:
    """Run one trial; add ``processCpuSec``: the child's whole CPU time (all threads,
    start-up included), measured the same way for both implementations."""
    cpu0 = _children_cpu()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    cpu = _children_cpu() - cpu0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    if not expect:
        return {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            result["processCpuSec"] = float(cpu)
            return result
    raise RuntimeError(f"no RESULT line from {' '.join(cmd)}:\n{proc.stdout}")


def _ours(*args: str) -> dict[str, Any]:
    return _run_child([sys.executable, str(Path(__file__).resolve()), "--child", *args])


# --- their side: the JS anchors --------------------------------------------------------


def _prepare_js(work: Path, quick: bool) -> Path:
    """Copy the anchor programs into ``work`` (node_modules linked), shrunk for --quick."""
    dest = work / "js"
    dest.mkdir()
    for f in ANCHOR_JS.iterdir():
        if f.suffix in (".js", ".json"):
            shutil.copy(f, dest / f.name)
    (dest / "node_modules").symlink_to(ANCHOR_JS / "node_modules")
    if quick:
        text = (dest / "bench_append.js").read_text()
        for name, blocks in QUICK_BLOCKS.items():
            text = re.sub(
                rf"('{name}': \{{ blockSize: \d+, blocks: )\d+",
                rf"\g<1>{blocks}",
                text,
            )
        (dest / "bench_append.js").write_text(text)
        text = (dest / "bench_read.js").read_text()
        text = re.sub(r"const N = \d+", f"const N = {QUICK_READ_BLOCKS}", text)
        text = re.sub(r"const GETS = \d+", f"const GETS = {QUICK_READ_BLOCKS}", text)
        (dest / "bench_read.js").write_text(text)
    return dest


def _theirs(js: Path, script: str, *args: str) -> dict[str, Any]:
    expect = args[0] != "build"  # the read benchmark's build step prints no RESULT
    return _run_child(["node", "--expose-gc", script, "--child", *args], cwd=js, expect=expect)


# --- driver ----------------------------------------------------------------------------


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in rows))


def run(quick: bool, anchor: bool, trials: int) -> dict[str, Any]:
    """Run every case (ours and, if ``anchor``, hypercore's); return the report."""
    ours: dict[str, dict[str, float]] = {}
    theirs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench_log_") as tmp:
        work = Path(tmp)
        js = _prepare_js(work, quick) if anchor else None
        for name, case in APPEND_CASES.items():
            blocks = QUICK_BLOCKS[name] if quick else case["blocks"]
            mine, other = [], []
            for t in range(trials):
                folder = work / f"ours-{name}-{t}"
                mine.append(_ours("append", name, str(blocks), str(folder)))
                shutil.rmtree(folder)
                if js is not None:
                    other.append(_theirs(js, "bench_append.js", name, "hypercore"))
            ours[name] = {k: _median(mine, k) for k in mine[0] if isinstance(mine[0][k], float)}
            if other:
                theirs[name] = {
                    k: _median(other, k) for k in other[0] if isinstance(other[0][k], float)
                }
            _progress(name, ours[name], theirs.get(name))
        n = QUICK_READ_BLOCKS if quick else READ_BLOCKS
        folder = work / "ours-read"
        _ours("build", str(n), str(folder))
        jsdir = work / "js-read"
        if js is not None:
            _theirs(js, "bench_read.js", "build", "hypercore", str(jsdir))
        for mode in ("seq", "par", "many"):
            mine, other = [], []
            for t in range(trials):
                mine.append(_ours("read", mode, str(n), str(folder), str(1000 + t)))
                if js is not None and mode != "many":
                    other.append(
                        _theirs(js, "bench_read.js", mode, "hypercore", str(jsdir), str(1000 + t))
                    )
            name = f"get-{mode}"
            ours[name] = {k: _median(mine, k) for k in mine[0] if isinstance(mine[0][k], float)}
            if other:
                theirs[name] = {
                    k: _median(other, k) for k in other[0] if isinstance(other[0][k], float)
                }
            _progress(name, ours[name], theirs.get(name))
    return {"ours": ours, "hypercore": theirs, "ratios": _ratios(ours, theirs)}


def _progress(name: str, mine: dict[str, float], other: dict[str, float] | None) -> None:
    key = "blocksPerSec" if "blocksPerSec" in mine else "usPerGet"
    them = f"{other[key]:,.1f}" if other else "-"
    print(f"  {name:<11} {key}: ours {mine[key]:,.1f}  hypercore {them}", file=sys.stderr)


def _ratios(
    ours: dict[str, dict[str, float]], theirs: dict[str, dict[str, float]]
) -> dict[str, float]:
    if not theirs:
        return {}

    def up(case: str) -> float:
        return ours[case]["blocksPerSec"] / theirs[case]["blocksPerSec"]

    def cpu(case: str) -> float:
        # CPU seconds per operation of the whole child process, theirs / ours
        return theirs[case]["processCpuSec"] / ours[case]["processCpuSec"]

    r = {
        "append_batch_1k_vs_hypercore": up("batch-1k"),
        "append_single_1k_vs_hypercore": up("single-1k"),
        "append_single_64k_vs_hypercore": up("single-64k"),
        "append_batch_64k_vs_hypercore": up("batch-64k"),
        "get_vs_hypercore": theirs["get-seq"]["usPerGet"] / ours["get-seq"]["usPerGet"],
        "get_in_flight_vs_hypercore": theirs["get-par"]["usPerGet"] / ours["get-par"]["usPerGet"],
        "get_many_vs_hypercore_in_flight": theirs["get-par"]["usPerGet"]
        / ours["get-many"]["usPerGet"],
        "cpu_append_single_1k_vs_hypercore": cpu("single-1k"),
        "cpu_append_batch_1k_vs_hypercore": cpu("batch-1k"),
        "cpu_append_single_64k_vs_hypercore": cpu("single-64k"),
        "cpu_append_batch_64k_vs_hypercore": cpu("batch-64k"),
        "cpu_get_vs_hypercore": cpu("get-seq"),
        "disk_overhead_batch_1k_vs_hypercore": ours["batch-1k"]["diskOverheadPct"]
        / theirs["batch-1k"]["diskOverheadPct"],
        "disk_overhead_single_1k_vs_hypercore": ours["single-1k"]["diskOverheadPct"]
        / theirs["single-1k"]["diskOverheadPct"],
        "append_memory_vs_hypercore": theirs["batch-1k"]["maxRssMiB"]
        / ours["batch-1k"]["maxRssMiB"],
    }
    r["append_64k_vs_hypercore"] = min(
        r["append_single_64k_vs_hypercore"], r["append_batch_64k_vs_hypercore"]
    )
    return {k: round(v, 3) for k, v in r.items()}


def _table(report: dict[str, Any]) -> str:
    ours, theirs = report["ours"], report["hypercore"]
    lines = [
        "| case | hyperlog | hypercore 11 | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for name in APPEND_CASES:
        o = ours[name]
        t = theirs.get(name)
        ratio = f"{o['blocksPerSec'] / t['blocksPerSec']:.2f}x" if t else "-"
        them = f"{t['blocksPerSec']:,.0f} blocks/s, +{t['diskOverheadPct']:.1f}% disk" if t else "-"
        lines.append(
            f"| append {name} | {o['blocksPerSec']:,.0f} blocks/s, "
            f"+{o['diskOverheadPct']:.1f}% disk, {o['maxRssMiB']:.0f} MiB | {them} | {ratio} |"
        )
    for name in ("get-seq", "get-par", "get-many"):
        o = ours[name]
        t = theirs.get(name)
        ratio = f"{t['usPerGet'] / o['usPerGet']:.2f}x" if t else "-"
        them = f"{t['usPerGet']:.1f} us/get" if t else "-"
        lines.append(f"| {name} | {o['usPerGet']:.1f} us/get | {them} | {ratio} |")
    lines.append("")
    lines.append("| case | hyperlog CPU s (whole child) | hypercore CPU s | ratio |")
    lines.append("| --- | --- | --- | --- |")
    for name in [*APPEND_CASES, "get-seq", "get-par"]:
        o, t = ours[name], theirs.get(name)
        if t:
            lines.append(
                f"| {name} | {o['processCpuSec']:.2f} | {t['processCpuSec']:.2f} | "
                f"{t['processCpuSec'] / o['processCpuSec']:.2f}x |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the benchmark."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        _child_main(argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-anchor", action="store_true", help="skip the JS hypercore run")
    parser.add_argument("--trials", type=int, default=1, help="trials per case (median)")
    args = parser.parse_args(argv)
    anchor = not args.no_anchor
    if anchor and shutil.which("node") is None:
        parser.error("node is not installed: pass --no-anchor")
    report = run(args.quick, anchor, max(1, args.trials))
    report["quick"] = args.quick
    report["trials"] = args.trials
    if args.json:
        print(json.dumps(report))
    else:
        print(_table(report))
        for k, v in report["ratios"].items():
            print(f"{k}: {v}")


if __name__ == "__main__":
    main()
