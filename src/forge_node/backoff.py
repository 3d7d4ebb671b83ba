"""Exponential backoff with jitter and a ceiling, shared by restarts and retries."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """`delay(n)` for the n-th consecutive failure (n >= 1): base * factor**(n-1), capped.

    Jitter spreads the delay by +-`jitter` (a fraction), so that nodes failing together do
    not retry together.
    """

    def __init__(self, base: float = 1.0, factor: float = 2.0, cap: float = 30.0,
                 jitter: float = 0.1, rand: Callable[[], float] = random.random) -> None:
        self.base, self.factor, self.cap, self.jitter = base, factor, cap, jitter
        self.rand = rand

    def delay(self, failures: int) -> float:
        exponent = min(max(failures - 1, 0), 64)
        raw = min(self.cap, self.base * self.factor ** exponent)
        return raw * (1 + self.jitter * (2 * self.rand() - 1))
