"""The ``hyperlog serve`` and ``hyperlog clone`` commands (replication over Noise links):
their arguments, and their wiring into ``hyperlog``.

``serve DIR --listen tcp://HOST:PORT`` serves every log of the store folder DIR to
whoever connects and knows a log's key (capabilities prove it without sending it).
It prints one line, ``serving KEY on URI``, once it listens.

``clone KEY DIR --connect tcp://HOST:PORT [--live] [--sparse START:[END]]`` fetches
the log KEY into the store folder DIR (created if needed), verifying every block and
the signed head; ``--sparse`` fetches only blocks START..END-1 (``START:`` to the end;
with ``--live`` only that form, following from START), ``--live`` keeps following
the writer until interrupted, dialling again whenever the connection is lost or cannot
be made (`_follow_live` says which errors it retries). A progress bar goes to stderr
when it is a terminal.
Both commands take ``ws://HOST:PORT/PATH`` URIs too (the link over a WebSocket).

The commands live in modules of one purpose each: `cli_serve` (``serve``),
`cli_clone` (``clone``), `cli_live` (``clone --live``'s follower), `cli_keepalive`
(the live clone's socket options), `cli_clone_state` (what a clone knows while it
runs, its progress bar) and `cli_words` (failures in a user's words).

Links are `pinecone_trio`'s Noise links (``connect_link`` / ``serve_links``). These
are the only hyperlog modules that import `pinecone_trio`, lazily inside the
commands, so the library itself never depends on it. `hyperlog.cli` registers
`add_net_commands` in its ``COMMAND_GROUPS`` (``python -m hyperlog.cli_net`` works too).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

from .cli_clone import CLONE_STALL_TIMEOUT, _cmd_clone
from .cli_serve import _cmd_serve

__all__ = ["add_net_commands"]


def _parse_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("KEY must be hexadecimal") from None
    if len(key) != 32:
        raise argparse.ArgumentTypeError("KEY must be 32 bytes (64 hex digits)")
    return key


def _parse_span(text: str) -> tuple[int, int | None]:
    """`--sparse START:END`, or `START:` (END None: to the log's end, or live)."""
    start, sep, end = text.partition(":")
    try:
        a, b = int(start), (int(end) if end else None)
    except ValueError:
        raise argparse.ArgumentTypeError("--sparse takes START:END or START: (integers)") from None
    if a < 0 or (b is not None and b < 0):
        raise argparse.ArgumentTypeError(
            "a block index cannot be negative (--sparse START:END, 0 <= START <= END)"
        )
    if not sep or (b is not None and b < a):
        raise argparse.ArgumentTypeError("--sparse takes START:END with 0 <= START <= END")
    return a, b


def _check_clone_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options `clone` cannot honour together (a usage error, exit status 2).

    A live clone follows the log without end: it used to ignore the END of
    `--sparse START:END` silently.
    """
    if args.live and args.sparse is not None and args.sparse[1] is not None:
        start, end = args.sparse
        parser.error(
            f"--sparse {start}:{end} with --live: a live clone follows the log without "
            f"end; use --sparse {start}: to follow it from block {start}"
        )


def add_net_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve`` and ``clone`` on the ``hyperlog`` command's subparsers."""
    p = subparsers.add_parser("serve", help="serve the store's logs over Noise links")
    p.add_argument("dir", metavar="DIR", help="store folder")
    p.add_argument(
        "--listen",
        required=True,
        metavar="URI",
        help="tcp://HOST:PORT or ws://HOST:PORT/PATH, e.g. tcp://127.0.0.1:7000 (port 0: any)",
    )
    p.add_argument("--identity", metavar="FILE", help="link key file (default: ephemeral)")
    p.add_argument(
        "--append-lines",
        metavar="FILE",
        help="while serving, append each line of FILE ('-' for stdin) as one block as it "
        "arrives (a line ends with \\n or \\r\\n, which is not kept): readers following "
        "with clone --live get it at once (serve holds the store, so `hyperlog append` "
        "cannot run beside it)",
    )
    p.set_defaults(run=_cmd_serve)

    p = subparsers.add_parser("clone", help="fetch a log by key from a serving peer")
    p.add_argument("key", metavar="KEY", type=_parse_key, help="the log key (hex)")
    p.add_argument("dir", metavar="DIR", help="store folder (created if needed)")
    p.add_argument(
        "--connect",
        required=True,
        metavar="URI",
        help="tcp://HOST:PORT or ws://HOST:PORT/PATH, e.g. tcp://127.0.0.1:7000",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="keep following the writer until Ctrl-C, reconnecting when the connection "
        "is lost or cannot be made (a server for another log, a bad proof: exit status 1)",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=CLONE_STALL_TIMEOUT,
        metavar="SECONDS",
        help=(
            "without --live, stop with an error when no block arrives for this long "
            f"(default {CLONE_STALL_TIMEOUT:g})"
        ),
    )
    p.add_argument(
        "--sparse",
        type=_parse_span,
        metavar="START:[END]",
        help=(
            "fetch only blocks START..END-1 (START: to the log's end; blocks count from "
            "0, none is negative); an END past the "
            "log's length fetches what exists and warns, a START past it is an error "
            "(exit status 1). With --live only START: (follows from START)"
        ),
    )
    p.set_defaults(run=_cmd_clone, check=partial(_check_clone_args, p))


def main(argv: list[str] | None = None) -> int:
    """Run the ``hyperlog`` command with the network commands registered."""
    from . import cli, cli_net  # the canonical module (this file may run as __main__)

    if cli_net.add_net_commands not in cli.COMMAND_GROUPS:
        cli.COMMAND_GROUPS.append(cli_net.add_net_commands)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
