"""The robot state model: what the HAL's sensor stream means for the shadow and for events. Pure.

Sensor values arrive every 15 ms; the shadow must change only when something an operator cares about
changed. So values are quantised here (battery percent, pose to 10 mm / 1°), noisy raw figures (voltage,
current) go to telemetry instead, and ``diff`` yields only changed leaves.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hal.opcodes import OIMode
from hal.packets import KEY_TO_ID

# Snapshot sensors are keyed by OI packet id; ids and names come from the HAL's packet table
P_BUMPS_DROPS = KEY_TO_ID["bumps_wheel_drops"]
P_CLIFFS = tuple(KEY_TO_ID[k] for k in ("cliff_left", "cliff_front_left", "cliff_front_right", "cliff_right"))
P_OVERCURRENTS = KEY_TO_ID["wheel_overcurrents"]
P_CHARGING_STATE = KEY_TO_ID["charging_state"]
P_VOLTAGE = KEY_TO_ID["voltage"]
P_CURRENT = KEY_TO_ID["current"]
P_TEMPERATURE = KEY_TO_ID["temperature"]
P_CHARGE = KEY_TO_ID["battery_charge"]
P_CAPACITY = KEY_TO_ID["battery_capacity"]
P_SOURCES = KEY_TO_ID["charging_sources"]
P_OI_MODE = KEY_TO_ID["oi_mode"]
P_MAIN_BRUSH_CURRENT = KEY_TO_ID["main_brush_motor_current"]
P_STASIS = KEY_TO_ID["stasis"]

OI_MODES = {int(mode): mode.name.lower() for mode in OIMode}
# packet 21's values (Create 2 OI spec, "Charging State")
CHARGING = {0: "not_charging", 1: "reconditioning", 2: "full", 3: "trickle", 4: "waiting", 5: "fault"}
BATTERY_LOW_PCT = 15
BATTERY_REARM_PCT = 20


@dataclass(frozen=True)
class Snapshot:
    """One decoded view of the robot, independent of the HAL's classes."""

    sensors: Mapping[int, int] = field(default_factory=dict)
    oi_mode: int | None = None
    pose: tuple[float, float, float] | None = None  # x mm, y mm, heading rad
    link_up: bool = True
    frames: int = 0
    checksum_errors: int = 0
    firmware: str | None = None


@dataclass(frozen=True)
class Event:
    kind: str
    data: Mapping[str, Any] = field(default_factory=dict)


def battery_percent(s: Mapping[int, int]) -> int | None:
    charge, capacity = s.get(P_CHARGE), s.get(P_CAPACITY)
    if charge is None or not capacity:
        return None
    return max(0, min(100, round(100 * charge / capacity)))


def docked(s: Mapping[int, int]) -> bool:
    return bool(s.get(P_SOURCES, 0) & 0b10)


def hazards(s: Mapping[int, int]) -> dict[str, bool]:
    bd = s.get(P_BUMPS_DROPS, 0)
    return {
        "bump": bool(bd & 0b11),
        "wheel_drop": bool(bd & 0b1100),
        "cliff": any(s.get(p, 0) for p in P_CLIFFS),
        "wheel_overcurrent": bool(s.get(P_OVERCURRENTS, 0) & 0b11000),
    }


def reported_state(snap: Snapshot, mission: str, agent_version: str) -> dict[str, Any]:
    """The robot-owned part of ``reported`` (command/schedule/leds echoes are added by the sync engine)."""
    s = snap.sensors
    out: dict[str, Any] = {
        "battery": {
            "percent": battery_percent(s),
            "charging": CHARGING.get(s[P_CHARGING_STATE], "unknown") if P_CHARGING_STATE in s else None,
            "temperature_c": s.get(P_TEMPERATURE),
        },
        "docked": docked(s),
        "oi_mode": OI_MODES.get(
            snap.oi_mode if snap.oi_mode is not None else s.get(P_OI_MODE, -1), "unknown"
        ),
        "mission": mission,
        "hazards": hazards(s),
        "versions": {"firmware": snap.firmware, "agent": agent_version},
        "link": {"serial": "up" if snap.link_up else "down"},
    }
    if snap.pose is not None:
        x, y, th = snap.pose
        out["pose"] = {
            "x_mm": round(x / 10.0) * 10,
            "y_mm": round(y / 10.0) * 10,
            "heading_deg": round(math.degrees(th)) % 360,
        }
    return out


