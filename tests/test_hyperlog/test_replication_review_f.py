"""Regression tests for the sparse-replication review (round F).

Each test drives the sans-IO engines (`SessionEngine`, `LogReplicator`) directly over
`FakeLog`s, or real logs over memory streams with Trio's autojump clock, and failed
on the code before its fix.
"""

from __future__ import annotations

import pytest

from hyperlog import wire
from hyperlog.errors import RemoteProtocolError
from hyperlog.replication import caps, session
from hyperlog.replication.constants import MAX_OUTBOX_BYTES, MAX_UNREAD_BYTES
from hyperlog.replication.scheduler import LogReplicator
from hyperlog.replication.session import SessionEngine

from .test_replication_fakes import FakeLog

KEY = bytes(range(32))
PEER_NONCE = b"\x02" * 32


def open_session(log: FakeLog) -> tuple[SessionEngine, LogReplicator]:
    """A session serving `log` to a hand-played peer that opened channel 1."""
    rep = LogReplicator(log)
    s = SessionEngine(nonce=b"\x01" * 32)
    s.add_log(rep)
    s.receive(wire.Hello(PEER_NONCE, wire.FEATURES), 0.0)
    assert s.session_id is not None
    cap = caps.capability(s.session_id, log.key, initiator=s.nonce > PEER_NONCE)
    s.receive(wire.Open(1, log.discovery_key, cap), 0.0)
    assert s.channels(), "the channel did not open"
    return s, rep


# -- 1. a peer that never reads cannot grow our outbox without bound ----------------


@pytest.mark.parametrize(
    "msg",
    [
        wire.Want(1, 0, 300),
        wire.Request(1, 7, 999, wire.RequestBlock(0, 0)),  # refused at once (fork)
        wire.Sync(1, 0, 0, 12345),  # a stale view of our length: we re-sync
    ],
    ids=["want", "refused-request", "sync"],
)
def test_nonreading_peer_is_dropped_at_the_unread_limit(
    msg: wire.ChannelMessage, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real limit (32 MiB) takes half a million messages: scale it down.
    limit = 256 * 1024
    monkeypatch.setattr(session, "MAX_UNREAD_BYTES", limit, raising=False)
    s, _ = open_session(FakeLog(KEY, length=300))
    # Nobody pops the outbox: the peer never reads. (Before the fix only serves were
    # bounded, and these grew the outbox by 64 bytes per message, forever.)
    with pytest.raises(RemoteProtocolError, match="does not read"):
        for _ in range(100 * limit // 64):
            s.receive(msg, 0.0)
    assert s.outbox_bytes <= limit + 64 * 1024


def test_unread_limit_leaves_room_for_serving() -> None:
    # Serving stops at MAX_OUTBOX_BYTES plus one frame: an honest peer that is slow to
    # read what it asked for is never dropped for it.
    assert MAX_UNREAD_BYTES >= MAX_OUTBOX_BYTES + wire.MAX_FRAME_SIZE
