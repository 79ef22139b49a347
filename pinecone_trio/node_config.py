"""A node's tunables, limits and counters (`NodeConfig`, `NodeCounters`, the constants).

Kept apart from the `Node` so that what a node may do (peers, queues, buffers, dial
rates) reads in one place; `pinecone_trio.node` re-exports the public names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import trio

from .backoff import DIAL_TIMEOUT
from .identity import PublicKey
from .link.constants import HANDSHAKE_TIMEOUT
from .router.state import RouterConfig
from .sessions.config import SessionConfig

#: Peerings a node accepts by default (the router has 253 ports; keep headroom).
DEFAULT_MAX_PEERS: Final = 64
#: Inbound connections allowed to be mid-handshake at once; more are closed at once.
MAX_PENDING_HANDSHAKES: Final = 32
#: ... and, once half of those are taken, from any one address (where the transport
#: tells it: TCP) at most this many: so one host's silent connections cannot take every
#: slot and lock honest peers out, while a burst from one address (nodes behind a NAT,
#: several on one machine) still fits while the node is not busy. A host with many
#: addresses still can; each slot is held at most `HANDSHAKE_MESSAGE_TIMEOUT` per
#: message the peer owes, and `NodeConfig.handshake_timeout` in all.
MAX_PENDING_HANDSHAKES_PER_HOST: Final = 4
#: Seconds an inbound connection has for each of its handshake messages (1 and 3), with
#: the default `NodeConfig.handshake_timeout` (10 s); it scales with that setting
#: (`handshake_message_timeout`), so a user who allows slow links more time gives
#: each message more too. An honest dialler sends message 1 as soon as it connects
#: and message 3 one round trip after our message 2; a silent connection gives its
#: pending-handshake slot back after this, not after the whole handshake timeout.
HANDSHAKE_MESSAGE_TIMEOUT: Final = 3.0
#: Items the router inbox holds before senders wait (back-pressure on peer readers).
INBOX_SIZE: Final = 1024
#: Events buffered per subscriber before that subscriber misses some.
EVENT_BUFFER: Final = 256
#: Event subscribers at once (each holds a buffer of EVENT_BUFFER events).
MAX_SUBSCRIBERS: Final = 256
#: The router handles at most about this many queued inputs (frames of a `FrameBatch`
#: count one each) in one go before checking timers and letting the writers run.
ROUTER_BATCH: Final = 256
#: A key heard in a beacon is dialled at most once per this many seconds at one address.
BEACON_REDIAL_INTERVAL: Final = 5.0
#: (key, address) pairs remembered for the beacon redial limit.
MAX_BEACON_MEMORY: Final = 1024
#: Dials triggered by beacons in progress at once; more beacons wait for the next round.
MAX_BEACON_DIALS: Final = 16
#: Of those, at most this many to addresses one host's beacons named.
MAX_BEACON_DIALS_PER_HOST: Final = 2
#: A static peering that lasted at least this long counts as a success (backoff reset);
#: one that ended sooner counts as a failure, so a peer that accepts and hangs up at
#: once is redialled with growing delays, not in a tight loop.
STATIC_STABLE_AFTER: Final = 10.0
#: Locally originated traffic queued at most before `send` waits (back-pressure).
LOCAL_SEND_BYTES: Final = 2 * 1024 * 1024
LOCAL_SEND_FRAMES: Final = 256
#: The capability a listener at its peer limit advertises before it closes the link.
REFUSED_PEER_LIMIT: Final = "refused:peer-limit"
#: How long a node leaving through `open_node` waits for its sessions' CLOSE packets
#: to reach the links, so that peers learn at once instead of by their idle timeout.
GOODBYE_GRACE: Final = 0.25
#: How long, before that, a leaving node waits for streams the application ended (FIN
#: queued) to be delivered: acknowledged up to their FIN. Usually one round trip; a
#: peer that stopped reading or answering costs at most this.
GOODBYE_LINGER: Final = 1.0


#: The router settings a running node uses unless told otherwise. The engine's own
#: defaults are Pinecone's timers (the simulator's benchmark reports those); a node
#: deviates in two measured ways (docs/router.md, "Snake stability" and "Root sequence
#: refresh"): snake entries live 12.5 s instead of 10 s, so an entry refreshed every
#: other 5 s round does not expire at the instant it is refreshed, and bootstraps whose
#: root sequence is one behind still count, so the 30-minute root refresh does not
#: clear every descending neighbour in the network at once.
DEPLOYED_ROUTER_CONFIG: Final = RouterConfig(snake_expiry=12.5, root_seq_tolerance=1)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Tunables of a node; the defaults suit a relay or an app on a laptop."""

    max_peers: int = DEFAULT_MAX_PEERS
    #: Send keepalives and drop silent peers (Pinecone's 3 s / 5 s). Off only for tests
    #: of idle behaviour over memory links.
    keepalives: bool = True
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    dial_timeout: float = DIAL_TIMEOUT
    router: RouterConfig | None = None
    sessions: SessionConfig | None = None
    #: Overrides for multicast discovery (tests use a short interval).
    beacon_interval: float | None = None
    multicast_port: int | None = None
    #: Keep up to 4 MiB of free heap per malloc arena instead of returning it to the
    #: kernel after every large packet (glibc only, process-wide, set by the first node
    #: that runs; see `pinecone_trio._allocator`). False leaves the C allocator as it is.
    tune_allocator: bool = True
    #: Serve the DHT (`Node.dht`): store and answer the topic records homed at this
    #: node's key, whether or not the application announces or looks anything up.
    #: False makes the node a hole in the DHT of the overlay: the topics homed at its
    #: key (about 1/N of them among N nodes) can then be neither announced nor found,
    #: by anyone (docs/dht.md). For an overlay whose applications use no DHT.
    dht: bool = True


def handshake_message_timeout(handshake_timeout: float) -> float:
    """The per-message deadline of an inbound handshake: `HANDSHAKE_MESSAGE_TIMEOUT` at
    the default 10 s handshake timeout, in proportion to it otherwise."""
    return HANDSHAKE_MESSAGE_TIMEOUT * handshake_timeout / HANDSHAKE_TIMEOUT


@dataclass(slots=True)
class StaticPeerState:
    """What `status()` shows for one static peer."""

    uri: str
    state: str = "starting"
    public_key: PublicKey | None = None
    failures: int = 0
    last_error: str = ""
    next_attempt: float = 0.0
    cancel_scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    def status(self, now: float) -> dict[str, Any]:
        """This static peer's part of `Node.status()` (JSON-ready)."""
        waiting = self.state == "waiting"
        return {
            "uri": self.uri,
            "state": self.state,
            "public_key": self.public_key.hex() if self.public_key is not None else None,
            "failures": self.failures,
            "last_error": self.last_error,
            "next_attempt_in": round(max(0.0, self.next_attempt - now), 3) if waiting else None,
        }


@dataclass(slots=True)
class NodeCounters:
    handshake_failures: int = 0
    misbehaving_peers: int = 0
    refused_peer_limit: int = 0
    refused_pending_handshakes: int = 0
    duplicate_links: int = 0
    dial_failures: int = 0
    receive_drops: int = 0
    unknown_service: int = 0
    queue_drops: int = 0
