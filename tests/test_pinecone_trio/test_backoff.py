from __future__ import annotations

import random

import pytest

from pinecone_trio.backoff import BACKOFF_CAP, backoff_delay


@pytest.mark.parametrize(("failures", "ceiling"), [(0, 1), (1, 2), (3, 8), (11, 2048), (12, 3600)])
def test_delay_doubles_with_jitter_and_is_capped(failures: int, ceiling: float) -> None:
    rng = random.Random(7)
    delays = [backoff_delay(failures, rng) for _ in range(200)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert max(delays) - min(delays) > ceiling / 10  # jittered, not constant


def test_cap_holds_for_huge_counts() -> None:
    assert backoff_delay(10_000) <= BACKOFF_CAP


def test_negative_is_refused() -> None:
    with pytest.raises(ValueError):
        backoff_delay(-1)
