"""A local-first notes app for two people: one writes, the other reads, over the overlay.

The writer keeps notes (KEY=VALUE) in a HAMT stored in a signed hyperlog in its DIR,
announces a topic on the DHT (the record carries the log's key) and serves the log to
every overlay stream opened with protocol /notes/v1. The reader knows only the topic: it
looks the writer up, opens an end-to-end session to it and replicates sparsely into its
own DIR. `--get KEY` fetches only the blocks on that key's path; otherwise the reader
prints every note and, with `--follow`, each new one as it is typed, through lost
connections (`hyperlog.follow`: a writer that restarts or loses its network is dialled
again, and only what is missing is fetched).

Two laptops (A writes, B reads; on one LAN `--multicast` is enough, else `--peer`):

    A$ python examples/notes.py write notes/ --listen tcp://0.0.0.0:7400 --multicast
    milk=2 litres                      (a line per note: KEY=VALUE puts, -KEY deletes)
    B$ python examples/notes.py read notes/ --multicast --follow
    B$ python examples/notes.py read notes/ --peer tcp://LAPTOP_A:7400 --get milk

One laptop, two terminals (each program needs a DIR of its own):

    1$ python examples/notes.py write /tmp/notes-w --listen tcp://127.0.0.1:7400
    2$ python examples/notes.py read /tmp/notes-r --peer tcp://127.0.0.1:7400 --follow

Each DIR holds the node's key (node.key) and a hyperlog store: the writer's log, or the
reader's sparse replica of it; the next run picks up where the last one left off. Pick
your own --topic on a shared network. The writer serves until Ctrl-C, also after its
input ends (--exit-at-eof stops it there). Notes go to stdout, status to stderr. Exit
status: 0; 1 after an error (one line on stderr) or for a --get KEY that is not set;
130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

import trio

import hamt
import hyperlog
import pinecone_trio
from hyperlog import (
    ConnectedEvent,
    DialFailedEvent,
    FollowEvent,
    Log,
    LostEvent,
    ReplicationSession,
    follow,
    open_store,
    replicate,
    replication_for,
)
from pinecone_trio import (
    Dht,
    Identity,
    Node,
    PeerRecord,
    PublicKey,
    SessionStream,
    open_dht,
    open_node,
)

PROTOCOL = "/notes/v1"
KEY_FILE = "node.key"
T = TypeVar("T")


class NotesError(Exception):
    """A failure this program explains in one line."""


#: What ends the program with one line on stderr (anything else is a bug: a traceback).
ERRORS = (NotesError, hyperlog.HyperlogError, hamt.HamtError, pinecone_trio.PineconeError, OSError)


def say(message: str) -> None:
    print(f"notes: {message}", file=sys.stderr, flush=True)


def show(key: str, value: bytes | None) -> str:
    return f"deleted {key}" if value is None else f"{key} = {value.decode(errors='replace')}"


# --- the writer ------------------------------------------------------------------------


async def stdin_lines() -> AsyncIterator[str]:
    """The lines typed on stdin, each as soon as it is read. `os.read` in a thread, not
    `sys.stdin`: a read blocked on a terminal holds no lock, so Ctrl-C ends it."""
    pending = b""
    while data := await trio.to_thread.run_sync(os.read, 0, 65536, abandon_on_cancel=True):
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            yield line.decode(errors="replace").rstrip("\r")
    if pending:
        yield pending.decode(errors="replace")


async def apply(db: hamt.Hamt[bytes], line: str) -> str:
    """Put or delete what one line says (one signed block); return what to print."""
    try:
        if line.startswith("-"):
            key = line[1:].strip()
            return f"deleted {key}" if await db.delete(key) else f"{key} was not set"
        key, sep, value = line.partition("=")
        if not sep:
            return "? type KEY=VALUE to put a note, -KEY to delete one"
        await db.put(key.strip(), value.encode())
        return f"put {key.strip()} (version {db.version})"
    except (hamt.InvalidKeyError, hamt.ValueTooLargeError) as exc:
        return f"refused: {exc}"


async def serve(node: Node, log: Log, *, task_status: trio.TaskStatus[None]) -> None:
    """Replicate `log` with whoever opens a /notes/v1 stream to us, many at once."""
    async with node.listen(PROTOCOL) as listener, trio.open_nursery() as nursery:
        task_status.started()
        while True:
            nursery.start_soon(serve_one, await listener.accept(), log)


async def serve_one(stream: SessionStream, log: Log) -> None:
    say(f"{stream.remote_key.short()}… is reading")
    async with stream, replicate(stream, log) as session:  # the reader asks, we answer
        await session.wait_closed()
    say(f"{stream.remote_key.short()}… left")


async def announce(dht: Dht, topic: str, log: Log) -> None:
    async with dht.announce(topic, data=log.key) as announcement:
        if announcement.placed:
            how = "acknowledged"
        elif announcement.acknowledged:
            how = "alone so far: sent again on joining"
        else:
            how = "not acknowledged yet: retrying"
        say(f"announced {topic!r} on the DHT ({how})")
        await trio.sleep_forever()  # findable while this runs; withdrawn when cancelled


async def write(args: argparse.Namespace) -> int:
    async with open_store(args.dir, page_size=4096) as store:  # 4 KiB pages suit small puts
        log = await store.default_log() if store.keys() else await store.create_log()
        if not log.writable:
            raise NotesError(f"{args.dir} holds a reader's replica: write into another DIR")
        identity = Identity.load_or_create(args.dir / KEY_FILE)
        async with (
            open_node(
                identity, listen=args.listen, static_peers=args.peer, multicast=args.multicast
            ) as node,
            open_dht(node) as dht,
            hamt.open_hamt(log) as db,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(serve, node, log)
            where = ", ".join(node.listen_uris) or "no address (use --listen to be dialled)"
            say(f"node {node.public_key.short()}… listening on {where}")
            say(f"log {log.key.hex()[:16]}…, {log.length} blocks; serving {PROTOCOL}")
            nursery.start_soon(announce, dht, args.topic, log)
            async for line in stdin_lines():
                if line.strip():
                    print(await apply(db, line), flush=True)
            if args.exit_at_eof:
                nursery.cancel_scope.cancel()
            else:
                say("input ended; still serving (Ctrl-C to stop)")
    return 0


# --- the reader ------------------------------------------------------------------------


async def find_writer(node: Node, dht: Dht, topic: str, wait: float) -> PeerRecord:
    """Join the overlay, then look `topic` up until someone announces it or time is up."""
    deadline = trio.current_time() + wait
    with trio.move_on_at(deadline):
        await node.wait_for(lambda: any(node.snake_neighbours()))
    if not any(node.snake_neighbours()):
        tried = "; ".join(f"{p['uri']}: {p['last_error']}" for p in node.status()["static_peers"])
        raise NotesError(f"no peer reachable in {wait:g} s ({tried or 'none found on the LAN'})")
    said = False
    with trio.move_on_at(deadline):
        while True:
            records = [
                r
                for r in await dht.lookup(topic, timeout=3, enough=1)
                if r.public_key != node.public_key and len(r.data) == 32  # data: a log key
            ]
            if records:
                if len(records) > 1:
                    say(f"{len(records)} writers announce {topic!r}: reading the freshest")
                return records[0]
            if not said:
                say(f"nobody announces {topic!r} yet; looking again (Ctrl-C to stop)")
                said = True
            await trio.sleep(1)
    raise NotesError(f"topic {topic!r} not found in {wait:g} s: is a writer announcing it?")


async def check_replica(store: hyperlog.Store, where: Path, key: bytes | None = None) -> None:
    """Refuse a DIR holding a writer's own log, or a replica of another log than `key`."""
    for stored in store.keys():  # noqa: SIM118 - a Store, not a dict
        if (await store.open_log(stored, create=False)).writable:
            raise NotesError(f"{where} holds a writer's own log: read into another DIR")
        if key is not None and stored != key:
            raise NotesError(
                f"{where} holds a replica of log {stored.hex()[:16]}…, but the topic's writer"
                f" has log {key.hex()[:16]}…: read into another DIR"
            )


