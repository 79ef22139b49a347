"""The peering reader cuts frames out of whatever chunks the link returns.

A link read ends anywhere: inside a frame's header, inside its payload, between two
frames. The reader completes a frame the previous read cut off with only the bytes it
lacks and decodes the rest of each read in place. Whatever the split, the router must
see exactly the frames that were sent, in order; a malformed header ends the peering as
misbehaving, after handing over the good frames before it.
"""

from __future__ import annotations

import itertools

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pinecone_trio.peering import FrameBatch
from pinecone_trio.router.wire import ClosestTraffic, Frame, Keepalive, Traffic, encode_frame

from .peering_helpers import make_peering

K1, K2, K3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


class _ScriptedStream(trio.abc.Stream):
    """Returns the given chunks, one per `receive_some`, then end of stream; writes
    vanish."""

    def __init__(self, chunks: list[bytes | bytearray]) -> None:
        self.chunks = chunks

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _frames(sizes: list[int]) -> list[Frame]:
    out: list[Frame] = []
    for i, size in enumerate(sizes):
        payload = bytes((i + j) & 0xFF for j in range(size))
        if i % 3 == 2:
            out.append(ClosestTraffic((1, 2), K1, K2, K3, i, payload, 9))
        else:
            out.append(Traffic((), (3,), K1, K2, K3, i * 1000, payload, 10))
    return out


def _split(wire: bytes, cuts: list[int], as_bytearray: list[bool]) -> list[bytes | bytearray]:
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    chunks: list[bytes | bytearray] = []
    for n, (a, b) in enumerate(itertools.pairwise(points)):
        if b > a:
            chunk = wire[a:b]
            chunks.append(bytearray(chunk) if as_bytearray[n % len(as_bytearray)] else chunk)
    return chunks


async def _received(chunks: list[bytes | bytearray]) -> tuple[list[Frame], str | None]:
    peering, inbox = make_peering(_ScriptedStream(chunks), keepalives=False)
    got: list[Frame] = []
    async with trio.open_nursery() as nursery:

        async def router() -> None:
            async for item in inbox:
                if isinstance(item, FrameBatch):
                    # Payloads are views of the read buffers: compare them as bytes.
                    got.extend(item.frames)
                    item.done()

        nursery.start_soon(router)
        with trio.fail_after(10):
            await peering.run()
        nursery.cancel_scope.cancel()
    return got, peering.end_reason


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 3_000), min_size=1, max_size=6),
    st.lists(st.integers(0, 100_000), max_size=12),
    st.lists(st.booleans(), min_size=1, max_size=4),
)
def test_any_split_of_the_byte_stream_yields_the_frames_sent(
    sizes: list[int], cuts: list[int], as_bytearray: list[bool]
) -> None:
    frames = _frames(sizes)
    wire = b"".join(encode_frame(f) for f in frames) + encode_frame(Keepalive())
    got, reason = trio.run(_received, _split(wire, cuts, as_bytearray))
    assert got == frames
    assert reason == "remote closed the link"


def test_one_byte_reads_and_a_frame_longer_than_a_read() -> None:
    frames = _frames([60_000, 0, 5])
    wire = b"".join(encode_frame(f) for f in frames)
    one_byte: list[bytes | bytearray] = [wire[i : i + 1] for i in range(600)]
    got, _ = trio.run(_received, [*one_byte, wire[600:40_000], bytearray(wire[40_000:])])
    assert got == frames


def test_a_bad_header_after_a_cut_ends_the_peering_after_the_good_frames() -> None:
    frames = _frames([100, 200])
    good = b"".join(encode_frame(f) for f in frames)
    bad = b"XX" + encode_frame(frames[0])[2:]  # wrong magic
    # The bad frame's header straddles two reads.
    chunks: list[bytes | bytearray] = [good + bad[:4], bad[4:]]
    got, reason = trio.run(_received, chunks)
    assert got == frames
    assert reason is not None and reason.startswith("misbehaving")


def test_a_close_inside_a_frame_says_so() -> None:
    frames = _frames([100, 200])
    wire = b"".join(encode_frame(f) for f in frames)
    got, reason = trio.run(_received, [wire[:-7]])
    assert got == frames[:1]
    assert (
        reason
        == f"remote closed the link inside a frame ({len(encode_frame(frames[1])) - 7} bytes lost)"
    )
