"""Reconnect delays: exponential backoff with jitter."""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff"]


class Backoff:
    """Delays between reconnect attempts.

    The n-th consecutive failure (n = 0, 1, ...) waits a random time in
    ``[(1 - jitter) * d, d]`` with ``d = min(maximum, initial * multiplier**n)``, so the
    delay grows exponentially up to ``maximum`` while many clients that lost the same
    server spread their reconnects instead of arriving together. :meth:`reset` after a
    session that worked starts again from ``initial``.
    """

    def __init__(
        self,
        initial: float = 0.5,
        maximum: float = 30.0,
        *,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        random_source: Callable[[], float] = random.random,
    ) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("backoff needs 0 < initial <= maximum")
        if multiplier < 1:
            raise ValueError("backoff multiplier must be >= 1")
        if not 0 <= jitter <= 1:
            raise ValueError("backoff jitter must be within [0, 1]")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self._random = random_source
        self.failures = 0

    def ceiling(self) -> float:
        """The largest delay the next call to :meth:`next_delay` may return."""
        # Cap the exponent so that a client failing for days never overflows a float.
        exponent = min(self.failures, 64)
        return min(self.maximum, self.initial * self.multiplier**exponent)

    def next_delay(self) -> float:
        """Count one more failure and return how long to wait before the next attempt."""
        ceiling = self.ceiling()
        self.failures += 1
        return ceiling * (1 - self.jitter * self._random())

    def reset(self) -> None:
        """Forget past failures (call after a session that worked)."""
        self.failures = 0
