"""`hyperlog clone --live` over an unsteady path (real processes, a relay in between).

The relay on 127.0.0.1 stands for the network between a clone and its server: it can
cut every connection (a server restarting, Wi-Fi dropping), cut each new one soon
after it is made (a path that keeps dropping), and stall a new one right after its
link handshake (lossy Wi-Fi, a server paused just after accepting).

Before: a stall of more than 10 s after a reconnect's handshake ended the live clone
with exit status 1, calling a server that had served it "not a `hyperlog serve`"
(no hello in time) or saying it "does not serve this log" (no answer for the log's
channel in time); a path dropping every connection right after it served was
redialled every second or so for as long as it lasted, with two lines per connection
(the backoff started again as soon as a connection served).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import trio

from .test_cli_failures import BOUND, CMD, _live_clone_holding, _start_serve, _store_with_log
from .test_cli_live_reconnect import _interrupt, _kill
from .test_cli_serve_append import _stderr_until

#: A connection's plan: relay everything (None), or relay this many chunks from the
#: server and hold the rest until the clone gives up (the first chunk is the link
#: handshake's second message, the second the server's hello).
Plan = int | None


class _Relay:
    """A TCP relay to `upstream` on 127.0.0.1; new connections take `plans` in order
    (then relay everything)."""

    def __init__(self, upstream: str, plans: Sequence[Plan] = ()) -> None:
        self.upstream_port = int(upstream.rsplit(":", 1)[1])
        self.plans = list(plans)
        self.connections = 0
        self.stalled = 0  # connections whose server side was held
        self.lifetime: float | None = None  # seconds before a new connection is cut
        self._scopes: list[trio.CancelScope] = []

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        task_status.started(f"tcp://127.0.0.1:{port}")
        await trio.serve_listeners(self._relay, listeners)

    def cut(self) -> None:
        """Close every connection now (the clone sees the server go away)."""
        for scope in self._scopes:
            scope.cancel()
        self._scopes.clear()

    async def _relay(self, client: trio.SocketStream) -> None:
        self.connections += 1
        plan = self.plans.pop(0) if self.plans else None
        async with client:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
            except OSError:
                return
            async with server, trio.open_nursery() as nursery:
                self._scopes.append(nursery.cancel_scope)
                if self.lifetime is not None:
                    nursery.cancel_scope.deadline = trio.current_time() + self.lifetime
                nursery.start_soon(self._pump, client, server, None, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, plan, nursery.cancel_scope)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, hold: Plan, done: trio.CancelScope
    ) -> None:
        chunks = 0
        try:
            while data := await src.receive_some(65536):
                chunks += 1
                if hold is not None and chunks > hold:
                    self.stalled += 1
                    await trio.sleep_forever()  # until the clone gives up (the other way)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


async def test_a_stall_right_after_the_handshake_is_retried(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=3)
    serve, upstream = await _start_serve(tmp_path / "w")
    clone = None
    relay = _Relay(upstream, [None, 1, 2])  # then: stalled before hello, before the open
    try:
        async with trio.open_nursery() as nursery:
            uri = await nursery.start(relay.run)
            clone = await _live_clone_holding(key, tmp_path / "r", uri, 3)
            relay.cut()
            err = await _stderr_until(clone, b"retrying")
            # Two stalls of 10 s each (no hello, then no answer for the log), each
            # retried; the fourth connection is relayed.
            with trio.fail_after(BOUND):
                err += await _stderr_until(clone, b"connected again")
            assert relay.connections == 4 and relay.stalled == 2
            assert clone.returncode is None
            code, rest = await _interrupt(clone)
            nursery.cancel_scope.cancel()
    finally:
        await _kill(serve, clone)
    err += rest
    assert code == 130, err
    lines = err.decode().splitlines()
    assert sum("retrying" in line for line in lines) == 1, err  # one outage, said once
    assert "error" not in err.decode(), err
    [back] = re.findall(r"connected again after (\d+\.\d) s", err.decode())
    assert float(back) >= 20, err  # the two stalls


async def test_a_server_never_served_by_that_sends_no_hello_ends_the_clone(
    tmp_path: Path,
) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=1)
    serve, upstream = await _start_serve(tmp_path / "w")
    relay = _Relay(upstream, [1])  # the link comes up; nothing more
    try:
        async with trio.open_nursery() as nursery:
            uri = await nursery.start(relay.run)
            with trio.fail_after(BOUND):
                done = await trio.run_process(
                    [*CMD, "clone", key, str(tmp_path / "r"), "--connect", uri, "--live"],
                    capture_stderr=True,
                    check=False,
                    stdout=subprocess.DEVNULL,
                )
            nursery.cancel_scope.cancel()
    finally:
        await _kill(serve)
    assert done.returncode == 1, done.stderr
    assert done.stderr.decode() == (
        f"hyperlog: error: {uri}: the peer sent nothing for 10 s once the link was up "
        "(no hello) before serving the log; is it a `hyperlog serve`?\n"
    )
    assert not (tmp_path / "r").exists()


async def test_a_path_that_keeps_dropping_is_redialled_less_often_and_said_once(
    tmp_path: Path,
) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=3)
    serve, upstream = await _start_serve(tmp_path / "w")
    clone = None
    relay = _Relay(upstream)
    try:
        async with trio.open_nursery() as nursery:
            uri = await nursery.start(relay.run)
            clone = await _live_clone_holding(key, tmp_path / "r", uri, 3)
            relay.lifetime = 0.6  # each connection serves, then drops
            relay.cut()
            await trio.sleep(10)
            relay.lifetime = None
            flapping = relay.connections - 1
            err = await _stderr_until(clone, b"it has held for 10 s)\n")  # the next one
            code, rest = await _interrupt(clone)
            nursery.cancel_scope.cancel()
    finally:
        await _kill(serve, clone)
    err += rest
    assert code == 130, err
    # Backoff not reset by a connection that dropped within LIVE_STEADY (10 s): at
    # 0, ~1.0, ~2.4, ~4.5, ~8 s; it was one every ~1.1 s (9 or more).
    assert 3 <= flapping <= 6, (flapping, err)
    lines = [line for line in err.decode().splitlines() if line.startswith(f"hyperlog: {uri}")]
    assert len(lines) == 4, err  # lost, back, keeps dropping, held (two per connection)
    assert lines[0].endswith("; retrying (Ctrl-C to stop)"), err
    assert "connected again after" in lines[1], err
    assert "; it keeps dropping (" in lines[2], err
    assert "s after connecting again): retrying less often, quietly until a connection " in lines[2]
    assert re.search(r"connected again after \d+\.\d s \(it has held for 10 s\)$", lines[3]), err
