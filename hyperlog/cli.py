"""The ``hyperlog`` command: create, append to, read, inspect and verify a log in a folder.

Every subcommand works on a *store folder* (DIR) holding the SQLite database; the
command works on the store's default log (the first one created or cloned into it).

Adding subcommands: each ``add_*_commands(subparsers)`` function registers its
subparsers and sets ``run`` to an ``async def (args) -> int`` (the exit status), and
may set ``check`` to a function that refuses options which cannot go together
(through its parser's ``error``, before anything runs). The
network commands (``serve``, ``clone``) live in ``hyperlog.cli_net`` and are wired by
appending its ``add_net_commands`` to `COMMAND_GROUPS`. `main` runs the chosen
coroutine under ``trio.run`` and turns every expected failure into one line on stderr
and exit status 1 (2 for usage errors), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import re
import signal
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import IO, Any, Final

import trio

from ._groups import leaves as group_leaves
from .cli_net import add_net_commands
from .cli_words import _check_store_dir, _count
from .constants import (
    CLI_DEFAULT_BLOCK_SIZE,
    CLI_FILE_BATCH_BYTES,
    CLI_LINES_PER_BATCH,
    MAX_BATCH_BLOCKS,
    MAX_BLOCK_SIZE,
)
from .crypto import SEED_SIZE, key_pair
from .errors import HyperlogError
from .log import Log, Store, open_store

__all__ = ["COMMAND_GROUPS", "build_parser", "main"]

Runner = Callable[[argparse.Namespace], Awaitable[int]]

#: Store metadata telling `cat` how the log was filled (``lines`` or ``bytes``).
CAT_FORMAT_META: Final = "cli_cat_format"
#: The distribution `--version` reports (hyperlog ships in it; read here without
#: importing `pinecone_trio`, which the local commands never need).
_DISTRIBUTION: Final = "pinecone-trio"
#: Options whose value may start with '-' (`--sparse -1:`): argparse takes such a value
#: for an option ("expected one argument"), so `main` joins it as `--sparse=-1:` for
#: the option's own check to word ("a block index cannot be negative").
DASH_VALUE_OPTIONS: Final = ("--sparse",)
_DASH_VALUE: Final = re.compile(r"-[0-9]")


class Terminated(Exception):
    """SIGTERM arrived: the command was stopped like a Ctrl-C (exit status 143)."""


def _installed_version() -> str:
    try:
        return importlib.metadata.version(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "(not installed)"


def _parse_seed(text: str) -> bytes:
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("--seed must be hexadecimal") from None
    if len(seed) != SEED_SIZE:
        raise argparse.ArgumentTypeError(f"--seed must be {SEED_SIZE} bytes ({2 * SEED_SIZE} hex)")
    return seed


def _non_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def _block_size(text: str) -> int:
    n = _non_negative(text)
    if not 1 <= n <= MAX_BLOCK_SIZE:
        raise argparse.ArgumentTypeError(f"block size must be 1..{MAX_BLOCK_SIZE}")
    return n


# --- create ----------------------------------------------------------------------------


async def _cmd_create(args: argparse.Namespace) -> int:
    async with open_store(args.dir) as store:
        if store.keys():
            raise HyperlogError(f"{args.dir} already holds a log")
        log = await store.create_log(key_pair(args.seed), compat=args.compat)
        print(log.key.hex())
    return 0


# --- append ----------------------------------------------------------------------------


def read_lines(stream: IO[bytes]) -> Iterator[bytes]:
    """Each line of `stream` without its line end: "\\n", or "\\r\\n" (a file from
    Windows: its "\\r" used to be kept in every block). A last line without one is
    kept as it is.

    Raises:
        HyperlogError: a line is longer than a block can be.
    """
    # Read at most one block (plus its line end) at a time: a huge line is refused
    # without being held in memory whole. Bounded by the input size.
    while line := stream.readline(MAX_BLOCK_SIZE + 2):
        if line.endswith(b"\r\n"):
            line = line[:-2]
        elif line.endswith(b"\n"):
            line = line[:-1]
        if len(line) > MAX_BLOCK_SIZE:
            raise HyperlogError(f"a line longer than {MAX_BLOCK_SIZE} bytes cannot be one block")
        yield line


def _chunks(stream: IO[bytes], size: int) -> Iterator[bytes]:
    # Bounded by the file size: every pass consumes `size` bytes or ends.
    while chunk := stream.read(size):
        yield chunk


async def _append_all(log: Log, blocks: Iterator[bytes], per_batch: int) -> int:
    """Append in batches of at most `per_batch` blocks and about `CLI_FILE_BATCH_BYTES`
    (one block may be larger), so no batch exceeds the log's limits; returns the count.
    """
    batch: list[bytes] = []
    size = 0
    count = 0
    for block in blocks:
        if len(block) > MAX_BLOCK_SIZE:
            raise HyperlogError(f"a block of {len(block)} bytes exceeds {MAX_BLOCK_SIZE}")
        if batch and size + len(block) > CLI_FILE_BATCH_BYTES:
            await log.append(batch)
            count += len(batch)
            batch, size = [], 0
        batch.append(block)
        size += len(block)
        if len(batch) >= per_batch:
            await log.append(batch)
            count += len(batch)
            batch, size = [], 0
    if batch:
        await log.append(batch)
        count += len(batch)
    return count


def open_input(path: str) -> IO[bytes]:
    return sys.stdin.buffer if path == "-" else open(path, "rb")


async def _cmd_append(args: argparse.Namespace) -> int:
    async with open_store(args.dir, create=False) as store:
        log = await store.default_log()
        if not log.writable:
            raise HyperlogError(f"the log in {args.dir} is not writable (no secret key)")
        if args.lines is not None:
            stream = open_input(args.lines)
            fmt = b"lines"
            blocks, per_batch = read_lines(stream), CLI_LINES_PER_BATCH
        else:
            stream = open_input(args.file)
            fmt = b"bytes"
            size = args.block_size
            per_batch = min(MAX_BATCH_BLOCKS, max(1, CLI_FILE_BATCH_BYTES // size))
            blocks = _chunks(stream, size)
        before = log.length
        try:
            count = await _append_all(log, blocks, per_batch)
        except BaseException:
            # Ctrl-C or an error mid-way: the batches appended so far are committed.
            committed = log.length - before
            if committed:
                with contextlib.suppress(sqlite3.Error):  # the first error is the one to tell
                    store.storage.set_meta(CAT_FORMAT_META, fmt)
            print(
                f"hyperlog: stopped after appending {_count(committed, 'block')}, "
                f"length {log.length}",
                file=sys.stderr,
            )
            raise
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()
        store.storage.set_meta(CAT_FORMAT_META, fmt)
        print(f"appended {_count(count, 'block')}, length {log.length}", file=sys.stderr)
    return 0


# --- cat -------------------------------------------------------------------------------


def _cat_range(start: int, end: int | None, length: int) -> tuple[int, int]:
    """The blocks ``cat`` writes: [start, end) cut to the log, with a warning if cut.

    Raises:
        HyperlogError: nothing of a non-empty request exists (START past the end), or
            END is before START.
    """
    if end is None:
        if start > length:
            raise HyperlogError(f"--start {start} is past the end of the log (length {length})")
        return start, length  # (START = length: nothing to write, and nothing asked)
    if end < start:
        raise HyperlogError(f"--end {end} is before --start {start}")
    if end == start:
        return start, start  # an empty request
    want_end = end
    if start >= length:
        raise HyperlogError(
            f"blocks {start}..{want_end - 1} are past the end of the log (length {length})"
        )
    if want_end > length:
        print(
            f"hyperlog: warning: the log has {_count(length, 'block')}: "
            f"writing blocks {start}..{length - 1} of {start}..{want_end - 1}",
            file=sys.stderr,
        )
    return start, min(want_end, length)


async def _cmd_cat(args: argparse.Namespace) -> int:
    async with open_store(args.dir, readonly=True, create=False) as store:
        log = await store.default_log()
        if args.raw:
            lines = False
        elif args.lines:
            lines = True
        else:
            lines = store.storage.get_meta(CAT_FORMAT_META) != b"bytes"
        start, end = _cat_range(args.start, args.end, log.length)
        if not log.has_range(start, end):  # a sparse copy: say so before writing
            raise HyperlogError(_missing_block(log, start, end))
        out = sys.stdout.buffer
        async for block in log.iter_blocks(start, end):
            out.write(block)
            if lines:
                out.write(b"\n")
        out.flush()
    return 0


def _missing_block(log: Log, start: int, end: int) -> str:
    """`cat`'s words for blocks START..END-1 of which this copy lacks some (a sparse
    clone): the first missing, and the `--start`/`--end` of blocks it holds there. It
    used to say "block 0 is missing" and no more.
    """

    def blocks(first: int, last: int) -> str:
        return f"block {first}" if first == last else f"blocks {first}..{last}"

    bits = log.bitfield
    missing = bits.first_unset(start)
    said = f"block {missing} is missing (this copy holds part of the log)"
    if missing > start:
        option = f"--end {missing}" if start == 0 else f"--start {start} --end {missing}"
        return f"{said}; it holds {blocks(start, missing - 1)}: use {option}"
    held = bits.first_set(missing)
    if held is None or held >= log.length:
        return f"{said}; it holds no block from {missing} on"
    run_end = min(bits.first_unset(held), log.length)
    option = f"--start {held}" if run_end >= log.length else f"--start {held} --end {run_end}"
    if held == run_end - 1:
        return f"{said}; the next block it holds is {held}: use {option}"
    return f"{said}; the next blocks it holds are {held}..{run_end - 1}: use {option}"


# --- info ------------------------------------------------------------------------------


def _info(log: Log) -> dict[str, Any]:
    sig = log.signature
    return {
        "key": log.key.hex(),
        "discovery_key": log.discovery_key.hex(),
        "length": log.length,
        "byte_length": log.byte_length,
        "fork": log.fork,
        "tree_hash": log.tree_hash().hex(),
        "signature": None if sig is None else sig.hex(),
        "writable": log.writable,
    }


async def _cmd_info(args: argparse.Namespace) -> int:
    async with open_store(args.dir, readonly=True, create=False) as store:
        log = await store.default_log()
        info = _info(log)
        # A read-only open never holds the write lock: report whether the key is here.
        info["writable"] = log.writable or _has_secret(store, log)
        if args.json:
            print(json.dumps(info))
        else:
            if info["signature"] is None:
                info["signature"] = (
                    "unsigned (the writer signs its last append when it next opens)"
                    if info["length"]
                    else "none (an empty log)"
                )
            info["writable"] = "yes" if info["writable"] else "no (no secret key here)"
            for name, value in info.items():
                print(f"{name}: {value}")
    return 0


def _has_secret(store: Store, log: Log) -> bool:
    stored = store.storage.find_log(log.key)
    return stored is not None and stored.info.secret_key is not None


# --- verify ----------------------------------------------------------------------------


async def _cmd_verify(args: argparse.Namespace) -> int:
    async with open_store(args.dir, readonly=True, create=False) as store:
        await store.check(full=True)
        log = await store.default_log()
        await log.verify()
        print(f"ok: {log.key.hex()} {_verified(log)}")
    return 0


def _verified(log: Log) -> str:
    """What `verify` checked, truthfully: an empty log has no block and no signed head
    (a clone of one does not even know the manifest, which only checks signatures)."""
    if not log.length:
        return "length 0: an empty log, nothing to check (no blocks, no signed head)"
    held = log.statistics().blocks_held
    return f"length {log.length}, {_count(held, 'block')} held, all hashes verified"


# --- wiring ----------------------------------------------------------------------------


def add_local_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``create``, ``append``, ``cat``, ``info`` and ``verify``."""
    p = subparsers.add_parser("create", help="create a store folder holding a new writable log")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--seed", type=_parse_seed, help="32-byte hex seed of the ed25519 key pair")
    p.add_argument("--compat", action="store_true", help="legacy mode: the key is the public key")
    p.set_defaults(run=_cmd_create)

    p = subparsers.add_parser("append", help="append lines or a file's bytes as blocks")
    p.add_argument("dir", metavar="DIR")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--lines",
        metavar="FILE",
        help="one block per line ('-' for stdin); a line ends with \\n or \\r\\n, which "
        "is not kept",
    )
    src.add_argument("--file", metavar="FILE", help="a file cut into blocks ('-' for stdin)")
    p.add_argument(
        "--block-size",
        type=_block_size,
        default=CLI_DEFAULT_BLOCK_SIZE,
        metavar="N",
        help=f"bytes per block with --file (default {CLI_DEFAULT_BLOCK_SIZE})",
    )
    p.set_defaults(run=_cmd_append)

    p = subparsers.add_parser(
        "cat",
        help="write blocks START..END-1 to stdout",
        description="Write blocks START..END-1 of the log to stdout.",
        epilog=(
            "An END past the log's length writes the blocks that exist and warns on "
            "stderr (exit status 0); a START past the end (nothing to write) is an error "
            "(exit status 1). Without --raw or --lines, cat writes a newline after each "
            "block unless the log was filled here with 'append --file'; that setting is "
            "local, so on a clone the default is --lines: pass --raw for binary data."
        ),
    )
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--start", type=_non_negative, default=0, metavar="START", help="default 0")
    p.add_argument("--end", type=_non_negative, metavar="END", help="default: the log's length")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--raw", action="store_true", help="no newline after each block")
    fmt.add_argument(
        "--lines",
        action="store_true",
        help="a newline after each block (the default, except for a log filled with --file)",
    )
    p.set_defaults(run=_cmd_cat)

    p = subparsers.add_parser("info", help="show the key, length, fork and signed head")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--json", action="store_true", help="one JSON object, bytes as hex")
    p.set_defaults(run=_cmd_info)

    p = subparsers.add_parser("verify", help="recompute every hash and check the signature")
    p.add_argument("dir", metavar="DIR")
    p.set_defaults(run=_cmd_verify)


