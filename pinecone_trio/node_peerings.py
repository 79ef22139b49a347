"""The node's links: accepting, dialling, duplicates, static peers and LAN beacons
(`PeeringsMixin`).

A link whose Noise handshake completed is registered (`_attach`) under a free router
port and run as a `Peering` in the node's nursery; its end unregisters it
(`_on_peering_end`) and tells the router `PeerDown` before the port is reused.
Duplicate links between the same two keys are resolved the same way on both sides
(`_prefer_new_link`). Static peers are kept connected by one task each, redialling with
backoff; multicast beacons dial keys heard on the LAN, rate-limited per key, address
and host.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import math
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

import trio

from . import events as ev
from .backoff import backoff_delay
from .discovery.beacon import Beacon
from .discovery.multicast import MulticastDiscovery
from .errors import LinkError, PeerLimitError
from .identity import PublicKey
from .link.stream import NoiseLink
from .node_base import STOPPED, NodeBase
from .node_config import (
    BEACON_REDIAL_INTERVAL,
    MAX_BEACON_DIALS,
    MAX_BEACON_DIALS_PER_HOST,
    MAX_BEACON_MEMORY,
    MAX_PENDING_HANDSHAKES,
    MAX_PENDING_HANDSHAKES_PER_HOST,
    REFUSED_PEER_LIMIT,
    STATIC_STABLE_AFTER,
    StaticPeerState,
    handshake_message_timeout,
)
from .peering import Peering
from .router.actions import PeerDown, PeerType, PeerUp
from .transports import Address, parse_uri
from .transports import dial as dial_transport
from .transports import serve as serve_transport

logger = logging.getLogger(__name__)


def _peer_address(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """(host, port) an inbound stream comes from, where the transport tells it (TCP)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return None
    return str(host), int(port)


def _remote_uri(stream: trio.abc.Stream, scheme: str) -> str:
    """Best-effort description of where an inbound stream comes from."""
    address = _peer_address(stream)
    if address is None:
        return f"{scheme}://(inbound)"
    host, port = address
    return f"tcp://{host}:{port}" if ":" not in host else f"tcp://[{host}]:{port}"


