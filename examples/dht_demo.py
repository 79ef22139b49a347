"""Peers find each other by topic on the DHT, then talk over end-to-end sessions.

Run:  python examples/dht_demo.py [--nodes 12] [--seed N]

Starts N nodes in this process, peered over real TCP on 127.0.0.1 in a random
connected graph, and waits for the overlay to converge. Every node serves the DHT (a
node does by default: `node.dht`). Two nodes ("alice" and "bob") announce the topic
"demo/chat" on it and listen for "/chat/v1" streams; a third ("carol") looks the topic
up, opens an encrypted session stream to every peer it found and exchanges a message
with each. Every step prints what happened and how long
it took; the program exits 0 on its own (within about 30 s), 1 if anything fails.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable

import trio

from pinecone_trio.dht import Dht
from pinecone_trio.identity import PublicKey
from pinecone_trio.node import Node, NodeConfig
from pinecone_trio.router import RouterConfig
from pinecone_trio.testing import open_network

TOPIC = "demo/chat"
PROTOCOL = "/chat/v1"
DEMO_TIMEOUT = 30.0
MAX_LINE = 1024
#: Snake bootstraps every second instead of Pinecone's 5 s, so the fresh overlay
#: converges in a few seconds (a demo starts every node at once; a real network doesn't).
DEMO_CONFIG = NodeConfig(router=RouterConfig(bootstrap_interval=1.0))


def random_connected_edges(n: int, extra: int, rng: random.Random) -> list[tuple[str, str]]:
    """A random spanning tree over n0..n{n-1} plus `extra` random chords."""
    names = [f"n{i}" for i in range(n)]
    edges = [(names[i], names[rng.randrange(i)]) for i in range(1, n)]
    for _ in range(extra * 10):
        if extra == 0:
            break
        a, b = rng.sample(names, 2)
        if (a, b) not in edges and (b, a) not in edges:
            edges.append((a, b))
            extra -= 1
    return edges


async def read_line(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        if len(data) > MAX_LINE:
            raise ValueError("line too long")
        chunk = await stream.receive_some(MAX_LINE)
        if not chunk:
            break
        data += chunk
    return data.rstrip(b"\n")


async def chat_server(
    name: str, node: Node, say: Callable[..., None], *, task_status: trio.TaskStatus[None]
) -> None:
    """Answer every /chat/v1 stream with one greeting line."""
    async with node.listen(PROTOCOL) as listener:
        task_status.started()
        while True:
            stream = await listener.accept()
            async with stream:
                line = await read_line(stream)
                say(f"{name}: {stream.remote_key.short()}… says {line.decode()!r}")
                await stream.send_all(f"hello from {name}\n".encode())


async def announce_and_serve(
    name: str,
    node: Node,
    dht: Dht,
    say: Callable[..., None],
    *,
    task_status: trio.TaskStatus[None],
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(chat_server, name, node, say)
        start = time.perf_counter()
        async with dht.announce(TOPIC, data=name.encode()) as announcement:
            ms = (time.perf_counter() - start) * 1000
            state = "acknowledged" if announcement.placed else "NOT acknowledged"
            say(f"{name}: announced {TOPIC!r} ({state} by the closest node in {ms:.1f} ms)")
            task_status.started()
            await trio.sleep_forever()


async def main(n: int, seed: int) -> int:
    rng = random.Random(seed)
    t0 = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.3f} s] {message}", flush=True)

    edges = random_connected_edges(n, n // 2, rng)
    with trio.fail_after(DEMO_TIMEOUT):
        async with open_network(edges, transport="tcp", config=DEMO_CONFIG) as net:
            say(f"{n} nodes up on 127.0.0.1, {len(edges)} TCP peerings")
            await net.wait_converged()
            say("overlay converged (one root, every snake neighbour right)")
            names = list(net.nodes)
            alice, bob, carol = rng.sample(names, 3)
            roles = {alice: "alice", bob: "bob", carol: "carol"}
            for node_name, role in roles.items():
                say(f"{role:5} is {node_name}, key {net[node_name].public_key.short()}…")
            # Every node serves the DHT from its start (NodeConfig.dht, the default).
            dhts: dict[str, Dht] = {}
            for node_name in names:
                dht = net[node_name].dht
                assert dht is not None
                dhts[node_name] = dht
            say(f"DHT served by all {n} nodes (node.dht: every node's, by default)")
            async with trio.open_nursery() as nursery:
                for node_name in (alice, bob):
                    await nursery.start(
                        announce_and_serve, roles[node_name], net[node_name], dhts[node_name], say
                    )
                start = time.perf_counter()
                records = await dhts[carol].lookup(TOPIC, timeout=5)
                ms = (time.perf_counter() - start) * 1000
                say(f"carol: lookup {TOPIC!r} found {len(records)} peers in {ms:.1f} ms")
                found: dict[PublicKey, str] = {}
                for record in records:
                    say(f"carol:   {record.public_key.short()}… data={record.data!r}")
                    if record.public_key != net[carol].public_key:
                        found[record.public_key] = record.data.decode(errors="replace")
                expected = {net[alice].public_key, net[bob].public_key}
                if set(found) != expected:
                    say("carol: did not find both announcers")
                    return 1
                for key, peer in found.items():
                    start = time.perf_counter()
                    stream = await net[carol].connect(key, PROTOCOL)
                    ms = (time.perf_counter() - start) * 1000
                    say(f"carol: session stream to {peer} open in {ms:.1f} ms")
                    async with stream:
                        await stream.send_all(b"hi from carol\n")
                        reply = await read_line(stream)
                    ms = (time.perf_counter() - start) * 1000
                    say(f"carol: {peer} replied {reply.decode()!r} ({ms:.1f} ms after connect)")
                    if reply != f"hello from {peer}".encode():
                        return 1
                nursery.cancel_scope.cancel()
    say("done")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=12)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3")
    print(f"dht demo: {args.nodes} nodes, seed {seed}")
    try:
        return trio.run(main, args.nodes, seed)
    except trio.TooSlowError:
        print(f"timed out after {DEMO_TIMEOUT} s", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
