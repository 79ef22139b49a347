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
    st.builds(wire.Hello, h32, u64),
    st.builds(wire.Open, small, h32, h32),
    st.builds(wire.Close, small, st.text(max_size=20)),
    st.builds(wire.Reject, small, st.text(max_size=20)),
    st.builds(
        wire.RangeRequest,
        small,
        small,
        u64,
        u64,
        st.integers(0, wire.MAX_PROOF_NODES),
        st.booleans(),
    ),
    st.builds(
        wire.RangeData,
        small,
        small,
        u64,
        u64,
        st.lists(st.binary(max_size=40), min_size=1, max_size=wire.MAX_RANGE_BLOCKS).map(tuple),
        nodes,
    ),
    st.lists(st.binary(max_size=40), min_size=1, max_size=wire.MAX_RANGE_BLOCKS).flatmap(
        lambda values: st.builds(
            wire.RangeData,
            small,
            small,
            u64,
            u64,
            st.just(tuple(values)),
            nodes,
            st.lists(
                st.builds(wire.Node, u64, u64, h32),
                min_size=len(values),
                max_size=len(values),
            ).map(tuple),
        )
    ),
    st.builds(
        wire.Sync,
        small,
        u64,
        u64,
        u64,
        st.booleans(),
        st.booleans(),
        st.booleans(),
        st.none() | h32,
    ),
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


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 300_000])
def test_range_data_frame_equals_generic_encoding(size: int) -> None:
    # RangeData frames are joined from pieces (values copied once): same bytes.
    values = tuple(bytes([k]) * (size + k % 3) for k in range(20))
    leaf_nodes = tuple(wire.Node(2 * k, len(v), bytes(32)) for k, v in enumerate(values))
    for leaves in ((), leaf_nodes):
        proof = (wire.Node(7, 9, bytes(32)),)
        msg = wire.RangeData(3, 2**31, 2**40, 2**33 - 1, values, proof, leaves)
        frame = wire.encode_frame(msg)
        payload = wire.encode(msg)
        assert frame == struct.pack(">I", len(payload)) + payload
        # the joined encoder (used from 8 KiB values on) for every bin header size
        assert wire._range_data_frame(msg) == frame
        assert wire.decode(payload) == msg


@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=5),
    st.lists(st.sampled_from([1, 7, 4096, 65536, 262_144, 10**7]), min_size=1, max_size=8),
)
def test_frame_decoder_big_frames_any_chunking(kinds: list[int], chunks: list[int]) -> None:
    # Frames from FrameDecoder.BIG_FRAME on are filled in their own buffer.
    sizes = [10, 100_000, 300_000, 70_000]
    msgs: list[wire.Message] = []
    for i, kind in enumerate(kinds):
        value = bytes([i]) * sizes[kind]
        msgs.append(wire.RangeData(1, i, 0, 7, (value, value[:5]), ()))
        msgs.append(wire.Want(1, i, 1))
    data = b"".join(wire.encode_frame(m) for m in msgs)
    dec = wire.FrameDecoder()
    out: list[wire.Message] = []
    pos = 0
    for k in range(len(data)):  # bounded: each pass consumes at least one byte
        if pos >= len(data):
            break
        step = chunks[k % len(chunks)]
        dec.receive_data(data[pos : pos + step])
        pos += step
        while (m := dec.next_message()) is not None:
            out.append(m)
    assert out == msgs
    assert dec.buffered == 0


def test_big_frame_counts_as_buffered() -> None:
    frame = wire.encode_frame(wire.RangeData(1, 1, 0, 7, (b"x" * 400_000,), ()))
    dec = wire.FrameDecoder()
    dec.receive_data(frame[:1000])
    assert dec.next_message() is None
    assert dec.buffered == 1000
    dec.receive_data(frame[1000:])
    assert dec.buffered == len(frame)
    assert isinstance(dec.next_message(), wire.RangeData)
    assert dec.buffered == 0


