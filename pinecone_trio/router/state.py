"""RouterState: the sans-IO router engine (tree + snake + hybrid forwarding).

Theory of operation
-------------------
One `RouterState` is one node's routing brain. It never reads a clock and never does
I/O: the owner (the Trio driver or the simulator) calls

* `on_input(event, now)` for every `PeerUp`, `PeerDown`, `FrameIn`, `LocalSend` and
  `LocalSendClosest`, and
* `on_timer(now)` whenever `now >= next_deadline()`,

and carries out the returned actions in order (`SendFrame`, `DeliverLocal`,
`DropPeer`, `Emit`). `now` is in seconds and must never decrease.

Inside, three parts share the per-port peer records:

* the spanning tree (tree.py, research §5): stored announcements per port, the parent,
  our root sequence, the 1 s reparent hold-down, the 30 min root refresh;
* the virtual snake (snake.py, research §7): the soft-state table of bootstrap paths,
  the descending neighbour, the 1 s maintenance tick and 5 s bootstraps;
* forwarding (forward.py, research §8): tree next hop for traffic with destination
  coordinates, snake next hop (closest key from above, watermarks) otherwise, the
  source coordinate cache that turns replies into tree-routed traffic.

Invariants the simulator checks through the read-only accessors: tree routing strictly
decreases tree distance; snake routing never raises the watermark key; local delivery
of `Traffic` happens only when the destination key is exactly ours; every table is
bounded by a constant in constants.py.

Remote input never raises: malformed or illegal frames become `DropPeer` (announcement
rule violations) or a counter in `statistics()` (everything else). Local misuse
(an impossible port, a duplicate `PeerUp`, an oversized payload) raises
`LocalProtocolError`.

Queues are not in here: `SendFrame` means "enqueue for that port"; queues.PeerQueue
gives the driver and the simulator the same discipline (protocol frames first and
bounded; fair per-flow traffic with head drop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import final

from .actions import Action, Input, PeerType
from .constants import (
    ANNOUNCEMENT_INTERVAL,
    ANNOUNCEMENT_TIMEOUT,
    BOOTSTRAP_INTERVAL,
    COORDS_CACHE_LIFETIME,
    COORDS_CACHE_SWEEP,
    MAX_COORDS_CACHE,
    MAX_SNAKE_ENTRIES,
    REPARENT_WAIT,
    SNAKE_EXPIRY,
    SNAKE_MAINTAIN_INTERVAL,
    TRAFFIC_HOP_LIMIT,
)
from .signer import Signer
from .wire import Coords

__all__ = ["PeerStatus", "RouterConfig", "RouterState", "RouterStatistics"]


@final
@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Tunable timers and bounds; the defaults are Pinecone's (research §16)."""

    announcement_interval: float = ANNOUNCEMENT_INTERVAL
    announcement_timeout: float = ANNOUNCEMENT_TIMEOUT
    reparent_wait: float = REPARENT_WAIT
    snake_maintain_interval: float = SNAKE_MAINTAIN_INTERVAL
    bootstrap_interval: float = BOOTSTRAP_INTERVAL
    snake_expiry: float = SNAKE_EXPIRY
    coords_cache_lifetime: float = COORDS_CACHE_LIFETIME
    coords_cache_sweep: float = COORDS_CACHE_SWEEP
    max_snake_entries: int = MAX_SNAKE_ENTRIES
    max_coords_cache: int = MAX_COORDS_CACHE
    hop_limit: int = TRAFFIC_HOP_LIMIT
    #: Seconds added to `now` to get Unix time for bootstrap sequence numbers
    #: (the driver passes time.time() - trio.current_time()). Sequences are
    #: max(last + 1, unix_ms), so they stay monotonic whatever the clock does.
    wall_clock_offset: float = 0.0


@final
@dataclass(slots=True)
class RouterStatistics:
    """Counters; every dropped frame is counted under one reason."""

    frames_in: int = 0
    frames_sent: int = 0
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peering as the router sees it."""

    port: int
    public_key: bytes
    peer_type: PeerType
    zone: str
    #: The peer's tree coordinates, None until its first announcement.
    coords: Coords | None
    root_key: bytes | None
    root_seq: int | None


@final
class RouterState:
    """One node's sans-IO router.

    Args:
        public_key: our 32-byte key; must equal `signer.public_key`.
        signer: `Ed25519Signer` or `NullSigner`.
        config: timers and bounds.
        now: the time the engine starts at (its first deadlines count from here).

    Raises:
        LocalProtocolError: if the key is not 32 bytes or differs from the signer's.
    """

    def __init__(
        self,
        public_key: bytes,
        signer: Signer,
        *,
        config: RouterConfig | None = None,
        now: float = 0.0,
    ) -> None:
        raise NotImplementedError

    # --- driving ------------------------------------------------------------------------

    def on_input(self, event: Input, now: float) -> list[Action]:
        """Process one input; return the actions to carry out, in order."""
        raise NotImplementedError

    def on_timer(self, now: float) -> list[Action]:
        """Run every timer due at `now` (safe to call early: nothing happens)."""
        raise NotImplementedError

    def next_deadline(self) -> float:
        """When `on_timer` must next be called; `math.inf` if never."""
        return math.inf

    # --- read-only accessors ------------------------------------------------------------

    @property
    def public_key(self) -> bytes:
        raise NotImplementedError

    @property
    def root(self) -> tuple[bytes, int]:
        """Our root as (key, sequence); our own key when we are the root."""
        raise NotImplementedError

    @property
    def coords(self) -> Coords:
        """Our tree coordinates (empty when root)."""
        raise NotImplementedError

    @property
    def parent_port(self) -> int | None:
        """The port of our tree parent, None when we are root."""
        raise NotImplementedError

    @property
    def descending_key(self) -> bytes | None:
        """Our descending snake neighbour's key (valid entries only), or None."""
        raise NotImplementedError

    @property
    def ascending_key(self) -> bytes | None:
        """The smallest key above ours that we know a route to (where our next bootstrap
        heads), or None. This is local knowledge, not necessarily the true successor."""
        raise NotImplementedError

    def peers(self) -> list[PeerStatus]:
        """Every live peering, by port."""
        raise NotImplementedError

    def snake_table_size(self) -> int:
        raise NotImplementedError

    def coords_cache_size(self) -> int:
        raise NotImplementedError

    def statistics(self) -> RouterStatistics:
        """Counters since start (a live object; copy it to snapshot)."""
        raise NotImplementedError
