"""The snake path grace (docs/router.md, deviation 23), by hand.

Entries along one bootstrap path expire one link latency apart, nearest the origin
first. A packet that set out on the path while it was valid carries it as its watermark
(origin, sequence); the node that installed its entry a few ms earlier must still pass
it on, not drop it at the watermark gate.
"""

from __future__ import annotations

from pinecone_trio.identity import FULL_MASK
from pinecone_trio.router.actions import FrameIn, PeerUp, SendFrame
from pinecone_trio.router.signer import NullSigner
from pinecone_trio.router.state import RouterConfig, RouterState
from pinecone_trio.router.wire import Announcement, Bootstrap, Traffic, TreeAnnouncement

SIG = bytes(64)


def k(n: int) -> bytes:
    return n.to_bytes(2, "big") + bytes(30)


def engine(**cfg: float) -> RouterState:
    s = RouterState(k(60), NullSigner(k(60)), config=RouterConfig(**cfg), now=0.0)  # type: ignore[arg-type]
    s.on_input(PeerUp(1, k(90)), 0.0)
    s.on_input(PeerUp(2, k(10)), 0.0)
    s.on_input(PeerUp(3, k(70)), 0.0)
    s.on_input(FrameIn(1, TreeAnnouncement(Announcement.new(k(90), 1).extend(7, k(90), SIG))), 0)
    # 20's bootstrap passed here from port 2 at t = 1 (sequence 100).
    s.on_input(FrameIn(2, Bootstrap(k(20), FULL_MASK, 0, 100, k(90), 1, SIG)), 1.0)
    return s


def packet(wm_key: bytes, wm_seq: int) -> Traffic:
    return Traffic((), (1,), k(20), k(80), wm_key, wm_seq, b"x", 200)


def ports(s: RouterState, f: Traffic, now: float) -> list[int]:
    return [a.port for a in s.on_input(FrameIn(3, f), now) if isinstance(a, SendFrame)]


def test_a_packet_on_the_path_passes_just_after_expiry() -> None:
    s = engine()
    assert ports(s, packet(k(20), 100), 11.005) == [2]  # expired 5 ms ago, same path
    assert ports(s, packet(FULL_MASK, 0), 11.005) == []  # a new packet: no route
    assert ports(s, packet(k(20), 99), 11.005) == []  # another (older) round: no
    assert ports(s, packet(k(20), 100), 12.005) == []  # past the grace
    assert s.statistics().dropped == {"no_route": 3}


def test_without_the_grace_the_packet_is_dropped() -> None:
    s = engine(snake_path_grace=0.0)
    assert ports(s, packet(k(20), 100), 11.005) == []
