"""Link benchmark: Noise over TCP and WebSocket against their plain baselines.

In one run, between two processes on 127.0.0.1 (a forked server process receives, the
main process sends; client -> server direction, so WebSocket frames are masked):

* plain trio TCP, Noise over TCP (and the same link on its generic, non-fast path, for
  an A/B), plain trio-websocket, Noise over WebSocket, each with
  64 KiB and 1 KiB application writes (`--total-mib`, 256 MiB by default; the 1 KiB
  runs move a tenth of that, since they are bound by Trio's per-call cost);
* the single-core ChaCha20-Poly1305 encryption rate of `cryptography` on 64 KiB
  messages (65,519 bytes, the most one Noise message carries): the physical limit of an
  encrypted link on one core;
* for every throughput, also the *CPU-limited* rate: bytes divided by the CPU time of
  the busier side (`*_cpu_mbps`, ratios `cpu_*`). On a shared machine the wall clock
  mostly measures other processes' load; CPU time says what the link costs.
* complete dial + Noise XX handshake + close cycles per second over loopback TCP,
  sequential and with `--concurrency` dialers in flight.

Each throughput figure is the median of `--runs` runs. Both baselines read with the same
receive size as the links (256 KiB; trio-websocket's `receive_buffer_size` likewise).

Usage:  python benchmarks/bench_link.py [--quick] [--json] [--runs N] [--total-mib N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from typing import Any

import trio
import trio_websocket
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from pinecone_trio import transports
from pinecone_trio.identity import Identity
from pinecone_trio.link import MAX_PLAINTEXT_SIZE, NoiseLink, connect_link, serve_links
from pinecone_trio.testing import PassThroughStream
from pinecone_trio.transports.websocket import WS_RECEIVE_BUFFER_SIZE

MiB = 1024 * 1024
RECEIVE_SIZE = 256 * 1024
WS_MAX_MESSAGE = 16 * MiB
SERVER_ID = Identity.from_seed(b"S" * 32)
CLIENT_ID = Identity.from_seed(b"C" * 32)
ACK = b"k"
#: "noise_tcp_generic" is a NoiseLink over the same TCP socket hidden behind a
#: pass-through stream, so it takes the generic path (transport `send_all` /
#: `receive_some`) instead of the socket fast path: the A/B of that fast path.
MODES = ("tcp", "noise_tcp", "noise_tcp_generic", "ws", "noise_ws")


# --------------------------------------------------------------------------- servers


async def _drain_stream(stream: trio.abc.Stream, total: int, cpu: list[float]) -> None:
    got = 0
    while got < total:
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise RuntimeError(f"sender stopped after {got} of {total} bytes")
        if not got:
            cpu.append(time.process_time())
        got += len(data)
    cpu.append(time.process_time())
    await stream.send_all(ACK)


async def _serve(mode: str, total: int, report: Any) -> None:
    done = trio.Event()
    cpu: list[float] = []  # process time at the first byte and at the last

    async def on_stream(stream: trio.abc.Stream) -> None:
        await _drain_stream(stream, total, cpu)
        await stream.receive_some(1)  # wait for the client to hang up
        done.set()

    async def on_link(link: NoiseLink) -> None:
        try:
            await on_stream(link)
        except trio.BrokenResourceError:
            done.set()

    async def on_generic(stream: trio.abc.Stream) -> None:
        link = NoiseLink(PassThroughStream(stream), SERVER_ID, initiator=False)
        async with link:
            await on_link(link)

    async def on_ws(request: trio_websocket.WebSocketRequest) -> None:
        ws = await request.accept()
        got = len(await ws.get_message())
        cpu.append(time.process_time())
        while got < total:
            got += len(await ws.get_message())
        cpu.append(time.process_time())
        await ws.send_message(ACK)
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            await ws.get_message()
        done.set()

    async with trio.open_nursery() as nursery:
        if mode == "tcp":
            bound = await nursery.start(transports.serve, "tcp://127.0.0.1:0", on_stream)
        elif mode == "noise_tcp":
            bound = await nursery.start(serve_links, "tcp://127.0.0.1:0", SERVER_ID, on_link)
        elif mode == "noise_tcp_generic":
            bound = await nursery.start(transports.serve, "tcp://127.0.0.1:0", on_generic)
        elif mode == "noise_ws":
            bound = await nursery.start(serve_links, "ws://127.0.0.1:0/", SERVER_ID, on_link)
        else:
            server = await nursery.start(
                lambda task_status: trio_websocket.serve_websocket(
                    on_ws,
                    "127.0.0.1",
                    0,
                    None,
                    receive_buffer_size=WS_RECEIVE_BUFFER_SIZE,
                    max_message_size=WS_MAX_MESSAGE,
                    task_status=task_status,
                )
            )
            bound = f"ws://127.0.0.1:{server.port}/"
        report.send(bound)
        await done.wait()
        report.send(cpu[1] - cpu[0])
        nursery.cancel_scope.cancel()


def _server_process(mode: str, total: int, report: Any) -> None:
    trio.run(_serve, mode, total, report)


# --------------------------------------------------------------------------- clients


async def _send_stream(stream: trio.abc.Stream, write: int, total: int) -> tuple[float, float]:
    data = b"\x00" * write
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(total // write):
        await stream.send_all(data)
    assert await stream.receive_some(1) == ACK
    return time.perf_counter() - t0, time.process_time() - c0


async def _client(mode: str, bound: str, write: int, total: int) -> tuple[float, float]:
    if mode == "tcp":
        stream = await transports.dial(bound)
        async with stream:
            return await _send_stream(stream, write, total)
    if mode == "noise_tcp_generic":
        link = NoiseLink(
            PassThroughStream(await transports.dial(bound)),
            CLIENT_ID,
            initiator=True,
            expected_key=SERVER_ID.public_key,
        )
        async with link:
            return await _send_stream(link, write, total)
    if mode in ("noise_tcp", "noise_ws"):
        async with trio.open_nursery() as nursery:
            link = await connect_link(bound, CLIENT_ID, SERVER_ID.public_key, nursery=nursery)
            async with link:
                return await _send_stream(link, write, total)
    port = int(bound.rsplit(":", 1)[1].rstrip("/"))
    async with trio_websocket.open_websocket(
        "127.0.0.1",
        port,
        "/",
        use_ssl=False,
        receive_buffer_size=WS_RECEIVE_BUFFER_SIZE,
        max_message_size=WS_MAX_MESSAGE,
    ) as ws:
        data = b"\x00" * write
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(total // write):
            await ws.send_message(data)
        assert await ws.get_message() == ACK
        return time.perf_counter() - t0, time.process_time() - c0


def throughput(mode: str, write: int, total: int) -> tuple[float, float, float, float]:
    """MB/s of application data from this process to a server process: by the wall
    clock, and as limited by the busier side's CPU time (sender or receiver), which
    is what the link would do with a core per side on a quiet machine; then the
    sender's and the receiver's CPU microseconds per 64 KiB of data."""
    total -= total % write
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=_server_process, args=(mode, total, theirs), daemon=True)
    server.start()
    try:
        if not ours.poll(30):
            raise RuntimeError(f"{mode} server did not start")
        bound = ours.recv()
        seconds, client_cpu = trio.run(_client, mode, bound, write, total)
        if not ours.poll(30):
            raise RuntimeError(f"{mode} server did not report")
        server_cpu = ours.recv()
    finally:
        server.join(30)
        if server.is_alive():
            server.kill()
    per_64k = 1e6 * 65536 / total
    return (
        total / seconds / 1e6,
        total / max(client_cpu, server_cpu) / 1e6,
        client_cpu * per_64k,
        server_cpu * per_64k,
    )


# --------------------------------------------------------------------------- limits


def aead_rate(seconds: float) -> tuple[float, float]:
    """Single-core ChaCha20-Poly1305 encryption MB/s on maximum-size Noise messages, by
    the wall clock and by this process's CPU time (the rate of one core to itself)."""
    aead = ChaCha20Poly1305(os.urandom(32))
    data = os.urandom(MAX_PLAINTEXT_SIZE)
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - t0) < seconds:
        for counter in range(n, n + 100):
            aead.encrypt(b"\x00\x00\x00\x00" + counter.to_bytes(8, "little"), data, None)
        n += 100
    cpu = time.process_time() - c0
    return n * len(data) / elapsed / 1e6, n * len(data) / cpu / 1e6


