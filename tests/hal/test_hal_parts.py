"""The Robot's pure parts on their own: exact inputs, exact outputs, no port, no thread, no clock."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from base.backoff import Backoff
from hal import codec
from hal.codec import BatteryLine, FirmwareBanner, SensorFrame, StreamParser
from hal.events import LinkUp, Listeners
from hal.link import READ_EARLY_S, STREAM_PERIOD_S, LinkHealth, LinkStats, ReadPacing, Reopening, Watchdog
from hal.mode import REENTRY_CAP_S, ModeKeeper, ModeReentry
from hal.models import get_model
from hal.odometry import Pose, PoseTracker
from hal.opcodes import OIMode, Op
from hal.quirks import Quirks
from hal.state import StateTracker

CREATE2 = get_model("create2")
ENCODERS = Quirks(encoder_odometry=True)
DELTAS = Quirks(encoder_odometry=False)


def frames(*values: dict[str, int], ids: tuple[int, ...] = (100,)) -> list[SensorFrame]:
    parser = StreamParser(ids)
    events = parser.feed(b"".join(codec.encode_frame(ids, v) for v in values))
    return [e for e in events if isinstance(e, SensorFrame)]


# ------------------------------------------------------------------ PoseTracker


def test_pose_tracker_bounds_a_step_by_top_speed_plus_slack() -> None:
    tracker = PoseTracker(CREATE2)
    assert tracker.max_step_mm(None) is None
    assert tracker.max_step_mm(0.1) == pytest.approx(CREATE2.max_velocity_mm_s * 1.5 * 0.1 + 50.0)
    assert tracker.max_step_mm(-1.0) == 50.0


def test_pose_tracker_first_encoder_frame_is_a_baseline_then_steps_count() -> None:
    tracker = PoseTracker(CREATE2)
    assert tracker.update({"left_encoder_counts": 1000, "right_encoder_counts": 1000}, ENCODERS) == Pose()
    pose = tracker.update({"left_encoder_counts": 1100, "right_encoder_counts": 1100}, ENCODERS, dt=1.0)
    assert pose.x_mm == pytest.approx(100 * CREATE2.mm_per_count) and pose.theta_rad == 0


def test_pose_tracker_rejects_an_implausible_encoder_step() -> None:
    tracker = PoseTracker(CREATE2)
    tracker.update({"left_encoder_counts": 0, "right_encoder_counts": 0}, ENCODERS)
    pose = tracker.update({"left_encoder_counts": 20000, "right_encoder_counts": 0}, ENCODERS, dt=0.015)
    assert pose == Pose() and tracker.encoders.rejected == 1


def test_pose_tracker_sums_reports_and_drops_implausible_ones() -> None:
    tracker = PoseTracker(CREATE2)
    tracker.update({"distance": 10, "angle": 5}, DELTAS, dt=0.015)
    tracker.update({"distance": 30000, "angle": 5}, DELTAS, dt=0.015)  # 30 m in 15 ms: noise
    assert tracker.reported_distance_mm == 10 and tracker.reported_angle_deg == 10
    assert tracker.rejected_reports == 1


def test_pose_tracker_uses_deltas_without_encoder_odometry() -> None:
    tracker = PoseTracker(CREATE2)
    pose = tracker.update(
        {"distance": 100, "angle": 0, "left_encoder_counts": 5, "right_encoder_counts": 5}, DELTAS, dt=1.0
    )
    assert pose.x_mm == pytest.approx(100) and tracker.encoders.pose == Pose()


def test_pose_tracker_applies_the_angle_quirk_to_the_reported_angle() -> None:
    tracker = PoseTracker(CREATE2)
    tracker.update({"angle": 29}, Quirks(angle_scale=True))
    assert tracker.reported_angle_deg == pytest.approx(29 / 0.324056)


def test_pose_tracker_reset_returns_to_origin_and_zero_sums() -> None:
    tracker = PoseTracker(CREATE2)
    tracker.update({"distance": 100, "angle": 90}, DELTAS, dt=1.0)
    tracker.reset()
    assert tracker.deltas.pose == Pose() and tracker.reported_distance_mm == tracker.reported_angle_deg == 0


# ------------------------------------------------------------------ LinkStats and the link's timers


def test_link_stats_count_reconnects_after_the_first_connection() -> None:
    stats = LinkStats("mem://a", StreamParser((100,)))
    assert stats.link_up(1.0) == 0 and stats.link_up(2.0) == 1 and stats.connected
    stats.link_down()
    assert not stats.connected and stats.health(3.0).reconnects == 1


def test_link_stats_rate_over_the_window_and_the_frame_age() -> None:
    stats = LinkStats("mem://a", StreamParser((100,)))
    stats.link_up(0.0)
    assert stats.frame(0.0) is None
    for i in range(1, 11):
        assert stats.frame(i * 0.1) == pytest.approx(0.1)
    health = stats.health(1.0)
    assert health == LinkHealth(port="mem://a", connected=True, frames_per_s=10.0, last_frame_age_s=0.0)
    assert stats.current(health, 1.5).last_frame_age_s == pytest.approx(0.5)
    assert stats.current(health, 1.5).frames_per_s == 10.0
    assert stats.current(health, 3.5).frames_per_s == 0.0  # stale: older than the window


def test_link_stats_framed_since_up_only_after_a_frame_on_the_new_link() -> None:
    stats = LinkStats("mem://a", StreamParser((100,)))
    stats.link_up(0.0)
    assert not stats.framed_since_up
    stats.frame(0.5)
    assert stats.framed_since_up
    stats.link_up(1.0)
    assert not stats.framed_since_up


def test_reopening_paces_failures_and_restarts_at_once() -> None:
    reopening = Reopening(Backoff(base_s=0.05, cap_s=2.0, rand=lambda: 1.0))
    assert reopening.wait(0.0) <= 0 and not reopening.failing
    assert reopening.failed(10.0) == pytest.approx(0.05) and reopening.failing
    assert reopening.wait(10.0) == pytest.approx(0.05)
    assert reopening.failed(11.0) == pytest.approx(0.1)
    reopening.settled()
    assert reopening.failed(12.0) == pytest.approx(0.05)
    reopening.restart()
    assert reopening.wait(12.0) <= 0 and not reopening.failing
    assert reopening.later(13.0) == pytest.approx(0.1) and not reopening.failing  # next failure: a warning


def test_read_pacing_waits_for_missing_bytes_or_most_of_a_period() -> None:
    pacing = ReadPacing((100,), 115200, frames_per_read=3)
    assert pacing.frame_size == 84
    assert pacing.pause(0, waiting=True) == pytest.approx(STREAM_PERIOD_S - READ_EARLY_S)
    assert pacing.pause(80, waiting=True) == pytest.approx(4 * 10 / 115200)
    assert pacing.pause(0) == pytest.approx(3 * STREAM_PERIOD_S - READ_EARLY_S)


@pytest.mark.parametrize("bad", [0, 11, 2.0])
def test_read_pacing_refuses_frames_per_read_outside_1_to_10(bad: int) -> None:
    with pytest.raises(ValueError, match="frames_per_read"):
        ReadPacing((100,), 115200, frames_per_read=bad)


def test_watchdog_pulses_and_detects_silence() -> None:
    """The wake pulse is due once per keep_awake_s; silence counts from the later of frame and handshake."""
    watchdog = Watchdog(silence_s=1.0, keep_awake_s=60.0)
    watchdog.handshook(100.0)
    assert not watchdog.pulse_due(150.0) and watchdog.pulse_due(161.0) and not watchdog.pulse_due(162.0)
    assert watchdog.silent_for(100.5, None) is None
    assert watchdog.silent_for(101.5, None) == pytest.approx(1.5)
    assert watchdog.silent_for(101.5, 101.0) is None
    assert watchdog.silent_for(103.0, 101.0) == pytest.approx(2.0)


# ------------------------------------------------------------------ ModeKeeper


def test_mode_keeper_reenters_with_a_doubling_capped_pace() -> None:
    keeper = ModeKeeper(OIMode.SAFE)
    first = keeper.observe(OIMode.PASSIVE, 0.0)
    assert first == ModeReentry(OIMode.SAFE, OIMode.PASSIVE, 1, 0.0)
    assert first.commands == (bytes([Op.SAFE]),)
    assert keeper.observe(OIMode.PASSIVE, 0.1) is None
    times = [0.0]
    now = 0.0
    while len(times) < 10:
        now += 0.01
        if keeper.observe(OIMode.PASSIVE, now) is not None:
            times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] == pytest.approx(0.2, abs=0.011) and gaps[1] == pytest.approx(0.4, abs=0.011)
    assert max(gaps) == pytest.approx(REENTRY_CAP_S, abs=0.011)
    assert keeper.attempts == 10


def test_mode_keeper_resets_its_pace_once_the_mode_is_back() -> None:
    keeper = ModeKeeper(OIMode.FULL)
    keeper.observe(OIMode.PASSIVE, 0.0)
    keeper.observe(OIMode.PASSIVE, 0.3)
    assert keeper.observe(OIMode.FULL, 0.4) is None and keeper.attempts == 0
    reentry = keeper.observe(OIMode.OFF, 5.0)
    assert reentry is not None and reentry.attempt == 1
    assert reentry.commands == (bytes([Op.START]), bytes([Op.FULL]))


def test_mode_keeper_holding_passive_or_nothing_never_fights() -> None:
    assert ModeKeeper(None).observe(OIMode.FULL, 0.0) is None
    passive = ModeKeeper(OIMode.PASSIVE)
    assert passive.observe(OIMode.SAFE, 0.0) is None
    assert passive.observe(OIMode.OFF, 0.0) == ModeReentry(OIMode.PASSIVE, OIMode.OFF, 1, 0.0)


def test_mode_keeper_request_release_and_dormant() -> None:
    """set_mode sends Start only when the OI may be off; Power makes the Robot stop waking it until asked."""
    keeper = ModeKeeper(None)
    assert keeper.request(OIMode.SAFE, None) == (bytes([Op.START]), bytes([Op.SAFE]))
    assert keeper.request(OIMode.FULL, OIMode.PASSIVE) == (bytes([Op.FULL]),)
    assert keeper.hold == OIMode.FULL and keeper.handshake() == (bytes([Op.START]), bytes([Op.FULL]))
    keeper.release(dormant=True)
    assert keeper.hold is None and keeper.dormant and keeper.handshake() == (bytes([Op.START]),)
    assert keeper.request(OIMode.OFF, OIMode.PASSIVE) == (codec.enter_mode(OIMode.OFF),)
    assert keeper.hold is None and not keeper.dormant


def test_mode_keeper_closing_hands_back_only_what_it_took() -> None:
    keeper = ModeKeeper(OIMode.SAFE)
    pause = codec.pause_resume_stream(False)
    assert keeper.closing(OIMode.PASSIVE, release=True) == (pause,)
    assert keeper.closing(OIMode.SAFE, release=True) == (codec.drive_direct(0, 0), pause, codec.start())
    assert keeper.closing(OIMode.FULL, release=False) == (codec.drive_direct(0, 0), pause)


def test_mode_keeper_refusal_says_what_to_do() -> None:
    keeper = ModeKeeper(OIMode.SAFE)
    assert keeper.refusal(Op.DRIVE, None) is None and keeper.refusal(Op.DRIVE, OIMode.SAFE) is None
    assert "re-entering SAFE" in (keeper.refusal(Op.DRIVE, OIMode.PASSIVE) or "")
    keeper.release()
    assert "call set_mode(OIMode.SAFE)" in (keeper.refusal(Op.DRIVE, OIMode.PASSIVE) or "")


# ------------------------------------------------------------------ StateTracker


def test_state_tracker_folds_a_frame_into_the_state() -> None:
    """One frame sets mode, hold, sensors, report sums and link health in one new snapshot."""
    parser = StreamParser((100,))
    tracker = StateTracker(CREATE2, "mem://a", parser, hold=OIMode.SAFE)
    tracker.link.link_up(0.0)
    (frame,) = frames({"oi_mode": 2, "distance": 12, "angle": 0, "battery_charge": 1234})
    state = tracker.frame(frame, 1.0, OIMode.SAFE)
    assert state is tracker.state
    assert state.oi_mode == OIMode.SAFE and state.hold_mode == OIMode.SAFE and state.updated_at == 1.0
    assert state.sensors["battery_charge"] == 1234 and state.reported_distance_mm == 12
    assert state.link.connected and state.link.last_frame_age_s == 0.0


def test_state_tracker_keeps_the_last_mode_for_an_unknown_report() -> None:
    tracker = StateTracker(CREATE2, "mem://a", StreamParser((100,)))
    first, bad = frames({"oi_mode": 3}, {"oi_mode": 4})
    tracker.frame(first, 0.0, None)
    assert tracker.frame(bad, 0.015, None).oi_mode == OIMode.FULL
    tracker.quirks = Quirks(mode_plus_one=True)
    assert tracker.frame(bad, 0.03, None).oi_mode == OIMode.FULL
    assert tracker.frame(first, 0.045, None).oi_mode == OIMode.SAFE


def test_state_tracker_merges_frames_of_other_layouts() -> None:
    tracker = StateTracker(CREATE2, "mem://a", StreamParser((100, 7)))
    (full,) = frames({"oi_mode": 1, "bumps_wheel_drops": 0}, ids=(100,))
    (small,) = frames({"bumps_wheel_drops": 3}, ids=(7,))
    tracker.frame(full, 0.0, None)
    state = tracker.frame(small, 0.015, None)
    assert state.sensors["bumps_wheel_drops"] == 3 and state.sensors["oi_mode"] == 1
    with pytest.raises(TypeError):
        state.sensors["oi_mode"] = 2  # type: ignore[index]


def test_state_tracker_firmware_switches_quirks_unless_given() -> None:
    tracker = StateTracker(CREATE2, "mem://a", StreamParser((100,)))
    battery = BatteryLine(0, 1, 16000, -200, 250, 2000, 2, 8, "bat: ...", 0.0)
    assert tracker.battery(battery).battery_line == battery
    state = tracker.firmware(FirmwareBanner(text="", at=0.0, version="3.2.0"))
    assert state.firmware == "3.2.0" and tracker.quirks.angle_scale and state.battery_line == battery
    given = StateTracker(CREATE2, "mem://a", StreamParser((100,)), quirks=Quirks())
    given.firmware(FirmwareBanner(text="", at=0.0, version="3.2.0"))
    assert not given.quirks.angle_scale


def test_state_tracker_hold_and_link_changes_replace_only_their_field() -> None:
    tracker = StateTracker(CREATE2, "mem://a", StreamParser((100,)))
    assert tracker.hold(OIMode.FULL).hold_mode == OIMode.FULL
    tracker.link.link_up(0.0)
    assert tracker.link_changed(0.0).link.connected and tracker.state.hold_mode == OIMode.FULL
    assert tracker.current(5.0) is tracker.state  # no frame yet: nothing ages


def test_state_tracker_pose_follows_encoders_across_frames() -> None:
    tracker = StateTracker(CREATE2, "mem://a", StreamParser((100,)))
    a, b = frames(
        {"left_encoder_counts": 0, "right_encoder_counts": 0},
        {"left_encoder_counts": 100, "right_encoder_counts": 100},
    )
    tracker.frame(a, 0.0, None)
    pose = tracker.frame(b, 1.0, None).pose
    assert pose.x_mm == pytest.approx(100 * CREATE2.mm_per_count) and not math.isnan(pose.y_mm)


def test_reopen_rule_is_still_the_robot_default() -> None:
    """The Robot's reopen backoff feeds Reopening: 0.05 s doubling to a 2 s cap, full jitter."""
    from hal.robot import reopen_backoff

    reopening = Reopening(reopen_backoff(rand=random.Random(1).random))
    waits = [reopening.failed(0.0) for _ in range(8)]
    assert all(0 <= w <= 2.0 for w in waits)


# ------------------------------------------------------------------ Listeners


class RecordingLog:
    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, object]]] = []

    def exception(self, event: str, **fields: object) -> None:
        self.records.append((event, fields))


def test_listeners_call_in_order_and_remove() -> None:
    """Callbacks run in the order added, and a removed one is not called again."""
    listeners = Listeners(RecordingLog())
    seen: list[str] = []
    listeners.add(lambda e: seen.append("a"))
    remove_b = listeners.add(lambda e: seen.append("b"))
    listeners.emit(LinkUp(0, 1.0))
    remove_b()
    listeners.emit(LinkUp(0, 2.0))
    assert seen == ["a", "b", "a"] and len(listeners) == 1


def test_a_failing_listener_is_logged_and_the_others_still_run() -> None:
    log = RecordingLog()
    listeners = Listeners(log)
    seen: list[object] = []

    def broken(event: object) -> None:
        raise RuntimeError("bug")

    listeners.add(broken)
    listeners.add(seen.append)
    listeners.emit(LinkUp(1, 3.0))
    assert seen == [LinkUp(1, 3.0)]
    assert [(e, f["kind"]) for e, f in log.records] == [("hal.listener.failed", "LinkUp")]
