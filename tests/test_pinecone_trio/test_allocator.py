"""The node keeps glibc's heap top instead of faulting it back in for every packet."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest
import trio
import trio.lowlevel

from pinecone_trio import Identity
from pinecone_trio import node as node_module
from pinecone_trio.node import NodeConfig, open_node

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the allocator parameters are glibc's",
)

# A sender's pattern: ~62 KB packets queued a few deep, the queue drained now and then.
_CHURN = textwrap.dedent(
    """
    import collections, resource, sys
    if sys.argv[1] == "tuned":
        from pinecone_trio._allocator import keep_heap_top
        assert keep_heap_top() and keep_heap_top()  # a second call is a no-op
    def churn():
        queue = collections.deque()
        for i in range(2000):
            queue.append(bytes(62_000 + (i % 7) * 100))
            if len(queue) > 4:
                queue.popleft()
            if i % 50 == 0:
                queue.clear()
    churn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    churn()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _CHURN, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return int(out.stdout)


@glibc_only
def test_packet_churn_stops_faulting_once_tuned() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    # 2,000 packets of ~15 pages each: glibc's default trims and re-faults thousands
    # of pages; with the heap top kept, (almost) none.
    assert tuned < 100, (plain, tuned)
    assert plain > 10 * tuned + 500, (plain, tuned)


@pytest.mark.parametrize("tune", [True, False])
async def test_the_node_tunes_the_allocator_unless_told_not_to(
    tune: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def record() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(node_module, "keep_heap_top", record)
    async with open_node(Identity.generate(), config=NodeConfig(tune_allocator=tune)):
        await trio.lowlevel.checkpoint()
    assert calls == ([1] if tune else [])
