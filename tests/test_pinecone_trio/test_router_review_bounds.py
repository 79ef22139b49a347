"""Bounds a second reader broke with one malicious peer (each test failed before its fix).

- An announcement hop port above `MAX_PORT` (varu64 allows ten bytes) made the
  coordinates of every node that adopted it longer than any decoder accepts: their
  traffic got them dropped as misbehaving, network-wide.
- The signature cache kept a copy of every verified message: 40 self-signed deep
  announcements (2.3 MB sent) held 700 MB.
- A peering's queue limit counted payload bytes only: traffic frames with empty
  payloads and long coordinates queued without bound (1.4 GB per slow peer).
"""

from __future__ import annotations

import sys

from pinecone_trio import Identity
from pinecone_trio.identity import FULL_MASK
from pinecone_trio.peering import PEER_QUEUE_BYTES, QUEUED_FRAME_OVERHEAD
from pinecone_trio.router.constants import MAX_COORDS_WIRE_SIZE, MAX_PORT
from pinecone_trio.router.signer import Ed25519Signer, NullSigner, VerifyCache
from pinecone_trio.router.tree import check_announcement
from pinecone_trio.router.wire import Announcement, Traffic, decode_frame, encode_frame

from .peering_helpers import make_peering
from .test_node_races import _StuckStream


def _signed(ports: list[int]) -> tuple[Announcement, bytes]:
    """A validly signed announcement whose hops use `ports`; returns it and the sender."""
    ids = [Identity.generate() for _ in ports]
    ann = Announcement.new(bytes(ids[0].public_key), 1)
    for port, identity in zip(ports, ids, strict=True):
        # Entry i signs the body before it.
        ann = ann.extend(port, bytes(identity.public_key), Ed25519Signer(identity).sign(ann.body))
    return ann, bytes(ids[-1].public_key)


def test_a_hop_port_above_max_port_is_refused() -> None:
    signer = Ed25519Signer(Identity.generate())
    fine, sender = _signed([MAX_PORT, 1])
    assert check_announcement(fine, sender, signer) is None
    big, sender = _signed([1, MAX_PORT + 1])
    assert check_announcement(big, sender, signer) == f"hop port above {MAX_PORT} in announcement"
    huge, sender = _signed([2**63, 1])  # ten varu64 bytes: still signed, still refused
    assert check_announcement(huge, sender, NullSigner(b"\x01" * 32)) is not None


def test_the_verify_cache_keeps_digests_not_messages() -> None:
    cache = VerifyCache()
    key, signature = b"\x02" * 32, b"\x03" * 64
    message = bytes(60_000)
    cache.add(key, message, signature)
    assert cache.check(key, message, signature)
    assert not cache.check(key, message + b"!", signature)
    assert not cache.check(b"\x04" * 32, message, signature)
    stored_key, stored = cache._entries[signature]
    assert stored_key == key and len(stored) == 32


async def test_queued_coordinates_count_against_the_queue_limit() -> None:
    me = Identity.generate().public_key
    peering, _recv = make_peering(_StuckStream(), local_key=bytes(me))
    coords = (1,) * (MAX_COORDS_WIRE_SIZE - 2)  # one-byte ports: the most coordinates
    frame = Traffic(coords, coords, FULL_MASK, b"\x01" * 32, FULL_MASK, 0, b"", 10)
    assert decode_frame(encode_frame(frame)) == frame  # legal on the wire
    cost = QUEUED_FRAME_OVERHEAD + 8 * 2 * len(coords)
    fits = PEER_QUEUE_BYTES // cost
    for _ in range(fits + 100):
        peering.enqueue(frame)
    assert len(peering.queue) == fits
    assert peering.budget_drops == 100
    # What the limit now stands for is about what the frames hold in memory.
    held = sys.getsizeof(coords) * 2
    assert cost >= held
