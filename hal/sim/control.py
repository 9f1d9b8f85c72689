"""The control socket's robot operations: what a test or an operator may do to the simulated robot.

Faults and events no serial command can cause (a cliff, a bump, the dock, a flat battery, line noise, a
button press) and a JSON-ready :func:`snapshot` of everything the robot knows. Requests are JSON objects with
an ``op``; a bad one raises :class:`ControlError` whose message says what to send instead. Operations on the
link itself (``unplug``) belong to the server.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hal.codec import ChargingState
from hal.opcodes import OIMode
from hal.sim.world import BUTTON_BITS

if TYPE_CHECKING:
    from hal.sim.robot import SimRobot

__all__ = ["MAX_BUMP_S", "ControlError", "apply_control", "snapshot"]

MAX_BUMP_S = 3600.0


class ControlError(ValueError):
    """A control-socket request that cannot be carried out; the message says what to send instead."""


def apply_control(robot: SimRobot, request: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Apply one control-socket request that concerns the robot itself (not the link).

    Raises :class:`ControlError` with an actionable message for a bad request.
    """
    robot.advance(now)
    op = request.get("op")
    w = robot.world
    if op == "state":
        return snapshot(robot)
    if op in ("cliff", "wheel_drop", "stuck"):
        on = _flag(request)
        if op == "cliff":
            w.forced_cliff = on
        elif op == "wheel_drop":
            w.forced_wheel_drop = on
        else:
            w.stuck = on
        w.place(w.x, w.y, w.theta)
        if robot.mode is OIMode.SAFE:
            robot.apply_safety(now)
        return {op: on}
    if op == "bump":
        side = str(request.get("side", "both"))
        seconds = _number(request, "seconds", 0, MAX_BUMP_S, 0.2)
        try:
            w.bump(side, seconds * robot.speed)
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return {"bump": side}
    if op == "dock":
        w.end_mission()
        w.dock_now()
        if robot.mode is OIMode.SAFE:
            robot.apply_safety(now)
        return {"docked": w.docked}
    if op == "undock":
        w.undock_now()
        return {"docked": w.docked}
    if op == "battery":
        if "percent" in request:
            w.set_battery_percent(_number(request, "percent", 0, 100))
        if "fault" in request:
            if not isinstance(request["fault"], bool):
                raise ControlError(f'"fault" must be true or false, got {request["fault"]!r}')
            w.battery_fault = request["fault"]
        return {"percent": round(w.battery_percent, 2), "fault": w.battery_fault}
    if op == "noise":
        try:
            robot.noise.configure(
                _number(request, "corrupt", 0, 1, robot.noise.corrupt),
                _number(request, "drop", 0, 1, robot.noise.drop),
            )
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return {"corrupt": robot.noise.corrupt, "drop": robot.noise.drop}
    if op == "button":
        name = str(request.get("name", ""))
        if name not in BUTTON_BITS:
            raise ControlError(f"button name must be one of {', '.join(BUTTON_BITS)}")
        w.press_button(name)
        robot.button_behaviour(BUTTON_BITS[name])
        return {"button": name}
    if op == "wake":
        return {"woke": robot.wake(now)}
    if op == "sleep":
        if not robot.asleep:
            robot.fall_asleep(now, "control")
        return {"asleep": True}
    if op == "pose":
        x = _number(request, "x", 0, w.room.width, w.x)
        y = _number(request, "y", 0, w.room.height, w.y)
        theta = math.radians(_number(request, "theta_deg", -360, 360, math.degrees(w.theta)))
        w.place(x, y, theta)
        return {"x": w.x, "y": w.y}
    raise ControlError(
        f"unknown op {op!r}; ops: state, unplug, cliff, wheel_drop, bump, dock, undock, stuck, battery, "
        "noise, button, wake, sleep, pose"
    )


def snapshot(robot: SimRobot) -> dict[str, Any]:
    """A JSON-ready snapshot for the control socket and for tests."""
    w = robot.world
    return {
        "oi_mode": robot.mode.name.lower(),
        "firmware": robot.firmware,
        "quirks": sorted(robot.quirks),
        "asleep": robot.asleep,
        "mission": w.mission.value,
        "pose": {"x": round(w.x, 1), "y": round(w.y, 1), "theta_deg": round(math.degrees(w.theta), 2)},
        "world_time": round(w.time, 3),
        "travelled_mm": round(w.travelled_mm, 1),
        "wheels_mm_s": [round(w.cmd_left, 1), round(w.cmd_right, 1)],
        "encoders": [math.floor(w.enc_left), math.floor(w.enc_right)],
        "docked": w.docked,
        "charging_state": ChargingState(w.charging_state).name.lower(),
        "battery": {
            "percent": round(w.battery_percent, 2),
            "mah": int(w.battery_mah),
            "mv": w.voltage_mv,
            "ma": int(w.current_ma),
            "temp_c": round(w.battery_temp_c, 1),
        },
        "bumps_wheel_drops": w.bumps_wheel_drops,
        "cliff": list(w.cliff),
        "stuck": w.stuck,
        "stream": {"ids": list(robot.stream_ids), "on": robot.stream_on, "frames": robot.frames_sent},
        "leds": list(robot.leds),
        "digits": robot.digits.decode("ascii", "replace"),
        "songs": sorted(robot.songs),
        "baud": robot.baud,
        "noise": {
            "corrupt": robot.noise.corrupt,
            "drop": robot.noise.drop,
            "corrupted": robot.noise.corrupted,
            "dropped": robot.noise.dropped,
        },
        "tx": {
            "sent": robot.output.sent,
            "overflowed": robot.output.overflowed,
            "queued": len(robot.output),
        },
        "rx_dropped": robot.dropped_rx,
    }


def _flag(request: Mapping[str, Any]) -> bool:
    on = request.get("on", True)
    if not isinstance(on, bool):
        raise ControlError(f'"on" must be true or false, got {on!r}')
    return on


def _number(
    request: Mapping[str, Any], key: str, lo: float, hi: float, default: float | None = None
) -> float:
    value = request.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f'"{key}" must be a number between {lo} and {hi}, got {value!r}')
    if not lo <= value <= hi:
        raise ControlError(f'"{key}" must be between {lo} and {hi}, got {value}')
    return float(value)