#: What a dial is expected to fail with (anything else is logged as a bug).
_DIAL_ERRORS: Final = (OSError, LinkError, PeerLimitError, trio.TooSlowError)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "dial timed out"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class PeeringsMixin(NodeBase):
    """`Node`'s peerings, static peers and LAN discovery (see the module docstring)."""

    # --- peerings -------------------------------------------------------------------------

    def _prefer_new_link(self, existing: Peering, new_link: NoiseLink, outbound: bool) -> bool:
        lower_is_us = self._public_key < existing.public_key

        def rank(dialled_by_us: bool, handshake_hash: bytes) -> tuple[bool, bytes]:
            # False sorts first: a link dialled by the lower key is preferred.
            return (dialled_by_us != lower_is_us, handshake_hash)

        old_hash = existing.link.handshake_hash if isinstance(existing.link, NoiseLink) else b""
        return rank(outbound, new_link.handshake_hash) < rank(existing.outbound, old_hash)

    async def _attach(
        self, link: NoiseLink, *, uri: str, peer_type: PeerType, zone: str, outbound: bool
    ) -> Peering | None:
        """Register a link whose handshake completed; None when it is not kept.

        The caller must run the returned peering at once (`peering.run()`, or start it
        before its next checkpoint): the registration is the last thing here, with no
        checkpoint after it, so a cancellation can never leave a registered peering
        that nobody runs. Whatever happens before, the link is closed on the way out.
        """
        try:
            key = link.remote_key
            if key == self._public_key:
                raise LinkError("refusing to peer with ourselves", remote_key=key)
            # Duplicate links: keep the preferred one (the same one on both sides). Loop,
            # because another link to the same key may register while we wait.
            while (existing := self._by_key.get(bytes(key))) is not None:
                self.counters.duplicate_links += 1
                self._notify()
                if not self._prefer_new_link(existing, link, outbound):
                    await trio.aclose_forcefully(link)
                    return None
                existing.close("replaced by a preferred duplicate link")
                await existing.wait_ended()
            if len(self._peerings) >= self._config.max_peers or not self._free_ports:
                self.counters.refused_peer_limit += 1
                self._notify()
                raise PeerLimitError(f"peer limit of {self._config.max_peers} reached")
        except BaseException:
            await trio.aclose_forcefully(link)
            raise
        port = self._free_ports.pop(0)
        peering = Peering(
            link=link,
            port=port,
            public_key=key,
            uri=uri,
            peer_type=peer_type,
            zone=zone,
            outbound=outbound,
            inbox=self._inbox_send,
            keepalives=self._config.keepalives,
            local_key=bytes(self._public_key),
            budget=self._budget,
            up=PeerUp(port, bytes(key), peer_type, zone),
            on_end=self._on_peering_end,
            flush_list=self._flush_list,
        )
        self._peerings[port] = peering
        self._by_key[bytes(key)] = peering
        self._publish(ev.PeerConnected(key, uri, peer_type.name.lower(), port))
        return peering

    def _on_peering_end(self, peering: Peering) -> None:
        """A peering ended (called synchronously by `Peering.run`): unregister it.

        The port goes back to the free list only once `PeerDown` is in the router's
        inbox: the inbox is a FIFO, so the router always hears of the old peering's end
        before a new peering on the same port (a `PeerUp` for a port that is still up
        would be a local protocol error).
        """
        port = peering.port
        if peering.misbehaved:
            self.counters.misbehaving_peers += 1
            self._notify()
        self._peerings.pop(port, None)
        if self._by_key.get(bytes(peering.public_key)) is peering:
            del self._by_key[bytes(peering.public_key)]
        if not peering.announced:
            # Ended before its PeerUp reached the inbox (replaced or closed while
            # starting): the router never heard of the port, so it is free at once.
            self._release_port(port)
            self._publish(
                ev.PeerDisconnected(peering.public_key, peering.uri, port, peering.end_reason)
            )
            return
        try:
            self._inbox_send.send_nowait(PeerDown(port))
        except trio.WouldBlock:
            # A busy router: queue PeerDown behind the inbox in a task of our own
            # (never a shielded wait in the peering's cleanup).
            if self._nursery is not None:
                with contextlib.suppress(RuntimeError):  # the node is stopping
                    self._nursery.start_soon(self._peer_down_later, port)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the node is stopping
        else:
            self._release_port(port)
        self._publish(
            ev.PeerDisconnected(peering.public_key, peering.uri, port, peering.end_reason)
        )

    async def _peer_down_later(self, port: int) -> None:
        try:
            await self._inbox_send.send(PeerDown(port))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the node is stopping
        self._release_port(port)

    def _release_port(self, port: int) -> None:
        bisect.insort(self._free_ports, port)

    async def _accept(self, peer_type: PeerType, scheme: str, stream: trio.abc.Stream) -> None:
        """Listener handler: handshake an inbound connection and run its peering."""
        address = _peer_address(stream)
        host = None if address is None else address[0]
        by_host = self._pending_by_host
        pending = self._pending_handshakes
        if pending >= MAX_PENDING_HANDSHAKES or (
            # One address may fill at most half the slots: beyond that, only its first
            # few (a burst of honest dials from one address, peers behind one NAT get
            # room while the rest are free; one host's silent sockets cannot lock
            # everybody else out).
            host is not None
            and pending >= MAX_PENDING_HANDSHAKES // 2
            and by_host.get(host, 0) >= MAX_PENDING_HANDSHAKES_PER_HOST
        ):
            self.counters.refused_pending_handshakes += 1
            self._notify()
            await trio.aclose_forcefully(stream)
            return
        at_limit = len(self._peerings) >= self._config.max_peers
        link = NoiseLink(
            stream,
            self._identity,
            initiator=False,
            capabilities={REFUSED_PEER_LIMIT} if at_limit else frozenset(),
            handshake_timeout=self._config.handshake_timeout,
            message_timeout=handshake_message_timeout(self._config.handshake_timeout),
        )
        self._pending_handshakes += 1
        if host is not None:
            by_host[host] = by_host.get(host, 0) + 1
        try:
            await link.do_handshake()
        except (LinkError, trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self.counters.handshake_failures += 1
            self._notify()
            logger.info("inbound handshake failed: %s", exc)
            await trio.aclose_forcefully(link)
            return
        finally:
            self._pending_handshakes -= 1
            if host is not None:
                if by_host[host] <= 1:
                    del by_host[host]
                else:
                    by_host[host] -= 1
        if at_limit:
            self.counters.refused_peer_limit += 1
            self._notify()
            await trio.aclose_forcefully(link)
            return
        try:
            peering = await self._attach(
                link,
                uri=_remote_uri(stream, scheme),
                peer_type=peer_type,
                zone=scheme,
                outbound=False,
            )
        except (LinkError, PeerLimitError) as exc:
            logger.info("inbound peering refused: %s", exc)
            return
        if peering is not None:
            await peering.run()

    async def _dial(self, uri: str, expected_key: PublicKey | None = None) -> NoiseLink:
        assert self._nursery is not None
        with trio.fail_after(self._config.dial_timeout):
            stream = await dial_transport(uri, nursery=self._nursery)
            link = NoiseLink(
                stream,
                self._identity,
                initiator=True,
                expected_key=expected_key,
                handshake_timeout=self._config.handshake_timeout,
            )
            try:
                await link.do_handshake()
            except BaseException:
                await trio.aclose_forcefully(link)
                raise
        if REFUSED_PEER_LIMIT in link.remote_capabilities:
            await trio.aclose_forcefully(link)
            raise PeerLimitError(f"{uri} refused the peering: its peer limit is reached")
        return link

    async def _dial_and_attach(
        self,
        uri: str,
        *,
        expected_key: PublicKey | None = None,
        peer_type: PeerType = PeerType.REMOTE,
        zone: str = "static",
    ) -> tuple[PublicKey, Peering | None]:
        if len(self._peerings) >= self._config.max_peers:
            raise PeerLimitError(f"peer limit of {self._config.max_peers} reached")
        link = await self._dial(uri, expected_key)
        key = link.remote_key
        peering = await self._attach(link, uri=uri, peer_type=peer_type, zone=zone, outbound=True)
        if peering is not None:
            assert self._nursery is not None
            try:
                self._nursery.start_soon(peering.run)
            except RuntimeError:  # the node has stopped: clean up here, at once
                peering.close("the node is not running")
                await peering.run()
                raise trio.ClosedResourceError(STOPPED) from None
        return key, peering

    # --- static peers and LAN discovery -----------------------------------------------

    def add_static_peer(self, uri: str) -> None:
        """Keep `uri` connected: dial now and redial with backoff whenever it drops.

        Raises:
            ValueError: `uri` is malformed.
            trio.ClosedResourceError: the node has stopped.
        """
        parse_uri(uri)  # raises ValueError early
        self._check_running()
        if uri in self._static:
            return
        assert self._nursery is not None
        state = StaticPeerState(uri)
        self._static[uri] = state
        self._nursery.start_soon(self._keep_static, state)

    def remove_static_peer(self, uri: str) -> None:
        """Stop redialling `uri` and close its peering, if any."""
        state = self._static.pop(uri, None)
        if state is None:
            return
        state.cancel_scope.cancel()
        if state.public_key is not None:
            peering = self._by_key.get(bytes(state.public_key))
            if peering is not None and peering.uri == uri:
                peering.close("static peer removed")

    async def _keep_static(self, state: StaticPeerState) -> None:
        with state.cancel_scope:
            while True:
                key = state.public_key
                existing = self._by_key.get(bytes(key)) if key is not None else None
                if existing is not None:
                    # Connected over another link (LAN, inbound): wait for it to end.
                    # `wait_ended` returns only after it left `_by_key`: no busy loop.
                    state.state = "connected"
                    self._notify()
                    await existing.wait_ended()
                    continue
                state.state = "dialling"
                self._notify()
                try:
                    key, peering = await self._dial_and_attach(state.uri)
                except Exception as exc:  # whatever the dial did, the node keeps running
                    if not isinstance(exc, _DIAL_ERRORS):
                        logger.exception("static peer %s: unexpected dial failure", state.uri)
                    state.failures += 1
                    state.last_error = _describe_error(exc)
                    self.counters.dial_failures += 1
                else:
                    state.public_key = key
                    state.last_error = ""
                    if peering is None:
                        state.failures = 0
                        continue  # the key is connected over a preferred link: wait on it
                    state.state = "connected"
                    self._notify()
                    await peering.wait_ended()
                    state.last_error = peering.end_reason
                    if trio.current_time() - peering.connected_at >= STATIC_STABLE_AFTER:
                        state.failures = 0
                    else:
                        state.failures += 1
                delay = backoff_delay(state.failures, self._rng)
                state.state = "waiting"
                state.next_attempt = trio.current_time() + delay
                self._notify()
                await trio.sleep(delay)

    def _on_beacon(self, beacon: Beacon, host: str, interface: str) -> None:
        self._notify()  # status()["multicast"] changed
        key = bytes(beacon.public_key)
        target = (key, host, beacon.port)
        if key in self._by_key or target in self._dialling or self._nursery is None:
            return
        if len(self._dialling) >= MAX_BEACON_DIALS:
            return  # a LAN full of (forged) keys cannot make us dial without bound
        if sum(1 for h in self._dialling.values() if h == host) >= MAX_BEACON_DIALS_PER_HOST:
            return  # nor can one host take every dial slot
        now = trio.current_time()
        if now - self._beacon_dials.get(target, -math.inf) < BEACON_REDIAL_INTERVAL:
            return
        if len(self._beacon_dials) >= MAX_BEACON_MEMORY:
            self._beacon_dials = {
                k: t for k, t in self._beacon_dials.items() if now - t < BEACON_REDIAL_INTERVAL
            }
            if len(self._beacon_dials) >= MAX_BEACON_MEMORY:
                return
        self._beacon_dials[target] = now
        self._dialling[target] = host
        self._nursery.start_soon(self._dial_beacon, beacon, host, interface)

    async def _dial_beacon(self, beacon: Beacon, host: str, interface: str) -> None:
        uri = str(Address("tcp", host, beacon.port))  # brackets an IPv6 host
        try:
            await self._dial_and_attach(
                uri,
                expected_key=beacon.public_key,
                peer_type=PeerType.MULTICAST,
                zone=interface,
            )
        except Exception as exc:  # whatever the dial did, the node keeps running
            if not isinstance(exc, _DIAL_ERRORS):
                logger.exception("beacon dial to %s: unexpected failure", uri)
            self.counters.dial_failures += 1
            self._notify()
            logger.info("dial to beacon %s at %s failed: %s", beacon.public_key.short(), uri, exc)
        finally:
            self._dialling.pop((bytes(beacon.public_key), host, beacon.port), None)

    async def _start_multicast(
        self, nursery: trio.Nursery, interfaces: Sequence[str] | None
    ) -> None:
        handler = partial(self._accept, PeerType.MULTICAST, "multicast")
        bound = await nursery.start(serve_transport, "tcp://0.0.0.0:0", handler)
        self._multicast_port = parse_uri(bound).port
        try:
            # A second listener for IPv6 link-local peerings (two laptops on a bare
            # cable have no IPv4 addresses); Trio makes it IPv6-only.
            bound_v6 = await nursery.start(serve_transport, "tcp://[::]:0", handler)
        except OSError as exc:
            logger.info("no IPv6 listener for LAN discovery: %s", exc)
        else:
            self._multicast_port_v6 = parse_uri(bound_v6).port
        options: dict[str, Any] = {}
        if self._config.beacon_interval is not None:
            options["interval"] = self._config.beacon_interval
        if self._config.multicast_port is not None:
            options["port"] = self._config.multicast_port
        self._discovery = MulticastDiscovery(
            self._public_key,
            listen_port=lambda: self._multicast_port,
            listen_port_v6=None
            if self._multicast_port_v6 is None
            else (lambda: self._multicast_port_v6),
            on_beacon=self._on_beacon,
            interfaces=interfaces,
            **options,
        )
        await nursery.start(self._discovery.run)
