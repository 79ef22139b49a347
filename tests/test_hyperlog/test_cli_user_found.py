"""What a tester met acting out two laptops with the `hyperlog` command (real processes,
real TCP on 127.0.0.1, real SQLite stores).

Each test failed before its fix:
- `verify` on a clone of an empty log failed ("the manifest is unknown"), though the
  clone succeeded and `verify` on the original said ok;
- `serve --listen memory://x` said it was serving (on a link no other process can
  reach), and a bad URI's message suggested memory://;
- a server that went away mid-clone was reported in the link's words ("link broken:
  the stream ended inside a frame (38164 bytes left)"), without the URI;
- a refused connection said only "all attempts to connect to HOST:PORT failed";
- a ws:// error showed the URI twice.
"""

from __future__ import annotations

import socket
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio

from hyperlog.crypto import key_pair
from hyperlog.log import open_store
from hyperlog.replication import replicate
from pinecone_trio.testing import PassThroughStream

from .test_cli_clone_edges import _hyperlog, _one_error_line
from .test_cli_failures import BOUND, CMD, _start_serve, _store_with_log

BIG_BLOCK = 64 * 1024


async def test_a_clone_of_an_empty_log_verifies(tmp_path: Path) -> None:
    created = await _hyperlog("create", str(tmp_path / "empty"))
    key = created.stdout.decode().strip()
    proc, uri = await _start_serve(tmp_path / "empty")
    try:
        clone = await _hyperlog("clone", key, str(tmp_path / "copy"), "--connect", uri)
    finally:
        proc.kill()
        await proc.wait()
    assert clone.returncode == 0, clone.stderr
    for folder in ("empty", "copy"):
        verify = await _hyperlog("verify", str(tmp_path / folder))
        assert verify.returncode == 0, (folder, verify.stderr)
        assert verify.stdout.decode().startswith(f"ok: {key} length 0: an empty log")
        assert b"nothing to check" in verify.stdout


async def test_log_verify_passes_on_an_empty_reader_that_lacks_the_manifest(
    tmp_path: Path,
) -> None:
    async with open_store(tmp_path / "r") as store:
        reader = await store.open_log(bytes(range(32)))  # a reader: the key only
        assert reader.manifest is None and reader.length == 0
        await reader.verify()  # nothing signed: nothing needs the manifest


class _DiesAfter(PassThroughStream):
    """A server's transport that stops dead after `budget` bytes, in the middle of a
    frame: what a client sees when `hyperlog serve` is killed mid-send."""

    def __init__(self, inner: trio.abc.Stream, budget: int) -> None:
        super().__init__(inner)
        self.budget = budget

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) < self.budget:
            self.budget -= len(data)
            await self.inner.send_all(data)
            return
        await self.inner.send_all(memoryview(data)[: self.budget])
        self.budget = 0
        await self.inner.aclose()
        raise trio.BrokenResourceError("the server died")


async def test_a_server_going_away_mid_clone_is_named_with_its_uri(tmp_path: Path) -> None:
    from pinecone_trio.identity import Identity
    from pinecone_trio.link.stream import NoiseLink

    async with open_store(tmp_path / "w") as store:
        log = await store.create_log(key_pair(bytes(range(32))))
        await log.append([bytes([i]) * BIG_BLOCK for i in range(64)])  # 4 MiB
        key = log.key.hex()
        identity = Identity.generate()

        async def handler(stream: trio.SocketStream) -> None:
            link = NoiseLink(_DiesAfter(stream, 1 << 20), identity, initiator=False)
            await link.do_handshake()
            async with replicate(link, store) as session:
                await session.wait_closed()

        async with trio.open_nursery() as nursery:
            serve = partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
            (listener,) = await nursery.start(serve)
            uri = f"tcp://127.0.0.1:{listener.socket.getsockname()[1]}"
            clone = await _hyperlog("clone", key, str(tmp_path / "r"), "--connect", uri)
            nursery.cancel_scope.cancel()
    message = _one_error_line(clone)
    assert message.startswith(f"hyperlog: error: {uri}: the peer went away"), message
    assert "before the download finished; length 64, " in message and "blocks held" in message
    assert "link broken" not in message and "inside a frame" not in message


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed: nothing listens there


@pytest.mark.parametrize("scheme", ["tcp", "ws"])
async def test_a_refused_connection_says_why(tmp_path: Path, scheme: str) -> None:
    # ws:// dials dropped the attempts' OS errors (`raise leaf from None`) until 2026-11-22.
    uri = f"{scheme}://127.0.0.1:{_unused_port()}" + ("/" if scheme == "ws" else "")
    clone = await _hyperlog("clone", "ab" * 32, str(tmp_path / "r"), "--connect", uri)
    message = _one_error_line(clone)
    assert message.startswith(f"hyperlog: error: {uri}: ") and "Connection refused" in message
    assert not (tmp_path / "r").exists()


async def _serve_briefly(*args: str) -> subprocess.CompletedProcess[bytes]:
    """`hyperlog serve ...`, killed if still running after a few seconds (the old code
    served memory:// URIs until stopped)."""
    proc = await trio.lowlevel.open_process(
        [*CMD, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = b"", b""
    code: int | None = None
    with trio.move_on_after(BOUND / 4):
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
        code = await proc.wait()
    if code is None:
        proc.kill()
        code = await proc.wait()
    with trio.move_on_after(1):
        while chunk := await proc.stdout.receive_some(65536):
            out += chunk
    return subprocess.CompletedProcess(proc.args, code, out, err)


async def test_memory_uris_are_refused_and_never_suggested(tmp_path: Path) -> None:
    await _store_with_log(tmp_path / "w")
    served = await _serve_briefly(str(tmp_path / "w"), "--listen", "memory://x")
    assert served.stdout == b"", served.stdout
    message = _one_error_line(served)
    assert "--listen memory://x: memory:// links work only inside one Python process" in message
    cloned = await _hyperlog("clone", "ab" * 32, str(tmp_path / "r"), "--connect", "memory://x")
    assert "--connect memory://x: memory:// links work only" in _one_error_line(cloned)
    assert not (tmp_path / "r").exists()
    unknown = await _serve_briefly(str(tmp_path / "w"), "--listen", "foo://x")
    message = _one_error_line(unknown)
    assert "unknown transport" in message and "memory" not in message


async def test_a_websocket_error_names_the_uri_once(tmp_path: Path) -> None:
    key = await _store_with_log(tmp_path / "w")
    proc, uri = await _start_serve(tmp_path / "w", "ws://127.0.0.1:0/")
    wrong = uri.rstrip("/") + "/wrongpath"
    try:
        clone = await _hyperlog("clone", key, str(tmp_path / "r"), "--connect", wrong)
    finally:
        proc.kill()
        await proc.wait()
    message = _one_error_line(clone)
    assert message.count(wrong) == 1 and "WebSocket upgrade refused" in message, message
