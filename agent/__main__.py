"""``python -m agent``: the same as ``roomba-agent``."""

from agent.cli import console

console()
