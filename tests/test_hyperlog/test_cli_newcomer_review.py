"""The `hyperlog` command as a newcomer's review met it (in-process and real processes).

Each test failed before its fix: a clone with a wrong KEY (or the discovery key `info`
prints too) said only "the peer does not serve this log", without the URI; a DIR that
is a file was "[Errno 20] Not a directory: 'afile/hyperlog.sqlite3'" (`create`: "File
exists"); `--sparse -1:` was argparse's "expected one argument"; `cat` on a sparse
clone said "block 0 is missing" and no more; `append --lines` and `serve
--append-lines` kept the "\\r" of CRLF lines; counts said "1 blocks", "1 lines"; a
caught-up `clone --live` stopped by Ctrl-C said to run the clone again to resume.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import trio

from hyperlog.cli import _dash_values, main
from hyperlog.cli_words import KEY_HINT
from hyperlog.constants import MAX_BLOCK_SIZE
from hyperlog.crypto import discovery_key

from .test_cli_clone_edges import _hyperlog
from .test_cli_failures import BOUND, _live_clone_holding, _start_serve, _store_with_log
from .test_cli_serve_append import APPEND, _stderr_until, _stop

KEY = "ab" * 32


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_a_clone_the_peer_does_not_serve_names_the_uri_and_hints_at_the_key(
    tmp_path: Path,
) -> None:
    key = await _store_with_log(tmp_path / "w", blocks=2)
    dkey = discovery_key(bytes.fromhex(key)).hex()  # what `info` prints next to the key
    serve, uri = await _start_serve(tmp_path / "w")
    try:
        wrong = await _hyperlog("clone", KEY, str(tmp_path / "r"), "--connect", uri)
        disc = await _hyperlog("clone", dkey, str(tmp_path / "d"), "--connect", uri)
    finally:
        await _stop(serve)
    expected = f"hyperlog: error: {uri}: the peer does not serve this log; {KEY_HINT}\n"
    for result in (wrong, disc):
        assert result.returncode == 1, result.stderr
        assert result.stderr.decode() == expected
    assert "`hyperlog info`" in KEY_HINT and "discovery key" in KEY_HINT
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ("create", "{f}"),
        ("append", "{f}", "--lines", "{f}"),
        ("info", "{f}"),
        ("cat", "{f}"),
        ("verify", "{f}"),
        ("serve", "{f}", "--listen", "tcp://127.0.0.1:0"),
        ("clone", KEY, "{f}", "--connect", "tcp://127.0.0.1:1"),
    ],
)
def test_a_store_folder_that_is_a_file_is_said_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"mine\n")
    code, out, err = _run(capsys, *(a.format(f=afile) for a in argv))
    assert (code, out) == (1, "")
    assert err == f"hyperlog: error: {afile} is a file, not a directory (DIR is a store folder)\n"
    assert afile.read_bytes() == b"mine\n"


def test_a_store_folder_under_a_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_bytes(b"")
    code, _, err = _run(capsys, "create", str(afile / "sub" / "log"))
    assert code == 1
    assert err == (
        f"hyperlog: error: {afile}/sub/log: {afile} is a file, not a directory "
        "(DIR is a store folder)\n"
    )


@pytest.mark.parametrize("span", [["--sparse", "-1:"], ["--sparse", "-3:5"], ["--sparse=-1:"]])
def test_a_negative_sparse_start_is_refused_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], span: list[str]
) -> None:
    argv = ["clone", KEY, str(tmp_path / "r"), "--connect", "tcp://127.0.0.1:1", *span]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert "expected one argument" not in err
    assert err.splitlines()[-1] == (
        "hyperlog clone: error: argument --sparse: a block index cannot be negative "
        "(--sparse START:END, 0 <= START <= END)"
    )
    assert not (tmp_path / "r").exists()


def test_only_a_sparse_value_that_looks_negative_is_joined() -> None:
    assert _dash_values(["clone", "--sparse", "-1:", "--live"]) == [
        "clone",
        "--sparse=-1:",
        "--live",
    ]
    untouched = [["clone", "--sparse", "--live"], ["clone", "--", "--sparse", "-1:"]]
    for argv in untouched:
        assert _dash_values(argv) == argv


def test_append_lines_takes_crlf_as_a_line_end_and_counts_in_words(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "log")
    crlf = tmp_path / "crlf.txt"
    crlf.write_bytes(b"one\r\ntwo\r\nthree\n\r\nlast\r")
    assert _run(capsys, "create", store)[0] == 0
    code, _, err = _run(capsys, "append", store, "--lines", str(crlf))
    assert (code, err) == (0, "appended 5 blocks, length 5\n")
    code, out, _ = _run(capsys, "cat", store)
    # A "\r" that ends no line (no "\n" after it) is data, kept.
    assert out.encode() == b"one\ntwo\nthree\n\nlast\r\n"
    # A line of a whole block still fits with its "\r\n"; one byte more does not.
    crlf.write_bytes(b"x" * MAX_BLOCK_SIZE + b"\r\n")
    code, _, err = _run(capsys, "append", store, "--lines", str(crlf))
    assert (code, err) == (0, "appended 1 block, length 6\n")
    code, out, _ = _run(capsys, "info", store, "--json")
    assert json.loads(out)["byte_length"] == len(b"onetwothreelast\r") + MAX_BLOCK_SIZE
    crlf.write_bytes(b"x" * (MAX_BLOCK_SIZE + 1) + b"\r\n")
    code, _, err = _run(capsys, "append", store, "--lines", str(crlf))
    assert code == 1
    assert f"a line longer than {MAX_BLOCK_SIZE} bytes cannot be one block" in err


async def test_serve_append_lines_takes_crlf_as_a_line_end(tmp_path: Path) -> None:
    await _store_with_log(tmp_path / "w", blocks=1)
    serve, _ = await _start_serve(tmp_path / "w", "tcp://127.0.0.1:0", *APPEND, stdin=True)
    assert serve.stdin is not None
    try:
        await serve.stdin.send_all(b"only\r")
        await serve.stdin.send_all(b"\n")  # (maybe another read: the "\r" waits for it)
        await serve.stdin.aclose()
        err = await _stderr_until(serve, b"still serving")
    finally:
        await _stop(serve)
    assert b"--append-lines: input ended after 1 line, length 2; still serving" in err, err
    cat = await _hyperlog("cat", str(tmp_path / "w"), "--start", "1")
    assert cat.stdout == b"only\n", cat


async def test_a_sparse_copy_says_where_to_cat_and_when_a_stopped_clone_is_whole(
    tmp_path: Path,
) -> None:
    key = await _store_with_log(tmp_path / "w")  # 20 blocks
    serve, uri = await _start_serve(tmp_path / "w")
    clone = None
    try:
        part = await _hyperlog(
            "clone", key, str(tmp_path / "part"), "--connect", uri, "--sparse", "5:10"
        )
        assert part.returncode == 0, part.stderr
        # Caught up with the server, Ctrl-C: nothing to resume.
        clone = await _live_clone_holding(key, tmp_path / "l", uri, 20)
        code, caught_up = await _interrupt(clone)
    finally:
        await _stop(serve)
        await _kill(clone)
    assert code == 130, caught_up
    lines = caught_up.decode().splitlines()
    assert lines[-2:] == [
        "hyperlog: stopped after fetching 20 blocks; the copy holds all 20 blocks the server had",
        "hyperlog: interrupted",
    ], caught_up
    assert b"run the same clone again" not in caught_up

    # The sparse copy: cat says where its blocks are.
    cat = await _hyperlog("cat", str(tmp_path / "part"))
    assert (cat.returncode, cat.stdout) == (1, b"")
    assert cat.stderr == (
        b"hyperlog: error: block 0 is missing (this copy holds part of the log); the next "
        b"blocks it holds are 5..9: use --start 5 --end 10\n"
    )
    held = await _hyperlog("cat", str(tmp_path / "part"), "--start", "5", "--end", "10")
    assert held.returncode == 0 and held.stdout.splitlines() == [
        b"line %d" % i for i in range(5, 10)
    ]
    tail = await _hyperlog("cat", str(tmp_path / "part"), "--start", "7")
    assert (tail.returncode, tail.stdout) == (1, b"")  # (nothing written: said first)
    assert tail.stderr == (
        b"hyperlog: error: block 10 is missing (this copy holds part of the log); it "
        b"holds blocks 7..9: use --start 7 --end 10\n"
    )
    one = await _hyperlog("cat", str(tmp_path / "part"), "--start", "9", "--end", "30")
    assert one.stderr.splitlines()[-1] == (  # "block 9", not "blocks 9..9" (a review)
        b"hyperlog: error: block 10 is missing (this copy holds part of the log); it "
        b"holds block 9: use --start 9 --end 10"
    )
    after = await _hyperlog("cat", str(tmp_path / "part"), "--start", "12")
    assert after.stderr == (
        b"hyperlog: error: block 12 is missing (this copy holds part of the log); it "
        b"holds no block from 12 on\n"
    )

    # A live clone from it, stopped with blocks missing: that one can resume.
    serve, uri = await _start_serve(tmp_path / "part")
    clone = None
    try:
        clone = await _live_clone_holding(key, tmp_path / "p", uri, 5)
        code, missing = await _interrupt(clone)
    finally:
        await _stop(serve)
        await _kill(clone)
    assert code == 130, missing
    assert missing.decode().splitlines()[-2] == (
        "hyperlog: stopped after fetching 5 blocks (kept: run the same clone again to resume)"
    )


async def _interrupt(proc: trio.Process) -> tuple[int, bytes]:
    """Ctrl-C: its exit status and its stderr."""
    assert proc.stderr is not None
    proc.send_signal(signal.SIGINT)
    err = b""
    with trio.fail_after(BOUND):
        while chunk := await proc.stderr.receive_some(65536):
            err += chunk
        return await proc.wait(), err


async def _kill(proc: trio.Process | None) -> None:
    if proc is not None and proc.returncode is None:
        proc.kill()
        await proc.wait()
