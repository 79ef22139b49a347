"""The overlay payload limit: the largest payload fits any frame, one byte more is refused."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pinecone_trio.errors import LocalProtocolError
from pinecone_trio.node import MAX_DATAGRAM_PAYLOAD
from pinecone_trio.router.constants import (
    KEY_SIZE,
    MAX_COORDS_WIRE_SIZE,
    MAX_FRAME_SIZE,
    MAX_PORT,
    MAX_TRAFFIC_PAYLOAD,
    SIGNATURE_SIZE,
)
from pinecone_trio.router.wire import (
    ClosestTraffic,
    Frame,
    Traffic,
    decode_frame,
    encode_coords,
    encode_frame,
    encode_varu64,
)
from pinecone_trio.sessions.config import SessionConfig
from pinecone_trio.testing import open_network

DEEPEST = (MAX_COORDS_WIRE_SIZE - 2) // 2  # two-byte ports
LONGEST_COORDS = (MAX_PORT,) * DEEPEST
K1, K2, K3 = b"\x01" * KEY_SIZE, b"\x02" * KEY_SIZE, b"\x03" * KEY_SIZE
MAX_SEQ = (1 << 64) - 1  # a ten-byte varu64


def test_deepest_coordinates_are_what_an_announcement_can_carry() -> None:
    assert len(encode_coords(LONGEST_COORDS)) == MAX_COORDS_WIRE_SIZE
    hop = len(encode_varu64(MAX_PORT)) + KEY_SIZE + SIGNATURE_SIZE
    fixed = 10 + 2 + KEY_SIZE + 1  # header, body length, root key, one-byte root seq
    assert fixed + DEEPEST * hop <= MAX_FRAME_SIZE < fixed + (DEEPEST + 1) * hop
    # One-byte ports allow more hops but fewer coordinate bytes.
    shallow = (MAX_FRAME_SIZE - fixed) // (1 + KEY_SIZE + SIGNATURE_SIZE)
    assert shallow < 2 * DEEPEST
    assert MAX_TRAFFIC_PAYLOAD > 62_000


@pytest.mark.parametrize("size", [MAX_TRAFFIC_PAYLOAD, MAX_TRAFFIC_PAYLOAD + 1])
def test_largest_payload_with_longest_coordinates_and_watermark(size: int) -> None:
    payload = b"p" * size
    frames: list[Frame] = [
        # tree-routed: both coordinate lists, no watermark on the wire
        Traffic(LONGEST_COORDS, LONGEST_COORDS, K1, K2, b"\xff" * KEY_SIZE, 0, payload, 255),
        # snake-routed: source coordinates and a ten-byte watermark sequence
        Traffic((), LONGEST_COORDS, K1, K2, K3, MAX_SEQ, payload, 255),
        ClosestTraffic(LONGEST_COORDS, K1, K2, K3, MAX_SEQ, payload, 255),
    ]
    for frame in frames:
        if size <= MAX_TRAFFIC_PAYLOAD:
            wire = encode_frame(frame)
            assert len(wire) <= MAX_FRAME_SIZE
            assert decode_frame(wire) == frame
    # The worst case is the tree-routed form, and it is exactly full at the limit.
    worst = frames[0]
    if size <= MAX_TRAFFIC_PAYLOAD:
        assert len(encode_frame(worst)) == MAX_FRAME_SIZE
    else:
        with pytest.raises(LocalProtocolError, match="exceeds 65535"):
            encode_frame(worst)


def test_sessions_default_to_the_node_limit() -> None:
    assert MAX_DATAGRAM_PAYLOAD == MAX_TRAFFIC_PAYLOAD - 1
    assert SessionConfig().max_packet_size == MAX_DATAGRAM_PAYLOAD


async def test_node_sends_the_largest_datagram_and_refuses_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b")]) as net:
        with trio.fail_after(30):
            await net.wait_converged()
        a, b = net["a"], net["b"]
        big = bytes(range(256)) * (MAX_DATAGRAM_PAYLOAD // 256) + b"z" * (
            MAX_DATAGRAM_PAYLOAD % 256
        )
        assert len(big) == MAX_DATAGRAM_PAYLOAD
        with trio.fail_after(30):
            while True:
                await a.send(b.public_key, big)
                with trio.move_on_after(1):
                    got = await b.receive()
                    break
        assert got.payload == big and got.source_key == a.public_key
        with pytest.raises(ValueError, match=f"> {MAX_DATAGRAM_PAYLOAD}"):
            await a.send(b.public_key, big + b"!")
