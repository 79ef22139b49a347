"""Traffic in the router engine (research §8): local sends, exact-key and closest-key
routing, and the source coordinate cache.

`_on_frame` dispatches a peer's frame by type. Exact-key `Traffic` with destination
coordinates goes one hop to a direct peer with that key, else down the tree
(`tree_next_hop`); without coordinates, or when the tree makes no progress, it follows
the snake with watermarks (`snake_next_hop`). `ClosestTraffic` always follows the snake,
aimed at most at the root's key (`_closest_cap`). Traffic delivered here remembers its
source's coordinates (`_cache_coords`), so that replies go by the tree; the cache is
bounded and swept by age.
"""

from __future__ import annotations

from typing import Final

from ..errors import LocalProtocolError
from .actions import Action, DeliverLocal, DeliveryMode, LocalSend, LocalSendClosest, SendFrame
from .constants import (
    KEY_SIZE,
    MAX_COORDS_WIRE_SIZE,
    MAX_FRAME_SIZE,
    MAX_TRAFFIC_PAYLOAD,
    MAX_VARU64_BYTES,
)
from .forward import LOCAL, tree_next_hop
from .snake import worse
from .state_base import RouterStateBase
from .tree import Peer
from .wire import (
    FULL_MASK,
    Bootstrap,
    ClosestTraffic,
    Coords,
    Frame,
    Keepalive,
    Traffic,
    TreeAnnouncement,
    coords_wire_size,
    frame_length,
)

#: Coordinates of at most this many ports fit in `MAX_COORDS_WIRE_SIZE` whatever the
#: ports (a varu64 is at most `MAX_VARU64_BYTES`), so only longer ones are measured.
_SHORT_COORDS: Final = (MAX_COORDS_WIRE_SIZE - 2) // MAX_VARU64_BYTES


