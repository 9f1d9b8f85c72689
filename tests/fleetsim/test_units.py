"""Pure parts of the fleet simulator: the fault spec and plan, the fleet summary, fleet-op helpers, and one
simulated robot wired to the real HAL client in memory (stepped by hand, no threads, no network)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from fleet import fleetops
from fleet.fleetview import render, summarize
from fleet.simulate import auto_stream_period, robot_names, split
from fleetsim.faults import FaultSpec, FaultSpecError, RobotFaults, broker_restart_times, parse_faults
from fleetsim.link import SimLink
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


# --- fleet operations helpers -----------------------------------------------------------------------------


def test_fleetsim_fleetops_selects_and_personalises() -> None:
    known = ["b-2", "a-1", "b-1", "a-1"]
    assert fleetops.select(known, all_robots=True, prefix=None) == ["a-1", "b-1", "b-2"]
    assert fleetops.select(known, all_robots=False, prefix="b-") == ["b-1", "b-2"]
    assert fleetops.select(known, all_robots=False, prefix="zz") == []
    doc = {
        "state": {"desired": {"command": {"id": "m-{thing}", "action": "clean", "n": 3}, "l": ["{thing}"]}}
    }
    assert fleetops.personalise(doc, "r7") == {
        "state": {"desired": {"command": {"id": "m-r7", "action": "clean", "n": 3}, "l": ["r7"]}}
    }


def test_fleetsim_fleetops_render_keys_by_thing_and_explains_failures() -> None:
    results = {
        "r2": fleetops.Outcome(True, {"state": {"reported": {"x": 1}}, "version": 3, "clientToken": "t"}),
        "r1": fleetops.Outcome(False, {"code": 404, "message": "No shadow exists", "clientToken": "u"}),
        "r3": None,
    }
    out = fleetops.render(results)
    assert list(out) == ["r1", "r2", "r3"]
    assert out["r2"] == {"state": {"reported": {"x": 1}}, "version": 3}
    assert out["r1"] == {"error": {"code": 404, "message": "No shadow exists"}}
    assert out["r3"]["error"]["message"].startswith("no answer")


def test_fleetsim_fleetops_refuses_bad_documents_and_empty_selections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert fleetops.main(["update", "--all", "--dir", d, "{not json"]) == 2
    assert fleetops.main(["update", "--all", "--dir", d, "[1]"]) == 2
    assert fleetops.main(["get", "--prefix", "nobody-", "--dir", d]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "must be a JSON object" in err and "no robot name starts with" in err


# --- the fleet summary ------------------------------------------------------------------------------------


def _row(thing: str, connection: str = "online", **reported: object) -> dict[str, object]:
    return {"thing": thing, "connection": connection, "reported": reported or None, "desired": None}


def test_fleetsim_summary_counts_connection_missions_battery_commands_errors() -> None:
    rows = [
        _row("r1", mission="cleaning", battery={"percent": 95}),
        _row("r2", mission="docked", battery={"percent": 12}, hazards={"cliff": True, "bump": False}),
        _row("r3", "offline", mission="cleaning", battery={"percent": 55}, link={"serial": "down"}),
        _row("r4", "never"),
        {
            "thing": "r5",
            "connection": "online",
            "reported": {
                "mission": "cleaning",
                "command": {"id": "c1", "status": "done"},
                "battery": {"percent": 5},
            },
            "desired": {"command": {"id": "c1", "action": "clean"}},
        },
        {
            "thing": "r6",
            "connection": "online",
            "reported": {"command": {"id": "c0", "status": "done"}},
            "desired": {"command": {"id": "c1", "action": "clean"}},
        },
        {
            "thing": "r7",
            "connection": "online",
            "reported": {"command": {"id": "c1", "status": "failed"}, "errors": {"schedule": "bad hour"}},
            "desired": {"command": {"id": "c1"}},
        },
    ]
    s = summarize(rows)
    assert s["robots"] == 7 and s["connected"] == 5
    assert s["connection"] == {"never": 1, "offline": 1, "online": 5}
    assert s["missions"] == {"cleaning": 3, "docked": 1, "unknown": 3}
    assert s["battery"] == {"0-9": 1, "10-19": 1, "50-79": 1, "80-100": 1, "unknown": 3}
    assert s["battery_low"] == ["r2", "r5"]
    assert s["commands"] == {"pending": 1, "applied": 1, "failed": 1}
    assert s["errors"] == {"cliff": 1, "command_failed": 1, "desired.schedule": 1, "serial_down": 1}
    assert sorted(s["robots_with_errors"]) == ["r2", "r3", "r7"]
    text = render(s)
    assert "connected 5" in text and "cleaning 3" in text and "low battery (2): r2, r5" in text


def test_fleetsim_summary_never_raises_on_junk() -> None:
    junk = [{}, {"thing": 3, "reported": "x", "desired": [1]}, {"reported": {"battery": {"percent": True}}}]
    s = summarize(junk)
    assert s["robots"] == 3 and s["battery"] == {"unknown": 3} and s["connection"] == {"unknown": 3}
    render(s)
    many = summarize([_row(f"r{i}", battery={"percent": 1}) for i in range(20)])
    assert "(+12 more)" in render(many)


# --- one simulated robot on the real HAL client, in memory --------------------------------------------------


def test_fleetsim_link_streams_frames_and_survives_an_unplug() -> None:
    t0 = time.monotonic()
    link = SimLink("sim-unit", seed=5, stream_period_s=0.05, now=t0)
    link.robot._clock = lambda: clock_value[0]  # the robot and the simulator share the test's clock
    clock_value = [t0]
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


# --- simulate refuses bad input before starting anything ---------------------------------------------------


def test_fleetsim_simulate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fleet import simulate

    d = str(tmp_path)
    assert simulate.main(["--robots", "0", "--dir", d]) == 2
    assert simulate.main(["--robots", "3", "--dir", d, "--faults", "link_drop=5,wat=1"]) == 2
    assert simulate.main(["--robots", "3", "--dir", d]) == 2  # no local cloud running there
    bad_config = tmp_path / "agent.toml"
    bad_config.write_text('thing_name = "x"\n')
    assert simulate.main(["--robots", "3", "--dir", d, "--config", str(bad_config)]) == 2
    err = capsys.readouterr().err
    assert "--robots must be at least 1" in err
    assert "--faults: link_drop=5: must be between 0 and 1 per second" in err
    assert "--faults: 'wat': unknown fault" in err
    assert "is not running; start it with `roomba-fleet up --dir" in err
    assert "has no [connection] endpoint" in err
    assert not (tmp_path / "identities").exists()  # nothing provisioned for a refused run
