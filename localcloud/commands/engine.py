"""The Commands engine: AWS IoT Commands' control plane and device side, sans-I/O.

State is two kinds of record, ``("command", commandId)`` and ``("execution", executionId)``, each a JSON-able
dict; :meth:`CommandsEngine.take_dirty` hands the changed ones to the service, which commits them before it
sends the engine's MQTT outputs or answers HTTP. Everything AWS documents is followed (``docs/commands.md``
lists the facts and their sources): the request and response topics, the accepted/rejected answers with
AWS's error codes, the ``$aws/events/commandExecution/{commandId}/{status}`` events, the execution timeout
(default 10 s, at most 12 h) that a cloud-side ``TIMED_OUT`` with ``$NO_RESPONSE_FROM_DEVICE`` ends without
making it terminal, and DeleteCommand's 202 (pending deletion for 12 h) or 204.

Blob members (``payload.content``, result ``BIN``) are base64 strings in ``call``'s params and results, as on
the wire of the rest-json protocol; timestamps are epoch seconds (float).
"""

from __future__ import annotations

import base64
import binascii
import copy
import heapq
import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar

from localcloud.awsapi.errors import ApiError, conflict, not_found

Out = tuple[str, bytes]
Record = dict[str, Any]
Key = tuple[str, str]

STATUSES = ("CREATED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"})
DEVICE_STATUSES = frozenset({"IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"})
NO_RESPONSE = "$NO_RESPONSE_FROM_DEVICE"
DEFAULT_TIMEOUT_S = 10
MAX_TIMEOUT_S = 12 * 3600
DELETION_DELAY_S = 12 * 3600  # a command deprecated for less than this is only marked pendingDeletion
RETENTION_S = 182 * 86400  # timeToLive: AWS keeps executions six months by default
NAMESPACES = ("AWS-IoT", "AWS-IoT-FleetWise")
PARAMETER_TYPES = ("STRING", "INTEGER", "DOUBLE", "LONG", "UNSIGNEDLONG", "BOOLEAN", "BINARY")
VALUE_KEYS = ("S", "B", "I", "L", "D", "BIN", "UL")

ID_RE = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOKEN_RE = re.compile(r"[\x21-\x7E]{1,64}")
PARAM_NAME_RE = re.compile(r"[.$a-zA-Z0-9_-]{1,192}")
REASON_CODE_RE = re.compile(r"[A-Z0-9_$-]{1,64}")  # AWS's own code starts with '$'
RESPONSE_RE = re.compile(r"\$aws/commands/(things|clients)/([^/]+)/executions/([^/]+)/response/json")
TARGET_RE = re.compile(r"arn:aws:iot:([^:]+):([^:]+):(thing|client)/(.+)")
COMMAND_ARN_RE = re.compile(r"arn:aws:iot:([^:]+):([^:]+):command/(.+)")

DEVICE_TYPES = {"thing": "things", "client": "clients"}


def validation(message: str) -> ApiError:
    return ApiError(400, "ValidationException", message)


def _str(params: Mapping[str, Any], name: str, *, required: bool = False, max_len: int | None = None) -> Any:
    value = params.get(name)
    if value is None:
        if required:
            raise validation(f"{name} is required")
        return None
    if not isinstance(value, str):
        raise validation(f"{name} must be a string")
    if max_len is not None and len(value) > max_len:
        raise validation(f"{name} must be at most {max_len} characters")
    return value


def _ident(params: Mapping[str, Any], name: str) -> str:
    value = _str(params, name, required=True)
    if not ID_RE.fullmatch(value):
        raise validation(f"{name} must be 1-64 characters of [a-zA-Z0-9_-]")
    return str(value)


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise validation(f"{name} must be an integer")
    try:
        number = int(value)
    except ValueError:
        raise validation(f"{name} must be an integer") from None
    if not lo <= number <= hi:
        raise validation(f"{name} must be between {lo} and {hi}")
    return number


