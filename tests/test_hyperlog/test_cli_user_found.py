"""What a tester met acting out two laptops with the `hyperlog` command (real processes,
real TCP on 127.0.0.1, real SQLite stores).

Each test failed before its fix:
- `verify` on a clone of an empty log failed ("the manifest is unknown"), though the
  clone succeeded and `verify` on the original said ok;
- `serve --listen memory://x` said it was serving (on a link no other process can
  reach), and a bad URI's message suggested memory://.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import trio

from hyperlog.log import open_store

from .test_cli_clone_edges import _hyperlog, _one_error_line
from .test_cli_failures import BOUND, CMD, _start_serve, _store_with_log


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


async def _serve_briefly(*args: str) -> subprocess.CompletedProcess[bytes]:
    """`hyperlog serve ...`, killed if still running after a few seconds (the old code
    served memory:// URIs until stopped)."""
    proc = await trio.lowlevel.open_process(
        [*CMD, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    out, err = b"", b""
    with trio.move_on_after(BOUND / 4):
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
        await proc.wait()
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    with trio.move_on_after(1):
        while chunk := await proc.stdout.receive_some(65536):
            out += chunk
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
