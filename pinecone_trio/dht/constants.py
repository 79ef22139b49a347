"""Named limits and timers of the DHT (see docs/dht.md for the reasoning)."""

from __future__ import annotations

from typing import Final

from ..router.constants import MAX_TRAFFIC_PAYLOAD

#: Wire version of every DHT message.
DHT_VERSION: Final = 1

# --- records ----------------------------------------------------------------------

#: Bytes of application data a record may carry (a port, an address hint, a name).
MAX_RECORD_DATA: Final = 512
#: Longest lifetime a store grants a record, whatever the record asks for (seconds).
MAX_RECORD_TTL: Final = 300
#: Lifetime announcers ask for (seconds): a bit over two refresh intervals, so one
#: lost refresh does not make a live peer disappear (hyperdht: 20 min TTL, 10 min refresh).
RECORD_TTL: Final = 150
#: How often an active announcement is re-signed and re-sent to the closest node.
ANNOUNCE_REFRESH_INTERVAL: Final = 60.0
#: Refreshes are spread by up to this fraction of the interval (no lockstep).
ANNOUNCE_JITTER: Final = 0.1
#: After an announcement got no acknowledgement at all, try again this much sooner.
ANNOUNCE_RETRY_INTERVAL: Final = 10.0
#: An announcer signs its records with `seq` = its wall clock in microseconds (kept
#: strictly increasing), so a store can tell when a record was made: one whose
#: `seq + lifetime` lies further in the past than this (seconds) expired where it was
#: made, and is refused as a replay. It is also the clock difference tolerated between
#: nodes. Sequence numbers below `SEQ_TIMESTAMP_FLOOR` are plain counters (another
#: implementation, or tests) and are not judged by time.
MAX_CLOCK_SKEW: Final = 600
#: How long a withdrawal (a signed record with ttl 0) is remembered, so that a replay of
#: the older record is refused: until every older record has expired at its origin.
#: An older record is refused once our clock passes its signing time (before the
#: withdrawal's) + `MAX_RECORD_TTL` + `MAX_CLOCK_SKEW`, and the withdrawal reaches us
#: when our clock reads at least its signing time - `MAX_CLOCK_SKEW` (a later signing
#: time is refused), hence the sum. (It was `MAX_RECORD_TTL`: a captured copy of a
#: withdrawn record could be stored again for up to 10 minutes after its tombstone died.)
TOMBSTONE_TTL: Final = MAX_RECORD_TTL + 2 * MAX_CLOCK_SKEW
#: 2020-01-01T00:00:00Z in microseconds: a seq at or above it is a signing time.
SEQ_TIMESTAMP_FLOOR: Final = 1_577_836_800_000_000

# --- the store --------------------------------------------------------------------

#: Distinct topics one node stores; beyond it the least recently announced topic goes.
MAX_TOPICS: Final = 4096
#: Records one topic holds; beyond it the one closest to expiry goes.
MAX_RECORDS_PER_TOPIC: Final = 64
#: Records (and tombstones) one node stores in all; beyond it the oldest goes.
MAX_TOTAL_RECORDS: Final = 16384
#: With records stored, expired ones are swept at least this often (seconds); reads
#: and writes also expire first, so this only keeps memory and counts honest.
EXPIRY_SWEEP_INTERVAL: Final = 30.0
#: Records one lookup reply carries at most (the freshest first).
MAX_LOOKUP_RECORDS: Final = 32

# --- replication ------------------------------------------------------------------

#: Copies the closest node pushes down the snake (to its descending neighbour, which
#: forwards to its own while copies remain) and up it. Down is the reliable direction:
#: a converged snake knows every node's true predecessor, while the ascending key is
#: only local knowledge. When the closest node dies, the next closest (its successor)
#: has the dead node's predecessor as its new descending neighbour, and a lookup asks
#: the closest node's neighbours too, so it finds the copies there.
REPLICAS_DESCENDING: Final = 2
REPLICAS_ASCENDING: Final = 1
#: Every node tells its descending neighbour "I am your successor" this often (seconds)
#: and whenever its descending neighbour changes: the router's ascending key is only
#: local knowledge (wrong for about half the nodes of a converged 18-node test network),
#: and copies pushed up must reach the true successor. A claim is trusted this long.
SUCCESSOR_INTERVAL: Final = 5.0
SUCCESSOR_TTL: Final = 3 * SUCCESSOR_INTERVAL
#: When a snake neighbour changes (a closer successor claimed, the descending one died or
#: a node joined next to us), the copies we owe that side are pushed to the new neighbour
#: at once rather than at the announcer's next refresh: this many records at most (the
#: most recently stored first), well inside the shell's outbox ...
MAX_HANDOFF_RECORDS: Final = 256
#: ... out of a budget per node, not per change, refilled at this many copies a second
#: (`MAX_HANDOFF_RECORDS` per `SUCCESSOR_TTL`). A successor claim is unauthenticated
#: and any key between ours and the successor's can be claimed: with a budget per
#: change, every forged 3-byte claim bought 256 STOREs (140 KB) to the forged key.
HANDOFF_RATE: Final = MAX_HANDOFF_RECORDS / SUCCESSOR_TTL
#: Neighbour keys a lookup reply carries (the responder's descending and ascending).
MAX_NEIGHBOURS: Final = 4

