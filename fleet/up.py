"""``roomba-fleet up``: the local AWS IoT stand-in in the foreground (Mosquitto, shadow and iot services).

Supervised until Ctrl-C / SIGTERM; this module parses the command line, :func:`localcloud.up.run` does the
work.
"""

from __future__ import annotations

import argparse

from base import logs
from base.cli import Parser, add_json
from localcloud import up
from localcloud.layout import DEFAULT_API_PORT, DEFAULT_PORT, DIR_HELP, CloudDir

EPILOG = """\
Prints where to connect (endpoint, port, CA, a paste-ready mosquitto_sub line with the operator identity)
and then a line "ready"; with --json one JSON object instead. Runs until Ctrl-C or SIGTERM. A directory
without a CA becomes a new cloud, and up says so on stderr."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="roomba-fleet up",
        description="Run the local AWS IoT stand-in in the foreground: Mosquitto (mutual TLS, per-robot ACL) "
        "the shadow service and the iot service (Jobs, Commands, the AWS IoT control plane over HTTP), supervised.",
        epilog=EPILOG,
        exit_codes={
            0: "stopped by Ctrl-C or SIGTERM",
            up.EXIT_CANNOT_START: "cannot start (mosquitto missing, port in use, already running); why on stderr",
            130: "interrupted before it was ready",
        },
    )
    p.add_argument("--dir", help=DIR_HELP)
    p.add_argument(
        "--port",
        type=_port,
        help=f"MQTT/TLS port to listen on, saved in DIR for the next runs and every robot's config "
        f"(default: the saved one, else {DEFAULT_PORT})",
    )
    p.add_argument(
        "--api-port",
        type=_port,
        help=f"HTTP port of the AWS IoT control plane (boto3 / AWS CLI through DIR/aws/config, profile local) "
        f"on the endpoint, saved in DIR (default: the saved one, else {DEFAULT_API_PORT})",
    )
    add_json(p, "the connection details (endpoint, port, CA, operator identity, mosquitto_sub line)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("info")
    return up.run(CloudDir.at(args.dir), args.port, as_json=args.json, api_port=args.api_port)
