"""Redial timing for static peers: exponential backoff with jitter.

Pinecone (research §4.5) waits 2^n seconds after the n-th failed dial, capped at one
hour, and resets the count on success. We keep those figures and add jitter: each delay
is drawn uniformly from [d/2, d], so that many nodes that lost the same relay at the
same moment do not all redial it in lockstep.
"""

from __future__ import annotations

import random
from typing import Final

#: The first retry comes after about this long (2^0 s, jittered).
BACKOFF_BASE: Final = 1.0
#: No retry is ever scheduled further out than an hour (Pinecone's cap).
BACKOFF_CAP: Final = 3600.0
#: A dial (TCP connect plus Noise handshake) gives up after this long.
DIAL_TIMEOUT: Final = 5.0


def backoff_delay(
    failures: int,
    rng: random.Random | None = None,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
) -> float:
    """Seconds to wait before the next dial after `failures` consecutive failures.

    `failures == 0` (the link just went down after working) gives about `base` (one
    second); each failure doubles it, up to `cap`, each delay drawn from [d/2, d].
    """
    if failures < 0:
        raise ValueError("failures must be >= 0")
    ceiling = min(cap, base * 2.0 ** min(failures, 32))
    return (rng or random).uniform(ceiling / 2, ceiling)
