"""``python -m provisioning``: the same as ``roomba-provision``."""

from provisioning.cli import console

console()
