"""The command contract with the fleet, and validation of desired documents against the published schemas.

The fleet writes ``desired.command = {"id", "action", ...arguments}``; the robot answers in
``reported.command`` with the same fields plus ``status`` (and ``reason``), so ``desired`` becomes a subset of
``reported`` and no delta lingers. Once a command's id is in the ledger the robot clears ``desired.command``
(``agent.sync``), so the next command starts from an empty object; fields an earlier command left behind
when that clear has not happened yet are recognised by their metadata timestamps (:func:`current_fields`).
Pure: no I/O beyond loading the schema files once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from shadow.document import replacing_patch

if TYPE_CHECKING:
    import jsonschema

ACTIONS = ("clean", "spot", "max", "dock", "stop", "locate", "drive", "set_clock")
MISSION_ACTIONS = {"clean": "cleaning", "spot": "spot", "max": "max", "dock": "docking"}
STATUSES = ("accepted", "done", "rejected", "failed")
ACTION_ARGS: dict[str, tuple[str, ...]] = {
    "drive": ("velocity_mm_s", "radius_mm", "duration_ms"),
    "set_clock": ("day", "hour", "minute"),
}


@cache
def load_schema(name: str) -> dict[str, Any]:
    """``desired`` (classic shadow) or ``config`` (named shadow ``config``)."""
    text = resources.files("agent").joinpath("schemas", f"{name}.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    import jsonschema  # imported on first use: it is most of the agent's start-up time

    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@cache
def _section_validator(name: str, key: str) -> jsonschema.Draft202012Validator:
    schema = load_schema(name)
    defs = schema.get("$defs", {})
    prop = schema["properties"][key]
    ref = prop.get("$ref", "")
    if ref.startswith("#/$defs/") and len(prop) == 1:
        prop = defs[ref.removeprefix("#/$defs/")]  # resolved once here, not on every validation
    import jsonschema

    return jsonschema.Draft202012Validator({"$defs": defs, **prop})


def _describe(section: str, error: jsonschema.ValidationError) -> str:
    where = ".".join([section, *(str(p) for p in error.absolute_path)])
    if error.validator == "additionalProperties":
        return f"{where}: {error.message.replace('Additional properties', 'unknown field(s)')}"
    if error.validator is False or error.message.startswith("False schema"):
        return f"{where}: an argument is not allowed for this action"
    return f"{where}: {error.message}"


def validate_sections(schema_name: str, desired: Mapping[str, Any]) -> dict[str, str]:
    """Validate each top-level key on its own: {key: reason} for the invalid ones (empty when all good).

    Per-key so that one bad section (say, a schedule with hour 25) does not block a valid command.
    """
    schema = load_schema(schema_name)
    props = schema.get("properties", {})
    problems: dict[str, str] = {}
    for key, value in desired.items():
        if key not in props:
            problems[key] = f"{key}: unknown setting (allowed: {', '.join(sorted(props))})"
            continue
        if value is None:
            continue
        errors = sorted(
            _section_validator(schema_name, key).iter_errors(value), key=lambda e: list(e.absolute_path)
        )
        if errors:
            problems[key] = "; ".join(dict.fromkeys(_describe(key, e) for e in errors[:3]))
    return problems


@dataclass(frozen=True)
class Command:
    id: str
    action: str
    args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def document(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action, **self.args}

    def answer(self, status: str, reason: str | None = None) -> dict[str, Any]:
        """The ``reported.command`` value: an echo of the command plus its status."""
        out = {**self.document, "status": status}
        out["reason"] = reason
        return out


@dataclass(frozen=True)
class Rejected:
    """An invalid ``desired.command``; ``id`` is None when the command had no usable id."""

    id: str | None
    reason: str
    echo: Mapping[str, Any]

    def answer(self) -> dict[str, Any]:
        return {**self.echo, "status": "rejected", "reason": self.reason}


@cache
def _id_rule() -> re.Pattern[str] | None:
    """The schema's rule for ``command.id`` when it is a plain string pattern that no other part of the
    command schema refers to (then an id's validity is independent of the rest of the command)."""
    command = load_schema("desired")["$defs"]["command"]
    rule = command["properties"].get("id", {})
    if set(rule) != {"type", "pattern"} or rule["type"] != "string" or '"id"' in json.dumps(command["allOf"]):
        return None
    return re.compile(rule["pattern"])


_SHAPES: dict[str, dict[str, str]] = {}


def _command_problems(raw: Mapping[str, Any]) -> dict[str, str]:
    """``validate_sections`` for one command, remembering the verdict per command *shape* (everything but a
    valid id): each command has a new id, yet the fleet sends a handful of shapes, and the JSON Schema walk is
    the slowest step between a command's arrival and its OI bytes."""
    rule = _id_rule()
    cid = raw.get("id")
    if rule is None or not isinstance(cid, str) or not rule.search(cid):
        return validate_sections("desired", {"command": raw})
    try:
        shape = json.dumps({k: v for k, v in raw.items() if k != "id"}, sort_keys=True)
    except (TypeError, ValueError):
        return validate_sections("desired", {"command": raw})
    problems = _SHAPES.get(shape)
    if problems is None:
        problems = validate_sections("desired", {"command": raw})
        if len(_SHAPES) >= 256:
            _SHAPES.clear()
        _SHAPES[shape] = problems
    return dict(problems)


def _stamp(metadata: Any) -> int | None:
    """The newest ``timestamp`` in a metadata subtree (a leaf ``{"timestamp": T}``, or objects and arrays
    of them); None when there is none to read."""
    if isinstance(metadata, Mapping):
        ts = metadata.get("timestamp")
        if isinstance(ts, int) and not isinstance(ts, bool):
            return ts
        stamps = [_stamp(v) for v in metadata.values()]
    elif isinstance(metadata, list):
        stamps = [_stamp(v) for v in metadata]
    else:
        return None
    known = [t for t in stamps if t is not None]
    return max(known) if known else None


def current_fields(raw: Any, metadata: Any) -> tuple[Any, tuple[str, ...]]:
    """``desired.command`` without the fields an earlier command left behind, and the names of those.

    Shadow updates merge, so a raw ``{"id": "c2", "action": "clean"}`` written over a drive keeps the drive's
    ``velocity_mm_s``. The shadow's metadata tells them apart: every field the new command sent carries that
    update's timestamp, so a field whose timestamp is older than the ``id``'s belongs to an earlier command.
    Timestamps are whole seconds (as AWS's), so leftovers of a command written in the same second stay (and
    the command is then rejected, saying so). Without metadata nothing is dropped.
    """
    if not isinstance(raw, Mapping) or not isinstance(metadata, Mapping):
        return raw, ()
    id_stamp = _stamp(metadata.get("id"))
    if id_stamp is None:
        return raw, ()
    stale = tuple(
        key
        for key in raw
        if key != "id" and (stamp := _stamp(metadata.get(key))) is not None and stamp < id_stamp
    )
    if not stale:
        return raw, ()
    return {k: v for k, v in raw.items() if k not in stale}, stale


def parse_command(raw: Any) -> Command | Rejected:
    if not isinstance(raw, Mapping):
        return Rejected(None, "command: must be an object with id and action", {})
    problems = _command_problems(raw)
    action = raw.get("action")
    if isinstance(action, str) and action in ACTIONS:
        extra = sorted(k for k in raw if k not in ("id", "action", *ACTION_ARGS.get(action, ())))
        if extra:
            problems["command"] = (
                f"command: {', '.join(extra)} not allowed for action {action!r} (left over from the previous "
                "command, written in the same second: shadow updates merge, so send commands with "
                "roomba-fleet command, which sets the previous command's other fields to null)"
            )
    cid = raw.get("id")
    good_id = isinstance(cid, str) and 0 < len(cid) <= 64
    if problems:
        echo = {k: v for k, v in raw.items() if isinstance(v, str | int | float | bool) and len(str(v)) <= 64}
        return Rejected(cid if good_id else None, problems["command"], echo if good_id else {})
    args = {k: v for k, v in raw.items() if k not in ("id", "action")}
    return Command(raw["id"], raw["action"], args)


@cache
def warm_up() -> None:
    """Build every validator now (the daemon calls it in the background once READY), so the first command
    does not pay for importing jsonschema. Once per process: the fleet simulator has many agents in one."""
    for name in ("desired", "config"):
        for key in load_schema(name).get("properties", {}):
            _section_validator(name, key)
    parse_command({"id": "warm-up", "action": "stop"})


def desired_command_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """For the fleet: the ``desired.command`` value that *replaces* ``previous`` with ``new``.

    Shadow updates deep-merge, so writing a new command over an old one would keep the old arguments
    (``velocity_mm_s`` of an earlier drive under a new ``clean``). Keys the new command lacks are set to null.
    """
    return replacing_patch(previous, new)
