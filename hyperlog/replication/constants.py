"""Replication timings and limits, one comment each.

Times are in seconds of whatever clock the driver passes as `now` (Trio's clock,
so `MockClock` works). Counts bound the memory one peer can make us spend.
"""

from __future__ import annotations

from typing import Final

#: Requests in flight to one peer when a channel opens (hypercore starts at 16).
INITIAL_WINDOW: Final = 16
#: Never fewer than this many requests in flight to a responsive peer.
MIN_WINDOW: Final = 2
#: Upper bound of the adaptive window (hypercore: 48 over TCP, 512 over UDX). With
#: 64 KiB blocks this keeps at most 8 MiB of answers owed to us by one peer.
MAX_WINDOW: Final = 128
#: A request unanswered for this long is cancelled and retried elsewhere; the peer's
#: window is halved.
REQUEST_TIMEOUT: Final = 10.0
#: A *priority* request (a `get`) unanswered for this long is also sent to another
#: peer that has the block ("hot-swap"); the first valid answer wins.
HOTSWAP_AFTER: Final = 0.75
#: How often one block is requested before a `get` gives up on the current peers.
MAX_ATTEMPTS: Final = 6
#: Blocks a `Log.get` waits for that no connected peer could provide, remembered per
#: log (oldest forgotten first) and asked for again when a peer syncs: the log's API
#: never says when such a wait ends, so they cannot be kept as wants.
MAX_PARKED_WANTS: Final = 1024
#: Default `get` timeout: a missing block never waits longer than this unless you
#: pass `timeout=None` explicitly.
DEFAULT_GET_TIMEOUT: Final = 30.0
#: Ids of requests we cancelled remembered per channel, so that an answer already
#: on the wire when we cancelled is ignored rather than taken for a protocol error
#: (oldest forgotten first; a timeout cancels at most a window's worth at once).
MAX_CANCELLED_IDS: Final = 8 * MAX_WINDOW
#: Requests from one peer we accept but have not answered yet; beyond this the peer
#: is flooding us (our own window never exceeds MAX_WINDOW) and is dropped.
MAX_PENDING_SERVES: Final = 2 * MAX_WINDOW
#: Channels (logs) one stream may open.
MAX_CHANNELS: Final = 1024
#: Remote channel ids closed or rejected on one stream that we remember (oldest
#: forgotten first): a message racing the close is then ignored (a soft error), and an
#: open reusing the id is refused. A peer opening and closing channels forever used
#: to make this set grow without limit; a message for a forgotten id is a protocol
#: error, as for an id never opened.
MAX_CLOSED_CHANNEL_IDS: Final = 4 * MAX_CHANNELS
#: Blocks whose have-bits we keep per remote page (one hypercore page).
PAGE_BITS: Final = 32768
#: Sparse have-pages kept per remote peer and log (32 MiB of bitmap at most would be
#: too much; 256 pages = 1 MiB covers 8M scattered blocks). Beyond it we forget and
#: ask speculatively.
MAX_REMOTE_PAGES: Final = 256
#: Largest span one `want` may ask about; the answer is at most this many bits.
MAX_WANT_SPAN: Final = 8 * PAGE_BITS
#: Blocks a download scans ahead per peer per scheduling pass (bounds CPU per pass).
SCAN_LIMIT: Final = 4096
#: Outgoing bytes queued for one peer before we stop serving its requests.
MAX_OUTBOX_BYTES: Final = 16 * 1024 * 1024
#: Outgoing bytes queued for one peer at which it is dropped if it sends us anything
#: more: it does not read what it makes us send. Serving stops at MAX_OUTBOX_BYTES
#: (plus one frame), so only what is answered at once (Want, a refused Request, a
#: Sync) and our own announcements can get here. The reader never waits for the
#: writer instead (two peers doing so at once would deadlock).
MAX_UNREAD_BYTES: Final = 2 * MAX_OUTBOX_BYTES
#: A channel we opened that the remote neither opened nor rejected within this long is
#: given up (so `update` and `get` do not wait on it).
OPEN_TIMEOUT: Final = 10.0
#: Reasons kept per log for sessions that ended without bringing a peer (the newest;
#: `LogReplicator.peers_unavailable` says them), until another session offers the log.
MAX_NO_PEER_REASONS: Final = 8
#: Time allowed for the Hello exchange.
HELLO_TIMEOUT: Final = 10.0
#: Protocol violations that are not fatal on their own (e.g. an unknown channel id
#: after a close race) tolerated per session before the peer is dropped.
MAX_SOFT_ERRORS: Final = 64
#: RangeRequests in flight to one peer (each carries up to RANGE_BYTES of blocks).
MAX_RANGES_IN_FLIGHT: Final = 8
#: Largest bytes per RangeRequest: ranges shrink for big blocks to stay near this
#: (4 MiB = 64 blocks of 64 KiB: fewer, larger messages measured ~30% faster than 1 MiB).
RANGE_BYTES: Final = 4 * 1024 * 1024
#: Bytes of ranges outstanding per peer: big blocks get fewer ranges in flight
#: (4 x 4 MiB), small ones the full MAX_RANGES_IN_FLIGHT.
RANGE_BYTES_IN_FLIGHT: Final = 16 * 1024 * 1024
#: Each peer's ranges start near this many bytes (`PeerChannel.range_target`) and grow
#: towards RANGE_BYTES while they arrive quickly: nothing of a range is stored before
#: all of it arrived, and 4 MiB takes 4 s at 8 Mbit/s (a link dropping every few
#: seconds let a clone store nothing, ever).
RANGE_INITIAL_BYTES: Final = 128 * 1024
#: A range should take at most about this long on the wire: the next ones double while
#: the peer carries twice the current size in this time, and shrink to what it carries
#: in this time when that is less (`PeerChannel.note_range`).
RANGE_SECONDS: Final = 1.0
#: Ranges outstanding per peer, in bytes, are at most this many of its current range
#: size (and RANGE_BYTES_IN_FLIGHT): about 4 s of answers queued on a slow link,
#: well within REQUEST_TIMEOUT (16 MiB took 16 s at 8 Mbit/s, and ranges timed out).
RANGE_FLIGHT_RANGES: Final = RANGE_BYTES_IN_FLIGHT // RANGE_BYTES
#: Ranges smaller than this are not worth it: use single-block requests.
RANGE_MIN_BLOCKS: Final = 4
#: From this average block size on, a RangeRequest asks the peer for the blocks' leaf
#: nodes too (`RangeRequest.leaves`): the peer reads them from storage (the full leaf
#: hash is stored with every block over 4 KiB) and we hash each value once, inside the
#: log's verification, instead of twice. Smaller blocks hash cheaply on our side.
RANGE_LEAVES_MIN_BLOCK: Final = 8 * 1024
#: Once a fork conflict with a peer is proven, the session waits this long at most
#: for what it queued for the peer (its conflict proof, answers to the peer's own
#: checks) to be written before it drops the peer: the peer then learns of the
#: conflict too instead of seeing the stream end.
CONFLICT_GOODBYE_TIMEOUT: Final = 2.0
