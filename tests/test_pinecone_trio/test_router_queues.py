"""PeerQueue: protocol first and bounded, one pending announcement, fair traffic."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pinecone_trio.identity import FULL_MASK
from pinecone_trio.router.queues import PeerQueue, is_traffic
from pinecone_trio.router.wire import (
    KEEPALIVE,
    Announcement,
    Bootstrap,
    ClosestTraffic,
    Frame,
    Traffic,
    TreeAnnouncement,
)


def key(n: int) -> bytes:
    return bytes([n]) * 32


def traffic(src: int, dst: int, n: int) -> Traffic:
    return Traffic((), (), key(dst), key(src), FULL_MASK, 0, n.to_bytes(4, "big"), 9)


def boot(n: int) -> Bootstrap:
    return Bootstrap(key(1), FULL_MASK, 0, n, key(2), 1, bytes(64))


def ann(seq: int) -> TreeAnnouncement:
    return TreeAnnouncement(Announcement.new(key(9), seq))


def drain(q: PeerQueue) -> list[Frame]:
    out = []
    while (f := q.pop()) is not None:
        out.append(f)
    return out


def test_protocol_frames_go_first_and_one_announcement_is_pending() -> None:
    q = PeerQueue()
    assert q.pop() is None and not q
    q.push(traffic(1, 2, 0))
    q.push(boot(1))
    q.push(ann(1))
    q.push(KEEPALIVE)
    assert q.push(ann(2)) == ann(1)  # replaced in place
    assert len(q) == 4 and q.protocol_len == 3 and q.traffic_len == 1
    assert drain(q) == [ann(2), boot(1), KEEPALIVE, traffic(1, 2, 0)]
    assert q.stats.replaced_announcements == 1 and q.stats.popped == 4


def test_protocol_queue_is_bounded_with_head_drop() -> None:
    q = PeerQueue(protocol_frames=3)
    dropped = [q.push(boot(i)) for i in range(5)]
    assert dropped == [None, None, None, boot(0), boot(1)]
    assert drain(q) == [boot(2), boot(3), boot(4)]
    assert q.stats.dropped_protocol == 2


def test_one_flow_cannot_starve_another() -> None:
    q = PeerQueue(flows=64, flow_frames=4)
    for i in range(10):
        q.push(traffic(1, 2, i))  # a busy flow: keeps only its 4 newest
    q.push(traffic(3, 4, 100))
    q.push(ClosestTraffic((), key(5), key(6), FULL_MASK, 0, b"c", 9))
    assert q.stats.dropped_traffic == 6
    out = drain(q)
    assert len(out) == 6
    # The two quiet flows are served within the first round, not after the busy one.
    assert traffic(3, 4, 100) in out[:3]
    busy = [f.payload for f in out if isinstance(f, Traffic) and f.source_key == key(1)]
    assert busy == [i.to_bytes(4, "big") for i in range(6, 10)]  # head drop: newest kept


def test_flow_hash_is_seeded_and_deterministic() -> None:
    def order(seed: int) -> list[Frame]:
        q = PeerQueue(flows=8, seed=seed)
        for s in range(20):
            q.push(traffic(s, 200, s))
        return drain(q)

    assert order(1) == order(1)
    assert sorted(f.payload for f in order(1)) == sorted(f.payload for f in order(2))  # type: ignore[union-attr]


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("t"), st.integers(0, 5), st.integers(0, 5)),
            st.tuples(st.just("b"), st.integers(0, 100), st.just(0)),
            st.tuples(st.just("a"), st.integers(0, 100), st.just(0)),
            st.tuples(st.just("pop"), st.just(0), st.just(0)),
        ),
        max_size=200,
    )
)
def test_queue_bounds_and_accounting_hold(ops: list[tuple[str, int, int]]) -> None:
    q = PeerQueue(flows=4, flow_frames=3, protocol_frames=5)
    pushed = dropped = popped = 0
    for i, (op, a, b) in enumerate(ops):
        if op == "pop":
            f = q.pop()
            if f is not None:
                popped += 1
                if is_traffic(f):
                    assert q.protocol_len == 0  # traffic only when no protocol frame waits
            continue
        frame: Frame = traffic(a, b, i) if op == "t" else boot(a) if op == "b" else ann(a)
        pushed += 1
        dropped += q.push(frame) is not None
        assert q.traffic_len <= 4 * 3 and q.protocol_len <= 5 + 1
    assert len(q) == pushed - dropped - popped
    q.clear()
    assert len(q) == 0 and q.pop() is None
