"""Message-level fuzzing of the sans-IO replication engines (no trio).

Two `SessionEngine`s (a writer and a reader, each with a `LogReplicator`) are joined
by a hand-driven network. Hypothesis picks, step by step, which in-flight message to
deliver next (reordering), and whether to drop, duplicate or corrupt it, advance the
clock, or ask for another block. Afterwards the network heals (everything delivered
in order, timers run). Properties:

* nothing wrong is ever stored (every block the reader holds is the writer's);
* the engines raise nothing but protocol errors (which drop the session);
* no deadlock: after healing, every wanted block is either stored or its `get` has
  an error, and a session that survived (with no corrupted-but-decodable message,
  which may legitimately change meaning, e.g. a nonce, and no Open left unanswered
  past OPEN_TIMEOUT, which gives that channel up) delivered every wanted block.

Only request-level messages are dropped: the stream is reliable, so losing a Hello,
Open or Range can only come from a buggy peer, and that peer just gets no requests.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from hyperlog import wire
from hyperlog.errors import DecodeError, HyperlogError, ReplicationError
from hyperlog.replication.scheduler import (
    GetWant,
    LogReplicator,
    RangeVerifyWork,
    ServeWork,
    Work,
)
from hyperlog.replication.session import SessionEngine

from .test_replication_fakes import FakeLog, block_value, run_sync

KEY = bytes(range(32))
LENGTH = 80  # > 64, so a full download uses one RangeRequest for blocks 0..63
DROPPABLE = (wire.Request, wire.Data, wire.NoData, wire.Cancel, wire.RangeRequest, wire.RangeData)


@dataclass
class Side:
    log: FakeLog
    rep: LogReplicator
    session: SessionEngine
    inbox: list[bytes] = field(default_factory=list)


class Net:
    def __init__(self) -> None:
        self.now = 0.0
        self.dead: BaseException | None = None
        w = FakeLog(KEY, length=LENGTH)
        r = FakeLog(KEY)
        self.w = Side(w, LogReplicator(w), SessionEngine(nonce=b"\x01" * 32))
        self.r = Side(r, LogReplicator(r), SessionEngine(nonce=b"\x02" * 32))
        self.w.session.add_log(self.w.rep)
        self.r.session.add_log(self.r.rep)
        self.gets: list[GetWant] = []
        self.work_kinds: set[str] = set()
        self.slow_open = False
        self.flush()

    def other(self, s: Side) -> Side:
        return self.r if s is self.w else self.w

    def flush(self) -> None:
        """Move outboxes into the peers' inboxes and run pending work."""
        for _ in range(1000):
            moved = False
            for s in (self.w, self.r):
                while s.session.outbox:
                    self.other(s).inbox.append(wire.encode(s.session.outbox.popleft()))
                    moved = True
                while (work := s.session.next_work()) is not None:
                    moved = True
                    self._run(s, work)
            if not moved or self.dead:
                return
        raise AssertionError("flush did not settle")

    def _run(self, s: Side, work: Work) -> None:
        self.work_kinds.add(type(work).__name__)
        if isinstance(work, ServeWork):
            data = run_sync(s.log.serve(work.request))
            if data is not None:
                data = dataclasses.replace(data, channel=work.channel.local_id, id=work.request.id)
            s.rep.on_served(work.channel, work.request, data)
            return
        if isinstance(work, RangeVerifyWork):
            results = run_sync(s.log.apply_range(work.data, work.inflight.index))
            err = s.rep.on_range_applied(work, results, self.now)
            if err is not None:
                self.kill(ReplicationError(str(err)))
            return
        try:
            result: object = run_sync(s.log.apply(work.data))
        except HyperlogError as exc:
            result = exc
        err = s.rep.on_applied(work, result, self.now)  # type: ignore[arg-type]
        if err is not None:
            self.kill(ReplicationError(str(err)))

    def kill(self, exc: BaseException) -> None:
        if self.dead is None:
            self.dead = exc
            self.w.session.close(self.now)
            self.r.session.close(self.now)

    def deliver(self, s: Side, k: int, payload: bytes | None = None) -> None:
        raw = s.inbox.pop(k) if payload is None else payload
        if self.dead:
            return
        try:
            msg = wire.decode(raw)
            s.session.receive(msg, self.now)
        except (DecodeError, ReplicationError) as exc:
            self.kill(exc)
            return
        self.flush()

    def tick(self, dt: float) -> None:
        if self.w.rep.pending_opens or self.r.rep.pending_opens:
            self.slow_open = True  # time passed while an Open was unanswered
        self.now += dt
        if not self.dead:
            self.w.session.on_timer(self.now)
            self.r.session.on_timer(self.now)
            self.w.rep.on_timer(self.now)
            self.r.rep.on_timer(self.now)
            self.flush()