def _blob(value: Any, name: str) -> bytes:
    """A blob member: base64 text (the rest-json wire form) or bytes (a caller that decoded it already)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if not isinstance(value, str):
        raise validation(f"{name} must be base64-encoded binary")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise validation(f"{name} is not valid base64") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _value(value: Any, name: str) -> dict[str, Any]:
    """A CommandParameterValue: exactly one of S, B, I, L, D, BIN, UL."""
    if not isinstance(value, Mapping):
        raise validation(f"{name} must be an object with one of {', '.join(VALUE_KEYS)}")
    keys = [k for k in value if value[k] is not None]
    if len(keys) != 1 or keys[0] not in VALUE_KEYS:
        raise validation(f"{name} must have exactly one of {', '.join(VALUE_KEYS)}")
    key = keys[0]
    item = value[key]
    ok = {
        "S": isinstance(item, str) and len(item) >= 1,
        "B": isinstance(item, bool),
        "I": isinstance(item, int) and not isinstance(item, bool) and -(2**31) <= item < 2**31,
        "L": isinstance(item, int) and not isinstance(item, bool),
        "D": isinstance(item, int | float) and not isinstance(item, bool),
        "BIN": isinstance(item, str | bytes) and len(item) >= 1,
        "UL": isinstance(item, str) and re.fullmatch(r"[0-9]{1,20}", item) is not None,
    }[key]
    if not ok:
        raise validation(f"{name}.{key} is not a valid value")
    if key == "BIN":
        return {"BIN": _b64(_blob(item, f"{name}.BIN"))}
    return {key: item}


def _time_filter(value: Any, name: str) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        raise validation(f"{name} must be an object with after and/or before")
    bounds: list[float | None] = []
    for side in ("after", "before"):
        raw = value.get(side)
        if raw is None:
            bounds.append(None)
            continue
        if not isinstance(raw, str) or not 1 <= len(raw) <= 64:
            raise validation(f"{name}.{side} must be a date-time string")
        try:
            bounds.append(float(raw))
        except ValueError:
            try:
                bounds.append(datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp())
            except ValueError:
                raise validation(f"{name}.{side} is not a date-time: {raw!r}") from None
    return bounds[0], bounds[1]


def _page(params: Mapping[str, Any], items: list[Record], key: str) -> tuple[list[Record], str | None]:
    max_results = params.get("maxResults")
    size = 100 if max_results is None else _int(max_results, "maxResults", 1, 100)
    token = params.get("nextToken")
    start = 0
    if token is not None:
        try:
            start = int(base64.urlsafe_b64decode(str(token).encode()).decode().removeprefix(key + ":"))
        except (ValueError, binascii.Error):
            raise validation("nextToken is not valid") from None
    chunk = items[start : start + size]
    more = start + size < len(items)
    return chunk, base64.urlsafe_b64encode(f"{key}:{start + size}".encode()).decode() if more else None


def _sort_order(params: Mapping[str, Any]) -> bool:
    order = params.get("sortOrder") or "DESCENDING"
    if order not in ("ASCENDING", "DESCENDING"):
        raise validation("sortOrder must be ASCENDING or DESCENDING")
    return order == "DESCENDING"


def _json(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _wire_result(raw: Any) -> dict[str, dict[str, Any]]:
    """A device's ``result`` map (``{"s"|"b"|"bin": ...}`` on the MQTT wire, also accepted upper-case) in
    the control plane's form (``S``/``B``/``BIN``). Raises ValueError with the reason."""
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError("result must be a non-empty object of name -> {s | b | bin}")
    out: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        if not isinstance(value, Mapping) or len(value) != 1:
            raise ValueError(f"result.{name} must have exactly one of s, b, bin")
        (kind, item), *_ = value.items()
        kind = str(kind).upper()
        if kind == "S" and isinstance(item, str) and item:
            out[str(name)] = {"S": item}
        elif kind == "B" and isinstance(item, bool):
            out[str(name)] = {"B": item}
        elif kind == "BIN" and isinstance(item, str) and item:
            try:
                base64.b64decode(item, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"result.{name}.bin is not valid base64") from None
            out[str(name)] = {"BIN": item}
        else:
            raise ValueError(f"result.{name}: {kind.lower()} is not a valid result value")
    return out


