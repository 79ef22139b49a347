"""A second review's hint edge: a hint peer that accepts requests and never answers.

It failed before its fix: a get waited for the hint with no limit, and every later get
queued behind the client's lock, although every block was in the local log.
"""

from __future__ import annotations

import trio
import trio.testing

import hamt
from hamt.constants import HINT_TIMEOUT
from hamt.hints import PathHintClient, serve_path_hints
from hamt.wire import HintReply


class _Recorder:
    """A hint source that remembers the replies its client returned."""

    def __init__(self, client: PathHintClient) -> None:
        self.client = client
        self.replies: list[tuple[str, HintReply]] = []

    async def path_hint(self, key: str, version: int = 0, fork: int | None = None) -> HintReply:
        reply = await self.client.path_hint(key, version, fork)
        self.replies.append((key, reply))
        return reply


async def test_a_silent_hint_peer_costs_a_get_the_hint_timeout_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as writer:
        for i in range(20):
            await writer.put(f"k{i}", b"v%d" % i)
        ours, theirs = trio.testing.memory_stream_pair()  # nobody answers on `ours` yet
        source = _Recorder(PathHintClient(theirs, proofs=False))
        async with hamt.open_hamt(log, hints=source) as reader:
            start = trio.current_time()
            with trio.fail_after(2 * HINT_TIMEOUT):
                assert await reader.get("k3") == b"v3"
            assert trio.current_time() - start == HINT_TIMEOUT  # then plain reads
            start = trio.current_time()
            with trio.fail_after(2 * HINT_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    # Two gets at once: the second does not queue behind the first's wait.
                    for key in ("k4", "k5"):
                        nursery.start_soon(reader.get, key)
            assert trio.current_time() - start <= HINT_TIMEOUT
            assert await reader.get("k4") == b"v4" and source.replies == []
            # The peer wakes up: it answers the requests given up on, late, and then
            # the new one. The client skips the late answers: the new get gets its own.
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_path_hints, ours, writer)
                fresh = hamt.MemoryLog(log.key, writable=False)
                fresh.blocks = log.blocks
                async with hamt.open_hamt(fresh, hints=source) as cold:
                    with trio.fail_after(1):
                        assert await cold.get("k7") == b"v7"
                assert [(k, r.blocks) for k, r in source.replies] == [
                    ("k7", await writer.path_hint("k7"))
                ]
                nursery.cancel_scope.cancel()


async def test_the_hint_timeout_is_configurable(autojump_clock: trio.testing.MockClock) -> None:
    log = hamt.MemoryLog()
    async with hamt.open_hamt(log) as writer:
        await writer.put("a", b"1")
        await writer.put("b", b"2")
        _ours, theirs = trio.testing.memory_stream_pair()
        async with hamt.open_hamt(log, hints=PathHintClient(theirs), hint_timeout=0.5) as r:
            start = trio.current_time()
            assert await r.get("a") == b"1"
            assert trio.current_time() - start == 0.5
