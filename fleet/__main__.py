"""``python -m fleet``: the same as ``roomba-fleet``."""

from fleet.cli import console

console()
