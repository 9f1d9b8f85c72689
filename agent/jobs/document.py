"""Job documents the robot runs, parsed and validated into plans. Pure: no I/O beyond the schema files.

Two kinds, told apart by their top-level keys:

- the AWS IoT Device Client's schema version 1.0 (``version``, ``steps``, ``finalStep``), so documents
  written for AWS's device client and AWS's managed templates run unchanged; their ``runCommand`` and
  ``runHandler`` actions need ``[jobs] allow_commands = true`` (and ``handler_dir`` for handlers);
- the agent's own operations (``operation``: mission, doctor, collect-logs, restart-agent, set-settings,
  update),
  published as ``schemas/job-robot.schema.json``.

Either may carry ``requires`` (robot-state gates the agent waits for) and a robot document ``models`` (the
robot models it is for). A document that cannot run here becomes a :class:`Rejection` with the reason the
execution is REJECTED with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

DEVICE_CLIENT_SCHEMA = "job-device-client"
ROBOT_SCHEMA = "job-robot"
MAX_DOCUMENT_BYTES = 32768  # AWS's limit on a job document
OPERATIONS = ("mission", "doctor", "collect-logs", "restart-agent", "set-settings", "update")
MISSION_TIMEOUT_S = {"clean": 120.0, "spot": 120.0, "max": 120.0, "dock": 900.0, "stop": 60.0}
NO_COMMANDS = "this robot does not run commands or handlers from jobs (its [jobs] allow_commands is false)"


@dataclass(frozen=True)
class Rejection:
    reason: str


@dataclass(frozen=True)
class Gates:
    """What the robot's state must be before the job's first step starts (None: no requirement)."""

    docked: bool | None = None
    charging: bool | None = None
    battery_min_pct: int | None = None
    idle: bool | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.docked, self.charging, self.battery_min_pct, self.idle))


@dataclass(frozen=True)
class Action:
    """One Device Client action (a step or the final step)."""

    name: str
    type: str  # runCommand | runHandler
    input: Mapping[str, Any]
    run_as_user: str | None = None
    ignore_failure: bool = False
    final: bool = False

    @property
    def argv(self) -> list[str]:
        """runCommand's argv (handlers are resolved against the handler directory by the runner)."""
        return split_command(str(self.input["command"]))


@dataclass(frozen=True)
class DeviceClientPlan:
    steps: tuple[Action, ...]
    include_stdout: bool = False
    requires: Gates = field(default_factory=Gates)

    @property
    def step_names(self) -> list[str]:
        return [a.name for a in self.steps]

    def resumable(self, index: int) -> bool:
        return False  # a command or handler has no way to say it survived a restart


@dataclass(frozen=True)
class RobotPlan:
    operation: str
    args: Mapping[str, Any] = field(default_factory=dict)
    requires: Gates = field(default_factory=Gates)

    @property
    def steps(self) -> tuple[str, ...]:
        return (self.operation,)

    @property
    def step_names(self) -> list[str]:
        return [self.operation]

    def resumable(self, index: int) -> bool:
        """restart-agent is done once the agent runs again; an update goes on after a restart from its
        journalled phase (``agent.update.decide``); every other operation is not resumable."""
        return self.operation in ("restart-agent", "update")

    @property
    def timeout_s(self) -> float:
        value = self.args.get("timeout_s")
        if value is not None:
            return float(value)
        return MISSION_TIMEOUT_S.get(str(self.args.get("action")), 120.0)


Plan = DeviceClientPlan | RobotPlan


def split_command(text: str) -> list[str]:
    """runCommand's ``command``: comma-separated argv, ``\\,`` is a literal comma (as the Device Client)."""
    out: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == ",":
            current.append(",")
            i += 2
            continue
        if ch == ",":
            out.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    out.append("".join(current))
    return out


