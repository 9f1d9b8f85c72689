"""Pure parts of the fleet simulator: the fault spec and plan, the fleet layout, and one simulated robot
wired to the real HAL client in memory (stepped by hand, no threads, no network)."""

from __future__ import annotations

import math
import time

import pytest

from fleetsim.faults import FaultSpec, FaultSpecError, RobotFaults, broker_restart_times, parse_faults
from fleetsim.link import SimLink
from fleetsim.runner import auto_stream_period, robot_names, split
from hal.opcodes import OIMode
from hal.robot import LinkDown, LinkUp, RobotEvent, StateUpdated

# --- the fault spec ------------------------------------------------------------------------------------


def test_fleetsim_fault_spec_parses_the_issue_example() -> None:
    spec = parse_faults("link_drop=0.01,broker_restart=60,serial_noise=0.001,stuck=0.05,flat=0.02")
    assert spec == FaultSpec(link_drop=0.01, broker_restart=60, serial_noise=0.001, stuck=0.05, flat=0.02)
    assert spec.any


@pytest.mark.parametrize("text", [None, "", "  ", ",,"])
def test_fleetsim_fault_spec_empty_means_no_weather(text: str | None) -> None:
    assert parse_faults(text) == FaultSpec()
    assert not parse_faults(text).any


def test_fleetsim_fault_spec_reports_every_bad_item_at_once() -> None:
    with pytest.raises(FaultSpecError) as err:
        parse_faults("link_drop=2,gremlins=1,stuck,flat=lots,stuck=0.1,stuck=0.2,serial_noise=nan")
    problems = err.value.problems
    assert len(problems) == 6, problems
    text = "\n".join(problems)
    assert "link_drop=2: must be between 0 and 1 per second" in text
    assert "'gremlins': unknown fault; known: link_drop" in text
    assert "'stuck': expected key=value" in text
    assert "flat='lots': not a number" in text
    assert "'stuck': given twice" in text
    assert "serial_noise=nan" in text


def test_fleetsim_fault_plan_is_a_function_of_seed_and_name() -> None:
    spec = parse_faults("link_drop=0.2,serial_drop=0.1,stuck=0.5,flat=0.5,window=10")

    def timeline(seed: int, thing: str) -> list[tuple[float, str]]:
        plan = RobotFaults(spec, seed, thing)
        return [(round(a.at, 6), a.kind) for t in range(0, 120, 3) for a in plan.due(float(t))]

    assert timeline(1, "sim-0001") == timeline(1, "sim-0001")
    assert timeline(1, "sim-0001") != timeline(2, "sim-0001")
    assert timeline(1, "sim-0001") != timeline(1, "sim-0002")
    events = timeline(1, "sim-0001")
    assert [t for t, _ in events] == sorted(t for t, _ in events)
    kinds = [k for _, k in events]
    # every drop is followed by its restore
    assert kinds.count("link_drop") == kinds.count("link_restore") > 0
    assert kinds.count("serial_drop") == kinds.count("serial_restore") > 0


def test_fleetsim_fault_plan_fractions_pick_about_that_share_of_the_fleet_once() -> None:
    spec = parse_faults("stuck=0.25,flat=0.1,window=20,stuck_s=5")
    stuck = flat = 0
    for i in range(400):
        actions = RobotFaults(spec, 7, f"r{i}").due(1000.0)
        kinds = [a.kind for a in actions]
        assert kinds.count("stuck") <= 1 and kinds.count("flat") <= 1
        stuck += kinds.count("stuck")
        flat += kinds.count("flat")
        for a in actions:
            if a.kind in ("stuck", "flat"):
                assert 0 <= a.at <= 20
            if a.kind == "flat":
                assert a.value == 4.0
    assert 70 <= stuck <= 130
    assert 20 <= flat <= 60


def test_fleetsim_fault_plan_stops_new_drops_after_until() -> None:
    spec = parse_faults("link_drop=0.5,until=10,link_down_s=1,broker_restart=5")
    actions = RobotFaults(spec, 3, "sim-1").due(500.0)
    drops = [a.at for a in actions if a.kind == "link_drop"]
    assert drops and max(drops) <= 10
    assert broker_restart_times(spec, 100) == [5.0, 10.0]
    assert broker_restart_times(FaultSpec(broker_restart=30), 95) == [30.0, 60.0, 90.0]
    assert broker_restart_times(FaultSpec(), 95) == []


# --- fleet layout helpers ------------------------------------------------------------------------------


def test_fleetsim_names_and_shards() -> None:
    assert robot_names("sim-", 3) == ["sim-0001", "sim-0002", "sim-0003"]
    assert robot_names("r", 12345)[-1] == "r12345"
    names = robot_names("sim-", 1000)
    shards = split(names, 250)
    assert len(shards) == 4 and sorted(n for s in shards for n in s) == names
    assert split(names[:20], 250) == [tuple(names[:20])]
    assert auto_stream_period(1) == 0.015
    assert auto_stream_period(1000) > auto_stream_period(20) > 0.015
    assert auto_stream_period(100_000) <= 0.5


# --- one simulated robot on the real HAL client, in memory --------------------------------------------------


def test_fleetsim_link_streams_frames_and_survives_an_unplug() -> None:
    t0 = time.monotonic()
    clock_value = [t0]
    # the robot and the simulator share the test's clock
    link = SimLink("sim-unit", seed=5, stream_period_s=0.05, now=t0, clock=lambda: clock_value[0])
    seen: list[RobotEvent] = []
    link.robot.add_listener(seen.append)
    link.robot.start()

    def run(seconds: float, dt: float = 0.01) -> None:
        end = clock_value[0] + seconds
        while clock_value[0] < end:
            clock_value[0] += dt
            link.step(clock_value[0])

    run(1.0)
    state = link.robot.state
    assert state.link.connected and state.link.frames_ok >= 10
    assert state.oi_mode == OIMode.PASSIVE
    assert link.opcodes["Start"] == 1 and link.opcodes["Stream"] == 1
    link.robot.clean()  # written just before the cable is pulled: it still reaches the robot
    link.unplug(clock_value[0])
    assert link.opcodes["Clean"] == 0
    run(0.5)
    assert link.opcodes["Clean"] == 1
    assert any(isinstance(e, LinkDown) for e in seen)
    assert not link.robot.state.link.connected
    frames = link.robot.state.link.frames_ok
    link.plug()
    run(3.0)
    assert any(isinstance(e, LinkUp) and e.reconnects == 1 for e in seen)
    assert link.robot.state.link.frames_ok > frames
    assert link.opcodes["Start"] >= 2  # the handshake again after the cable came back
    link.robot.spot()
    run(0.5)
    assert link.opcodes["Spot"] == 1
    assert link.sim.state()["mission"] == "spot"
    assert isinstance(seen[-1], StateUpdated)
    assert not math.isnan(link.robot.state.pose.x_mm)
    link.robot.close()


def test_fleetsim_link_robot_is_the_hal_robot_without_a_thread() -> None:
    """A shard steps a thousand links: each Robot is the HAL's own class (no subclass), starting no thread."""
    import threading

    from hal.robot import Robot

    link = SimLink("sim-plain", seed=1, stream_period_s=0.05, now=0.0, clock=lambda: 0.0)
    threads = threading.active_count()
    link.robot.start()
    assert type(link.robot) is Robot and threading.active_count() == threads
    link.step(0.0)
    assert link.robot.state.link.connected
    link.robot.close()
