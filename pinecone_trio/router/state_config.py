"""`RouterConfig`, `RouterStatistics` and `PeerStatus`: what `RouterState` is tuned
with and what it reports (re-exported by state.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import final

from .actions import PeerType
from .constants import (
    ANNOUNCEMENT_INTERVAL,
    ANNOUNCEMENT_TIMEOUT,
    BOOTSTRAP_INTERVAL,
    BOOTSTRAP_MIN_GAP,
    COORDS_CACHE_LIFETIME,
    COORDS_CACHE_SWEEP,
    MAX_COORDS_CACHE,
    MAX_SNAKE_ENTRIES,
    REPARENT_WAIT,
    SNAKE_EXPIRY,
    SNAKE_MAINTAIN_INTERVAL,
    SNAKE_PATH_GRACE,
    TRAFFIC_HOP_LIMIT,
)
from .wire import Coords

__all__ = ["PeerStatus", "RouterConfig", "RouterStatistics"]


@final
@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Tunable timers and bounds; the defaults are Pinecone's (research §16)."""

    announcement_interval: float = ANNOUNCEMENT_INTERVAL
    announcement_timeout: float = ANNOUNCEMENT_TIMEOUT
    reparent_wait: float = REPARENT_WAIT
    snake_maintain_interval: float = SNAKE_MAINTAIN_INTERVAL
    bootstrap_interval: float = BOOTSTRAP_INTERVAL
    #: A bootstrap wanted "soon" goes out at once, but never sooner than this after the
    #: previous one (Pinecone: on the next 1 s maintenance tick).
    bootstrap_min_gap: float = BOOTSTRAP_MIN_GAP
    #: When a bootstrap ends here and its origin displaces a valid descending neighbour
    #: (a node joined between the two), pass it on towards the displaced node, which
    #: then learns its closer successor and bootstraps to it at once (docs/router.md,
    #: deviation 21). False: Pinecone's behaviour (the displaced node finds out with its
    #: next periodic bootstrap, up to 5 s later).
    descending_handover: bool = True
    #: When a peering goes down, send each bootstrap path that went on through it back to
    #: its origin, which then bootstraps again at once (deviation 24). False: Pinecone
    #: (the origin finds a new path with its next periodic bootstrap, up to 5 s later).
    path_break_notice: bool = True
    #: A packet following a bootstrap path back (its watermark is that path's origin and
    #: sequence) may still use the entry this long after it expired (deviation 23;
    #: Pinecone: 0, and the entry is gone at the next 1 s tick).
    snake_path_grace: float = SNAKE_PATH_GRACE
    #: Pinecone's 10 s. 12.5 s removes the expire-at-refresh race of paths used every
    #: other round (docs/router.md, "Known behaviour"); kept at 10 for comparability.
    snake_expiry: float = SNAKE_EXPIRY
    coords_cache_lifetime: float = COORDS_CACHE_LIFETIME
    coords_cache_sweep: float = COORDS_CACHE_SWEEP
    max_snake_entries: int = MAX_SNAKE_ENTRIES
    max_coords_cache: int = MAX_COORDS_CACHE
    hop_limit: int = TRAFFIC_HOP_LIMIT
    #: Bootstraps and descending entries whose root differs from ours only in the
    #: sequence, by at most this much, still count as ours. Pinecone: 0, so every root
    #: refresh (30 min) drops every descending entry network-wide and rejects bootstraps
    #: until the new sequence has spread (§15, "churn by design"); 1 smooths that over
    #: (research §17.5, optional experiment).
    root_seq_tolerance: int = 0
    #: Seconds added to `now` to get Unix time for bootstrap sequence numbers
    #: (the driver passes time.time() - trio.current_time()). Sequences are
    #: max(last + 1, unix_ms), so they stay monotonic whatever the clock does.
    wall_clock_offset: float = 0.0


@final
@dataclass(slots=True)
class RouterStatistics:
    """Counters since start.

    `dropped` maps a reason to a count; every frame or input the engine discards is
    counted under exactly one reason: unknown_port, unsupported_type, bad_announcement,
    bad_signature, wrong_root, replay, own_bootstrap, snake_table_full (remembered
    nothing, still forwarded), handover_no_route, duplicate_notice, stale_teardown,
    no_route, loop, watermark, hop_limit, too_large.
    """

    #: Frames received from peers (`FrameIn`).
    frames_in: int = 0
    #: `DeliverLocal` actions produced.
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
