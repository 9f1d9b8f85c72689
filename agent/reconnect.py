"""When the agent tries the broker again: the reconnect schedule, pure (the caller passes ``now``).

The agent owns its retries instead of leaving them to the CRT client, so it knows which attempt failed,
why, and when the next one is, and can say so in the log and in ``roomba-agent status``. Delays are
``base.backoff.Backoff``'s full jitter: uniform in [0, min(cap, base * 2**n)], so a fleet whose broker
restarts does not come back in one wave. With the defaults (1 s, 60 s) the ceilings are 1, 2, 4, 8, 16, 32,
then 60 s. The exponent is reset only by a connection that stayed up ``stable_s`` (as the CRT's own
``min_connected_time_to_reset_reconnect_delay_ms``), so a broker that accepts and then drops the robot at
once is not hammered. A refusal retrying cannot fix (not authorized, session taken over) waits
``fatal_min_s`` plus up to ``fatal_cap_s`` more.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from base.backoff import Backoff

BASE_S = 1.0
CAP_S = 60.0
STABLE_S = 30.0
FATAL_MIN_S = 60.0
FATAL_CAP_S = 300.0


@dataclass
class ReconnectSchedule:
    base_s: float = BASE_S
    cap_s: float = CAP_S
    stable_s: float = STABLE_S
    fatal_min_s: float = FATAL_MIN_S
    fatal_cap_s: float = FATAL_CAP_S
    rand: Callable[[], float] = random.random
    failures: int = 0
    """Failed attempts since the connection was last up (what ``attempt=N`` counts)."""
    connected_at: float | None = None
    _backoff: Backoff = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._backoff = Backoff(base_s=self.base_s, cap_s=self.cap_s, rand=self.rand)

    def connected(self, now: float) -> None:
        self.connected_at = now
        self.failures = 0

    def lost(self, now: float, *, fatal: bool = False) -> float:
        """The connection went down: seconds to wait before the next attempt."""
        if self.connected_at is not None and now - self.connected_at >= self.stable_s:
            self._backoff.reset()
        self.connected_at = None
        return self._delay(fatal)

    def failed(self, *, fatal: bool = False) -> float:
        """An attempt failed: seconds to wait before the next one."""
        self.failures += 1
        return self._delay(fatal)

    def _delay(self, fatal: bool) -> float:
        if fatal:
            return self.fatal_min_s + self.fatal_cap_s * self.rand()
        return self._backoff.next_delay()