steps = st.lists(
    st.tuples(
        st.sampled_from(["deliver", "drop", "dup", "corrupt", "tick", "want", "range"]),
        st.booleans(),
        st.integers(0, 1000),
        st.integers(0, 255),
    ),
    max_size=60,
)


@settings(max_examples=150)
@given(steps)
def test_engine_under_faults(plan: list[tuple[str, bool, int, int]]) -> None:
    net = Net()
    corrupted = False
    for action, to_reader, k, byte in plan:
        side = net.r if to_reader else net.w
        if action == "tick":
            net.tick(1 + k / 10)
            continue
        if action == "want":
            net.gets.append(net.r.rep.want_block(k % (LENGTH + 5), net.now))
            net.flush()
            continue
        if action == "range":
            a = 0 if byte % 4 == 0 else k % LENGTH  # sometimes everything: a RangeRequest
            end = LENGTH if byte % 4 == 0 else min(LENGTH, a + 1 + byte % 8)
            net.r.rep.want_range(a, end, net.now)
            net.flush()
            continue
        if not side.inbox:
            continue
        i = k % len(side.inbox)
        if action == "deliver":
            net.deliver(side, i)
        elif action == "drop":
            # A stream is reliable: only request-level messages may be lost (a peer
            # that ignores requests); the engine recovers by timeouts and retries.
            if wire.decode(side.inbox[i]).__class__ in DROPPABLE:
                side.inbox.pop(i)
        elif action == "dup":
            net.deliver(side, i, side.inbox[i])
        elif action == "corrupt":
            raw = bytearray(side.inbox.pop(i))
            raw[byte % len(raw)] ^= 1 + k % 255
            corrupted = True
            net.deliver(side, 0, bytes(raw))
    # Heal: deliver everything in order, let timers fire, bounded.
    for _ in range(200):
        for side in (net.w, net.r):
            while side.inbox and not net.dead:
                net.deliver(side, 0)
        if net.dead:
            break
        pending = [g for g in net.gets if not net.r.log.has(g.index) and g.error is None]
        downloads = [d for d in net.r.rep.downloads if not d.done]
        if not pending and not downloads:
            break
        net.tick(11.0)
    # Nothing wrong stored.
    for i, v in net.r.log.blocks.items():
        assert v == block_value(KEY, 0, i, len(v))
    # No deadlock: every get finished one way or the other.
    for g in net.gets:
        assert net.r.log.has(g.index) or g.error is not None, (g, net.dead)
        if net.dead is None and not corrupted and not net.slow_open and g.index < LENGTH:
            assert net.r.log.has(g.index), g
    if net.dead is None and not corrupted and not net.slow_open:
        assert all(d.done for d in net.r.rep.downloads)


def test_fault_free_full_download_uses_a_range() -> None:
    net = Net()
    d = net.r.rep.want_range(0, LENGTH, net.now)
    for _ in range(50):
        for side in (net.w, net.r):
            while side.inbox:
                net.deliver(side, 0)
        if d.done:
            break
    assert d.done and net.dead is None
    assert "RangeVerifyWork" in net.work_kinds
    assert sorted(net.r.log.blocks) == list(range(LENGTH))
