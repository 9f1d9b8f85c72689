"""``roomba-fleet up``: the local AWS IoT stand-in in the foreground (Mosquitto + shadow service).

Supervised until Ctrl-C / SIGTERM; this module parses the command line, :func:`localcloud.up.run` does the
work.
"""

from __future__ import annotations

import argparse

from base import logs
from localcloud import up
from localcloud.layout import CloudDir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roomba-fleet up", description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="local cloud directory (default: $ROOMBA_FLEET_DIR or ./var/local-cloud)")
    p.add_argument("--port", type=int, help="MQTT/TLS port (saved in DIR; default 8883)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("info")
    return up.run(CloudDir.at(args.dir), args.port)
