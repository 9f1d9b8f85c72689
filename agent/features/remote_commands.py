"""Robot commands through AWS IoT Commands (feature ``aws-commands``), beside the shadow's.

AWS IoT Device Management Commands delivers a command execution on
``$aws/commands/things/{thing}/executions/{executionId}/request/json``; the device answers with
UpdateCommandExecution on ``.../response/json`` and the service confirms each update on
``.../response/accepted/json`` or ``.../response/rejected/json`` (docs/commands.md has the protocol and its
sources). The payload is a command document without its id (``{"action": "clean"}``); the execution id is
the command id. It goes through the shadow commands' validation (:func:`agent.commands.parse_command`), the
same durable ledger (its id is recorded before the robot is told, so a redelivered request, or one that comes
again after a restart, is answered from the ledger and never runs twice) and the same runner
(:class:`agent.features.commands.Commands`), which tells this feature each outcome. A request in another
payload format (``.../request/cbor``, ``.../request``) is answered ``REJECTED`` rather than left to time out.

Updates go out one at a time per execution: the next one only after the service answered the previous one
(AWS answers quick successive updates with ``DataConflict``); a newer update replaces one still waiting, and
the one in flight is sent again after a reconnect.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.commands import Rejected, parse_command
from agent.features import FeatureRegistry
from agent.features.commands import Commands
from agent.metrics import Metrics
from agent.mqtt import MqttConnection
from agent.parts import AgentLog
from agent.pump import Pump
from agent.store import Ledger
from agent.sync import RunCommand

VIA = "aws-commands"  # marks this channel's commands in the ledger
STATUS_OF = {"accepted": "IN_PROGRESS", "done": "SUCCEEDED", "failed": "FAILED", "rejected": "REJECTED"}
REASON_CODES = {"FAILED": "COMMAND_FAILED", "REJECTED": "INVALID_COMMAND"}
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT"})
RETRIED_ERRORS = frozenset({"DataConflict", "RequestThrottled", "InternalError"})
RETRY_S = 1.0
QOS = 1


def executions_prefix(thing: str) -> str:
    return f"$aws/commands/things/{thing}/executions/"


def update_body(status: str, reason_code: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """An UpdateCommandExecution payload as AWS's device SDKs write it."""
    body: dict[str, Any] = {"status": status}
    if reason_code is not None:
        body["statusReason"] = {"reasonCode": reason_code, "reasonDescription": (reason or "")[:1024]}
    return body


@dataclass
class _Execution:
    """Updates of one execution still to be confirmed by the service."""

    id: str
    inflight: dict[str, Any] | None = None
    pending: dict[str, Any] | None = None
    retry: asyncio.TimerHandle | None = None


