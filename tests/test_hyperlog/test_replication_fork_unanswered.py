"""A check of a peer's tree that the peer never answers drops the peer.

The replicator asks a peer for its whole signed tree when its Sync names another tree
than ours or its upgrade proof fails (docs/replication.md, Forks); until the check
ends the peer is asked nothing else. A check left unanswered used to keep the peer
connected and idle for good, yet counted by `settled`: `update()` never returned
once the peer was longer (a restored writer that was dropped at once as an "invalid
proof" before the checks). Now the check's timeout drops it, with an error whose
cause is why it was suspected, so a follower stops as it did for an invalid proof.

Three levels: the sans-IO replicator; the Trio driver over memory streams with a
hand-written peer, in virtual time; real SQLite logs with a server that stalls the
check (real clock, `REQUEST_TIMEOUT` patched down to 1 s).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
import trio.testing

from hyperlog import wire
from hyperlog.errors import (
    InvalidProofError,
    InvalidSignatureError,
    NoPeersError,
    RemoteProtocolError,
    ReplicationError,
)
from hyperlog.follow_policy import FollowError, FollowPolicy
from hyperlog.log import open_store
from hyperlog.replication import caps, replicate, replication_for, scheduler_fetch
from hyperlog.replication.adapter import LogAdapter
from hyperlog.replication.constants import REQUEST_TIMEOUT
from hyperlog.replication.scheduler import LogReplicator, PeerChannel, VerifyWork

from .test_replication_fork_detect import _against_restored, _clone, _writer
from .test_replication_fork_engine import KEY, TreeLog, _checks, _peer, _tree
from .test_replication_progress import ListSink

H = b"h" * 32


def _causes(error: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and len(found) < 8:
        found.append(e)
        e = e.__cause__
    return found


def _failed_upgrade(rep: LogReplicator) -> tuple[ListSink, PeerChannel]:
    """A peer 2 blocks longer whose upgrade proof fails: its tree is being checked."""
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 7, 5), 0.0)
    (up,) = [m for m in sink.sent if isinstance(m, wire.Request)]
    answer = wire.Data(1, up.id, 0, upgrade=wire.DataUpgrade(5, 2, (), (), b"s" * 64))
    rep.on_message(ch, answer, 0.0)
    (work,) = [w for w in sink.work if isinstance(w, VerifyWork)]
    assert rep.on_applied(work, InvalidSignatureError("bad signature"), 0.0) is None
    assert len(_checks(sink)) == 1 and not rep.settled()
    return sink, ch


# ---------------------------------------------------------------- sans-IO replicator


def test_a_longer_peer_leaving_the_check_unanswered_is_dropped() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _failed_upgrade(rep)
    assert rep.next_deadline() == REQUEST_TIMEOUT
    rep.on_timer(REQUEST_TIMEOUT - 0.01)
    assert sink.dropped == [] and ch in rep.peers  # not before the timeout
    rep.on_timer(REQUEST_TIMEOUT)
    (error,) = sink.dropped
    assert isinstance(error, ReplicationError)
    assert "did not prove its tree when asked" in str(error)
    # The cause is the failed upgrade: what it was dropped for before the checks.
    assert isinstance(error.__cause__, InvalidSignatureError)
    assert ch not in rep.peers and ch.closed
    # update() may return: nothing more is waited for.
    assert rep.settled() and not rep.upgrading()
    assert rep.next_deadline() == float("inf")


def test_a_peer_naming_another_tree_leaving_the_check_unanswered_is_dropped() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)), 0.0)
    assert len(_checks(sink)) == 1 and ch.suspect is not None
    assert not ch.serving()  # not a peer for wait_for_peers while checked
    rep.on_timer(REQUEST_TIMEOUT + 1)
    (error,) = sink.dropped
    assert isinstance(error.__cause__, RemoteProtocolError)
    assert "tree hash" in str(error)
    assert ch not in rep.peers and rep.settled()


def test_other_peers_keep_working_when_a_suspect_is_dropped() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5, have=False))
    good_sink = ListSink(peer_features=wire.FEATURES)
    good = PeerChannel(good_sink, 2, 2, peer_id=2)
    good.owner = rep
    rep.add_peer(good, 0.0)
    rep.on_message(good, wire.Sync(2, 0, 5, 5, tree_hash=_tree(b"ours", 5)), 0.0)
    sink, bad = _peer(rep)
    rep.on_message(bad, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)), 0.0)
    assert good.serving() and not bad.serving()
    rep.on_timer(REQUEST_TIMEOUT + 1)
    assert len(sink.dropped) == 1 and good_sink.dropped == []
    assert rep.peers == [good] and rep.serving_peers() == 1


def test_a_sync_whose_fork_goes_backwards_drops_the_peer() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    _, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 2, 3, 5), 0.0)
    rep.on_message(ch, wire.Sync(1, 3, 1, 5), 0.0)  # forward: fine
    with pytest.raises(RemoteProtocolError, match="fork went backwards"):
        rep.on_message(ch, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)), 0.0)


# ---------------------------------------------------------------- driver, virtual time


async def _raw_peer(
    stream: trio.abc.Stream, log: TreeLog, sync: wire.Sync, *, initiator: bool = True
) -> None:
    """Speak just enough to open `log`'s channel and send `sync`; answer nothing."""
    await stream.send_all(wire.encode_frame(wire.Hello(os.urandom(32), wire.FEATURES)))
    cap = caps.capability(H, log.key, initiator=initiator)
    await stream.send_all(wire.encode_frame(wire.Open(1, log.discovery_key, cap)))
    await stream.send_all(wire.encode_frame(sync))


