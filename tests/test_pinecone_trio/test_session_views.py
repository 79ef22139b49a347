"""Transport packets handed to the engine as views (the node's direct delivery)."""

from __future__ import annotations

from pinecone_trio.sessions import wire
from pinecone_trio.sessions.testing import EnginePair, PathModel

from .test_session_engine import _established, _open, _transfer


def _as_view(dest: str, packet: bytes) -> memoryview:
    # A view at an offset into a bigger buffer, as the node hands out past its tag byte.
    return memoryview(b"\x01" + packet)[1:]


def test_stream_over_views_with_loss_and_reordering() -> None:
    pair = EnginePair(model=PathModel(loss=0.05, reorder=0.1, delay=(0.001, 0.05)), seed=7)
    pair.tap = _as_view
    _established(pair)
    sid = _open(pair)
    payload = bytes((i * 13) % 251 for i in range(300_000))
    got, eof = _transfer(pair, sid, payload, timeout=300)
    assert eof and got == payload


def test_forged_and_replayed_views_are_dropped() -> None:
    pair = EnginePair()
    _established(pair)
    sid = _open(pair)
    seen: list[bytes] = []

    def tamper(dest: str, packet: bytes) -> memoryview | None:
        if dest != "b" or packet[0] != wire.TRANSPORT:
            return memoryview(packet)
        seen.append(packet)
        if len(seen) == 1:
            forged = bytearray(packet)
            forged[-1] ^= 1  # breaks the AEAD tag
            assert pair.b is not None
            pair.b.receive_packet(memoryview(bytes(forged)), pair.now)
            pair.b.receive_packet(memoryview(packet), pair.now)
        return memoryview(packet)  # a replay of the one just accepted

    pair.tap = tamper
    got, eof = _transfer(pair, sid, b"view" * 10_000, timeout=60)
    assert eof and got == b"view" * 10_000
    assert pair.b is not None
    assert pair.b.stats["dropped_unauthenticated"] >= 1
    assert pair.b.stats["dropped_replayed"] >= 1


def test_packets_built_behind_a_prefix() -> None:
    """The engine puts the caller's prefix in front of every packet it builds."""
    prefix = b"\x07"
    pair = EnginePair(model=PathModel(loss=0.05, reorder=0.1, delay=(0.001, 0.05)), seed=3)
    for name in ("a", "b"):
        pair.prefixes[name] = prefix
    stripped = {"a": 0, "b": 0}

    def strip(dest: str, packet: bytes) -> bytes:
        assert packet[:1] == prefix
        stripped[dest] += 1
        return packet[1:]

    pair.tap = strip
    _established(pair)
    sid = _open(pair)
    payload = bytes((i * 31) % 253 for i in range(250_000))
    got, eof = _transfer(pair, sid, payload, timeout=300)
    assert eof and got == payload
    assert stripped["a"] > 0 and stripped["b"] > 0
    # Statistics and congestion control count the packet, not the prefix.
    assert pair.a.stats["bytes_sent"] < stripped["b"] * pair.config.max_packet_size
