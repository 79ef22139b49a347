"""Multicast LAN discovery: send beacons, hear beacons, tell the node whom to dial.

Theory of operation: `MulticastDiscovery.run` runs discovery over IPv4 (group
224.0.0.114) and, when the node gives it an IPv6 listening port, over IPv6 link-local
(group ff02::114), both on UDP port 60606 as in Pinecone (research §11). Each family
owns one UDP socket bound to the group port with `SO_REUSEPORT` (so several nodes on
one host can listen). The tasks:

- the *beacon* task re-enumerates interfaces every `INTERFACE_RESCAN_INTERVAL`, joins
  the group on interfaces (per family) it has not joined yet and leaves it on vanished
  ones, and every `BEACON_INTERVAL` sends one beacon out of each joined interface of
  each family, the first at once;
- one *listen* task per family reads datagrams with packet info, so it knows which
  interface a beacon arrived on (the "zone") and that it was sent to the group, decodes
  it, drops bad ones (counted) and our own, and hands the rest to the node's
  `on_beacon` callback, which decides whether to dial. An IPv6 sender's address is
  link-local, so it is handed over with its zone (`fe80::1%eth0`).

Nothing here dials or trusts a beacon: the Noise handshake that follows, expecting the
advertised key, is the authentication. The node rate-limits dials per key. If a family
cannot be used at all (IPv6 disabled, port taken), discovery runs on the other one and
says why in the log.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import trio

from ..errors import DecodeError
from .beacon import (
    BEACON_INTERVAL,
    INTERFACE_RESCAN_INTERVAL,
    MAX_BEACON_DATAGRAM,
    MULTICAST_GROUP_V4,
    MULTICAST_GROUP_V6,
    MULTICAST_PORT,
    Beacon,
    decode_beacon,
    encode_beacon,
)
from .interfaces import Interface, usable_interfaces

logger = logging.getLogger(__name__)

_IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO_SIZE: Final = 12  # struct in_pktinfo: int ifindex, in_addr spec_dst, in_addr addr
_IPV6_RECVPKTINFO: Final = getattr(socket, "IPV6_RECVPKTINFO", 49)
_IPV6_PKTINFO: Final = getattr(socket, "IPV6_PKTINFO", 50)
_PKTINFO6_SIZE: Final = 20  # struct in6_pktinfo: in6_addr addr, unsigned int ifindex

#: After a failed receive, wait this long before the next (no busy loop on an error).
RECEIVE_ERROR_PAUSE: Final = 0.1

#: The callback the node supplies: (beacon, sender address, interface name). The
#: address is IPv4 dotted-quad, or IPv6 link-local with its zone (`fe80::1%eth0`).
BeaconHandler = Callable[[Beacon, str, str], None]
#: A callable giving the TCP port to advertise (None: nothing to advertise yet).
PortSource = Callable[[], int | None]


@dataclass(slots=True)
class DiscoveryStatistics:
    """Counters for `status()`: beacons sent and heard, and bad ones dropped."""

    beacons_sent: int = 0
    beacons_received: int = 0
    bad_beacons: int = 0
    send_errors: int = 0
    join_errors: int = 0
    scan_errors: int = 0
    receive_errors: int = 0
    #: Interfaces joined over IPv4 and over IPv6, by name.
    interfaces: list[str] = field(default_factory=list)
    interfaces_v6: list[str] = field(default_factory=list)

    def status(self) -> dict[str, Any]:
        """The part of `Node.status()` these counters make (JSON-ready)."""
        return {
            "interfaces": list(self.interfaces),
            "interfaces_v6": list(self.interfaces_v6),
            "beacons_sent": self.beacons_sent,
            "beacons_received": self.beacons_received,
            "bad_beacons": self.bad_beacons,
        }


class _Family:
    """What differs between IPv4 and IPv6 discovery: socket options and addresses."""

    family: socket.AddressFamily
    #: packet-info (level, type, minimum size), read from received ancillary data
    pktinfo: tuple[int, int, int]

    def __init__(self, group: str, port: int, listen_port: PortSource) -> None:
        self.group = group
        self.group_bytes = socket.inet_pton(self.family, group)
        self.port = port
        self.listen_port = listen_port
        self.joined: dict[int, Interface] = {}

    def address(self, iface: Interface) -> str | None:
        """The interface's address for this family, None if it has none."""
        raise NotImplementedError

    def configure(self, sock: trio.socket.SocketType) -> None:
        raise NotImplementedError

    def membership(self, sock: trio.socket.SocketType, join: bool, index: int) -> None:
        raise NotImplementedError

    def select(self, sock: trio.socket.SocketType, iface: Interface) -> tuple[object, ...]:
        """Make `iface` the outgoing interface; return the group's socket address."""
        raise NotImplementedError

    def read_pktinfo(self, payload: bytes) -> tuple[int, bytes]:
        """(interface index, destination address bytes) from a packet-info record."""
        raise NotImplementedError

    def sender(self, address: object, iface: Interface) -> str:
        """The sender's address as the node should dial it."""
        host = address[0] if isinstance(address, tuple) else str(address)
        return str(host)


