"""The robot state model: quantised reported state, diff/merge and the events it implies."""

from __future__ import annotations

import math

from agent.model import (
    P_BUMPS_DROPS,
    P_CAPACITY,
    P_CHARGE,
    P_CHARGING_STATE,
    P_CLIFFS,
    P_OVERCURRENTS,
    P_SOURCES,
    MissionTracker,
    Snapshot,
    diff,
    merge,
    reported_state,
)

BASE = {P_CHARGE: 2500, P_CAPACITY: 3000, P_CHARGING_STATE: 0, P_SOURCES: 0, P_BUMPS_DROPS: 0}


def snap(**changes: int) -> Snapshot:
    return Snapshot(
        sensors={**BASE, **{int(k[1:]): v for k, v in changes.items()}},
        oi_mode=1,
        pose=(1234.0, -5.0, math.pi / 2),
        firmware="3.7.1",
    )


def test_reported_state_is_quantised() -> None:
    """Sensor noise below the quantum (pose, battery) changes nothing in reported."""
    r = reported_state(snap(), "idle", "0.1.0")
    assert r["battery"] == {"percent": 83, "charging": "not_charging", "temperature_c": None}
    assert r["pose"] == {"x_mm": 1230, "y_mm": 0, "heading_deg": 90}
    assert r["oi_mode"] == "passive" and r["docked"] is False
    assert r["versions"] == {"firmware": "3.7.1", "agent": "0.1.0"}
    wiggle = Snapshot(sensors=BASE, oi_mode=1, pose=(1232.0, -4.0, math.pi / 2 + 0.001), firmware="3.7.1")
    assert diff(r, reported_state(wiggle, "idle", "0.1.0")) == {}


def test_diff_and_merge_round_trip() -> None:
    """A diff merged onto the old document gives the new one; a type change counts as a change."""
    old = {"a": 1, "b": {"c": 2, "d": 3}, "gone": 1}
    new = {"a": 1, "b": {"c": 5, "d": 3}, "e": [1, 2]}
    patch = diff(old, new)
    assert patch == {"b": {"c": 5}, "e": [1, 2], "gone": None}
    assert merge(old, patch) == new
    assert diff({"x": 1}, {"x": True}) == {"x": True}


def test_mission_events_from_commands_and_dock() -> None:
    """Mission events follow commands and the dock, once each, not on every snapshot."""
    m = MissionTracker()
    m.on_snapshot(snap())
    assert [e.kind for e in m.on_command("clean")] == ["mission_started"]
    assert m.state == "cleaning"
    assert m.on_command("clean") == []
    kinds = [e.kind for e in m.on_snapshot(snap(p34=2))]
    assert kinds == ["dock_reached", "mission_finished"] and m.state == "docked"
    assert m.on_snapshot(snap(p34=2)) == []
    m.on_snapshot(snap())
    assert m.state == "idle"


def test_battery_low_fires_once_with_hysteresis() -> None:
    m = MissionTracker()
    assert [e.kind for e in m.on_snapshot(snap(p25=300))] == ["battery_low"]
    assert m.on_snapshot(snap(p25=290)) == []
    m.on_snapshot(snap(p25=900))
    assert [e.kind for e in m.on_snapshot(snap(p25=100))] == ["battery_low"]


def test_hazard_and_link_events() -> None:
    """Hazards and serial link loss/restore each produce one event on the edge."""
    m = MissionTracker()
    m.on_snapshot(snap())
    assert [(e.kind, dict(e.data)) for e in m.on_snapshot(snap(p14=0b11000))] == [
        ("stuck", {"cause": "wheel_overcurrent"})
    ]
    cliff = {f"p{P_CLIFFS[0]}": 1}
    assert [dict(e.data) for e in m.on_snapshot(snap(**cliff))] == [{"code": "cliff"}]
    down = Snapshot(sensors=BASE, link_up=False)
    assert [(e.kind, dict(e.data)) for e in m.on_snapshot(down)] == [("error", {"code": "serial_link_lost"})]
    assert [e.kind for e in m.on_snapshot(snap())] == ["serial_restored"]
    assert P_OVERCURRENTS == 14
