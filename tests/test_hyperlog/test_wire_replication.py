"""Round trips, size limits and garbage for hyperlog.wire."""

from __future__ import annotations

import contextlib
import struct

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hyperlog import wire
from hyperlog.errors import DecodeError

u64 = st.integers(min_value=0, max_value=2**64 - 1)
small = st.integers(min_value=0, max_value=2**32 - 1)
h32 = st.binary(min_size=32, max_size=32)
nodes = st.lists(st.builds(wire.Node, u64, u64, h32), max_size=8).map(tuple)


def _opt(s: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    return st.none() | s


requests = st.builds(
    wire.Request,
    small,
    small,
    u64,
    st.builds(wire.RequestBlock, u64, st.integers(0, wire.MAX_PROOF_NODES)),
    _opt(st.builds(wire.RequestHash, u64, st.integers(0, wire.MAX_PROOF_NODES))),
    _opt(st.builds(wire.RequestSeek, u64, u64)),
    _opt(st.builds(wire.RequestUpgrade, u64, st.integers(0, 2**40))),
    st.booleans(),
)
datas = st.builds(
    wire.Data,
    small,
    small,
    u64,
    _opt(st.builds(wire.DataBlock, u64, st.binary(max_size=300), nodes)),
    _opt(st.builds(wire.DataHash, u64, nodes)),
    _opt(st.builds(wire.DataSeek, u64, nodes)),
    _opt(
        st.builds(
            wire.DataUpgrade, u64, st.integers(0, 2**40), nodes, nodes, st.binary(max_size=68)
        )
    ),
    _opt(st.binary(max_size=100)),
)
messages = st.one_of(
    st.builds(wire.Hello, h32),
    st.builds(wire.Open, small, h32, h32),
    st.builds(wire.Close, small, st.text(max_size=20)),
    st.builds(wire.Reject, small, st.text(max_size=20)),
    st.builds(wire.RangeRequest, small, small, u64, u64, st.integers(0, wire.MAX_PROOF_NODES)),
    st.builds(
        wire.RangeData,
        small,
        small,
        u64,
        u64,
        st.lists(st.binary(max_size=40), min_size=1, max_size=wire.MAX_RANGE_BLOCKS).map(tuple),
        nodes,
    ),
    st.builds(wire.Sync, small, u64, u64, u64, st.booleans(), st.booleans(), st.booleans()),
    requests,
    st.builds(wire.Cancel, small, small),
    datas,
    st.builds(wire.NoData, small, small, st.integers(0, 255)),
    st.builds(wire.Want, small, st.integers(0, 2**62), st.integers(0, 2**62)),
    st.builds(wire.Unwant, small, st.integers(0, 2**62), st.integers(0, 2**62)),
    st.builds(
        wire.Bitfield, small, st.integers(0, 2**50).map(lambda x: x * 8), st.binary(max_size=64)
    ),
    st.builds(wire.Range, small, st.integers(0, 2**62), st.integers(0, 2**62), st.booleans()),
)


@given(messages)
def test_round_trip(msg: wire.Message) -> None:
    assert wire.decode(wire.encode(msg)) == msg


@given(st.lists(messages, max_size=6), st.integers(1, 50))
def test_frame_decoder_any_chunking(msgs: list[wire.Message], chunk: int) -> None:
    data = b"".join(wire.encode_frame(m) for m in msgs)
    dec = wire.FrameDecoder()
    out: list[wire.Message] = []
    for k in range(0, len(data), chunk):
        dec.receive_data(data[k : k + chunk])
        while (m := dec.next_message()) is not None:
            out.append(m)
    assert out == msgs
    assert dec.buffered == 0


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wire.decode(data)


@given(messages, st.data())
def test_corrupted_byte_decodes_or_raises(msg: wire.Message, data: st.DataObject) -> None:
    raw = bytearray(wire.encode(msg))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    with contextlib.suppress(DecodeError):
        wire.decode(bytes(raw))


def test_oversized_frame_refused_before_buffering() -> None:
    dec = wire.FrameDecoder()
    dec.receive_data(struct.pack(">I", wire.MAX_FRAME_SIZE + 1))
    with pytest.raises(DecodeError, match="exceeds"):
        dec.next_message()


@pytest.mark.parametrize(
    "body",
    [
        [wire.T_SYNC, 2, 0, 0, 0, 0, 0],  # wrong version
        [wire.T_SYNC, 1, 0, -1, 0, 0, 0],  # negative
        [wire.T_SYNC, 1, 0, True, 0, 0, 0],  # bool is not an int
        [wire.T_SYNC, 1, 0, 0, 0, 0],  # too short
        [wire.T_OPEN, 1, 0, b"x" * 31, b"y" * 32],  # short discovery key
        [wire.T_REQUEST, 1, 0, 1, 0, None, None, None, None, False],  # asks nothing
        [wire.T_REQUEST, 1, 0, 1, 0, [1, 999], None, None, None, False],  # nodes too many
        [wire.T_BITFIELD, 1, 0, 3, b"\x01"],  # unaligned
        [wire.T_BITFIELD, 1, 0, 0, b"\x01" * (wire.MAX_BITFIELD_BYTES + 1)],
        [wire.T_DATA, 1, 0, 1, 0, [0, b"v", [[0, 1, b"short"]]], None, None, None, None],
        [99, 1, 0],
        {"a": 1},
        "hello",
    ],
)
def test_malformed_messages(body: object) -> None:
    with pytest.raises(DecodeError):
        wire.decode(msgpack.packb(body, use_bin_type=True))


def test_too_many_nodes_refused() -> None:
    n = [[0, 0, b"h" * 32]] * (wire.MAX_PROOF_NODES + 1)
    body = [wire.T_DATA, 1, 0, 1, 0, None, [0, n], None, None, None]
    with pytest.raises(DecodeError):
        wire.decode(msgpack.packb(body, use_bin_type=True))


@pytest.mark.parametrize(
    "node",
    [
        [-1, 0, b"h" * 32],  # negative index
        [True, 0, b"h" * 32],  # a bool is not an int
        [0, -5, b"h" * 32],  # negative size
        [0, 0, b"h" * 31],  # short hash
        [0, 0, "h" * 32],  # str, not bytes
        [0, 0],  # too few fields
        [0, 0, b"h" * 32, 1],  # too many fields
        7,  # not an array
    ],
)
def test_malformed_node_refused(node: object) -> None:
    good = [2, 5, b"g" * 32]
    body = [wire.T_DATA, 1, 0, 1, 0, [1, b"v", [good, node]], None, None, None, None]
    with pytest.raises(DecodeError):
        wire.decode(msgpack.packb(body, use_bin_type=True))
    ok = [wire.T_DATA, 1, 0, 1, 0, [1, b"v", [good, good]], None, None, None, None]
    msg = wire.decode(msgpack.packb(ok, use_bin_type=True))
    assert isinstance(msg, wire.Data) and msg.block is not None
    assert msg.block.nodes == (wire.Node(2, 5, b"g" * 32),) * 2


def test_trailing_bytes_refused() -> None:
    with pytest.raises(DecodeError):
        wire.decode(wire.encode(wire.Cancel(1, 2)) + b"\x00")