class TrafficMixin(RouterStateBase):
    """`RouterState`'s traffic routing (see the module docstring)."""

    __slots__ = ()

    def _on_frame(self, peer: Peer, frame: Frame, now: float, out: list[Action]) -> None:
        t = type(frame)
        if t is Traffic:
            self._route_traffic(peer.port, frame, now, out)  # type: ignore[arg-type]
        elif t is Bootstrap:
            self._on_bootstrap(peer.port, frame, now, out)  # type: ignore[arg-type]
        elif t is ClosestTraffic:
            self._route_closest(peer.port, frame, now, out)  # type: ignore[arg-type]
        elif t is TreeAnnouncement:
            self._on_announcement(peer, frame.announcement, now, out)  # type: ignore[union-attr]
        elif t is Keepalive:
            pass
        else:
            self._drop("unsupported_type")

    def _closest_cap(self) -> bytes | None:
        """The highest key closest-key traffic aims at (traffic for a target above it
        goes to the node that holds it): the root's key. During a reparent hold-down we
        only act as root (our own key), while higher keys still exist: then the
        strongest root a peer outside our subtree still announces, or None when no peer
        knows a key above ours (traffic for targets above us is dropped then, not
        wrongly delivered here)."""
        root = self._current_ann().root_key
        if self._waiting_until is None:
            return root
        for p in self._peer_list:
            ann = p.ann
            if ann is not None and not p.contains_us and ann.root_key > root:
                root = ann.root_key
        return root if root > self._key else None

    def _cache_coords(self, key: bytes, coords: Coords, now: float) -> bool:
        """Remember a source's coordinates; False (the frame is to be dropped, counted
        as `oversized_coords`) for coordinates longer than any tree allows. The decoder
        refuses those already; this also covers frames handed over without the codec."""
        if len(coords) > _SHORT_COORDS and coords_wire_size(coords) > MAX_COORDS_WIRE_SIZE:
            self._drop("oversized_coords")
            return False
        c = self._coords_cache
        if key in c:
            del c[key]
        elif len(c) >= self._cfg.max_coords_cache:
            del c[next(iter(c))]
        c[key] = (coords, now)
        return True

    def _sweep_coords_cache(self, now: float) -> None:
        c = self._coords_cache
        cutoff = now - self._cfg.coords_cache_lifetime
        while c:
            k = next(iter(c))
            if c[k][1] > cutoff:
                break
            del c[k]

    def _local_send(self, ev: LocalSend, now: float, out: list[Action]) -> None:
        dest = bytes(ev.destination_key)
        payload = bytes(ev.payload)
        if len(dest) != KEY_SIZE:
            raise LocalProtocolError("a destination key is 32 bytes")
        if len(payload) > MAX_TRAFFIC_PAYLOAD:
            raise LocalProtocolError(f"payload over {MAX_TRAFFIC_PAYLOAD} bytes")
        if dest == self._key:
            self._stats.delivered += 1
            out.append(DeliverLocal(dest, payload, DeliveryMode.EXACT, dest, 0))
            return
        cached = self._coords_cache.get(dest)
        coords: Coords = ()
        if cached is not None and now - cached[1] < self._cfg.coords_cache_lifetime:
            coords = cached[0]
        f = Traffic(
            coords, self._coords, dest, self._key, FULL_MASK, 0, payload, self._cfg.hop_limit
        )
        self._route_traffic(LOCAL, f, now, out)

    def _local_send_closest(self, ev: LocalSendClosest, now: float, out: list[Action]) -> None:
        target = bytes(ev.target_key)
        payload = bytes(ev.payload)
        if len(target) != KEY_SIZE:
            raise LocalProtocolError("a target key is 32 bytes")
        if len(payload) > MAX_TRAFFIC_PAYLOAD:
            raise LocalProtocolError(f"payload over {MAX_TRAFFIC_PAYLOAD} bytes")
        f = ClosestTraffic(
            self._coords, target, self._key, FULL_MASK, 0, payload, self._cfg.hop_limit
        )
        self._route_closest(LOCAL, f, now, out)

    def _route_traffic(self, from_port: int, f: Traffic, now: float, out: list[Action]) -> None:
        key = self._key
        if f.destination_key == key:
            if f.source_coords and not self._cache_coords(f.source_key, f.source_coords, now):
                return
            self._stats.delivered += 1
            out.append(
                DeliverLocal(
                    f.source_key,
                    f.payload,
                    DeliveryMode.EXACT,
                    key,
                    max(0, self._cfg.hop_limit - f.hop_limit),
                )
            )
            return
        if f.hop_limit <= 0:
            self._drop("hop_limit")
            return
        dc = f.destination_coords
        wm_key = f.watermark_key
        wm_seq = f.watermark_seq
        if dc:
            # The destination is a direct peer: one hop beats any tree path to it.
            direct = self._index.direct_port(f.destination_key, from_port)
            if direct is not None:
                out.append(SendFrame(direct, _forwarded(f, FULL_MASK, 0)))
                return
            # A tree-routed frame carries no watermark on the wire (§3.4): treat it as
            # fresh, so that the codec and the codec-free simulator behave the same.
            wm_key = FULL_MASK
            wm_seq = 0
            ann = self._current_ann()
            nh = tree_next_hop(
                self._coords, dc, from_port, self._peer_list, ann.root_key, ann.root_seq
            )
            if nh is not None and nh != LOCAL:
                out.append(SendFrame(nh, _forwarded(f, FULL_MASK, 0)))
                return
            # No tree progress, or the coordinates are ours but the key is not (stale
            # coordinates, §8.4): fall back to the snake without coordinates.
        nh2, bk, bs = self._snake(f.destination_key, False, wm_key, wm_seq, from_port)
        if nh2 is None or nh2 == LOCAL:
            self._drop("no_route")
            return
        if nh2 == from_port:
            self._drop("loop")
            return
        if worse(bk, bs, wm_key, wm_seq):
            self._drop("watermark")
            return
        nf = Traffic(
            (),
            f.source_coords,
            f.destination_key,
            f.source_key,
            bk,
            bs,
            f.payload,
            f.hop_limit - 1,
        )
        if dc and frame_length(nf) > MAX_FRAME_SIZE:
            self._drop("too_large")  # the watermark would not fit
            return
        out.append(SendFrame(nh2, nf))

    def _route_closest(
        self, from_port: int, f: ClosestTraffic, now: float, out: list[Action]
    ) -> None:
        if f.hop_limit <= 0:
            self._drop("hop_limit")
            return
        target = f.target_key
        cap = self._closest_cap()
        if cap is None and target > self._key:
            self._drop("holddown")  # keys above ours exist, but no route to them now
            return
        # Above every key (the root's is the highest): the root is the closest node.
        nh, bk, bs = self._snake(
            target if cap is None or target <= cap else cap,
            False,
            f.watermark_key,
            f.watermark_seq,
            from_port,
        )
        if nh is None:
            self._drop("no_route")
            return
        if worse(bk, bs, f.watermark_key, f.watermark_seq):
            self._drop("watermark")
            return
        if nh == LOCAL:
            if f.source_coords and not self._cache_coords(f.source_key, f.source_coords, now):
                return
            self._stats.delivered += 1
            out.append(
                DeliverLocal(
                    f.source_key,
                    f.payload,
                    DeliveryMode.CLOSEST,
                    target,
                    max(0, self._cfg.hop_limit - f.hop_limit),
                )
            )
            return
        if nh == from_port:
            self._drop("loop")
            return
        out.append(
            SendFrame(
                nh,
                ClosestTraffic(
                    f.source_coords,
                    target,
                    f.source_key,
                    bk,
                    bs,
                    f.payload,
                    f.hop_limit - 1,
                ),
            )
        )


def _forwarded(f: Traffic, wm_key: bytes, wm_seq: int) -> Traffic:
    """`f` one hop further on (hop limit decremented), with the given watermark."""
    return Traffic(
        f.destination_coords,
        f.source_coords,
        f.destination_key,
        f.source_key,
        wm_key,
        wm_seq,
        f.payload,
        f.hop_limit - 1,
    )
