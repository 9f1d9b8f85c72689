"""``python -m hal.sim``: the same as ``roomba-sim``."""

from hal.sim.cli import console

console()