class _IPv4(_Family):
    family = socket.AF_INET
    pktinfo = (socket.IPPROTO_IP, _IP_PKTINFO, _PKTINFO_SIZE)

    def address(self, iface: Interface) -> str | None:
        return iface.ipv4

    def configure(self, sock: trio.socket.SocketType) -> None:
        sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        # Loop our beacons back so that two nodes on one host find each other; our own
        # are recognised by key and ignored.
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)

    def membership(self, sock: trio.socket.SocketType, join: bool, index: int) -> None:
        # struct ip_mreqn naming the interface by index (Linux): an address alone is
        # ambiguous when two interfaces carry the same one (veths, bridges).
        mreqn = struct.pack("4s4si", self.group_bytes, b"\0" * 4, index)
        option = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
        sock.setsockopt(socket.IPPROTO_IP, option, mreqn)

    def select(self, sock: trio.socket.SocketType, iface: Interface) -> tuple[object, ...]:
        assert iface.ipv4 is not None
        mreqn = struct.pack("4s4si", b"\0" * 4, socket.inet_aton(iface.ipv4), iface.index)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
        return (self.group, self.port)

    def read_pktinfo(self, payload: bytes) -> tuple[int, bytes]:
        return struct.unpack_from("i", payload)[0], payload[8:12]


class _IPv6(_Family):
    family = socket.AF_INET6
    pktinfo = (socket.IPPROTO_IPV6, _IPV6_PKTINFO, _PKTINFO6_SIZE)

    def address(self, iface: Interface) -> str | None:
        return iface.ipv6_link_local

    def configure(self, sock: trio.socket.SocketType) -> None:
        # IPv4 beacons go to the IPv4 socket, even where v4-mapped addresses exist.
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVPKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)

    def membership(self, sock: trio.socket.SocketType, join: bool, index: int) -> None:
        mreq = struct.pack("16sI", self.group_bytes, index)  # struct ipv6_mreq
        option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
        sock.setsockopt(socket.IPPROTO_IPV6, option, mreq)

    def select(self, sock: trio.socket.SocketType, iface: Interface) -> tuple[object, ...]:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, iface.index)
        return (self.group, self.port, 0, iface.index)

    def read_pktinfo(self, payload: bytes) -> tuple[int, bytes]:
        return struct.unpack_from("I", payload, 16)[0], payload[:16]

    def sender(self, address: object, iface: Interface) -> str:
        # A link-local address means nothing without its zone: name the interface.
        host = super().sender(address, iface).partition("%")[0]
        return f"{host}%{iface.name}"


