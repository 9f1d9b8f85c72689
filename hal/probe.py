"""``roomba-agent probe``: is the robot there, and what does it say? The first command at robot bring-up.

Connects through the same :class:`~hal.robot.Robot` the agent uses (so a probe that works proves the agent's
path), in Passive by default so it never moves the robot, and prints decoded sensors plus link health: a
live view on a terminal (a pinned header with the port, the time and the data's age; as many sensors as the
terminal has rows, then "… N more"; redrawn at most a few times a second), plain text through a pipe or with
``--once``, one JSON object per sample with ``--json``.

A local port is opened exclusively (:class:`~hal.transport.SerialTransport`): beside a running agent the
probe refuses (exit 3) and names the process holding the port, since two readers of one port each lose bytes
to the other and the agent then counts corrupt frames; ``--force`` warns and reads beside it anyway.
``socket://`` and ``rfc2217://`` ports cannot be locked.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from enum import IntFlag
from typing import TYPE_CHECKING, Any, TextIO

from base.cli import Parser, add_json
from base.logs import configure
from hal import codec
from hal.errors import HalError, NoResponseError
from hal.models import MODELS, get_model
from hal.opcodes import OIMode
from hal.packets import PACKETS
from hal.quirks import QUIRK_HELP
from hal.robot import Robot, RobotState
from hal.transport import PortInUseError, SerialTransport, lockable

if TYPE_CHECKING:
    from rich.console import RenderableType

__all__ = ["build_parser", "main", "sample"]

EXIT_NO_ROBOT = 1
EXIT_PORT_IN_USE = 3
MIN_REDRAW_S = 0.2  # the live view redraws at most 5 times a second, whatever --interval says


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


def _sensor_lines(state: RobotState) -> list[tuple[str, str, str, str]]:
    """(id, name, value, units) for each decoded sensor that has a meaning to show."""
    rows = []
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
        rows.append((str(spec.id), spec.name, shown or "-", units))
    return rows


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
    for pid, name, shown, units in _sensor_lines(state):
        lines.append(f"  {pid:>2} {name:<32} {shown:>14} {units}")
    return "\n".join(lines)


def _view(state: RobotState, height: int, port: str) -> RenderableType:
    """The live view for a terminal ``height`` rows high: a pinned header, then the sensors that fit."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    link = state.link
    age = link.last_frame_age_s
    age_text = "no data yet" if age is None else f"data {age * 1000:.0f} ms old"
    title = Text(
        f" roomba-agent probe  {port}  {state.model}  firmware {state.firmware or '?'}  "
        f"{time.strftime('%H:%M:%S')}  {age_text} ",
        style="bold reverse",
        no_wrap=True,
        overflow="ellipsis",
    )
    if link.connected:
        health = Text(
            f"mode {state.oi_mode.name if state.oi_mode is not None else '?'}  "
            f"link {link.frames_per_s:.1f} frames/s  ok {link.frames_ok}  ",
            no_wrap=True,
            overflow="ellipsis",
        )
        health.append(f"corrupt {link.frames_corrupt}", style="bold red" if link.frames_corrupt else "")
        health.append(f"  discarded {link.bytes_discarded} B  reconnects {link.reconnects}")
    else:
        health = Text(f"link DOWN: reopening {port} (reconnects {link.reconnects})", style="bold red")
    pose = Text(
        f"pose x {state.pose.x_mm:.0f} mm  y {state.pose.y_mm:.0f} mm  heading {state.pose.heading_deg:.1f} deg",
        no_wrap=True,
        overflow="ellipsis",
    )
    sensors = _sensor_lines(state)
    room = max(0, height - 1 - 4)  # the last row stays free; title, health, pose, the table's header
    shown = sensors if len(sensors) <= room else sensors[: max(0, room - 1)]
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", expand=False)
    table.add_column("id", justify="right", no_wrap=True)
    table.add_column("sensor", no_wrap=True, overflow="ellipsis")
    table.add_column("value", justify="right", no_wrap=True, overflow="ellipsis")
    table.add_column("units", no_wrap=True)
    for row in shown:
        table.add_row(*row)
    parts: list[RenderableType] = [title, health, pose, table]
    if len(shown) < len(sensors):
        parts.append(
            Text(f"… {len(sensors) - len(shown)} more sensors (a taller terminal shows them)", style="dim")
        )
    return Group(*parts)


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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="roomba-agent probe",
        description="Connect to a robot (or simulator) and print decoded sensors and link health.",
        epilog="A local port is locked while the probe reads it; beside a running agent the probe refuses\n"
        "(exit 3) unless --force. socket:// and rfc2217:// ports cannot be locked.",
        exit_codes={
            EXIT_NO_ROBOT: "no answer from the robot, or the link failed",
            EXIT_PORT_IN_USE: "the port is in use by another process (a running agent?); --force reads beside it",
        },
    )
    parser.add_argument(
        "--port", required=True, help="pyserial URL: /dev/ttyUSB0, socket://HOST:PORT, a pty path"
    )
    parser.add_argument(
        "--model", default="create2", choices=sorted(MODELS), help="robot model (default create2)"
    )
    add_json(parser, "one JSON object per sample")
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
    parser.add_argument(
        "--force",
        action="store_true",
        help="read the port even when another process (a running agent) holds it; both readers then lose "
        "bytes to each other and see corrupt frames",
    )
    return parser


