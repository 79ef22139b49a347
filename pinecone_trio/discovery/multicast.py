"""Multicast LAN discovery: send beacons, hear beacons, tell the node whom to dial.

Theory of operation: `MulticastDiscovery.run` owns one UDP socket bound to the group
port with `SO_REUSEPORT` (so several nodes on one host can listen), and two tasks:

- the *beacon* task re-enumerates interfaces every `INTERFACE_RESCAN_INTERVAL`, joins
  the group on interfaces it has not joined yet, and every `BEACON_INTERVAL` sends one
  beacon out of each interface (`IP_MULTICAST_IF`), the first at once;
- the *listen* task reads datagrams with `IP_PKTINFO`, so it knows which interface a
  beacon arrived on (the "zone"), decodes them, drops bad ones (counted) and our own,
  and hands the rest to the node's `on_beacon` callback, which decides whether to dial.

Nothing here dials or trusts a beacon: the Noise handshake that follows, expecting the
advertised key, is the authentication. The node rate-limits dials per key.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from ..errors import DecodeError
from .beacon import (
    BEACON_INTERVAL,
    INTERFACE_RESCAN_INTERVAL,
    MAX_BEACON_DATAGRAM,
    MULTICAST_GROUP_V4,
    MULTICAST_PORT,
    Beacon,
    decode_beacon,
    encode_beacon,
)
from .interfaces import Interface, usable_interfaces

logger = logging.getLogger(__name__)

_IP_PKTINFO: Final = getattr(socket, "IP_PKTINFO", 8)
_PKTINFO_SIZE: Final = 12  # struct in_pktinfo: int ifindex, in_addr spec_dst, in_addr addr

#: After a failed receive, wait this long before the next (no busy loop on an error).
RECEIVE_ERROR_PAUSE: Final = 0.1

#: The callback the node supplies: (beacon, sender IPv4 address, interface name).
BeaconHandler = Callable[[Beacon, str, str], None]


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
    interfaces: list[str] = field(default_factory=list)


class MulticastDiscovery:
    """Beacons on the LAN. Start with `await nursery.start(discovery.run)`.

    Args:
        public_key: our key; beacons carrying it are ignored.
        listen_port: a callable giving the TCP port peers should dial (read at each
            beacon, so a listener that moves is followed).
        on_beacon: called for every valid beacon from another key.
        interfaces: restrict discovery to these interface names (default: every
            usable interface).
        group, port, interval, rescan_interval: overrides for tests.
    """

    def __init__(
        self,
        public_key: bytes,
        *,
        listen_port: Callable[[], int | None],
        on_beacon: BeaconHandler,
        interfaces: Sequence[str] | None = None,
        group: str = MULTICAST_GROUP_V4,
        port: int = MULTICAST_PORT,
        interval: float = BEACON_INTERVAL,
        rescan_interval: float = INTERFACE_RESCAN_INTERVAL,
    ) -> None:
        self._public_key = bytes(public_key)
        self._listen_port = listen_port
        self._on_beacon = on_beacon
        self._only = frozenset(interfaces) if interfaces is not None else None
        self._group = group
        self._port = port
        self._interval = interval
        self._rescan_interval = rescan_interval
        self._joined: dict[int, Interface] = {}
        self.statistics = DiscoveryStatistics()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Send and hear beacons until cancelled."""
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_IP, _IP_PKTINFO, 1)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            # Loop our beacons back so that two nodes on one host find each other; our
            # own are recognised by key and ignored.
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            await sock.bind(("", self._port))
            async with trio.open_nursery() as nursery:
                self._rescan(sock)
                nursery.start_soon(self._listen, sock)
                nursery.start_soon(self._beacon_loop, sock)
                task_status.started()

    def _rescan(self, sock: trio.socket.SocketType) -> None:
        """Join the group on new interfaces, leave it on vanished ones.

        An interface counts as joined only once the kernel accepted the membership, so
        one that could not be joined yet (just appearing, no carrier) is retried at the
        next rescan instead of being beaconed on forever without hearing anything.
        """
        try:
            found = usable_interfaces()
        except OSError as exc:  # e.g. out of file descriptors on a busy relay
            self.statistics.scan_errors += 1
            logger.info("interface scan failed (keeping the last one): %s", exc)
            return
        current = {i.index: i for i in found if self._only is None or i.name in self._only}
        for index in list(self._joined):
            if index not in current:
                # Gone, down or without IPv4 now. Leave the group explicitly (if the
                # link vanished the kernel already did), so a later re-join is clean.
                self._membership(sock, socket.IP_DROP_MEMBERSHIP, index)
                del self._joined[index]
        for index, iface in current.items():
            known = self._joined.get(index)
            if known is not None and known.ipv4 == iface.ipv4:
                continue
            try:
                self._membership(sock, socket.IP_ADD_MEMBERSHIP, index)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:  # EADDRINUSE: already joined here
                    self.statistics.join_errors += 1
                    logger.debug("cannot join %s on %s: %s", self._group, iface.name, exc)
                    continue
            logger.debug("multicast discovery on %s (%s)", iface.name, iface.ipv4)
            self._joined[index] = iface
        self.statistics.interfaces = sorted(i.name for i in self._joined.values())

    def _membership(self, sock: trio.socket.SocketType, option: int, index: int) -> None:
        mreqn = struct.pack("4s4si", socket.inet_aton(self._group), b"\0" * 4, index)
        if option == socket.IP_DROP_MEMBERSHIP:
            # The interface and its membership may be gone already.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, option, mreqn)
        else:
            sock.setsockopt(socket.IPPROTO_IP, option, mreqn)

    async def _beacon_loop(self, sock: trio.socket.SocketType) -> None:
        next_rescan = trio.current_time() + self._rescan_interval
        while True:
            if trio.current_time() >= next_rescan:
                self._rescan(sock)
                next_rescan = trio.current_time() + self._rescan_interval
            port = self._listen_port()
            if port:
                beacon = encode_beacon(self._public_key, port)
                for iface in list(self._joined.values()):
                    await self._send_on(sock, iface, beacon)
            await trio.sleep(self._interval)

    async def _send_on(self, sock: trio.socket.SocketType, iface: Interface, data: bytes) -> None:
        try:
            # struct ip_mreqn naming the interface by index (Linux): an address alone
            # is ambiguous when two interfaces carry the same one (veths, bridges).
            mreqn = struct.pack("4s4si", b"\0" * 4, socket.inet_aton(iface.ipv4), iface.index)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreqn)
            await sock.sendto(data, (self._group, self._port))
        except OSError as exc:
            self.statistics.send_errors += 1
            logger.debug("beacon on %s failed: %s", iface.name, exc)
        else:
            self.statistics.beacons_sent += 1

    async def _listen(self, sock: trio.socket.SocketType) -> None:
        ancillary = socket.CMSG_SPACE(_PKTINFO_SIZE)
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
            self._on_datagram(data, ancdata, address)

    def _on_datagram(
        self, data: bytes, ancdata: list[tuple[int, int, bytes]], address: object
    ) -> None:
        """One received datagram: a beacon sent to the group on a joined interface?"""
        ifindex = 0
        destination = b""
        for level, kind, payload in ancdata:
            if level == socket.IPPROTO_IP and kind == _IP_PKTINFO and len(payload) >= 12:
                ifindex = struct.unpack_from("i", payload)[0]
                destination = payload[8:12]  # the datagram's own destination address
        try:
            beacon = decode_beacon(data)
        except DecodeError as exc:
            self.statistics.bad_beacons += 1
            logger.debug("bad beacon from %s: %s", address, exc)
            return
        if destination != socket.inet_aton(self._group):
            # Unicast to our port (possibly from off the LAN, with a forged source):
            # not a LAN beacon, and must not make us dial anywhere.
            self.statistics.bad_beacons += 1
            return
        if beacon.public_key == self._public_key:
            return
        iface = self._joined.get(ifindex)
        if iface is None:
            return  # heard on an interface we do not run discovery on
        self.statistics.beacons_received += 1
        host = address[0] if isinstance(address, tuple) else str(address)
        self._on_beacon(beacon, str(host), iface.name)
