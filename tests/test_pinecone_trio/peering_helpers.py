"""A bare `Peering` over any stream, with its router inbox, for peering-level tests."""

from __future__ import annotations

import trio

from pinecone_trio import Identity
from pinecone_trio.peering import InboxItem, Peering, SendBudget
from pinecone_trio.router.actions import PeerType


def make_peering(
    stream: trio.abc.Stream,
    *,
    port: int = 1,
    keepalives: bool = True,
    budget: SendBudget | None = None,
    local_key: bytes = b"",
) -> tuple[Peering, trio.MemoryReceiveChannel[InboxItem]]:
    """A peering over `stream` with a random peer key, and the inbox it feeds."""
    send, recv = trio.open_memory_channel[InboxItem](16)
    peering = Peering(
        link=stream,
        port=port,
        public_key=Identity.generate().public_key,
        uri="test://",
        peer_type=PeerType.REMOTE,
        zone="test",
        outbound=True,
        inbox=send,
        keepalives=keepalives,
        local_key=local_key,
        budget=budget,
    )
    return peering, recv
