"""AWS IoT Jobs on the robot: take the next job, run it, report it, exactly once.

The device side of AWS IoT Jobs over the agent's one MQTT connection (``$aws/things/{thing}/jobs/...``).
On every (re)connect the feature subscribes, asks for the pending jobs and, when it runs none, for the next
one (``start-next``); a ``notify``/``notify-next`` only ever leads to a ``start-next`` (or, while a job
runs, to a describe of it), so a duplicate notification changes nothing. One job at a time.

Exactly once: every execution is journalled (:mod:`agent.jobs.journal`) before anything runs, each step
before it starts and after it ends, the outcome before it is reported. A job the cloud hands back after
a restart is decided from its row (:func:`agent.jobs.journal.recovery`): a reported-or-not outcome is
re-sent, a step cut short is FAILED "interrupted by restart" (restart-agent's step is resumable and counts
as done), never run again. Updates go one at a time, each with ``expectedVersion``; a VersionMismatch (or a
terminal state) is settled by describing the execution: a job the cloud ended (canceled, timed out) is
stopped, an update of ours that did land is not sent again. AWS refuses to describe an execution in a
terminal state (``TerminalStateReached`` with its ``executionState``): that refusal settles it the same
way, for the current job and for one being recovered. A final update is never taken as reported before
the cloud accepts it: refused for its details, it is sent with the reason alone, again with backoff, and
at last with a fixed ASCII reason. A request without an answer is sent again with backoff, as are
throttled ones.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent import __version__ as AGENT_VERSION
from agent.commands import validate_sections
from agent.config import AgentConfig
from agent.features import FeatureRegistry
from agent.features.events import Events
from agent.features.settings import Settings
from agent.features.update import NO_INSTALLER, UpdateFeature
from agent.jobs import builtins, protocol
from agent.jobs.document import (
    Action,
    DeviceClientPlan,
    Gates,
    Plan,
    Rejection,
    RobotPlan,
    RobotView,
    parse,
    unmet,
)
from agent.jobs.journal import Entry, Journal, Key, recovery
from agent.jobs.protocol import TERMINAL, tail, version_of
from agent.jobs.runner import StepResult, check_handler_dir, run_action
from agent.metrics import Metrics
from agent.model import OI_MODES, P_CHARGING_STATE, P_MAIN_BRUSH_CURRENT, battery_percent, docked
from agent.mqtt import MqttConnection
from agent.parts import AgentLog, RobotSide
from agent.pump import Pump
from agent.sync import ShadowSync

TICK_S = 0.25
SUBSCRIBE_TIMEOUT_S = 10.0
RESTART_ACK_TIMEOUT_S = 10.0
REFUSED_RETRIES = 3  # a final update refused with its reason alone: sent so often, then with a fixed reason
CHARGING_STATES = (1, 2, 3)  # OI packet 21: reconditioning, full and trickle charging


@dataclass(frozen=True)
class Update:
    status: str
    details: Mapping[str, str]
    step_timeout_min: int | None = None

    @property
    def final(self) -> bool:
        return self.status in TERMINAL


@dataclass
class Pending:
    kind: str  # get | start-next | describe | update
    job_id: str | None
    execution_number: int | None
    attempt: int
    deadline: float
    update: Update | None = None
    expired: bool = False
    sent: float = 0.0


@dataclass
class Active:
    """The execution this robot works on (at most one)."""

    job_id: str
    execution_number: int
    version: int | None
    plan: Plan | None = None
    task: asyncio.Task[None] | None = None
    phase: str = "starting"
    step: str | None = None
    waiting_for: str | None = None
    step_timer_set: bool = False
    outgoing: Update | None = None
    queued: Update | None = None

    @property
    def key(self) -> Key:
        return (self.job_id, self.execution_number)


class Jobs:
    name = "jobs"

    def __init__(
        self,
        *,
        config: AgentConfig,
        features: FeatureRegistry,
        robot: RobotSide,
        mqtt: MqttConnection,
        db: sqlite3.Connection,
        sync: ShadowSync,
        pump: Pump,
        events: Events,
        settings: Settings,
        status_sections: dict[str, Callable[[], Any]],
        status_doc: Callable[[], dict[str, Any]],
        stopping: asyncio.Event,
        own_process: bool,
        metrics: Metrics,
        log: AgentLog,
        loop: asyncio.AbstractEventLoop,
        version: str = AGENT_VERSION,
        updater: UpdateFeature | None = None,
    ) -> None:
        self.config = config
        self.version = version
        self.updater = updater
        self.jc = config.jobs
        self.thing = config.thing_name
        self.robot = robot
        self.mqtt = mqtt
        self.sync = sync
        self.pump = pump
        self.events = events
        self.settings = settings
        self.status_doc = status_doc
        self.stopping = stopping
        self.own_process = own_process
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.journal = Journal(db)
        self.current: Active | None = None
        self.recovering: Key | None = None
        self.requests: dict[str, Pending] = {}
        self.retries: list[tuple[float, str, str | None, int | None, int]] = []
        self.subscribed = False
        self.pending_jobs: int | None = None
        self.last_get_at: float | None = None
        self.get_rtt_ms: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running = False
        self._connect_task: asyncio.Task[None] | None = None
        self._last_view: RobotView | None = None
        status_sections["jobs"] = self.status
        if self.jc.enabled:
            features.listen(protocol.base(self.thing) + "/", self.on_message)
            features.on_connection(self.on_connected)

    # --- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks: list[asyncio.Task[None]] = []
        if self._connect_task is not None:
            tasks.append(self._connect_task)
        if self.current is not None and self.current.task is not None:
            tasks.append(self.current.task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _arm(self) -> None:
        """Wake up for timeouts and retries only while there are some (a fleet process hosts many agents)."""
        if self._timer is None and self._running:
            self._timer = self.loop.call_later(TICK_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.tick(time.monotonic())
        except Exception:
            self.log.exception("jobs.tick_failed")
        pending = self.retries or any(not p.expired for p in self.requests.values())
        if pending and self.mqtt.connected:  # while disconnected, the next connect sends them again
            self._arm()

    # --- status -----------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cur = self.current
        last = self.journal.last()
        return {
            "enabled": self.jc.enabled,
            "allow_commands": self.jc.allow_commands,
            "subscribed": self.subscribed and self.mqtt.connected,
            "pending": self.pending_jobs,
            "last_get_at": self.last_get_at,
            "get_rtt_ms": self.get_rtt_ms,
            "current": None
            if cur is None
            else {
                "job_id": cur.job_id,
                "execution_number": cur.execution_number,
                "phase": cur.phase,
                "step": cur.step,
                "waiting_for": cur.waiting_for,
                "version": cur.version,
            },
            "last": None
            if last is None
            else {
                "job_id": last.job_id,
                "execution_number": last.execution_number,
                "status": last.final_status,
                "reason": last.details.get("reason"),
                "reported": last.reported,
                "at": round(last.updated, 3),
            },
        }

    # --- the robot as gates and missions see it ---------------------------------------------------------
    def view(self) -> RobotView | None:
        snap = self.robot.snapshot
        if snap is None:
            return None
        s = snap.sensors
        mode = snap.oi_mode if snap.oi_mode is not None else s.get(35, -1)
        return RobotView(
            link_up=snap.link_up,
            docked=docked(s),
            charging=s.get(P_CHARGING_STATE) in CHARGING_STATES,
            battery_pct=battery_percent(s),
            mission=self.robot.tracker.state,
            oi_mode=OI_MODES.get(mode, "unknown"),
            main_brush_ma=abs(int(s.get(P_MAIN_BRUSH_CURRENT, 0))),
            pose=None if snap.pose is None else (snap.pose[0], snap.pose[1]),
        )

    # --- MQTT: connect ----------------------------------------------------------------------------------
    def on_connected(self, session_present: bool) -> None:
        if self._connect_task is not None:
            self._connect_task.cancel()
        self._connect_task = self.loop.create_task(self._after_connect())

    async def _after_connect(self) -> None:
        self.subscribed = False
        futures = self.mqtt.subscribe(protocol.subscriptions(self.thing), 1)
        ok = True
        try:
            await asyncio.wait_for(asyncio.gather(*futures), SUBSCRIBE_TIMEOUT_S)
        except Exception as exc:
            ok = False  # the requests still go out: their answers reach us if the broker allows them
            self.log.warning("jobs.subscribe_failed", error=str(exc) or type(exc).__name__)
        if not self.mqtt.connected:
            return
        self.subscribed = ok
        # requests of the last connection may never be answered: what is in flight is sent again now (a
        # late answer to an earlier copy still counts)
        for p in self.requests.values():
            p.expired = True
        self.retries.clear()
        self.send("get")
        self._resume()

    def _resume(self) -> None:
        """What to ask for now: the running job's update, the journalled job to settle, or the next job."""
        cur = self.current
        if cur is not None:
            if cur.outgoing is not None:
                self.send("update")
            elif cur.task is None:
                self.send("describe", cur.job_id, cur.execution_number)
            return
        if self.recovering is not None:
            self.send("describe", *self.recovering)
            return
        for entry in self.journal.open():
            self.recovering = entry.key
            self.log.info("jobs.recovering", job_id=entry.job_id, execution_number=entry.execution_number)
            self.send("describe", entry.job_id, entry.execution_number)
            return
        self.send("start-next")

    # --- requests ---------------------------------------------------------------------------------------
    def _in_flight(self, kind: str) -> bool:
        return any(p.kind == kind and not p.expired for p in self.requests.values()) or any(
            r[1] == kind for r in self.retries
        )

    def send(
        self, kind: str, job_id: str | None = None, execution_number: int | None = None, attempt: int = 1
    ) -> None:
        if not self.mqtt.connected:
            return  # sent again by the next connect
        token = f"{kind[:2]}-{uuid.uuid4().hex[:24]}"
        update: Update | None = None
        if kind == "get":
            topic, payload = protocol.get_topic(self.thing), protocol.request(token)
        elif kind == "start-next":
            if self.current is not None or self.recovering is not None:
                return
            if any(p.kind == "start-next" and not p.expired for p in self.requests.values()):
                return
            topic = protocol.start_next_topic(self.thing)
            payload = protocol.request(token, statusDetails={"phase": "starting"})
        elif kind == "describe":
            assert job_id is not None
            topic = protocol.describe_topic(self.thing, job_id)
            payload = protocol.request(token, executionNumber=execution_number, includeJobDocument=True)
        elif kind == "update":
            cur = self.current
            if cur is None or cur.outgoing is None:
                return
            job_id, execution_number, update = cur.job_id, cur.execution_number, cur.outgoing
            if any(q.update is update and not q.expired for q in self.requests.values()):
                return  # already on its way
            topic = protocol.update_topic(self.thing, cur.job_id)
            payload = protocol.update_request(
                token,
                update.status,
                update.details,
                cur.version,
                cur.execution_number,
                update.step_timeout_min,
            )
        else:
            raise ValueError(f"unknown jobs request {kind!r}")
        now = time.monotonic()
        self.requests[token] = Pending(
            kind, job_id, execution_number, attempt, now + self.jc.request_timeout_s, update, sent=now
        )
        self.metrics.inc(f"jobs_request_{kind.replace('-', '_')}")
        fut = self.mqtt.publish(topic, payload, 1)
        fut.add_done_callback(self.pump.publish_done)
        self._arm()

    def retry_later(self, p: Pending, now: float) -> None:
        delay = protocol.backoff_s(p.attempt)
        self.retries.append((now + delay, p.kind, p.job_id, p.execution_number, p.attempt + 1))
        self.metrics.inc("jobs_request_retries")
        self._arm()

    def tick(self, now: float) -> None:
        if not self.mqtt.connected:
            return  # the next connect sends again whatever is in flight
        for token, p in list(self.requests.items()):
            if not p.expired and now >= p.deadline:
                p.expired = True  # a late answer is still taken
                self.metrics.inc("jobs_request_timeouts")
                self.log.info("jobs.request_timeout", kind=p.kind, job_id=p.job_id, attempt=p.attempt)
                if p.kind != "get":
                    self.retry_later(p, now)
            elif p.expired and now - p.deadline > 600:
                del self.requests[token]
        due = [r for r in self.retries if r[0] <= now]
        self.retries = [r for r in self.retries if r[0] > now]
        for _, kind, job_id, number, attempt in due:
            self.send(kind, job_id, number, attempt)

    # --- MQTT: answers ----------------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> None:
        parsed = protocol.parse_answer(topic, self.thing, payload)
        if parsed is None:
            self.metrics.inc("jobs_messages_ignored")
            return
        kind, _job_id, outcome, body = parsed
        try:
            if outcome == "event":
                self.on_notification(kind, body)
                return
            p = self.requests.pop(str(body.get("clientToken", "")), None)
            if p is None:
                self.metrics.inc("jobs_answers_unmatched")
                return
            if outcome == "rejected":
                self.on_rejected(p, body)
            elif kind == "get":
                self.on_get(p, body)
            elif kind == "start-next":
                self.on_execution(body.get("execution"), "start-next")
            elif kind == "describe":
                self.on_described(p, body.get("execution"))
            elif kind == "update":
                self.on_updated(p, body)
        except Exception:
            self.log.exception("jobs.message_failed", topic=topic)

    def on_get(self, p: Pending, body: Mapping[str, Any]) -> None:
        jobs = list(body.get("inProgressJobs") or []) + list(body.get("queuedJobs") or [])
        self.pending_jobs = len(jobs)
        self.last_get_at = round(time.time(), 3)
        self.get_rtt_ms = round((time.monotonic() - p.sent) * 1000, 1)
        if jobs and self.current is None and self.recovering is None:
            self.send("start-next")

    def on_notification(self, kind: str, body: Mapping[str, Any]) -> None:
        self.metrics.inc(f"jobs_{kind.replace('-', '_')}_received")
        cur = self.current
        if kind == "notify-next":
            execution = body.get("execution") or {}
            key = (execution.get("jobId"), execution.get("executionNumber"))
            if cur is not None:
                if key == cur.key:
                    self.metrics.inc("jobs_duplicate_notifications")
                else:
                    # the front of the queue is not ours: ours may have ended in the cloud (canceled?)
                    self.send("describe", cur.job_id, cur.execution_number)
                return
            if execution and self.recovering is None:
                if self._in_flight("start-next"):
                    self.metrics.inc("jobs_duplicate_notifications")
                self.send("start-next")
            return
        lists = body.get("jobs") or {}
        ids = {j.get("jobId") for group in lists.values() for j in (group or [])}
        if cur is not None:
            if cur.job_id not in {j.get("jobId") for j in lists.get("IN_PROGRESS") or []}:
                self.send("describe", cur.job_id, cur.execution_number)
            return
        if ids and self.recovering is None:
            self.send("start-next")

    def on_rejected(self, p: Pending, body: Mapping[str, Any]) -> None:
        code = str(body.get("code", ""))
        message = str(body.get("message", ""))
        what = protocol.on_rejected(code, p.kind)
        self.metrics.inc(f"jobs_request_refused_{code or 'unknown'}")
        self.log.info("jobs.request_rejected", kind=p.kind, job_id=p.job_id, code=code, message=message)
        now = time.monotonic()
        if what == "retry":
            self.retry_later(p, now)
            return
        cur = self.current
        if p.kind == "update" and cur is not None and p.update is cur.outgoing:
            ended = protocol.terminal_status(body) if code in protocol.TERMINAL_CODES else None
            if ended is not None:  # the refusal says how the execution ended: no describe needed
                self._ended(cur.key, ended, code)
            elif what == "reconcile":
                if code == "VersionMismatch":
                    self.metrics.inc("jobs_version_mismatch")
                self.send("describe", cur.job_id, cur.execution_number)
            elif what == "gone":
                self.abandon(cur, "REMOVED", "the job execution no longer exists")
            else:
                self._update_refused(cur, p, code, message, now)
            return
        if p.kind == "describe":
            key = (p.job_id, p.execution_number)
            if what == "terminal":  # AWS refuses to describe an execution in a terminal state
                self._ended(key, protocol.terminal_status(body), code)
            elif what == "gone" or what == "give_up":
                if self.recovering == key:
                    self._close_recovered(self.journal.get(self.recovering), "REMOVED")
                elif cur is not None and cur.key == key:
                    self.abandon(cur, "REMOVED", f"the job execution is gone ({code})")
            return
        if p.kind == "start-next" and what != "retry":
            self.log.error("jobs.start_next_refused", code=code, message=message)

    def _update_refused(self, cur: Active, p: Pending, code: str, message: str, now: float) -> None:
        """An update the cloud will not take as it is (InvalidRequest, InvalidJson ...)."""
        update = p.update
        assert update is not None
        if set(update.details) - {"reason"}:
            # our statusDetails broke a rule: say the essential with the reason alone
            reason = update.details.get("reason") or f"update refused: {code} {message}"
            cur.outgoing = replace(update, details=protocol.details({"reason": reason}))
            self.send("update")
            return
        if not update.final:
            self.log.error("jobs.update_refused", job_id=cur.job_id, code=code, message=message)
            self._update_done(cur, update)  # progress only: the next update says more
            return
        # the outcome: never dropped, never taken as reported (the cloud still has the execution in
        # progress): sent again with backoff, at last with a fixed reason, and then again until it lands
        fixed = protocol.refused_details(code)
        if update.details != fixed and p.attempt >= REFUSED_RETRIES:
            self.log.error(
                "jobs.final_update_refused",
                job_id=cur.job_id,
                status=update.status,
                code=code,
                message=message,
            )
            cur.outgoing = replace(update, details=fixed)
            self.send("update")
            return
        self.retry_later(p, now)

    def on_described(self, p: Pending, execution: Mapping[str, Any] | None) -> None:
        key = (p.job_id, p.execution_number)
        status = None if execution is None else str(execution.get("status"))
        if self.recovering is not None and key == self.recovering:
            if execution is None or status in TERMINAL:
                self._ended(key, status or "REMOVED", "described")
                return
            self.recovering = None
            self.on_execution(execution, "recovery")
            return
        cur = self.current
        if cur is None or cur.key != key or execution is None:
            return
        version = version_of(execution.get("versionNumber"))
        if status in TERMINAL:
            self._ended(key, status, "described")
            return
        if version is not None:
            cur.version = version
            self.journal.set_version(cur.key, version)
        if cur.outgoing is not None:
            self.send("update")

    def _ended(self, key: tuple[str | None, int | None], status: str | None, how: str) -> None:
        """The cloud says the execution is over (``status``: how; None when it did not say): settle the
        journalled one being recovered, or the current one (our final update did land, or it was ended
        by the cloud: stop it), then go on with the next."""
        if self.recovering is not None and key == self.recovering:
            self._close_recovered(self.journal.get(self.recovering), status or "REMOVED")
            return
        cur = self.current
        if cur is None or cur.key != key:
            return
        out = cur.outgoing
        if out is not None and out.final and out.status == status:
            self._update_done(cur, out)  # our final update did land (its answer was lost): not sent again
            return
        self.abandon(cur, status or "REMOVED", f"ended by the cloud: {status or how}")

    def on_updated(self, p: Pending, body: Mapping[str, Any]) -> None:
        cur = self.current
        if cur is None or p.job_id != cur.job_id or p.update is not cur.outgoing:
            return
        state = body.get("executionState") or {}
        version = version_of(state.get("versionNumber"))
        if version is not None:
            cur.version = version
        elif cur.version is not None:
            cur.version += 1
        if cur.version is not None:
            self.journal.set_version(cur.key, cur.version)
        self._update_done(cur, p.update)

    def _update_done(self, cur: Active, update: Update | None) -> None:
        # any other answer for the same update (an earlier copy) no longer counts
        for token, q in list(self.requests.items()):
            if q.update is update:
                del self.requests[token]
        cur.outgoing = None
        if update is not None and update.final:
            self.journal.reported(cur.key)
            self.log.info("jobs.reported", job_id=cur.job_id, status=update.status)
            self._closed(cur)
            return
        if cur.queued is not None:
            cur.outgoing, cur.queued = cur.queued, None
            self.send("update")

    def queue_update(self, cur: Active, update: Update) -> None:
        if cur.outgoing is None:
            cur.outgoing = update
            self.send("update")
        elif cur.queued is None or not cur.queued.final:
            cur.queued = update  # progress coalesces; a final update is never replaced

    # --- executions -------------------------------------------------------------------------------------
    def on_execution(self, execution: Mapping[str, Any] | None, source: str) -> None:
        if not execution:
            self.pending_jobs = 0 if source == "start-next" else self.pending_jobs
            return
        job_id = str(execution.get("jobId"))
        number = int(execution.get("executionNumber") or 0)
        version = version_of(execution.get("versionNumber"))
        cur = self.current
        if cur is not None:
            if cur.key == (job_id, number):
                self.metrics.inc("jobs_duplicate_executions")
                if version is not None and (cur.version is None or version > cur.version):
                    cur.version = version
            else:
                self.log.warning("jobs.busy", job_id=job_id, running=cur.job_id)
            return
        key = (job_id, number)
        cur = self.current = Active(job_id, number, version)
        entry = self.journal.get(key)
        document = execution.get("jobDocument")
        if isinstance(document, str):  # an object over MQTT; a string where it came through HTTP
            try:
                document = json.loads(document)
            except ValueError:
                pass
        if entry is None:
            self._take_new(cur, document)
        else:
            self._take_journalled(cur, entry, document)

    def _plan(self, document: Any, *, new: bool = True) -> Plan | Rejection:
        settings = document.get("settings") if isinstance(document, dict) else None
        problems = validate_sections("config", settings) if isinstance(settings, dict) else None
        plan = parse(
            document,
            model=self.config.model,
            allow_commands=self.jc.allow_commands,
            handler_dir=self.jc.handler_dir or None,
            setting_problems=problems,
        )
        if isinstance(plan, DeviceClientPlan) and any(a.type == "runHandler" for a in plan.steps):
            problem = check_handler_dir(self.jc.handler_dir)
            if problem is not None:
                return Rejection(problem)
        restart = isinstance(plan, RobotPlan) and plan.operation == "restart-agent"
        if restart and new and not self.own_process:
            return Rejection("restart-agent needs an agent in a process of its own (not a simulated fleet)")
        update = isinstance(plan, RobotPlan) and plan.operation == "update"
        if update and (self.updater is None or not self.updater.can_install):
            return Rejection(NO_INSTALLER)
        return plan

    def _take_new(self, cur: Active, document: Any) -> None:
        plan = self._plan(document)
        steps = (
            []
            if isinstance(plan, Rejection)
            else [{"name": n, "resumable": plan.resumable(i)} for i, n in enumerate(plan.step_names)]
        )
        self.journal.accept(cur.key, document, steps, cur.version)
        self.metrics.inc("jobs_started")
        if isinstance(plan, Rejection):
            self.log.warning("jobs.rejected", job_id=cur.job_id, reason=plan.reason)
            self.finish(cur, "REJECTED", {"reason": plan.reason})
            return
        self.log.info("jobs.accepted", job_id=cur.job_id, execution_number=cur.execution_number)
        cur.plan = plan
        cur.task = self.loop.create_task(self._run(cur, plan, 0, {}))

    def _take_journalled(self, cur: Active, entry: Entry, fresh: Any = None) -> None:
        decision = recovery(entry)
        self.log.info("jobs.journalled", job_id=cur.job_id, decision=decision.action, reason=decision.reason)
        if decision.action == "resend":
            self.metrics.inc("jobs_results_resent")
            cur.phase = "reporting"
            self.queue_update(cur, Update(str(entry.final_status), protocol.details(entry.details)))
            return
        if decision.action == "fail":
            self.metrics.inc("jobs_interrupted")
            details = {**_outputs(entry.progress, True), "reason": decision.reason}
            self.finish(cur, "FAILED", details)
            return
        plan = self._plan(entry.document, new=False)
        if isinstance(plan, Rejection):
            self.finish(cur, "FAILED", {"reason": f"can no longer run here: {plan.reason}"})
            return
        plan = _fresh_url(plan, fresh)
        cur.plan = plan
        progress = dict(entry.progress)
        if decision.action == "resume":
            self.metrics.inc("jobs_resumed")
            progress["resumed"] = True
            self.journal.step_finished(cur.key, entry.step, progress)
        cur.task = self.loop.create_task(self._run(cur, plan, decision.next_step, progress))

    def finish(self, cur: Active, status: str, details: Mapping[str, Any]) -> None:
        """The outcome: journalled first, then counted and reported (re-sent until acknowledged)."""
        clean = protocol.details(details)
        self.journal.finished(cur.key, status, clean)
        self.metrics.inc(f"jobs_{status.lower()}")
        cur.phase = "reporting"
        cur.waiting_for = None
        self.log.info("jobs.finished", job_id=cur.job_id, status=status, reason=clean.get("reason"))
        self.queue_update(cur, Update(status, clean))

    def abandon(self, cur: Active, status: str, reason: str) -> None:
        """The cloud ended the execution (canceled, timed out, deleted): stop working on it."""
        if cur.task is not None and not cur.task.done():
            cur.task.cancel()
        entry = self.journal.get(cur.key)
        if entry is not None and entry.final_status is None:
            self.journal.finished(cur.key, status, {"reason": reason}, reported=True)
        else:
            self.journal.reported(cur.key)
        self.metrics.inc("jobs_ended_by_cloud")
        self.log.warning("jobs.ended_by_cloud", job_id=cur.job_id, status=status, reason=reason)
        self._closed(cur)

    def _close_recovered(self, entry: Entry | None, status: str) -> None:
        if entry is not None:
            if entry.final_status is None:
                reason = f"ended by the cloud while the agent was down: {status}"
                self.journal.finished(entry.key, status, {"reason": reason}, reported=True)
                self.metrics.inc("jobs_ended_by_cloud")
            else:
                self.journal.reported(entry.key)
        self.recovering = None
        self._resume()

    def _closed(self, cur: Active) -> None:
        for token, q in list(self.requests.items()):
            if q.job_id == cur.job_id and q.kind in ("update", "describe"):
                del self.requests[token]
        self.retries = [r for r in self.retries if r[2] != cur.job_id]
        if self.current is cur:
            self.current = None
        self._resume()

    # --- running ----------------------------------------------------------------------------------------
    def progress(self, cur: Active, step_timeout_min: int | None = None, **fields: Any) -> None:
        values = {"phase": cur.phase, "step": cur.step, "waiting_for": cur.waiting_for, **fields}
        self.queue_update(cur, Update("IN_PROGRESS", protocol.details(values), step_timeout_min))

    async def _run(self, cur: Active, plan: Plan, start: int, progress: dict[str, Any]) -> None:
        try:
            if start == 0 and not progress:
                await self.wait_for_gates(cur, plan.requires)
            if isinstance(plan, DeviceClientPlan):
                status, details = await self.run_device_client(cur, plan, start, progress)
            else:
                status, details = await self.run_robot(cur, plan, start, progress)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("jobs.run_failed", job_id=cur.job_id)
            status, details = "FAILED", {"reason": f"the agent failed running it: {exc}"}
        self.finish(cur, status, details)

    @staticmethod
    def clear_step_timer(cur: Active) -> int | None:
        """-1 (AWS: cancel the step timer) on the first update after waiting updates set one."""
        if cur.step_timer_set:
            cur.step_timer_set = False
            return -1
        return None

    async def wait_for_gates(
        self, cur: Active, gates: Gates, extra: Callable[[], str | None] | None = None
    ) -> None:
        """Wait (never interrupting a mission) until the robot's state meets the job's requirements (and
        ``extra()`` is None: an operation's own condition), saying what it waits for and keeping the step
        timer alive."""
        last: str | None = None
        sent = 0.0
        waited = False
        while True:
            missing = unmet(gates, self.view())
            more = None if extra is None else extra()
            if more:
                missing.append(more)
            if not missing:
                if waited:
                    cur.waiting_for = None
                    self.log.info("jobs.gates_met", job_id=cur.job_id)
                return
            waiting = ", ".join(missing)
            now = time.monotonic()
            if waiting != last or now - sent >= self.jc.wait_refresh_s:
                cur.phase, cur.waiting_for = "waiting", waiting
                self.progress(cur, self.jc.wait_step_timeout_min)
                cur.step_timer_set = True
                if waiting != last:
                    self.log.info("jobs.waiting", job_id=cur.job_id, waiting_for=waiting)
                last, sent, waited = waiting, now, True
            await asyncio.sleep(0.5)

    async def run_device_client(
        self, cur: Active, plan: DeviceClientPlan, start: int, progress: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        n = len(plan.steps)
        for i in range(start, n):
            action = plan.steps[i]
            if progress.get("failed"):
                break
            progress = {**progress}
            self.journal.step_started(cur.key, i, progress)  # durable before the step runs
            cur.phase, cur.step = "running", f"{i + 1}/{n} {action.name}"
            self.progress(cur, self.clear_step_timer(cur))
            result = await self._run_action(action)
            progress["stdout"] = tail(str(progress.get("stdout", "")) + result.stdout)
            progress["stderr"] = tail(str(progress.get("stderr", "")) + result.stderr)
            if not result.ok:
                self.log.info("jobs.step_failed", job_id=cur.job_id, step=action.name, reason=result.reason)
                if action.ignore_failure:
                    progress["ignored"] = int(progress.get("ignored", 0)) + 1
                else:
                    progress["failed"] = result.reason
                    progress["failed_step"] = action.name
            self.journal.step_finished(cur.key, i, progress)
        details = _outputs(progress, plan.include_stdout)
        if progress.get("failed"):
            return "FAILED", {
                "reason": progress["failed"],
                "failed_step": progress.get("failed_step"),
                **details,
            }
        return "SUCCEEDED", details

    async def _run_action(self, action: Action) -> StepResult:
        return await run_action(action, self.jc.handler_dir or None, self.jc.step_timeout_s)

    async def run_robot(
        self, cur: Active, plan: RobotPlan, start: int, progress: dict[str, Any]
    ) -> tuple[str, dict[str, Any]]:
        op = plan.operation
        if op == "update" and self.updater is not None:
            if start == 0:
                self.journal.step_started(cur.key, 0, progress)  # resumable: goes on after a restart
            cur.phase, cur.step = "running", op
            return await self.updater.run(UpdateRun(self, cur), plan.args, progress)
        if start >= 1:  # the step (restart-agent) was resumed after the restart
            return "SUCCEEDED", {
                "operation": op,
                "resumed": "agent restarted",
                "agent_version": self.version,
            }
        self.journal.step_started(cur.key, 0, progress)  # durable before anything is sent to the robot
        cur.phase, cur.step = "running", op
        self.progress(cur, self.clear_step_timer(cur))
        extra: dict[str, str] = {}
        if op == "mission":
            action = str(plan.args["action"])
            result, extra = await builtins.mission(
                self.robot,
                self.view,
                action,
                plan.timeout_s,
                f"job:{cur.job_id}:{cur.execution_number}",
                self._mission_sent,
            )
            extra = {"action": action, **extra}
        elif op == "doctor":
            report = await asyncio.to_thread(builtins.run_doctor, self.config)
            result, extra = StepResult(True, None), builtins.doctor_details(report)
        elif op == "collect-logs":
            bundle = {
                "thing_name": self.thing,
                "agent_version": self.version,
                "status": self.status_doc(),
                "jobs": [_public(e) for e in self.journal.open()],
            }
            result, extra = await asyncio.to_thread(builtins.collect, str(plan.args["url"]), bundle)
        elif op == "set-settings":
            result, extra = self.set_settings(dict(plan.args["settings"]))
        elif op == "restart-agent":
            await self.restart(cur)
            return "FAILED", {"reason": "the agent did not restart"}  # restart() does not return
        else:
            result = StepResult(False, f"operation {op!r} has no implementation")
        self.journal.step_finished(cur.key, 0, progress)
        if not result.ok:
            return "FAILED", {"reason": result.reason, "operation": op, **extra}
        return "SUCCEEDED", {"operation": op, **extra}

    def _mission_sent(self, action: str) -> None:
        for event in self.robot.tracker.on_command(action):
            self.events.emit(event)

    def set_settings(self, values: dict[str, Any]) -> tuple[StepResult, dict[str, str]]:
        problems = validate_sections("config", values)
        if problems:
            return StepResult(False, "; ".join(problems.values())), {}
        for key, value in values.items():
            self.settings.apply_agent_setting(key, value)
            self.sync.setting_result("config", key, value, None)
        self.pump.pump()
        return StepResult(True, None), {"applied": ", ".join(sorted(values))}

    async def restart(self, cur: Active) -> None:
        """restart-agent: the journal already says the step runs (resumable); say so to the cloud, then
        stop cleanly and start again in this process (exec): the next agent reports it SUCCEEDED."""
        cur.phase = "restarting"
        self.progress(cur)
        deadline = self.loop.time() + RESTART_ACK_TIMEOUT_S
        while (cur.outgoing is not None or cur.queued is not None) and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.log.warning("jobs.restarting_agent", job_id=cur.job_id)
        argv = [sys.executable, "-m", "agent", *sys.argv[1:]]

        def again() -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(sys.executable, argv)

        atexit.register(again)
        self.stopping.set()
        await asyncio.Event().wait()  # cancelled when the features stop


class UpdateRun:
    """The update feature's view of its job (:class:`agent.features.update.JobRun`): the journal row's
    progress, the IN_PROGRESS updates, the waits."""

    def __init__(self, jobs: Jobs, cur: Active) -> None:
        self.jobs = jobs
        self.cur = cur

    @property
    def job(self) -> dict[str, Any]:
        return {"job_id": self.cur.job_id, "execution_number": self.cur.execution_number}

    def record(self, state: Mapping[str, Any]) -> None:
        self.jobs.journal.step_started(self.cur.key, 0, {"update": dict(state)})

    def report(self, details: Mapping[str, Any]) -> None:
        cur = self.cur
        cur.phase = str(details.get("phase") or cur.phase)
        fields = {k: v for k, v in details.items() if k != "phase"}
        self.jobs.progress(cur, self.jobs.clear_step_timer(cur), **fields)

    async def wait_for(self, unmet: Callable[[], str | None]) -> None:
        cur = self.cur
        phase = cur.phase
        await self.jobs.wait_for_gates(cur, Gates(), unmet)
        cur.phase = phase

    async def flush(self, timeout_s: float) -> None:
        cur = self.cur
        deadline = self.jobs.loop.time() + timeout_s
        while (cur.outgoing is not None or cur.queued is not None) and self.jobs.loop.time() < deadline:
            await asyncio.sleep(0.05)


def _fresh_url(plan: Plan, fresh: Any) -> Plan:
    """A journalled update resumed after a restart downloads from the URL the cloud handed out now (a
    presigned URL expires), when the document is otherwise the same release."""
    if not isinstance(plan, RobotPlan) or plan.operation != "update" or not isinstance(fresh, Mapping):
        return plan
    old, new = plan.args.get("release"), fresh.get("release")
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return plan
    same = all(old.get(k) == new.get(k) for k in ("version", "sha256", "size"))
    url = new.get("url")
    if not same or not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return plan
    return replace(plan, args={**plan.args, "release": {**old, "url": url}})


def _outputs(progress: Mapping[str, Any], include_stdout: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if include_stdout and progress.get("stdout"):
        out["stdout"] = progress["stdout"]
    if progress.get("stderr"):
        out["stderr"] = progress["stderr"]
    return out


def _public(entry: Entry) -> dict[str, Any]:
    return {
        "job_id": entry.job_id,
        "execution_number": entry.execution_number,
        "step": entry.step,
        "step_state": entry.step_state,
        "status": entry.final_status,
        "details": entry.details,
        "document": json.loads(json.dumps(entry.document)),
    }
