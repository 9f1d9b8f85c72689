"""The one thing-name rule, as AWS IoT enforces it: 1-128 characters of ``[a-zA-Z0-9:_-]``; and the
shadow-name rule beside it: 1-64 characters of ``[$a-zA-Z0-9:_-]`` (``$`` is allowed in a shadow name).

The thing name is also the MQTT client id and the shadow's key, so the agent's config, the local cloud and
provisioning all check it here (provisioning adds X.509's 64-character CN limit on top, in
``provisioning.names``). References: AWS IoT API Reference, ``CreateThing`` (thingName pattern) and
``UpdateThingShadow`` (shadowName pattern).
"""

from __future__ import annotations

import re

__all__ = [
    "SHADOW_NAME_MAX",
    "SHADOW_NAME_RE",
    "THING_NAME_MAX",
    "THING_NAME_RE",
    "is_shadow_name",
    "is_thing_name",
    "thing_name_problem",
]

THING_NAME_MAX = 128
THING_NAME_RE = re.compile(r"[a-zA-Z0-9:_-]{1,128}")
SHADOW_NAME_MAX = 64
SHADOW_NAME_RE = re.compile(r"[$a-zA-Z0-9:_-]{1,64}")
_ALLOWED = re.compile(r"[a-zA-Z0-9:_-]")


def is_thing_name(name: object) -> bool:
    return isinstance(name, str) and THING_NAME_RE.fullmatch(name) is not None


def is_shadow_name(name: object) -> bool:
    return isinstance(name, str) and SHADOW_NAME_RE.fullmatch(name) is not None


def thing_name_problem(name: str) -> str | None:
    """Why ``name`` is not a valid AWS IoT thing name, or None when it is."""
    if not name:
        return "thing name is empty (AWS IoT needs 1-128 characters of [a-zA-Z0-9:_-])"
    if len(name) > THING_NAME_MAX:
        return f"thing name is {len(name)} characters long; AWS IoT allows at most {THING_NAME_MAX}"
    if not THING_NAME_RE.fullmatch(name):
        bad = sorted({c for c in name if not _ALLOWED.fullmatch(c)})
        return f"thing name {name!r} contains {''.join(bad)!r}; AWS IoT allows only [a-zA-Z0-9:_-]"
    return None
