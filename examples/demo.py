"""The whole stack in one program: a notes database replicated across an overlay.

Run:  python examples/demo.py

Three pinecone-trio nodes start on 127.0.0.1: alice, a relay, and carol. Alice and
carol each peer only with the relay, so everything between them crosses two Noise-XX
links and the relay in the middle, which sees nothing: carol's stream to alice is an
end-to-end Noise-XX session, found by alice's public key alone.

Alice keeps notes in a HAMT (a key-value store) whose every change is a signed block
of a hyperlog stored in SQLite. Carol knows only the log's key. Over her session
stream she replicates the log: she reads one note sparsely (fetching only the blocks
on that key's path, each verified against alice's signature), then downloads and
verifies the whole log, then watches alice's next note arrive live.

Everything is cleaned up on exit; the program ends by itself in a few seconds.
"""

from __future__ import annotations

import sys
import tempfile
import time
from contextlib import aclosing
from pathlib import Path

import trio

import hamt
from hyperlog.log import open_store
from hyperlog.replication import replicate, replication_for
from pinecone_trio import Identity, SessionStream, open_node

PROTOCOL = "/notes/replicate/v1"
NOTES = 2_000
SINGLE_PUTS = 300
DEMO_TIMEOUT = 90.0


def say(started: float, who: str, text: str) -> None:
    print(f"{time.perf_counter() - started:7.3f}s  {who:<6} {text}", flush=True)


async def main(workdir: Path) -> None:
    started = time.perf_counter()
    async with (
        open_node(Identity.generate(), listen=["tcp://127.0.0.1:0"]) as relay,
        open_node(Identity.generate()) as alice,
        open_node(Identity.generate()) as carol,
        open_store(workdir / "alice") as alice_store,
        open_store(workdir / "carol") as carol_store,
    ):
        say(started, "relay", f"{relay.public_key.short()}… listening on {relay.listen_uris[0]}")
        await alice.connect(relay.listen_uris[0])
        await carol.connect(relay.listen_uris[0])
        say(started, "alice", f"{alice.public_key.short()}… peered with the relay")
        say(started, "carol", f"{carol.public_key.short()}… peered with the relay")

        # Alice writes her notes: 2,000 in one batch (one signed block), then 300 more
        # one at a time (one signed block each), as a notes app would.
        log = await alice_store.create_log()
        async with hamt.open_hamt(log) as db:
            async with db.batch() as batch:
                for i in range(NOTES):
                    batch.put(f"notes/{i:05d}", f"note number {i}".encode())
            for i in range(SINGLE_PUTS):
                await db.put(f"todo/{i:03d}", f"thing to do #{i}".encode())
            say(
                started,
                "alice",
                f"wrote {NOTES + SINGLE_PUTS} notes: a log of {log.length}"
                f" signed blocks, key {log.key.hex()[:16]}…",
            )

            async with alice.listen(PROTOCOL) as listener, trio.open_nursery() as nursery:

                async def serve(stream: SessionStream) -> None:
                    say(started, "alice", f"session from {stream.remote_key.short()}…: replicating")
                    async with stream, replicate(stream, log) as session:
                        await session.wait_closed()

                async def accept() -> None:
                    while True:
                        nursery.start_soon(serve, await listener.accept())

                nursery.start_soon(accept)

                # Carol knows alice's public key and the log's key, nothing else.
                stream = await carol.connect(alice.public_key, PROTOCOL)
                say(started, "carol", "end-to-end session to alice open (2 hops via the relay)")
                reader = await carol_store.open_log(log.key)
                async with stream, replicate(stream, reader):
                    repl = replication_for(reader)
                    await repl.update()
                    say(
                        started,
                        "carol",
                        f"alice's log has {reader.length} blocks (signed head verified)",
                    )

                    async with hamt.open_hamt(reader) as view:
                        t = time.perf_counter()
                        value = await view.get("todo/123")
                        ms = 1000 * (time.perf_counter() - t)
                        held = reader.statistics().blocks_held
                        say(
                            started,
                            "carol",
                            f"sparse get todo/123 = {value!r} in {ms:.1f} ms,"
                            f" holding {held} of {reader.length} blocks",
                        )
                        assert value == b"thing to do #123"

                        progress = await repl.download(0, reader.length)
                        await reader.verify()
                        say(
                            started,
                            "carol",
                            f"downloaded the other {progress.blocks} blocks"
                            f" ({progress.bytes} bytes); every hash and the signature verified",
                        )

                        async with aclosing(view.watch()) as changes:
                            await db.put("todo/live", b"written while carol watches")
                            with trio.fail_after(30):
                                async for change in changes:
                                    if change.key == "todo/live":
                                        say(
                                            started,
                                            "carol",
                                            f"live: {change.key} ="
                                            f" {change.value!r} (version {change.version})",
                                        )
                                        break
                        assert await view.get("notes/01234") == b"note number 1234"
                nursery.cancel_scope.cancel()
    say(started, "demo", "done: nodes closed, links closed, stores closed")


async def bounded(workdir: Path) -> None:
    with trio.fail_after(DEMO_TIMEOUT):
        await main(workdir)


def run() -> int:
    with tempfile.TemporaryDirectory(prefix="pinecone-trio-demo-") as tmp:
        try:
            trio.run(bounded, Path(tmp))
        except Exception as exc:  # the demo reports any failure in one line
            print(f"demo failed: {exc!r}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
