"""``roomba-sim``: run a simulated Create 2 on a pty or TCP port, or send it a control request.

Also ``python -m hal.sim``.

roomba-sim robot --link /tmp/roomba [--control /tmp/roomba.ctl] [--seed 1] [--speed 10] [--record cmds.jsonl]
roomba-sim robot --tcp 127.0.0.1:0 --control /tmp/roomba.ctl
roomba-sim ctl /tmp/roomba.ctl '{"op": "state"}'
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from base.cli import Parser, add_completion, bash_completion, entry
from base.logs import configure, get_logger
from hal.sim.robot import MAX_SPEED, QUIRKS
from hal.sim.server import SimServer, send_control


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT such as 127.0.0.1:7000 (0 = any free port), got {text!r}"
        )
    return host.strip("[]"), int(port)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _speed(text: str) -> float:
    value = _positive(text)
    if value > MAX_SPEED:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SPEED:g}, got {text!r}")
    return value


def _firmware(text: str) -> str:
    parts = text.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"expected a version such as 3.7.1, got {text!r}")
    return text.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="roomba-sim",
        description="Simulated iRobot Create 2 (Open Interface) on a pty or a TCP port.",
        epilog="run `roomba-sim COMMAND --help` for a command's options; `roomba-sim completion bash` "
        "prints shell completion",
        exit_codes={1: "the command failed (each command's --help lists its own codes)"},
    )
    parser.add_argument("--log-level", default="info", help="debug shows every command received")
    common = Parser(add_help=False)  # not a command: the options robot and ctl share
    common.add_argument("--log-level", default=argparse.SUPPRESS, help="debug shows every command received")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    robot = sub.add_parser(
        "robot",
        help="serve one simulated robot",
        description="Serve one simulated robot until SIGTERM or Ctrl-C. Prints one ready line (where to "
        "connect) on stdout once it listens.",
        epilog="examples:\n"
        "  roomba-sim robot --link /tmp/roomba --control /tmp/roomba.ctl --seed 1\n"
        "  roomba-sim robot --tcp 127.0.0.1:0 --control /tmp/roomba.ctl",
        exit_codes={
            0: "stopped by SIGTERM or Ctrl-C",
            2: "usage error, or cannot start (path or port taken)",
        },
        parents=[common],
    )
    where = robot.add_mutually_exclusive_group(required=True)
    where.add_argument("--link", help="path of a symlink to the pty slave (open it like /dev/ttyUSB0)")
    where.add_argument(
        "--tcp", type=_host_port, help="HOST:PORT to serve socket:// clients on (port 0 = any)"
    )
    robot.add_argument("--control", help="Unix socket for fault injection and state (JSON lines)")
    robot.add_argument("--seed", type=int, default=0, help="seed for every random choice (reproducible runs)")
    robot.add_argument(
        "--speed",
        type=_speed,
        default=1.0,
        help=f"world time runs this many times faster (max {MAX_SPEED:g})",
    )
    robot.add_argument("--record", help="append every command received as a JSON line to this file")
    robot.add_argument("--docked", action="store_true", help="start on the dock (charging)")
    robot.add_argument(
        "--firmware",
        type=_firmware,
        help="version in the reset banner, e.g. 3.4.0 (<= 3.4.0 has the angle bug)",
    )
    robot.add_argument(
        "--quirk",
        action="append",
        default=[],
        choices=sorted(QUIRKS),
        help="emulate a firmware quirk (repeatable): " + "; ".join(f"{k}: {v}" for k, v in QUIRKS.items()),
    )
    ctl = sub.add_parser(
        "ctl",
        help="send one control request to a running simulator",
        description="Send one control request to a running simulator; its JSON answer goes to stdout.",
        epilog='example: roomba-sim ctl /tmp/roomba.ctl \'{"op": "state"}\'',
        exit_codes={
            0: "the simulator answered ok",
            1: "no answer, or the answer is not ok",
            2: "usage error, or the request is not a JSON object",
        },
        parents=[common],
    )
    ctl.add_argument("socket", help="the --control socket path")
    ctl.add_argument("request", help='a JSON object, e.g. \'{"op": "state"}\'')
    ctl.add_argument("--timeout", type=_positive, default=5.0, help="seconds to wait for the answer")
    add_completion(sub, "roomba-sim")
    return parser


def _run_robot(args: argparse.Namespace) -> int:
    log = get_logger("hal.sim.cli")
    try:
        server = SimServer(
            link=args.link,
            tcp=args.tcp,
            control=args.control,
            record=args.record,
            seed=args.seed,
            speed=args.speed,
            docked=args.docked,
            firmware=args.firmware,
            quirks=frozenset(args.quirk),
        )
        server.open()
    except (OSError, ValueError) as exc:
        log.error("sim.start.failed", error=str(exc))
        print(f"roomba-sim: cannot start: {exc}", file=sys.stderr)
        return 2

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("sim.signal", signal=signal.Signals(signum).name)
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(server.ready_line(), flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def _run_ctl(args: argparse.Namespace) -> int:
    try:
        request = json.loads(args.request)
    except json.JSONDecodeError as exc:
        print(f'roomba-sim ctl: the request is not JSON ({exc}); e.g. \'{{"op": "state"}}\'', file=sys.stderr)
        return 2
    if not isinstance(request, dict):
        print('roomba-sim ctl: the request must be a JSON object, e.g. \'{"op": "state"}\'', file=sys.stderr)
        return 2
    try:
        answer = send_control(args.socket, request, timeout=args.timeout)
    except (OSError, ValueError) as exc:
        print(
            f"roomba-sim ctl: no answer from {args.socket}: {exc} (is `roomba-sim robot --control` running?)",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(answer))
    return 0 if answer.get("ok") else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "completion":
        print(bash_completion("roomba-sim", {"": parser}))
        return 0
    configure(args.log_level)
    if args.command == "robot":
        return _run_robot(args)
    return _run_ctl(args)


console = entry(lambda: main(sys.argv[1:]))

if __name__ == "__main__":
    console()
