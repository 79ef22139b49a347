"""The `pinecone-trio` command runs the DHT service by default, so a relay is no hole
in the DHT of the apps around it (user report: in a line A - relay - C, a topic whose
home was the relay's key could be neither announced by A nor found by C).

The relay is the real command in its own process; A and C are in-process nodes with
their DHTs, all over TCP on 127.0.0.1. The keys are made so that the relay's key is
the topic's home (the smallest key >= the topic id).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from pinecone_trio import open_node
from pinecone_trio.dht import open_dht
from pinecone_trio.node import Node

from .cli_helpers import killed_after
from .dht_helpers import three_keys_and_a_topic


@contextmanager
def _relay(key: Path, status: Path, *extra: str) -> Iterator[tuple[str, list[str]]]:
    """Run `pinecone-trio` on 127.0.0.1; yield its URI and its startup lines."""
    options = ["--key", str(key), "--listen", "tcp://127.0.0.1:0", "--status-json", str(status)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinecone_trio", *options, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with killed_after(proc):
            lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[1].startswith("listening on "), lines
        yield lines[1].removeprefix("listening on ").strip(), lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert proc.returncode == 0, err


async def _line_converged(a: Node, c: Node, b_key: bytes) -> None:
    """Wait until a's ascending and c's descending snake neighbour is the relay."""
    with trio.fail_after(60):
        while a.snake_neighbours()[1] != b_key or c.snake_neighbours()[0] != b_key:
            with trio.move_on_after(0.2):  # the ascending key changes without an event
                await a.wait_changed()


async def _status_says(path: Path, predicate: Callable[[dict[str, Any]], bool]) -> None:
    """Wait (at most 30 s) until the status file the relay rewrites every second
    satisfies `predicate`."""
    for _ in range(150):
        if predicate(json.loads(await trio.Path(path).read_text())):
            return
        await trio.sleep(0.2)
    raise AssertionError(f"status never matched: {await trio.Path(path).read_text()}")


@pytest.mark.parametrize("relay_dht", [True, False], ids=["default", "no-dht"])
async def test_a_topic_homed_at_the_relay_command_is_found(tmp_path: Path, relay_dht: bool) -> None:
    ida, idb, idc, topic = three_keys_and_a_topic("demo/")
    idb.save(tmp_path / "relay.key")
    status = tmp_path / "relay.json"
    with _relay(tmp_path / "relay.key", status, *([] if relay_dht else ["--no-dht"])) as (
        uri,
        lines,
    ):
        if relay_dht:
            assert lines[2] == "dht on: stores and answers the DHT topics homed at this key\n"
        else:
            assert lines[2].startswith("dht off (--no-dht): "), lines
        async with (
            open_node(ida, listen="tcp://127.0.0.1:0") as a,
            open_node(idc, listen="tcp://127.0.0.1:0") as c,
        ):
            await a.connect(uri)
            await c.connect(uri)
            await _line_converged(a, c, bytes(idb.public_key))
            async with (
                open_dht(a) as dht_a,
                open_dht(c) as dht_c,
                dht_a.announce(topic, data=b"hi") as ann,
            ):
                found = await dht_c.lookup(topic, timeout=10)
                assert ann.acknowledged is relay_dht
                if relay_dht:
                    assert [(r.public_key, r.data) for r in found] == [(a.public_key, b"hi")]
                    # the relay holds the record, and its status file says so
                    await _status_says(status, lambda s: s["dht"]["records"] == 1)
                else:
                    # What --no-dht costs: the relay is the topic's home and drops what
                    # it cannot serve, so nobody can announce or find the topic.
                    assert found == []
                    await _status_says(status, lambda s: s["dht"] is None)