def telemetry(snap: Snapshot) -> dict[str, Any]:
    """Raw figures for the QoS 0 telemetry topic (noisy, so never in the shadow)."""
    s = snap.sensors
    return {
        "voltage_mv": s.get(P_VOLTAGE),
        "current_ma": s.get(P_CURRENT),
        "charge_mah": s.get(P_CHARGE),
        "capacity_mah": s.get(P_CAPACITY),
        "temperature_c": s.get(P_TEMPERATURE),
        "main_brush_ma": s.get(P_MAIN_BRUSH_CURRENT),
        "pose": list(snap.pose) if snap.pose else None,
        "frames": snap.frames,
        "checksum_errors": snap.checksum_errors,
    }


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Only what changed from ``old`` to ``new``; removed keys become None (a shadow delete)."""
    old = old or {}
    out: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = diff(before, value)
            if sub:
                out[key] = sub
        elif key not in old or before != value or type(before) is not type(value):
            out[key] = value
    for key in old:
        if key not in new:
            out[key] = None
    return out


def merge(base: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Apply a ``diff`` (shadow merge rules: objects merge, None deletes)."""
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class MissionTracker:
    """Mission state from the commands we sent and what the sensors show, plus the events it implies."""

    state: str = "idle"
    battery_low_armed: bool = True
    _prev: Snapshot | None = None

    def on_command(self, action: str) -> list[Event]:
        events: list[Event] = []
        new = {
            "clean": "cleaning",
            "spot": "spot",
            "max": "max",
            "dock": "docking",
            "stop": "idle",
            "drive": "driving",
        }.get(action)
        if new is None or new == self.state:
            return events
        if self.state in ("cleaning", "spot", "max"):
            events.append(Event("mission_finished", {"mission": self.state, "reason": f"command {action}"}))
        if new in ("cleaning", "spot", "max", "docking"):
            events.append(Event("mission_started", {"mission": new}))
        self.state = new
        return events

    def on_drive_finished(self) -> None:
        if self.state == "driving":
            self.state = "idle"

    def on_snapshot(self, snap: Snapshot) -> list[Event]:
        prev, self._prev = self._prev, snap
        events: list[Event] = []
        s, p = snap.sensors, (prev.sensors if prev else {})
        if prev is not None and prev.link_up != snap.link_up:
            events.append(
                Event(
                    "error" if not snap.link_up else "serial_restored",
                    {"code": "serial_link_lost"} if not snap.link_up else {},
                )
            )
        if not snap.link_up:
            return events
        if docked(s) and (prev is None or not docked(p)):
            if prev is not None:
                events.append(Event("dock_reached", {}))
            if self.state in ("cleaning", "spot", "max", "docking"):
                events.append(Event("mission_finished", {"mission": self.state, "reason": "docked"}))
            self.state = "docked"
        elif not docked(s) and self.state == "docked":
            self.state = "idle"
        pct = battery_percent(s)
        if pct is not None:
            if self.battery_low_armed and pct < BATTERY_LOW_PCT:
                self.battery_low_armed = False
                events.append(Event("battery_low", {"percent": pct}))
            elif pct >= BATTERY_REARM_PCT:
                self.battery_low_armed = True
        h, hp = hazards(s), (hazards(p) if prev else {})
        if h["wheel_overcurrent"] and not hp.get("wheel_overcurrent"):
            events.append(Event("stuck", {"cause": "wheel_overcurrent"}))
        if (h["cliff"] or h["wheel_drop"]) and not (hp.get("cliff") or hp.get("wheel_drop")):
            events.append(Event("error", {"code": "cliff" if h["cliff"] else "wheel_drop"}))
        if s.get(P_CHARGING_STATE) == 5 and p.get(P_CHARGING_STATE) != 5:
            events.append(Event("error", {"code": "charging_fault"}))
        return events
