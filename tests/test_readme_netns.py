"""README's node command and its two library programs, as written, side by side on one
laptop (a network namespace with an interface for multicast; needs root, skips
otherwise; the namespace is deleted afterwards).

A user ran the node command and the chat program on one laptop: both listened on port
7000 and the chat crashed (`OSError: [Errno 98] cannot listen on tcp://0.0.0.0:7000`).
And the HAMT program created a new log on every run: after two runs data/ held two
logs, and `hyperlog info data/` showed only the first.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hyperlog import open_store

from .test_pinecone_trio.netns_helpers import Program, laptops, python_blocks

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

#: Reads the HAMT program's note the way a second program would: replicated over an
#: overlay stream to the node the program printed, verified.
HAMT_READER = """
import sys, trio, hamt
from hyperlog import open_store, replicate
from hyperlog.replication import replication_for
from pinecone_trio import Identity, open_node

async def main(node_key: str, log_key: str) -> None:
    with trio.fail_after(60):
        async with open_store("data/") as store, \\
                   open_node(Identity.load_or_create("me.key"), multicast=True) as node:
            log = await store.open_log(bytes.fromhex(log_key))
            stream = await node.connect(node_key, "/notes/v1")
            async with stream, replicate(stream, log):
                await replication_for(log).update(timeout=30)
                async with hamt.open_hamt(log) as db:
                    print("notes/today =", await db.get("notes/today"))

trio.run(main, sys.argv[1], sys.argv[2])
"""


def _node_command(status: Path) -> list[str]:
    """README's node command, as arguments for `python -m pinecone_trio`, without its
    `--connect tcp://OTHER:7000` (a placeholder) and with its status file in `status`."""
    [block] = re.findall(r"```sh\n(pinecone-trio .*?)```", README.read_text(), re.S)
    args = shlex.split(block.replace("\\\n", " "))
    assert args[0] == "pinecone-trio"
    i = args.index("--connect")
    del args[i : i + 2]
    args[args.index("--status-json") + 1] = str(status)
    return ["-m", "pinecone_trio", *args[1:]]


def test_readme_programs_listen_on_no_port_the_node_command_takes() -> None:
    # Fixed listen ports of every command and program README runs: none twice.
    text = README.read_text()
    ports = re.findall(r"--listen \w+://[^\s:]+:(\d+)", text)
    for block in python_blocks(README):
        ports += re.findall(r"\w+://0\.0\.0\.0:(\d+)", block)
    fixed = [p for p in ports if p != "0"]
    assert len(fixed) == len(set(fixed)), fixed


@pytest.mark.netns
def test_readme_node_chat_and_hamt_run_side_by_side_on_one_laptop(tmp_path: Path) -> None:
    chat, hamt_program = python_blocks(README)
    folders = {name: tmp_path / name for name in ("node", "alice", "bob", "notes", "reader")}
    for folder in folders.values():
        folder.mkdir()
    (tmp_path / "chat.py").write_text(chat)
    (tmp_path / "hamt_notes.py").write_text(hamt_program)
    (tmp_path / "hamt_read.py").write_text(HAMT_READER)
    running: list[Program] = []
    with laptops(1, line=False) as [laptop]:
        try:
            node = Program(laptop, _node_command(tmp_path / "node.json"), folders["node"])
            running.append(node)
            node.wait_for_line("listening on tcp://0.0.0.0:7000", timeout=60)

            # the chat, both ends, beside the node
            alice = Program(laptop, [str(tmp_path / "chat.py")], folders["alice"])
            running.append(alice)
            key = alice.wait_for_line("my key: ", timeout=60).split()[-1]
            bob = Program(laptop, [str(tmp_path / "chat.py"), key], folders["bob"])
            running.append(bob)
            assert bob.wait(timeout=60) == 0, bob.output
            assert alice.wait(timeout=30) == 0, alice.output
            bob_key = bob.wait_for_line("my key: ", timeout=0).split()[-1]
            assert f"{bob_key} says b'hello across the overlay'\n" in alice.lines

            # the HAMT program twice: the second run reopens the first run's log
            logs = []
            for _run in range(2):
                notes = Program(laptop, [str(tmp_path / "hamt_notes.py")], folders["notes"])
                running.append(notes)
                line = notes.wait_for_line("log ", timeout=60).split()
                log_key, node_key = line[1], line[-1]
                logs.append(log_key)
                reader = Program(
                    laptop, [str(tmp_path / "hamt_read.py"), node_key, log_key], folders["reader"]
                )
                running.append(reader)
                assert reader.wait(timeout=90) == 0, reader.output + notes.output
                assert "notes/today = b'buy milk'\n" in reader.lines
                assert notes.wait(timeout=30) == 0, notes.output
            assert logs[0] == logs[1], logs
            assert node.terminate(timeout=30) == 0, node.output
        finally:
            for proc in running:
                proc.stop()
    info = subprocess.run(
        [sys.executable, "-m", "hyperlog.cli", "info", str(folders["notes"] / "data"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert info.returncode == 0, info.stderr
    assert f'"key": "{logs[0]}"' in info.stdout, info.stdout
    assert _log_keys(folders["notes"] / "data") == [logs[0]]


def _log_keys(folder: Path) -> list[str]:
    async def keys() -> list[str]:
        async with open_store(folder, readonly=True, create=False) as store:
            stored = store.keys()
            return [key.hex() for key in stored]

    return trio.run(keys)
