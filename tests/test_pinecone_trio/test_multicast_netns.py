"""Real multicast discovery between two network namespaces joined by a veth pair.

Needs root and iproute2 (CI runs as root); skips with the reason otherwise. The test
creates its namespaces with unique names and deletes them whatever happens. Traffic
stays inside them: the veth pair connects only the two namespaces.
"""

from __future__ import annotations

import errno
import json
import secrets
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pinecone_trio import Identity
from pinecone_trio.discovery.beacon import decode_beacon, encode_beacon
from pinecone_trio.errors import DecodeError

HERE = Path(__file__).resolve().parent


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(params=["ipv4", "ipv6-link-local-only"])
def two_namespaces(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Two namespaces joined by a veth pair: with IPv4 addresses, or (the bare-cable
    case) with nothing but IPv6 link-local addresses."""
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = secrets.token_hex(4)  # unique: a stale namespace of a crashed run cannot clash
    a, b = f"ptmA{tag}", f"ptmB{tag}"
    try:
        _ip("netns", "add", a)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    try:
        _ip("netns", "add", b)
        _ip(
            "link",
            "add",
            f"va{tag}",
            "netns",
            a,
            "type",
            "veth",
            "peer",
            "name",
            f"vb{tag}",
            "netns",
            b,
        )
        for i, (ns, dev) in enumerate(((a, f"va{tag}"), (b, f"vb{tag}")), start=1):
            if request.param == "ipv4":
                _ip("-n", ns, "addr", "add", f"10.213.7.{i}/24", "dev", dev)
            else:
                # fixed link-local addresses that skip duplicate address detection, so
                # the first interface scan finds them usable (the kernel's own
                # EUI-64 one stays tentative for a second or two)
                _ip("-n", ns, "addr", "add", f"fe80::7:{i}/64", "dev", dev, "nodad")
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_beacon_codec_refuses_garbage() -> None:
    key = Identity.generate().public_key
    beacon = decode_beacon(encode_beacon(key, 4242))
    assert (beacon.public_key, beacon.port) == (key, 4242)
    assert decode_beacon(encode_beacon(key, 1) + b"future fields").port == 1
    for bad in (b"", b"PTB", bytes(38), b"PTB\x02" + bytes(34), encode_beacon(key, 1)[:-1]):
        with pytest.raises(DecodeError):
            decode_beacon(bad)
    with pytest.raises(DecodeError):
        decode_beacon(b"PTB\x01" + bytes(key) + b"\x00\x00")  # port 0


def test_nodes_in_two_namespaces_find_each_other(
    two_namespaces: tuple[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    ns_a, ns_b = two_namespaces
    ids = [Identity.generate(), Identity.generate()]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, ns in enumerate((ns_a, ns_b)):
            me, peer = ids[i], ids[1 - i]
            procs.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        str(HERE / "netns_node.py"),
                        me.seed.hex(),
                        peer.public_key.hex(),
                        str(tmp_path / f"{i}.json"),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            )
        # generous: two interpreters starting on a loaded machine (each bounds itself)
        outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    finally:
        for proc in procs:  # a failure or timeout above must not leave nodes running
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
    heard = 0
    for i in range(2):
        path = tmp_path / f"{i}.json"
        assert path.exists(), f"node {i} wrote no result; output:\n{outputs[i]}"
        result = json.loads(path.read_text())
        assert result["ok"], f"node {i}: {result}\n{outputs[i]}"
        assert result["peer_type"] == "multicast"
        if "ipv6" in request.node.callspec.params["two_namespaces"]:
            assert result["uri"].startswith("tcp://[fe80::"), result  # link-local IPv6
        heard += result["beacons_received"]
        assert result["from"] == ids[1 - i].public_key.hex()
        assert result["received"] == f"hello from {ids[1 - i].public_key.hex()}"
    assert heard > 0  # at least one side dialled because of a beacon it heard


class _FakeSocket:
    """Records group memberships (IPv4 or IPv6); the first joins can be made to fail."""

    def __init__(self, failing_joins: int) -> None:
        self.failing_joins = failing_joins
        self.members: set[int] = set()
        self.joins = 0

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        if level == socket.IPPROTO_IPV6:  # struct ipv6_mreq: group (16), index
            index = int.from_bytes(value[16:20], sys.byteorder)
            join, leave = socket.IPV6_JOIN_GROUP, socket.IPV6_LEAVE_GROUP
        else:  # struct ip_mreqn: group (4), address (4), index
            index = int.from_bytes(value[8:12], sys.byteorder, signed=True)
            join, leave = socket.IP_ADD_MEMBERSHIP, socket.IP_DROP_MEMBERSHIP
        if option == join:
            self.joins += 1
            if self.failing_joins:
                self.failing_joins -= 1
                raise OSError(errno.ENODEV, "No such device")
            self.members.add(index)
        elif option == leave:
            self.members.discard(index)


def test_interface_rescan_retries_failed_joins_and_leaves_vanished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pinecone_trio.discovery import multicast
    from pinecone_trio.discovery.interfaces import Interface

    present = [Interface("eth9", 9, "10.0.0.9")]
    monkeypatch.setattr(multicast, "usable_interfaces", lambda: list(present))
    discovery = multicast.MulticastDiscovery(
        Identity.generate().public_key, listen_port=lambda: 1, on_beacon=lambda *a: None
    )
    sock = _FakeSocket(failing_joins=1)
    discovery._sockets = [(discovery._v4, sock)]  # type: ignore[list-item]
    discovery._rescan_all()
    # the join failed (interface not ready): not counted as joined, so no beacons
    # are sent on it and the next rescan tries again
    assert discovery.statistics.interfaces == []
    discovery._rescan_all()
    assert discovery.statistics.interfaces == ["eth9"]
    assert sock.members == {9}
    present.clear()  # unplugged
    discovery._rescan_all()
    assert discovery.statistics.interfaces == []
    assert sock.members == set()
    present.append(Interface("eth9", 9, "10.0.0.9"))  # plugged back in
    discovery._rescan_all()
    assert sock.members == {9}
    assert sock.joins == 3


def test_only_beacons_sent_to_the_group_are_heard() -> None:
    from pinecone_trio.discovery import multicast
    from pinecone_trio.discovery.interfaces import Interface

    me, other = Identity.generate().public_key, Identity.generate().public_key
    heard: list[tuple[str, str]] = []
    discovery = multicast.MulticastDiscovery(
        me, listen_port=lambda: 1, on_beacon=lambda b, host, iface: heard.append((host, iface))
    )
    v4 = discovery._v4
    v4.joined = {9: Interface("eth9", 9, "10.0.0.9")}

    def pktinfo(ifindex: int, destination: str) -> list[tuple[int, int, bytes]]:
        info = struct.pack("i4s4s", ifindex, socket.inet_aton("10.0.0.9"), b"")
        info = info[:8] + socket.inet_aton(destination)
        return [(socket.IPPROTO_IP, multicast._IP_PKTINFO, info)]

    sender = ("10.0.0.7", 60606)
    beacon = encode_beacon(other, 4000)
    discovery._on_datagram(v4, beacon, pktinfo(9, "10.0.0.9"), sender)  # unicast to us
    discovery._on_datagram(v4, beacon, pktinfo(3, "224.0.0.114"), sender)  # other interface
    discovery._on_datagram(v4, encode_beacon(me, 4000), pktinfo(9, "224.0.0.114"), sender)  # own
    discovery._on_datagram(v4, b"PTB\x01junk", pktinfo(9, "224.0.0.114"), sender)  # malformed
    assert heard == []
    assert discovery.statistics.bad_beacons == 2
    discovery._on_datagram(v4, beacon, pktinfo(9, "224.0.0.114"), sender)
    assert heard == [("10.0.0.7", "eth9")]
    assert discovery.statistics.beacons_received == 1


def test_failed_interface_scan_keeps_the_last_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # e.g. EMFILE on a relay with many connections: the scan's own socket cannot be
    # opened. That used to end discovery and with it the whole node.
    from pinecone_trio.discovery import multicast
    from pinecone_trio.discovery.interfaces import Interface

    present = [Interface("eth9", 9, "10.0.0.9")]
    monkeypatch.setattr(multicast, "usable_interfaces", lambda: list(present))
    discovery = multicast.MulticastDiscovery(
        Identity.generate().public_key, listen_port=lambda: 1, on_beacon=lambda *a: None
    )
    sock = _FakeSocket(failing_joins=0)
    discovery._sockets = [(discovery._v4, sock)]  # type: ignore[list-item]
    discovery._rescan_all()

    def fail() -> list[Interface]:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(multicast, "usable_interfaces", fail)
    discovery._rescan_all()
    assert discovery.statistics.interfaces == ["eth9"]
    assert discovery.statistics.scan_errors == 1


def test_if_inet6_parsing_keeps_only_usable_link_local_addresses() -> None:
    from pinecone_trio.discovery.interfaces import parse_if_inet6

    text = "\n".join(
        [
            "fe80000000000000b0a1fffffe000002 04 40 20 80     eth0",  # usable
            "fe80000000000000b0a1fffffe000001 04 40 20 80     eth0",  # lower: preferred
            "fd000000000000000000000000000002 04 40 00 80     eth0",  # global scope
            "00000000000000000000000000000001 01 80 10 80       lo",  # loopback
            "fe80000000000000000000000000000a 05 40 20 c0     eth1",  # tentative (0x40)
            "fe80000000000000000000000000000b 06 40 20 88     eth2",  # DAD failed (0x08)
            "fe80000000000000000000000000000c 07 40 20 80",  # malformed: 5 fields
            "zz80000000000000000000000000000c 08 40 20 80     eth4",  # not hex
            "",
        ]
    )
    assert parse_if_inet6(text) == {4: "fe80::b0a1:ffff:fe00:1"}


def test_ipv6_beacons_name_their_zone_and_unicast_ones_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pinecone_trio.discovery import multicast
    from pinecone_trio.discovery.interfaces import Interface

    me, other = Identity.generate().public_key, Identity.generate().public_key
    heard: list[tuple[str, str]] = []
    discovery = multicast.MulticastDiscovery(
        me,
        listen_port=lambda: 1,
        listen_port_v6=lambda: 2,
        on_beacon=lambda b, host, iface: heard.append((host, iface)),
    )
    v6 = discovery._v6
    assert v6 is not None
    # an IPv4-only interface is not joined over IPv6, and the reverse
    present = [Interface("eth9", 9, None, "fe80::9"), Interface("eth4", 4, "10.0.0.4")]
    monkeypatch.setattr(multicast, "usable_interfaces", lambda: list(present))
    sock4, sock6 = _FakeSocket(failing_joins=0), _FakeSocket(failing_joins=0)
    discovery._sockets = [(discovery._v4, sock4), (v6, sock6)]  # type: ignore[list-item]
    discovery._rescan_all()
    assert (sock4.members, sock6.members) == ({4}, {9})
    assert discovery.statistics.interfaces_v6 == ["eth9"]

    def pktinfo(ifindex: int, destination: str) -> list[tuple[int, int, bytes]]:
        info = socket.inet_pton(socket.AF_INET6, destination) + struct.pack("I", ifindex)
        return [(socket.IPPROTO_IPV6, multicast._IPV6_PKTINFO, info)]

    sender = ("fe80::7%eth9", 60606, 0, 9)
    beacon = encode_beacon(other, 4000)
    discovery._on_datagram(v6, beacon, pktinfo(9, "fe80::9"), sender)  # unicast to us
    discovery._on_datagram(v6, beacon, pktinfo(3, "ff02::114"), sender)  # other interface
    assert heard == []
    discovery._on_datagram(v6, beacon, pktinfo(9, "ff02::114"), sender)
    discovery._on_datagram(v6, beacon, pktinfo(9, "ff02::114"), ("fe80::8", 60606, 0, 9))
    assert heard == [("fe80::7%eth9", "eth9"), ("fe80::8%eth9", "eth9")]
