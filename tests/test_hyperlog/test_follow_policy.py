"""The follower's policy without sockets or a clock: which failures are retried, the
backoff, and when it starts again (`hyperlog.follow_policy`; time is an argument)."""

from __future__ import annotations

import math
import random

import pytest
import trio

from hyperlog.errors import InvalidProofError, ReplicationError
from hyperlog.follow_policy import (
    FOLLOW_RETRY_CAP,
    FOLLOW_RETRY_FIRST,
    FOLLOW_STEADY,
    ConnectedEvent,
    DialFailedEvent,
    FollowError,
    FollowPolicy,
    LostEvent,
    SteadyEvent,
    UnansweredError,
    retry_delay,
    transient_dial_error,
    transient_end,
)


def _no_hello() -> ReplicationError:
    error = ReplicationError("peer sent no hello in time")
    error.__cause__ = trio.TooSlowError()  # as the driver reports it: timed out
    return error


def _ceiling(failures: int) -> float:
    return min(FOLLOW_RETRY_CAP, FOLLOW_RETRY_FIRST * 2.0**failures)


def test_the_retry_delay_doubles_from_half_a_second_to_its_cap() -> None:
    rng = random.Random(7)
    for failures, ceiling in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 16.0), (6, 30.0), (10**6, 30.0)]:
        for _ in range(20):
            assert ceiling / 2 <= retry_delay(failures, rng) <= ceiling, failures
    assert retry_delay(3, random.Random(1), first=1.0, cap=4.0) <= 4.0
    with pytest.raises(ValueError):
        retry_delay(-1)


def test_which_failures_are_transient() -> None:
    for error in [
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError("no connection"),
        trio.BrokenResourceError("reset"),
        trio.TooSlowError(),
    ]:
        assert transient_dial_error(error, False), error
    assert not transient_dial_error(ValueError("not our protocol"), True)

    assert transient_end(None)  # the peer closed it
    assert transient_end(trio.BrokenResourceError("reset"))
    assert transient_end(trio.ClosedResourceError())
    assert not transient_end(ReplicationError("peer sent an invalid proof: x"))
    assert not transient_end(InvalidProofError("bad"))
    assert not transient_end(_no_hello())  # (maybe no hyperlog peer at all)
    assert transient_end(_no_hello(), served_before=True)  # a link that stalled
    assert not transient_end(UnansweredError("x"))
    assert transient_end(UnansweredError("x"), served_before=True)
    assert not transient_end(
        ReplicationError("hello: the peer echoed our nonce"), served_before=True
    )


def test_dial_failures_back_off_and_are_one_outage() -> None:
    policy = FollowPolicy(rng=random.Random(3))
    for failures in range(8):
        event = policy.dial_failed(ConnectionRefusedError(111, "Connection refused"))
        assert isinstance(event, DialFailedEvent)
        ceiling = _ceiling(failures)
        assert ceiling / 2 <= event.retry_in <= ceiling, (failures, event)
    assert (policy.outages, policy.failures, policy.connected) == (1, 8, False)
    assert policy.next_deadline() == math.inf  # nothing to time while down


def test_a_dial_that_cannot_mend_stops_following() -> None:
    bad = ValueError("the peer speaks another protocol")
    with pytest.raises(FollowError) as info:
        FollowPolicy().dial_failed(bad)
    assert info.value.why == "dial" and info.value.error is bad and info.value.__cause__ is bad
    assert not info.value.served_before


def test_retry_dial_is_asked_with_whether_the_log_was_served() -> None:
    asked: list[bool] = []

    def retry(error: BaseException, served_before: bool) -> bool:
        asked.append(served_before)
        return served_before  # e.g. a proxy's 404 only once it served the log

    policy = FollowPolicy(retry_dial=retry)
    with pytest.raises(FollowError):
        policy.dial_failed(ConnectionRefusedError("404"))
    policy.connected_at(0.0)
    policy.ended(None)
    assert isinstance(policy.dial_failed(ConnectionRefusedError("404")), DialFailedEvent)
    assert asked == [False, True]