async def test_update_returns_once_an_unanswered_check_drops_the_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours = TreeLog(KEY, length=5)
    rep = replication_for(ours)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(120):
        async with replicate(b, ours, handshake_hash=H, initiator=False) as session:
            await _raw_peer(a, ours, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)))
            start = trio.current_time()
            await rep.update(timeout=None)
            await session.wait_closed()
            assert trio.current_time() - start >= REQUEST_TIMEOUT
    assert isinstance(session.error, ReplicationError)
    assert "did not prove its tree when asked" in str(session.error)
    assert any(isinstance(e, RemoteProtocolError) for e in _causes(session.error))
    with pytest.raises(NoPeersError, match="did not prove its tree"):
        await rep.wait_for_peers()


async def test_a_peer_under_check_is_not_counted_by_wait_for_peers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours = TreeLog(KEY, length=5)
    rep = replication_for(ours)
    a, b = trio.testing.memory_stream_pair()
    with trio.fail_after(120):
        async with replicate(b, ours, handshake_hash=H, initiator=False):
            await _raw_peer(a, ours, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)))
            start = trio.current_time()
            with pytest.raises(NoPeersError, match="did not prove its tree") as info:
                await rep.wait_for_peers()
            # It waited for the check (the peer synced at once), and no longer.
            waited = trio.current_time() - start
            assert REQUEST_TIMEOUT <= waited < 2 * REQUEST_TIMEOUT
    assert len(info.value.reasons) == 1


# ---------------------------------------------------------------- real logs


class _StallsChecks(LogAdapter):
    """A server that never answers a request for its whole signed tree."""

    async def serve(
        self, request: wire.Request | wire.RangeRequest
    ) -> wire.Data | wire.RangeData | None:
        up = request.upgrade if isinstance(request, wire.Request) else None
        if up is not None and up.start == 0:
            await trio.sleep_forever()
        return await super().serve(request)


class _LiesThenStalls(_StallsChecks):
    """A server whose first Sync names a wrong tree hash, and which stalls the check."""

    lied = False

    def tree_hash_at(self, length: int) -> bytes | None:
        if not self.lied:
            self.lied = True
            return b"\x01" * 32
        return super().tree_hash_at(length)


async def test_a_longer_restored_server_stalling_the_check_is_dropped_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the checks it was dropped at once for an invalid proof, and a follower
    stopped with 'does not extend the copy held here': the same, one timeout later."""
    monkeypatch.setattr(scheduler_fetch, "REQUEST_TIMEOUT", 1.0)
    async with _against_restored(tmp_path, 5, 7) as (server, reader):
        rep = replication_for(reader)
        a, b = trio.testing.memory_stream_pair()
        with trio.fail_after(30):
            async with replicate(a, _StallsChecks(server)), replicate(b, reader) as sr:
                await rep.update(timeout=None)
                await sr.wait_closed()
        assert reader.length == 5 and rep.conflicts == []
    error = sr.error
    assert isinstance(error, ReplicationError)
    assert "did not prove its tree when asked" in str(error)
    assert any(isinstance(e, InvalidProofError) for e in _causes(error))
    # What a follower that had been served makes of it: fatal, worded as before.
    policy = FollowPolicy()
    policy.connected_at(0.0)
    with pytest.raises(FollowError, match="does not extend the copy held here") as info:
        policy.ended(error)
    assert info.value.why == "ended"


async def test_a_server_naming_a_wrong_tree_and_stalling_the_check_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_fetch, "REQUEST_TIMEOUT", 1.0)
    await _writer(tmp_path / "w", [b"line %d" % i for i in range(5)])
    async with open_store(tmp_path / "w") as ws, open_store(tmp_path / "r") as rs:
        writer = await ws.open_log(ws.keys()[0])
        reader = await rs.open_log(writer.key)
        with trio.fail_after(30):
            await _clone(reader, writer)
        rep = replication_for(reader)
        a, b = trio.testing.memory_stream_pair()
        with trio.fail_after(30):
            async with replicate(a, _LiesThenStalls(writer)), replicate(b, reader) as sr:
                await rep.update(timeout=None)
                await sr.wait_closed()
                await writer.append([b"line 5"])
                # Dropped: nothing followed, and update() does not wait for it.
                assert not await rep.update(timeout=None)
        assert reader.length == 5 and rep.conflicts == []
    assert isinstance(sr.error, ReplicationError)
    assert any(isinstance(e, RemoteProtocolError) for e in _causes(sr.error))
    policy = FollowPolicy()
    policy.connected_at(0.0)
    with pytest.raises(FollowError, match="the peer was dropped: the peer did not prove"):
        policy.ended(sr.error)
