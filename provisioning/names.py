"""Thing-name rules, the same ones AWS IoT enforces, checked before anything is signed."""

from __future__ import annotations

import re

from provisioning.errors import ThingNameNotAllowed

THING_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
CN_MAX = 64


def thing_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid AWS IoT thing name, or None when it is."""
    if not name:
        return "thing name is empty (AWS IoT needs 1-128 characters of [a-zA-Z0-9:_-])"
    if len(name) > 128:
        return f"thing name is {len(name)} characters long; AWS IoT allows at most 128"
    if len(name) > CN_MAX:
        return (
            f"thing name is {len(name)} characters long; it must also be the certificate CN, "
            f"which X.509 limits to {CN_MAX}"
        )
    if not THING_NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not re.fullmatch(r"[a-zA-Z0-9:_-]", c)})
        return f"thing name {name!r} contains {''.join(bad)!r}; AWS IoT allows only [a-zA-Z0-9:_-]"
    return None


def check_thing_name(name: str) -> str:
    """Return ``name`` if AWS IoT would accept it as a thing name (and so as our MQTT client id)."""
    problem = thing_name_problem(name)
    if problem:
        raise ThingNameNotAllowed(problem)
    return name
