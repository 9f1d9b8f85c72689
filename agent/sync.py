"""Two-way shadow sync as a sans-I/O state machine: messages, snapshots and clock ticks in, effects out.

The robot owns ``reported``, the fleet owns ``desired``. Desired is handled *level-triggered*: each full
desired document (from ``get/accepted`` or ``update/documents``, never the partial ``delta``) is reconciled
key by key, and a key acts only when its value differs from the last one handled. Commands are
additionally gated by the durable ledger, so an id runs at most once across redelivery, reconnects and
restarts. Once the ledger holds a command's id, the robot clears ``desired.command`` with an update guarded by
the shadow version it knows (a newer command written meanwhile makes it fail with 409, never wiped), so the
fleet's next command starts from an empty object; fields an earlier command left behind when the clear has
not happened yet are told apart by the shadow's metadata timestamps (``agent.commands.current_fields``). A key
that leaves desired takes its ``reported.errors`` entry with it. Reported goes up as diffs against what the
service acknowledged, coalesced and rate-limited.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.commands import Command, Rejected, current_fields, parse_command, validate_sections
from agent.metrics import Metrics
from agent.model import diff
from base.backoff import Backoff, TokenBucket
from shadow import document as shadowdoc
from shadow.topics import shadow_prefix

CONFIG_SHADOW = "config"
URGENT_KEYS = frozenset({"command", "schedule", "leds", "errors", "mission", "link"})
REQUEST_TIMEOUT_S = 10.0


class LedgerLike(Protocol):
    def get(self, command_id: str) -> Any: ...
    def begin(
        self,
        command_id: str,
        action: str,
        document: dict[str, Any],
        status: str = ...,
        reason: str | None = ...,
    ) -> bool: ...
    def finish(self, command_id: str, status: str, reason: str | None = ...) -> None: ...


# effects ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0


@dataclass(frozen=True)
class Subscribe:
    topics: tuple[str, ...]


@dataclass(frozen=True)
class RunCommand:
    command: Command


@dataclass(frozen=True)
class ApplySetting:
    """Apply a non-command desired key on the robot (``schedule``, ``leds``) or the agent (``config``)."""

    shadow: str | None
    key: str
    value: Any


@dataclass(frozen=True)
class CommandLog:
    """One canonical log line per command."""

    command_id: str | None
    action: str | None
    status: str
    reason: str | None


@dataclass(frozen=True)
class Notice:
    """Something the operator should see in the log (a rejected shadow request and what happens next)."""

    event: str
    fields: tuple[tuple[str, Any], ...]


Effect = Publish | Subscribe | RunCommand | ApplySetting | CommandLog | Notice


def prune(value: Mapping[str, Any]) -> dict[str, Any]:
    """Drop None leaves and empty objects: the shadow cannot store them, so they would never be acked."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            item = prune(item)
            if not item:
                continue
        elif item is None:
            continue
        out[key] = item
    return out