def _check_port(port: str, baud: int, force: bool) -> int | None:
    """Refuse (exit 3) when another process holds a local port, or with ``force`` warn; None: go on."""
    if not lockable(port):
        return None
    check = SerialTransport(port, baud)
    try:
        check.open()
    except PortInUseError as exc:
        who = exc.holder or "another process"
        if not force:
            print(
                f"roomba-agent probe: {port} is in use by {who}; two readers on one port each lose bytes "
                "(the agent then counts corrupt frames): stop it first, or see its link health with "
                "`roomba-agent status`, or pass --force to read beside it anyway",
                file=sys.stderr,
            )
            return EXIT_PORT_IN_USE
        print(
            f"roomba-agent probe: warning: {port} is in use by {who}; reading beside it (--force): both "
            "readers lose bytes, expect corrupt frames here and in the other process",
            file=sys.stderr,
        )
    except HalError:
        pass  # a port that does not open: the Robot says why
    finally:
        check.close()
    return None


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _ignore_sigpipe() -> None:
    """A write to a closed socket (socket:// robot) must raise, not kill us silently; a closed stdout still
    ends quietly (BrokenPipeError below)."""
    if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
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
    _ignore_sigpipe()
    refused = _check_port(args.port, model.baud, args.force)
    if refused is not None:
        return refused
    robot = Robot(
        args.port,
        model,
        OIMode[args.mode.upper()],
        quirks=quirks if args.quirk else None,
        transport=SerialTransport(args.port, model.baud, exclusive=not args.force),
    )
    try:
        robot.start(wait=args.timeout)
        try:  # a few frames, so that frames/s means something even for --once
            robot.wait_for(lambda s: s.link.frames_ok >= 8, timeout=0.5)
        except NoResponseError:
            pass
        count = 1 if args.once else args.count
        if not args.json and not args.once and out.isatty() and os.environ.get("TERM") != "dumb":
            _live(robot, args.port, out, count, args.interval)
            return 0
        shown = 0
        while True:
            state = robot.state
            if args.json:
                out.write(json.dumps(sample(state), separators=(",", ":")) + "\n")
            else:
                out.write(_render(state) + "\n\n")
            out.flush()
            shown += 1
            if count and shown >= count:
                break
            time.sleep(args.interval)
    except NoResponseError as exc:
        print(f"roomba-agent probe: no answer from the robot: {exc}", file=sys.stderr)
        return EXIT_NO_ROBOT
    except HalError as exc:
        print(f"roomba-agent probe: {exc}", file=sys.stderr)
        return EXIT_NO_ROBOT
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `probe --json | head -1`: the reader has what it wanted
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return 0
    finally:
        robot.close()
    return 0


def _live(robot: Robot, port: str, out: TextIO, count: int, interval: float) -> None:
    """The terminal view: redrawn in place (never taller than the terminal), every ``interval`` seconds but
    at most every :data:`MIN_REDRAW_S`."""
    from rich.console import Console
    from rich.live import Live

    console = Console(file=out)
    if threading.current_thread() is threading.main_thread():  # `kill` leaves like Ctrl-C: cursor restored
        signal.signal(signal.SIGTERM, _interrupt)
    shown = 0
    with Live(console=console, auto_refresh=False, redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            live.update(_view(robot.state, console.size.height, port), refresh=True)
            shown += 1
            if count and shown >= count:
                return
            time.sleep(max(interval, MIN_REDRAW_S))


if __name__ == "__main__":
    sys.exit(main())
