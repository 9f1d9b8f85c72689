"""Capped exponential backoff with full jitter, and a token bucket for AWS IoT's per-thing shadow limit.

The one retry rule of the project: the robot's serial link, the agent's outbox and reconnects, and the local
cloud's supervisor all wait ``uniform(0, min(cap, base * 2**attempt))`` ("full jitter", as AWS's
Architecture Blog post "Exponential Backoff And Jitter" recommends). Both classes are pure: the caller
passes the clock and the random source, so tests are exact.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delay before retry ``n``: uniform in [0, min(cap, base * 2**n)]. Auth-type failures jump to the cap."""

    base_s: float = 1.0
    cap_s: float = 120.0
    rand: Callable[[], float] = random.random
    attempt: int = 0

    def next_delay(self, *, fatal: bool = False) -> float:
        ceiling = self.cap_s if fatal else min(self.cap_s, self.base_s * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return ceiling * self.rand()

    def reset(self) -> None:
        self.attempt = 0

    def delays(self) -> Iterator[float]:
        """The delays before each retry from the current attempt on, forever (``next_delay`` in a loop)."""
        while True:
            yield self.next_delay()


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    _tokens: float = field(default=-1.0)
    _last: float | None = None

    def _refill(self, now: float) -> None:
        if self._tokens < 0:
            self._tokens = self.burst
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_s)
        self._last = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def wait_s(self, now: float) -> float:
        """Seconds until one token is available (0 if now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate_per_s

    def drain(self, now: float) -> None:
        """After a 429 from the service: spend everything, so the next request waits a full refill."""
        self._refill(now)
        self._tokens = 0.0
