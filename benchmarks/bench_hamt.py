"""HAMT benchmark: puts, gets, log bytes and memory, beside hypertrie and hyperbee.

Workload (the same as `../shared/anchors/js/bench_kv.js`): N distinct 16-byte keys
(16 hex characters) with 100-byte random values, put in random order, then N gets of
uniformly random existing keys, one awaited get at a time, in the same process.

* ``single``: one awaited `put` per key (one log block and one signature each);
* ``batch``: batches of 1,000 puts (one block per batch);
* remote (after each case, on the HAMT it built): a fresh sparse reader fetches one
  key at a time over loopback TCP through hyperlog replication, plain (one fetch per
  pointer) and hinted (`open_hamt(hints=PathHintClient(...))`: on its first local
  miss a get asks the writer, over a second connection, for the path's block list and
  fetches it all at once); median and p90 latency per get.

Each case runs in a fresh child process on a real SQLite store (hyperlog) in a temp
folder; peak memory is that child's peak RSS. Beside ours, the JavaScript anchors run in
the same invocation, one trial per case (``node bench_kv.js --child <case> <seed>``;
bench_kv.js has no size arguments, so they always do 100,000 keys): `--no-anchor` skips
them, and `--quick` (10,000 keys for ours) compares against the MEDIAN figures recorded
in `anchors/js/results.md` instead, and says so.

A/B in the same run: ``--ab-old DIR`` also runs both cases (without the remote part,
unless ``--ab-remote``) with the `hamt` package found in DIR (e.g. ``git archive <commit>
hamt | tar -x -C DIR``), interleaved with ours: old single, new single, old batch, new
batch. Every case reports wall and CPU time (``time.process_time``) and the load average
around it. The old tree's store gets our page size, unless DIR holds a `hyperlog` too
(an old one may not know `page_size`: it then gets hyperlog's default).

Our store is created with 4 KiB SQLite pages (``--page-size``; hyperlog's default is
16 KiB): the configuration docs/hamt.md recommends for a HAMT, whose single puts write
~300-byte blocks (every commit writes each page it dirties whole into the WAL).

Usage:  python benchmarks/bench_hamt.py [--quick] [--json] [--no-anchor] [--n N] [--ab-old DIR]
                                        [--page-size BYTES]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

import hamt
from hyperlog.log import open_store

ANCHOR_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "anchors" / "js"
BATCH = 1000
#: hyperlog's default page size (16 KiB: packs 1 KiB blocks tightly).
DEFAULT_PAGE_SIZE = 16384
#: The page size docs/hamt.md recommends for a HAMT's store: a single put's block is
#: ~300 bytes and every commit writes each page it dirties whole into SQLite's WAL.
STORE_PAGE_SIZE = 4096
REMOTE_GETS = 200
#: Fresh readers (one cold get each) per remote mode.
COLD_READERS = 20
#: MEDIAN rows of `anchors/js/results.md` (d), used only when the anchor is not run.
RECORDED = {
    "hypertrie-put": {"putsPerSec": 1401, "getsPerSec": 5451, "logBytesPerKey": 209},
    "hypertrie-batch": {"putsPerSec": 3326, "getsPerSec": 5721, "logBytesPerKey": 209},
    "hyperbee-put": {"putsPerSec": 1234, "getsPerSec": 2089, "logBytesPerKey": 347},
    "hyperbee-batch": {"putsPerSec": 3691, "getsPerSec": 2335, "logBytesPerKey": 179},
}


def make_data(n: int, seed: int) -> tuple[list[str], list[bytes], list[int]]:
    rnd = random.Random(seed)
    seen: set[str] = set()
    keys: list[str] = []
    while len(keys) < n:
        k = "".join(rnd.choice("0123456789abcdef") for _ in range(16))
        if k not in seen:
            seen.add(k)
            keys.append(k)
    pool = rnd.randbytes(100 * 1024)
    values = [pool[(j * 97) % (len(pool) - 100) :][:100] for j in range(n)]
    gets = [rnd.randrange(n) for _ in range(n)]
    return keys, values, gets


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def du(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# --------------------------------------------------------------------------- our cases


async def run_local(
    case: str, n: int, seed: int, remote_too: bool = True, page_size: int = STORE_PAGE_SIZE
) -> dict[str, Any]:
    keys, values, gets = make_data(n, seed)
    load0 = os.getloadavg()[0]
    folder = tempfile.mkdtemp(prefix="bench-hamt-")
    try:
        # (an old tree of --ab-old may not know page_size: it gets SQLite's default)
        kw: dict[str, Any] = {"page_size": page_size} if page_size != DEFAULT_PAGE_SIZE else {}
        async with open_store(folder, **kw) as store:
            log = await store.create_log()
            async with hamt.open_hamt(log) as db:
                t0 = time.perf_counter()
                c0 = time.process_time()
                if case == "single":
                    for k, v in zip(keys, values, strict=True):
                        await db.put(k, v)
                else:
                    for i in range(0, n, BATCH):
                        async with db.batch() as b:
                            for j in range(i, min(n, i + BATCH)):
                                b.put(keys[j], values[j])
                t1 = time.perf_counter()
                c1 = time.process_time()
                found = 0
                for i in gets:
                    if await db.get(keys[i]) == values[i]:
                        found += 1
                t2 = time.perf_counter()
                c2 = time.process_time()
                load1 = os.getloadavg()[0]
                if found != len(gets):
                    raise RuntimeError(f"only {found}/{len(gets)} gets matched")
                stats = db.statistics()
                length, byte_length = log.length, log.byte_length
                rss = max_rss_mib()
                remote: dict[str, Any] = {"skipped": "--ab-old run"}
                if remote_too:
                    try:
                        remote = await measure_remote(log, db, keys, values, seed)
                    except Exception as exc:  # replication is another part's work: report it
                        remote = {"skipped": repr(exc)}
        return {
            "case": case,
            "n": n,
            "putSec": t1 - t0,
            "putsPerSec": n / (t1 - t0),
            "getSec": t2 - t1,
            "getsPerSec": len(gets) / (t2 - t1),
            "usPerGet": 1e6 * (t2 - t1) / len(gets),
            "cpuUsPerPut": 1e6 * (c1 - c0) / n,
            "cpuUsPerGet": 1e6 * (c2 - c1) / len(gets),
            "loadavg": [round(load0, 2), round(load1, 2)],
            "hamt": os.path.dirname(hamt.__file__),
            "logLength": length,
            "logBytesPerKey": byte_length / n,
            "diskMiB": du(folder) / 2**20,
            "maxRssMiB": rss,
            "cacheBlocks": stats.cache.blocks,
            "fetches": stats.fetches,
            "remote": remote,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def measure_remote(
    wlog: Any, writer: hamt.Hamt[bytes], keys: list[str], values: list[bytes], seed: int
) -> dict[str, Any]:
    """Sparse remote gets from a fresh reader over loopback TCP (hyperlog replication).

    The reader's store is new: it learns the signed head, then each get fetches the
    blocks on the key's path that it does not hold yet (the upper levels stay local
    after the first gets, as they would for a real reader). `plain` follows pointers
    one fetch at a time; `hinted` first asks the writer for the path (`PathHintClient`
    over a second connection) and fetches all of it at once.
    """
    from hyperlog.replication import replicate, replication_for

    rnd = random.Random(seed + 1)
    rdir = tempfile.mkdtemp(prefix="bench-hamt-r-")
    out: dict[str, Any] = {"warm_gets": REMOTE_GETS, "cold_readers": COLD_READERS}
    try:
        async with open_store(rdir) as rstore, trio.open_nursery() as nursery:
            rlog = await rstore.open_log(wlog.key)
            rep_l = await trio.open_tcp_listeners(0, host="127.0.0.1")
            hint_l = await trio.open_tcp_listeners(0, host="127.0.0.1")

            async def serve_rep(stream: trio.abc.Stream) -> None:
                async with replicate(stream, wlog) as session:
                    await session.wait_closed()

            async def serve_hints(stream: trio.abc.Stream) -> None:
                await hamt.serve_path_hints(stream, writer)

            nursery.start_soon(trio.serve_listeners, serve_rep, rep_l)
            nursery.start_soon(trio.serve_listeners, serve_hints, hint_l)
            rs = await trio.open_tcp_stream("127.0.0.1", rep_l[0].socket.getsockname()[1])
            hs = await trio.open_tcp_stream("127.0.0.1", hint_l[0].socket.getsockname()[1])
            hints = hamt.PathHintClient(hs)
            async with replicate(rs, rlog):
                rep = replication_for(rlog)
                with trio.fail_after(60):
                    await rep.update()
                for mode in ("plain", "hinted"):
                    async with hamt.open_hamt(
                        rlog, hints=hints if mode == "hinted" else None
                    ) as reader:
                        out["warm_" + mode] = await _timed_gets(reader, rlog, keys, values, rnd)
                out["blocksHeld"] = rlog.statistics().blocks_held
                out["logLength"] = rlog.length
            # Cold: a brand-new reader (empty store) for every get.
            for mode in ("plain", "hinted"):
                lat: list[float] = []
                for _ in range(COLD_READERS):
                    async with open_store() as cstore:
                        clog = await cstore.open_log(wlog.key)
                        cs = await trio.open_tcp_stream(
                            "127.0.0.1", rep_l[0].socket.getsockname()[1]
                        )
                        async with replicate(cs, clog):
                            with trio.fail_after(60):
                                await replication_for(clog).update()
                            async with hamt.open_hamt(
                                clog, hints=hints if mode == "hinted" else None
                            ) as cold:
                                r = await _timed_gets(cold, clog, keys, values, rnd, count=1)
                                lat.append(r["msPerGetMedian"])
                                fetched = r["blocksFetchedPerGet"]
                lat.sort()
                out["cold_" + mode] = {
                    "msPerGetMedian": statistics.median(lat),
                    "msPerGetP90": lat[int(0.9 * len(lat))],
                    "msMax": lat[-1],
                    "blocksFetchedPerGet": fetched,
                }
            await hs.aclose()
            nursery.cancel_scope.cancel()
        return out
    finally:
        shutil.rmtree(rdir, ignore_errors=True)


async def _timed_gets(
    reader: hamt.Hamt[bytes],
    rlog: Any,
    keys: list[str],
    values: list[bytes],
    rnd: random.Random,
    count: int = REMOTE_GETS,
) -> dict[str, float]:
    lat: list[float] = []
    fetched = 0
    for _ in range(count):
        i = rnd.randrange(len(keys))
        held = rlog.statistics().blocks_held
        t = time.perf_counter()
        with trio.fail_after(60):
            got = await reader.get(keys[i])
        lat.append(time.perf_counter() - t)
        fetched += rlog.statistics().blocks_held - held
        if got != values[i]:
            raise RuntimeError("remote get returned a wrong value")
    lat.sort()
    return {
        "msPerGetMedian": 1e3 * statistics.median(lat),
        "msPerGetP90": 1e3 * lat[int(0.9 * len(lat))],
        "blocksFetchedPerGet": fetched / count,
    }


def child(case: str, n: int, seed: int, remote_too: bool, page_size: int) -> None:
    result = trio.run(run_local, case, n, seed, remote_too, page_size)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(
    args: list[str],
    cwd: Path | None = None,
    timeout: float = 3600,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    out = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False, env=env
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[7:])  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- the anchor


def run_anchor(log: list[str]) -> dict[str, dict[str, Any]]:
    """One trial of each bench_kv.js case (fresh node process each, seed 42)."""
    out: dict[str, dict[str, Any]] = {}
    for name in RECORDED:
        t = time.perf_counter()
        res = run_child(
            ["node", "--expose-gc", "bench_kv.js", "--child", name, "42"], cwd=ANCHOR_DIR
        )
        log.append(f"anchor {name}: {time.perf_counter() - t:.0f} s")
        print(f"  anchor {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
        out[name] = res
    return out


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10,000 keys; recorded anchor figures")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-anchor", action="store_true", help="do not run bench_kv.js")
    ap.add_argument("--n", type=int, default=None, help="keys (default 100,000; quick 10,000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ab-old", metavar="DIR", help="A/B against the hamt package in DIR")
    ap.add_argument(
        "--ab-remote", action="store_true", help="with --ab-old: the old tree's remote gets too"
    )
    ap.add_argument(
        "--page-size",
        type=int,
        default=STORE_PAGE_SIZE,
        help=f"SQLite page size of our store (default {STORE_PAGE_SIZE}, docs/hamt.md; "
        f"hyperlog's own default is {DEFAULT_PAGE_SIZE}); old trees of --ab-old get "
        f"{DEFAULT_PAGE_SIZE}",
    )
    ap.add_argument("--child", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    ap.add_argument("--no-remote", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], int(a.child[1]), a.seed, not a.no_remote, a.page_size)
        return
    n = a.n or (10_000 if a.quick else 100_000)
    notes: list[str] = []
    ours: dict[str, dict[str, Any]] = {}
    me = [sys.executable, os.path.abspath(__file__), "--seed", str(a.seed), "--child"]
    page = ["--page-size", str(a.page_size)]
    notes.append(f"our store's SQLite page size: {a.page_size}")
    notes.append(f"load average at start: {os.getloadavg()[0]:.2f}")
    old: dict[str, dict[str, Any]] = {}
    for case in ("single", "batch"):
        if a.ab_old:
            env = dict(os.environ, PYTHONPATH=os.path.abspath(a.ab_old))
            own_log = os.path.isdir(os.path.join(a.ab_old, "hyperlog"))
            old_page = ["--page-size", str(DEFAULT_PAGE_SIZE)] if own_log else page
            remote = [] if a.ab_remote else ["--no-remote"]
            old[case] = run_child([*me, case, str(n), *remote, *old_page], env=env)
            print(f"  old {case}: {json.dumps(old[case])}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        ours[case] = run_child([*me, case, str(n), *page])
        print(f"  ours {case}: {json.dumps(ours[case])}", file=sys.stderr, flush=True)
        notes.append(f"ours {case}: {time.perf_counter() - t:.0f} s")
    if a.no_anchor:
        anchor: dict[str, dict[str, Any]] = {}
        source = "none (--no-anchor)"
    elif a.quick:
        anchor = {k: dict(v) for k, v in RECORDED.items()}
        source = "recorded MEDIAN figures of anchors/js/results.md (100,000 keys; not re-run)"
    else:
        anchor = run_anchor(notes)
        source = "node bench_kv.js --child <case> 42, one trial each, this run"

    ratios: dict[str, float] = {}
    if anchor:
        best_put = max(anchor["hypertrie-put"]["putsPerSec"], anchor["hyperbee-put"]["putsPerSec"])
        best_batch = max(
            anchor["hypertrie-batch"]["putsPerSec"], anchor["hyperbee-batch"]["putsPerSec"]
        )
        # gets after single puts vs theirs after single puts; likewise after batches
        get_single = ours["single"]["getsPerSec"] / max(
            anchor["hypertrie-put"]["getsPerSec"], anchor["hyperbee-put"]["getsPerSec"]
        )
        get_batch = ours["batch"]["getsPerSec"] / max(
            anchor["hypertrie-batch"]["getsPerSec"], anchor["hyperbee-batch"]["getsPerSec"]
        )
        ratios = {
            "put_vs_best": ours["single"]["putsPerSec"] / best_put,
            "batch_put_vs_best": ours["batch"]["putsPerSec"] / best_batch,
            "get_vs_best": min(get_single, get_batch),
            "get_vs_best_single_built": get_single,
            "get_vs_best_batch_built": get_batch,
            # theirs / ours: >= 1 means our log is no larger
            "log_bytes_batch_vs_hyperbee_batch": anchor["hyperbee-batch"]["logBytesPerKey"]
            / ours["batch"]["logBytesPerKey"],
            "log_bytes_single_vs_hyperbee_single": anchor["hyperbee-put"]["logBytesPerKey"]
            / ours["single"]["logBytesPerKey"],
        }
    rounded = {k: round(v, 3) for k, v in ratios.items()}
    ab: dict[str, float] = {}
    for case, r in old.items():
        ab[f"{case}_puts_new_vs_old"] = round(ours[case]["putsPerSec"] / r["putsPerSec"], 3)
        ab[f"{case}_put_cpu_old_vs_new"] = round(r["cpuUsPerPut"] / ours[case]["cpuUsPerPut"], 3)
        ab[f"{case}_get_cpu_old_vs_new"] = round(r["cpuUsPerGet"] / ours[case]["cpuUsPerGet"], 3)
        for mode in ("cold_plain", "cold_hinted"):
            if mode in r["remote"] and mode in ours[case]["remote"]:
                ab[f"{case}_{mode}_ms_old_vs_new"] = round(
                    r["remote"][mode]["msPerGetMedian"]
                    / ours[case]["remote"][mode]["msPerGetMedian"],
                    3,
                )
    notes.append(f"load average at end: {os.getloadavg()[0]:.2f}")
    result: dict[str, Any] = {
        "benchmark": "hamt",
        "n": n,
        "ours": ours,
        "old": old,
        "ab": ab,
        "anchor": anchor,
        "anchor_source": source,
        "ratios": rounded,
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.platform()}, "
        f"python {platform.python_version()}",
        "notes": notes,
    }
    if a.json:
        print(json.dumps(result))
        return
    print(f"# bench_hamt  n={n}  anchor: {source}")
    print(
        f"{'case':<18}{'puts/s':>10}{'cpu us/put':>11}{'gets/s':>10}{'us/get':>9}"
        f"{'B/entry':>9}{'RSS MiB':>9}"
    )
    rows = [("hamt " + c, ours[c]) for c in ("single", "batch")]
    rows += [("old hamt " + c, r) for c, r in old.items()] + list(anchor.items())
    for name, r in rows:
        print(
            f"{name:<18}{r['putsPerSec']:>10.0f}{r.get('cpuUsPerPut', float('nan')):>11.0f}"
            f"{r['getsPerSec']:>10.0f}{1e6 / r['getsPerSec']:>9.0f}{r['logBytesPerKey']:>9.0f}"
            f"{r.get('maxRssMiB', float('nan')):>9.0f}"
        )
    for c in ("single", "batch"):
        print(f"remote get, {c}-built HAMT:", json.dumps(ours[c]["remote"]))
    for k, v in rounded.items():
        print(f"{k}: {v}")
    for k, v in ab.items():
        print(f"A/B {k}: {v}")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
