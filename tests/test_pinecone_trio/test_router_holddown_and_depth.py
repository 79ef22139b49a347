"""Two router edges a review found.

* During the 1 s reparent hold-down a node acts as root: closest-key traffic for any
  key above its own was delivered at the node itself, though higher keys exist (upstream
  Pinecone has no closest-key frame; this was a wrong answer, not a drop). It now aims
  at the strongest root a peer outside its subtree still announces, and drops traffic
  it has no route for instead of answering it.
* A legal announcement of the greatest depth was adopted; our own announcement (one hop
  longer) could then not be encoded and was silently dropped for every peer, so the
  peers kept our old one. Such an announcement is now never a parent's.
"""

from __future__ import annotations

from pinecone_trio.router.actions import FrameIn, PeerUp, SendFrame
from pinecone_trio.router.constants import _DEEPEST_TWO_BYTE_HOPS, MAX_FRAME_SIZE
from pinecone_trio.router.signer import NullSigner
from pinecone_trio.router.state import RouterConfig, RouterState
from pinecone_trio.router.tree import extendable
from pinecone_trio.router.wire import Announcement, TreeAnnouncement, decode_frame, encode_frame

from .test_router_network import build, random_graph


def test_a_node_in_hold_down_does_not_answer_for_keys_above_it() -> None:
    checked = 0
    for seed in range(4):
        edges = random_graph(16, 8, seed)
        net = build(16, edges, seed=seed, config=RouterConfig(snake_expiry=12.5))
        net.run_until(20)
        assert net.tree_converged() and net.snake_converged()
        for a, b in sorted(net.edges()):
            net.run_until(net.now + 20)
            na, nb = net.nodes[a], net.nodes[b]
            tree_edge = (na.parent_port is not None and net.ports[a][na.parent_port] == b) or (
                nb.parent_port is not None and net.ports[b][nb.parent_port] == a
            )
            if not tree_edge:
                continue
            net.disconnect(a, b)
            net.run_until(net.now + 0.05)
            for i, node in enumerate(net.nodes):
                if not node.waiting or node.public_key == max(net.keys):
                    continue
                target = (int.from_bytes(node.public_key, "big") + 1).to_bytes(32, "big")
                payload = f"{seed}:{i}:{net.now}".encode()
                before = len(net.delivered)
                net.send_closest(i, target, payload)
                net.run_until(net.now + 0.01)
                here = [j for j, d in net.delivered[before:] if d.payload == payload and j == i]
                assert not here, f"seed {seed}: node {i} in hold-down answered for key + 1"
                checked += 1
            net.connect(a, b)
    assert checked > 20  # the situation really arose


def _key(n: int) -> bytes:
    return n.to_bytes(4, "big") + bytes(28)


def test_an_announcement_too_deep_to_extend_is_never_adopted() -> None:
    us = _key(5)
    state = RouterState(us, NullSigner(us), config=RouterConfig(), now=0.0)
    state.on_input(PeerUp(1, _key(6)), 0.0)
    state.on_input(PeerUp(2, _key(7)), 0.0)
    root = b"\xff" * 32
    ann = Announcement.new(root, 1)
    for key in [root] + [_key(1000 + i) for i in range(_DEEPEST_TWO_BYTE_HOPS - 2)] + [_key(6)]:
        ann = ann.extend(200, key, bytes(64))
        assert ann.body  # built hop by hop
    wire = encode_frame(TreeAnnouncement(ann))
    assert len(wire) <= MAX_FRAME_SIZE  # legal on the wire...
    assert not extendable(ann)  # ...but one hop more would not be
    actions = state.on_input(FrameIn(1, decode_frame(wire)), 1.0)
    assert state.parent_port is None  # not adopted
    for action in actions:
        if isinstance(action, SendFrame):
            encode_frame(action.frame)  # everything we send still encodes
    # One hop shallower is adopted as usual (a stronger root).
    shallow = Announcement.new(root, 1)
    for key in [root] + [_key(2000 + i) for i in range(10)] + [_key(7)]:
        shallow = shallow.extend(200, key, bytes(64))
        assert shallow.body
    assert extendable(shallow)
    state.on_input(FrameIn(2, decode_frame(encode_frame(TreeAnnouncement(shallow)))), 2.0)
    assert state.parent_port == 2
