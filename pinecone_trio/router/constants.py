"""Router protocol constants: every interval, timeout and bound, one comment each.

Values follow Pinecone (research/pinecone.md §16) unless the comment says otherwise.
Timers are defaults of `RouterConfig` (state.py) so the simulator can shorten them.
"""

from __future__ import annotations

from typing import Final

# --- wire ------------------------------------------------------------------------------

#: ASCII "pine", the first four bytes of every frame.
FRAME_MAGIC: Final = b"pine"
#: Frame format version (Pinecone's "Version0"), header byte 4.
FRAME_VERSION: Final = 0
#: Common header: magic(4) version(1) type(1) extra(1) hop limit(1) length(2).
HEADER_SIZE: Final = 10
#: The header's uint16 length field counts the whole frame, so no frame can be longer.
MAX_FRAME_SIZE: Final = 65535
#: A varu64 never needs more than ten 7-bit groups; longer encodings are rejected.
MAX_VARU64_BYTES: Final = 10
#: Ed25519 public key and signature sizes.
KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
#: Most hops a tree announcement can carry when every port takes two varu64 bytes (a
#: port is at most 253): header, u16 body length, root key and a one-byte root sequence
#: leave 65,490 bytes, and each hop is port (2) + key (32) + signature (64) = 98 bytes.
_DEEPEST_TWO_BYTE_HOPS: Final = (MAX_FRAME_SIZE - HEADER_SIZE - 2 - KEY_SIZE - 1) // (
    2 + KEY_SIZE + SIGNATURE_SIZE
)
#: Longest coordinates on the wire: the u16 length and 668 two-byte ports (1,338 bytes).
#: One-byte ports allow 675 hops but only 675 bytes; mixing never beats all-two-byte.
MAX_COORDS_WIRE_SIZE: Final = 2 + 2 * _DEEPEST_TWO_BYTE_HOPS
#: Worst-case traffic overhead: header, u16 payload length, then either two coordinate
#: lists and two keys (tree-routed, 2,752 bytes) or empty destination coordinates,
#: source coordinates, three keys and a ten-byte watermark sequence (1,458 bytes).
MAX_TRAFFIC_OVERHEAD: Final = (
    HEADER_SIZE
    + 2
    + max(2 * MAX_COORDS_WIRE_SIZE + 2 * KEY_SIZE, 2 + MAX_COORDS_WIRE_SIZE + 3 * KEY_SIZE + 10)
)
#: Largest application payload a local send may carry (62,783): whatever coordinates
#: and watermark the frame carries, it still fits in `MAX_FRAME_SIZE`.
MAX_TRAFFIC_PAYLOAD: Final = MAX_FRAME_SIZE - MAX_TRAFFIC_OVERHEAD

# --- ports and peers -------------------------------------------------------------------

#: Port 0 is the local router; peerings use ports 1..253 (Pinecone's 254-slot table).
LOCAL_PORT: Final = 0
MAX_PORT: Final = 253

# --- spanning tree ---------------------------------------------------------------------

#: A root re-announces (with a new sequence) this often.
ANNOUNCEMENT_INTERVAL: Final = 30 * 60.0
#: A stored announcement older than this is not a parent candidate.
ANNOUNCEMENT_TIMEOUT: Final = 45 * 60.0
#: After bad news from the parent we act as root and ignore announcements this long.
REPARENT_WAIT: Final = 1.0

# --- virtual snake ---------------------------------------------------------------------

#: The snake maintenance tick (expiry sweep, periodic bootstrap check).
SNAKE_MAINTAIN_INTERVAL: Final = 1.0
#: Each non-root node sends a bootstrap at least this often.
BOOTSTRAP_INTERVAL: Final = 5.0
#: A snake table entry not refreshed for this long is invalid (2 x bootstrap interval).
SNAKE_EXPIRY: Final = 10.0
#: Ours: the least time between two of our bootstraps when one is wanted "soon" (a new
#: parent, a new descending neighbour, a closer successor learnt). Pinecone waits for the
#: next 1 s tick instead; we send at once, but at most four times a second.
BOOTSTRAP_MIN_GAP: Final = 0.25
#: Ours: how long past its expiry a snake entry still carries a packet whose watermark is
#: that very path (same origin and sequence); swept only after this too.
SNAKE_PATH_GRACE: Final = 1.0
#: Bound on snake table entries per node. Upstream is unbounded; when full, bootstraps
#: from new origins are still forwarded but not remembered (counted as table_full).
MAX_SNAKE_ENTRIES: Final = 65536

# --- forwarding ------------------------------------------------------------------------

#: Source coordinates learnt from delivered traffic are used this long (hybrid routing).
COORDS_CACHE_LIFETIME: Final = 60.0
#: The coordinate cache is swept this often.
COORDS_CACHE_SWEEP: Final = 60.0
#: Bound on coordinate cache entries; the least recently refreshed is evicted first.
MAX_COORDS_CACHE: Final = 4096
#: Hop limit stamped on originated traffic and enforced at every hop. Upstream uses 10
#: and enforces it only when enabled; 10 cannot cross a 50-node line, so we use the
#: largest value the header byte holds as a safety net against forwarding bugs.
TRAFFIC_HOP_LIMIT: Final = 255

# --- signatures ------------------------------------------------------------------------

#: Bound on remembered good signatures (signature -> (key, message)) per cache.
VERIFY_CACHE_ENTRIES: Final = 65536

# --- queues (queues.py) ----------------------------------------------------------------

#: Protocol frames (bootstraps, broadcasts) queued per port; head drop beyond this.
#: Announcements are not counted: at most one is ever pending per port.
PROTOCOL_QUEUE_FRAMES: Final = 1024
#: Traffic flows per port queue (Pinecone: 254 sub-queues).
TRAFFIC_QUEUE_FLOWS: Final = 254
#: Frames per flow sub-queue (Pinecone: 16); the oldest is dropped when full.
TRAFFIC_QUEUE_FLOW_FRAMES: Final = 16
