"""Range downloads of big blocks with the peer's leaf nodes (`RangeRequest.leaves`).

The reader builds its block proofs' uncles from the leaves the peer sends instead of
hashing every value twice; the values are still hashed once each by the log's
verification, so a wrong leaf or value is refused like any wrong proof and nothing
unverified is stored.
"""

from __future__ import annotations

import dataclasses
import os

import trio
import trio.testing

from hyperlog import wire
from hyperlog.crypto import key_pair
from hyperlog.log import Log, open_store
from hyperlog.replication import caps, replicate, replication_for
from hyperlog.replication.adapter import LogAdapter
from hyperlog.replication.constants import RANGE_LEAVES_MIN_BLOCK

SEED = bytes(range(32))
BIG = RANGE_LEAVES_MIN_BLOCK + 1000


def values(n: int, size: int) -> list[bytes]:
    return [bytes([i % 251]) * size + b"-%d" % i for i in range(n)]


class RecordingAdapter(LogAdapter):
    """Serves normally; remembers the range requests and lets a test edit answers."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.range_requests: list[wire.RangeRequest] = []

    def edit(self, d: wire.RangeData) -> wire.RangeData:
        return d

    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        d = await super().serve(request)
        if isinstance(request, wire.RangeRequest):
            self.range_requests.append(request)
        return self.edit(d) if isinstance(d, wire.RangeData) else d


class WrongLeaf(RecordingAdapter):
    """Flips a bit of one leaf hash (an odd block's: it is a block proof's uncle)."""

    def edit(self, d: wire.RangeData) -> wire.RangeData:
        leaves = list(d.leaves)
        n = leaves[5]
        leaves[5] = wire.Node(n.index, n.size, bytes([n.hash[0] ^ 1]) + n.hash[1:])
        return dataclasses.replace(d, leaves=tuple(leaves))


class WrongFirstLeaf(RecordingAdapter):
    """Flips a bit of block 0's leaf hash: no proof uses it (the log hashes the value)."""

    def edit(self, d: wire.RangeData) -> wire.RangeData:
        n = d.leaves[0]
        first = wire.Node(n.index, n.size, bytes([n.hash[0] ^ 1]) + n.hash[1:])
        return dataclasses.replace(d, leaves=(first, *d.leaves[1:]))


class WrongValue(RecordingAdapter):
    """Sends the right leaves but flips a byte of the value of block 3 of each range."""

    def edit(self, d: wire.RangeData) -> wire.RangeData:
        vs = list(d.values)
        vs[3] = bytes([vs[3][0] ^ 1]) + vs[3][1:]
        return dataclasses.replace(d, values=tuple(vs))


class UnaskedLeaves(RecordingAdapter):
    """Adds leaves to every range answer, asked for or not."""

    def edit(self, d: wire.RangeData) -> wire.RangeData:
        first = d.node - (d.node + 1 & -(d.node + 1)) + 1  # left span
        leaves = tuple(wire.Node(first + 2 * k, len(v), bytes(32)) for k, v in enumerate(d.values))
        return dataclasses.replace(d, leaves=leaves)


class ShiftedLeaves(RecordingAdapter):
    """Sends leaves whose indices are not the blocks'."""

    def edit(self, d: wire.RangeData) -> wire.RangeData:
        return dataclasses.replace(
            d, leaves=tuple(wire.Node(n.index + 2, n.size, n.hash) for n in d.leaves)
        )


async def _download(writer: Log, reader: Log, served: RecordingAdapter) -> BaseException | None:
    """Download everything from `served`; return the session's error (None if none)."""
    rep = replication_for(reader)
    a, b = trio.testing.memory_stream_pair()
    async with replicate(a, served), replicate(b, reader) as session:
        await rep.update()
        async with trio.open_nursery() as n:

            async def fetch() -> None:
                await rep.download(0, writer.length)
                n.cancel_scope.cancel()

            n.start_soon(fetch)
            await session.wait_closed()
            n.cancel_scope.cancel()
        return session.error


async def _download_all(
    writer: Log,
    reader: Log,
    served: RecordingAdapter,
    *,
    writer_features: int = wire.FEATURES,
    reader_features: int = wire.FEATURES,
) -> None:
    """Download everything from `served` into `reader` over a memory stream."""
    with trio.fail_after(60):
        a, b = trio.testing.memory_stream_pair()
        async with (
            replicate(a, served, features=writer_features),
            replicate(b, reader, features=reader_features),
        ):
            rep = replication_for(reader)
            await rep.update()
            await rep.download(0, writer.length)


async def test_big_blocks_ask_for_leaves_and_verify() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(130, BIG))
        reader = await rs.open_log(writer.key)
        served = RecordingAdapter(writer)
        await _download_all(writer, reader, served)
        assert served.range_requests
        assert all(r.leaves for r in served.range_requests)
        for i in range(writer.length):
            assert await reader.get(i) == await writer.get(i)
        await reader.verify()


