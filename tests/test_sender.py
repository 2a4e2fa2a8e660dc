"""Sender retry policy: bounded exponential backoff with jitter."""

from __future__ import annotations

import random

from gateway.sender import SenderSettings, backoff_delay


def test_backoff_grows_is_jittered_and_capped() -> None:
    settings = SenderSettings(base_backoff=1.0, max_backoff=60.0)
    rng = random.Random(7)
    for attempts in range(12):
        ceiling = min(60.0, 2.0**attempts)
        samples = [backoff_delay(attempts, settings, rng) for _ in range(200)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len({round(s, 6) for s in samples}) > 100, "jitter spreads retries of many clients"


def test_backoff_survives_huge_attempt_counts() -> None:
    settings = SenderSettings(base_backoff=0.5, max_backoff=300.0)
    assert 150.0 <= backoff_delay(10_000, settings, random.Random(1)) <= 300.0
