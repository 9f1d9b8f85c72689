"""``roomba-agent``: the robot daemon and its operator commands.

Sub-commands are dispatched lazily so that ``roomba-agent probe`` (the HAL's face at robot bring-up) does not
import awscrt, and ``roomba-agent status`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

_COMMANDS = {
    "probe": ("hal.probe", "main", "live decoded sensors and link health from a robot or simulator"),
    "run": ("agent.daemon", "main", "run the agent (shadow sync, telemetry, events)"),
    "status": ("agent.status", "main", "what the running agent is doing, from its state directory"),
    "doctor": ("agent.doctor", "main", "staged checks from config to robot health, with a fix for each"),
}


def _usage() -> str:
    lines = ["usage: roomba-agent COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_m, _f, help_) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in _COMMANDS:
        print(f"roomba-agent: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module, func, _help = _COMMANDS[name]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            print(f"roomba-agent: {name} is not available in this build", file=sys.stderr)
            return 2
        raise
    result = getattr(mod, func)(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
