"""``roomba-agent probe``: is the robot there, and what does it say? The first command at robot bring-up.

Connects through the same :class:`~hal.robot.Robot` the agent uses (so a probe that works proves the agent's
path), in Passive by default so it never moves the robot, and prints decoded sensors plus link health: a
live view on a terminal, or one JSON object per sample with ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from enum import IntFlag
from typing import Any, TextIO

from base.logs import configure
from hal import codec
from hal.errors import HalError, NoResponseError
from hal.models import MODELS, get_model
from hal.opcodes import OIMode
from hal.packets import PACKETS
from hal.quirks import QUIRK_HELP
from hal.robot import Robot, RobotState

__all__ = ["main", "sample"]


def _jsonable(value: object) -> object:
    if isinstance(value, OIMode | codec.ChargingState):
        return value.name
    if isinstance(value, IntFlag):
        return [m.name for m in type(value) if m in value]
    return value


def sample(state: RobotState) -> dict[str, Any]:
    """One probe sample as a JSON-ready dict: raw sensors, decoded meanings, pose and link health."""
    link = state.link
    readings = codec.readings(state.sensors)
    return {
        "model": state.model,
        "oi_mode": state.oi_mode.name if state.oi_mode is not None else None,
        "firmware": state.firmware,
        "sensors": dict(state.sensors),
        "decoded": {k: _jsonable(r.value) for k, r in readings.items() if type(r.value) is not int},
        "pose": {
            "x_mm": round(state.pose.x_mm, 1),
            "y_mm": round(state.pose.y_mm, 1),
            "heading_deg": round(state.pose.heading_deg, 2),
            "distance_mm": round(state.pose.distance_mm, 1),
        },
        "battery_line": None
        if state.battery_line is None
        else {
            "millivolts": state.battery_line.millivolts,
            "milliamps": state.battery_line.milliamps,
            "state": state.battery_line.state,
        },
        "link": {
            "port": link.port,
            "connected": link.connected,
            "frames_ok": link.frames_ok,
            "frames_corrupt": link.frames_corrupt,
            "frames_per_s": link.frames_per_s,
            "bytes_discarded": link.bytes_discarded,
            "reconnects": link.reconnects,
            "last_frame_age_s": None if link.last_frame_age_s is None else round(link.last_frame_age_s, 3),
        },
    }


def _render(state: RobotState) -> str:
    link = state.link
    lines = [
        f"roomba-agent probe  {link.port}  model={state.model}  firmware={state.firmware or '?'}",
        f"mode={state.oi_mode.name if state.oi_mode is not None else '?'}  "
        f"link: {link.frames_per_s:.1f} frames/s  ok={link.frames_ok}  corrupt={link.frames_corrupt}  "
        f"discarded={link.bytes_discarded}B  reconnects={link.reconnects}  "
        f"age={(link.last_frame_age_s or 0) * 1000:.0f} ms",
        f"pose: x={state.pose.x_mm:.0f} mm  y={state.pose.y_mm:.0f} mm  heading={state.pose.heading_deg:.1f} deg",
        "",
    ]
    readings = codec.readings(state.sensors)
    keyed = {p.key: p for p in PACKETS.values()}
    for key, reading in readings.items():
        spec = keyed[key]
        if spec.units == "none":
            continue
        value = _jsonable(reading.value)
        shown = (",".join(value) or "none") if isinstance(value, list) else str(value)
        units = (
            ""
            if spec.units in ("bool", "enum", "bitfield", "raw", "char", "index", "count", "level")
            else spec.units
        )
        lines.append(f"  {spec.id:>2} {spec.name:<32} {shown or '-':>14} {units}")
    return "\n".join(lines)


def _number(minimum: float, *, integer: bool = False, inclusive: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number above ``minimum`` (or equal to it with ``inclusive``)."""

    def parse(text: str) -> float:
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            kind = "a whole number" if integer else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f"at least {minimum:g}" if inclusive else f"above {minimum:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text!r}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roomba-agent probe",
        description="Connect to a robot (or simulator) and print decoded sensors and link health.",
    )
    parser.add_argument(
        "--port", required=True, help="pyserial URL: /dev/ttyUSB0, socket://HOST:PORT, a pty path"
    )
    parser.add_argument(
        "--model", default="create2", choices=sorted(MODELS), help="robot model (default create2)"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per sample on stdout")
    parser.add_argument("--once", action="store_true", help="print one sample and exit")
    parser.add_argument(
        "--count",
        type=_number(0, integer=True, inclusive=True),
        default=0,
        help="stop after N samples (default 0: until Ctrl-C)",
    )
    parser.add_argument(
        "--interval", type=_number(0), default=0.5, help="seconds between samples (default 0.5)"
    )
    parser.add_argument(
        "--timeout", type=_number(0), default=5.0, help="seconds to wait for the robot (default 5)"
    )
    parser.add_argument(
        "--mode",
        default="passive",
        choices=["passive", "safe", "full"],
        help="OI mode to hold while probing (default passive: the robot never moves)",
    )
    parser.add_argument(
        "--quirk",
        action="append",
        default=[],
        metavar="NAME=on|off",
        help="switch a firmware quirk: " + "; ".join(f"{k}: {v}" for k, v in QUIRK_HELP.items()),
    )
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    out = out or sys.stdout
    configure("warning")
    model = get_model(args.model)
    try:
        quirks = model.quirks
        for spec in args.quirk:
            quirks = quirks.switched(spec)
    except ValueError as exc:
        print(f"roomba-agent probe: {exc}", file=sys.stderr)
        return 2
    robot = Robot(args.port, model, OIMode[args.mode.upper()], quirks=quirks if args.quirk else None)
    stop = threading.Event()
    try:
        robot.start(wait=args.timeout)
        try:  # a few frames, so that frames/s means something even for --once
            robot.wait_for(lambda s: s.link.frames_ok >= 8, timeout=0.5)
        except NoResponseError:
            pass
        count = 1 if args.once else args.count
        shown = 0
        live = not args.json and out.isatty()
        while not stop.is_set():
            state = robot.state
            if args.json:
                out.write(json.dumps(sample(state), separators=(",", ":")) + "\n")
            elif live:
                out.write("\x1b[H\x1b[2J" + _render(state) + "\n")
            else:
                out.write(_render(state) + "\n\n")
            out.flush()
            shown += 1
            if count and shown >= count:
                break
            time.sleep(args.interval)
    except NoResponseError as exc:
        print(f"roomba-agent probe: no answer from the robot: {exc}", file=sys.stderr)
        return 1
    except HalError as exc:
        print(f"roomba-agent probe: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `probe --json | head -1`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        robot.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
