"""DHT benchmark: announce, announce-to-visible, lookup and connect-by-key latency in
in-process networks, beside the hyperdht figures of ../shared/anchors/dht.

All N nodes run in this one process (as the hyperdht anchor runs its testnet in one
Node.js process), peered over memory links (no sockets, no encryption on the links:
this isolates the DHT and overlay cost), in **real time** (trio's normal clock; the
scheduler cost is what is measured). The network is a random spanning tree plus N/2
random chords; nodes bootstrap the snake every second so a fresh network converges
fast (Pinecone's default is 5 s). Operations run one at a time, like the anchor's.

    python benchmarks/bench_dht.py                 # N = 25 and 100, 100 topics each
    python benchmarks/bench_dht.py --quick         # N = 25, 20 topics
    python benchmarks/bench_dht.py --json          # one JSON object (with `ratios`)
    python benchmarks/bench_dht.py --anchor        # also run `node bench_dht.js N` live

Measured per N:
- announce: time for `dht.announce(topic)` to be entered (the node closest to the topic
  id acknowledged the signed record); hyperdht: `announce(...).finished()`.
- announce-to-visible: from starting the announce until a lookup from another random
  node returns the record.
- lookup: `dht.lookup(topic)` from a random node other than the announcer, until it
  returns (the closest node and its snake neighbours answered); hyperdht: the lookup
  query stream's completion ("first result" is also quoted). Success rate and DHT
  datagrams the looking-up node sent.
- churn: as the anchor: fresh topics, 20 % of the nodes killed, 5 s later every topic
  looked up from a survivor; topics found and lookup latency.
- connect: `node.connect(key, "/bench/echo")` to an announcer found by lookup, until
  the end-to-end Noise session stream is open; then a 1 KiB echo round trip on it;
  hyperdht: `connect(publicKey)` until the stream opens, and its 1 KiB echo.

`ratios` are hyperdht's figure divided by ours (above 1: we are faster), against the
published anchor table (anchors/dht/results.md) and, with --anchor, against the anchor
run live on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from pinecone_trio.dht import Dht, open_dht, topic_id
from pinecone_trio.identity import Identity
from pinecone_trio.node import NodeConfig, open_node
from pinecone_trio.router import RouterConfig
from pinecone_trio.testing import Network

HERE = os.path.dirname(os.path.abspath(__file__))
ANCHOR_DIR = os.path.join(HERE, "..", "..", "shared", "anchors", "dht")

#: hyperdht 6.34.0, anchors/dht/results.md (p50 over 3 trials, one process, loopback UDP).
HYPERDHT = {
    25: {
        "announce_p50_ms": 8.50,
        "lookup_first_p50_ms": 0.92,
        "lookup_total_p50_ms": 3.74,
        "lookup_requests": 23.0,
        "connect_p50_ms": 4.88,
        "echo_p50_ms": 1.00,
        "churn_total_p50_ms": 3.79,
    },
    100: {
        "announce_p50_ms": 6.35,
        "lookup_first_p50_ms": 0.76,
        "lookup_total_p50_ms": 3.34,
        "lookup_requests": 35.5,
        "connect_p50_ms": 5.52,
        "echo_p50_ms": 0.65,
        "churn_total_p50_ms": 1006.0,
    },
}

BENCH_CONFIG = NodeConfig(router=RouterConfig(bootstrap_interval=1.0))
PROTOCOL = "/bench/echo"
OP_TIMEOUT = 15.0
#: Seconds between killing nodes and the lookups (the anchor waits 5 s too).
CHURN_WAIT = 5.0


def random_edges(n: int, rng: random.Random) -> list[tuple[str, str]]:
    names = [f"n{i}" for i in range(n)]
    edges = [(names[i], names[rng.randrange(i)]) for i in range(1, n)]
    extra = n // 2
    for _ in range(extra * 10):
        if extra == 0:
            break
        a, b = rng.sample(names, 2)
        if (a, b) not in edges and (b, a) not in edges:
            edges.append((a, b))
            extra -= 1
    return edges


def summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "n": 0}
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return {"p50": round(statistics.median(ordered), 3), "p90": round(p90, 3), "n": len(values)}


async def echo_server(net: Network, name: str, *, task_status: trio.TaskStatus[None]) -> None:
    async with net[name].listen(PROTOCOL) as listener, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            stream = await listener.accept()

            async def echo(s: trio.abc.Stream = stream) -> None:
                async with s:
                    while data := await s.receive_some():
                        await s.send_all(data)

            nursery.start_soon(echo)


class KillableNetwork:
    """Nodes (each with its DHT) in one nursery, any of which can be killed."""

    def __init__(self) -> None:
        self.net = Network()
        self.dhts: dict[str, Dht] = {}
        self._scopes: dict[str, trio.CancelScope] = {}

    async def run_node(self, name: str, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            self._scopes[name] = scope
            async with (
                open_node(Identity.generate(), listen=["memory://"], config=BENCH_CONFIG) as node,
                open_dht(node) as dht,
            ):
                self.net.nodes[name] = node
                self.dhts[name] = dht
                task_status.started()
                await trio.sleep_forever()

    def kill(self, name: str) -> None:
        self._scopes.pop(name).cancel()
        del self.net.nodes[name]
        del self.dhts[name]

    def component(self, name: str) -> list[str]:
        seen, todo = {name}, [name]
        while todo:
            here = todo.pop()
            for a, b in self.net.edges:
                for x, y in ((a, b), (b, a)):
                    if x == here and y in self.net.nodes and y not in seen:
                        seen.add(y)
                        todo.append(y)
        return sorted(seen)


@asynccontextmanager
async def killable_network(edges: list[tuple[str, str]]) -> AsyncIterator[KillableNetwork]:
    kn = KillableNetwork()
    names = sorted({x for edge in edges for x in edge}, key=lambda x: int(x[1:]))
    async with trio.open_nursery() as nursery:
        for name in names:
            await nursery.start(kn.run_node, name)
        for a, b in edges:
            await kn.net[a].connect(kn.net[b].listen_uris[0])
            kn.net.edges.append((a, b))
        yield kn
        nursery.cancel_scope.cancel()


async def run_size(
    n: int, topics: int, connects: int, churn_topics: int, seed: int
) -> dict[str, Any]:
    rng = random.Random(seed)
    edges = random_edges(n, rng)
    result: dict[str, Any] = {"nodes": n, "edges": len(edges)}
    async with killable_network(edges) as kn, AsyncExitStack() as stack:
        net, dhts = kn.net, kn.dhts
        start = time.perf_counter()
        with trio.fail_after(300):
            await net.wait_converged()
        result["converge_s"] = round(time.perf_counter() - start, 2)
        names = sorted(net.nodes)
        print(f"N={n}: converged in {result['converge_s']} s", file=sys.stderr)

        announce_ms: list[float] = []
        announce_cpu: list[float] = []
        visible_ms: list[float] = []
        acked = 0
        announced: list[tuple[str, str]] = []
        for i in range(topics):
            name = rng.choice(names)
            topic = f"bench/{seed}/{i}"
            start, cpu = time.perf_counter(), time.process_time()
            with trio.fail_after(OP_TIMEOUT):
                ann = await stack.enter_async_context(dhts[name].announce(topic))
            announce_ms.append((time.perf_counter() - start) * 1000)
            announce_cpu.append((time.process_time() - cpu) * 1000)
            acked += ann.acknowledged
            looker = rng.choice([x for x in names if x != name])
            for _ in range(50):
                records = await dhts[looker].lookup(topic, timeout=5)
                if any(r.public_key == net[name].public_key for r in records):
                    visible_ms.append((time.perf_counter() - start) * 1000)
                    break
            announced.append((name, topic))
        result["announce_ms"] = summary(announce_ms)
        result["announce_cpu_ms"] = summary(announce_cpu)
        result["announce_acked"] = acked
        result["visible_ms"] = summary(visible_ms)

        lookup_ms: list[float] = []
        lookup_cpu: list[float] = []
        sent: list[int] = []
        found = 0
        for name, topic in announced:
            looker = rng.choice([x for x in names if x != name])
            before = dhts[looker].datagrams_sent
            start, cpu = time.perf_counter(), time.process_time()
            records = await dhts[looker].lookup(topic, timeout=5)
            lookup_ms.append((time.perf_counter() - start) * 1000)
            lookup_cpu.append((time.process_time() - cpu) * 1000)
            sent.append(dhts[looker].datagrams_sent - before)
            found += any(r.public_key == net[name].public_key for r in records)
        result["lookup_ms"] = summary(lookup_ms)
        result["lookup_cpu_ms"] = summary(lookup_cpu)
        result["lookup_success"] = found / max(1, len(announced))
        result["lookup_datagrams_sent"] = statistics.median(sent) if sent else None

        server = announced[0][0]
        async with trio.open_nursery() as nursery:
            await nursery.start(echo_server, net, server)
            open_ms: list[float] = []
            open_cpu: list[float] = []
            echo_ms: list[float] = []
            echo_cpu: list[float] = []
            payload = os.urandom(1024)
            for _ in range(connects):
                client = rng.choice([x for x in names if x != server])
                with trio.fail_after(OP_TIMEOUT):
                    start, cpu = time.perf_counter(), time.process_time()
                    stream = await net[client].connect(net[server].public_key, PROTOCOL)
                    open_ms.append((time.perf_counter() - start) * 1000)
                    open_cpu.append((time.process_time() - cpu) * 1000)
                    async with stream:
                        start, cpu = time.perf_counter(), time.process_time()
                        await stream.send_all(payload)
                        got = b""
                        while len(got) < len(payload):
                            got += await stream.receive_some()
                        echo_ms.append((time.perf_counter() - start) * 1000)
                        echo_cpu.append((time.process_time() - cpu) * 1000)
            nursery.cancel_scope.cancel()
        result["connect_ms"] = summary(open_ms)
        result["connect_cpu_ms"] = summary(open_cpu)
        result["echo_ms"] = summary(echo_ms)
        result["echo_cpu_ms"] = summary(echo_cpu)
        result["store_records_total"] = sum(len(d.engine.store) for d in dhts.values())

        # Churn, as the anchor does it: fresh topics, kill 20 % of the nodes, wait 5 s,
        # look every topic up from a random survivor (of the largest remaining part).
        churn: list[tuple[str, str]] = []
        for i in range(churn_topics):
            name = rng.choice(names)
            topic = f"churn/{seed}/{i}"
            with trio.fail_after(OP_TIMEOUT):
                await stack.enter_async_context(dhts[name].announce(topic))
            churn.append((name, topic))
        keys = {name: net[name].public_key for name in names}
        victims = rng.sample(names, n // 5)
        for name in victims:
            kn.kill(name)
        await trio.sleep(CHURN_WAIT)
        alive = max((kn.component(x) for x in net.nodes), key=len)
        churn_ms: list[float] = []
        churn_found = 0
        findable = 0  # topics with a live copy in the looker's part of the network
        for name, topic in churn:
            looker = rng.choice([x for x in alive if x != name])
            tid, key = topic_id(topic), bytes(keys[name])
            copy = any(dhts[x].engine.store.has(tid, key) for x in alive)
            findable += copy
            start = time.perf_counter()
            records = await dhts[looker].lookup(topic, timeout=5)
            churn_ms.append((time.perf_counter() - start) * 1000)
            hit = any(r.public_key == keys[name] for r in records)
            churn_found += hit
            if copy and not hit:
                print(f"N={n}: churn miss {topic} (copy alive)", file=sys.stderr)
        result["churn"] = {
            "killed": len(victims),
            "largest_part": len(alive),
            "announcers_killed": sum(name in victims for name, _ in churn),
            "topics": len(churn),
            "found": churn_found,
            "with_live_copy": findable,
            "lookup_ms": summary(churn_ms),
        }
    return result


def run_anchor(n: int) -> dict[str, Any] | None:
    """Run `node bench_dht.js n` from a temporary copy of the anchor (needs npm ci)."""
    if shutil.which("node") is None or not os.path.isdir(ANCHOR_DIR):
        return None
    tmp = tempfile.mkdtemp(prefix="dht-anchor-")
    try:
        work = os.path.join(tmp, "dht")
        shutil.copytree(ANCHOR_DIR, work, ignore=shutil.ignore_patterns("raw"))
        if not os.path.isdir(os.path.join(work, "node_modules")):
            cached = os.environ.get("DHT_ANCHOR_NODE_MODULES")
            if cached and os.path.isdir(cached):
                shutil.copytree(cached, os.path.join(work, "node_modules"), symlinks=True)
            else:
                subprocess.run(
                    ["npm", "ci", "--no-audit", "--no-fund"],
                    cwd=work,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
        out = subprocess.run(
            ["node", "--expose-gc", "bench_dht.js", str(n), "1"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        data: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        if "error" in data or "lookup" not in data:
            return None
        return {
            "announce_p50_ms": data["announce"]["p50"],
            "lookup_first_p50_ms": data["lookup"]["firstMs"]["p50"],
            "lookup_total_p50_ms": data["lookup"]["totalMs"]["p50"],
            "lookup_requests": data["lookup"]["requests"],
            "connect_p50_ms": data["connect"]["openMs"]["p50"],
            "echo_p50_ms": data["connect"]["echoMs"]["p50"],
            "churn_total_p50_ms": data["churn"]["totalMs"]["p50"],
        }
    except (OSError, subprocess.SubprocessError, ValueError, KeyError):
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ratios(ours: dict[str, Any], ref: dict[str, float], suffix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    pairs = {
        "announce": (ours["announce_ms"]["p50"], ref["announce_p50_ms"]),
        "lookup": (ours["lookup_ms"]["p50"], ref["lookup_total_p50_ms"]),
        "connect": (ours["connect_ms"]["p50"], ref["connect_p50_ms"]),
        "echo": (ours["echo_ms"]["p50"], ref["echo_p50_ms"]),
    }
    for name, (mine, theirs) in pairs.items():
        if mine and theirs:
            out[f"{name}_p50_hyperdht_over_ours_{suffix}"] = round(theirs / mine, 3)
        cpu = ours[f"{name}_cpu_ms"]["p50"]
        if cpu and theirs:
            out[f"{name}_p50_hyperdht_wall_over_our_cpu_{suffix}"] = round(theirs / cpu, 3)
    return out


def table(results: list[dict[str, Any]], live: dict[int, dict[str, Any]]) -> str:
    rows = [
        "| figure (p50, p90 in brackets) | " + " | ".join(f"N = {r['nodes']}" for r in results),
        "| --- |" + " --- |" * len(results),
    ]

    def cell(r: dict[str, Any], key: str) -> str:
        s = r[key]
        return f"{s['p50']} [{s['p90']}]" if s["p50"] is not None else "-"

    def ref(key: str) -> str:
        out = []
        for r in results:
            pub = HYPERDHT.get(r["nodes"], {}).get(key)
            run = live.get(r["nodes"], {}).get(key)
            text = "-" if pub is None else f"{pub}"
            if run is not None:
                text += f" (live {run:.2f})"
            out.append(text)
        return " | ".join(out)

    def mine(key: str) -> str:
        return " | ".join(cell(r, key) for r in results)

    rows.append("| converge (s) | " + " | ".join(str(r["converge_s"]) for r in results))
    rows.append("| announce, ms | " + mine("announce_ms"))
    rows.append("|   CPU ms (whole process) | " + mine("announce_cpu_ms"))
    rows.append("|   hyperdht announce p50, ms | " + ref("announce_p50_ms"))
    rows.append("| announce-to-visible, ms | " + mine("visible_ms"))
    rows.append("| lookup, ms | " + mine("lookup_ms"))
    rows.append("|   CPU ms (whole process) | " + mine("lookup_cpu_ms"))
    rows.append("|   hyperdht lookup completion p50, ms | " + ref("lookup_total_p50_ms"))
    rows.append("|   hyperdht lookup first result p50, ms | " + ref("lookup_first_p50_ms"))
    rows.append("| lookup success | " + " | ".join(f"{r['lookup_success']:.0%}" for r in results))
    rows.append(
        "| DHT datagrams sent per lookup (median) | "
        + " | ".join(str(r["lookup_datagrams_sent"]) for r in results)
    )
    rows.append("|   hyperdht requests per lookup (median) | " + ref("lookup_requests"))
    rows.append(
        "| connect by key (session open), ms | "
        + " | ".join(cell(r, "connect_ms") for r in results)
    )
    rows.append("|   hyperdht connect p50, ms | " + ref("connect_p50_ms"))
    rows.append(
        "| 1 KiB echo on the stream, ms | " + " | ".join(cell(r, "echo_ms") for r in results)
    )
    rows.append("|   hyperdht 1 KiB echo p50, ms | " + ref("echo_p50_ms"))
    rows.append(
        "| churn: nodes killed; topics found / with a live copy / announced | "
        + " | ".join(
            f"{r['churn']['killed']}; {r['churn']['found']} / {r['churn']['with_live_copy']}"
            f" / {r['churn']['topics']}"
            for r in results
        )
    )
    rows.append(
        "| churn: lookup ms (5 s after the kill) | "
        + " | ".join(
            f"{r['churn']['lookup_ms']['p50']} [{r['churn']['lookup_ms']['p90']}]" for r in results
        )
    )
    rows.append("|   hyperdht after churn: completion p50, ms | " + ref("churn_total_p50_ms"))
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 25, 20 topics")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--anchor", action="store_true", help="run the hyperdht anchor live")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [25] if args.quick else [25, 100]
    topics = 20 if args.quick else 100
    connects = 10 if args.quick else 50
    churn_topics = 10 if args.quick else 50
    results = [trio.run(run_size, n, topics, connects, churn_topics, args.seed) for n in sizes]
    live: dict[int, dict[str, Any]] = {}
    if args.anchor:
        for n in sizes:
            print(f"running the hyperdht anchor, N={n}", file=sys.stderr)
            got = run_anchor(n)
            if got is not None:
                live[n] = got
    all_ratios: dict[str, float] = {}
    for r in results:
        n = r["nodes"]
        if n in HYPERDHT:
            all_ratios.update(ratios(r, HYPERDHT[n], f"n{n}_published"))
        if n in live:
            all_ratios.update(ratios(r, live[n], f"n{n}_live"))
    if args.json:
        print(
            json.dumps(
                {
                    "results": results,
                    "hyperdht_published": HYPERDHT,
                    "hyperdht_live": live,
                    "ratios": all_ratios,
                }
            )
        )
    else:
        print(table(results, live))
        print()
        for key, value in sorted(all_ratios.items()):
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
