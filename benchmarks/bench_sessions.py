"""Session benchmark: end-to-end streams over real nodes, against a raw Noise link and
py-libp2p, measured in the same run.

Every node is a separate process (this script re-run with `--worker node`), peered over
Noise-XX TCP links on 127.0.0.1 in a line. The orchestrator talks to workers through
their stdin/stdout as JSON lines.

    python benchmarks/bench_sessions.py            # full run (a few minutes)
    python benchmarks/bench_sessions.py --quick    # a small run
    python benchmarks/bench_sessions.py --json     # one JSON object with `ratios`

Measured:
- link: one raw Noise link over one TCP hop (`connect_link` / `serve_links`), two
  processes, 64 KiB writes: the denominator (every session byte is encrypted twice,
  by the session and by each link, so 0.5 of it is the ceiling for one hop).
- session 1 hop / 3 hops: one session stream between the ends of a line of 2 / 4 node
  processes, 64 KiB writes, clock from the first write to the sink's answer.
- setup, as py-libp2p's `connect` benchmark measures it: medians of 20 sequential
  rounds, each a fresh session closed again afterwards (`close_session`, libp2p's
  `disconnect`): the handshake alone (`wait_session`), and `connect` + 1-byte echo;
  at 1 hop and 3 hops, and with three sessions set up at once (rates per second);
  then stream open + echo on a warm 3-hop session.
- concurrent streams: N streams opened at once on one session (1 hop), a 1 KiB echo on
  each; errors counted.
- loss: one session stream over the in-memory overlay (one process, no links) lossless
  and with 1 % of packets dropped.
- py-libp2p 0.8.1 (TCP + Noise + yamux) one-stream throughput between two processes,
  `host.connect` time and connect + new_stream + 1 KiB echo (max_connections_per_peer=1,
  medians of 20 sequential connects), by running the anchor script
  `../shared/anchors/py/bench_libp2p.py` with a Python that has `libp2p` installed
  (`--libp2p-python`, default: /tmp/libp2p-venv/bin/python if present).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ANCHORS = os.path.normpath(os.path.join(ROOT, "..", "shared", "anchors", "py"))
CHUNK = 64 * 1024
SINK = "/bench/sink/1"
ECHO = "/bench/echo/1"


# ----------------------------------------------------------------------------- workers


def _emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


async def _node_worker(args: argparse.Namespace) -> None:
    import trio

    from pinecone_trio import Identity, PublicKey
    from pinecone_trio.node import open_node
    from pinecone_trio.sessions import SessionStream

    async def sink(stream: SessionStream) -> None:
        total = 0
        async with stream:
            while data := await stream.receive_some(1 << 20):
                total += len(data)
            await stream.send_all(total.to_bytes(8, "big"))

    async def echo(stream: SessionStream) -> None:
        try:
            async with stream:
                while data := await stream.receive_some():
                    await stream.send_all(data)
        except trio.BrokenResourceError:
            pass  # the dialler closed the whole session (the `setup` measurement)

    async def serve(listener: Any, handler: Any) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                nursery.start_soon(handler, await listener.accept())

    async def pinger(node: Any) -> None:
        while True:
            dg = await node.receive()
            if dg.payload[:1] == b"P":
                await node.send(dg.source_key, b"R")

    async with (
        open_node(Identity.generate(), listen=["tcp://127.0.0.1:0"]) as node,
        node.listen(SINK) as sinks,
        node.listen(ECHO) as echoes,
        trio.open_nursery() as nursery,
    ):
        for uri in args.connect:
            await node.connect(uri)
        nursery.start_soon(serve, sinks, sink)
        nursery.start_soon(serve, echoes, echo)
        nursery.start_soon(pinger, node)
        _emit(event="ready", key=node.public_key.hex(), uri=node.listen_uris[0])
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buf = b""
        while True:
            data = await stdin.receive_some(65536)
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                cmd = json.loads(line)
                op = cmd["op"]
                key = PublicKey.from_hex(cmd["key"]) if "key" in cmd else None
                if op == "reach":
                    # raw datagram pings until the far key answers: routes exist
                    assert key is not None
                    start = time.perf_counter()
                    with trio.move_on_after(cmd["timeout"]):
                        while True:
                            await node.send(key, b"P")
                            with trio.move_on_after(0.05):
                                while (await node.receive()).payload[:1] != b"R":
                                    pass
                                break
                    _emit(event="reached", seconds=time.perf_counter() - start)
                elif op == "send":
                    assert key is not None
                    block = b"\x5a" * CHUNK
                    total = cmd["bytes"]
                    stream = await node.connect(key, SINK)
                    start = time.perf_counter()
                    cpu = time.process_time()
                    for _ in range(total // CHUNK):
                        await stream.send_all(block)
                    await stream.send_eof()
                    answer = b""
                    while len(answer) < 8:
                        more = await stream.receive_some(8 - len(answer))
                        if not more:
                            break
                        answer += more
                    seconds = time.perf_counter() - start
                    await stream.aclose()
                    _emit(
                        event="sent",
                        seconds=seconds,
                        cpu=time.process_time() - cpu,
                        received=int.from_bytes(answer, "big"),
                        stats=node.sessions.statistics(),
                    )
                elif op == "first_byte":
                    assert key is not None
                    times = []
                    for _ in range(cmd["n"]):
                        start = time.perf_counter()
                        stream = await node.connect(key, ECHO)
                        await stream.send_all(b"!")
                        await stream.receive_some(1)
                        times.append(time.perf_counter() - start)
                        await stream.aclose()
                    _emit(event="first_byte", times=times)
                elif op == "setup":
                    _emit(event="setup", **(await _setup(node, cmd["keys"], cmd["n"])))
                elif op == "streams":
                    assert key is not None
                    _emit(event="streams", **(await _many_streams(node, key, cmd["n"])))
                elif op == "cpu":
                    _emit(event="cpu", cpu=time.process_time())
                elif op == "quit":
                    nursery.cancel_scope.cancel()
                    return
        nursery.cancel_scope.cancel()


async def _setup(node: Any, keys: list[str], n: int) -> dict[str, Any]:
    """Cold sessions, as py-libp2p's `connect` benchmark does them: rounds of a fresh
    session, closed again (`close_session`, like libp2p's `disconnect`) before the
    next round. With one key the rounds are sequential; with several, each round sets
    up a session to every key at once (several handshakes in flight).

    `n` rounds of `wait_session` (the handshake alone: libp2p's `host.connect`), then
    `n` rounds of `connect` + 1-byte echo (handshake, stream open riding on the last
    handshake message, echo: libp2p's connect + new_stream + echo)."""
    import trio

    from pinecone_trio import PublicKey

    targets = [PublicKey.from_hex(k) for k in keys]
    out: dict[str, Any] = {}

    async def handshake(key: Any, start: float, times: list[float]) -> None:
        await node.sessions.wait_session(key)
        times.append(time.perf_counter() - start)

    async def echo(key: Any, start: float, times: list[float]) -> None:
        stream = await node.connect(key, ECHO)
        await stream.send_all(b"!")
        await stream.receive_some(1)
        times.append(time.perf_counter() - start)
        await stream.aclose()

    for name, job in (("handshake", handshake), ("first_byte", echo)):
        times: list[float] = []
        rounds: list[float] = []
        cpu = time.process_time()
        for _ in range(n):
            start = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for key in targets:
                    nursery.start_soon(job, key, start, times)
            rounds.append(time.perf_counter() - start)
            for key in targets:
                await node.sessions.close_session(key, "benchmark round over")
            await trio.sleep(0.02)  # not timed: the CLOSE reaches the peers
        out[name] = times
        out[name + "_per_s"] = len(targets) * n / sum(rounds)
        out[name + "_cpu"] = time.process_time() - cpu  # includes the idle waits' wakeups
    return out


async def _many_streams(node: Any, key: Any, n: int) -> dict[str, Any]:
    """Open `n` streams to `key` at once, then a 1 KiB echo on each."""
    import trio

    errors: list[str] = []
    streams: list[Any] = []
    ok = 0
    start = time.perf_counter()

    async def opening() -> None:
        try:
            streams.append(await node.connect(key, ECHO))
        except Exception as exc:
            errors.append(repr(exc))

    async def one(stream: Any) -> None:
        nonlocal ok
        try:
            payload = b"e" * 1024
            await stream.send_all(payload)
            got = b""
            while len(got) < len(payload):
                got += await stream.receive_some()
            ok += got == payload
            await stream.aclose()
        except Exception as exc:
            errors.append(repr(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(opening)
    opened = time.perf_counter() - start
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(one, stream)
    return {
        "ok": ok,
        "errors": errors[:5],
        "n_errors": len(errors),
        "open_seconds": opened,
        "seconds": time.perf_counter() - start,
    }


async def _link_server(total: int) -> None:
    import trio

    from pinecone_trio import Identity
    from pinecone_trio.link import serve_links

    async def handler(link: Any) -> None:
        got = 0
        cpu = time.process_time()
        while got < total:
            data = await link.receive_some(1 << 20)
            if not data:
                break
            got += len(data)
        await link.send_all(b"ok")
        _emit(event="done", cpu=time.process_time() - cpu)
        done.set()

    done = trio.Event()
    async with trio.open_nursery() as nursery:
        uri = await nursery.start(serve_links, "tcp://127.0.0.1:0", Identity.generate(), handler)
        _emit(event="ready", uri=uri)
        await done.wait()
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()


async def _link_client(uri: str, total: int) -> None:
    from pinecone_trio import Identity
    from pinecone_trio.link import connect_link

    link = await connect_link(uri, Identity.generate())
    block = b"\x5a" * CHUNK
    start = time.perf_counter()
    cpu = time.process_time()
    async with link:
        for _ in range(total // CHUNK):
            await link.send_all(block)
        await link.receive_some(2)
    _emit(event="sent", seconds=time.perf_counter() - start, cpu=time.process_time() - cpu)


# ----------------------------------------------------------------------------- orchestration


class Worker:
    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.ready = self.read("ready")

    def read(self, event: str, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker exited while waiting for {event}")
            msg: dict[str, Any] = json.loads(line)
            if msg.get("event") == event:
                return msg
        raise TimeoutError(event)

    def ask(self, event: str, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.read(event)

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.proc.kill()
            self.proc.wait()


def line(nodes: int) -> list[Worker]:
    workers: list[Worker] = []
    for i in range(nodes):
        argv = ["--worker", "node"]
        if i:
            argv += ["--connect", workers[-1].ready["uri"]]
        workers.append(Worker(argv))
    reached = workers[0].ask("reached", op="reach", key=workers[-1].ready["key"], timeout=60)
    workers[-1].ask("reached", op="reach", key=workers[0].ready["key"], timeout=60)
    if reached["seconds"] >= 60:
        raise RuntimeError("the line never converged")
    return workers


def link_throughput(total: int) -> tuple[float, float]:
    """(MB/s, MB per CPU-second of both processes) of one raw Noise link."""
    server = Worker(["--worker", "link-server", "--bytes", str(total)])
    try:
        client = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                "link-client",
                "--bytes",
                str(total),
                "--uri",
                server.ready["uri"],
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
            check=True,
        )
        server_cpu = float(server.read("done")["cpu"])
    finally:
        server.close()
    result = json.loads(client.stdout.strip().splitlines()[-1])
    cpu = float(result["cpu"]) + server_cpu
    return total / result["seconds"] / 1e6, total / cpu / 1e6


def session_throughput(workers: list[Worker], total: int) -> tuple[float, float, dict[str, Any]]:
    """(MB/s, MB per CPU-second of all node processes, details) of one session stream."""
    before = [w.ask("cpu", op="cpu")["cpu"] for w in workers]
    result = workers[0].ask("sent", op="send", key=workers[-1].ready["key"], bytes=total)
    after = [w.ask("cpu", op="cpu")["cpu"] for w in workers]
    if result["received"] != total // CHUNK * CHUNK:
        raise RuntimeError(f"sink got {result['received']} of {total} bytes")
    cpu = sum(a - b for a, b in zip(after, before, strict=True))
    return total / result["seconds"] / 1e6, total / cpu / 1e6, result


def memory_loss_throughput(total: int, loss: float) -> tuple[float, float]:
    """(MB/s, MB per CPU-second) of one stream over the in-memory overlay."""
    import trio

    from pinecone_trio import Identity
    from pinecone_trio.sessions import SessionManager
    from pinecone_trio.sessions.testing import PathModel, open_memory_overlay

    async def run() -> tuple[float, float]:
        model = PathModel(loss=loss, delay=(0.0, 0.0))
        async with open_memory_overlay(model, seed=1) as overlay, trio.open_nursery() as nursery:
            ia, ib = Identity.generate(), Identity.generate()
            a = SessionManager(overlay.endpoint(ia.public_key), ia)
            b = SessionManager(overlay.endpoint(ib.public_key), ib)
            await nursery.start(a.run)
            await nursery.start(b.run)
            async with b.listen(SINK) as listener:
                client = await a.connect(ib.public_key, SINK)
                server = await listener.accept()
            block = b"\x5a" * CHUNK
            start = time.perf_counter()
            cpu = time.process_time()

            async def send() -> None:
                for _ in range(total // CHUNK):
                    await client.send_all(block)
                await client.send_eof()

            got = 0
            async with trio.open_nursery() as inner:
                inner.start_soon(send)
                while data := await server.receive_some(1 << 20):
                    got += len(data)
            seconds = time.perf_counter() - start
            cpu = time.process_time() - cpu
            nursery.cancel_scope.cancel()
        return got / seconds / 1e6, got / cpu / 1e6

    return trio.run(run)


def libp2p(python: str | None, total_mib: int) -> dict[str, Any]:
    if python is None or not os.path.exists(os.path.join(ANCHORS, "bench_libp2p.py")):
        return {"available": False, "why": "no Python with libp2p (see --libp2p-python)"}
    env = dict(os.environ, BENCH_RUNS="1", BENCH_QUIET_WAIT="0")
    out: dict[str, Any] = {"available": True}
    commands = {
        "throughput_mb_s": ["throughput", "--where", "proc", "--total-mib", str(total_mib)],
        "connect_ms": ["connect", "--n", "20", "--mcpp", "1"],
    }
    for name, argv in commands.items():
        try:
            proc = subprocess.run(
                [python, "bench_libp2p.py", *argv],
                cwd=ANCHORS,
                capture_output=True,
                text=True,
                timeout=900,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            out[name] = None
            out[name + "_error"] = repr(exc)
            continue
        values = [
            float(line.split("|")[2].strip().replace(",", ""))
            for line in proc.stdout.splitlines()
            if line.startswith("RESULT |")
        ]
        out[name] = values[0] if values else None
        if name == "connect_ms":
            # The anchor's second figure: connect + new_stream + 1 KiB echo.
            out["connect_echo_ms"] = values[1] if len(values) > 1 else None
        if not values:
            out[name + "_error"] = proc.stderr[-500:]
    return out


def _default_libp2p_python() -> str | None:
    env = os.environ.get("BENCH_LIBP2P_PYTHON")
    if env:
        return env
    for candidate in ("/tmp/libp2p-venv/bin/python", os.path.join(ANCHORS, ".venv/bin/python")):
        if os.path.exists(candidate):
            return candidate
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=None, help="repetitions (median)")
    parser.add_argument("--libp2p-python", default=_default_libp2p_python())
    parser.add_argument("--no-libp2p", action="store_true")
    parser.add_argument("--worker", choices=["node", "link-server", "link-client"])
    parser.add_argument("--connect", action="append", default=[])
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--uri", default="")
    args = parser.parse_args(argv)

    if args.worker is not None:
        import trio

        if args.worker == "node":
            profile_dir = os.environ.get("BENCH_PROFILE")
            if profile_dir:
                # BENCH_PROFILE=dir: each node process writes a cProfile dump there.
                import cProfile

                profiler = cProfile.Profile()
                profiler.runcall(trio.run, _node_worker, args)
                profiler.dump_stats(os.path.join(profile_dir, f"node-{os.getpid()}.prof"))
            else:
                trio.run(_node_worker, args)
        elif args.worker == "link-server":
            trio.run(_link_server, args.bytes)
        else:
            trio.run(_link_client, args.uri, args.bytes)
        return 0

    total = (32 if args.quick else 256) * 1024 * 1024
    runs = args.runs or (1 if args.quick else 3)
    streams_n = 200 if args.quick else 1_000
    results: dict[str, Any] = {"total_mib": total // (1024 * 1024), "runs": runs}

    def log(message: str) -> None:
        if not args.json:
            print(message, flush=True)

    link, one, three = [], [], []
    link_cpu, one_cpu, three_cpu = [], [], []
    pair = line(2)
    quad = line(4)
    try:
        # Cold setups as libp2p measures `connect`: sequential rounds, each a new
        # session closed again afterwards; medians. Then several in flight at once.
        n_setup = 10 if args.quick else 20
        far = [quad[-1].ready["key"]]
        one_hop = pair[0].ask("setup", op="setup", keys=[pair[-1].ready["key"]], n=n_setup)
        three_hop = quad[0].ask("setup", op="setup", keys=far, n=n_setup)
        others = [w.ready["key"] for w in quad[1:]]
        spread = quad[0].ask("setup", op="setup", keys=others, n=n_setup)
        warm = quad[0].ask("first_byte", op="first_byte", key=quad[-1].ready["key"], n=20)

        def ms(values: list[float]) -> float:
            return statistics.median(values) * 1e3

        results["setup"] = {
            "rounds": n_setup,
            "handshake_1hop_ms": ms(one_hop["handshake"]),
            "first_byte_1hop_ms": ms(one_hop["first_byte"]),
            "handshake_3hop_ms": ms(three_hop["handshake"]),
            "first_byte_3hop_ms": ms(three_hop["first_byte"]),
            "sequential_handshakes_per_s_1hop": one_hop["handshake_per_s"],
            "in_flight": len(quad) - 1,
            "in_flight_handshakes_per_s": spread["handshake_per_s"],
            "in_flight_first_bytes_per_s": spread["first_byte_per_s"],
        }
        results["connect_first_byte_3hop_cold_ms"] = ms(three_hop["first_byte"])
        results["connect_first_byte_3hop_warm_ms"] = ms(warm["times"])
        results["connect_first_byte_1hop_cold_ms"] = ms(one_hop["first_byte"])
        log(
            f"cold setup, median of {n_setup} sequential: 1 hop handshake"
            f" {ms(one_hop['handshake']):.2f} ms, connect->first byte"
            f" {ms(one_hop['first_byte']):.2f} ms; 3 hops {ms(three_hop['handshake']):.2f} /"
            f" {ms(three_hop['first_byte']):.2f} ms; warm 3-hop stream"
            f" {ms(warm['times']):.2f} ms; {len(quad) - 1} in flight:"
            f" {spread['handshake_per_s']:.0f} handshakes/s,"
            f" {spread['first_byte_per_s']:.0f} connect+echo/s"
        )
        for i in range(runs):
            # Interleaved, so a busy moment on the shared machine hits all three alike.
            lk, lk_cpu = link_throughput(total)
            link.append(lk)
            link_cpu.append(lk_cpu)
            s1, c1, r1 = session_throughput(pair, total)
            one.append(s1)
            one_cpu.append(c1)
            s3, c3, _ = session_throughput(quad, total)
            three.append(s3)
            three_cpu.append(c3)
            log(
                f"run {i + 1}: link {lk:.0f} MB/s ({lk_cpu:.0f} MB/cpu-s), session 1 hop"
                f" {s1:.0f} MB/s ({c1:.0f} MB/cpu-s), 3 hops {s3:.0f} MB/s ({c3:.0f} MB/cpu-s)"
                f" (session stats: lost {r1['stats'].get('packets_lost')},"
                f" retransmitted {r1['stats'].get('bytes_retransmitted')} B)"
            )
        conc = pair[0].ask("streams", op="streams", key=pair[-1].ready["key"], n=streams_n)
        results["concurrent_streams"] = {
            k: conc[k] for k in ("ok", "n_errors", "errors", "seconds")
        }
        results["concurrent_streams"]["n"] = streams_n
        log(
            f"{streams_n} concurrent streams: {conc['ok']} ok, {conc['n_errors']} errors,"
            f" {conc['seconds']:.2f} s"
        )
    finally:
        for w in pair + quad:
            w.close()
    results["link_mb_s"] = statistics.median(link)
    results["session_1hop_mb_s"] = statistics.median(one)
    results["session_3hop_mb_s"] = statistics.median(three)
    results["link_mb_per_cpu_s"] = statistics.median(link_cpu)
    results["session_1hop_mb_per_cpu_s"] = statistics.median(one_cpu)
    results["session_3hop_mb_per_cpu_s"] = statistics.median(three_cpu)
    # Interleaved pairs, at least three: a short transfer on a shared machine is noisy.
    loss_total = max(total // 4, 32 * 1024 * 1024)
    pairs = [
        (memory_loss_throughput(loss_total, 0.0), memory_loss_throughput(loss_total, 0.01))
        for _ in range(max(runs, 3))
    ]
    lossless = statistics.median(p[0][0] for p in pairs)
    lossy = statistics.median(p[1][0] for p in pairs)
    # Per CPU-second too: a loaded machine moves the wall-clock ratio a lot; a stall
    # in loss recovery would show as wall time without CPU time.
    lossless_cpu = statistics.median(p[0][1] for p in pairs)
    lossy_cpu = statistics.median(p[1][1] for p in pairs)
    results["memory_lossless_mb_per_cpu_s"] = lossless_cpu
    results["memory_loss1_mb_per_cpu_s"] = lossy_cpu
    results["memory_lossless_mb_s"] = lossless
    results["memory_loss1_mb_s"] = lossy
    log(f"in-memory overlay: lossless {lossless:.0f} MB/s, 1% loss {lossy:.0f} MB/s")
    if args.no_libp2p:
        lp: dict[str, Any] = {"available": False, "why": "--no-libp2p"}
    else:
        lp = libp2p(args.libp2p_python, max(16, total // (4 * 1024 * 1024)))
    results["libp2p"] = lp
    log(f"py-libp2p: {lp}")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    lp_tput = lp.get("throughput_mb_s")
    lp_connect = lp.get("connect_ms")
    results["ratios"] = {
        "session_1hop_vs_link": ratio(results["session_1hop_mb_s"], results["link_mb_s"]),
        "session_3hop_vs_link": ratio(results["session_3hop_mb_s"], results["link_mb_s"]),
        "session_1hop_vs_libp2p": ratio(results["session_1hop_mb_s"], lp_tput),
        # libp2p's host.connect (TCP + Noise + muxer) against our handshake alone over
        # an existing link; both medians of sequential fresh connections, 1 hop.
        "session_setup_vs_libp2p_connect": ratio(lp_connect, results["setup"]["handshake_1hop_ms"]),
        # libp2p connect + new_stream + 1 KiB echo against our connect + 1-byte echo.
        "session_first_byte_vs_libp2p_connect_echo": ratio(
            lp.get("connect_echo_ms"), results["connect_first_byte_1hop_cold_ms"]
        ),
        "loss1_vs_lossless": ratio(lossy, lossless),
        "loss1_vs_lossless_cpu": ratio(lossy_cpu, lossless_cpu),
        # Load-independent: bytes per CPU-second of every process involved.
        "session_1hop_vs_link_cpu": ratio(
            results["session_1hop_mb_per_cpu_s"], results["link_mb_per_cpu_s"]
        ),
        "session_3hop_vs_link_cpu": ratio(
            results["session_3hop_mb_per_cpu_s"], results["link_mb_per_cpu_s"]
        ),
    }
    if args.json:
        print(json.dumps(results))
    else:
        print(json.dumps(results["ratios"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
