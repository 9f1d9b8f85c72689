"""``roomba-fleet robot add NAME``: a robot identity for this local cloud plus its agent configuration.

The configuration file's path is the last line printed, so scripts can do
``CONFIG=$(roomba-fleet robot add r1 | tail -n1)``; ``--json`` prints one document instead.
"""

from __future__ import annotations

import json
import sys
import tomllib

from base import logs
from base.cli import Parser, add_json, entry
from localcloud import cloud
from localcloud.layout import DIR_HELP, CloudDir, SettingsError
from provisioning.errors import ProvisioningError

EXIT_REFUSED = 1


def build_parser() -> Parser:
    p = Parser(
        prog="roomba-fleet robot",
        description="Robots of the local cloud.",
        exit_codes={EXIT_REFUSED: "refused: a bad or reserved name, or the identity could not be issued"},
    )
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION", title="actions")
    add = sub.add_parser(
        "add",
        help="issue a robot identity and write its agent configuration",
        description="Issue a robot identity for this local cloud (once; reused afterwards) and (re)write "
        "its agent configuration. The configuration's path is the last line printed.",
        epilog="example: CONFIG=$(roomba-fleet robot add r1 | tail -n1)",
        exit_codes={EXIT_REFUSED: "refused: a bad or reserved name, or the identity could not be issued"},
    )
    add.add_argument(
        "name", metavar="NAME", help="thing name (1-128 of [a-zA-Z0-9:_-]); also the MQTT client id"
    )
    add.add_argument("--dir", help=DIR_HELP)
    add.add_argument(
        "--serial-port",
        default=cloud.DEFAULT_SERIAL_PORT,
        help=f"robot serial port for the agent: a device path (made absolute) or a pyserial URL "
        f"(default: a simulator on {cloud.DEFAULT_SERIAL_PORT})",
    )
    add_json(add, "the robot's identity and configuration (thing, config, identity_dir, ...)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    cloud_dir = CloudDir.at(args.dir)
    new_cloud = not cloud_dir.exists()
    try:
        path = cloud.add_robot(cloud_dir, args.name, args.serial_port)
    except (cloud.RobotNameError, ProvisioningError, SettingsError) as exc:
        print(f"roomba-fleet robot add: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        config = tomllib.loads(path.read_text())
        doc = {
            "thing": args.name,
            "config": str(path),
            "identity_dir": str(cloud_dir.identity_dir(args.name)),
            "state_dir": config.get("state_dir"),
            "endpoint": config.get("connection", {}).get("endpoint"),
            "port": config.get("connection", {}).get("port"),
            "serial_port": config.get("robot", {}).get("serial_port"),
            "cloud_dir": str(cloud_dir.root),
            "new_cloud": new_cloud,
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"robot {args.name}: identity in {cloud_dir.identity_dir(args.name)}")
    print(path)
    return 0


if __name__ == "__main__":
    entry(main)()