def test_a_connection_that_holds_starts_the_backoff_again() -> None:
    policy = FollowPolicy(rng=random.Random(5))
    for _ in range(4):
        policy.dial_failed(OSError("unreachable"))
    assert policy.connected_at(100.0) == ConnectedEvent(again=False)
    assert policy.connected and policy.next_deadline() == 100.0 + FOLLOW_STEADY
    assert policy.on_timer(100.0 + FOLLOW_STEADY - 0.1) is None  # not yet
    assert policy.failures == 4
    assert policy.on_timer(100.0 + FOLLOW_STEADY) == SteadyEvent()
    assert policy.failures == 0 and policy.next_deadline() == math.inf
    lost = policy.ended(trio.BrokenResourceError("reset"))
    assert isinstance(lost, LostEvent) and lost.retry_in <= FOLLOW_RETRY_FIRST
    assert policy.connected_at(200.0) == ConnectedEvent(again=True)
    assert (policy.outages, policy.connections) == (2, 2)


def test_a_path_that_keeps_dropping_is_redialled_less_often() -> None:
    # Every connection serves, then drops within FOLLOW_STEADY: the backoff grows as
    # if the dials had failed (it was reset each time one served: one dial a second).
    policy = FollowPolicy(rng=random.Random(9))
    now = 0.0
    delays = []
    for failures in range(7):
        policy.connected_at(now)
        assert policy.on_timer(now + 0.6) is None
        lost = policy.ended(None)
        assert lost.retry_in >= _ceiling(failures) / 2
        delays.append(lost.retry_in)
        now += 0.6 + lost.retry_in
    assert delays[-1] >= FOLLOW_RETRY_CAP / 2
    assert policy.next_deadline() == math.inf  # the lost connection's timer is gone
    assert policy.outages == 7  # (each loss after a connection that served is one)


def test_a_peer_that_does_not_serve_the_log() -> None:
    with pytest.raises(FollowError) as info:
        FollowPolicy().unanswered(refused=True)
    assert info.value.why == "refused" and str(info.value) == "the peer does not serve this log"
    with pytest.raises(FollowError) as info:
        FollowPolicy().unanswered(refused=False)  # never served: maybe no hyperlog peer
    assert info.value.why == "unanswered" and isinstance(info.value.error, UnansweredError)

    policy = FollowPolicy()
    policy.connected_at(0.0)
    policy.ended(None)
    lost = policy.unanswered(refused=False)  # it served before: a stalled link
    assert isinstance(lost.error, UnansweredError)
    assert str(lost.error) == "the peer did not answer for the log within 10 s"
    with pytest.raises(FollowError) as info:
        policy.unanswered(refused=True)  # a server for another log now
    assert info.value.why == "refused" and info.value.served_before


def test_a_session_ended_for_good() -> None:
    proof = ReplicationError("peer sent an invalid proof: bad signature")
    proof.__cause__ = InvalidProofError("bad signature")
    with pytest.raises(FollowError) as info:
        FollowPolicy().ended(proof)
    assert info.value.why == "ended" and info.value.error is proof
    assert "before serving the log" in str(info.value) and not info.value.diverged

    policy = FollowPolicy()
    policy.connected_at(0.0)
    with pytest.raises(FollowError) as info:
        policy.ended(proof)  # it served before: its history changed
    assert str(info.value).startswith("the peer's log does not extend the copy held here")
    assert info.value.served_before and info.value.diverged and not policy.connected
    assert policy.next_deadline() == math.inf

    with pytest.raises(FollowError):
        FollowPolicy().ended(_no_hello())
    policy = FollowPolicy()
    policy.connected_at(0.0)
    assert isinstance(policy.ended(_no_hello()), LostEvent)


def test_an_invalid_proof_found_anywhere_in_the_causes_means_diverged() -> None:
    # The CLI words `FollowError.diverged` ("the server's log does not extend ..."):
    # the invalid proof may sit under a cause, or in a group among the causes.
    deep = ReplicationError("the peer did not prove its tree when asked")
    deep.__cause__ = ExceptionGroup("checks", [ValueError("x"), InvalidProofError("bad")])
    looped = ReplicationError("a cause that is itself")
    looped.__cause__ = looped  # (bounded: no loop)
    for error, diverged in [(deep, True), (looped, False)]:
        policy = FollowPolicy()
        policy.connected_at(0.0)
        with pytest.raises(FollowError) as info:
            policy.ended(error)
        assert info.value.diverged is diverged, error
