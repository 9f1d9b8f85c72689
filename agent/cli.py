"""``roomba-agent``: the robot daemon and its operator commands.

Sub-commands are imported lazily so that ``roomba-agent probe`` (the HAL's face at robot bring-up) does not
import awscrt, and ``roomba-agent status`` stays fast.
"""

from __future__ import annotations

import sys

from base.cli import Sub, Tool, entry

TOOL = Tool(
    "roomba-agent",
    "The robot's agent: the daemon and the commands an operator runs beside it.",
    [
        Sub("run", "agent.daemon", "run the agent (shadow sync, telemetry, events)"),
        Sub("status", "agent.status", "what the running agent is doing, from its state directory"),
        Sub("doctor", "agent.doctor", "staged checks from config to robot health, with a fix for each"),
        Sub("config", "agent.configcli", "config init|check: write a commented template, validate a file"),
        Sub(
            "update",
            "agent.updatecli",
            "update install|status: install a signed release, show the release slots",
        ),
        Sub("probe", "hal.probe", "live decoded sensors and link health from a robot or simulator"),
    ],
)


def main(argv: list[str] | None = None) -> int:
    return TOOL.main(argv)


console = entry(lambda: main(sys.argv[1:]))

if __name__ == "__main__":
    console()
