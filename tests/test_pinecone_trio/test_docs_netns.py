"""docs/dht.md's program, as written, across three laptops in a line: A - relay - C.

A user ran the DHT snippet on two machines: a lookup right after start found nothing
(the node, still alone, was the topic's home), and with the README's `pinecone-trio`
relay between them, topics homed at the relay's key could be neither announced nor
found (the relay ran no DHT). Here each laptop is a network namespace: A and C are
joined only through B, which runs the README's node command; A and C run the
documentation's program with no change, finding each other by multicast discovery
and the DHT. Needs root (skips otherwise); the namespaces are deleted afterwards.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pinecone_trio import Identity

from .netns_helpers import Program, laptops, python_blocks

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.netns
def test_the_dht_program_finds_its_peer_across_a_relay(tmp_path: Path) -> None:
    [program] = python_blocks(ROOT / "docs" / "dht.md")
    (tmp_path / "dht_chat.py").write_text(program, encoding="utf-8")
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    with laptops(3, line=True) as (ns_a, ns_b, ns_c):
        listen = ["--listen", "tcp://0.0.0.0:7000", "--listen", "ws://0.0.0.0:7001/"]
        node = ["-m", "pinecone_trio", "--key", "node.key", *listen, "--multicast"]
        relay = Program(ns_b, node, tmp_path / "b")
        running = [relay]
        try:
            relay.wait_for_line("dht on", timeout=60)
            a = Program(ns_a, [str(tmp_path / "dht_chat.py")], tmp_path / "a")
            running.append(a)
            line = a.wait_for_line("announced; a node of the overlay holds it:", timeout=90)
            assert line.strip() == "announced; a node of the overlay holds it: True", a.output
            c = Program(ns_c, [str(tmp_path / "dht_chat.py"), "find"], tmp_path / "c")
            running.append(c)
            assert c.wait(timeout=90) == 0, c.output
            assert a.wait(timeout=30) == 0, a.output
            assert relay.terminate(timeout=30) == 0, relay.output
        finally:
            for proc in running:
                proc.stop()
    key_a = Identity.load(tmp_path / "a" / "me.key").public_key.hex()
    key_c = Identity.load(tmp_path / "c" / "me.key").public_key.hex()
    assert f"found ['{key_a}']\n" in c.lines, c.output  # exactly one record: A's
    assert "reply: b'hi back'\n" in c.lines, c.output
    assert f"{key_c} says b'found you by topic'\n" in a.lines, a.output
