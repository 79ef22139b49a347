"""Regression tests for LAN discovery bugs a review found (interface names, renames)."""

from __future__ import annotations

import socket
import sys

import pytest

from pinecone_trio.discovery import interfaces as interfaces_module
from pinecone_trio.discovery import multicast as multicast_module
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
