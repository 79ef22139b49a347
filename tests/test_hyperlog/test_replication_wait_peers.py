"""`LogReplication.wait_for_peers` ends: it returns once enough peers serve the log,
and raises `NoPeersError` once no session can bring one (the peer refused the log,
left its open unanswered, or the stream ended), instead of waiting for ever.

Fake logs over memory streams, in virtual time (the unanswered open takes
`OPEN_TIMEOUT`); `trio.fail_after` turns a hang into a failure.
"""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from hyperlog import wire
from hyperlog.errors import ForkConflictError, NoPeersError, ReplicationError
from hyperlog.replication import caps, replicate, replication_for
from hyperlog.replication.constants import OPEN_TIMEOUT

from .test_replication_fakes import FakeLog

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))


async def test_a_peer_serving_another_log(autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = FakeLog(KEY, length=3), FakeLog(OTHER, length=3)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with replicate(a, theirs), replicate(b, ours) as session:
            with pytest.raises(NoPeersError, match="refused the log") as info:
                await replication_for(ours).wait_for_peers()
            assert not session.closed.is_set()  # refused, not dropped
    assert info.value.reasons == ("the peer refused the log (unknown log)",)
    assert isinstance(info.value, ReplicationError)


async def test_a_peer_refusing_the_log(autojump_clock: trio.testing.MockClock) -> None:
    """Each side binds the capability to another link (a wrong key proof): refused."""
    ours, theirs = FakeLog(KEY), FakeLog(KEY, length=3)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with (
            replicate(a, theirs, handshake_hash=b"x" * 32),
            replicate(b, ours, handshake_hash=b"y" * 32),
        ):
            with pytest.raises(NoPeersError, match="bad capability"):
                await replication_for(ours).wait_for_peers()


@pytest.mark.parametrize("before", [False, True], ids=["while-waiting", "before-waiting"])
async def test_a_stream_closed_before_sync(
    autojump_clock: trio.testing.MockClock, before: bool
) -> None:
    ours = FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    rep = replication_for(ours)
    with trio.fail_after(60):
        async with replicate(b, ours) as session:
            await a.aclose()  # the peer goes away before sending anything
            if before:
                await session.wait_closed()
            with pytest.raises(NoPeersError, match="session ended before the peer opened"):
                await rep.wait_for_peers()


async def test_a_peer_leaving_ends_a_later_wait(autojump_clock: trio.testing.MockClock) -> None:
    ours, theirs = FakeLog(KEY), FakeLog(KEY, length=3)
    rep = replication_for(ours)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with replicate(a, theirs) as s_theirs, replicate(b, ours) as s_ours:
            await rep.wait_for_peers()
            await s_theirs.stream.aclose()
            await s_ours.wait_closed()
            with pytest.raises(NoPeersError, match="session ended"):
                await rep.wait_for_peers()


async def test_an_unanswered_open_is_waited_for_until_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A peer that says hello but never answers the log's open: waited for while the
    open may still be answered (OPEN_TIMEOUT), then given up."""
    ours = FakeLog(KEY)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with replicate(b, ours):
            await a.send_all(wire.encode_frame(wire.Hello(os.urandom(32), wire.FEATURES)))
            start = trio.current_time()
            with pytest.raises(NoPeersError, match="did not answer"):
                await replication_for(ours).wait_for_peers()
            assert trio.current_time() - start >= OPEN_TIMEOUT


async def test_one_refusing_and_one_serving_peer(autojump_clock: trio.testing.MockClock) -> None:
    ours = FakeLog(KEY)
    rep = replication_for(ours)
    x1, y1 = trio.testing.memory_stream_pair()
    x2, y2 = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with (
            replicate(x1, FakeLog(OTHER, length=3)),
            replicate(y1, ours),
            replicate(x2, FakeLog(KEY, length=3)),
            replicate(y2, ours),
        ):
            await rep.wait_for_peers()
            assert sum(ch.synced for ch in rep.engine.peers) == 1
            # Two cannot be had from these sessions: said, not waited for.
            with pytest.raises(NoPeersError, match="unknown log"):
                await rep.wait_for_peers(2)


async def test_a_session_started_later_is_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No session has offered the log yet (one may be starting in a background task):
    that is waited for."""
    ours, theirs = FakeLog(KEY), FakeLog(KEY, length=3)
    rep = replication_for(ours)
    a, b = trio.testing.memory_stream_pair()

    async def later() -> None:
        await trio.sleep(5)
        async with replicate(a, theirs), replicate(b, ours):
            await trio.sleep_forever()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(later)
            await rep.wait_for_peers()
            assert trio.current_time() >= 5
            nursery.cancel_scope.cancel()


async def test_a_new_session_forgets_the_ends_of_earlier_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = FakeLog(KEY), FakeLog(KEY, length=3)
    rep = replication_for(ours)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(60):
        async with replicate(b, ours) as session:
            await a.aclose()
            await session.wait_closed()
        a, b = trio.testing.memory_stream_pair()
        async with replicate(a, theirs), replicate(b, ours):
            await rep.wait_for_peers()  # not the first session's end


async def test_a_frozen_log_raises_its_conflict(autojump_clock: trio.testing.MockClock) -> None:
    ours = FakeLog(KEY)
    rep = replication_for(ours)
    conflict = ForkConflictError("two signed trees for fork 0 (seen elsewhere)")
    rep.engine.freeze(conflict)
    with pytest.raises(ForkConflictError) as info:
        await rep.wait_for_peers()
    assert info.value is conflict


@pytest.mark.parametrize("n", [0, -1, 1.5, True])
async def test_n_is_a_count(n: object) -> None:
    rep = replication_for(FakeLog(KEY))
    with pytest.raises((TypeError, ValueError)):
        await rep.wait_for_peers(n)  # type: ignore[arg-type]


H = b"h" * 32


async def _opens_but_never_syncs(stream: trio.abc.Stream, log: FakeLog) -> None:
    """A peer that says hello and opens the log's channel (the right capability for
    `replicate(..., handshake_hash=H, initiator=False)`), then sends nothing more."""
    await stream.send_all(wire.encode_frame(wire.Hello(os.urandom(32), wire.FEATURES)))
    cap = caps.capability(H, log.key, initiator=True)
    await stream.send_all(wire.encode_frame(wire.Open(1, log.discovery_key, cap)))


async def test_a_peer_that_opens_but_never_syncs_is_given_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Bounded as an unanswered open is: after OPEN_TIMEOUT the session counts as an
    answer that is not a peer (it waited for ever), and update() stops waiting too."""
    ours = FakeLog(KEY)
    rep = replication_for(ours)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(120):
        async with replicate(b, ours, handshake_hash=H, initiator=False) as session:
            await _opens_but_never_syncs(a, ours)
            start = trio.current_time()
            with pytest.raises(NoPeersError, match="never synced") as info:
                await rep.wait_for_peers()
            assert OPEN_TIMEOUT <= trio.current_time() - start < 2 * OPEN_TIMEOUT
            assert info.value.reasons == (
                f"the peer opened the log but never synced in {OPEN_TIMEOUT:g} s",
            )
            assert not session.closed.is_set()  # given up on, not dropped
            assert rep.peers == 1
            await rep.update(timeout=None)  # returns: nothing is waited for


async def test_a_peer_that_syncs_late_is_a_peer_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours = FakeLog(KEY)
    rep = replication_for(ours)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(120):
        async with replicate(b, ours, handshake_hash=H, initiator=False):
            await _opens_but_never_syncs(a, ours)
            with pytest.raises(NoPeersError, match="never synced"):
                await rep.wait_for_peers()
            await a.send_all(wire.encode_frame(wire.Sync(1, 0, 0, 0)))
            await trio.testing.wait_all_tasks_blocked()  # (the session read it)
            await rep.wait_for_peers()
            assert rep.engine.peers_unavailable(1) is None
