"""Backoff and token bucket, with an injected random source and clock."""

from __future__ import annotations

from base.backoff import Backoff, TokenBucket


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(base_s=1, cap_s=10, rand=lambda: 1.0)
    assert [b.next_delay() for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    b.reset()
    assert b.next_delay() == 1
    assert b.next_delay(fatal=True) == 10


def test_backoff_jitter_is_bounded() -> None:
    b = Backoff(base_s=1, cap_s=10, rand=lambda: 0.25)
    assert b.next_delay() == 0.25 and b.next_delay() == 0.5


def test_token_bucket() -> None:
    t = TokenBucket(rate_per_s=2, burst=2)
    assert t.take(0.0) and t.take(0.0) and not t.take(0.0)
    assert t.wait_s(0.0) == 0.5
    assert t.take(0.5)
    t.drain(0.5)
    assert not t.take(0.5) and t.take(1.0)
