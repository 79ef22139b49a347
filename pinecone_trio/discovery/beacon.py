"""The multicast LAN beacon: who is here, and where to dial them.

Theory of operation: every node with LAN discovery on sends a small UDP datagram to
the Pinecone multicast group every `BEACON_INTERVAL` seconds on every usable interface.
A node that hears a beacon from a key it has no peering with dials the sender's address
on the advertised TCP port and runs the ordinary Noise-XX link handshake, *expecting the
advertised key*. That handshake is what authenticates the beacon: a forged beacon can
make us dial somewhere, never peer with the wrong key. This module is the codec only.

Wire format (38 bytes)::

    magic "PTB" (3) | version 1 (1) | public key (32) | TCP port (2, big-endian)

Deviation from Pinecone (research/pinecone.md §11): Pinecone's beacon is the bare
34-byte key and port. We prefix a magic and a version because our links are Noise-XX
and a real Pinecone node's plaintext handshake could never complete with ours: the
magic keeps each from dialling the other in vain, and the version lets a later beacon
carry more (e.g. a WebSocket port) without breaking this one.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from ..errors import DecodeError
from ..identity import PUBLIC_KEY_SIZE, PublicKey

#: The IPv4 and IPv6 groups and the UDP port Pinecone uses for LAN discovery.
MULTICAST_GROUP_V4: Final = "224.0.0.114"
MULTICAST_GROUP_V6: Final = "ff02::114"
MULTICAST_PORT: Final = 60606

#: A beacon every 2 s per interface (Pinecone's figure), the first one at once.
BEACON_INTERVAL: Final = 2.0
#: Interfaces are re-enumerated every 10 s, so a cable plugged in later is noticed.
INTERFACE_RESCAN_INTERVAL: Final = 10.0

BEACON_MAGIC: Final = b"PTB"
BEACON_VERSION: Final = 1
_LAYOUT: Final = struct.Struct(f"!3sB{PUBLIC_KEY_SIZE}sH")
BEACON_SIZE: Final = _LAYOUT.size
#: Datagrams larger than this are not even read as beacons.
MAX_BEACON_DATAGRAM: Final = 512


@dataclass(frozen=True, slots=True)
class Beacon:
    """A decoded beacon: the sender's key and the TCP port it accepts peerings on."""

    public_key: PublicKey
    port: int


def encode_beacon(public_key: bytes, port: int) -> bytes:
    """The beacon announcing `public_key` listening on TCP `port`."""
    if not 0 < port < 65536:
        raise ValueError(f"beacon port must be 1..65535, not {port}")
    return _LAYOUT.pack(BEACON_MAGIC, BEACON_VERSION, bytes(PublicKey(public_key)), port)


def decode_beacon(data: bytes) -> Beacon:
    """Decode a beacon.

    Bytes after the fixed layout are ignored, so a later version may append fields.

    Raises:
        DecodeError: if `data` is not a beacon of a version we understand.
    """
    if len(data) < BEACON_SIZE or len(data) > MAX_BEACON_DATAGRAM:
        raise DecodeError(f"beacon of {len(data)} bytes")
    magic, version, key, port = _LAYOUT.unpack_from(data)
    if magic != BEACON_MAGIC:
        raise DecodeError("not a beacon (bad magic)")
    if version != BEACON_VERSION:
        raise DecodeError(f"beacon version {version} not understood")
    if port == 0:
        raise DecodeError("beacon advertises port 0")
    return Beacon(PublicKey(key), port)
