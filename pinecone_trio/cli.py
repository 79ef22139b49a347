"""`pinecone-trio`: run a node (a relay, or a peer for your apps) from the shell.

    pinecone-trio --key node.key --listen tcp://0.0.0.0:7000 --listen ws://0.0.0.0:7001/ \
        --connect tcp://seed.example:7000 --multicast --status-json /run/pt.json

(`python -m pinecone_trio ...` is the same command.) Prints its public key and the URIs
it listens on (ports resolved), then peers and the root as they change (not with
`--quiet`), and on stderr a static peer it cannot reach. `--status-json PATH` rewrites
PATH atomically every second with `node.status()` (and the DHT's status under "dht").
SIGINT or SIGTERM shut the node down cleanly.

The node serves the DHT (`Node.dht`), as every node does by default, unless `--no-dht`
is given (`NodeConfig(dht=False)`): a topic's records are stored on the node whose key
is closest to the topic id, whoever that is, so a relay without it is a hole in the
DHT of the apps around it (docs/dht.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import trio

from ._util import installed_version
from .dht import Dht
from .discovery.beacon import INTERFACE_RESCAN_INTERVAL
from .errors import PineconeError
from .events import NodeEvent
from .identity import Identity
from .node import Node, NodeConfig, open_node
from .transports.base import check_process_uri

#: How often `--status-json` is rewritten.
STATUS_INTERVAL = 1.0
#: How often, at most, static peers' state is looked at for dial failures to report.
STATIC_REPORT_INTERVAL = 0.2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pinecone-trio", description="Run a pinecone-trio node.")
    p.add_argument("--version", action="version", version=f"%(prog)s {installed_version()}")
    p.add_argument(
        "--key", required=True, help="ed25519 key file (created with mode 0600 if absent)"
    )
    p.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="URI",
        help="listen on tcp://HOST:PORT or ws://HOST:PORT/PATH (repeatable)",
    )
    p.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="URI",
        help=(
            "static peer to keep connected (repeatable); one that cannot be reached is "
            "reported on stderr and redialled with backoff"
        ),
    )
    p.add_argument("--multicast", action="store_true", help="find peers on the LAN by multicast")
    p.add_argument(
        "--multicast-interface",
        action="append",
        default=None,
        metavar="NAME",
        help="limit multicast discovery to these interfaces (repeatable)",
    )
    p.add_argument(
        "--no-dht",
        action="store_true",
        help=(
            "do not run the DHT service (it runs by default). Costs the others: the DHT "
            "stores each topic on the node whose key is closest to it, so topics whose "
            "home is this node's key can then be neither announced nor looked up by "
            "anyone; the node still relays their traffic. Turn it off only in an "
            "overlay whose apps use no DHT"
        ),
    )
    p.add_argument(
        "--status-json", metavar="PATH", help="rewrite PATH with the status every second"
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help=(
            "print only the startup lines (public key, the URIs actually bound, e.g. "
            "the port picked for :0, multicast discovery) and errors; no DHT, peer, "
            "root or shutdown lines"
        ),
    )
    return p


def write_json_atomically(path: str, value: Any) -> None:
    """Replace `path` with `value` as JSON, so readers never see a half-written file.

    Raises:
        OSError: if `path` cannot be written; its `filename` is `path`, not the
            temporary file written first.
    """
    try:
        _write_json_atomically(path, value)
    except OSError as exc:
        if exc.errno is None:
            raise OSError(f"cannot write status file {path}: {exc}") from exc
        raise OSError(exc.errno, f"cannot write status file: {exc.strerror or exc}", path) from exc


def _write_json_atomically(path: str, value: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _os_error_text(exc: OSError) -> str:
    """One line for an OSError: its message, and the file it is about if it names one."""
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


async def _print_events(node: Node, quiet: bool) -> None:
    async for event in node.events():
        _say(quiet, _describe(event))


def _describe(event: NodeEvent) -> str:
    return str(event)


async def _report_static_peers(node: Node) -> None:
    # The node redials a static peer it cannot reach with backoff, silently: say so on
    # stderr, once per peer and distinct error (again after it was connected). A drop
    # of a connected peer is not repeated here: the PeerDisconnected event said it.
    told: dict[str, str] = {}  # uri -> the error last reported
    was_connected: set[str] = set()
    while True:
        for peer in node.status()["static_peers"]:
            uri, state, error = peer["uri"], peer["state"], peer["last_error"]
            if state == "connected":
                told.pop(uri, None)
                was_connected.add(uri)
            elif state == "waiting" and error and told.get(uri) != error:
                told[uri] = error
                if uri in was_connected:
                    was_connected.discard(uri)
                    continue
                retry = peer["next_attempt_in"]
                print(
                    f"pinecone-trio: cannot connect to {uri}: {error} (retrying in {retry:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
        await node.wait_changed()
        # A busy node changes state per frame: look at most this often. A static peer
        # waits at least half a second between dials, so no failure goes unseen.
        await trio.sleep(STATIC_REPORT_INTERVAL)


async def _write_status(node: Node, path: str) -> None:
    # A status file that cannot be written (directory gone, disk full) is reported,
    # once per distinct error, but does not stop the relay.
    last_error = ""
    while True:
        try:
            await trio.to_thread.run_sync(write_json_atomically, path, node.status())
        except OSError as exc:
            error = _os_error_text(exc)
            if error != last_error:
                print(f"pinecone-trio: {error}", file=sys.stderr, flush=True)
            last_error = error
        else:
            last_error = ""
        await trio.sleep(STATUS_INTERVAL)


async def _run(args: argparse.Namespace) -> None:
    identity = Identity.load_or_create(args.key)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_node(
            identity,
            listen=args.listen,
            static_peers=args.connect,
            multicast=args.multicast,
            multicast_interfaces=args.multicast_interface,
            config=NodeConfig(dht=not args.no_dht),
        ) as node:
            # Printed even with --quiet: with port 0 this is the only way to learn the
            # port (besides --status-json), and it is said once.
            print(f"public key {node.public_key.hex()}", flush=True)
            for uri in node.listen_uris:
                print(f"listening on {uri}", flush=True)
            for line in _describe_peering(node, args):
                print(line, flush=True)
            _say(args.quiet, _describe_dht(node.dht))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_print_events, node, args.quiet)
                if args.connect:
                    nursery.start_soon(_report_static_peers, node)
                if args.status_json:
                    nursery.start_soon(_write_status, node, args.status_json)
                async for signum in signals:
                    _say(args.quiet, f"{signal.Signals(signum).name}: shutting down")
                    nursery.cancel_scope.cancel()
                    break
        if args.status_json:
            try:
                write_json_atomically(args.status_json, {**node.status(), "stopped": True})
            except OSError as exc:  # reported; the shutdown itself was clean
                print(f"pinecone-trio: {_os_error_text(exc)}", file=sys.stderr)


def _describe_peering(node: Node, args: argparse.Namespace) -> list[str]:
    """The startup lines besides `listening on`: LAN discovery (its interfaces and the
    ports LAN peers dial), or that the node accepts no peerings at all."""
    multicast = node.status()["multicast"]
    if multicast is not None:
        families = [("IPv4", multicast["interfaces"], f"tcp://0.0.0.0:{multicast['port']}")]
        if multicast["port_v6"] is not None:
            v6 = f"tcp://[::]:{multicast['port_v6']}"
            families.append(("IPv6", multicast["interfaces_v6"], v6))
        ports = ", ".join(uri for _, _, uri in families)
        if not any(names for _, names, _ in families):
            among = (
                f" among {', '.join(args.multicast_interface)}" if args.multicast_interface else ""
            )
            where = (
                f"no usable interface yet{among} (up, multicast, with an address; looked "
                f"for again every {INTERFACE_RESCAN_INTERVAL:g} s)"
            )
        else:
            where = ", ".join(
                f"{', '.join(names) or 'no interface'} ({family})" for family, names, _ in families
            )
        return [f"multicast discovery on {where}; LAN peerings accepted on {ports}"]
    if node.listen_uris:
        return []
    if args.connect:
        return ["accepting no peerings (no --listen or --multicast): only dialling --connect"]
    return ["no --listen, --connect or --multicast: this node peers with nobody"]


def _describe_dht(dht: Dht | None) -> str:
    """The startup line about the DHT service: on, or off and what that costs others."""
    if dht is not None:
        return "dht on: stores and answers the DHT topics homed at this key"
    return "dht off (--no-dht): DHT topics homed at this key can be neither announced nor found"


def check_uri(option: str, uri: str) -> None:
    """Refuse a URI this command cannot use, saying which option gave it (memory://
    links exist only inside one Python process).

    Raises:
        ValueError: `uri` is not a usable tcp:// or ws:// URI.
    """
    check_process_uri(option, uri)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        for option, uris in (("--listen", args.listen), ("--connect", args.connect)):
            for uri in uris:
                check_uri(option, uri)
        trio.run(_run, args)
    except PineconeError as exc:
        print(f"pinecone-trio: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"pinecone-trio: {_os_error_text(exc)}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a malformed URI or option value
        print(f"pinecone-trio: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
