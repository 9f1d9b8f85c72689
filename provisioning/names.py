"""Thing-name rules for a certificate: AWS IoT's (:mod:`shadow.names`) plus X.509's 64-character CN."""

from __future__ import annotations

from provisioning.errors import ThingNameNotAllowed
from shadow.names import THING_NAME_MAX, THING_NAME_RE
from shadow.names import thing_name_problem as aws_thing_name_problem

__all__ = ["CN_MAX", "THING_NAME_RE", "check_thing_name", "thing_name_problem"]

CN_MAX = 64


def thing_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a robot's thing name (and so its certificate CN), or None when it can."""
    if CN_MAX < len(name) <= THING_NAME_MAX:
        return (
            f"thing name is {len(name)} characters long; it must also be the certificate CN, "
            f"which X.509 limits to {CN_MAX}"
        )
    return aws_thing_name_problem(name)


def check_thing_name(name: str) -> str:
    """Return ``name`` if AWS IoT would accept it as a thing name (and so as our MQTT client id)."""
    problem = thing_name_problem(name)
    if problem:
        raise ThingNameNotAllowed(problem)
    return name
