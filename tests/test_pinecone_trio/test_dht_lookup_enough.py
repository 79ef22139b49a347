"""`lookup(topic, enough=n)` ends as soon as n verified records are in hand.

From the notes example's author: a reader that left a moment ago stays named as a
snake neighbour by the topic's home, and the next reader's lookup waited a whole
request timeout (1 s) for it although the record it wanted was already in hand.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from pinecone_trio import Identity
from pinecone_trio.dht import DhtEngine, topic_id, wire
from pinecone_trio.dht.constants import REQUEST_TIMEOUT
from pinecone_trio.dht.engine import LookupDone, SendClosest, SendExact
from pinecone_trio.testing import open_network

T = topic_id("enough/topic")
GONE = b"\x02" * 32  # a neighbour the home names, which never answers


def _home_with_a_record() -> tuple[DhtEngine, DhtEngine]:
    """An announcer's engine and the topic's home, which holds its record."""
    announcer = DhtEngine(Identity.from_seed(b"x" * 32))
    home = DhtEngine(Identity.from_seed(b"h" * 32))
    home.set_neighbours(GONE, None)
    [send] = announcer.start_announce(T, b"data", 0.0)
    assert isinstance(send, SendClosest)
    home.on_message(announcer.public_key, send.payload, send.target, 0.0)
    return announcer, home


def _reply_of(home: DhtEngine, looker: DhtEngine, rid: int, send: SendClosest) -> bytes:
    [reply] = [
        a
        for a in home.on_message(looker.public_key, send.payload, send.target, 0.0)
        if isinstance(a, SendExact) and a.key == looker.public_key
    ]
    assert isinstance(wire.decode(reply.payload), wire.LookupReply)
    return reply.payload


@pytest.mark.parametrize("enough", [None, 1])
def test_a_lookup_with_enough_records_does_not_wait_for_a_silent_neighbour(
    enough: int | None,
) -> None:
    _, home = _home_with_a_record()
    looker = DhtEngine(Identity.from_seed(b"l" * 32))
    rid, [send] = looker.lookup(T, 0.0, enough=enough)
    assert isinstance(send, SendClosest)
    out = looker.on_message(home.public_key, _reply_of(home, looker, rid, send), None, 0.0)
    done = [a for a in out if isinstance(a, LookupDone)]
    if enough is None:
        assert done == []  # waits for GONE, named by the home, for a request timeout
        assert looker.on_timer(REQUEST_TIMEOUT - 0.001) == []
        [finished] = [a for a in looker.on_timer(REQUEST_TIMEOUT) if isinstance(a, LookupDone)]
        assert [r.data for r in finished.records] == [b"data"]
    else:
        [finished] = done
        assert finished.request_id == rid and [r.data for r in finished.records] == [b"data"]
        assert looker.pending() == 0
        # The neighbour the home named answers after all: late, not unexpected.
        late = wire.LookupReply(rid, T, (), (), closest=False)
        assert looker.on_message(GONE, wire.encode(late), None, 0.1) == []
        assert looker.statistics.late_replies == 1
        assert looker.statistics.unexpected_replies == 0


def test_an_answer_to_a_cancelled_lookup_is_late_not_unexpected() -> None:
    _, home = _home_with_a_record()
    looker = DhtEngine(Identity.from_seed(b"l" * 32))
    rid, [send] = looker.lookup(T, 0.0)
    assert isinstance(send, SendClosest)
    looker.cancel_lookup(rid)  # its caller gave up (a move_on_after)
    assert looker.on_message(home.public_key, _reply_of(home, looker, rid, send), None, 0.1) == []
    assert looker.statistics.late_replies == 1
    assert looker.statistics.unexpected_replies == 0


def test_enough_below_one_is_refused() -> None:
    looker = DhtEngine(Identity.from_seed(b"l" * 32))
    with pytest.raises(ValueError, match="at least 1"):
        looker.lookup(T, 0.0, enough=0)


async def test_the_dht_lookup_passes_enough_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_network([("a", "b"), ("b", "c")]) as net:
        with trio.fail_after(60):
            await net.wait_converged()
        dht_a, dht_c = net["a"].dht, net["c"].dht
        assert dht_a is not None and dht_c is not None
        async with dht_a.announce("enough/demo", data=b"here"):
            start = trio.current_time()
            records = await dht_c.lookup("enough/demo", enough=1)
            assert [r.data for r in records] == [b"here"]
            assert trio.current_time() - start < REQUEST_TIMEOUT