async def while_open(session: ReplicationSession, work: Awaitable[T]) -> T:
    """Await `work`; if the replication session ends first, say the writer went away."""
    async with trio.open_nursery() as nursery:

        async def stop_when_closed() -> None:
            await session.wait_closed()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_closed)
        result = await work
        nursery.cancel_scope.cancel()
        return result
    raise NotesError(f"the writer went away ({session.error or 'the session closed'})")


async def read(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    async with open_store(args.dir, page_size=4096) as store:
        await check_replica(store, args.dir)
        identity = Identity.load_or_create(args.dir / KEY_FILE)
        async with (
            open_node(identity, static_peers=args.peer, multicast=args.multicast) as node,
            open_dht(node) as dht,
        ):
            say(f"node {node.public_key.short()}… looking up {args.topic!r}")
            record = await find_writer(node, dht, args.topic, args.wait)
            await check_replica(store, args.dir, record.data)
            log = await store.open_log(record.data)  # a sparse replica: holds what it fetched
            say(
                f"found writer {record.public_key.short()}…, log {record.data.hex()[:16]}…,"
                f" in {time.perf_counter() - started:.2f} s"
            )
            if args.follow:
                return await follow_notes(args, node, record.public_key, log, started)
            stream = await node.connect(record.public_key, PROTOCOL)  # end-to-end Noise
            async with stream, replicate(stream, log) as session:
                return await while_open(session, read_notes(args, log, started))


async def follow_notes(
    args: argparse.Namespace, node: Node, writer: PublicKey, log: Log, started: float
) -> int:
    """`read --follow`: like one connection, but a lost one is dialled again (with a
    backoff) until Ctrl-C; each comes back fetching only what is missing."""
    outage = False

    def tell(event: FollowEvent) -> None:
        nonlocal outage
        if isinstance(event, LostEvent) and not outage:
            outage = True
            why = "it closed the session" if event.error is None else str(event.error)
            say(f"lost the writer ({why}); dialling it again")
        elif isinstance(event, DialFailedEvent) and not outage:
            outage = True
            say(f"cannot reach the writer ({event.error}); dialling it again")
        elif isinstance(event, ConnectedEvent) and event.again and outage:
            outage = False
            say("the writer is back")

    async def dial() -> SessionStream:
        return await node.connect(writer, PROTOCOL)  # end-to-end Noise

    def overlay_may_mend(error: BaseException, served_before: bool) -> bool:
        # Routes re-form after a writer restarts: "unreachable" waits, like OSError.
        return isinstance(error, OSError | pinecone_trio.PineconeError)

    async with follow(log, dial, on_event=tell, retry_dial=overlay_may_mend) as follower:
        with trio.move_on_after(args.wait):
            await follower.wait_connected()
        if not follower.connected:
            raise NotesError(f"the writer did not serve its log in {args.wait:g} s")
        return await read_notes(args, log, started)


async def read_notes(args: argparse.Namespace, log: Log, started: float) -> int:
    with trio.move_on_after(args.wait):
        await replication_for(log).wait_for_peers()
        await replication_for(log).update()  # the writer's latest signed length
    if log.length == 0:
        raise NotesError(f"the writer did not serve its log in {args.wait:g} s")
    say("every block is verified against the writer's signature before it is used")
    held = log.statistics().blocks_held
    async with hamt.open_hamt(log) as db:
        if args.get is None:
            await list_notes(db, log, args.follow)
            return 0
        with trio.move_on_after(args.wait):
            value = await db.get(args.get)
            fetched = log.statistics().blocks_held - held
            if value is not None:
                print(value.decode(errors="replace"), flush=True)
            say(
                f"{args.get} {'is set' if value is not None else 'is not set'}: fetched"
                f" {fetched} of {log.length} blocks, {time.perf_counter() - started:.2f} s"
                " after start"
            )
            return 0 if value is not None else 1
    raise NotesError(f"the writer did not answer in {args.wait:g} s")


async def list_notes(db: hamt.Hamt[bytes], log: Log, follow: bool) -> None:
    """Print every note, sorted by key; then, with `follow`, each change as it comes."""
    snapshot = db.snapshot()
    async with aclosing(db.watch()) as changes:  # from now: what is typed while we list
        notes = sorted([item async for item in snapshot.items()])
        for key, value in notes:
            print(show(key, value), flush=True)
        held = log.statistics().blocks_held
        plural = "" if len(notes) == 1 else "s"
        say(f"{len(notes)} note{plural} ({held} of {log.length} blocks held)")
        if follow:
            say("following live updates (Ctrl-C to stop)")
            async for change in changes:
                print(show(change.key, change.value), flush=True)


def cli() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    writer = commands.add_parser("write", help="put the notes typed on stdin; serve them")
    reader = commands.add_parser("read", help="find a writer by topic; read its notes")
    for sub in (writer, reader):
        sub.add_argument("dir", type=Path, metavar="DIR", help="its store and node key")
        sub.add_argument("--peer", action="append", default=[], help="tcp://HOST:PORT")
        sub.add_argument("--multicast", action="store_true", help="find peers on the LAN")
        sub.add_argument("--topic", default="notes/shared", help="default: %(default)s")
    writer.add_argument("--listen", action="append", default=[], help="tcp://0.0.0.0:PORT")
    writer.add_argument("--exit-at-eof", action="store_true", help="stop when stdin ends")
    reader.add_argument("--wait", type=float, default=30.0, help="seconds to find the writer")
    mode = reader.add_mutually_exclusive_group()
    mode.add_argument("--get", metavar="KEY", help="print one note, fetched sparsely")
    mode.add_argument("--follow", action="store_true", help="then print new notes as typed")
    args = parser.parse_args()
    if args.command == "read" and not (args.peer or args.multicast):
        parser.error("read needs --peer URI or --multicast to reach the writer")
    status = 1
    try:
        status = trio.run(write if args.command == "write" else read, args)
    except* KeyboardInterrupt:
        say("stopped")
        status = 130
    except* ERRORS as group:
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        say(f"error: {error}")
    return status


if __name__ == "__main__":
    sys.exit(cli())
