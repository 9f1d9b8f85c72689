"""The self-test of a trial, as a fold over sampled views: it passes only after ``bake_s`` of unbroken health
(MQTT connected, shadow in sync, OI stream alive), a problem restarts the window, and past ``limit_s`` it
fails with the reason. Times are the samples' own (no clock)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.update import selftest
from agent.update.selftest import FAILED, PASSED, RUNNING, Sample, SelfTest


def healthy(at: float, frames: int | None = None, **kw: Any) -> Sample:
    base = Sample(
        at=at,
        mqtt_connected=True,
        shadow_synced=True,
        reports_accepted=1,
        unacked_s=None,
        link_up=True,
        frames=int(at * 10) if frames is None else frames,
    )
    return replace(base, **kw)


def fold(test: SelfTest, samples: list[Sample]) -> SelfTest:
    for s in samples:
        test = selftest.observe(test, s)
    return test


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"mqtt_connected": False}, "MQTT not connected"),
        ({"shadow_synced": False}, "shadow not read yet"),
        ({"reports_accepted": 0}, "no reported shadow update accepted yet"),
        ({"unacked_s": 11.0}, "a shadow update unanswered for 11 s"),
        ({"link_up": False}, "serial link to the robot down"),
        ({"frames": 0}, "no OI sensor frame since this start"),  # even with a bake shorter than a stall
    ],
)
def test_each_problem_keeps_it_from_passing_and_is_the_reason(change: dict[str, Any], problem: str) -> None:
    test = SelfTest(started=0.0, bake_s=2.0, limit_s=20.0)
    test = fold(test, [healthy(t, **change) for t in range(1, 21)])
    assert test.result == FAILED
    assert test.reason == f"self-test failed after 20 s: {problem}"


def test_passes_after_an_unbroken_bake() -> None:
    test = fold(SelfTest(0.0, bake_s=5.0, limit_s=60.0), [healthy(t) for t in range(1, 6)])
    assert test.result == RUNNING and test.progress(5.0) == "healthy 4/5 s"
    test = selftest.observe(test, healthy(6))
    assert test.result == PASSED and test.progress(6.0) == "passed"
    # a finished self-test does not change again
    assert selftest.observe(test, healthy(7, mqtt_connected=False)) is test


def test_a_problem_restarts_the_window() -> None:
    samples = [healthy(t) for t in range(1, 5)] + [healthy(5, mqtt_connected=False)]
    samples += [healthy(t) for t in range(6, 11)]
    test = fold(SelfTest(0.0, bake_s=5.0, limit_s=60.0), samples)
    assert test.result == RUNNING  # healthy since 6: 4 s of 5
    test = selftest.observe(test, healthy(11))
    assert test.result == PASSED


def test_a_stalled_sensor_stream_is_a_problem() -> None:
    samples = [healthy(t) for t in range(1, 4)] + [healthy(t, frames=30) for t in range(4, 12)]
    test = fold(SelfTest(0.0, bake_s=30.0, limit_s=11.0), samples)
    assert test.result == FAILED
    assert test.reason == "self-test failed after 11 s: OI sensor stream stalled (8 s without a frame)"


def test_without_a_robot_the_stream_is_not_checked() -> None:
    samples = [healthy(t, link_up=False, frames=0) for t in range(1, 4)]
    test = fold(SelfTest(0.0, bake_s=2.0, limit_s=10.0, need_robot=False), samples)
    assert test.result == PASSED


def test_flapping_fails_with_the_longest_healthy_stretch() -> None:
    samples = [healthy(t, mqtt_connected=t % 4 != 0) for t in range(1, 20)] + [healthy(20)]
    test = fold(SelfTest(0.0, bake_s=10.0, limit_s=20.0), samples)
    assert test.result == FAILED
    assert test.reason == "self-test failed after 20 s: healthy for only 3 s of the 10 s bake time"


def test_a_zero_bake_passes_on_the_first_healthy_sample() -> None:
    assert selftest.observe(SelfTest(0.0, bake_s=0.0, limit_s=60.0), healthy(1)).result == PASSED


def test_waiting_progress_names_the_problems() -> None:
    test = selftest.observe(SelfTest(0.0, 5.0, 60.0), healthy(1, mqtt_connected=False, link_up=False))
    assert test.progress(1.0) == "waiting: MQTT not connected; serial link to the robot down"


@pytest.mark.parametrize(
    ("bake", "deadline", "limit"),
    [(60.0, 300.0, 120.0), (30.0, 60.0, 45.0), (60.0, 60.0, 60.0), (0.0, 300.0, 60.0)],
)
def test_limit_within_the_commit_deadline(bake: float, deadline: float, limit: float) -> None:
    assert selftest.limit_for(bake, deadline) == limit


@pytest.mark.parametrize(
    ("bake", "configured", "deadline"),
    [
        (60.0, 300.0, 300.0),
        (600.0, 300.0, 675.0),
        (0.0, 300.0, 300.0),
        (240.0, 300.0, 315.0),
        # a short configured deadline bounds the grace to come up: 30 - 15 = 15 s, not 60
        (3.0, 30.0, 33.0),
        (600.0, 30.0, 630.0),
    ],
)
def test_the_commit_deadline_covers_the_bake(bake: float, configured: float, deadline: float) -> None:
    assert selftest.commit_timeout_for(bake, configured) == deadline
    # the self-test under that deadline gets the whole grace the configuration allows (it agrees with
    # limit_for)
    grace = min(selftest.GRACE_S, configured - selftest.MARGIN_S)
    assert selftest.limit_for(bake, deadline) == bake + grace or deadline == configured
