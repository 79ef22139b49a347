"""The fork checks of the replication engine, without Trio (`LogReplicator` over a
`FakeLog` that names its tree hashes): what a Sync's tree hash, a failed upgrade and a
conflict proof sent unasked make the scheduler do. The real logs, their proofs and
both sides finding the conflict are in test_replication_fork_detect.py."""

from __future__ import annotations

import hashlib

import pytest

from hyperlog import wire
from hyperlog.errors import ForkConflictError, InvalidSignatureError, RemoteProtocolError
from hyperlog.replication.scheduler import K_CONFLICT, LogReplicator, PeerChannel, VerifyWork
from hyperlog.replication.scheduler_state import ServeWork

from .test_replication_fakes import FakeLog
from .test_replication_progress import ListSink

KEY = bytes(range(32))


class TreeLog(FakeLog):
    """A FakeLog naming a tree hash for each (fork, length) of its `history`."""

    history = b"ours"

    def tree_hash_at(self, length: int) -> bytes | None:
        if not 0 < length <= self.length:
            return None
        data = self.history + self.fork.to_bytes(8, "little") + length.to_bytes(8, "little")
        return hashlib.blake2b(data, digest_size=32).digest()


def _tree(history: bytes, length: int, fork: int = 0) -> bytes:
    log = TreeLog(KEY, length=length)
    log.history = history
    log._fork = fork
    tree = log.tree_hash_at(length)
    assert tree is not None
    return tree


def _peer(rep: LogReplicator, features: int = wire.FEATURES) -> tuple[ListSink, PeerChannel]:
    sink = ListSink(peer_features=features)
    ch = PeerChannel(sink, 1, 1, peer_id=1)
    ch.owner = rep
    rep.add_peer(ch, 0.0)
    return sink, ch


def _checks(sink: ListSink) -> list[wire.Request]:
    return [
        m
        for m in sink.sent
        if isinstance(m, wire.Request) and m.upgrade is not None and m.upgrade.start == 0
    ]


def test_our_syncs_carry_our_tree_hash_only_to_peers_that_read_it() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    new, _ = _peer(rep)
    old, _ = _peer(rep, features=wire.FEATURE_RANGE_LEAVES)
    (sync,) = [m for m in new.sent if isinstance(m, wire.Sync)]
    assert sync.tree_hash == _tree(b"ours", 5)
    (sync,) = [m for m in old.sent if isinstance(m, wire.Sync)]
    assert sync.tree_hash is None


@pytest.mark.parametrize("length", [5, 3])
def test_another_tree_at_a_length_we_hold_is_checked(length: int) -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, length, 5, tree_hash=_tree(b"theirs", length)), 0.0)
    (check,) = _checks(sink)
    assert check.upgrade == wire.RequestUpgrade(0, length) and check.block is None
    assert isinstance(ch.suspect, RemoteProtocolError) and ch.checking_conflict()
    assert not rep.settled()  # update() waits for the check
    # Nothing else is asked of a suspect peer.
    rep.want_block(4, 0.0)
    assert [m for m in sink.sent if isinstance(m, wire.Request)] == [check]


def test_the_same_tree_or_a_longer_peer_is_not_checked() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"ours", 5)), 0.0)
    rep.on_message(ch, wire.Sync(1, 0, 7, 5, tree_hash=_tree(b"theirs", 7)), 0.0)
    assert _checks(sink) == [] and ch.suspect is None
    # A shorter peer's tree is compared on its first Sync only (a storage read per
    # root); an equal one on every Sync.
    sink2, ch2 = _peer(rep)
    rep.on_message(ch2, wire.Sync(1, 0, 3, 5, tree_hash=_tree(b"ours", 3)), 0.0)
    rep.on_message(ch2, wire.Sync(1, 0, 4, 5, tree_hash=_tree(b"theirs", 4)), 0.0)
    assert _checks(sink2) == []
    rep.on_message(ch2, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)), 0.0)
    assert len(_checks(sink2)) == 1


def test_a_failed_upgrade_from_a_longer_peer_is_checked_not_dropped() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 7, 5), 0.0)
    (up,) = [m for m in sink.sent if isinstance(m, wire.Request)]
    assert up.upgrade == wire.RequestUpgrade(5, 2)
    answer = wire.Data(1, up.id, 0, upgrade=wire.DataUpgrade(5, 2, (), (), b"s" * 64))
    rep.on_message(ch, answer, 0.0)
    (work,) = [w for w in sink.work if isinstance(w, VerifyWork)]
    bad = InvalidSignatureError("bad signature for length 7, fork 0")
    assert rep.on_applied(work, bad, 0.0) is None  # not dropped yet
    (check,) = _checks(sink)
    assert check.upgrade == wire.RequestUpgrade(0, 5) and ch.suspect is bad
    # The same tree after all: dropped for the bad upgrade.
    reply = wire.Data(1, check.id, 0, upgrade=wire.DataUpgrade(0, 5, (), (), b"s" * 64))
    rep.on_message(ch, reply, 0.0)
    (verify,) = [
        w for w in sink.work if isinstance(w, VerifyWork) and w.inflight.kind == K_CONFLICT
    ]
    assert rep.on_conflict_checked(verify, None, 0.0) is bad
    assert rep.frozen is None