#: Functions that add subcommands; the network commands append theirs here.
COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    add_local_commands,
    add_net_commands,
]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="hyperlog", description="A signed, append-only, hypercore-compatible log."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_installed_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMAND_GROUPS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hyperlog`` command; return its exit status."""
    args = build_parser().parse_args(_dash_values(sys.argv[1:] if argv is None else argv))
    check: Callable[[argparse.Namespace], None] | None = getattr(args, "check", None)
    if check is not None:
        check(args)  # options that cannot go together: a usage error (exit status 2)
    run: Runner = args.run
    try:
        try:
            store_dir: str | None = getattr(args, "dir", None)
            if store_dir is not None:
                _check_store_dir(store_dir)  # a file is no store folder
            return trio.run(_until_terminated, run, args)
        except BaseExceptionGroup as group:
            # Trio wraps what a nursery's tasks raised (Ctrl-C while serving, a port
            # in use): report the one real cause like any other error, not a group.
            leaves = group_leaves(group)
            stopped = [e for e in leaves if isinstance(e, KeyboardInterrupt | Terminated)]
            if stopped:
                raise stopped[0] from None
            others = [e for e in leaves if not isinstance(e, trio.Cancelled)]
            if len(others) == 1:
                raise others[0] from None
            raise
    except KeyboardInterrupt:
        print("hyperlog: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("hyperlog: terminated", file=sys.stderr)
        return 143
    except BrokenPipeError:
        return 1
    except (HyperlogError, OSError, ValueError, KeyError, sqlite3.Error) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"hyperlog: error: {message}", file=sys.stderr)
        return 1


def _dash_values(argv: Sequence[str]) -> list[str]:
    """`argv` with `--sparse -1:` joined as `--sparse=-1:` (`DASH_VALUE_OPTIONS`);
    nothing after `--` is touched. Bounded by the arguments."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            out.extend(argv[i:])
            break
        if arg in DASH_VALUE_OPTIONS and i + 1 < len(argv) and _DASH_VALUE.match(argv[i + 1]):
            out.append(f"{arg}={argv[i + 1]}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


async def _until_terminated(run: Runner, args: argparse.Namespace) -> int:
    """Run the command; SIGTERM (a service manager stopping it, `kill`) cancels it as
    Ctrl-C does, so it says what it did (`append`'s count, `clone`'s blocks held) and
    leaves the store consistent, then raises `Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        return await run(args)  # (signals reach the main thread only: nothing to catch)
    status: list[int] = []
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def command() -> None:
                status.append(await run(args))
                nursery.cancel_scope.cancel()

            nursery.start_soon(command)
            async for _ in signals:
                raise Terminated
    return status[0]


if __name__ == "__main__":
    sys.exit(main())
