"""Which network interfaces can carry multicast beacons, and their addresses.

An interface is usable (as in Pinecone, research §11) when it is up, multicast-capable
and not point-to-point or loopback, and has an address to beacon from: an IPv4 address
(private RFC 1918 ones count) for the IPv4 group, an IPv6 link-local address for the
IPv6 group. Two laptops joined by a bare cable with no DHCP server have only the
latter, which is why both families matter. Linux is asked directly (`ioctl`s for flags
and IPv4, `/proc/net/if_inet6` for IPv6); elsewhere no interface is reported and LAN
discovery stays idle (static peers still work).
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

_SIOCGIFFLAGS: Final = 0x8913
_SIOCGIFADDR: Final = 0x8915
_IFF_UP: Final = 0x1
_IFF_LOOPBACK: Final = 0x8
_IFF_POINTOPOINT: Final = 0x10
_IFF_MULTICAST: Final = 0x1000
#: Where Linux lists every IPv6 address: hex address, index, prefix, scope, flags, name.
IF_INET6_PATH: Final = Path("/proc/net/if_inet6")
_SCOPE_LINK: Final = 0x20
#: Addresses still in duplicate address detection, or that failed it, cannot be used.
_IFA_F_DADFAILED: Final = 0x08
_IFA_F_TENTATIVE: Final = 0x40
#: Never track more interfaces than this (a host with thousands of veths stays bounded).
MAX_INTERFACES: Final = 64
#: Never read more of `/proc/net/if_inet6` than this (a line is under 60 bytes).
MAX_IF_INET6_BYTES: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class Interface:
    """A usable interface: its name, kernel index and the addresses beacons can use."""

    name: str
    index: int
    ipv4: str | None = None
    ipv6_link_local: str | None = None


def _ioctl(sock: socket.socket, request: int, name: str) -> bytes:
    # Linux allows any byte but '/', ':' and whitespace in a name, and
    # `socket.if_nameindex` decodes it like a file name (undecodable bytes become
    # surrogates), so encode it back the same way: `str.encode()` would raise.
    packed = struct.pack("256s", os.fsencode(name)[:15])
    return fcntl.ioctl(sock.fileno(), request, packed)


def parse_if_inet6(text: str) -> dict[int, str]:
    """Interface index -> one usable IPv6 link-local address, from `/proc/net/if_inet6`.

    Lines that are malformed, not link-scoped, tentative or failed are skipped; of
    several link-local addresses on one interface the lowest is kept (a stable choice).
    """
    found: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(bytes.fromhex(fields[0]))
            index, scope, flags = int(fields[1], 16), int(fields[3], 16), int(fields[4], 16)
        except ValueError:
            continue
        if scope != _SCOPE_LINK or not address.is_link_local:
            continue
        if flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED):
            continue
        text_address = str(address)
        if index not in found or ipaddress.IPv6Address(found[index]) > address:
            found[index] = text_address
    return found


def _link_local_addresses() -> dict[int, str]:
    try:
        with IF_INET6_PATH.open(encoding="ascii", errors="replace") as f:
            return parse_if_inet6(f.read(MAX_IF_INET6_BYTES))
    except OSError:
        return {}  # IPv6 disabled in this kernel or namespace


def usable_interfaces() -> list[Interface]:
    """The interfaces a beacon can be sent on now, ordered by name.

    An interface that cannot be asked about (it vanished meanwhile, or its name
    cannot be encoded back to the kernel's bytes) is skipped: one bad interface must
    never take discovery down.

    Raises:
        OSError: the interface list or the query socket itself is unavailable.
    """
    if not sys.platform.startswith("linux"):
        return []
    link_local = _link_local_addresses()
    found: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index, name in socket.if_nameindex():
            try:
                flags = struct.unpack_from("H", _ioctl(sock, _SIOCGIFFLAGS, name), 16)[0]
            except (OSError, ValueError):
                continue  # vanished meanwhile, or a name we cannot hand back
            if not flags & _IFF_UP or not flags & _IFF_MULTICAST:
                continue
            if flags & (_IFF_POINTOPOINT | _IFF_LOOPBACK):
                continue
            ipv4: str | None
            try:
                ipv4 = socket.inet_ntoa(_ioctl(sock, _SIOCGIFADDR, name)[20:24])
            except (OSError, ValueError):
                ipv4 = None  # no IPv4 address: IPv6 link-local may still do
            ipv6 = link_local.get(index)
            if ipv4 is None and ipv6 is None:
                continue
            found.append(Interface(name, index, ipv4, ipv6))
            if len(found) >= MAX_INTERFACES:
                break
    return sorted(found, key=lambda i: i.name)