def flag(value: Any) -> bool:
    """The Device Client's booleans are strings ("true"/"false"); JSON booleans are taken too."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() == "true"


@cache
def load_schema(name: str) -> dict[str, Any]:
    text = resources.files("agent").joinpath("schemas", f"{name}.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    import jsonschema

    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _describe(error: jsonschema.ValidationError) -> str:
    where = ".".join(str(p) for p in error.absolute_path) or "document"
    if error.validator == "additionalProperties":
        return f"{where}: {error.message.replace('Additional properties', 'unknown field(s)')}"
    if error.validator is False or error.message.startswith("False schema"):
        return f"{where}: not allowed for this operation"
    message = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if message:
        return f"{where}: {message}"
    return f"{where}: {error.message}"


def schema_problems(name: str, doc: Any) -> list[str]:
    """Readable lines for every schema error (empty: valid), deepest paths last."""
    errors = sorted(_validator(name).iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path])
    best = [e for e in errors if e.validator not in ("if", "allOf", "oneOf")] or errors
    return list(dict.fromkeys(_describe(e) for e in best))


def _gates(doc: Mapping[str, Any]) -> Gates:
    req = doc.get("requires") or {}
    return Gates(
        docked=req.get("docked"),
        charging=req.get("charging"),
        battery_min_pct=req.get("battery_min_pct"),
        idle=req.get("idle"),
    )


def kind_of(doc: Any) -> str | None:
    if not isinstance(doc, Mapping):
        return None
    if "operation" in doc:
        return ROBOT_SCHEMA
    if "steps" in doc or "version" in doc or "finalStep" in doc:
        return DEVICE_CLIENT_SCHEMA
    return None


def parse(
    doc: Any,
    *,
    model: str,
    allow_commands: bool,
    handler_dir: str | None,
    setting_problems: Mapping[str, str] | None = None,
) -> Plan | Rejection:
    """A plan to run, or the reason the document is REJECTED here.

    ``setting_problems``: what the config schema says about a set-settings document's ``settings``
    (:func:`agent.commands.validate_sections`), computed by the caller so this stays free of the agent."""
    if doc is None:
        return Rejection("the job has no document")
    if not isinstance(doc, Mapping):
        return Rejection(f"the job document must be a JSON object, not {type(doc).__name__}")
    if len(json.dumps(doc)) > MAX_DOCUMENT_BYTES:
        return Rejection(f"the job document is larger than {MAX_DOCUMENT_BYTES} bytes")
    kind = kind_of(doc)
    if kind is None:
        return Rejection(
            "unknown job document type: expected the AWS IoT Device Client's schema 1.0 "
            '("version": "1.0", "steps": [...]) or a robot operation ("operation": '
            + ", ".join(OPERATIONS)
            + ")"
        )
    if kind == ROBOT_SCHEMA and doc.get("operation") not in OPERATIONS:
        return Rejection(
            f"unknown operation {doc.get('operation')!r} (this robot runs: {', '.join(OPERATIONS)}; "
            "the Device Client's old handler schema is not supported: use version 1.0)"
        )
    if kind == DEVICE_CLIENT_SCHEMA and doc.get("version") != "1.0":
        return Rejection(
            f"unsupported job document version {doc.get('version')!r}: this robot runs the Device "
            'Client\'s schema version "1.0"'
        )
    problems = schema_problems(kind, doc)
    if problems:
        return Rejection("invalid job document: " + "; ".join(problems[:3]))
    if kind == ROBOT_SCHEMA:
        models = doc.get("models")
        if models is not None and model not in models:
            return Rejection(f"this job is for robot models {', '.join(models)}; this robot is a {model}")
        args = {k: v for k, v in doc.items() if k not in ("operation", "models", "requires")}
        if doc["operation"] == "set-settings" and setting_problems:
            return Rejection("invalid settings: " + "; ".join(setting_problems.values()))
        return RobotPlan(str(doc["operation"]), args, _gates(doc))
    actions = [_action(step["action"], False) for step in doc.get("steps", [])]
    if "finalStep" in doc:
        actions.append(_action(doc["finalStep"]["action"], True))
    if not actions:
        return Rejection("invalid job document: it has no steps and no finalStep")
    if not allow_commands:
        return Rejection(NO_COMMANDS)
    for action in actions:
        if action.type == "runHandler" and not handler_dir:
            return Rejection(
                f"step {action.name!r} runs a handler but this robot has no handler directory "
                "([jobs] handler_dir)"
            )
        if action.type == "runCommand" and not action.argv[0]:
            return Rejection(f"step {action.name!r}: the command's first field (the program) is empty")
    return DeviceClientPlan(tuple(actions), flag(doc.get("includeStdOut", False)), _gates(doc))


def _action(raw: Mapping[str, Any], final: bool) -> Action:
    return Action(
        name=str(raw["name"]),
        type=str(raw["type"]),
        input=dict(raw["input"]),
        run_as_user=raw.get("runAsUser") or None,
        ignore_failure=flag(raw.get("ignoreStepFailure", False)),
        final=final,
    )


# robot state -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RobotView:
    """What gates and mission confirmation read of the robot (built from the snapshot and the tracker)."""

    link_up: bool
    docked: bool
    charging: bool
    battery_pct: int | None
    mission: str
    oi_mode: str
    main_brush_ma: int
    pose: tuple[float, float] | None = None


def unmet(gates: Gates, robot: RobotView | None) -> list[str]:
    """What the robot still has to be before the job may start ([] when every gate holds)."""
    if not gates.any:
        return []
    if robot is None or not robot.link_up:
        return ["the serial link to the robot"]
    out: list[str] = []
    if gates.docked is not None and robot.docked != gates.docked:
        out.append("docked" if gates.docked else "off the dock")
    if gates.charging is not None and robot.charging != gates.charging:
        out.append("charging" if gates.charging else "not charging")
    if gates.battery_min_pct is not None and (robot.battery_pct or 0) < gates.battery_min_pct:
        out.append(f"battery at least {gates.battery_min_pct}% (now {robot.battery_pct}%)")
    if gates.idle is not None and (robot.mission in ("idle", "docked")) != gates.idle:
        out.append(f"idle (mission now {robot.mission})" if gates.idle else "on a mission")
    return out


def mission_confirmed(action: str, before: RobotView | None, now: RobotView) -> str | None:
    """What the sensors show that confirms the mission began (clean/spot/max), the robot docked, or it
    stopped; None while they do not show it yet."""
    if not now.link_up:
        return None
    if action in ("clean", "spot", "max"):
        if now.main_brush_ma > 0:
            return f"main brush running ({now.main_brush_ma} mA)"
        if before is not None and before.docked and not now.docked:
            return "the robot left its dock"
        if before is not None and before.pose is not None and now.pose is not None:
            moved = abs(now.pose[0] - before.pose[0]) + abs(now.pose[1] - before.pose[1])
            if moved > 50:
                return f"the robot moved {moved:.0f} mm"
        return None
    if action == "dock":
        return "docked" + (" and charging" if now.charging else "") if now.docked else None
    if action == "stop":
        if now.main_brush_ma == 0 and now.oi_mode == "passive":
            return "motors off, OI in passive mode"
        return None
    return None