async def test_small_blocks_hash_on_the_reader() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(200, 1000))
        reader = await rs.open_log(writer.key)
        served = RecordingAdapter(writer)
        await _download_all(writer, reader, served)
        assert served.range_requests
        assert not any(r.leaves for r in served.range_requests)
        assert reader.has_range(0, writer.length)


async def test_wrong_leaf_stores_nothing_of_the_range() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(64, BIG))
        reader = await rs.open_log(writer.key)
        with trio.fail_after(60):
            err = await _download(writer, reader, WrongLeaf(writer))
            assert "invalid range proof" in str(err)
            # The first block's uncles cover the whole range: a wrong leaf fails it,
            # and every later proof relies on a node only it would have made trusted.
            assert reader.statistics().blocks_held == 0
            assert await _download(writer, reader, RecordingAdapter(writer)) is None
        for i in range(writer.length):
            assert await reader.get(i) == await writer.get(i)
        await reader.verify()


async def test_first_leaf_is_never_trusted() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(64, BIG))
        reader = await rs.open_log(writer.key)
        with trio.fail_after(60):
            assert await _download(writer, reader, WrongFirstLeaf(writer)) is None
        for i in range(writer.length):
            assert await reader.get(i) == await writer.get(i)
        await reader.verify()


async def test_wrong_value_is_refused_and_never_stored() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(64, BIG))
        reader = await rs.open_log(writer.key)
        with trio.fail_after(60):
            err = await _download(writer, reader, WrongValue(writer))
        assert "invalid range proof" in str(err)
        # Block 3 fails its own hash; blocks whose proofs verified may be stored.
        assert not reader.has(3)
        for i in range(writer.length):
            if reader.has(i):
                assert await reader.get(i) == await writer.get(i)
        await reader.verify()


async def test_leaves_not_asked_for_are_refused() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(64, 1000))
        reader = await rs.open_log(writer.key)
        with trio.fail_after(60):
            err = await _download(writer, reader, UnaskedLeaves(writer))
        assert "leaves" in str(err)
        assert reader.statistics().blocks_held == 0


async def test_leaves_of_other_blocks_are_refused() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(64, BIG))
        reader = await rs.open_log(writer.key)
        with trio.fail_after(60):
            err = await _download(writer, reader, ShiftedLeaves(writer))
        assert "leaves" in str(err)
        assert reader.statistics().blocks_held == 0


# --- feature negotiation (`Hello.features`) ----------------------------------------


async def test_leaves_are_not_asked_of_a_peer_that_does_not_announce_them() -> None:
    """A peer whose Hello lacks FEATURE_RANGE_LEAVES is asked for plain ranges, and
    the download works (big blocks hashed on the reader as before leaves existed)."""
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(64, BIG))
        reader = await rs.open_log(writer.key)
        served = RecordingAdapter(writer)
        await _download_all(writer, reader, served, writer_features=0)
        assert served.range_requests
        assert not any(r.leaves for r in served.range_requests)
        for i in range(writer.length):
            assert await reader.get(i) == await writer.get(i)
        await reader.verify()


async def test_a_reader_that_does_not_announce_leaves_is_not_sent_them() -> None:
    async with open_store() as ws, open_store() as rs:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(64, BIG))
        reader = await rs.open_log(writer.key)
        served = RecordingAdapter(writer)
        await _download_all(writer, reader, served, reader_features=0)
        assert served.range_requests
        assert not any(r.leaves for r in served.range_requests)
        assert reader.has_range(0, writer.length)


async def test_asking_for_leaves_without_the_feature_drops_the_peer() -> None:
    """A peer that asks for leaves although we did not announce them breaks the
    protocol: the serving side drops it."""
    async with open_store() as ws:
        writer = await ws.create_log(key_pair(SEED))
        await writer.append(values(4, BIG))
        a, b = trio.testing.memory_stream_pair()
        with trio.fail_after(30):
            async with replicate(a, writer, features=0) as session:
                peer = _RawPeer(b)
                await peer.hello_and_open(writer)
                await peer.send(
                    wire.RangeRequest(1, 1, writer.fork, 1, 0, True)  # blocks 0-1, leaves
                )
                await session.wait_closed()
        assert "leaves" in str(session.error)


class _RawPeer:
    """Speaks the replication wire by hand (announcing every feature)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.decoder = wire.FrameDecoder()

    async def send(self, msg: wire.Message) -> None:
        await self.stream.send_all(wire.encode_frame(msg))

    async def receive(self) -> wire.Message:
        while (msg := self.decoder.next_message()) is None:
            self.decoder.receive_data(await self.stream.receive_some(65536))
        return msg

    async def hello_and_open(self, log: Log) -> None:
        nonce = os.urandom(32)
        await self.send(wire.Hello(nonce, wire.FEATURES))
        theirs = await self.receive()
        assert isinstance(theirs, wire.Hello)
        session_id = caps.nonce_session_id(nonce, theirs.nonce)
        cap = caps.capability(session_id, log.key, initiator=nonce < theirs.nonce)
        await self.send(wire.Open(1, log.discovery_key, cap))
