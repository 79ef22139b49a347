"""Router simulator benchmark: routing quality and cost per topology (issue 3, item 7).

Runs ``python -m pinecone_trio.sim --json`` once per (topology, scenario) in a fresh
subprocess (so memory per node is measured from a clean process and one slow or broken
run cannot take the others down), and writes one Markdown table of the metrics the
simulator defines (docs/simulator.md): convergence times, delivery ratio, stretch for
the first packet and in steady state, table sizes, control bytes per node per second,
recovery time after failures, memory per node, virtual time, wall and CPU time.

The set covers every shared topology (../shared/topologies, pineconesim's graphs),
generated 1,000-node random geometric and scale-free graphs, grids and lines, churn of
1% of links per minute, and the two speed targets: 1,000 nodes for 120 virtual seconds
with real ed25519 signatures, and the 9,204-node skitter sample with the null signer.

Usage:
    python benchmarks/bench_router_sim.py [--quick] [--json] [--output FILE] [--only NAME]

``--json`` prints one JSON object: every run's metrics under ``runs`` and a ``ratios``
map of measured figure over target (<= 1.0 meets a "lower is better" target, >= 1.0 a
"higher is better" one; the key says which).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "topologies"

#: (name, topology, extra CLI arguments, per-run timeout in seconds)
Run = tuple[str, str, list[str], float]


def _file(name: str) -> str:
    return f"../shared/topologies/{name}"  # relative to the checkout, where runs start


FULL: list[Run] = [
    ("sim", _file("sim.txt"), [], 600),
    ("sim-medium", _file("sim-medium.txt"), [], 600),
    ("line-0050", _file("line-0050.txt"), [], 600),
    ("rtree-0050", _file("rtree-0050.txt"), [], 600),
    ("grid4-0049", _file("grid4-0049.txt"), [], 600),
    ("graph-250", _file("graph-250.txt"), [], 600),
    ("graph-250-2", _file("graph-250-2.txt"), [], 900),
    ("freifunk-bielefield", _file("freifunk-bielefield.txt"), [], 600),
    ("dn42", _file("dn42.txt"), [], 600),
    ("fc00", _file("fc00.txt"), [], 900),
    ("sim-large", _file("sim-large.txt"), ["--pairs", "500"], 1800),
    ("grid4-2025", _file("grid4-2025.txt"), ["--pairs", "500", "--check-interval", "1"], 2400),
    ("yggdrasil", _file("yggdrasil.txt"), ["--pairs", "500", "--check-interval", "1"], 2400),
    ("geometric:1000:0.06", "geometric:1000:0.06", [], 1800),
    ("ba:1000:2", "ba:1000:2", [], 1800),
    ("grid:10x10", "grid:10x10", [], 600),
    ("line:100", "line:100", [], 600),
    ("ba:1000:2 churn 1%/min", "ba:1000:2", ["--scenario", "churn"], 2400),
    ("geometric:1000:0.06 churn 1%/min", "geometric:1000:0.06", ["--scenario", "churn"], 2400),
    ("fc00 link-failure", _file("fc00.txt"), ["--scenario", "link-failure"], 900),
    ("fc00 node-failure", _file("fc00.txt"), ["--scenario", "node-failure"], 900),
    ("fc00 root-departure", _file("fc00.txt"), ["--scenario", "root-departure"], 900),
    ("fc00 join", _file("fc00.txt"), ["--scenario", "join"], 900),
    ("fc00 mobility", _file("fc00.txt"), ["--scenario", "mobility"], 900),
    (
        "ba:1000:2 ed25519 120 s",
        "ba:1000:2",
        ["--signatures", "--duration", "120", "--pairs", "300"],
        1800,
    ),
    (
        "sim-skitter null signer",
        _file("sim-skitter.txt"),
        ["--pairs", "300", "--check-interval", "2", "--converge-limit", "900"],
        3600,
    ),
]

QUICK: list[Run] = [
    ("sim", _file("sim.txt"), ["--pairs", "200"], 300),
    ("grid:5x5", "grid:5x5", ["--pairs", "200"], 300),
    ("ba:200:2", "ba:200:2", ["--pairs", "200"], 300),
    (
        "sim-medium churn 5%/min",
        _file("sim-medium.txt"),
        ["--scenario", "churn", "--churn-rate", "0.05", "--pairs", "200"],
        300,
    ),
]

#: Topologies the issue calls Internet-like (stretch target <= 1.25).
INTERNET_LIKE = ("fc00", "yggdrasil", "sim-skitter null signer", "ba:1000:2")

COLUMNS = [
    ("nodes", "nodes"),
    ("links", "links"),
    ("comp", "components"),
    ("tree s", "tree_converged_s"),
    ("snake s", "snake_converged_s"),
    ("delivery", "delivery_ratio"),
    ("1st delivery", "first_packet_delivery_ratio"),
    ("stretch mean", "stretch_mean"),
    ("p50", "stretch_p50"),
    ("p95", "stretch_p95"),
    ("max", "stretch_max"),
    ("1st stretch mean", "first_packet_stretch_mean"),
    ("1st p95", "first_packet_stretch_p95"),
    ("1st max", "first_packet_stretch_max"),
    ("table mean", "table_size_mean"),
    ("table p95", "table_size_p95"),
    ("table max", "table_size_max"),
    ("ctl B/node/s", "control_bytes_per_node_s"),
    ("mem KB/node", "memory_per_node_bytes"),
    ("snake broken checks", "steady_snake_bad_checks"),
    ("loops", "forwarding_loops_total"),
    ("revisits", "probe_revisits_total"),
    ("bootstrap loops", "bootstrap_loops_total"),
    ("virtual s", "virtual_s"),
    ("wall s", "wall_s"),
    ("cpu s", "cpu_s"),
]

SCENARIO_COLUMNS = [
    ("event", "event"),
    ("recovery s", "recovery_s"),
    ("tree rec. s", "tree_recovery_s"),
    ("snake rec. s", "snake_recovery_s"),
    ("delivery during", "delivery_ratio_during_recovery"),
    ("delivery after", "delivery_ratio_after_recovery"),
    ("churn delivery", "churn_delivery_ratio"),
    ("churn 1st", "churn_first_packet_delivery_ratio"),
    ("churn failures", "churn_link_failures"),
    ("churn ctl B/node/s", "churn_control_bytes_per_node_s"),
]


def run_one(topology: str, extra: list[str], timeout: float, seed: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pinecone_trio.sim", "--topology", topology]
    cmd += ["--seed", str(seed), "--json", *extra]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s wall", "command": " ".join(cmd)}
    if done.returncode != 0:
        return {"error": done.stderr.strip()[-500:], "command": " ".join(cmd)}
    result: dict[str, Any] = json.loads(done.stdout)
    result["process_wall_s"] = round(time.perf_counter() - started, 2)
    result["command"] = "python -m pinecone_trio.sim " + " ".join(cmd[3:])
    return result


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "memory_per_node_bytes":
        return f"{value / 1024:.1f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown(results: dict[str, dict[str, Any]], note: str) -> str:
    lines = [note, "", "## Per topology (after cold-start convergence)", ""]
    lines.append("| topology | " + " | ".join(c for c, _ in COLUMNS) + " |")
    lines.append("|---" * (len(COLUMNS) + 1) + "|")
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error'][:200]} |")
            continue
        lines.append(f"| {name} | " + " | ".join(_cell(k, r.get(k)) for _, k in COLUMNS) + " |")
    lines += ["", "## Scenarios (events after convergence)", ""]
    lines.append("| run | " + " | ".join(c for c, _ in SCENARIO_COLUMNS) + " |")
    lines.append("|---" * (len(SCENARIO_COLUMNS) + 1) + "|")
    for name, r in results.items():
        if "error" in r or r.get("scenario") == "cold":
            continue
        cells = " | ".join(_cell(k, r.get(k)) for _, k in SCENARIO_COLUMNS)
        lines.append(f"| {name} | {cells} |")
    lines += ["", "## Commands", ""]
    for name, r in results.items():
        lines.append(f"- {name}: `{r.get('command', '?')}`")
    return "\n".join(lines) + "\n"


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    cold = [r for r in results.values() if "error" not in r and r.get("scenario") == "cold"]
    deliveries = [r["delivery_ratio"] for r in cold if r.get("delivery_ratio") is not None]
    if deliveries:
        out["min_delivery_over_target_0.999_higher_better"] = round(min(deliveries) / 0.999, 4)
    churn = [
        r["churn_delivery_ratio"]
        for r in results.values()
        if r.get("churn_delivery_ratio") is not None
    ]
    if churn:
        out["min_churn_delivery_over_target_0.99_higher_better"] = round(min(churn) / 0.99, 4)
    for name in INTERNET_LIKE:
        r = results.get(name)
        if r and r.get("stretch_mean") is not None:
            out[f"{name}_stretch_mean_over_target_1.25_lower_better"] = round(
                r["stretch_mean"] / 1.25, 4
            )
    perf = results.get("ba:1000:2 ed25519 120 s")
    if perf and "cpu_s" in perf:
        out["ed25519_1000_nodes_120s_cpu_over_target_120s_lower_better"] = round(
            perf["cpu_s"] / 120.0, 4
        )
        out["ed25519_1000_nodes_120s_wall_over_target_120s_lower_better"] = round(
            perf["wall_s"] / 120.0, 4
        )
    sk = results.get("sim-skitter null signer")
    if sk and "cpu_s" in sk:
        out["skitter_cpu_over_target_300s_lower_better"] = round(sk["cpu_s"] / 300.0, 4)
        out["skitter_wall_over_target_300s_lower_better"] = round(sk["wall_s"] / 300.0, 4)
    return out


def machine_note(command: str) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return (
        "# Router simulator benchmark (issue 3, item 7)\n\n"
        f"Command: `{command}`\n\n"
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, commit {commit or '?'}, load average at the end "
        f"{load:.1f}. The machine is shared with other agents, so wall times are inflated; "
        "`cpu s` is this simulation's own CPU time. Method and metric definitions: "
        "docs/simulator.md. Default link model: 5 ms latency + U(0, 1 ms) jitter, no loss, "
        "unlimited bandwidth; Pinecone's timers (bootstrap 5 s, snake expiry 10 s); null "
        "signer unless the row says ed25519; seed 0."
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a small set for CI")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--output", help="write the Markdown table here")
    p.add_argument("--only", action="append", help="run only these names (repeatable)")
    p.add_argument("--skip", action="append", help="skip these names (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jsonl", help="append each run's result to this file as it finishes")
    p.add_argument(
        "--from-jsonl",
        action="append",
        help="do not run: build the table from results saved with --jsonl (repeatable)",
    )
    args = p.parse_args()
    plan = QUICK if args.quick else FULL
    if args.only:
        plan = [r for r in plan if r[0] in args.only]
    if args.skip:
        plan = [r for r in plan if r[0] not in args.skip]
    results: dict[str, dict[str, Any]] = {}
    if args.from_jsonl:
        saved: dict[str, dict[str, Any]] = {}
        for path in args.from_jsonl:
            for line in Path(path).read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    saved[row["name"]] = row["result"]
        # Keep the plan's order; anything else saved goes last.
        results = {n: saved[n] for n, *_ in FULL if n in saved}
        results.update({n: r for n, r in saved.items() if n not in results})
        plan = []
    for name, topology, extra, timeout in plan:
        results[name] = run_one(topology, extra, timeout, args.seed)
        r = results[name]
        shown = r.get("error") or {k: r.get(k) for _, k in COLUMNS}
        print(f"{name}: {shown}", file=sys.stderr, flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(json.dumps({"name": name, "result": r}) + "\n")
    command = "python benchmarks/bench_router_sim.py " + " ".join(sys.argv[1:])
    table = markdown(results, machine_note(command.strip()))
    if args.output:
        Path(args.output).write_text(table)
    if args.json:
        print(json.dumps({"runs": results, "ratios": ratios(results)}))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
