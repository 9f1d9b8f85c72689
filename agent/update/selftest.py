"""The self-test of a new version in its trial. Pure: a fold over sampled views of the agent.

The trial passes when, for ``bake_s`` without a break, the agent is connected to MQTT, its shadow is in sync
(the shadow was read, at least one reported update was accepted since this start, and no update has waited
for its answer longer than :data:`SHADOW_LAG_S`) and the OI sensor stream is alive (the serial link up, a
frame decoded since this start and frames still arriving within :data:`STREAM_STALL_S`). A problem restarts
the bake window. The trial fails when ``limit_s`` has passed since it started without a full window; the
reason names what was wrong (the problems of the last sample, or, if it was fine by then, the longest
healthy stretch). Only what worked
before the update is checked (a robot without a serial link before cannot fail for it: the caller leaves
``need_robot`` False).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

SHADOW_LAG_S = 10.0
STREAM_STALL_S = 5.0
RUNNING = "running"
PASSED = "passed"
FAILED = "failed"


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    mqtt_connected: bool
    shadow_synced: bool  # the shadow's get was answered since this start
    reports_accepted: int  # reported updates accepted since this start
    unacked_s: float | None  # how long the reported update in flight has waited (None: none in flight)
    link_up: bool
    frames: int  # OI sensor frames decoded since this start


@dataclass(frozen=True)
class SelfTest:
    started: float
    bake_s: float
    limit_s: float
    need_robot: bool = True
    result: str = RUNNING
    reason: str | None = None
    healthy_since: float | None = None
    longest_s: float = 0.0
    frames: int = -1
    frames_at: float | None = None
    problems: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return self.result != RUNNING

    def progress(self, now: float) -> str:
        """ "healthy 12/30 s" or "waiting: MQTT not connected" for statusDetails and status."""
        if self.result == PASSED:
            return "passed"
        if self.result == FAILED:
            return f"failed: {self.reason}"
        if self.healthy_since is not None:
            return f"healthy {min(self.bake_s, now - self.healthy_since):.0f}/{self.bake_s:g} s"
        return "waiting: " + ("; ".join(self.problems) or "first sample")


def problems(test: SelfTest, s: Sample, frames_at: float) -> list[str]:
    out: list[str] = []
    if not s.mqtt_connected:
        out.append("MQTT not connected")
    if not s.shadow_synced:
        out.append("shadow not read yet")
    elif s.reports_accepted <= 0:
        out.append("no reported shadow update accepted yet")
    if s.unacked_s is not None and s.unacked_s > SHADOW_LAG_S:
        out.append(f"a shadow update unanswered for {s.unacked_s:.0f} s")
    if test.need_robot:
        if not s.link_up:
            out.append("serial link to the robot down")
        elif s.frames <= 0:
            out.append("no OI sensor frame since this start")
        elif s.at - frames_at > STREAM_STALL_S:
            out.append(f"OI sensor stream stalled ({s.at - frames_at:.0f} s without a frame)")
    return out


def observe(test: SelfTest, s: Sample) -> SelfTest:
    """The self-test after one more sample (a finished one stays as it is)."""
    if test.done:
        return test
    frames_at = test.frames_at if test.frames_at is not None and s.frames == test.frames else s.at
    found = problems(test, s, frames_at)
    healthy_since: float | None = None
    if not found:
        healthy_since = test.healthy_since if test.healthy_since is not None else s.at
    longest = test.longest_s
    if healthy_since is not None:
        longest = max(longest, s.at - healthy_since)
    new = replace(
        test,
        healthy_since=healthy_since,
        longest_s=longest,
        frames=s.frames,
        frames_at=frames_at,
        problems=tuple(found),
    )
    if healthy_since is not None and s.at - healthy_since >= test.bake_s:
        return replace(new, result=PASSED)
    if s.at - test.started >= test.limit_s:
        if found:
            why = "; ".join(found)
        else:
            why = f"healthy for only {longest:.0f} s of the {test.bake_s:g} s bake time"
        return replace(
            new, result=FAILED, reason=f"self-test failed after {s.at - test.started:.0f} s: {why}"
        )
    return new


GRACE_S = 60.0  # a trial's time to come up before its bake window must start
MARGIN_S = 15.0  # to commit and report before the launcher's commit deadline


def limit_for(
    bake_s: float, commit_timeout_s: float, grace_s: float = GRACE_S, margin_s: float = MARGIN_S
) -> float:
    """How long a trial may take to pass: the bake time plus ``grace_s`` to come up, within the launcher's
    commit deadline less ``margin_s`` (to commit and report before the launcher stops it)."""
    return max(bake_s, min(bake_s + grace_s, commit_timeout_s - margin_s))


def commit_timeout_for(bake_s: float, configured_s: float) -> float:
    """The launcher's commit deadline for a trial baking ``bake_s``: the configured one, raised so that the
    bake, the grace to come up and the margin to commit fit (``limit_for`` then gives that grace). The
    configured deadline also bounds the grace (a robot configured for a 30 s deadline gives a trial 15 s to
    come up, not 60), so a failing trial is given up as soon as the configuration says, whatever it bakes."""
    grace = max(0.0, min(GRACE_S, configured_s - MARGIN_S))
    return max(configured_s, bake_s + grace + MARGIN_S)
