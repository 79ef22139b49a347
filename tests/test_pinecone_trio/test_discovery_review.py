"""Regression tests for LAN discovery bugs a review found (interface names, renames)."""

from __future__ import annotations

import socket
import struct
import sys
from typing import cast

import pytest
import trio

from pinecone_trio.discovery import interfaces as interfaces_module
from pinecone_trio.discovery import multicast as multicast_module
from pinecone_trio.discovery.beacon import encode_beacon
from pinecone_trio.discovery.interfaces import Interface, usable_interfaces
from pinecone_trio.discovery.multicast import MulticastDiscovery

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux ioctls")


@linux_only
def test_interface_with_undecodable_name_is_skipped_not_fatal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Linux names may hold any byte but '/', ':' and whitespace; `if_nameindex` hands
    # b"eth\xff" over surrogate-escaped. Encoding it with str.encode() raised
    # UnicodeEncodeError, which nothing caught: discovery, and the node, died.
    real = socket.if_nameindex()
    fake = [*real, (4242, "eth\udcff"), (4243, "bad\ud800")]
    monkeypatch.setattr(interfaces_module.socket, "if_nameindex", lambda: fake)
    found = usable_interfaces()
    assert all(i.index not in (4242, 4243) for i in found)


def test_rescan_survives_an_interface_scan_value_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[Interface]:
        raise UnicodeEncodeError("utf-8", "eth\udcff", 3, 4, "surrogates not allowed")

    monkeypatch.setattr(multicast_module, "usable_interfaces", broken)
    discovery = MulticastDiscovery(
        b"\x01" * 32, listen_port=lambda: None, on_beacon=lambda *args: None
    )
    discovery._rescan_all()
    assert discovery.statistics.scan_errors == 1


class _FakeSocket:
    """Takes the membership options `_rescan` sets, and remembers them."""

    def __init__(self) -> None:
        self.options: list[tuple[int, int, object]] = []

    def setsockopt(self, level: int, option: int, value: object) -> None:
        self.options.append((level, option, value))


def test_a_renamed_interface_gives_ipv6_senders_its_new_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A rescan skipped an interface whose index and address were unchanged, so after a
    # rename it kept the old name, and IPv6 beacons came with a zone (%old) that no
    # longer exists: every dial they caused failed.
    scans = iter([[Interface("old0", 7, None, "fe80::1")], [Interface("new0", 7, None, "fe80::1")]])
    monkeypatch.setattr(multicast_module, "usable_interfaces", lambda: next(scans))
    heard: list[tuple[str, str]] = []
    discovery = MulticastDiscovery(
        b"\x01" * 32,
        listen_port=lambda: None,
        listen_port_v6=lambda: None,
        on_beacon=lambda beacon, host, name: heard.append((host, name)),
    )
    fam = discovery._v6
    assert fam is not None
    sock = _FakeSocket()
    discovery._sockets = [(fam, cast(trio.socket.SocketType, sock))]
    discovery._rescan_all()
    discovery._rescan_all()
    assert len(sock.options) == 1  # joined once: a rename needs no new membership
    assert discovery.statistics.interfaces_v6 == ["new0"]
    pktinfo = (socket.IPPROTO_IPV6, fam.pktinfo[1], fam.group_bytes + struct.pack("I", 7))
    beacon = encode_beacon(b"\x02" * 32, 4242)
    discovery._on_datagram(fam, beacon, [pktinfo], ("fe80::2", 60606, 0, 7))
    assert heard == [("fe80::2%new0", "new0")]
