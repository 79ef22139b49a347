"""Hypothesis fuzzing of RouterState: arbitrary frames from arbitrary ports never raise.

Frames come from two pools: fully arbitrary ones (any field values the codec can
produce) and plausible ones built around a small set of keys, so that announcements,
bootstraps and traffic get past the first checks and exercise the deep paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pinecone_trio.identity import FULL_MASK, Identity
from pinecone_trio.router.actions import (
    Action,
    DeliverLocal,
    DeliveryMode,
    DropPeer,
    Emit,
    FrameIn,
    LocalSend,
    LocalSendClosest,
    PeerDown,
    PeerType,
    PeerUp,
    SendFrame,
)
from pinecone_trio.router.constants import MAX_PORT
from pinecone_trio.router.signer import Ed25519Signer, NullSigner
from pinecone_trio.router.state import RouterConfig, RouterState
from pinecone_trio.router.wire import (
    Announcement,
    Bootstrap,
    ClosestTraffic,
    Frame,
    Traffic,
    TreeAnnouncement,
    decode_frame,
    encode_frame,
)

from .test_router_wire import frames as arbitrary_frames

POOL = [bytes([i]) * 32 for i in (0x10, 0x30, 0x50, 0x70, 0x90, 0xB0)]
US = POOL[2]
ROOT = POOL[5]
SIG = bytes(64)

pool_keys = st.sampled_from(POOL)
small_ports = st.integers(1, 3) | st.integers(0, 6)
small_coords = st.lists(st.integers(0, 6), max_size=4).map(tuple)


@st.composite
def plausible_announcements(draw: st.DrawFn) -> TreeAnnouncement:
    path = draw(st.lists(pool_keys, min_size=1, max_size=4, unique=draw(st.booleans())))
    root = path[0] if draw(st.booleans()) else draw(pool_keys)
    ann = Announcement.new(root, draw(st.integers(0, 4)))
    for key in path:
        ann = ann.extend(draw(st.integers(0, 5)), key, SIG)
    return TreeAnnouncement(ann)


plausible_frames: st.SearchStrategy[Frame] = st.one_of(
    plausible_announcements(),
    st.builds(
        Bootstrap,
        pool_keys,
        st.one_of(st.just(FULL_MASK), pool_keys),
        st.integers(0, 3),
        st.integers(0, 5),
        st.just(ROOT) | pool_keys,
        st.just(1) | st.integers(0, 4),
        st.just(SIG),
    ),
    st.builds(
        Traffic,
        small_coords,
        small_coords,
        pool_keys,
        pool_keys,
        st.one_of(st.just(FULL_MASK), pool_keys),
        st.integers(0, 3),
        st.binary(max_size=8),
        st.integers(0, 3),
    ),
    st.builds(
        ClosestTraffic,
        small_coords,
        st.binary(min_size=32, max_size=32) | pool_keys,
        pool_keys,
        st.one_of(st.just(FULL_MASK), pool_keys),
        st.integers(0, 3),
        st.binary(max_size=8),
        st.integers(0, 3),
    ),
)


class _KeyedSigner:
    """Real ed25519 verification, presenting the pool key US as our own key."""

    def __init__(self, key: bytes) -> None:
        self._real = Ed25519Signer(Identity.from_seed(b"\x07" * 32))
        self.public_key = key

    def sign(self, message: bytes) -> bytes:
        return self._real.sign(message)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        return self._real.verify(public_key, message, signature)


@dataclass(frozen=True)
class Tick:
    dt: float


steps = st.lists(
    st.one_of(
        st.builds(FrameIn, st.integers(0, 255), arbitrary_frames),
        st.builds(FrameIn, small_ports, plausible_frames),
        st.builds(FrameIn, small_ports, plausible_frames),
        st.builds(PeerUp, st.integers(1, 6), pool_keys, st.sampled_from(PeerType)),
        st.builds(PeerDown, st.integers(0, 255)),
        st.builds(LocalSend, pool_keys, st.binary(max_size=8)),
        st.builds(LocalSendClosest, st.binary(min_size=32, max_size=32), st.binary(max_size=8)),
        st.builds(Tick, st.floats(0, 20)),
    ),
    max_size=60,
)


def _check(state: RouterState, actions: list[Action], up: set[int]) -> None:
    for a in actions:
        assert isinstance(a, SendFrame | DeliverLocal | DropPeer | Emit)
        if isinstance(a, SendFrame):
            assert a.port in up, "frames only go to live ports"
            # whatever the engine sends must be encodable and decode to itself
            assert decode_frame(encode_frame(a.frame)) == a.frame
        elif isinstance(a, DeliverLocal) and a.mode is DeliveryMode.EXACT:
            assert a.target_key == US
        elif isinstance(a, DropPeer):
            assert a.port in up
    assert state.snake_table_size() <= state.config.max_snake_entries
    assert state.coords_cache_size() <= state.config.max_coords_cache
    assert state.next_deadline() > -math.inf


@pytest.mark.parametrize("real_signatures", [False, True])
@settings(max_examples=200)
@given(script=steps)
def test_engine_never_raises_on_remote_input(real_signatures: bool, script: list[object]) -> None:
    cfg = RouterConfig(max_snake_entries=4, max_coords_cache=2)
    if real_signatures:
        # Our key must be the identity's; everything the script signs with zeros is
        # then rejected by real verification (the DropPeer and bad_signature paths).
        state = RouterState(US, _KeyedSigner(US), config=cfg, now=0.0)
    else:
        state = RouterState(US, NullSigner(US), config=cfg, now=0.0)
    now = 0.0
    up: set[int] = set()
    # A prologue that gives the engine a parent and a root, so that bootstraps and
    # traffic in the script can pass the root checks and reach the deep paths.
    prologue: list[object] = [
        PeerUp(1, POOL[4]),
        PeerUp(2, POOL[1]),
        PeerUp(3, ROOT),
        FrameIn(3, TreeAnnouncement(Announcement.new(ROOT, 1).extend(3, ROOT, SIG))),
    ]
    for step in [*prologue, *script]:
        if isinstance(step, Tick):
            now += step.dt
            if now >= state.next_deadline():
                _check(state, state.on_timer(now), up)
            continue
        if isinstance(step, PeerUp):
            if step.port in up:
                continue  # a duplicate PeerUp is local misuse, tested elsewhere
            up.add(step.port)
        actions = state.on_input(step, now)  # type: ignore[arg-type]
        if isinstance(step, PeerDown):
            up.discard(step.port)
        _check(state, actions, up)
        for a in actions:
            if isinstance(a, DropPeer):
                up.discard(a.port)
                _check(state, state.on_input(PeerDown(a.port), now), up)
    # The accessors work in any state.
    assert state.root[0] >= US
    _ = (state.coords, state.parent_port, state.descending_key, state.ascending_key)
    _ = state.peers(), state.statistics()
    assert all(1 <= p.port <= MAX_PORT for p in state.peers())
