"""What a tester met acting out two laptops with the `hyperlog` command (real processes,
real TCP on 127.0.0.1, real SQLite stores).

Each test failed before its fix:
- `verify` on a clone of an empty log failed ("the manifest is unknown"), though the
  clone succeeded and `verify` on the original said ok.
"""

from __future__ import annotations

from pathlib import Path

from hyperlog.log import open_store

from .test_cli_clone_edges import _hyperlog
from .test_cli_failures import _start_serve


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
