"""`hyperlog clone --live` notices a server that vanished without a word.

A live clone sends nothing while it waits for appends, so a server whose network went
away (Wi-Fi gone, a laptop asleep: no reset) is found out only by the kernel probing
the connection. Before: only tcp:// links were probed; over ws:// the clone waited
for ever and never followed the server again when it came back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import trio

from hyperlog import cli_keepalive
from hyperlog.crypto import key_pair
from hyperlog.log import open_store
from pinecone_trio import transports

from ..test_pinecone_trio.netns_helpers import Program, laptops
from .test_cli_failures import _blocks_held


async def _idle_probes(stream: trio.SocketStream) -> None:
    assert stream.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    # The idle time, through whichever name the platform has (macOS: TCP_KEEPALIVE).
    idle_option = getattr(socket, "TCP_KEEPIDLE", None)
    if idle_option is None:
        idle_option = socket.TCP_KEEPALIVE
    idle = stream.getsockopt(socket.IPPROTO_TCP, idle_option)
    assert idle == cli_keepalive.LIVE_KEEPALIVE_IDLE
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: unacknowledged data breaks it too
        unacknowledged = stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        assert unacknowledged == cli_keepalive.LIVE_USER_TIMEOUT * 1000


async def _probed_tcp_stream() -> tuple[trio.SocketStream, trio.SocketListener]:
    """A connected stream (the listener's backlog accepts it) after `_keep_alive`."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    cli_keepalive._keep_alive(stream)
    return stream, listeners[0]


async def test_a_live_clones_tcp_connection_is_probed_when_idle() -> None:
    stream, listener = await _probed_tcp_stream()
    async with stream, listener:
        await _idle_probes(stream)


@pytest.mark.skipif(not hasattr(socket, "TCP_KEEPIDLE"), reason="emulates macOS on Linux")
async def test_the_idle_time_is_set_where_the_option_is_named_tcp_keepalive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # macOS: Python has TCP_KEEPALIVE (the idle time) and no TCP_KEEPIDLE. Before, the
    # clone set no idle time there: the first probe came after the system's 2 hours.
    option = socket.TCP_KEEPIDLE
    monkeypatch.delattr(socket, "TCP_KEEPIDLE")
    monkeypatch.setattr(socket, "TCP_KEEPALIVE", option, raising=False)
    stream, listener = await _probed_tcp_stream()
    async with stream, listener:
        assert stream.getsockopt(socket.IPPROTO_TCP, option) == cli_keepalive.LIVE_KEEPALIVE_IDLE


async def test_a_live_clones_ws_connection_is_probed_when_idle() -> None:
    async def handler(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(transports.serve, "ws://127.0.0.1:0/log", handler)
            stream = await transports.dial(bound, nursery=nursery)
            assert isinstance(stream, transports.WebSocketStream)
            cli_keepalive._keep_alive(stream)
            assert stream.socket_stream is not None
            await _idle_probes(stream.socket_stream)
            await stream.aclose()
            nursery.cancel_scope.cancel()


def _wait_held(directory: Path, blocks: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # another process's store: poll it
        if trio.run(_blocks_held, directory) >= blocks:
            return
        time.sleep(0.1)
    raise AssertionError(f"{directory} did not reach {blocks} blocks in {timeout} s")


def _veth(namespace: str) -> str:
    shown = subprocess.run(
        ["ip", "-n", namespace, "-o", "link", "show", "type", "veth"],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    )
    return shown.stdout.split(":")[1].strip().split("@")[0]  # "3: NAME@if2: <...>"


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=10)


async def _store_of(directory: Path, blocks: int, size: int) -> str:
    async with open_store(directory) as store:
        log = await store.create_log(key_pair(bytes(range(32))))
        await log.append([bytes([i % 256]) * size for i in range(blocks)])
        return log.key.hex()


#: name: (URI served, blocks of the log, bytes per block, blocks the clone holds when
#: the server's cable goes down).
_VANISHING = {
    "tcp idle": ("tcp://10.65.0.2:7000", 3, 16, 3),
    "ws idle": ("ws://10.65.0.2:7001/log", 3, 16, 3),
    # 16 MiB at 8 Mbit/s: still downloading when the cable goes down.
    "tcp mid-download": ("tcp://10.65.0.2:7002", 64, 256 * 1024, 4),
}


@pytest.mark.netns
@pytest.mark.slow
def test_a_live_clone_notices_a_vanished_server(tmp_path: Path) -> None:
    """Two laptops joined by a cable (8 Mbit/s from the server); the server's end of
    the cable goes down (no reset, nothing answers). Each clone says the server went
    away within about 30 s (bound: 50 s): an idle one over tcp:// and over ws://
    (keepalive; ws:// was never noticed before) and one in the middle of a download
    (TCP_USER_TIMEOUT: keepalive never probes while data is unacknowledged, and it
    took the system's ~15 minutes of retransmissions before)."""
    if shutil.which("tc") is None:
        pytest.skip("iproute2's tc is not installed")
    keys = {
        name: trio.run(_store_of, tmp_path / f"w-{n}", blocks, size)
        for n, (name, (_, blocks, size, _)) in enumerate(_VANISHING.items())
    }
    with laptops(2, line=True) as (ns_clone, ns_server):
        veth = _veth(ns_server)
        _run(
            "tc",
            "-n",
            ns_server,
            "qdisc",
            "add",
            "dev",
            veth,
            "root",
            "tbf",
            "rate",
            "8mbit",
            "burst",
            "32kb",
            "latency",
            "400ms",
        )
        running: list[Program] = []
        clones: dict[str, Program] = {}
        try:
            for n, (name, (uri, _, _, held)) in enumerate(_VANISHING.items()):
                serve = ["serve", str(tmp_path / f"w-{n}"), "--listen", uri]
                running.append(Program(ns_server, ["-m", "hyperlog.cli", *serve], tmp_path))
                running[-1].wait_for_line("serving", timeout=60)
                clone = ["clone", keys[name], str(tmp_path / f"r-{n}"), "--connect", uri, "--live"]
                clones[name] = Program(ns_clone, ["-m", "hyperlog.cli", *clone], tmp_path)
                running.append(clones[name])
                _wait_held(tmp_path / f"r-{n}", held, timeout=60)
            _run("ip", "-n", ns_server, "link", "set", veth, "down")
            t0 = time.monotonic()
            for name, (uri, *_) in _VANISHING.items():
                line = clones[name].wait_for_line(f"hyperlog: {uri}: ", timeout=60)
                took = time.monotonic() - t0
                assert "went away" in line and "retrying" in line, clones[name].output
                assert took < 50, (name, took, clones[name].output)
            assert trio.run(_blocks_held, tmp_path / "r-2") < 64  # (it was mid-download)
        finally:
            for proc in running:
                proc.stop()
