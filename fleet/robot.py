"""``roomba-fleet robot add NAME``: a robot identity for this local cloud plus its agent configuration.

The configuration file's path is the last line printed, so scripts can do
``CONFIG=$(roomba-fleet robot add r1 | tail -n1)``.
"""

from __future__ import annotations

import argparse
import sys

from base import logs
from localcloud import cloud
from localcloud.layout import CloudDir, SettingsError
from provisioning.errors import ProvisioningError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roomba-fleet robot")
    sub = p.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="issue a robot identity and write its agent configuration")
    add.add_argument("name", help="thing name (1-128 of [a-zA-Z0-9:_-]); also the MQTT client id")
    add.add_argument("--dir", help="local cloud directory (default: $ROOMBA_FLEET_DIR or ./var/local-cloud)")
    add.add_argument(
        "--serial-port",
        default="socket://127.0.0.1:7000",
        help="robot serial port URL for the agent (default: a simulator on socket://127.0.0.1:7000)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("warning")
    cloud_dir = CloudDir.at(args.dir)
    try:
        path = cloud.add_robot(cloud_dir, args.name, args.serial_port)
    except (cloud.RobotNameError, ProvisioningError, SettingsError) as exc:
        print(f"roomba-fleet robot add: {exc}", file=sys.stderr)
        return 1
    print(f"robot {args.name}: identity in {cloud_dir.identity_dir(args.name)}")
    print(path)
    return 0
