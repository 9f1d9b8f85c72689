"""Backoff and token bucket, with an injected random source and clock."""

from __future__ import annotations

import itertools
import random

from base.backoff import Backoff, TokenBucket


def test_backoff_grows_caps_and_resets() -> None:
    """The ceiling doubles from base to cap; reset starts over; a fatal failure jumps to the cap."""
    b = Backoff(base_s=1, cap_s=10, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    b.reset()
    assert b.next_delay() == 1
    assert b.next_delay(fatal=True) == 10


def test_backoff_jitter_is_bounded() -> None:
    """The delay is the ceiling times the random draw (full jitter), nothing added."""
    b = Backoff(base_s=1, cap_s=10, rand=lambda: 0.25)
    assert b.next_delay() == 0.25 and b.next_delay() == 0.5


def test_delays_continue_from_the_current_attempt_and_share_its_state() -> None:
    """``delays()`` is ``next_delay()`` in a loop: same sequence, same attempt counter, reset starts over."""
    b = Backoff(base_s=1, cap_s=10, rand=lambda: 1.0)
    assert list(itertools.islice(b.delays(), 6)) == [1, 2, 4, 8, 10, 10]
    assert b.attempt == 6
    b.reset()
    assert b.next_delay() == 1
    assert next(b.delays()) == 2
    b.reset()
    assert next(b.delays()) == 1


def test_full_jitter_goes_down_to_zero_and_up_to_the_ceiling() -> None:
    """Full jitter: uniform in [0, ceiling], so a lucky retry is immediate and none exceeds the cap."""
    assert list(itertools.islice(Backoff(base_s=1, cap_s=10, rand=lambda: 0.0).delays(), 5)) == [0] * 5
    rng = random.Random(7)
    b = Backoff(base_s=0.5, cap_s=30, rand=rng.random)
    delays = list(itertools.islice(b.delays(), 200))
    ceilings = [min(30, 0.5 * 2**n) for n in range(200)]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    assert max(delays[10:]) > 15  # the ceiling is reached, not just approached


def test_backoff_survives_a_huge_attempt_count() -> None:
    """A link down for days keeps retrying at the cap instead of overflowing ``2**attempt``."""
    b = Backoff(base_s=1, cap_s=120, rand=lambda: 1.0, attempt=10_000)
    assert b.next_delay() == 120
    assert next(b.delays()) == 120


def test_fatal_failure_jumps_to_the_cap_and_counts_as_an_attempt() -> None:
    """An auth-type failure waits up to the cap at once, and the next ordinary retry continues the count."""
    b = Backoff(base_s=1, cap_s=60, rand=lambda: 0.5)
    assert b.next_delay(fatal=True) == 30
    assert b.attempt == 1 and b.next_delay() == 1


def test_token_bucket() -> None:
    """Burst, refill at the rate, the wait until the next token, and drain after a 429."""
    t = TokenBucket(rate_per_s=2, burst=2)
    assert t.take(0.0) and t.take(0.0) and not t.take(0.0)
    assert t.wait_s(0.0) == 0.5
    assert t.take(0.5)
    t.drain(0.5)
    assert not t.take(0.5) and t.take(1.0)
