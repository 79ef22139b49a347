"""The sans-IO length-prefix framer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pinecone_trio.errors import FrameTooLarge, LocalProtocolError, TruncatedFrame
from pinecone_trio.link.constants import MAX_MESSAGE_SIZE
from pinecone_trio.link.framing import MAX_FRAME_BYTES, FrameBuffer, FrameDecoder, encode_frame


def drain(decoder: FrameDecoder | FrameBuffer) -> list[bytes]:
    out = []
    while (frame := decoder.next_frame()) is not None:
        out.append(bytes(frame))
    return out


def test_encode_frame() -> None:
    assert encode_frame(b"abc") == b"\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00"
    assert len(encode_frame(b"x" * MAX_MESSAGE_SIZE)) == MAX_MESSAGE_SIZE + 2
    with pytest.raises(LocalProtocolError):
        encode_frame(b"x" * (MAX_MESSAGE_SIZE + 1))


def test_decoder_limits() -> None:
    d = FrameDecoder(max_frame_size=10)
    d.receive_data(b"\x00\x0b")
    with pytest.raises(FrameTooLarge, match="11 bytes"):
        d.next_frame()
    d = FrameDecoder(max_frame_size=10)
    d.receive_data(b"\x00\x0a" + b"x" * 10 + b"\x00\x05ab")
    assert drain(d) == [b"x" * 10]
    assert d.buffered == 4
    with pytest.raises(TruncatedFrame):
        d.check_eof()
    d.receive_data(b"cde")
    assert drain(d) == [b"abcde"]
    d.check_eof()
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=MAX_MESSAGE_SIZE + 1)


def test_frames_stay_valid_after_more_input() -> None:
    d = FrameDecoder()
    d.receive_data(b"\x00\x03ab")
    d.receive_data(bytearray(b"c\x00\x01"))
    first = d.next_frame()
    d.receive_data(b"z\x00\x02qq")
    rest = drain(d)
    assert first is not None and bytes(first) == b"abc"
    assert rest == [b"z", b"qq"]


def test_byte_at_a_time_is_linear() -> None:
    d = FrameDecoder()
    stream = encode_frame(b"y" * 60000)
    for i in range(len(stream)):
        d.receive_data(stream[i : i + 1])
        if i < len(stream) - 1:
            assert d.next_frame() is None
    frame = d.next_frame()
    assert frame is not None and bytes(frame) == b"y" * 60000


@given(
    st.lists(st.binary(max_size=600), max_size=8),
    st.lists(st.integers(min_value=1, max_value=700), min_size=1, max_size=20),
    st.booleans(),
)
def test_any_split_gives_the_same_frames(
    messages: list[bytes], cuts: list[int], drain_each: bool
) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    d = FrameDecoder()
    got: list[bytes] = []
    pos, i = 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        d.receive_data(stream[pos : pos + step])
        pos += step
        i += 1
        if drain_each:
            got += drain(d)
    got += drain(d)
    assert got == messages
    d.check_eof()


@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=300))
def test_arbitrary_bytes_only_frames_or_frame_errors(data: bytes, limit: int) -> None:
    d = FrameDecoder(max_frame_size=limit)
    d.receive_data(data)
    total = 0
    try:
        while (frame := d.next_frame()) is not None:
            assert len(frame) <= limit
            total += 2 + len(frame)
    except FrameTooLarge:
        return
    assert total + d.buffered == len(data)
    if d.buffered:
        with pytest.raises(TruncatedFrame):
            d.check_eof()


def test_take_buffered_hands_over_the_rest() -> None:
    d = FrameDecoder()
    d.receive_data(b"\x00\x01a\x00\x03b")
    d.receive_data(b"c")
    assert drain(d) == [b"a"]
    assert d.take_buffered() == b"\x00\x03bc"
    assert d.buffered == 0 and d.next_frame() is None
    d.receive_data(b"\x00\x01z")
    assert drain(d) == [b"z"]


def read_into(buffer: FrameBuffer, data: bytes) -> int:
    room = buffer.writable()
    count = min(len(room), len(data))
    room[:count] = data[:count]
    buffer.wrote(count)
    return count


def test_frame_buffer_basics_and_limits() -> None:
    with pytest.raises(ValueError):
        FrameBuffer(MAX_FRAME_BYTES - 1)
    with pytest.raises(ValueError):
        FrameBuffer(MAX_FRAME_BYTES, max_frame_size=MAX_MESSAGE_SIZE + 1)
    b = FrameBuffer(MAX_FRAME_BYTES, max_frame_size=10)
    assert read_into(b, b"\x00\x0a" + b"x" * 10 + b"\x00\x05ab") == 16
    assert drain(b) == [b"x" * 10]
    assert b.buffered == 4
    with pytest.raises(TruncatedFrame):
        b.check_eof()
    b.receive_data(b"cde")
    assert drain(b) == [b"abcde"]
    b.check_eof()
    b.receive_data(b"\x00\x0b")
    with pytest.raises(FrameTooLarge, match="11 bytes"):
        b.next_frame()
    with pytest.raises(ValueError):
        b.wrote(len(b.writable()) + 1)
    with pytest.raises(ValueError):
        b.wrote(-1)


def test_frame_buffer_moves_an_unfinished_frame_to_the_front() -> None:
    size = MAX_FRAME_BYTES + 30_000
    b = FrameBuffer(size)
    whole = encode_frame(b"w" * 60_000)
    part = encode_frame(b"p" * 50_000)
    b.receive_data(whole + part[:20_000])
    first = b.next_frame()
    assert first is not None and bytes(first) == b"w" * 60_000
    assert b.next_frame() is None
    room = b.writable()  # too little room behind the partial frame: it moves
    assert len(room) == size - 20_000
    b.receive_data(part[20_000:])
    assert drain(b) == [b"p" * 50_000]
    with pytest.raises(ValueError, match="do not fit"):
        b.receive_data(b"\x00" * (size + 1))


@given(
    st.lists(st.binary(max_size=70_000), max_size=5),
    st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=10),
    st.integers(min_value=MAX_FRAME_BYTES, max_value=3 * MAX_FRAME_BYTES),
)
def test_frame_buffer_any_reads_give_the_same_frames(
    messages: list[bytes], reads: list[int], size: int
) -> None:
    messages = [m[:MAX_MESSAGE_SIZE] for m in messages]
    stream = b"".join(encode_frame(m) for m in messages)
    b = FrameBuffer(size)
    got: list[bytes] = []
    pos = 0
    for step in range(len(stream) + 1):  # every pass reads at least one byte
        if pos == len(stream):
            break
        want = reads[step % len(reads)]
        pos += read_into(b, stream[pos : pos + want])
        got += drain(b)
    assert got == messages
    b.check_eof()
