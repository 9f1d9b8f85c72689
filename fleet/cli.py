"""``roomba-fleet``: the local cloud and the fleet tools.

Each sub-command ``NAME`` lives in ``fleet/NAME.py`` exposing ``main(argv) -> int`` (argument parsing and
output; the work is in ``localcloud`` and ``fleetsim``) and is imported only when used, so a new one is added
by one line in ``COMMANDS``. Every sub-command takes ``--dir DIR`` (default ``$ROOMBA_FLEET_DIR`` or
``./var/local-cloud``).
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("fleet.up", "run the local cloud (Mosquitto + shadow service) in the foreground"),
    "robot": ("fleet.robot", "robot add NAME: issue a robot identity and write its agent config"),
    "shadow": (
        "fleet.shadow",
        "shadow get|update|delete THING|--all|--prefix P: operator access to shadows (JSON)",
    ),
    "watch": (
        "fleet.watch",
        "live view of robots: presence and reported state (--fleet for the summary, --once --json)",
    ),
    "simulate": ("fleet.simulate", "run simulated robots with the real agent against the local cloud"),
}


def _usage() -> str:
    lines = ["usage: roomba-fleet COMMAND [--dir DIR] [options]", "", "commands:"]
    lines += [f"  {name:<9} {help_}" for name, (_m, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"roomba-fleet: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = COMMANDS[name][0]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            print(f"roomba-fleet: {name} is not available in this build", file=sys.stderr)
            return 2
        raise
    return int(mod.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