async def _handshake_server(report: Any) -> None:
    async def on_link(link: NoiseLink) -> None:
        pass  # handshake done; serve_links closes the link

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_links, "tcp://127.0.0.1:0", SERVER_ID, on_link)
        report.send(bound)
        await trio.sleep_forever()


def _handshake_process(report: Any) -> None:
    trio.run(_handshake_server, report)


async def _handshakes(bound: str, count: int, concurrency: int) -> tuple[float, float]:
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            link = await connect_link(bound, CLIENT_ID, SERVER_ID.public_key)
            await link.aclose()

    t0, c0 = time.perf_counter(), time.process_time()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return count / (time.perf_counter() - t0), count / (time.process_time() - c0)


def handshake_rates(count: int, concurrency: int) -> tuple[float, float, float]:
    """Cycles/s sequential and with `concurrency` in flight (wall clock), and the
    rate the dialing side's CPU time allows (the listener does about the same work)."""
    ctx = mp.get_context("fork")
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=_handshake_process, args=(theirs,), daemon=True)
    server.start()
    try:
        if not ours.poll(30):
            raise RuntimeError("handshake server did not start")
        bound = ours.recv()
        sequential, _ = trio.run(_handshakes, bound, count, 1)
        concurrent, cpu_limited = trio.run(_handshakes, bound, count, concurrency)
    finally:
        server.kill()
        server.join(10)
    return sequential, concurrent, cpu_limited