class RemoteCommands:
    name = "aws-commands"

    def __init__(
        self,
        *,
        thing: str,
        features: FeatureRegistry,
        commands: Commands,
        ledger: Ledger,
        mqtt: MqttConnection,
        pump: Pump,
        metrics: Metrics,
        log: AgentLog,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.thing = thing
        self.commands = commands
        self.ledger = ledger
        self.mqtt = mqtt
        self.pump = pump
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.prefix = executions_prefix(thing)
        # every payload format (request, request/json, request/cbor: a robot answers a format it cannot
        # read with REJECTED rather than letting it time out), and both answers, in two filters
        self.filters = (self.prefix + "+/request/#", self.prefix + "+/response/+/json")
        self.open: dict[str, _Execution] = {}
        self._running = False
        features.listen(self.prefix, self.on_message)
        features.on_connection(self.on_connected)
        commands.on_outcome(self.on_outcome)

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        """Send what still waits for an answer now: after this process no one would send it."""
        self._running = False
        for ex in self.open.values():
            if ex.retry is not None:
                ex.retry.cancel()
            if ex.pending is not None:
                body, ex.pending = ex.pending, None
                self._send(ex, body)

    # mqtt ----------------------------------------------------------------------------------------------
    def on_connected(self, session_present: bool) -> None:
        for fut in self.mqtt.subscribe(self.filters, QOS):
            fut.add_done_callback(self.pump.publish_done)
        for ex in list(self.open.values()):
            if ex.inflight is not None:
                self._send(ex, ex.inflight)  # its answer may have been lost with the connection
            elif ex.pending is not None:
                self._send(ex, ex.pending)
                ex.pending = None

    def on_message(self, topic: str, payload: bytes) -> None:
        rest = topic[len(self.prefix) :].split("/")
        if len(rest) == 3 and rest[1:] == ["request", "json"]:
            self.pump.received_at = time.perf_counter()
            self.on_request(rest[0], payload)
        elif rest[1:2] == ["request"] and len(rest) <= 3:
            self.on_unreadable(rest[0], rest[2] if len(rest) == 3 else None)
        elif (
            len(rest) == 4
            and rest[1] == "response"
            and rest[3] == "json"
            and rest[2] in ("accepted", "rejected")
        ):
            self.on_answer(rest[0], rest[2] == "accepted", payload)

    def _topic(self, execution_id: str) -> str:
        return f"{self.prefix}{execution_id}/response/json"

    def _send(self, ex: _Execution, body: dict[str, Any]) -> None:
        ex.inflight = body
        if not self.mqtt.connected:
            return  # sent by on_connected
        self.metrics.inc("aws_command_updates")
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.mqtt.publish(self._topic(ex.id), payload, QOS).add_done_callback(self.pump.publish_done)

    def _update(self, execution_id: str, body: dict[str, Any]) -> None:
        """Send ``body`` now, or once the service answered the update in flight (a newer one replaces an
        older one still waiting)."""
        ex = self.open.setdefault(execution_id, _Execution(execution_id))
        if ex.inflight is None:
            self._send(ex, body)
        else:
            ex.pending = body

    def on_answer(self, execution_id: str, accepted: bool, payload: bytes) -> None:
        ex = self.open.get(execution_id)
        if ex is None or ex.inflight is None:
            return  # an answer to an update of an earlier run, or a duplicate answer
        sent, ex.inflight = ex.inflight, None
        if not accepted:
            try:
                doc = json.loads(payload)
            except ValueError:
                doc = {}
            error = doc.get("error") if isinstance(doc, Mapping) else None
            self.metrics.inc("aws_command_updates_rejected")
            self.log.warning(
                "aws_command.update_rejected",
                execution_id=execution_id,
                status=sent.get("status"),
                error=error,
                message=doc.get("errorMessage") if isinstance(doc, Mapping) else None,
            )
            if error in RETRIED_ERRORS and ex.pending is None:
                ex.pending = sent
                ex.retry = self.loop.call_later(RETRY_S, self._retry, execution_id)
                return
        if ex.pending is not None:
            body, ex.pending = ex.pending, None
            self._send(ex, body)
        elif sent.get("status") in TERMINAL:
            del self.open[execution_id]

    def _retry(self, execution_id: str) -> None:
        ex = self.open.get(execution_id)
        if ex is None or not self._running:
            return
        ex.retry = None
        if ex.inflight is None and ex.pending is not None:
            body, ex.pending = ex.pending, None
            self._send(ex, body)

    # commands ------------------------------------------------------------------------------------------
    def on_request(self, execution_id: str, payload: bytes) -> None:
        self.metrics.inc("aws_commands_received")
        entry = self.ledger.get(execution_id)
        if entry is not None:
            # redelivered, or again after a restart: the recorded outcome, never a second run
            self.metrics.inc("aws_commands_duplicate")
            self.log.info("aws_command.duplicate", execution_id=execution_id, status=entry.status)
            if execution_id not in self.open:
                status = STATUS_OF.get(entry.status, "FAILED")
                self._update(execution_id, update_body(status, REASON_CODES.get(status), entry.reason))
            return
        try:
            doc: Any = json.loads(payload)
        except ValueError:
            doc = None
        if not isinstance(doc, Mapping):
            parsed: Any = Rejected(
                execution_id, "command: the payload must be a JSON object with an action", {}
            )
        else:
            parsed = parse_command({**doc, "id": execution_id})
        if isinstance(parsed, Rejected):
            echo = {**parsed.echo, "id": execution_id}
            self.ledger.begin(
                execution_id, str(echo.get("action", "?")), {**echo, "via": VIA}, "rejected", parsed.reason
            )
            self.metrics.inc("aws_commands_rejected")
            self.log.warning("aws_command.rejected", execution_id=execution_id, reason=parsed.reason)
            self._update(execution_id, update_body("REJECTED", REASON_CODES["REJECTED"], parsed.reason))
            return
        if not self.ledger.begin(parsed.id, parsed.action, {**parsed.document, "via": VIA}):
            self.metrics.inc("aws_commands_duplicate")
            return
        self.metrics.inc("aws_commands_accepted")
        self.log.info("aws_command.accepted", execution_id=execution_id, action=parsed.action)
        self._update(execution_id, update_body("IN_PROGRESS"))
        self.commands.run(RunCommand(parsed))

    def on_unreadable(self, execution_id: str, payload_format: str | None) -> None:
        """A request in a format other than JSON: REJECTED, recorded like any rejected command."""
        self.metrics.inc("aws_commands_received")
        if self.ledger.get(execution_id) is not None or execution_id in self.open:
            return
        what = f"{payload_format.upper()} payloads" if payload_format else "payloads of that content type"
        reason = f"command: the robot takes JSON commands (application/json), not {what}"
        self.ledger.begin(execution_id, "?", {"id": execution_id, "via": VIA}, "rejected", reason)
        self.metrics.inc("aws_commands_rejected")
        self.log.warning("aws_command.rejected", execution_id=execution_id, reason=reason)
        self._update(execution_id, update_body("REJECTED", REASON_CODES["REJECTED"], reason))

    def on_outcome(
        self, command_id: str, status: str, reason: str | None, document: Mapping[str, Any] | None
    ) -> None:
        """Every command's outcome (:meth:`Commands.on_outcome`): answer ours."""
        if command_id not in self.open and not (document is not None and document.get("via") == VIA):
            return
        final = STATUS_OF.get(status, "FAILED")
        code = REASON_CODES.get(final)
        if document is not None:
            code = "INTERRUPTED_BY_RESTART"
        self.log.info("aws_command.finished", execution_id=command_id, status=final, reason=reason)
        self._update(command_id, update_body(final, code, reason))