class MulticastDiscovery:
    """Beacons on the LAN. Start with `await nursery.start(discovery.run)`.

    Args:
        public_key: our key; beacons carrying it are ignored.
        listen_port: a callable giving the TCP port IPv4 peers should dial (read at
            each beacon, so a listener that moves is followed).
        on_beacon: called for every valid beacon from another key.
        interfaces: restrict discovery to these interface names (default: every
            usable interface).
        listen_port_v6: like `listen_port`, for a listener that accepts IPv6
            link-local peerings; None (the default) leaves IPv6 discovery off.
        group, group_v6, port, interval, rescan_interval: overrides for tests.
    """

    def __init__(
        self,
        public_key: bytes,
        *,
        listen_port: PortSource,
        on_beacon: BeaconHandler,
        interfaces: Sequence[str] | None = None,
        listen_port_v6: PortSource | None = None,
        group: str = MULTICAST_GROUP_V4,
        group_v6: str = MULTICAST_GROUP_V6,
        port: int = MULTICAST_PORT,
        interval: float = BEACON_INTERVAL,
        rescan_interval: float = INTERFACE_RESCAN_INTERVAL,
    ) -> None:
        self._public_key = bytes(public_key)
        self._on_beacon = on_beacon
        self._only = frozenset(interfaces) if interfaces is not None else None
        self._interval = interval
        self._rescan_interval = rescan_interval
        self._v4 = _IPv4(group, port, listen_port)
        self._v6 = _IPv6(group_v6, port, listen_port_v6) if listen_port_v6 is not None else None
        self._sockets: list[tuple[_Family, trio.socket.SocketType]] = []
        self.statistics = DiscoveryStatistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send and hear beacons until cancelled.

        Raises:
            OSError: if not even the IPv4 socket can be opened and bound.
        """
        with contextlib.ExitStack() as stack:
            families: list[_Family] = [self._v4] if self._v6 is None else [self._v4, self._v6]
            for fam in families:
                try:
                    sock = stack.enter_context(await self._open(fam))
                except OSError as exc:
                    if fam is self._v4:
                        raise
                    logger.info("IPv6 LAN discovery unavailable: %s", exc)
                    continue
                self._sockets.append((fam, sock))
            async with trio.open_nursery() as nursery:
                self._rescan_all()
                for fam, sock in self._sockets:
                    nursery.start_soon(self._listen, fam, sock)
                nursery.start_soon(self._beacon_loop)
                task_status.started()

    @staticmethod
    async def _open(fam: _Family) -> trio.socket.SocketType:
        sock = trio.socket.socket(fam.family, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            fam.configure(sock)
            await sock.bind(("::" if fam.family == socket.AF_INET6 else "", fam.port))
        except BaseException:
            sock.close()
            raise
        return sock

    def _rescan_all(self) -> None:
        try:
            found = usable_interfaces()
        except (OSError, ValueError) as exc:  # e.g. out of file descriptors on a busy relay
            self.statistics.scan_errors += 1
            logger.info("interface scan failed (keeping the last one): %s", exc)
            return
        for fam, sock in self._sockets:
            self._rescan(fam, sock, found)
        self.statistics.interfaces = sorted(i.name for i in self._v4.joined.values())
        self.statistics.interfaces_v6 = (
            sorted(i.name for i in self._v6.joined.values()) if self._v6 is not None else []
        )

    def _rescan(self, fam: _Family, sock: trio.socket.SocketType, found: list[Interface]) -> None:
        """Join the group on new interfaces, leave it on vanished ones, and follow
        renamed ones (same index and address: no new join).

        An interface counts as joined only once the kernel accepted the membership, so
        one that could not be joined yet (just appearing, no carrier, IPv6 address
        still tentative) is retried at the next rescan instead of being beaconed on
        forever without hearing anything.
        """
        current = {
            i.index: i
            for i in found
            if fam.address(i) is not None and (self._only is None or i.name in self._only)
        }
        for index in list(fam.joined):
            if index not in current:
                # Gone, down or without an address now. Leave the group explicitly (if
                # the link vanished the kernel already did), so a later re-join is clean.
                with contextlib.suppress(OSError):
                    fam.membership(sock, False, index)
                del fam.joined[index]
        for index, iface in current.items():
            known = fam.joined.get(index)
            if known is not None and fam.address(known) == fam.address(iface):
                # Still joined; but the interface may have been renamed, and an IPv6
                # sender's zone is the name: keep it current (a stale one fails every
                # dial, a review found), with no need to join again.
                fam.joined[index] = iface
                continue
            try:
                fam.membership(sock, True, index)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:  # EADDRINUSE: already joined here
                    self.statistics.join_errors += 1
                    logger.debug("cannot join %s on %s: %s", fam.group, iface.name, exc)
                    continue
            logger.debug("multicast discovery on %s (%s)", iface.name, fam.address(iface))
            fam.joined[index] = iface

    async def _beacon_loop(self) -> None:
        next_rescan = trio.current_time() + self._rescan_interval
        while True:
            if trio.current_time() >= next_rescan:
                self._rescan_all()
                next_rescan = trio.current_time() + self._rescan_interval
            for fam, sock in self._sockets:
                port = fam.listen_port()
                if not port:
                    continue
                beacon = encode_beacon(self._public_key, port)
                for iface in list(fam.joined.values()):
                    await self._send_on(fam, sock, iface, beacon)
            await trio.sleep(self._interval)

    async def _send_on(
        self, fam: _Family, sock: trio.socket.SocketType, iface: Interface, data: bytes
    ) -> None:
        try:
            await sock.sendto(data, fam.select(sock, iface))
        except OSError as exc:
            self.statistics.send_errors += 1
            logger.debug("beacon on %s failed: %s", iface.name, exc)
        else:
            self.statistics.beacons_sent += 1

    async def _listen(self, fam: _Family, sock: trio.socket.SocketType) -> None:
        ancillary = socket.CMSG_SPACE(fam.pktinfo[2])
        while True:
            try:
                data, ancdata, _flags, address = await sock.recvmsg(
                    MAX_BEACON_DATAGRAM + 1, ancillary
                )
            except OSError as exc:  # e.g. a queued ICMP error: not worth ending discovery
                self.statistics.receive_errors += 1
                logger.debug("multicast receive failed: %s", exc)
                await trio.sleep(RECEIVE_ERROR_PAUSE)
                continue
            self._on_datagram(fam, data, ancdata, address)

    def _on_datagram(
        self, fam: _Family, data: bytes, ancdata: list[tuple[int, int, bytes]], address: object
    ) -> None:
        """One received datagram: a beacon sent to the group on a joined interface?"""
        ifindex = 0
        destination = b""
        level, kind, size = fam.pktinfo
        for got_level, got_kind, payload in ancdata:
            if got_level == level and got_kind == kind and len(payload) >= size:
                ifindex, destination = fam.read_pktinfo(payload)
        try:
            beacon = decode_beacon(data)
        except DecodeError as exc:
            self.statistics.bad_beacons += 1
            logger.debug("bad beacon from %s: %s", address, exc)
            return
        if destination != fam.group_bytes:
            # Unicast to our port (possibly from off the LAN, with a forged source):
            # not a LAN beacon, and must not make us dial anywhere.
            self.statistics.bad_beacons += 1
            return
        if beacon.public_key == self._public_key:
            return
        iface = fam.joined.get(ifindex)
        if iface is None:
            return  # heard on an interface we do not run discovery on
        self.statistics.beacons_received += 1
        self._on_beacon(beacon, fam.sender(address, iface), iface.name)