def cpu_description() -> str:
    """CPU family/model and whether it has AVX-512 (OpenSSL's ChaCha20-Poly1305 is about
    1.6x faster with it, which moves the AEAD denominator of the ratios)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
            if not line.strip():
                break
    if not fields:
        return platform.processor() or "unknown"
    avx512 = "avx512f" in fields.get("flags", "").split()
    return (
        f"{fields.get('model name', '?')} family {fields.get('cpu family', '?')}"
        f" model {fields.get('model', '?')}, avx512 {'yes' if avx512 else 'no'}"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 MiB, 1 run, 200 handshakes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3)")
    parser.add_argument("--total-mib", type=int, default=None, help="MiB per 64 KiB run")
    parser.add_argument("--handshakes", type=int, default=None, help="cycles per rate")
    parser.add_argument("--concurrency", type=int, default=8, help="dialers in flight")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="subset of " + ",".join(MODES),
    )
    parser.add_argument(
        "--no-small", action="store_true", help="skip the 1 KiB-write runs (A/B runs)"
    )
    parser.add_argument(
        "--no-handshakes", action="store_true", help="skip the handshake rates (A/B runs)"
    )
    args = parser.parse_args(argv)
    load_start = os.getloadavg()
    runs = args.runs or (1 if args.quick else 3)
    total = (args.total_mib or (32 if args.quick else 256)) * MiB
    small_total = max(total // 10, MiB)
    handshakes = args.handshakes or (200 if args.quick else 1000)
    modes = [m for m in args.modes.split(",") if m]
    log = sys.stderr if args.json else sys.stdout

    # Runs are interleaved (every measurement once, then again) so that load from other
    # processes on a shared machine hits all of them alike; figures are medians.
    raw: dict[str, list[float]] = {}
    for run in range(runs):
        wall, cpu_bound = aead_rate(1.0)
        raw.setdefault("aead_mbps", []).append(wall)
        raw.setdefault("aead_cpu_mbps", []).append(cpu_bound)
        print(f"run {run + 1}: aead {wall:,.0f} MB/s (cpu {cpu_bound:,.0f})", file=log, flush=True)
        sizes = ((65536, total),) if args.no_small else ((65536, total), (1024, small_total))
        for write, amount in sizes:
            for mode in modes:
                key = f"{mode}_{write // 1024}k_mbps"
                wall, cpu_bound, send_us, recv_us = throughput(mode, write, amount)
                raw.setdefault(key, []).append(wall)
                raw.setdefault(key.replace("_mbps", "_cpu_mbps"), []).append(cpu_bound)
                raw.setdefault(key.replace("_mbps", "_send_cpu_us_per_64k"), []).append(send_us)
                raw.setdefault(key.replace("_mbps", "_recv_cpu_us_per_64k"), []).append(recv_us)
                print(
                    f"run {run + 1}: {key} {wall:,.1f} MB/s (cpu-limited {cpu_bound:,.1f};"
                    f" cpu per 64 KiB: send {send_us:.1f} us, receive {recv_us:.1f} us)",
                    file=log,
                    flush=True,
                )
    figures: dict[str, float] = {k: statistics.median(v) for k, v in raw.items()}
    hs_ratio: float | None = None
    if not args.no_handshakes:
        seq, conc, cpu_hs = handshake_rates(handshakes, args.concurrency)
        figures["handshakes_per_s_sequential"] = seq
        figures[f"handshakes_per_s_concurrency_{args.concurrency}"] = conc
        figures["handshakes_per_s_cpu_limited"] = cpu_hs
        hs_ratio = round(max(seq, conc) / 400, 3)
        print(
            f"handshakes/s: sequential {seq:,.0f}, {args.concurrency} in flight {conc:,.0f}",
            file=log,
        )

    def ratio(a: str, b: str) -> float | None:
        return round(figures[a] / figures[b], 3) if a in figures and b in figures else None

    ratios = {
        "noise_tcp_vs_aead": ratio("noise_tcp_64k_mbps", "aead_mbps"),
        "noise_tcp_vs_tcp": ratio("noise_tcp_64k_mbps", "tcp_64k_mbps"),
        "noise_ws_vs_ws": ratio("noise_ws_64k_mbps", "ws_64k_mbps"),
        "noise_tcp_1k_vs_tcp_1k": ratio("noise_tcp_1k_mbps", "tcp_1k_mbps"),
        "noise_ws_1k_vs_ws_1k": ratio("noise_ws_1k_mbps", "ws_1k_mbps"),
        "handshakes_per_s_vs_target_400": hs_ratio,
        "cpu_noise_tcp_vs_aead": ratio("noise_tcp_64k_cpu_mbps", "aead_cpu_mbps"),
        "cpu_noise_tcp_vs_tcp": ratio("noise_tcp_64k_cpu_mbps", "tcp_64k_cpu_mbps"),
        "cpu_noise_ws_vs_ws": ratio("noise_ws_64k_cpu_mbps", "ws_64k_cpu_mbps"),
        "noise_tcp_vs_noise_tcp_generic": ratio("noise_tcp_64k_mbps", "noise_tcp_generic_64k_mbps"),
        "cpu_noise_tcp_vs_noise_tcp_generic": ratio(
            "noise_tcp_64k_cpu_mbps", "noise_tcp_generic_64k_cpu_mbps"
        ),
    }
    params = {
        "total_mib_64k": total // MiB,
        "total_mib_1k": small_total // MiB,
        "runs": runs,
        "handshakes": handshakes,
        "concurrency": args.concurrency,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": cpu_description(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
    }
    if args.json:
        print(json.dumps({"ratios": ratios, "figures": figures, "runs": raw, "params": params}))
    else:
        print()
        print("| measurement | figure |")
        print("| --- | --- |")
        for name, value in figures.items():
            print(f"| {name} | {value:,.1f} |")
        for name, ratio_value in ratios.items():
            print(f"| ratio {name} | {ratio_value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