# --- requests ---------------------------------------------------------------------

#: One request (an announce, a lookup of one node) is re-sent after this long without
#: an answer (dht-rpc: 1 s) ...
REQUEST_TIMEOUT: Final = 1.0
#: ... this many times before it counts as failed.
REQUEST_RETRIES: Final = 2
#: Default overall bound of `lookup` (seconds).
LOOKUP_TIMEOUT: Final = 10.0
#: A node that knows no snake neighbour has joined no overlay yet (it just started, or
#: lost every peer): alone, it is the closest node to every topic, so a request sent
#: then is answered by itself. An announce waits this long (seconds) for the node to
#: join, then goes out anyway (the node stores and acknowledges its own record); an
#: announcement no overlay has acknowledged yet is sent again the moment the node joins
#: (a user's app announced at startup, alone, and its record stayed on itself).
ANNOUNCE_JOIN_WAIT: Final = REQUEST_TIMEOUT * (1 + REQUEST_RETRIES)
#: A lookup started alone waits this long (seconds, within its own timeout) for the node
#: to join, and is sent the moment it does; still alone then, it answers from the node's
#: own store (before 2026-11-22 it waited its whole timeout, 10 s by default, on a node
#: run alone for a demo). One request timeout more than an announce waits, so a lookup
#: started beside an announcement on a lone node finds it stored.
LOOKUP_JOIN_WAIT: Final = ANNOUNCE_JOIN_WAIT + REQUEST_TIMEOUT
#: Joining an overlay (again) re-sends each announcement the overlay has acknowledged
#: before, since its home may have moved while we were away; for a node that keeps
#: losing its only peer and getting it back, these re-sends are damped per announcement,
#: like route-flap damping (RFC 2439). The first re-send after a calm period goes at
#: once; the next may go this long (seconds) after it at the earliest, and each further
#: one doubles the wait ...
JOIN_RESEND_PENALTY: Final = 10.0
#: ... up to this: at worst a flapping node's join re-sends of each announcement come
#: about as often as its refreshes, on top of them (a re-send is a refresh: it re-signs
#: and restarts the interval; measured 1.6 sends a minute per announcement, all told) ...
JOIN_RESEND_MAX_PENALTY: Final = ANNOUNCE_REFRESH_INTERVAL
#: ... and the wait starts over at `JOIN_RESEND_PENALTY` once an announcement has had no
#: join re-send for this long (the node stopped flapping). A join within the wait moves
#: the re-send to the end of the wait, sent then if the node is still joined. (Before
#: 2026-11-22 every join re-signed and re-sent every announcement: 50 sends per join for
#: a node announcing 50 topics, whatever the rate of joins.)
JOIN_RESEND_RESET: Final = 2 * JOIN_RESEND_MAX_PENALTY
#: Lookups and announcements one node has in flight at once.
MAX_PENDING: Final = 1024
#: Nodes one lookup asks (the closest node and the neighbours it names).
MAX_LOOKUP_QUERIES: Final = 1 + MAX_NEIGHBOURS

# --- rate limits --------------------------------------------------------------------

#: Requests (announce, store, lookup) accepted per claimed source key: a token bucket.
SOURCE_RATE: Final = 50.0
SOURCE_BURST: Final = 200.0
#: Source keys whose buckets are remembered (the least recently seen are forgotten).
MAX_TRACKED_SOURCES: Final = 4096

# --- wire -------------------------------------------------------------------------

#: The largest DHT message: one overlay datagram (`node.MAX_DATAGRAM_PAYLOAD`: the
#: router's limit less the service byte; not imported from node.py, which imports trio).
MAX_MESSAGE_SIZE: Final = MAX_TRAFFIC_PAYLOAD - 1
#: Size of keys, topic ids and signatures.
KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
