"""Overlay benchmark: datagrams across 1, 3 and 6 hops of real loopback TCP links, the
idle cost of a 20-node network, and how fast a cold node reaches everyone.

Every node is a separate process (this script re-run with `--worker`), peered over
Noise-XX TCP links on 127.0.0.1 in a line (for the hop tests) or a random connected
graph (for the idle and join tests). The orchestrator talks to workers through their
stdin/stdout as JSON lines.

    python benchmarks/bench_overlay.py            # full run (a few minutes)
    python benchmarks/bench_overlay.py --quick    # a small run
    python benchmarks/bench_overlay.py --json     # one JSON object
    python benchmarks/bench_overlay.py --join-only --seeds 5
                                                  # idle network + cold join, 5 seeds
    python benchmarks/bench_overlay.py --hops 3 --no-network --code /tmp/old
                                                  # one hop count, workers on another tree

Measured:
- throughput: the sender pushes 1 KiB datagrams open-loop for a fixed time; the last
  node counts what arrives. Reported: datagrams delivered per second at the sink and
  the share lost (queues drop by design when a flow outruns a link; see docs/node.md).
- round trip: sequential pings (1 KiB) to an echo node; median and p95.
- CPU per frame: during the blast, each process's user+system CPU divided by the frames
  it received (relays) or sent/delivered (ends); the relays' figure is the node's
  per-hop cost of forwarding one 1 KiB datagram, link crypto included.
- idle CPU: user+system CPU seconds of each of 20 converged idle nodes over a window.
- cold join: a new node joins a converged 20-node network and pings every key until
  each has answered; the time until all have.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


# ----------------------------------------------------------------------------- worker


async def _worker(args: argparse.Namespace) -> None:
    import trio

    from pinecone_trio import Identity, PublicKey
    from pinecone_trio.node import open_node

    def emit(**fields: Any) -> None:
        print(json.dumps(fields), flush=True)

    async with open_node(Identity.generate(), listen=["tcp://127.0.0.1:0"]) as node:
        for uri in args.connect:
            await node.connect(uri)
        emit(event="ready", key=node.public_key.hex(), uri=node.listen_uris[0])
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))

        async def answer_pings() -> None:
            # echo: every datagram starting with b"P" goes back with b"R"
            while True:
                dg = await node.receive()
                if dg.payload[:1] == b"P":
                    await node.send(dg.source_key, b"R" + dg.payload[1:])
                elif dg.payload[:1] == b"D":
                    sink["n"] += 1
                    now = time.perf_counter()
                    if sink["first"] == 0.0:
                        sink["first"] = now
                    sink["last"] = now
                elif dg.payload[:1] == b"R":
                    await replies.send((dg.source_key, dg.payload))

        sink = {"n": 0, "first": 0.0, "last": 0.0}
        replies_send, replies_recv = trio.open_memory_channel[tuple[PublicKey, bytes]](10000)
        replies = replies_send

        async def ping(dest: PublicKey, size: int) -> float:
            start = time.perf_counter()
            body = b"P" + start.hex().encode().ljust(size - 1, b".")
            await node.send(dest, body)
            while True:
                src, payload = await replies_recv.receive()
                if src == dest and payload[1:] == body[1:]:
                    return time.perf_counter() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_pings)
            buf = b""
            while True:
                data = await stdin.receive_some(65536)
                if not data:
                    nursery.cancel_scope.cancel()
                    break
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = json.loads(line)
                    op = cmd["op"]
                    if op == "wait_reach":
                        # ping every key until each answered once; report the time
                        keys = [PublicKey.from_hex(k) for k in cmd["keys"]]
                        start = time.perf_counter()
                        missing = set(keys)
                        with trio.move_on_after(cmd["timeout"]):
                            while missing:
                                for k in list(missing):
                                    await node.send(k, b"P" + b"reach".ljust(63, b"."))
                                with trio.move_on_after(0.05):
                                    while missing:
                                        src, _ = await replies_recv.receive()
                                        missing.discard(src)
                        emit(
                            event="reached",
                            seconds=time.perf_counter() - start,
                            missing=len(missing),
                        )
                    elif op == "rtt":
                        dest = PublicKey.from_hex(cmd["key"])
                        times = []
                        for _ in range(cmd["count"]):
                            with trio.move_on_after(2.0):
                                times.append(await ping(dest, cmd["size"]))
                        emit(event="rtt", times=times)
                    elif op == "blast":
                        dest = PublicKey.from_hex(cmd["key"])
                        payload = b"D" + b"x" * (cmd["size"] - 1)
                        sent = 0
                        start = time.perf_counter()
                        end = start + cmd["seconds"]
                        while time.perf_counter() < end:
                            for _ in range(64):
                                await node.send(dest, payload)
                            sent += 64
                        emit(event="blasted", sent=sent, seconds=time.perf_counter() - start)
                    elif op == "sink":
                        emit(event="sink", **sink)
                        sink.update(n=0, first=0.0, last=0.0)
                    elif op == "status":
                        status = node.status()
                        emit(
                            event="status",
                            root=status["root_key"],
                            desc=status["snake"]["descending_key"],
                        )
                    elif op == "frames":
                        peers = node.status()["peers"]
                        emit(
                            event="frames",
                            frames_in=sum(p["frames_in"] for p in peers),
                            frames_out=sum(p["frames_out"] for p in peers),
                        )


async def _cpu_line(nodes: int, count: int, size: int, tree: bool) -> dict[str, Any]:
    """CPU seconds this process spends moving `count` datagrams along a line of `nodes`
    nodes over memory links (Noise included), all in this one process."""
    import trio

    from pinecone_trio.testing import open_network

    names = [f"n{i}" for i in range(nodes)]
    async with open_network(list(itertools.pairwise(names))) as net:
        with trio.fail_after(120):
            # Poll (a benchmark, not a test): works with any version of the testing
            # helpers, including ones whose wait_converged can miss a change (A/B runs).
            while not net.converged():  # noqa: ASYNC110
                await trio.sleep(0.05)
        first, last = net[names[0]], net[names[-1]]
        got = 0
        want = 200
        reached = trio.Event()

        async def sink() -> None:
            nonlocal got
            while True:
                await last.receive()
                got += 1
                if got >= want:
                    reached.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink)
            if tree:  # the first node learns the last one's coordinates: tree routing
                with trio.fail_after(30):
                    await last.send(first.public_key, b"hello")
                    await first.receive()
            payload = b"x" * size
            for _ in range(want):  # warm up
                await first.send(last.public_key, payload)
            with trio.fail_after(60):
                await reached.wait()
            got = 0
            want = count
            reached = trio.Event()
            cpu = time.process_time()
            for _ in range(count):
                await first.send(last.public_key, payload)
            with trio.move_on_after(30):  # a relay may drop (by design): do not wait forever
                await reached.wait()
            cpu = time.process_time() - cpu
            nursery.cancel_scope.cancel()
    return {"nodes": nodes, "sent": count, "delivered": got, "cpu_s": cpu}


# ------------------------------------------------------------------------ orchestrator


#: The source tree whose `pinecone_trio` the workers import (`--code`; A/B runs).
CODE = {"root": ROOT}


class Worker:
    def __init__(self, connect: Sequence[str]) -> None:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker"]
        for uri in connect:
            cmd += ["--connect", uri]
        path = CODE["root"] + os.pathsep + os.environ.get("PYTHONPATH", "")
        env = dict(os.environ, PYTHONPATH=path)
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        ready = self.read("ready")
        self.key: str = ready["key"]
        self.uri: str = ready["uri"]

    def read(self, event: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited waiting for {event}")
            msg: dict[str, Any] = json.loads(line)
            if msg.get("event") == event:
                return msg

    def ask(self, event: str, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read(event)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def converged(workers: list[Worker], timeout: float = 60.0) -> float:
    """Wait until all agree on the root and each has its true descending neighbour."""
    start = time.monotonic()
    keys = sorted(w.key for w in workers)
    want = {keys[i]: (keys[i - 1] if i else None) for i in range(len(keys))}
    while time.monotonic() - start < timeout:
        states = [w.ask("status", op="status") for w in workers]
        if all(s["root"] == keys[-1] for s in states) and all(
            s["desc"] == want[w.key] for s, w in zip(states, workers, strict=True)
        ):
            return time.monotonic() - start
        time.sleep(0.25)
    raise RuntimeError("network did not converge")


def line(hops: int) -> list[Worker]:
    workers = [Worker([])]
    for _ in range(hops):
        workers.append(Worker([workers[-1].uri]))
    return workers


def bench_hops(hops: int, seconds: float, rtt_count: int) -> dict[str, Any]:
    workers = line(hops)
    try:
        converged(workers)
        first, last = workers[0], workers[-1]
        rtts = first.ask("rtt", op="rtt", key=last.key, count=rtt_count, size=1024)["times"]
        first.ask("rtt", op="rtt", key=last.key, count=5, size=1024)
        last.ask("sink", op="sink")  # reset
        cpu0 = [w.cpu_seconds() for w in workers]
        frames0 = [w.ask("frames", op="frames") for w in workers]
        blast = first.ask("blasted", op="blast", key=last.key, seconds=seconds, size=1024)
        time.sleep(0.5)
        sink = last.ask("sink", op="sink")
        cpu = [w.cpu_seconds() - c for w, c in zip(workers, cpu0, strict=True)]
        frames = [
            w.ask("frames", op="frames")["frames_in"] - f["frames_in"]
            for w, f in zip(workers, frames0, strict=True)
        ]
        span = max(sink["last"] - sink["first"], 1e-9)
        rtts.sort()
        relay_us = [1e6 * c / max(n, 1) for c, n in zip(cpu[1:-1], frames[1:-1], strict=True)]
        return {
            "hops": hops,
            "sent": blast["sent"],
            "sent_per_s": blast["sent"] / blast["seconds"],
            "delivered": sink["n"],
            "delivered_per_s": sink["n"] / span,
            "loss": 1 - sink["n"] / max(blast["sent"], 1),
            "rtt_median_ms": 1000 * statistics.median(rtts) if rtts else None,
            "rtt_p95_ms": 1000 * rtts[int(0.95 * (len(rtts) - 1))] if rtts else None,
            "rtt_median_per_hop_ms": 1000 * statistics.median(rtts) / hops if rtts else None,
            # CPU of each relay per frame it received, during the blast (+ 0.5 s drain)
            "relay_cpu_us_per_frame": relay_us,
            "relay_cpu_us_per_frame_mean": statistics.mean(relay_us) if relay_us else None,
            "sender_cpu_us_per_datagram": 1e6 * cpu[0] / max(blast["sent"], 1),
            "sink_cpu_us_per_datagram": 1e6 * cpu[-1] / max(sink["n"], 1),
        }
    finally:
        for w in workers:
            w.stop()


def cpu_line(nodes: int, count: int, tree: bool) -> dict[str, Any]:
    """Run `_cpu_line` in a fresh process importing pinecone_trio from `CODE`."""
    cmd = [sys.executable, os.path.abspath(__file__), "--cpu-line", str(nodes)]
    cmd += ["--count", str(count)] + (["--tree"] if tree else [])
    path = CODE["root"] + os.pathsep + os.environ.get("PYTHONPATH", "")
    out = subprocess.run(
        cmd, env=dict(os.environ, PYTHONPATH=path), capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def bench_inprocess(count: int, rounds: int) -> dict[str, Any]:
    """CPU per datagram per relay hop, in one process over memory links.

    A line of 2 nodes (sender and receiver) and one of 4 (two relays) move the same
    number of 1 KiB datagrams; half the difference of their CPU per datagram is one
    relay hop (decode, route, queue, encode, link crypto, the tasks around them).
    Median of `rounds` interleaved pairs, for snake-routed and tree-routed traffic.
    """
    out: dict[str, Any] = {"count": count, "rounds": rounds}
    for routing in ("snake", "tree"):
        per_hop = []
        ends = []
        for _ in range(rounds):
            two = cpu_line(2, count, routing == "tree")
            four = cpu_line(4, count, routing == "tree")
            us2 = 1e6 * two["cpu_s"] / max(two["delivered"], 1)
            us4 = 1e6 * four["cpu_s"] / max(four["delivered"], 1)
            ends.append(us2)
            per_hop.append((us4 - us2) / 2)
        out[routing] = {
            "relay_cpu_us_per_hop": statistics.median(per_hop),
            "relay_cpu_us_per_hop_all": per_hop,
            "ends_cpu_us_per_datagram": statistics.median(ends),
        }
    return out


def bench_idle_and_join(nodes: int, window: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    workers: list[Worker] = []
    try:
        for i in range(nodes):
            targets = [] if i == 0 else [workers[rng.randrange(i)].uri]
            if i > 2 and rng.random() < 0.3:
                other = workers[rng.randrange(i)].uri
                if other not in targets:
                    targets.append(other)
            workers.append(Worker(targets))
        converge_s = converged(workers, timeout=120)
        time.sleep(2.0)
        before = [w.cpu_seconds() for w in workers]
        time.sleep(window)
        after = [w.cpu_seconds() for w in workers]
        idle = [(b - a) / window for a, b in zip(before, after, strict=True)]
        joiner = Worker([workers[rng.randrange(nodes)].uri])
        workers.append(joiner)
        reach = joiner.ask(
            "reached", op="wait_reach", keys=[w.key for w in workers[:-1]], timeout=30
        )
        return {
            "nodes": nodes,
            "converge_s": converge_s,
            "idle_cpu_per_node_mean": statistics.mean(idle),
            "idle_cpu_per_node_max": max(idle),
            "join_reach_all_s": reach["seconds"],
            "join_missing": reach["missing"],
        }
    finally:
        for w in workers:
            w.stop()


def _join_only(args: argparse.Namespace) -> int:
    """The idle network and cold join alone, for several seeds (topology and joiner's
    attachment point; keys are random each run), with the load average around each."""
    nodes, window = (10, 5.0) if args.quick else (20, 20.0)
    runs = []
    for seed in range(1, max(1, args.seeds) + 1):
        load = os.getloadavg()
        run = bench_idle_and_join(nodes, window, seed=seed)
        run.update(seed=seed, load_before=load, load_after=os.getloadavg())
        runs.append(run)
        if not args.json:
            print(
                f"seed {seed}: joiner reached all {nodes} in {run['join_reach_all_s']:.3f} s "
                f"({run['join_missing']} missing); network converged in "
                f"{run['converge_s']:.1f} s; idle CPU/node {run['idle_cpu_per_node_mean']:.2%}; "
                f"load {load[0]:.1f} -> {run['load_after'][0]:.1f}",
                flush=True,
            )
    worst = max(r["join_reach_all_s"] + (1e9 if r["join_missing"] else 0.0) for r in runs)
    idle = max(r["idle_cpu_per_node_mean"] for r in runs)
    result = {
        "benchmark": "overlay-join",
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "code": CODE["root"],
        "runs": runs,
        "targets": {"idle_cpu_per_node": 0.01, "join_reach_all_s": 3.0},
        "ratios": {
            "join_worst_vs_target": 3.0 / max(worst, 1e-9),
            "idle_cpu_worst_vs_target": 0.01 / max(idle, 1e-9),
        },
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print("ratios:", json.dumps(result["ratios"]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--connect", action="append", default=[], help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="a small, fast run")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--hops", type=int, action="append", help="hop counts to measure (repeatable)")
    p.add_argument("--seconds", type=float, help="length of each throughput blast")
    p.add_argument(
        "--inprocess-only",
        action="store_true",
        help="only the in-process CPU per relay hop (memory links, no sockets)",
    )
    p.add_argument("--rounds", type=int, default=3, help="in-process A/B rounds (median)")
    p.add_argument("--no-inprocess", action="store_true", help="skip the in-process CPU test")
    p.add_argument("--cpu-line", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=20000, help=argparse.SUPPRESS)
    p.add_argument("--tree", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--no-network", action="store_true", help="skip the idle 20-node and cold-join test"
    )
    p.add_argument(
        "--join-only",
        action="store_true",
        help="only the idle 20-node network and cold join, once per seed (see --seeds)",
    )
    p.add_argument(
        "--seeds", type=int, default=1, help="with --join-only: run seeds 1..N (default 1)"
    )
    p.add_argument(
        "--code",
        default=ROOT,
        help="source tree the node processes import pinecone_trio from (A/B runs)",
    )
    args = p.parse_args(argv)
    if args.worker:
        import trio

        trio.run(_worker, args)
        return 0
    if args.cpu_line:
        import trio

        print(json.dumps(trio.run(_cpu_line, args.cpu_line, args.count, 1024, args.tree)))
        return 0
    CODE["root"] = os.path.abspath(args.code)
    if args.join_only:
        return _join_only(args)
    count = 5000 if args.quick else 20000
    inprocess = (
        None if args.no_inprocess else bench_inprocess(count, 1 if args.quick else args.rounds)
    )
    if args.inprocess_only:
        print(json.dumps({"load_average": os.getloadavg(), "inprocess": inprocess}, indent=1))
        return 0
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    rtt_count = 50 if args.quick else 300
    hop_counts = args.hops or ([1, 3] if args.quick else [1, 3, 6])
    hops = [bench_hops(h, seconds, rtt_count) for h in hop_counts]
    idle = (
        None
        if args.no_network
        else bench_idle_and_join(10 if args.quick else 20, 5.0 if args.quick else 20.0, seed=1)
    )
    three = next((h for h in hops if h["hops"] == 3), hops[-1])
    ratios = {
        "datagrams_3hop_vs_target": three["delivered_per_s"] / 20000,
        "rtt_per_hop_vs_target": 2.0 / three["rtt_median_per_hop_ms"]
        if three["rtt_median_per_hop_ms"]
        else 0.0,
    }
    if idle is not None:
        ratios["idle_cpu_vs_target"] = 0.01 / max(idle["idle_cpu_per_node_mean"], 1e-9)
        ratios["join_vs_target"] = 3.0 / max(idle["join_reach_all_s"], 1e-9)
    result = {
        "benchmark": "overlay",
        "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
        "load_average": os.getloadavg(),
        "code": CODE["root"],
        "hops": hops,
        "inprocess": inprocess,
        "network": idle,
        "targets": {
            "datagrams_3hop_per_s": 20000,
            "rtt_per_hop_ms": 2.0,
            "idle_cpu_per_node": 0.01,
            "join_reach_all_s": 3.0,
        },
        "ratios": ratios,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(
        f"{'hops':>4} {'sent/s':>10} {'delivered/s':>12} {'loss':>6} "
        f"{'rtt p50 ms':>10} {'rtt p95 ms':>10} {'p50/hop':>8} {'relay us/frame':>14}"
    )
    for h in hops:
        relay = h["relay_cpu_us_per_frame_mean"]
        print(
            f"{h['hops']:>4} {h['sent_per_s']:>10.0f} {h['delivered_per_s']:>12.0f} "
            f"{h['loss']:>6.1%} {h['rtt_median_ms']:>10.2f} {h['rtt_p95_ms']:>10.2f} "
            f"{h['rtt_median_per_hop_ms']:>8.2f} "
            f"{'-' if relay is None else format(relay, '.1f'):>14}"
        )
    n = idle
    if n is not None:
        print(
            f"\n{n['nodes']} nodes: converged in {n['converge_s']:.1f} s; idle CPU per node "
            f"mean {n['idle_cpu_per_node_mean']:.2%}, max {n['idle_cpu_per_node_max']:.2%}; "
            f"a cold joiner reached all in {n['join_reach_all_s']:.2f} s "
            f"({n['join_missing']} missing)"
        )
    for routing in ("snake", "tree"):
        if inprocess is None:
            break
        r = inprocess[routing]
        print(
            f"in-process, {routing}-routed: {r['relay_cpu_us_per_hop']:.1f} us CPU per relay hop"
            f" (ends {r['ends_cpu_us_per_datagram']:.1f} us per datagram)"
        )
    print("ratios:", json.dumps(result["ratios"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