class CommandsEngine:
    OPERATIONS: ClassVar[frozenset[str]] = frozenset(
        {
            "CreateCommand",
            "UpdateCommand",
            "GetCommand",
            "ListCommands",
            "DeleteCommand",
            "StartCommandExecution",
            "GetCommandExecution",
            "ListCommandExecutions",
            "DeleteCommandExecution",
        }
    )
    # the botocore service of each operation (StartCommandExecution is the Jobs data plane's)
    SERVICES: ClassVar[Mapping[str, str]] = {
        **{op: "iot" for op in OPERATIONS},
        "StartCommandExecution": "iot-jobs-data",
    }

    def __init__(
        self,
        records: Mapping[Key, Mapping[str, Any]] | None = None,
        *,
        things: Callable[[str], bool] = lambda _name: True,
        account: str = "000000000000",
        region: str = "us-east-1",
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.things = things
        self.account = account
        self.region = region
        self.new_id = new_id
        self.commands: dict[str, Record] = {}
        self.executions: dict[str, Record] = {}
        self._tokens: dict[str, str] = {}  # clientToken -> executionId
        self._dirty: dict[Key, Record | None] = {}
        self._timers: list[tuple[float, str, str]] = []  # (when, kind, id); stale entries skipped
        for (kind, key), record in (records or {}).items():
            if kind == "command":
                self.commands[key] = copy.deepcopy(dict(record))
            elif kind == "execution":
                self.executions[key] = copy.deepcopy(dict(record))
        for ex in self.executions.values():
            if ex.get("clientToken"):
                self._tokens[ex["clientToken"]] = ex["executionId"]
            self._arm_execution(ex)
        for cmd in self.commands.values():
            self._arm_command(cmd)

    # ARNs ---------------------------------------------------------------------------------------------
    def command_arn(self, command_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:command/{command_id}"

    def thing_arn(self, thing: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:thing/{thing}"

    def _command_id(self, arn: str) -> str:
        match = COMMAND_ARN_RE.fullmatch(arn)
        if match is None:
            raise validation(f"commandArn is not a command ARN: {arn!r}")
        region, account, command_id = match.groups()
        if (region, account) != (self.region, self.account) or command_id not in self.commands:
            raise not_found(f"command {arn} does not exist")
        return command_id

    def _target(self, arn: str) -> tuple[str, str]:
        """(device type segment of the topics, thing name or client id)."""
        match = TARGET_RE.fullmatch(arn)
        if match is None:
            raise validation(f"targetArn is not a thing or client ARN: {arn!r}")
        region, account, kind, name = match.groups()
        if (region, account) != (self.region, self.account):
            raise not_found(f"target {arn} does not exist")
        if kind == "thing" and not self.things(name):
            raise not_found(f"thing {name} does not exist")
        return DEVICE_TYPES[kind], name

    # persistence -----------------------------------------------------------------------------------------
    def _touch(self, kind: str, key: str, record: Record | None) -> None:
        self._dirty[(kind, key)] = None if record is None else record

    def take_dirty(self) -> dict[Key, Record | None]:
        dirty = {key: (None if rec is None else copy.deepcopy(rec)) for key, rec in self._dirty.items()}
        self._dirty.clear()
        return dirty

    def requeue_dirty(self, dirty: Mapping[Key, Mapping[str, Any] | None]) -> None:
        """A commit failed: those records are still to be written (unless changed again since)."""
        for key in dirty:
            if key in self._dirty:
                continue
            kind, ident = key
            current = (self.commands if kind == "command" else self.executions).get(ident)
            self._dirty[key] = current

    # timers ----------------------------------------------------------------------------------------------
    def _arm_execution(self, ex: Record) -> None:
        if ex["status"] in ("CREATED", "IN_PROGRESS") and not ex.get("cloudTimedOut"):
            heapq.heappush(self._timers, (self._deadline(ex), "execution", ex["executionId"]))

    def _arm_command(self, cmd: Record) -> None:
        if cmd.get("pendingDeletion"):
            heapq.heappush(self._timers, (float(cmd["deleteAt"]), "command", cmd["commandId"]))

    @staticmethod
    def _deadline(ex: Mapping[str, Any]) -> float:
        return float(ex["createdAt"]) + float(ex["executionTimeoutSeconds"])

    def _timer_live(self, when: float, kind: str, ident: str) -> bool:
        if kind == "execution":
            ex = self.executions.get(ident)
            return (
                ex is not None
                and ex["status"] in ("CREATED", "IN_PROGRESS")
                and not ex.get("cloudTimedOut")
                and self._deadline(ex) == when
            )
        cmd = self.commands.get(ident)
        return cmd is not None and bool(cmd.get("pendingDeletion")) and float(cmd["deleteAt"]) == when

    def next_deadline(self) -> float | None:
        while self._timers and not self._timer_live(*self._timers[0]):
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def tick(self, now: float) -> list[Out]:
        out: list[Out] = []
        while self._timers and self._timers[0][0] <= now:
            when, kind, ident = heapq.heappop(self._timers)
            if not self._timer_live(when, kind, ident):
                continue
            if kind == "execution":
                ex = self.executions[ident]
                ex["cloudTimedOut"] = True
                out += self._set_status(ex, "TIMED_OUT", {"reasonCode": NO_RESPONSE}, now)
            else:
                del self.commands[ident]
                self._touch("command", ident, None)
        return out

    # control plane ---------------------------------------------------------------------------------------
    def call(self, operation: str, params: dict[str, Any], now: float) -> tuple[dict[str, Any], list[Out]]:
        if operation not in self.OPERATIONS:
            raise ApiError(400, "InvalidRequestException", f"{operation} is not a Commands operation")
        handler: Callable[[dict[str, Any], float], tuple[dict[str, Any], list[Out]]] = getattr(
            self, "_op_" + re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()
        )
        return handler(params, now)

    def _command(self, command_id: str) -> Record:
        cmd = self.commands.get(command_id)
        if cmd is None:
            raise not_found(f"command {command_id} does not exist")
        return cmd

    def _op_create_command(self, params: dict[str, Any], now: float) -> tuple[dict[str, Any], list[Out]]:
        command_id = _ident(params, "commandId")
        if command_id in self.commands:
            raise conflict(f"command {command_id} already exists")
        namespace = params.get("namespace") or "AWS-IoT"
        if namespace not in NAMESPACES:
            raise validation(f"namespace must be one of {', '.join(NAMESPACES)}")
        if namespace != "AWS-IoT":
            raise validation("the local cloud serves the AWS-IoT namespace only (no FleetWise)")
        if params.get("payloadTemplate") is not None or params.get("preprocessor") is not None:
            raise validation("payload templates (payloadTemplate, preprocessor) are not supported here")
        payload = params.get("payload")
        if payload is None:
            raise validation("a command in the AWS-IoT namespace needs a payload")
        if not isinstance(payload, Mapping):
            raise validation("payload must be an object with content and contentType")
        content = _blob(payload.get("content", ""), "payload.content")
        content_type = payload.get("contentType")
        if content_type is not None and (not isinstance(content_type, str) or not content_type):
            raise validation("payload.contentType must be a non-empty string")
        record: Record = {
            "commandId": command_id,
            "commandArn": self.command_arn(command_id),
            "namespace": namespace,
            "payload": {"content": _b64(content), **({"contentType": content_type} if content_type else {})},
            "createdAt": now,
            "lastUpdatedAt": now,
            "deprecated": False,
            "pendingDeletion": False,
        }
        for name, limit in (("displayName", 64), ("description", 2028), ("roleArn", 2048)):
            value = _str(params, name, max_len=limit)
            if value is not None:
                record[name] = value
        mandatory = params.get("mandatoryParameters")
        if mandatory is not None:
            record["mandatoryParameters"] = self._parameters_spec(mandatory)
        tags = params.get("tags")
        if tags is not None:
            if not isinstance(tags, list) or not all(isinstance(t, Mapping) and "Key" in t for t in tags):
                raise validation("tags must be a list of {Key, Value}")
            record["tags"] = [dict(t) for t in tags]
        self.commands[command_id] = record
        self._touch("command", command_id, record)
        return {"commandId": command_id, "commandArn": record["commandArn"]}, []

    @staticmethod
    def _parameters_spec(raw: Any) -> list[dict[str, Any]]:
        if not isinstance(raw, list) or not raw:
            raise validation("mandatoryParameters must be a non-empty list")
        out: list[dict[str, Any]] = []
        for i, item in enumerate(raw):
            where = f"mandatoryParameters[{i}]"
            if not isinstance(item, Mapping):
                raise validation(f"{where} must be an object")
            name = item.get("name")
            if not isinstance(name, str) or not PARAM_NAME_RE.fullmatch(name):
                raise validation(f"{where}.name must be 1-192 characters of [.$a-zA-Z0-9_-]")
            spec: dict[str, Any] = {"name": name}
            kind = item.get("type")
            if kind is not None:
                if kind not in PARAMETER_TYPES:
                    raise validation(f"{where}.type must be one of {', '.join(PARAMETER_TYPES)}")
                spec["type"] = kind
            for member in ("value", "defaultValue"):
                if item.get(member) is not None:
                    spec[member] = _value(item[member], f"{where}.{member}")
            for member in ("description", "valueConditions"):
                if item.get(member) is not None:
                    spec[member] = copy.deepcopy(item[member])
            out.append(spec)
        return out

    def _op_update_command(self, params: dict[str, Any], now: float) -> tuple[dict[str, Any], list[Out]]:
        cmd = self._command(_ident(params, "commandId"))
        if cmd.get("pendingDeletion"):
            raise conflict(f"command {cmd['commandId']} is pending deletion")
        changed = False
        for name, limit in (("displayName", 64), ("description", 2028)):
            value = _str(params, name, max_len=limit)
            if value is not None:
                cmd[name] = value
                changed = True
        deprecated = params.get("deprecated")
        if deprecated is not None:
            if not isinstance(deprecated, bool):
                raise validation("deprecated must be a boolean")
            if deprecated and not cmd["deprecated"]:
                cmd["deprecatedAt"] = now
            elif not deprecated:
                cmd.pop("deprecatedAt", None)
            cmd["deprecated"] = deprecated
            changed = True
        if changed:
            cmd["lastUpdatedAt"] = now
            self._touch("command", cmd["commandId"], cmd)
        keys = ("commandId", "displayName", "description", "deprecated", "lastUpdatedAt")
        return {k: cmd[k] for k in keys if k in cmd}, []

    def _public_command(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in cmd.items() if k not in ("deprecatedAt", "deleteAt", "tags")}

    def _op_get_command(self, params: dict[str, Any], now: float) -> tuple[dict[str, Any], list[Out]]:
        return self._public_command(self._command(_ident(params, "commandId"))), []

    def _op_list_commands(self, params: dict[str, Any], now: float) -> tuple[dict[str, Any], list[Out]]:
        namespace = params.get("namespace")
        if namespace is not None and namespace not in NAMESPACES:
            raise validation(f"namespace must be one of {', '.join(NAMESPACES)}")
        parameter = _str(params, "commandParameterName")
        descending = _sort_order(params)
        items = [
            cmd
            for cmd in self.commands.values()
            if (namespace is None or cmd["namespace"] == namespace)
            and (parameter is None or any(p["name"] == parameter for p in cmd.get("mandatoryParameters", ())))
        ]
        items.sort(key=lambda c: (c["createdAt"], c["commandId"]), reverse=descending)
        page, token = _page(params, items, "commands")
        summaries = [
            {
                k: c[k]
                for k in (
                    "commandArn",
                    "commandId",
                    "displayName",
                    "deprecated",
                    "createdAt",
                    "lastUpdatedAt",
                    "pendingDeletion",
                )
                if k in c
            }
            for c in page
        ]
        return {"commands": summaries, **({"nextToken": token} if token else {})}, []

    def _op_delete_command(self, params: dict[str, Any], now: float) -> tuple[dict[str, Any], list[Out]]:
        command_id = _ident(params, "commandId")
        cmd = self.commands.get(command_id)
        if cmd is None:
            # AWS lists no ResourceNotFoundException for DeleteCommand: deleting nothing succeeds
            return {"statusCode": 204}, []
        if cmd["deprecated"] and now - float(cmd.get("deprecatedAt", now)) >= DELETION_DELAY_S:
            del self.commands[command_id]
            self._touch("command", command_id, None)
            return {"statusCode": 204}, []
        if not cmd.get("pendingDeletion"):
            cmd["pendingDeletion"] = True
            cmd["deleteAt"] = now + DELETION_DELAY_S
            cmd["lastUpdatedAt"] = now
            self._touch("command", command_id, cmd)
            self._arm_command(cmd)
        return {"statusCode": 202}, []

    def _op_start_command_execution(
        self, params: dict[str, Any], now: float
    ) -> tuple[dict[str, Any], list[Out]]:
        target_arn = _str(params, "targetArn", required=True, max_len=2048)
        command_arn = _str(params, "commandArn", required=True)
        token = params.get("clientToken")
        if token is not None and (not isinstance(token, str) or not TOKEN_RE.fullmatch(token)):
            raise validation("clientToken must be 1-64 printable ASCII characters")
        timeout = params.get("executionTimeoutSeconds")
        timeout_s = (
            DEFAULT_TIMEOUT_S
            if timeout is None
            else _int(timeout, "executionTimeoutSeconds", 1, MAX_TIMEOUT_S)
        )
        parameters = params.get("parameters")
        if parameters is not None:
            if not isinstance(parameters, Mapping) or not parameters:
                raise validation("parameters must be a non-empty map of name -> value")
            for name in parameters:
                if not isinstance(name, str) or not PARAM_NAME_RE.fullmatch(name):
                    raise validation(f"parameter name {name!r} must be 1-192 characters of [.$a-zA-Z0-9_-]")
            parameters = {name: _value(v, f"parameters.{name}") for name, v in parameters.items()}
        if token is not None and token in self._tokens:
            earlier = self.executions.get(self._tokens[token])
            if earlier is not None:
                same = (
                    earlier["targetArn"] == target_arn
                    and earlier["commandArn"] == command_arn
                    and earlier.get("parameters") == parameters
                    and earlier["executionTimeoutSeconds"] == timeout_s
                )
                if not same:
                    raise conflict(f"clientToken {token} was used for a different command execution")
                return {"executionId": earlier["executionId"]}, []
        command_id = self._command_id(command_arn)
        device_type, device = self._target(target_arn)
        cmd = self.commands[command_id]
        if cmd.get("pendingDeletion"):
            raise conflict(f"command {command_id} is pending deletion")
        if cmd["deprecated"]:
            raise conflict(f"command {command_id} is deprecated")
        for spec in cmd.get("mandatoryParameters", ()):
            if spec["name"] not in (parameters or {}) and "defaultValue" not in spec and "value" not in spec:
                raise validation(f"parameter {spec['name']} is mandatory for command {command_id}")
        execution_id = self.new_id()
        ex: Record = {
            "executionId": execution_id,
            "commandId": command_id,
            "commandArn": cmd["commandArn"],
            "targetArn": target_arn,
            "deviceType": device_type,
            "device": device,
            "status": "CREATED",
            "executionTimeoutSeconds": timeout_s,
            "createdAt": now,
            "lastUpdatedAt": now,
            "timeToLive": now + RETENTION_S,
        }
        if parameters:
            ex["parameters"] = parameters
        if token is not None:
            ex["clientToken"] = token
            self._tokens[token] = execution_id
        self.executions[execution_id] = ex
        self._touch("execution", execution_id, ex)
        self._arm_execution(ex)
        content = base64.b64decode(cmd["payload"]["content"])
        out = [(self._request_topic(ex, cmd["payload"].get("contentType"), content), content)]
        out.append(self._event(ex, now))
        return {"executionId": execution_id}, out

    @staticmethod
    def _request_topic(ex: Mapping[str, Any], content_type: str | None, content: bytes) -> str:
        base = f"$aws/commands/{ex['deviceType']}/{ex['device']}/executions/{ex['executionId']}/request"
        kind = (content_type or "").split(";")[0].strip().lower()
        if kind == "application/json":
            return base + "/json"
        if kind == "application/cbor":
            return base + "/cbor"
        if not kind:
            try:
                json.loads(content)
            except ValueError:
                return base
            return base + "/json"
        return base

    def _execution(self, params: Mapping[str, Any]) -> Record:
        execution_id = _ident(params, "executionId")
        target_arn = _str(params, "targetArn", required=True, max_len=2048)
        ex = self.executions.get(execution_id)
        if ex is None or ex["targetArn"] != target_arn:
            raise not_found(f"command execution {execution_id} does not exist for target {target_arn}")
        return ex

    def _op_get_command_execution(
        self, params: dict[str, Any], now: float
    ) -> tuple[dict[str, Any], list[Out]]:
        ex = self._execution(params)
        include = params.get("includeResult")
        include_result = include is None or include is True or str(include).lower() == "true"
        keys = (
            "executionId",
            "commandArn",
            "targetArn",
            "status",
            "statusReason",
            "parameters",
            "executionTimeoutSeconds",
            "createdAt",
            "lastUpdatedAt",
            "startedAt",
            "completedAt",
            "timeToLive",
        )
        result = {k: copy.deepcopy(ex[k]) for k in keys if k in ex}
        if include_result and ex.get("result"):
            result["result"] = copy.deepcopy(ex["result"])
        return result, []

    def _op_list_command_executions(
        self, params: dict[str, Any], now: float
    ) -> tuple[dict[str, Any], list[Out]]:
        namespace = params.get("namespace")
        if namespace is not None and namespace not in NAMESPACES:
            raise validation(f"namespace must be one of {', '.join(NAMESPACES)}")
        status = params.get("status")
        if status is not None and status not in STATUSES:
            raise validation(f"status must be one of {', '.join(STATUSES)}")
        target_arn = _str(params, "targetArn", max_len=2048)
        command_arn = _str(params, "commandArn")
        started = _time_filter(params.get("startedTimeFilter"), "startedTimeFilter")
        completed = _time_filter(params.get("completedTimeFilter"), "completedTimeFilter")
        descending = _sort_order(params)

        def within(value: Any, bounds: tuple[float | None, float | None]) -> bool:
            after, before = bounds
            if after is None and before is None:
                return True
            if value is None:
                return False
            return (after is None or float(value) >= after) and (before is None or float(value) <= before)

        items = [
            ex
            for ex in self.executions.values()
            if (namespace in (None, "AWS-IoT"))
            and (status is None or ex["status"] == status)
            and (target_arn is None or ex["targetArn"] == target_arn)
            and (command_arn is None or ex["commandArn"] == command_arn)
            and within(ex.get("startedAt"), started)
            and within(ex.get("completedAt"), completed)
        ]
        items.sort(key=lambda e: (e["createdAt"], e["executionId"]), reverse=descending)
        page, token = _page(params, items, "executions")
        keys = ("commandArn", "executionId", "targetArn", "status", "createdAt", "startedAt", "completedAt")
        summaries = [{k: ex[k] for k in keys if k in ex} for ex in page]
        return {"commandExecutions": summaries, **({"nextToken": token} if token else {})}, []

    def _op_delete_command_execution(
        self, params: dict[str, Any], now: float
    ) -> tuple[dict[str, Any], list[Out]]:
        ex = self._execution(params)
        if ex["status"] not in TERMINAL:
            raise conflict(f"command execution {ex['executionId']} is {ex['status']}: not deletable yet")
        del self.executions[ex["executionId"]]
        if ex.get("clientToken"):
            self._tokens.pop(ex["clientToken"], None)
        self._touch("execution", ex["executionId"], None)
        return {}, []

    # device side -----------------------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, now: float) -> list[Out]:
        """A device's UpdateCommandExecution; [] for any other topic (our own requests and answers too)."""
        match = RESPONSE_RE.fullmatch(topic)
        if match is None:
            return []
        device_type, device, execution_id = match.groups()
        base = f"$aws/commands/{device_type}/{device}/executions/{execution_id}/response"

        def rejected(code: str, message: str) -> list[Out]:
            body = {"error": code, "errorMessage": message, "executionId": execution_id}
            return [(base + "/rejected/json", _json(body))]

        try:
            doc = json.loads(payload)
        except ValueError:
            return rejected("InvalidJson", "the update is not valid UTF-8 JSON")
        if not isinstance(doc, Mapping):
            return rejected("InvalidRequest", "the update must be a JSON object")
        ex = self.executions.get(execution_id)
        if ex is None or ex["deviceType"] != device_type or ex["device"] != device:
            return rejected("ResourceNotFound", f"command execution {execution_id} does not exist")
        status = doc.get("status")
        if status not in DEVICE_STATUSES:
            return rejected(
                "InvalidRequest",
                f"status must be one of {', '.join(sorted(DEVICE_STATUSES))}, got {status!r}",
            )
        reason = doc.get("statusReason")
        if reason is not None:
            problem = self._reason_problem(reason)
            if problem:
                return rejected("InvalidRequest", problem)
        result = None
        if doc.get("result") is not None:
            try:
                result = _wire_result(doc["result"])
            except ValueError as exc:
                return rejected("InvalidRequest", str(exc))
        current = ex["status"]
        if current in TERMINAL and not (current == "TIMED_OUT" and ex.get("cloudTimedOut")):
            # AWS's examples: SUCCEEDED -> IN_PROGRESS and any update of a device's TIMED_OUT are invalid
            # transitions; another terminal status after a terminal one finds the terminal state reached
            if status == "IN_PROGRESS" or current == "TIMED_OUT":
                return rejected(
                    "InvalidStateTransition", f"command execution {execution_id} is {current}: not {status}"
                )
            return rejected(
                "TerminalStateReached", f"command execution {execution_id} is {current}: no further updates"
            )
        if current == "TIMED_OUT" and status not in TERMINAL:
            return rejected(
                "InvalidStateTransition",
                f"command execution {execution_id} timed out: only a terminal status may follow, not {status}",
            )
        if result is not None:
            ex["result"] = {**ex.get("result", {}), **result}
        ex["cloudTimedOut"] = False  # after the cloud's TIMED_OUT, this terminal update is the last word
        out = [(base + "/accepted/json", _json({"executionId": execution_id}))]
        return out + self._set_status(ex, status, dict(reason) if reason is not None else None, now)

    @staticmethod
    def _reason_problem(reason: Any) -> str | None:
        if not isinstance(reason, Mapping):
            return "statusReason must be an object with reasonCode and reasonDescription"
        code = reason.get("reasonCode")
        if not isinstance(code, str) or not REASON_CODE_RE.fullmatch(code):
            return "statusReason.reasonCode must be 1-64 characters of [A-Z0-9_-]"
        description = reason.get("reasonDescription")
        if description is not None and (not isinstance(description, str) or len(description) > 1024):
            return "statusReason.reasonDescription must be a string of at most 1024 characters"
        return None

    def _set_status(self, ex: Record, status: str, reason: dict[str, Any] | None, now: float) -> list[Out]:
        """Record a status (and reason) and return its event; no event when the status did not change."""
        previous = ex["status"]
        ex["status"] = status
        if reason is not None:
            ex["statusReason"] = {k: v for k, v in reason.items() if k in ("reasonCode", "reasonDescription")}
        elif status != previous:
            ex.pop("statusReason", None)
        ex["lastUpdatedAt"] = now
        if status != "CREATED" and "startedAt" not in ex and not ex.get("cloudTimedOut"):
            ex["startedAt"] = now
        if status in TERMINAL:
            ex["completedAt"] = now
        self._touch("execution", ex["executionId"], ex)
        return [self._event(ex, now)] if status != previous else []

    def _event(self, ex: Mapping[str, Any], now: float) -> Out:
        body: dict[str, Any] = {"executionId": ex["executionId"], "status": ex["status"]}
        if ex.get("statusReason"):
            body["statusReason"] = {"reasonDescription": "", **ex["statusReason"]}
        body.update(
            eventType="COMMAND_EXECUTION",
            commandArn=ex["commandArn"],
            targetArn=ex["targetArn"],
            timestamp=int(now * 1000),
        )
        return f"$aws/events/commandExecution/{ex['commandId']}/{ex['status']}", _json(body)

    # helpers for the service and tests ------------------------------------------------------------------
    def executions_of(self, command_id: str) -> Iterable[Record]:
        return (ex for ex in self.executions.values() if ex["commandId"] == command_id)