def _proof(length: int, rid: int = wire.CONFLICT_PROOF_ID) -> wire.Data:
    return wire.Data(1, rid, 0, upgrade=wire.DataUpgrade(0, length, (), (), b"s" * 64))


def test_a_conflict_proof_sent_unasked_is_checked_once() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5), 0.0)
    rep.on_message(ch, _proof(5), 0.0)
    (work,) = [w for w in sink.work if isinstance(w, VerifyWork)]
    assert work.inflight.kind == K_CONFLICT and work.inflight.id == wire.CONFLICT_PROOF_ID
    assert ch.verifying_conflict() and not rep.settled()
    # It shows no conflict with us: kept, nothing frozen.
    assert rep.on_conflict_checked(work, None, 0.0) is None
    assert rep.frozen is None and not ch.verifying_conflict()
    with pytest.raises(RemoteProtocolError, match="second"):
        rep.on_message(ch, _proof(5), 0.0)


def test_a_conflict_proof_freezes_the_log() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5), 0.0)
    rep.on_message(ch, _proof(5), 0.0)
    (work,) = [w for w in sink.work if isinstance(w, VerifyWork)]
    conflict = ForkConflictError("two signed trees")
    assert rep.on_conflict_checked(work, conflict, 0.0) is conflict
    assert rep.frozen is conflict and rep.settled()


@pytest.mark.parametrize(
    ("features", "data", "match"),
    [
        (wire.FEATURE_RANGE_LEAVES, _proof(5), "never sent"),
        (wire.FEATURES, wire.Data(1, 0, 0, block=wire.DataBlock(0, b"x", ())), "whole signed"),
        (
            wire.FEATURES,
            wire.Data(1, 0, 0, upgrade=wire.DataUpgrade(2, 3, (), (), b"s" * 64)),
            "whole signed",
        ),
    ],
)
def test_a_malformed_conflict_proof_drops_the_peer(
    features: int, data: wire.Data, match: str
) -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    _, ch = _peer(rep, features=features)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5), 0.0)
    with pytest.raises(RemoteProtocolError, match=match):
        rep.on_message(ch, data, 0.0)


def test_a_conflict_proof_about_a_head_we_left_is_ignored() -> None:
    log = TreeLog(KEY, length=5)
    rep = LogReplicator(log)
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5), 0.0)
    rep.on_message(ch, _proof(6), 0.0)  # longer than we are
    assert sink.work == [] and not ch.verifying_conflict()


def test_a_check_refused_for_a_newer_fork_is_forgotten() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)), 0.0)
    (check,) = _checks(sink)
    # It truncated meanwhile: its Sync of the new fork came before its refusal.
    rep.on_message(ch, wire.Sync(1, 1, 4, 5), 0.0)
    rep.on_message(ch, wire.NoData(1, check.id, wire.NO_DATA_FORK), 0.0)
    assert ch.suspect is None and rep.frozen is None


def test_a_check_refused_otherwise_drops_the_peer() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5, tree_hash=_tree(b"theirs", 5)), 0.0)
    (check,) = _checks(sink)
    with pytest.raises(RemoteProtocolError, match="refused to prove its tree"):
        rep.on_message(ch, wire.NoData(1, check.id, wire.NO_DATA_FORK), 0.0)


def test_a_frozen_log_still_proves_its_whole_tree_and_nothing_else() -> None:
    rep = LogReplicator(TreeLog(KEY, length=5))
    sink, ch = _peer(rep)
    rep.on_message(ch, wire.Sync(1, 0, 5, 5), 0.0)
    rep.freeze(ForkConflictError("seen elsewhere"))
    whole = wire.Request(1, 7, 0, upgrade=wire.RequestUpgrade(0, 5))
    rep.on_message(ch, whole, 0.0)
    assert [w.request for w in sink.work if isinstance(w, ServeWork)] == [whole]
    block = wire.Request(1, 8, 0, block=wire.RequestBlock(1, 0))
    rep.on_message(ch, block, 0.0)
    assert wire.NoData(1, 8, wire.NO_DATA_FORK) in sink.sent
