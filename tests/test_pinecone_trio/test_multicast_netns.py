"""Real multicast discovery between two network namespaces joined by a veth pair.

Needs root and iproute2 (CI runs as root); skips with the reason otherwise. The test
creates its namespaces with unique names and deletes them whatever happens. Traffic
stays inside them: the veth pair connects only the two namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
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


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    if shutil.which("ip") is None:
        pytest.skip("iproute2 (ip) is not installed")
    tag = f"{os.getpid() % 100000}"
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
        _ip("-n", a, "addr", "add", "10.213.7.1/24", "dev", f"va{tag}")
        _ip("-n", b, "addr", "add", "10.213.7.2/24", "dev", f"vb{tag}")
        for ns, dev in ((a, f"va{tag}"), (b, f"vb{tag}")):
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
    two_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    ns_a, ns_b = two_namespaces
    ids = [Identity.generate(), Identity.generate()]
    procs = []
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
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    heard = 0
    for i in range(2):
        path = tmp_path / f"{i}.json"
        assert path.exists(), f"node {i} wrote no result; output:\n{outputs[i]}"
        result = json.loads(path.read_text())
        assert result["ok"], f"node {i}: {result}\n{outputs[i]}"
        assert result["peer_type"] == "multicast"
        heard += result["beacons_received"]
        assert result["from"] == ids[1 - i].public_key.hex()
        assert result["received"] == f"hello from {ids[1 - i].public_key.hex()}"
    assert heard > 0  # at least one side dialled because of a beacon it heard