def _desired_metadata(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """``metadata.desired`` of a full document (``get/accepted``, or ``update/documents``' ``current``)."""
    metadata = doc.get("metadata")
    desired = metadata.get("desired") if isinstance(metadata, Mapping) else None
    return desired if isinstance(desired, Mapping) else {}


def _fp(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class _Request:
    """The one update in flight on a shadow: a reported ``patch``, or (``clears`` set) the clear of the
    ``desired.command`` whose fingerprint ``clears`` is."""

    token: str
    patch: dict[str, Any]
    sent: float
    clears: str | None = None


@dataclass
class _Side:
    """One shadow (classic or a named one): what we report and what the service acknowledged."""

    name: str | None
    prefix: str
    current: dict[str, Any] = field(default_factory=dict)
    acked: dict[str, Any] | None = None  # None: not known yet (before get)
    version: int = 0
    handled: dict[str, str] = field(default_factory=dict)
    inflight: _Request | None = None
    get_token: tuple[str, float] | None = None
    synced: bool = False
    retry_at: float = 0.0
    last_sensor_publish: float = -1e9
    last_publish: float = -1e9


class ShadowSync:
    def __init__(
        self,
        thing: str,
        ledger: LedgerLike,
        metrics: Metrics,
        *,
        report_min_s: float = 1.0,
        heartbeat_s: float = 300.0,
        rate_per_s: float = 10.0,
        qos: int = 1,
        settings: Mapping[str, Any] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.wall_clock = wall_clock
        self.thing = thing
        self.ledger = ledger
        self.metrics = metrics
        self.report_min_s = report_min_s
        self.heartbeat_s = heartbeat_s
        self.qos = qos
        self.bucket = TokenBucket(rate_per_s, burst=max(1.0, rate_per_s))
        self.backoff = Backoff(base_s=0.5, cap_s=30.0)
        self.classic = _Side(None, shadow_prefix(thing))
        self.config = _Side(CONFIG_SHADOW, shadow_prefix(thing, CONFIG_SHADOW))
        self.config.current = dict(settings or {})
        self.connected = False
        self._token_seq = 0
        self._boot = format(int(time.time() * 1000) % 0xFFFFFFFF, "x")
        self.active_commands: dict[str, Command] = {}
        self.clear_command: str | None = None  # fingerprint of the desired.command to clear once recorded
        self.get_timeouts = 0  # consecutive: a connected client whose requests vanish is wedged

    # topics ------------------------------------------------------------------------------------------
    def subscriptions(self) -> tuple[str, ...]:
        out: list[str] = []
        for side in (self.classic, self.config):
            out += [
                f"{side.prefix}/get/accepted",
                f"{side.prefix}/get/rejected",
                f"{side.prefix}/update/accepted",
                f"{side.prefix}/update/rejected",
                f"{side.prefix}/update/documents",
            ]
        return tuple(out)

    def _token(self) -> str:
        self._token_seq += 1
        return f"{self._boot}-{self._token_seq}"

    # inputs ------------------------------------------------------------------------------------------
    def on_connected(self, session_present: bool, now: float) -> list[Effect]:
        """Every (re)connect: resubscribe unless the session survived, then get both shadows."""
        self.connected = True
        effects: list[Effect] = []
        if not session_present:
            effects.append(Subscribe(self.subscriptions()))
        for side in (self.classic, self.config):
            side.synced = False
            side.inflight = None
            side.acked = None
            effects.append(self._get(side, now))
        return effects

    def on_disconnected(self) -> None:
        self.connected = False
        for side in (self.classic, self.config):
            side.inflight = None
            side.get_token = None

    def _get(self, side: _Side, now: float) -> Publish:
        token = self._token()
        side.get_token = (token, now)
        self.metrics.inc("shadow_get_sent")
        return Publish(f"{side.prefix}/get", json.dumps({"clientToken": token}).encode(), self.qos)

    def probe(self, now: float) -> list[Effect]:
        """Application-level health check (SDK issue #623: a client can stop receiving silently): a get of
        the classic shadow. Its answer also catches up on any desired change whose document was missed."""
        side = self.classic
        if not self.connected or not side.synced or side.get_token is not None:
            return []
        self.metrics.inc("health_probes")
        return [self._get(side, now)]

    def set_robot_state(self, state: Mapping[str, Any]) -> None:
        """The sensor-derived reported keys (model.reported_state); published at most every report_min_s."""
        for key, value in state.items():
            self.classic.current[key] = value

    def set_config_effective(self, settings: Mapping[str, Any]) -> None:
        self.config.current.update(settings)

    def on_message(self, topic: str, payload: bytes, now: float) -> list[Effect]:
        side = (
            self.classic
            if topic.startswith(self.classic.prefix + "/") and "/name/" not in topic
            else (self.config if topic.startswith(self.config.prefix + "/") else None)
        )
        if side is None:
            self.metrics.inc("mqtt_unexpected_topic")
            return []
        try:
            doc = json.loads(payload)
            if not isinstance(doc, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            self.metrics.inc("shadow_bad_payload")
            return []
        op = topic[len(side.prefix) + 1 :]
        token = doc.get("clientToken")
        if op == "get/accepted":
            if side.get_token is None or token != side.get_token[0]:
                return []
            return self._on_get(side, doc, now)
        if op == "get/rejected":
            if side.get_token is None or token != side.get_token[0]:
                return []
            side.get_token = None
            if doc.get("code") == 404:
                return self._on_get(side, {"state": {}, "version": 0}, now)
            return self._on_error(side, doc, now, "get")
        if op == "update/accepted":
            if side.inflight is None or token != side.inflight.token:
                return []
            request, side.inflight = side.inflight, None
            side.version = max(side.version, int(doc.get("version") or 0))
            self.metrics.observe_rtt(max(0.0, now - request.sent))
            self.backoff.reset()
            if request.clears is not None:
                self.metrics.inc("command_cleared")
                if self.clear_command == request.clears:
                    self.clear_command = None
                return []
            side.acked = shadowdoc.merge_state(side.acked or {}, request.patch)
            self.metrics.inc("shadow_update_accepted")
            return []
        if op == "update/rejected":
            if side.inflight is None or token != side.inflight.token:
                return []
            return self._on_error(side, doc, now, "update")
        if op == "update/documents":
            current = doc.get("current") or {}
            version = current.get("version")
            if not isinstance(version, int) or version <= side.version:
                self.metrics.inc("shadow_stale_dropped")
                return []
            side.version = version
            desired = (current.get("state") or {}).get("desired") or {}
            return self._reconcile(side, desired, now, _desired_metadata(current))
        return []

    def _on_get(self, side: _Side, doc: Mapping[str, Any], now: float) -> list[Effect]:
        side.get_token = None
        self.get_timeouts = 0
        state = doc.get("state") or {}
        if side.synced:
            # a health probe (or a retried get): catch up on desired, keep the acknowledged reported
            side.version = max(side.version, int(doc.get("version") or 0))
            self.metrics.inc("shadow_get_accepted")
            return self._reconcile(side, state.get("desired") or {}, now, _desired_metadata(doc))
        side.acked = dict(state.get("reported") or {})
        side.version = int(doc.get("version") or 0)
        side.synced = True
        if side is self.classic and "command" not in side.current:
            self._adopt_last_answer(side.acked.get("command"))
        # publish the full current state on every (re)connect, not only the diff
        side.acked = {k: v for k, v in side.acked.items() if k not in side.current}
        self.metrics.inc("shadow_get_accepted")
        return self._reconcile(side, state.get("desired") or {}, now, _desired_metadata(doc))

    def _adopt_last_answer(self, last: Any) -> None:
        """After a restart: keep answering the last command (its desired copy is cleared, so nothing else
        would bring it back), with the ledger's outcome when the ledger still has it."""
        if not isinstance(last, Mapping):
            return
        cid = last.get("id")
        entry = self.ledger.get(cid) if isinstance(cid, str) and cid else None
        if entry is None:
            self.classic.current["command"] = dict(last)
        else:
            self.classic.current["command"] = {
                **entry.document,
                "status": entry.status,
                "reason": entry.reason,
            }

    def _on_error(self, side: _Side, doc: Mapping[str, Any], now: float, op: str) -> list[Effect]:
        """A rejected request, by its error code (AWS IoT Developer Guide, "Device Shadow error messages"):
        429 waits for the bucket and backs off, 409 (version conflict) re-reads the shadow, 400/413 drop
        that content (it would be rejected again: never looped), anything else retries with backoff."""
        code = doc.get("code")
        self.metrics.inc(f"shadow_{op}_rejected_{code}")
        effects: list[Effect] = []
        if code == 429:
            self.metrics.inc("throttled")
            self.bucket.drain(now)
        if op == "update" and side.inflight is not None and side.inflight.clears is not None:
            side.inflight = None
            if code == 409:
                # the shadow moved on (a new command, or our own report): read it and decide again
                effects.append(self._get(side, now))
                then = "re-reading the shadow before clearing desired.command again"
            elif code in (400, 403, 413):
                self.clear_command = None  # the same request would be refused again: leave desired as it is
                then = "leaving desired.command in place (the robot ignores what it has recorded)"
            else:
                side.retry_at = now + self.backoff.next_delay()
                then = f"clearing desired.command again in {side.retry_at - now:.1f} s"
            fields = (
                ("shadow", "classic"),
                ("code", code),
                ("message", str(doc.get("message"))[:200]),
                ("then", then),
            )
            event = "shadow.clear.conflict" if code == 409 else "shadow.clear.rejected"
            return [*effects, Notice(event, fields)]
        if op == "update":
            patch = side.inflight.patch if side.inflight is not None else {}
            side.inflight = None
            if code == 409:
                effects.append(self._get(side, now))
                then = "re-reading the shadow"
            elif code in (400, 413):
                # the same patch would be rejected again: count it and stop retrying this content
                side.acked = shadowdoc.merge_state(side.acked or {}, patch)
                self.metrics.inc("shadow_update_dropped")
                then = f"dropped keys {sorted(patch)} (not retried until they change)"
            else:
                side.retry_at = now + self.backoff.next_delay()
                then = f"retrying in {side.retry_at - now:.1f} s"
        else:
            # a get that failed (429, 5xx, 403): asked again after the backoff by flush()
            side.get_token = None
            side.retry_at = now + self.backoff.next_delay()
            then = f"asking again in {side.retry_at - now:.1f} s"
        fields = (
            ("shadow", side.name or "classic"),
            ("code", code),
            ("message", str(doc.get("message"))[:200]),
            ("then", then),
        )
        return [*effects, Notice(f"shadow.{op}.rejected", fields)]

    # desired -> actions ------------------------------------------------------------------------------
    def _set_error(self, side: _Side, key: str, reason: str | None) -> None:
        errors = dict(side.current.get("errors") or {})
        if reason is None:
            errors.pop(key, None)
        else:
            errors[key] = reason
        if errors:
            side.current["errors"] = errors
        else:
            side.current.pop("errors", None)

    def _reconcile(
        self, side: _Side, desired: Mapping[str, Any], now: float, metadata: Mapping[str, Any] | None = None
    ) -> list[Effect]:
        effects: list[Effect] = []
        # a key that left desired is forgotten, and so is its error: nothing is asked of it any more
        errors = side.current.get("errors") or {}
        for key in [k for k in (*side.handled, *errors) if k not in desired]:
            side.handled.pop(key, None)
            self._set_error(side, key, None)
        if side.name is None and "command" not in desired:
            self.clear_command = None
        schema = "desired" if side.name is None else "config"
        problems = validate_sections(schema, {k: v for k, v in desired.items() if k != "command"})
        for key, value in desired.items():
            fp = _fp(value)
            if side.handled.get(key) == fp:
                continue
            side.handled[key] = fp
            if side.name is None and key == "command":
                effects += self._on_command(value, (metadata or {}).get("command"))
                self.clear_command = fp
            elif key in problems:
                self._set_error(side, key, problems[key])
                self.metrics.inc("desired_rejected")
            else:
                self._set_error(side, key, None)
                effects.append(ApplySetting(side.name, key, value))
        return effects

    def _on_command(self, raw: Any, metadata: Any = None) -> list[Effect]:
        """One new ``desired.command`` value. Whatever the outcome, its id (when it has a usable one) is in
        the ledger when this returns, so the caller may ask for ``desired.command`` to be cleared."""
        raw, stale = current_fields(raw, metadata)
        if stale:
            self.metrics.inc("command_stale_fields_ignored")
        parsed = parse_command(raw)
        side = self.classic
        cid = parsed.id
        entry = self.ledger.get(cid) if cid else None
        if entry is not None:
            # handled before (redelivery, reconnect, restart): report the recorded outcome, never rerun
            self.metrics.inc("commands_duplicate")
            side.current["command"] = {**entry.document, "status": entry.status, "reason": entry.reason}
            return []
        if isinstance(parsed, Rejected):
            if cid:
                self.ledger.begin(
                    cid, str(parsed.echo.get("action", "?")), dict(parsed.echo), "rejected", parsed.reason
                )
            side.current["command"] = (
                parsed.answer() if cid else {"id": None, "status": "rejected", "reason": parsed.reason}
            )
            self.metrics.inc("commands_rejected")
            return [
                CommandLog(
                    cid, str(parsed.echo.get("action")) if parsed.echo else None, "rejected", parsed.reason
                )
            ]
        if not self.ledger.begin(parsed.id, parsed.action, parsed.document):
            self.metrics.inc("commands_duplicate")
            return []
        self.active_commands[parsed.id] = parsed
        side.current["command"] = parsed.answer("accepted")
        self.metrics.inc("commands_accepted")
        return [RunCommand(parsed)]

    def command_finished(self, command_id: str, status: str, reason: str | None = None) -> list[Effect]:
        """The daemon reports the outcome of a RunCommand (``done`` / ``failed``)."""
        self.ledger.finish(command_id, status, reason)
        cmd = self.active_commands.pop(command_id, None)
        self.metrics.inc(f"commands_{status}")
        if cmd is None:
            return []
        current = self.classic.current.get("command") or {}
        if current.get("id") == command_id:
            self.classic.current["command"] = cmd.answer(status, reason)
        return [CommandLog(command_id, cmd.action, status, reason)]

    def command_progress(self, command_id: str, status: str) -> None:
        """A long command (drive) moved on without finishing: record and report it (e.g. ``accepted``)."""
        self.ledger.finish(command_id, status)
        cmd = self.active_commands.get(command_id)
        if cmd is not None and (self.classic.current.get("command") or {}).get("id") == command_id:
            self.classic.current["command"] = cmd.answer(status)

    def setting_result(self, shadow: str | None, key: str, value: Any, error: str | None) -> None:
        """After an ApplySetting: echo the value in reported (so the delta clears) or report why not."""
        side = self.classic if shadow is None else self.config
        if error is None:
            side.current[key] = value
            self._set_error(side, key, None)
        else:
            self._set_error(side, key, error)
            side.handled.pop(key, None)  # retried with the next desired document, not in a loop
            self.metrics.inc("desired_failed")

    # reported -> service -----------------------------------------------------------------------------
    def flush(self, now: float) -> list[Effect]:
        """Publish what changed, if the rules allow now. Call after inputs and on ``next_wakeup``."""
        effects: list[Effect] = []
        if not self.connected:
            return effects
        for side in (self.classic, self.config):
            if not side.synced and side.get_token is None and now >= side.retry_at:
                effects.append(self._get(side, now))  # the last get was rejected: its backoff is over
            if side.get_token is not None and now - side.get_token[1] > REQUEST_TIMEOUT_S:
                self.metrics.inc("shadow_get_timeout")
                self.get_timeouts += 1
                # a lost SUBACK or a broker that forgot us looks exactly like this: subscribe again too
                if not any(isinstance(e, Subscribe) for e in effects):
                    effects.append(Subscribe(self.subscriptions()))
                effects.append(self._get(side, now))
            if side.inflight is not None and now - side.inflight.sent > REQUEST_TIMEOUT_S:
                self.metrics.inc("shadow_update_timeout")
                side.inflight = None  # a lost clear is sent again; if it did land, that one gets a 409
            if not side.synced or side.inflight is not None or now < side.retry_at:
                continue
            if side is self.classic and now - side.last_publish >= self.heartbeat_s:
                side.current["heartbeat"] = int(self.wall_clock())
            current = prune(side.current)
            patch = diff(side.acked or {}, current)
            if not patch:
                effects += self._clear_request(side, now)
                continue
            if "command" in patch and isinstance(current.get("command"), Mapping):
                # the answer travels whole, so a watcher of update/accepted sees id and status together
                before = (side.acked or {}).get("command") or {}
                patch["command"] = {
                    **{k: None for k in before if k not in current["command"]},
                    **current["command"],
                }
            urgent = side is self.config or bool(URGENT_KEYS & patch.keys()) or "heartbeat" in patch
            if not urgent and now - side.last_sensor_publish < self.report_min_s:
                effects += self._clear_request(side, now)  # the clear goes in the gap between reports
                continue
            if not self.bucket.take(now):
                self.metrics.inc("shadow_rate_limited")
                continue
            token = self._token()
            side.inflight = _Request(token, patch, now)
            side.last_publish = now
            side.last_sensor_publish = now
            body = {"state": {"reported": patch}, "clientToken": token}
            effects.append(
                Publish(f"{side.prefix}/update", json.dumps(body, separators=(",", ":")).encode(), self.qos)
            )
            self.metrics.inc("shadow_update_sent")
        return effects

    def _clear_request(self, side: _Side, now: float) -> list[Effect]:
        """``{"state":{"desired":{"command":null}},"version":V}`` once the command is recorded: guarded by the
        version we know, so a command the fleet wrote since (which we have not seen yet) is never wiped."""
        if side is not self.classic or self.clear_command is None or not self.bucket.take(now):
            return []
        token = self._token()
        side.inflight = _Request(token, {}, now, clears=self.clear_command)
        body = {"state": {"desired": {"command": None}}, "version": side.version, "clientToken": token}
        self.metrics.inc("command_clear_sent")
        return [Publish(f"{side.prefix}/update", json.dumps(body, separators=(",", ":")).encode(), self.qos)]

    def next_wakeup(self, now: float) -> float:
        """Seconds until ``flush`` may have something new to do (pending diff, retry, timeout, heartbeat)."""
        wake = self.heartbeat_s
        for side in (self.classic, self.config):
            if side.inflight is not None:
                wake = min(wake, REQUEST_TIMEOUT_S - (now - side.inflight.sent))
                continue
            if side.get_token is not None:
                wake = min(wake, REQUEST_TIMEOUT_S - (now - side.get_token[1]))
            if not side.synced:
                if side.get_token is None and self.connected:
                    wake = min(wake, side.retry_at - now)
                continue
            wake = min(wake, self.heartbeat_s - (now - side.last_publish))
            if now < side.retry_at:
                wake = min(wake, side.retry_at - now)
            elif diff(side.acked or {}, prune(side.current)):
                wake = min(
                    wake, max(self.report_min_s - (now - side.last_sensor_publish), self.bucket.wait_s(now))
                )
                if side is self.classic and self.clear_command is not None:
                    wake = min(wake, self.bucket.wait_s(now))
            elif side is self.classic and self.clear_command is not None:
                wake = min(wake, self.bucket.wait_s(now))
        return max(0.0, wake)
