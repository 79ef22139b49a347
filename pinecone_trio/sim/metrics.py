"""Measurements: probe packets with hop counts, delivery, stretch and summaries.

Theory of operation
-------------------
A probe exchange between an ordered pair (a, b) is three real `Traffic` packets sent
through the engines with `LocalSend`, exactly as an application would:

1. **first**: a -> b. a has no coordinates for b, so this is snake-routed (SNEK): the
   "first packet" of a conversation.
2. **reply**: b -> a, sent by b's application when the first packet arrives. b has just
   cached a's source coordinates, so this is tree-routed.
3. **steady**: a -> b again, sent `steady_gap` seconds after the reply arrives. a now
   has b's coordinates too: this is the steady state of hybrid routing.

The simulator sees every `SendFrame`, so it counts the links each probe crosses
itself (the engine's own `hops` field is cross-checked in tests), and it notices a
probe that is forwarded again by a node it already passed through *in the same routing
state* (same watermark, same destination coordinates): a **forwarding loop**, which
watermarks (snake) and strictly decreasing tree distance must rule out. Coming back to
a node with a strictly better watermark is allowed by the protocol (the packet made
progress in keyspace); it is counted separately as a **revisit**.
Bootstraps are watched the same way (one bootstrap is its origin and sequence number).

Definitions (research §14.3, where pineconesim's numbers go wrong):

* a probe is **delivered** when the engine of its destination node hands it to the
  application (`DeliverLocal`, exact key) within `timeout` seconds of being sent;
* **delivery ratio** = delivered probes / sent probes, counting only probes whose two
  ends were in the same component of the live graph when sent (others cannot arrive);
* **stretch** of a delivered probe = links crossed / BFS shortest path length at send
  time; mean, p50, p95 and max are over delivered probes only, first packets and steady
  packets separately. Hops are counted from 0 at the sender, so a neighbour is 1 hop.
  A first packet that left with destination coordinates (its sender had heard from the
  destination within the cache lifetime) is not a first packet for stretch purposes and
  is only counted (`first_with_coords`); pairs are chosen to make that rare.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, final

from ..router.actions import DeliverLocal, DeliveryMode, LocalSend
from ..router.wire import Bootstrap, Frame, Payload, Traffic
from .network import Link, Network

#: Probe payloads start with this, then the probe id (8 bytes, big endian).
PROBE_MAGIC: Final = b"\x00pc-sim-probe"
_ID: Final = struct.Struct(">Q")
_HEADER_LEN: Final = len(PROBE_MAGIC) + _ID.size

FIRST: Final = 0
REPLY: Final = 1
STEADY: Final = 2
KIND_NAMES: Final = ("first", "reply", "steady")

#: pineconesim's ping timeout (research §14.2).
DEFAULT_TIMEOUT: Final = 5.0
#: Bound on probes remembered by one `Prober`.
MAX_PROBES: Final = 5_000_000
#: Bound on remembered (bootstrap, node) visits; the memory is cleared when full, so a
#: loop is still caught unless it is longer than this many forwarding steps.
MAX_BOOTSTRAP_VISITS: Final = 1_000_000


@final
class Probe:
    """One probe packet."""

    __slots__ = (
        "delivered_at",
        "dst",
        "engine_hops",
        "hops",
        "kind",
        "left_with_coords",
        "looped",
        "pair_id",
        "revisited",
        "sent",
        "shortest",
        "src",
        "visited",
    )

    def __init__(self, pair_id: int, kind: int, src: int, dst: int, sent: float, shortest: int):
        self.pair_id = pair_id
        self.kind = kind
        self.src = src
        self.dst = dst
        self.sent = sent
        self.shortest = shortest
        self.hops = 0
        self.engine_hops = -1
        self.delivered_at = math.inf
        self.looped = False
        #: Whether the sender put destination coordinates on it (tree routing).
        self.left_with_coords = False
        #: (node, watermark key, watermark seq, destination coords) of every hop.
        self.visited: set[tuple[int, bytes, int, tuple[int, ...]]] | None = set()
        self.revisited = False


@final
@dataclass(frozen=True, slots=True)
class Summary:
    """Mean, median, 95th percentile and maximum of a sample (nearest rank)."""

    count: int
    mean: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            nan = math.nan
            return cls(0, nan, nan, nan, nan)
        ordered = sorted(values)
        n = len(ordered)

        def rank(q: float) -> float:
            return ordered[max(0, math.ceil(q * n) - 1)]

        return cls(n, sum(ordered) / n, rank(0.5), rank(0.95), ordered[-1])


@final
@dataclass(slots=True)
class ProbeReport:
    """Delivery and stretch over a set of probes."""

    sent: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    stretch: dict[str, Summary] = field(default_factory=dict)
    loops: int = 0
    misdelivered: int = 0
    hop_mismatches: int = 0
    #: First packets that left with coordinates (the sender had heard from the
    #: destination recently): not counted in the first-packet stretch.
    first_with_coords: int = 0
    #: Steady packets that left without coordinates (snake-routed): counted anyway.
    steady_without_coords: int = 0

    @property
    def delivery_ratio(self) -> float:
        sent = sum(self.sent.values())
        return sum(self.delivered.values()) / sent if sent else math.nan

    def ratio(self, kind: str) -> float:
        sent = self.sent.get(kind, 0)
        return self.delivered.get(kind, 0) / sent if sent else math.nan


@final
class Prober:
    """Sends probe exchanges through a `Network` and records what happens to them.

    It installs itself as the network's `on_send` and `on_deliver` hooks.
    """

    def __init__(
        self,
        net: Network,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        steady_gap: float = 0.5,
        track_loops: bool = True,
    ) -> None:
        self.net = net
        self.timeout = timeout
        self.steady_gap = steady_gap
        self.track_loops = track_loops
        self.probes: list[Probe] = []
        self.loops = 0
        self.revisits = 0
        self.bootstrap_loops = 0
        self.misdelivered = 0
        self._bootstrap_visits: set[tuple[bytes, int, int, tuple[bytes, int] | None]] = set()
        self._pairs = 0
        self._bfs: dict[int, tuple[int, dict[int, int]]] = {}
        net.on_send = self._on_send
        net.on_deliver = self._on_deliver

    def distance(self, a: int, b: int) -> int | None:
        """BFS hops from `a` to `b` in the live graph now (cached per graph version)."""
        graph = self.net.graph
        cached = self._bfs.get(a)
        if cached is None or cached[0] != graph.version:
            if len(self._bfs) > 4096:
                self._bfs.clear()
            cached = self._bfs[a] = (graph.version, graph.bfs(a))
        return cached[1].get(b)

    def start(self, src: int, dst: int) -> bool:
        """Begin an exchange src -> dst now; False (nothing sent) if they are not
        connected in the live graph."""
        self._pairs += 1
        return self._send(self._pairs, FIRST, src, dst) is not None

    def start_nowait(self, src: int, dst: int) -> None:
        """`start`, ignoring the result (for scheduling with `Network.call_at`)."""
        self.start(src, dst)

    def _send(self, pair_id: int, kind: int, src: int, dst: int) -> Probe | None:
        net = self.net
        if not (net.nodes[src].alive and net.nodes[dst].alive):
            return None
        # The pair's distance is symmetric: always search from the exchange's initiator.
        shortest = self.distance(src, dst) if kind != REPLY else self.distance(dst, src)
        if shortest is None or shortest == 0:
            return None
        if len(self.probes) >= MAX_PROBES:
            raise RuntimeError("too many probes for one prober")
        probe = Probe(pair_id, kind, src, dst, net.now, shortest)
        if not self.track_loops:
            probe.visited = None
        pid = len(self.probes)
        self.probes.append(probe)
        payload = PROBE_MAGIC + _ID.pack(pid)
        net.local_input(src, LocalSend(destination_key=net.nodes[dst].key, payload=payload))
        return probe

    def _probe_of(self, payload: Payload) -> Probe | None:
        if len(payload) != _HEADER_LEN or payload[: len(PROBE_MAGIC)] != PROBE_MAGIC:
            return None
        pid = _ID.unpack_from(payload, len(PROBE_MAGIC))[0]
        return self.probes[pid] if pid < len(self.probes) else None

    def _on_send(self, node: int, link: Link, frame: Frame) -> None:
        if type(frame) is Bootstrap:
            if self.track_loops:
                self._bootstrap_visit(node, frame)
            return
        if type(frame) is not Traffic:
            return
        assert isinstance(frame, Traffic)
        probe = self._probe_of(frame.payload)
        if probe is None:
            return
        if probe.hops == 0:
            probe.left_with_coords = bool(frame.destination_coords)
        probe.hops += 1
        visited = probe.visited
        if visited is not None:
            state = (node, frame.watermark_key, frame.watermark_seq, frame.destination_coords)
            if state in visited:
                # Back at a node in the same routing state: nothing bounds this but the
                # hop limit. That is the loop watermarks and tree distance must prevent.
                if not probe.looped:
                    self.loops += 1
                probe.looped = True
            elif not probe.revisited and any(v[0] == node for v in visited):
                # Back at a node with a better watermark: allowed, but a detour.
                probe.revisited = True
                self.revisits += 1
            visited.add(state)

    def _bootstrap_visit(self, node: int, frame: Bootstrap) -> None:
        # A bootstrap is one (origin, sequence); forwarding it twice from one node is a loop.
        # Its handover or path-break notice (watermark at or below the origin,
        # docs/router.md deviations 21 and 24) is a separate journey: one node may
        # forward the bootstrap and later the handover or notice. A teardown (watermark
        # (origin, 0)) is not checked: it fans out along every path the origin's rounds
        # took from a node, and a node passes it on only when it removes an entry, so its
        # sends are bounded by the installations, i.e. by the bootstrap and handover hops
        # checked here; a handover copy of the same round can reinstall an entry behind
        # a teardown, which is then torn down (and passed on over the same link) again.
        wk = frame.watermark_key
        origin = frame.destination_key
        if wk == origin and frame.watermark_seq == 0:
            return
        visit = (
            origin,
            frame.sequence,
            node,
            None if wk > origin else (wk, frame.watermark_seq),
        )
        visits = self._bootstrap_visits
        if visit in visits:
            self.bootstrap_loops += 1
            return
        if len(visits) >= MAX_BOOTSTRAP_VISITS:
            visits.clear()
        visits.add(visit)

    def _on_deliver(self, node: int, delivery: DeliverLocal) -> None:
        probe = self._probe_of(delivery.payload)
        if probe is None:
            return
        if node != probe.dst or delivery.mode is not DeliveryMode.EXACT:
            self.misdelivered += 1
            return
        if probe.delivered_at < math.inf:
            return
        now = self.net.now
        probe.delivered_at = now
        probe.engine_hops = delivery.hops
        probe.visited = None
        if now - probe.sent > self.timeout:
            return
        if probe.kind == FIRST:
            self._send(probe.pair_id, REPLY, probe.dst, probe.src)
        elif probe.kind == REPLY:
            pair_id, src, dst = probe.pair_id, probe.dst, probe.src
            self.net.call_at(now + self.steady_gap, lambda: self._steady(pair_id, src, dst))

    def _steady(self, pair_id: int, src: int, dst: int) -> None:
        self._send(pair_id, STEADY, src, dst)

    def report(self, since: float = -math.inf, until: float = math.inf) -> ProbeReport:
        """Delivery and stretch of the probes sent in ``[since, until)``."""
        result = ProbeReport()
        ratios: dict[str, list[float]] = {name: [] for name in KIND_NAMES}
        for probe in self.probes:
            if not since <= probe.sent < until:
                continue
            name = KIND_NAMES[probe.kind]
            result.sent[name] = result.sent.get(name, 0) + 1
            if probe.looped:
                result.loops += 1
            if probe.kind == FIRST and probe.left_with_coords:
                result.first_with_coords += 1
            if probe.kind == STEADY and probe.hops and not probe.left_with_coords:
                result.steady_without_coords += 1
            if probe.delivered_at - probe.sent <= self.timeout:
                result.delivered[name] = result.delivered.get(name, 0) + 1
                if not (probe.kind == FIRST and probe.left_with_coords):
                    ratios[name].append(probe.hops / probe.shortest)
                if probe.engine_hops != probe.hops:
                    result.hop_mismatches += 1
        result.misdelivered = self.misdelivered
        result.stretch = {name: Summary.of(values) for name, values in ratios.items()}
        return result

    def pending_until(self) -> float:
        """When the last probe sent so far times out."""
        return max((p.sent for p in self.probes), default=-math.inf) + self.timeout


def sample_pairs(net: Network, max_pairs: int, rng: random.Random) -> list[tuple[int, int]]:
    """Pairs of distinct live nodes in the same component, each unordered pair at most
    once, in a random direction (the exchange's reply covers the other direction, and a
    node must not have heard from its destination before its first packet).

    All pairs when there are at most `max_pairs`; otherwise a seeded sample: about
    ``2 * sqrt(max_pairs)`` sources (so few BFS runs are needed), each with destinations
    drawn uniformly from its component.
    """
    components = [c for c in net.graph.components() if len(c) > 1]
    total = sum(len(c) * (len(c) - 1) // 2 for c in components)
    if total <= max_pairs:
        every = [(a, b) for c in components for i, a in enumerate(c) for b in c[i + 1 :]]
        return [(a, b) if rng.random() < 0.5 else (b, a) for a, b in every]
    members = [a for c in components for a in c]
    where = {a: (c, i) for c in components for i, a in enumerate(c)}
    n_sources = max(1, min(len(members), math.isqrt(max_pairs) * 2))
    sources = rng.sample(members, n_sources)
    pairs: list[tuple[int, int]] = []
    seen: set[tuple[int, int]] = set()
    for i in range(4 * max_pairs):
        if len(pairs) >= max_pairs:
            break
        a = sources[i % n_sources]
        c, position = where[a]
        j = rng.randrange(len(c) - 1)  # uniform over the component without a
        b = c[j + 1] if j >= position else c[j]
        key = (min(a, b), max(a, b))
        if key not in seen:
            seen.add(key)
            pairs.append((a, b))
    return pairs
