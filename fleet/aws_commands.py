"""``roomba-fleet command ... --via commands``: the same command through AWS IoT Commands instead of the shadow.

A command is stored once per payload (CreateCommand, then reused): ``roomba-<action>`` for an action without
arguments, ``roomba-<action>-<hash>`` for one with them (AWS IoT Commands payloads are static). Each robot
gets a command execution (StartCommandExecution on the Jobs data plane, its ``clientToken`` derived from the
command id and the thing, so running the same invocation again does not start a second execution), and
``--wait`` polls GetCommandExecution until it ends: ``SUCCEEDED`` → ``done``, ``FAILED`` → ``failed``,
``REJECTED`` → ``rejected``, ``TIMED_OUT`` → ``timeout`` (the execution's own timeout is ``--timeout``, so
the cloud reports it, with AWS's ``$NO_RESPONSE_FROM_DEVICE``). Everything goes through the local cloud's control
plane with its ``local`` profile credentials (:class:`localcloud.apiclient.ApiClient`), exactly as boto3 would
call AWS; docs/commands.md has the protocol.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from localcloud.awsapi.errors import ApiError
from localcloud.layout import AWS_ACCOUNT, AWS_REGION

POLL_S = 0.2
GRACE_S = 3.0
"""How long past ``--timeout`` to keep polling: the cloud, which times the execution out, has the last word."""
FINAL = {"SUCCEEDED": "done", "FAILED": "failed", "REJECTED": "rejected"}
MAX_EXECUTION_TIMEOUT_S = 12 * 3600
ARN = f"arn:aws:iot:{AWS_REGION}:{AWS_ACCOUNT}"


class Api(Protocol):
    def call(
        self, operation: str, params: Mapping[str, Any] | None = None, *, service: str = "iot"
    ) -> dict[str, Any]: ...


def payload_of(command: Mapping[str, Any]) -> dict[str, Any]:
    """What the robot gets: the command document without its id (the execution id is the id)."""
    return {k: v for k, v in command.items() if k != "id"}


def command_id_for(payload: Mapping[str, Any]) -> str:
    action = str(payload["action"])
    if set(payload) == {"action"}:
        return f"roomba-{action}"
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
    return f"roomba-{action.replace('_', '-')}-{digest}"


def client_token(command_id: str, thing: str) -> str:
    return hashlib.sha256(f"{command_id}|{thing}".encode()).hexdigest()[:40]


def execution_timeout(command: Mapping[str, Any], timeout: float) -> int:
    """The execution's own timeout: the CLI's ``--timeout``, and at least a drive's duration plus 5 s."""
    seconds = math.ceil(timeout)
    if command.get("action") == "drive":
        seconds = max(seconds, math.ceil(float(command.get("duration_ms", 0)) / 1000.0) + 5)
    return min(max(seconds, 1), MAX_EXECUTION_TIMEOUT_S)


def ensure_command(api: Api, payload: Mapping[str, Any]) -> str:
    """The command's ARN, creating it when it does not exist yet."""
    command_id = command_id_for(payload)
    try:
        return str(api.call("GetCommand", {"commandId": command_id})["commandArn"])
    except ApiError as exc:
        if exc.code != "ResourceNotFoundException":
            raise
    content = base64.b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
    params = {
        "commandId": command_id,
        "displayName": f"roomba {payload['action']}"[:64],
        "description": "created by roomba-fleet command --via commands",
        "payload": {"content": content, "contentType": "application/json"},
    }
    try:
        return str(api.call("CreateCommand", params)["commandArn"])
    except ApiError as exc:
        if exc.code != "ConflictException":  # created meanwhile by another invocation
            raise
        return f"{ARN}:command/{command_id}"


def send(
    api: Api,
    things: Sequence[str],
    command: Mapping[str, Any],
    *,
    wait: bool,
    timeout: float,
    outcome: Callable[[str], Any],
    on_outcome: Callable[[Any], None],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Start ``command`` on every thing through AWS IoT Commands; with ``wait``, poll until each execution
    ends or ``timeout`` passes. ``outcome(thing)`` builds the caller's per-robot result object (with
    ``status``, ``reason``, ``seconds``, ``reported``)."""
    payload = payload_of(command)
    command_arn = ensure_command(api, payload)
    seconds = execution_timeout(command, timeout)
    outcomes = {t: outcome(t) for t in things}
    started: dict[str, tuple[str, float]] = {}
    for thing in things:
        params = {
            "targetArn": f"{ARN}:thing/{thing}",
            "commandArn": command_arn,
            "executionTimeoutSeconds": seconds,
            "clientToken": client_token(str(command["id"]), thing),
        }
        out = outcomes[thing]
        try:
            execution_id = str(
                api.call("StartCommandExecution", params, service="iot-jobs-data")["executionId"]
            )
        except ApiError as exc:
            out.status, out.reason = "not-sent", f"{exc.code}: {exc.message}"
            on_outcome(out)
            continue
        started[thing] = (execution_id, clock())
        out.reported = {"executionId": execution_id, "status": "CREATED"}
        if not wait:
            out.status = "sent"
            on_outcome(out)
    if not wait:
        return outcomes
    deadline = clock() + timeout + GRACE_S
    pending = dict(started)
    while pending:
        for thing, (execution_id, at) in list(pending.items()):
            out = outcomes[thing]
            try:
                got = api.call(
                    "GetCommandExecution", {"executionId": execution_id, "targetArn": f"{ARN}:thing/{thing}"}
                )
            except ApiError as exc:
                out.status, out.reason = "failed", f"{exc.code}: {exc.message}"
                del pending[thing]
                on_outcome(out)
                continue
            status = str(got.get("status"))
            reason = got.get("statusReason") or {}
            out.reported = {
                "executionId": execution_id,
                "status": status,
                **({"statusReason": reason} if reason else {}),
            }
            if status in FINAL or status == "TIMED_OUT":
                out.status = FINAL.get(status, "timeout")
                out.reason = reason.get("reasonDescription") or reason.get("reasonCode") or None
                out.seconds = clock() - at
                del pending[thing]
                on_outcome(out)
        if not pending:
            break
        if clock() >= deadline:
            for thing, (_, at) in pending.items():
                out = outcomes[thing]
                out.status, out.reason, out.seconds = (
                    "timeout",
                    "no final status within --timeout",
                    clock() - at,
                )
                on_outcome(out)
            break
        sleep(POLL_S)
    return outcomes
