"""Backoff math: exponential growth, cap, jitter bounds, reset."""

from __future__ import annotations

import pytest
from pipegate_client import Backoff


def test_backoff_grows_exponentially_without_jitter() -> None:
    backoff = Backoff(0.5, 30.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_backoff_jitter_stays_within_half_to_full_ceiling() -> None:
    draws = iter([0.0, 1.0, 0.5])
    backoff = Backoff(1.0, 30.0, jitter=0.5, random_source=lambda: next(draws))
    assert backoff.next_delay() == 1.0  # random 0 -> full ceiling
    assert backoff.next_delay() == 1.0  # ceiling 2, random 1 -> half of it
    assert backoff.next_delay() == 3.0  # ceiling 4, random 0.5 -> three quarters


def test_backoff_real_random_is_bounded_and_capped() -> None:
    backoff = Backoff(0.5, 30.0)
    for attempt in range(200):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert ceiling / 2 <= delay <= ceiling <= 30.0, attempt
    assert backoff.ceiling() == 30.0


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(0.5, 30.0, jitter=0.0)
    for _ in range(5):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 0.5


@pytest.mark.parametrize(
    ("initial", "maximum", "multiplier", "jitter"),
    [(0, 1, 2, 0.5), (2, 1, 2, 0.5), (1, 2, 0.5, 0.5), (1, 2, 2, 1.5)],
)
def test_backoff_rejects_nonsense(
    initial: float, maximum: float, multiplier: float, jitter: float
) -> None:
    with pytest.raises(ValueError):
        Backoff(initial, maximum, multiplier=multiplier, jitter=jitter)
