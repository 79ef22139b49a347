"""Shared test configuration: Hypothesis profiles and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings

# Machines are shared and noisy: never fail a property test on wall-clock deadlines.
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("ci" if os.environ.get("CI") else "default")

#: The shared reference material (vectors, topologies, anchors) beside the checkout.
SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