def test_big_frame_buffer_only_after_enough_arrived() -> None:
    # A peer makes us allocate a big frame's buffer only once BIG_FRAME bytes (or a
    # quarter of the frame) arrived: at most 32 times what it sent.
    msg = wire.RangeData(1, 1, 0, 7, (b"y" * 2_000_000,), ())
    frame = wire.encode_frame(msg)
    dec = wire.FrameDecoder()
    dec.receive_data(frame[:100_000])
    assert dec.next_message() is None
    assert dec._big is None
    dec.receive_data(frame[100_000:400_000])
    assert dec.next_message() is None
    assert dec._big is not None and len(dec._big) == len(frame) - 4
    dec.receive_data(frame[400_000:])
    assert dec.next_message() == msg
    assert dec._big is None and dec.buffered == 0


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
        [wire.T_SYNC, 1, 0, 0, 0, 0, 0, b"t" * 31],  # a tree hash is 32 bytes
        [wire.T_SYNC, 1, 0, 0, 0, 0, 0, None],  # sent only when there is one
        [wire.T_SYNC, 1, 0, 0, 0, 0, 0, b"t" * 32, 1],  # too long
        [wire.T_OPEN, 1, 0, b"x" * 31, b"y" * 32],  # short discovery key
        [wire.T_REQUEST, 1, 0, 1, 0, None, None, None, None, False],  # asks nothing
        [wire.T_REQUEST, 1, 0, 1, 0, [1, 999], None, None, None, False],  # nodes too many
        [wire.T_BITFIELD, 1, 0, 3, b"\x01"],  # unaligned
        [wire.T_BITFIELD, 1, 0, 0, b"\x01" * (wire.MAX_BITFIELD_BYTES + 1)],
        [wire.T_DATA, 1, 0, 1, 0, [0, b"v", [[0, 1, b"short"]]], None, None, None, None],
        [wire.T_RANGE_REQUEST, 1, 0, 1, 0, 1, 0, False],  # leaves are only sent as true
        [wire.T_RANGE_REQUEST, 1, 0, 1, 0, 1, 0, 1],
        [wire.T_RANGE_DATA, 1, 0, 1, 0, 1, [b"a", b"b"], [], [[0, 1, b"h" * 32]]],  # 1 leaf
        [wire.T_RANGE_DATA, 1, 0, 1, 0, 1, [b"a"], [], []],  # leaves present but empty
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


def test_hello_of_the_first_version_has_no_features() -> None:
    body = msgpack.packb([wire.T_HELLO, wire.WIRE_VERSION, b"n" * 32], use_bin_type=True)
    assert wire.decode(body) == wire.Hello(b"n" * 32, 0)


def test_hello_fields_after_features_are_ignored() -> None:
    """A later version may add Hello fields; this one reads what it knows."""
    body = msgpack.packb(
        [wire.T_HELLO, wire.WIRE_VERSION, b"n" * 32, 5, "later", [1, 2]], use_bin_type=True
    )
    assert wire.decode(body) == wire.Hello(b"n" * 32, 5)


@pytest.mark.parametrize("features", [-1, "1", None, 1.0, b"\x01"])
def test_hello_with_malformed_features_refused(features: object) -> None:
    body = msgpack.packb([wire.T_HELLO, wire.WIRE_VERSION, b"n" * 32, features], use_bin_type=True)
    with pytest.raises(DecodeError, match="features"):
        wire.decode(body)


def test_sync_without_tree_hash_is_the_older_seven_fields() -> None:
    """A Sync to a peer without FEATURE_FORK_CHECK (no tree hash) is byte for byte
    what versions before it sent and expect (their decoder wants seven fields)."""
    sync = wire.Sync(3, 1, 10, 9)
    body = msgpack.unpackb(wire.encode(sync))
    assert body == [wire.T_SYNC, wire.WIRE_VERSION, 3, 1, 10, 9, 7]
    with_tree = wire.decode(wire.encode(wire.Sync(3, 1, 10, 9, tree_hash=b"t" * 32)))
    assert isinstance(with_tree, wire.Sync) and with_tree.tree_hash == b"t" * 32
