"""Which network interfaces can carry multicast beacons, and their addresses.

An interface is usable (as in Pinecone, research §11) when it is up, multicast-capable
and not point-to-point, and has an IPv4 address. Linux is asked directly with
`ioctl`s; elsewhere no interface is reported and LAN discovery stays idle (static peers
still work). IPv6 link-local discovery is left for later; the group is reserved.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Final

_SIOCGIFFLAGS: Final = 0x8913
_SIOCGIFADDR: Final = 0x8915
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8
_IFF_POINTOPOINT: Final = 0x10
_IFF_MULTICAST: Final = 0x1000
#: Never track more interfaces than this (a host with thousands of veths stays bounded).
MAX_INTERFACES: Final = 64


@dataclass(frozen=True, slots=True)
class Interface:
    """A usable interface: its name, kernel index and IPv4 address."""

    name: str
    index: int
    ipv4: str


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes:
    packed = struct.pack("256s", name.encode()[:15])
    return fcntl.ioctl(sock.fileno(), request, packed)


def usable_interfaces() -> list[Interface]:
    """The interfaces a beacon can be sent on now, ordered by name."""
    if not sys.platform.startswith("linux"):
        return []
    found: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            try:
                flags = struct.unpack_from("H", _ioctl(sock, _SIOCGIFFLAGS, name), 16)[0]
                if not flags & _IFF_UP or not flags & _IFF_MULTICAST:
                    continue
                if flags & (_IFF_POINTOPOINT | _IFF_LOOPBACK):
                    continue
                addr = socket.inet_ntoa(_ioctl(sock, _SIOCGIFADDR, name)[20:24])
            except OSError:
                continue  # no IPv4 address, or the interface vanished meanwhile
            found.append(Interface(name, index, addr))
            if len(found) >= MAX_INTERFACES:
                break
    return sorted(found, key=lambda i: i.name)
