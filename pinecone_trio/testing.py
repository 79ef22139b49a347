"""Helpers for testing applications on pinecone-trio: whole networks in one process.

```python
async with open_network([("a", "b"), ("b", "c")]) as net:   # memory links by default
    await net.wait_converged()
    await net["a"].send(net["c"].public_key, b"hi")
```

Use `trio.testing.MockClock(autojump_threshold=0)` (pytest-trio's `autojump_clock`)
with memory links and the network runs in virtual time: a minute of routing passes in
milliseconds. With `transport="tcp"` the nodes peer over real loopback sockets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

import trio

from .identity import Identity, PublicKey
from .node import Node, NodeConfig, open_node


class PassThroughStream(trio.abc.Stream):
    """Forwards every call to `inner` and hides its type.

    `NoiseLink` writes a `trio.SocketStream`'s descriptor directly; wrapping the stream
    in this makes it take the generic `send_all`/`receive_some` path instead (tests of
    that path, and the link benchmark's A/B).
    """

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


#: Listen URIs per transport; port 0 / an empty name pick a free address.
_LISTEN: Final = {
    "memory": "memory://",
    "tcp": "tcp://127.0.0.1:0",
    "ws": "ws://127.0.0.1:0/pinecone",
}


class Network:
    """Nodes by name, plus conditions to wait on."""

    def __init__(self) -> None:
        self.nodes: dict[str, Node] = {}
        self.edges: list[tuple[str, str]] = []

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def converged(self, names: Sequence[str] | None = None) -> bool:
        """Whether the named nodes (default: all) agree on the root, and each one's
        descending snake neighbour is its true predecessor in key order among them."""
        nodes = [self.nodes[n] for n in (names or list(self.nodes))]
        statuses = [n.status() for n in nodes]
        top = max(n.public_key for n in nodes).hex()
        if any(s.get("root_key") != top for s in statuses):
            return False
        ordered = sorted(nodes, key=lambda n: n.public_key)
        expected = {
            ordered[i].public_key.hex(): ordered[i - 1].public_key.hex()
            for i in range(1, len(ordered))
        }
        for s in statuses:
            want = expected.get(s["public_key"])
            if s["snake"]["descending_key"] != want:
                return False
        return True

    async def wait_converged(self, names: Sequence[str] | None = None) -> None:
        """Wait until `converged(names)`; bound it with `trio.fail_after`.

        One watcher per node re-checks the whole network on each of that node's changes
        (`Node.wait_for` checks and parks with no checkpoint in between), so a change
        that lands while the watchers are being started is never missed.
        """
        nodes = [self.nodes[n] for n in (names or list(self.nodes))]
        if self.converged(names):
            return
        async with trio.open_nursery() as nursery:

            async def watch(node: Node) -> None:
                await node.wait_for(lambda: self.converged(names))
                nursery.cancel_scope.cancel()

            for node in nodes:
                nursery.start_soon(watch, node)


@asynccontextmanager
async def open_network(
    edges: Sequence[tuple[str, str]],
    *,
    transport: str = "memory",
    config: NodeConfig | None = None,
    identities: dict[str, Identity] | None = None,
) -> AsyncIterator[Network]:
    """Start one node per name in `edges` and peer each edge (the first name dials).

    Every node listens on `transport` (memory, tcp or ws) at a free address.
    """
    net = Network()
    names: list[str] = []
    for a, b in edges:
        for name in (a, b):
            if name not in names:
                names.append(name)
    async with AsyncExitStack() as stack:
        for name in names:
            identity = (identities or {}).get(name) or Identity.generate()
            net.nodes[name] = await stack.enter_async_context(
                open_node(identity, listen=[_LISTEN[transport]], config=config)
            )
        for a, b in edges:
            await net.nodes[a].connect(net.nodes[b].listen_uris[0])
            net.edges.append((a, b))
        yield net


def key_of(net: Network, name: str) -> PublicKey:
    return net[name].public_key
