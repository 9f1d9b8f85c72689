"""``roomba-fleet``: the local cloud and the fleet tools.

Each sub-command ``NAME`` lives in ``fleet/NAME.py`` exposing ``build_parser()`` and ``main(argv) -> int``
(argument parsing and output; the work is in ``localcloud`` and ``fleetsim``) and is imported only when used,
so a new one is added by one line in ``TOOL``. Every sub-command takes ``--dir DIR`` (the local cloud's
directory; see :func:`localcloud.layout.default_dir`).
"""

from __future__ import annotations

import sys

from base.cli import Sub, Tool, entry

TOOL = Tool(
    "roomba-fleet",
    "The local stand-in for AWS IoT and the fleet tools.",
    [
        Sub("up", "fleet.up", "run the local cloud (Mosquitto + shadow service) in the foreground"),
        Sub("robot", "fleet.robot", "robot add NAME: issue a robot identity and write its agent config"),
        Sub("command", "fleet.command", "send a command to robots (clean, dock, drive, ...) and wait for it"),
        Sub("shadow", "fleet.shadow", "shadow get|update|delete THING|--all|--prefix P: operator access"),
        Sub("watch", "fleet.watch", "live view of robots (--fleet for the summary, --once --json)"),
        Sub("simulate", "fleet.simulate", "run simulated robots with the real agent against the local cloud"),
        Sub("jobs", "fleet.jobs", "AWS IoT Jobs: jobs create|describe|list|cancel|delete|executions|watch"),
        Sub("artifact", "fleet.artifact", "artifact put FILE|list: files a job document can name"),
        Sub("release", "fleet.release", "release build|publish|list: signed agent bundles for OTA updates"),
        Sub("rollout", "fleet.rollout", "rollout start|status|abort|pause|resume|run: staged rollouts"),
    ],
)


def main(argv: list[str] | None = None) -> int:
    return TOOL.main(argv)


console = entry(lambda: main(sys.argv[1:]))

if __name__ == "__main__":
    console()
