"""AWS IoT Jobs, sans-I/O: the registry (things, thing groups), jobs, executions, templates and their rules.

One object owns the whole state. Device requests come in as MQTT (topic, payload) pairs through ``handle``,
control-plane operations as botocore operation names with botocore member names through ``call``, the clock
through ``tick``; everything that must be published comes back as ``(topic, payload)`` pairs. No I/O, no
threads, no clock of its own: ``now`` (epoch seconds) is always passed in. The changed state comes out of
``take_dirty`` as JSON-able records, and an engine built from all records ever taken continues exactly
(rollout progress, timers, counters, notification fronts).

Rules, as AWS documents them (``shared/reference/aws/jobs_ota.md`` §1, ``jobs_and_provisioning.md`` §(a)):

- Device API: ``$aws/things/{t}/jobs/get``, ``start-next``, ``{jobId}/get`` (``$next``) and ``{jobId}/update``,
  answered on the request topic + ``/accepted`` or ``/rejected`` with ``clientToken`` echoed, string error
  codes and ``executionState`` where AWS gives it. ``jobDocument`` is an object over MQTT.
- Notifications: ``jobs/notify`` (at most 10 pending executions, IN_PROGRESS before QUEUED, by queue time)
  when an execution is queued or leaves the pending list; ``jobs/notify-next`` only when the front of that
  list changes (identity = job id and execution number). QUEUED→IN_PROGRESS sends no ``notify``. Empty forms:
  ``{"timestamp":T,"jobs":{}}`` and ``{"timestamp":T}``. All notifications of one operation are coalesced into
  at most one ``notify`` and one ``notify-next`` per thing.
- Rollout: executions are created (QUEUED, notified) in per-minute batches: at most ``maximumPerMinute``
  (default 1000) in each minute from the start of the rollout. ``exponentialRate`` starts at
  ``baseRatePerMinute`` and multiplies the rate by ``incrementFactor`` each time another
  ``numberOfNotifiedThings`` executions were created or another ``numberOfSucceededThings`` succeeded
  (whichever first; DG example 50→100→200 at 1000, 2000 notified). The criteria are checked when a new
  minute of the rollout begins, so the rate rises at most one step per minute and a minute's batch never
  grows while it is being created (a rate above the criterion would otherwise have no bound).
  Things joining a target group of a running CONTINUOUS job get their execution at once (not metered).
- Abort: after each terminal execution the criteria are checked in order. **minNumberOfExecutedThings counts
  completed executions** (SUCCEEDED, FAILED, REJECTED, TIMED_OUT: the Developer Guide's reading; botocore's
  says "notified"), and the percentage is failures of ``failureType`` (ALL = FAILED+REJECTED+TIMED_OUT) over
  completed executions. Every completed execution counts, also one that was later retried (so a failing
  fleet with retries still aborts, and the abort cancels the queued retries). The first criterion met cancels the job: QUEUED executions and the not yet created
  ones are canceled, IN_PROGRESS ones run on; the job gets ``reasonCode`` ``ABORT_CRITERIA_MET`` [INF: AWS's
  exact automatic code is not documented] and a comment naming the criterion.
- Timers: ``timeoutConfig.inProgressTimeoutInMinutes`` runs from IN_PROGRESS; a step timer
  (``stepTimeoutInMinutes`` on start-next/update, 1-10080) replaces the previous one, never runs past the
  in-progress timer, and ``-1`` discards it. Expiry → TIMED_OUT with notifications. Timers never fire early.
- Retries: ``jobExecutionsRetryConfig`` retries FAILED and TIMED_OUT (never REJECTED) executions with a new
  execution number and ``retryAttempt`` + 1, immediately; at most 10 retries per thing. A TIMED_OUT criterion
  needs a ``timeoutConfig``.
- Scheduling: a job with ``schedulingConfig.startTime`` is SCHEDULED until then (the targets are resolved at
  the start); at ``endTime`` the ``endBehavior`` applies (STOP_ROLLOUT, the default: no more executions;
  CANCEL; FORCE_CANCEL). With ``maintenanceWindows`` executions are created only inside a window, and
  outside one the job's QUEUED executions are hidden from ``notify``, ``notify-next``, ``start-next`` and
  ``$next`` (``get`` still lists them); IN_PROGRESS ones stay visible.
- A SNAPSHOT job is COMPLETED when nothing is left to roll out and all its executions are terminal; a
  CONTINUOUS job never completes. Cancel and delete are synchronous here (AWS: asynchronous), with both the
  ``..._in_progress`` and the final ``$aws/events/job/...`` event.
- ``${aws:iot:s3-presigned-url:URL}`` in a document is replaced by ``presign(URL, expiresInSec or 3600, now)``
  each time a device fetches the document over MQTT; ``GetJobDocument`` returns the stored document.
"""

from __future__ import annotations

import heapq
import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from localcloud.awsapi.errors import (
    ApiError,
    already_exists,
    conflict,
    invalid,
    invalid_state,
    not_found,
    version_conflict,
)
from localcloud.jobs.cron import Cron, format_datetime, parse_datetime
from localcloud.jobs.model import (
    ABORT_REASON_CODE,
    CANCELED,
    COMPLETED_STATES,
    DEFAULT_PER_MINUTE,
    DEVICE_STATUSES,
    EXECUTION_STATUSES,
    FAILED,
    IN_PROGRESS,
    MAX_DOCUMENT,
    MAX_RETRIES_PER_THING,
    NOTIFY_LIMIT,
    PENDING,
    QUEUED,
    REJECTED,
    REMOVED,
    STATUS_DETAILS_MAX_PAIRS,
    STATUS_DETAILS_MAX_VALUE,
    STEP_TIMEOUT_MAX,
    SUCCEEDED,
    TERMINAL,
    TIMED_OUT,
    Execution,
    Group,
    Job,
    Out,
    Record,
    RecordKey,
    Thing,
)

_JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_DETAILS_KEY = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_REASON_CODE = re.compile(r"^[A-Z0-9_]{1,128}$")
_ATTR_NAME = re.compile(r"^[a-zA-Z0-9_.,@/:#-]{1,128}$")
_ATTR_VALUE = re.compile(r"^[a-zA-Z0-9_.,@/:#=\[\]-]{0,800}$")
_PRESIGN = re.compile(r"\$\{aws:iot:s3-presigned-url:([^}]+)\}")
_PARAMETER = re.compile(r"\$\{aws:iot:parameter:([^}]+)\}")
_ID_NAMESPACE = uuid.UUID("6c4f3f0e-4e0b-4b8e-9a39-0d1f1f2b6a11")
_MINUTE = 60.0


class DeviceError(Exception):
    """A device request AWS answers on ``/rejected``."""

    def __init__(self, code: str, message: str, state: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.state = state


# ---------------------------------------------------------------------------------------------- helpers
def _dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _page(items: list[Any], params: Mapping[str, Any], default: int = 50) -> tuple[list[Any], str | None]:
    token = params.get("nextToken")
    start = 0
    if token:
        if not str(token).isdigit():
            raise invalid("The nextToken is not valid.")
        start = int(token)
    limit = params.get("maxResults") or default
    if not isinstance(limit, int) or not 1 <= limit <= 250:
        raise invalid("maxResults must be between 1 and 250.")
    page = items[start : start + limit]
    return page, (str(start + limit) if start + limit < len(items) else None)


def _require(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None or value == "":
        raise invalid(f"{name} is required.")
    return value


def _check_name(value: Any, what: str, pattern: re.Pattern[str] = _THING_NAME) -> str:
    if not isinstance(value, str) or not pattern.match(value):
        raise invalid(f"{what} {value!r} is not valid: it must match {pattern.pattern}")
    return value


def _check_int(value: Any, what: str, lo: float, hi: float) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise invalid(f"{what} must be an integer between {lo} and {hi}.")
    return value


def _check_text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit or any(ord(c) < 32 for c in value):
        raise invalid(f"{what} must be a string of at most {limit} printable characters.")
    return value


def _check_attributes(attrs: Any) -> dict[str, str]:
    if not isinstance(attrs, dict):
        raise invalid("attributes must be a map of strings.")
    for k, v in attrs.items():
        if not isinstance(k, str) or not _ATTR_NAME.match(k):
            raise invalid(f"attribute name {k!r} is not valid.")
        if not isinstance(v, str) or not _ATTR_VALUE.match(v):
            raise invalid(f"attribute value {v!r} for {k!r} is not valid.")
    return dict(attrs)


def _state(e: Execution) -> dict[str, Any]:
    out: dict[str, Any] = {"status": e.status}
    if e.details:
        out["statusDetails"] = dict(e.details)
    out["versionNumber"] = e.version
    return out


def _summary(e: Execution) -> dict[str, Any]:
    out: dict[str, Any] = {"jobId": e.job_id, "queuedAt": int(e.queued_at)}
    if e.started_at is not None:
        out["startedAt"] = int(e.started_at)
    out.update(lastUpdatedAt=int(e.updated_at), versionNumber=e.version, executionNumber=e.number)
    return out


def _queue_order(e: Execution) -> tuple[int, float, int]:
    return (0 if e.status == IN_PROGRESS else 1, e.queued_at, e.seq)


# ---------------------------------------------------------------------------------------------- engine
class JobsEngine:
    OPERATIONS: ClassVar[frozenset[str]] = frozenset(
        {
            "CreateThing",
            "DescribeThing",
            "ListThings",
            "DeleteThing",
            "UpdateThing",
            "CreateThingGroup",
            "DescribeThingGroup",
            "ListThingGroups",
            "DeleteThingGroup",
            "AddThingToThingGroup",
            "RemoveThingFromThingGroup",
            "ListThingsInThingGroup",
            "ListThingGroupsForThing",
            "CreateJob",
            "DescribeJob",
            "ListJobs",
            "UpdateJob",
            "CancelJob",
            "DeleteJob",
            "AssociateTargetsWithJob",
            "GetJobDocument",
            "DescribeJobExecution",
            "ListJobExecutionsForJob",
            "ListJobExecutionsForThing",
            "CancelJobExecution",
            "DeleteJobExecution",
            "CreateJobTemplate",
            "DescribeJobTemplate",
            "ListJobTemplates",
            "DeleteJobTemplate",
        }
    )

    def __init__(
        self,
        records: Mapping[RecordKey, Record] | None = None,
        *,
        account: str = "000000000000",
        region: str = "us-east-1",
        presign: Callable[[str, int, float], str] | None = None,
    ) -> None:
        self.account = account
        self.region = region
        self.presign = presign
        self.things: dict[str, Thing] = {}
        self.groups: dict[str, Group] = {}
        self.jobs: dict[str, Job] = {}
        self.templates: dict[str, Record] = {}
        self.executions: dict[tuple[str, str, int], Execution] = {}  # every execution ever, until deleted
        self.latest: dict[tuple[str, str], Execution] = {}  # (job, thing) -> the current execution
        self.by_thing: dict[str, dict[str, Execution]] = {}
        self.by_job: dict[str, dict[str, Execution]] = {}
        self.counts: dict[str, dict[str, int]] = {}  # job -> status -> things (their current execution)
        self._seq = 0
        self._timers: list[tuple[float, int, str, str, int]] = []
        self._dirty: set[RecordKey] = set()
        self._out: list[Out] = []
        self._touched: dict[str, bool] = {}
        self._cron_cache: dict[str, Cron] = {}
        self._load(records or {})

    # ------------------------------------------------------------------ persistence
    def _load(self, records: Mapping[RecordKey, Record]) -> None:
        for (kind, _key), r in records.items():
            if kind == "meta":
                self._seq = max(self._seq, int(r.get("seq", 0)))
            elif kind == "thing":
                t = Thing.from_record(r)
                self.things[t.name] = t
            elif kind == "group":
                g = Group.from_record(r)
                self.groups[g.name] = g
            elif kind == "job":
                j = Job.from_record(r)
                self.jobs[j.job_id] = j
                self.by_job.setdefault(j.job_id, {})
                self.counts.setdefault(j.job_id, {})
            elif kind == "template":
                self.templates[r["jobTemplateId"]] = r
        for g in self.groups.values():
            if g.parent in self.groups:
                self.groups[g.parent].children.add(g.name)
        for t in self.things.values():
            for gname in t.groups:
                if gname in self.groups:
                    self.groups[gname].members.add(t.name)
        execs = [Execution.from_record(r) for (kind, _k), r in records.items() if kind == "exec"]
        for e in sorted(execs, key=lambda x: x.number):
            self.executions[(e.job_id, e.thing, e.number)] = e
            self._seq = max(self._seq, e.seq)
            if e.job_id in self.jobs:
                self._index(e)
        for e in self.latest.values():
            if e.status == IN_PROGRESS and e.deadline is not None:
                self._push_timer(e)

    def _index(self, e: Execution) -> None:
        pair = (e.job_id, e.thing)
        old = self.latest.get(pair)
        counts = self.counts.setdefault(e.job_id, {})
        if old is not None:
            counts[old.status] -= 1
        self.latest[pair] = e
        self.by_thing.setdefault(e.thing, {})[e.job_id] = e
        self.by_job.setdefault(e.job_id, {})[e.thing] = e
        counts[e.status] = counts.get(e.status, 0) + 1

    def _mark(self, kind: str, key: str) -> None:
        self._dirty.add((kind, key))

    def take_dirty(self) -> dict[RecordKey, Record | None]:
        """The records changed since the last call, ``None`` for deleted ones; commit them before answering."""
        out: dict[RecordKey, Record | None] = {}
        for kind, key in self._dirty:
            out[(kind, key)] = self._record(kind, key)
        self._dirty = set()
        return out

    def requeue_dirty(self, dirty: Mapping[RecordKey, Record | None]) -> None:
        """Give back records a failed commit did not store; the next ``take_dirty`` returns them again."""
        self._dirty.update(dirty.keys())

    def _record(self, kind: str, key: str) -> Record | None:
        if kind == "meta":
            return {"seq": self._seq}
        if kind == "thing":
            t = self.things.get(key)
            return t.record() if t else None
        if kind == "group":
            g = self.groups.get(key)
            return g.record() if g else None
        if kind == "job":
            j = self.jobs.get(key)
            return j.record() if j else None
        if kind == "template":
            return self.templates.get(key)
        if kind == "exec":
            job_id, thing, number = key.split("/")
            e = self.executions.get((job_id, thing, int(number)))
            return e.record() if e else None
        raise KeyError(kind)

    def _next_seq(self) -> int:
        self._seq += 1
        self._mark("meta", "seq")
        return self._seq

    def _uuid(self, *parts: object) -> str:
        return str(uuid.uuid5(_ID_NAMESPACE, "/".join(map(str, (*parts, self._next_seq())))))

    # ------------------------------------------------------------------ arns
    def thing_arn(self, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:thing/{name}"

    def group_arn(self, name: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:thinggroup/{name}"

    def job_arn(self, job_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:job/{job_id}"

    def template_arn(self, template_id: str) -> str:
        return f"arn:aws:iot:{self.region}:{self.account}:jobtemplate/{template_id}"

    def _arn_target(self, arn: Any) -> tuple[str, str]:
        prefix = f"arn:aws:iot:{self.region}:{self.account}:"
        if not isinstance(arn, str) or not arn.startswith(prefix) or "/" not in arn:
            raise invalid(
                f"Target {arn!r} is not a thing or thing group ARN of {self.region}/{self.account}."
            )
        kind, name = arn[len(prefix) :].split("/", 1)
        if kind not in ("thing", "thinggroup"):
            raise invalid(f"Target {arn!r} is not a thing or thing group ARN.")
        return kind, name

    # ------------------------------------------------------------------ the three entry points
    def handle(self, topic: str, payload: bytes, now: float) -> list[Out]:
        """A device request on ``$aws/things/{t}/jobs/...``: the answer first, then notifications and events.

        Returns [] for topics that are not requests (other services' topics, and the answers and
        notifications this engine publishes itself, which a ``$aws/things/+/jobs/#`` subscription sees too).
        """
        parts = topic.split("/")
        if len(parts) < 5 or parts[0] != "$aws" or parts[1] != "things" or parts[3] != "jobs":
            return []
        if parts[-1] in ("accepted", "rejected") or parts[4:] in (["notify"], ["notify-next"]):
            return []
        thing, rest = parts[2], parts[4:]
        self._out = []
        self._touched = {}
        token: Any = None
        try:
            request = self._parse_request(payload)
            token = request.get("clientToken")
            if rest == ["get"]:
                answer = self._device_get_pending(thing, now)
            elif rest == ["start-next"]:
                answer = self._device_start_next(thing, request, now)
            elif len(rest) == 2 and rest[1] == "get":
                answer = self._device_describe(thing, rest[0], request, now)
            elif len(rest) == 2 and rest[1] == "update":
                answer = self._device_update(thing, rest[0], request, now)
            else:
                raise DeviceError("InvalidTopic", f"The topic {topic} is not a jobs API topic.")
        except Exception as exc:  # a request is always answered, whatever went wrong
            err = (
                exc
                if isinstance(exc, DeviceError)
                else DeviceError("InternalError", f"{type(exc).__name__}: {exc}")
            )
            if token is None:
                token = _best_effort_token(payload)
            body: dict[str, Any] = {"code": err.code, "message": err.message}
            if isinstance(token, str):
                body["clientToken"] = token
            body["timestamp"] = int(now)
            if err.state is not None:
                body["executionState"] = err.state
            return [(topic + "/rejected", _dumps(body))]
        answer["timestamp"] = int(now)
        if isinstance(token, str):
            answer["clientToken"] = token
        self._flush(now)
        return [(topic + "/accepted", _dumps(answer)), *self._take_out()]

    def call(self, operation: str, params: dict[str, Any], now: float) -> tuple[dict[str, Any], list[Out]]:
        """A control-plane operation (botocore name and members); raises ``ApiError`` with AWS's code."""
        if operation not in self.OPERATIONS:
            raise ApiError(400, "InvalidRequestException", f"Operation {operation} is not supported.")
        self._out = []
        self._touched = {}
        method: Callable[[dict[str, Any], float], dict[str, Any]] = getattr(self, "_op_" + _snake(operation))
        try:
            result = method(params, now)
        finally:
            self._flush(now)
        return result, self._take_out()

    def tick(self, now: float) -> list[Out]:
        """Fire what is due at ``now``: timers, scheduled starts and ends, windows, the next rollout minute."""
        self._out = []
        self._touched = {}
        while self._timers and self._timers[0][0] <= now:
            deadline, _seq, job_id, thing, number = heapq.heappop(self._timers)
            e = self.executions.get((job_id, thing, number))
            if (
                e is None
                or e.status != IN_PROGRESS
                or e.deadline != deadline
                or self.latest.get((job_id, thing)) is not e
            ):
                continue
            self._terminal(e, TIMED_OUT, now)
        for job in list(self.jobs.values()):
            self._advance(job, now)
        self._flush(now)
        return self._take_out()

    def next_deadline(self) -> float | None:
        """When ``tick`` next has something to do (epoch seconds), or None."""
        while self._timers:
            deadline, _seq, job_id, thing, number = self._timers[0]
            e = self.executions.get((job_id, thing, number))
            if e is not None and e.status == IN_PROGRESS and e.deadline == deadline:
                break
            heapq.heappop(self._timers)
        times = [self._timers[0][0]] if self._timers else []
        for job in self.jobs.values():
            t = self._job_deadline(job)
            if t is not None:
                times.append(t)
        return min(times) if times else None

    def ensure_thing(self, name: str, now: float) -> list[Out]:
        """Register a robot of this cloud as a thing if it is not one yet (no attributes, no groups)."""
        if name in self.things or not _THING_NAME.match(name):
            return []
        self._new_thing(name, {}, None, None, now)
        return []

    def has_thing(self, name: str) -> bool:
        """Whether the registry holds this thing (for the Commands engine's ``things`` argument)."""
        return name in self.things

    def _take_out(self) -> list[Out]:
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------------ device side
    def _parse_request(self, payload: bytes) -> dict[str, Any]:
        if not payload.strip():
            return {}
        try:
            request = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as err:
            raise DeviceError("InvalidJson", f"The request payload is not valid JSON: {err}") from None
        if not isinstance(request, dict):
            raise DeviceError("InvalidRequest", "The request payload must be a JSON object.")
        token = request.get("clientToken")
        if token is not None and (not isinstance(token, str) or len(token) > 64):
            raise DeviceError("InvalidRequest", "clientToken must be a string of at most 64 characters.")
        return request

    def _device_thing(self, thing: str) -> Thing:
        t = self.things.get(thing)
        if t is None:
            raise DeviceError("ResourceNotFound", f"Thing {thing} does not exist.")
        return t

    def _pending(self, thing: str, *, visible_only: bool) -> list[Execution]:
        out = [e for e in self.by_thing.get(thing, {}).values() if e.status in PENDING]
        if visible_only:
            out = [e for e in out if self._visible(e)]
        out.sort(key=_queue_order)
        return out

    def _visible(self, e: Execution) -> bool:
        if e.status != QUEUED:
            return True
        job = self.jobs[e.job_id]
        return job.window_open or not job.windows

    def _device_get_pending(self, thing: str, now: float) -> dict[str, Any]:
        self._device_thing(thing)
        pending = self._pending(thing, visible_only=False)
        return {
            "inProgressJobs": [_summary(e) for e in pending if e.status == IN_PROGRESS],
            "queuedJobs": [_summary(e) for e in pending if e.status == QUEUED],
        }

    def _device_execution(self, e: Execution, now: float, *, document: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"jobId": e.job_id, "thingName": e.thing}
        if document:
            out["jobDocument"] = self._device_document(self.jobs[e.job_id], now)
        out["status"] = e.status
        if e.details:
            out["statusDetails"] = dict(e.details)
        out["queuedAt"] = int(e.queued_at)
        if e.started_at is not None:
            out["startedAt"] = int(e.started_at)
        out.update(lastUpdatedAt=int(e.updated_at), versionNumber=e.version, executionNumber=e.number)
        if e.status == IN_PROGRESS and e.deadline is not None:
            out["approximateSecondsBeforeTimedOut"] = max(0, math.ceil(e.deadline - now))
        return out

    def _device_document(self, job: Job, now: float) -> Any:
        text = job.document
        presign = self.presign
        if presign is not None and "${aws:iot:s3-presigned-url:" in text:
            expires = int((job.config.get("presignedUrlConfig") or {}).get("expiresInSec") or 3600)
            text = _PRESIGN.sub(lambda m: json.dumps(presign(m.group(1), expires, now))[1:-1], text)
        try:
            return json.loads(text)
        except ValueError:
            return text

    def _step_timeout(self, request: Mapping[str, Any]) -> int | None:
        value = request.get("stepTimeoutInMinutes")
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not (value == -1 or 1 <= value <= STEP_TIMEOUT_MAX)
        ):
            raise DeviceError(
                "InvalidRequest", f"stepTimeoutInMinutes must be -1 or between 1 and {STEP_TIMEOUT_MAX}."
            )
        return value

    def _status_details(self, request: Mapping[str, Any]) -> dict[str, str] | None:
        details = request.get("statusDetails")
        if details is None:
            return None
        if not isinstance(details, dict):
            raise DeviceError("InvalidRequest", "statusDetails must be a JSON object of strings.")
        if len(details) > STATUS_DETAILS_MAX_PAIRS:
            raise DeviceError(
                "InvalidRequest", f"statusDetails may hold at most {STATUS_DETAILS_MAX_PAIRS} pairs."
            )
        for k, v in details.items():
            if not _DETAILS_KEY.match(k):
                raise DeviceError(
                    "InvalidRequest", f"statusDetails key {k!r} must match [a-zA-Z0-9:_-]+ (1-128)."
                )
            if not isinstance(v, str) or not 1 <= len(v) <= STATUS_DETAILS_MAX_VALUE:
                raise DeviceError(
                    "InvalidRequest",
                    f"statusDetails value of {k!r} must be a string of 1-{STATUS_DETAILS_MAX_VALUE} characters.",
                )
        return dict(details)

    def _device_start_next(self, thing: str, request: Mapping[str, Any], now: float) -> dict[str, Any]:
        self._device_thing(thing)
        details = self._status_details(request)
        step = self._step_timeout(request)
        pending = self._pending(thing, visible_only=True)
        if not pending:
            return {}
        e = pending[0]
        if e.status == QUEUED:
            self._set_in_progress(e, now, details if details is not None else {}, step)
            self._touch(thing, list_changed=False)
        return {"execution": self._device_execution(e, now)}

    def _set_in_progress(
        self, e: Execution, now: float, details: dict[str, str] | None, step: int | None
    ) -> None:
        job = self.jobs[e.job_id]
        e.status = IN_PROGRESS
        self._count(e, QUEUED, IN_PROGRESS)
        e.started_at = now
        timeout = (job.config.get("timeoutConfig") or {}).get("inProgressTimeoutInMinutes")
        e.progress_deadline = now + timeout * _MINUTE if timeout else None
        if details is not None:
            e.details = details
        self._apply_step(e, step, now)
        e.updated_at = now
        e.version += 1
        self._mark("exec", e.key)
        if e.deadline is not None:
            self._push_timer(e)

    def _apply_step(self, e: Execution, step: int | None, now: float) -> None:
        if step is None:
            return
        e.step_deadline = None if step == -1 else now + step * _MINUTE
        if e.step_deadline is not None and e.progress_deadline is not None:
            e.step_deadline = min(e.step_deadline, e.progress_deadline)
        if e.deadline is not None:
            self._push_timer(e)

    def _push_timer(self, e: Execution) -> None:
        assert e.deadline is not None
        heapq.heappush(self._timers, (e.deadline, e.seq * 1000 + e.version, e.job_id, e.thing, e.number))

    def _device_find(self, thing: str, job_id: str, number: Any) -> Execution:
        self._device_thing(thing)
        if number is not None:
            if isinstance(number, bool) or not isinstance(number, int):
                raise DeviceError("InvalidRequest", "executionNumber must be an integer.")
            found = self.executions.get((job_id, thing, number))
            if found is None:
                raise DeviceError(
                    "ResourceNotFound", f"Execution {number} of job {job_id} on {thing} does not exist."
                )
            return found
        e = self.latest.get((job_id, thing))
        if e is None:
            raise DeviceError("ResourceNotFound", f"Job {job_id} has no execution on thing {thing}.")
        return e

    def _device_describe(
        self, thing: str, job_id: str, request: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        include = request.get("includeJobDocument", True)
        if not isinstance(include, bool):
            raise DeviceError("InvalidRequest", "includeJobDocument must be a boolean.")
        if job_id == "$next":
            self._device_thing(thing)
            pending = self._pending(thing, visible_only=True)
            return {"execution": self._device_execution(pending[0], now, document=include)} if pending else {}
        e = self._device_find(thing, job_id, request.get("executionNumber"))
        if e.status in TERMINAL:  # AWS: describing a terminal execution is TerminalStateReached
            raise DeviceError(
                "TerminalStateReached",
                f"Job execution {job_id} on {thing} is {e.status}, a terminal state.",
                _state(e),
            )
        return {"execution": self._device_execution(e, now, document=include)}

    def _device_update(
        self, thing: str, job_id: str, request: Mapping[str, Any], now: float
    ) -> dict[str, Any]:
        status = request.get("status")
        if status is None:
            raise DeviceError("InvalidRequest", "status is required.")
        if status not in DEVICE_STATUSES:
            raise DeviceError(
                "InvalidRequest",
                f"status must be one of {', '.join(sorted(DEVICE_STATUSES))}, not {status!r}.",
            )
        include_state = request.get("includeJobExecutionState", False)
        include_doc = request.get("includeJobDocument", False)
        if not isinstance(include_state, bool) or not isinstance(include_doc, bool):
            raise DeviceError(
                "InvalidRequest", "includeJobExecutionState and includeJobDocument must be booleans."
            )
        expected = request.get("expectedVersion")
        if expected is not None:
            if isinstance(expected, str) and expected.isdigit():
                expected = int(expected)
            if isinstance(expected, bool) or not isinstance(expected, int):
                raise DeviceError("InvalidRequest", "expectedVersion must be a number or a string of digits.")
        details = self._status_details(request)
        step = self._step_timeout(request)
        e = self._device_find(thing, job_id, request.get("executionNumber"))
        if e.status in TERMINAL:
            raise DeviceError(
                "InvalidStateTransition",
                f"Job execution {job_id} on {thing} is {e.status}, a terminal state; it cannot be updated.",
                _state(e),
            )
        if expected is not None and expected != e.version:
            raise DeviceError(
                "VersionMismatch", f"expectedVersion {expected} does not match {e.version}.", _state(e)
            )
        if status == IN_PROGRESS:
            if e.status == QUEUED:
                self._set_in_progress(e, now, details, step)
                self._touch(thing, list_changed=False)
            else:
                if details is not None:
                    e.details = details
                self._apply_step(e, step, now)
                e.updated_at = now
                e.version += 1
                self._mark("exec", e.key)
        else:
            if details is not None:
                e.details = details
            self._terminal(e, status, now)
        answer: dict[str, Any] = {}
        if include_state:
            answer["executionState"] = _state(e)
        if include_doc:
            answer["jobDocument"] = self._device_document(self.jobs[e.job_id], now)
        return answer

    # ------------------------------------------------------------------ notifications
    def _touch(self, thing: str, *, list_changed: bool) -> None:
        self._touched[thing] = self._touched.get(thing, False) or list_changed

    def _flush(self, now: float) -> None:
        touched, self._touched = self._touched, {}
        ts = int(now)
        for name, list_changed in touched.items():
            t = self.things.get(name)
            if t is None:
                continue
            pending = self._pending(name, visible_only=True)
            if list_changed:
                jobs: dict[str, list[dict[str, Any]]] = {}
                for e in pending[:NOTIFY_LIMIT]:
                    jobs.setdefault(e.status, []).append(_summary(e))
                self._out.append((f"$aws/things/{name}/jobs/notify", _dumps({"timestamp": ts, "jobs": jobs})))
            front = [pending[0].job_id, pending[0].number] if pending else None
            if front != t.front:
                t.front = front
                self._mark("thing", name)
                body: dict[str, Any] = {"timestamp": ts}
                if pending:
                    e = pending[0]
                    ex: dict[str, Any] = {"jobId": e.job_id, "status": e.status, "queuedAt": int(e.queued_at)}
                    if e.started_at is not None:
                        ex["startedAt"] = int(e.started_at)
                    ex.update(
                        lastUpdatedAt=int(e.updated_at),
                        versionNumber=e.version,
                        executionNumber=e.number,
                        jobDocument=self._device_document(self.jobs[e.job_id], now),
                    )
                    body["execution"] = ex
                self._out.append((f"$aws/things/{name}/jobs/notify-next", _dumps(body)))

    def _job_event(self, job: Job, operation: str, now: float) -> None:
        status = {
            "completed": "COMPLETED",
            "canceled": "CANCELED",
            "deleted": "DELETED",
            "cancellation_in_progress": "CANCELLATION_IN_PROGRESS",
            "deletion_in_progress": "DELETION_IN_PROGRESS",
        }[operation]
        body: dict[str, Any] = {
            "eventType": "JOB",
            "eventId": self._uuid("job-event", job.job_id, operation),
            "timestamp": int(now),
            "operation": operation,
            "jobId": job.job_id,
            "status": status,
        }
        if operation == "canceled" and job.force_canceled:
            body["forceCanceled"] = True
        body["targetSelection"] = job.target_selection
        body["targets"] = list(job.targets)
        if job.config.get("description"):
            body["description"] = job.config["description"]
        if job.completed_at is not None and operation == "completed":
            body["completedAt"] = int(job.completed_at * 1000)
        body["createdAt"] = int(job.created * 1000)
        body["lastUpdatedAt"] = int(job.updated * 1000)
        if job.comment:
            body["comment"] = job.comment
        if operation in ("completed", "canceled"):
            c = self.counts.get(job.job_id, {})
            body["jobProcessDetails"] = {
                "numberOfCanceledThings": c.get(CANCELED, 0),
                "numberOfRejectedThings": c.get(REJECTED, 0),
                "numberOfFailedThings": c.get(FAILED, 0),
                "numberOfRemovedThings": c.get(REMOVED, 0),
                "numberOfSucceededThings": c.get(SUCCEEDED, 0),
                "numberOfTimedOutThings": c.get(TIMED_OUT, 0),
            }
        self._out.append((f"$aws/events/job/{job.job_id}/{operation}", _dumps(body)))

    def _execution_event(self, e: Execution, operation: str, now: float) -> None:
        body: dict[str, Any] = {
            "eventType": "JOB_EXECUTION",
            "eventId": self._uuid("execution-event", e.key, operation),
            "timestamp": int(now),
            "operation": operation,
            "jobId": e.job_id,
            "thingArn": self.thing_arn(e.thing),
            "status": e.status,
        }
        if e.details:
            body["statusDetails"] = dict(e.details)
        self._out.append((f"$aws/events/jobExecution/{e.job_id}/{operation}", _dumps(body)))

    # ------------------------------------------------------------------ execution life cycle
    def _count(self, e: Execution, old: str, new: str) -> None:
        if self.latest.get((e.job_id, e.thing)) is not e:
            return
        counts = self.counts.setdefault(e.job_id, {})
        counts[old] -= 1
        counts[new] = counts.get(new, 0) + 1

    def _create_execution(
        self,
        job: Job,
        thing: str,
        now: float,
        *,
        number: int = 1,
        retry_attempt: int = 0,
        retries: dict[str, int] | None = None,
    ) -> Execution:
        e = Execution(job.job_id, thing, number, now, self._next_seq(), updated_at=now)
        e.retry_attempt = retry_attempt
        e.retries = dict(retries or {})
        self.executions[(job.job_id, thing, number)] = e
        self._index(e)
        self._mark("exec", e.key)
        job.notified += 1
        job.updated = now
        self._mark("job", job.job_id)
        self._touch(thing, list_changed=True)
        return e

    def _terminal(self, e: Execution, status: str, now: float, *, force: bool = False) -> None:
        old = e.status
        e.status = status
        self._count(e, old, status)
        e.updated_at = now
        e.version += 1
        e.step_deadline = e.progress_deadline = None
        e.force_canceled = e.force_canceled or force
        self._mark("exec", e.key)
        self._touch(e.thing, list_changed=True)
        self._execution_event(e, status.lower(), now)
        job = self.jobs[e.job_id]
        job.updated = now
        self._mark("job", job.job_id)
        if status in COMPLETED_STATES:
            job.outcomes[status] = job.outcomes.get(status, 0) + 1
        if job.status != IN_PROGRESS:
            return
        if status in COMPLETED_STATES and self._check_abort(job, now):
            return
        if status in (FAILED, TIMED_OUT):
            self._maybe_retry(job, e, now)
        self._check_completed(job, now)

    def _maybe_retry(self, job: Job, e: Execution, now: float) -> None:
        config = job.config.get("jobExecutionsRetryConfig")
        if not config or e.retry_attempt >= MAX_RETRIES_PER_THING:
            return
        criteria = {c["failureType"]: c["numberOfRetries"] for c in config["criteriaList"]}
        kind = e.status if e.status in criteria else "ALL" if "ALL" in criteria else None
        if kind is None:
            return
        used = sum(e.retries.values()) if kind == "ALL" else e.retries.get(kind, 0)
        if used >= criteria[kind]:
            return
        retries = dict(e.retries)
        retries[kind] = retries.get(kind, 0) + 1
        self._create_execution(
            job, e.thing, now, number=e.number + 1, retry_attempt=e.retry_attempt + 1, retries=retries
        )

    def _check_abort(self, job: Job, now: float) -> bool:
        config = job.config.get("abortConfig")
        if not config:
            return False
        c = job.outcomes
        completed = sum(c.get(s, 0) for s in COMPLETED_STATES)
        for i, criterion in enumerate(config["criteriaList"]):
            kind = criterion["failureType"]
            failures = (
                sum(c.get(s, 0) for s in (FAILED, REJECTED, TIMED_OUT)) if kind == "ALL" else c.get(kind, 0)
            )
            if completed < criterion["minNumberOfExecutedThings"] or completed == 0:
                continue
            percent = 100.0 * failures / completed
            if percent >= criterion["thresholdPercentage"]:
                comment = (
                    f"Job aborted by abortConfig criterion {i + 1}: {failures} of {completed} completed executions "
                    f"{kind} ({percent:.2f}%), threshold {criterion['thresholdPercentage']}% after "
                    f"{criterion['minNumberOfExecutedThings']} executions."
                )
                self._cancel_job(job, now, force=False, reason_code=ABORT_REASON_CODE, comment=comment)
                return True
        return False

    def _check_completed(self, job: Job, now: float) -> None:
        if job.status != IN_PROGRESS or job.target_selection != "SNAPSHOT" or job.pending:
            return
        c = self.counts.get(job.job_id, {})
        if c.get(QUEUED, 0) or c.get(IN_PROGRESS, 0):
            return
        job.status = "COMPLETED"
        job.completed_at = now
        job.updated = now
        self._mark("job", job.job_id)
        self._job_event(job, "completed", now)

    def _cancel_job(
        self, job: Job, now: float, *, force: bool, reason_code: str | None, comment: str | None
    ) -> None:
        job.status = CANCELED
        job.force_canceled = job.force_canceled or force
        if reason_code is not None:
            job.reason_code = reason_code
        if comment is not None:
            job.comment = comment
        job.pending.clear()
        job.updated = now
        self._mark("job", job.job_id)
        self._job_event(job, "cancellation_in_progress", now)
        for e in list(self.by_job.get(job.job_id, {}).values()):
            if e.status == QUEUED or (force and e.status == IN_PROGRESS):
                self._terminal(e, CANCELED, now, force=force and e.status == IN_PROGRESS)
        self._job_event(job, "canceled", now)

    # ------------------------------------------------------------------ rollout, scheduling, windows
    def _rate(self, job: Job) -> int:
        rollout = job.config.get("jobExecutionsRolloutConfig") or {}
        cap = rollout.get("maximumPerMinute")
        exp = rollout.get("exponentialRate")
        if exp:
            rate = int(exp["baseRatePerMinute"] * exp["incrementFactor"] ** job.rate_level)
            return max(1, min(rate, cap) if cap else rate)
        return int(cap or DEFAULT_PER_MINUTE)

    def _raise_rate(self, job: Job) -> None:
        """Exponential rollout: one step up when the next multiple of a criterion is reached (checked once a minute)."""
        exp = (job.config.get("jobExecutionsRolloutConfig") or {}).get("exponentialRate")
        if not exp:
            return
        criteria = exp["rateIncreaseCriteria"]
        level = job.rate_level + 1
        notified = criteria.get("numberOfNotifiedThings")
        succeeded = criteria.get("numberOfSucceededThings")
        if (notified is not None and job.notified >= notified * level) or (
            succeeded is not None and self.counts.get(job.job_id, {}).get(SUCCEEDED, 0) >= succeeded * level
        ):
            job.rate_level = level

    def _rollout(self, job: Job, now: float) -> None:
        """Create the executions the rate allows: ``rate`` in each minute from the start of the rollout."""
        if job.status != IN_PROGRESS or job.rollout_stopped or not job.pending:
            return
        if job.windows and not job.window_open:
            return
        if job.minute_start is None:
            job.minute_start = now
            job.minute_count = 0
            self._mark("job", job.job_id)
        elif now >= job.minute_start + _MINUTE:
            job.minute_start += _MINUTE * ((now - job.minute_start) // _MINUTE)
            job.minute_count = 0
            self._raise_rate(job)
            self._mark("job", job.job_id)
        rate = self._rate(job)
        while job.pending and job.minute_count < rate:
            thing = job.pending.popleft()
            self._mark("job", job.job_id)
            if thing not in self.things or (job.job_id, thing) in self.latest:
                continue
            self._create_execution(job, thing, now)
            job.minute_count += 1

    def _job_deadline(self, job: Job) -> float | None:
        if job.status == "SCHEDULED":
            return job.start_at
        if job.status != IN_PROGRESS:
            return None
        times: list[float] = []
        if job.end_at is not None and not job.ended:
            times.append(job.end_at)
        if job.windows and job.window_next is not None:
            times.append(job.window_next)
        if (
            job.pending
            and not job.rollout_stopped
            and job.minute_start is not None
            and (job.window_open or not job.windows)
        ):
            times.append(job.minute_start + _MINUTE)
        return min(times) if times else None

    def _advance(self, job: Job, now: float) -> None:
        if job.status == "SCHEDULED" and job.start_at is not None and now >= job.start_at:
            job.status = IN_PROGRESS
            job.updated = now
            self._mark("job", job.job_id)
            self._update_window(job, now)
            job.pending.extend(self._resolve_targets(job.targets))
        if job.status != IN_PROGRESS:
            return
        if job.end_at is not None and not job.ended and now >= job.end_at:
            job.ended = True
            self._mark("job", job.job_id)
            behavior = (job.config.get("schedulingConfig") or {}).get("endBehavior") or "STOP_ROLLOUT"
            if behavior == "STOP_ROLLOUT":
                job.rollout_stopped = True
                job.pending.clear()
            else:
                self._cancel_job(job, now, force=behavior == "FORCE_CANCEL", reason_code=None, comment=None)
                return
        if job.windows and job.window_next is not None and now >= job.window_next:
            was_open = job.window_open
            self._update_window(job, now)
            if was_open != job.window_open:
                for e in self.by_job.get(job.job_id, {}).values():
                    if e.status == QUEUED:
                        self._touch(e.thing, list_changed=True)
        self._rollout(job, now)
        self._check_completed(job, now)

    def _cron(self, expression: str) -> Cron:
        cron = self._cron_cache.get(expression)
        if cron is None:
            cron = self._cron_cache[expression] = Cron.parse(expression)
        return cron

    def _window_at(self, job: Job, now: float) -> tuple[bool, float | None]:
        """Whether ``now`` is inside one of the job's windows, and when that next changes."""
        open_until: float | None = None
        next_start: float | None = None
        for w in job.windows:
            cron = self._cron(w["startTime"])
            duration = w["durationInMinutes"] * _MINUTE
            fire = cron.next_fire(now - duration + 1)
            while fire is not None and fire <= now:  # windows that started within the last duration
                end = fire + duration
                if end > now:
                    open_until = max(open_until or end, end)
                fire = cron.next_fire(fire + _MINUTE)
            if fire is not None:
                next_start = fire if next_start is None else min(next_start, fire)
        if open_until is not None:
            return True, open_until
        return False, next_start

    def _update_window(self, job: Job, now: float) -> None:
        if not job.windows:
            return
        job.window_open, job.window_next = self._window_at(job, now)
        self._mark("job", job.job_id)

    def _resolve_targets(self, targets: Iterable[str]) -> list[str]:
        seen: dict[str, None] = {}
        for arn in targets:
            kind, name = self._arn_target(arn)
            if kind == "thing":
                if name in self.things:
                    seen[name] = None
            else:
                for thing in sorted(self._group_things(name, recursive=True)):
                    seen[thing] = None
        return list(seen)

    def _group_things(self, name: str, *, recursive: bool) -> set[str]:
        g = self.groups.get(name)
        if g is None:
            return set()
        out = set(g.members)
        if recursive:
            for child in g.children:
                out |= self._group_things(child, recursive=True)
        return out

    def _ancestors(self, group: str) -> list[str]:
        out: list[str] = []
        g = self.groups.get(group)
        while g is not None and g.parent is not None and g.parent not in out:
            out.append(g.parent)
            g = self.groups.get(g.parent)
        return out

    def _targeted(self, job: Job, thing: str) -> bool:
        t = self.things.get(thing)
        if t is None:
            return False
        arns = set(job.targets)
        if self.thing_arn(thing) in arns:
            return True
        for g in t.groups:
            for name in (g, *self._ancestors(g)):
                if self.group_arn(name) in arns:
                    return True
        return False

    def _membership_changed(self, thing: str, now: float) -> None:
        """CONTINUOUS jobs: a thing that became a target gets its execution, one that left loses it."""
        for job in self.jobs.values():
            if job.target_selection != "CONTINUOUS" or job.status != IN_PROGRESS:
                continue
            targeted = self._targeted(job, thing)
            e = self.latest.get((job.job_id, thing))
            if targeted and (e is None or e.status == REMOVED) and thing not in job.pending:
                self._create_execution(job, thing, now, number=(e.number + 1) if e else 1)
            elif not targeted:
                if thing in job.pending:
                    job.pending.remove(thing)
                    self._mark("job", job.job_id)
                if e is not None and e.status in PENDING:
                    self._terminal(e, REMOVED, now)

    # ------------------------------------------------------------------ registry operations
    def _thing(
        self, params: Mapping[str, Any], name_key: str = "thingName", arn_key: str = "thingArn"
    ) -> Thing:
        name = params.get(name_key)
        if name is None and params.get(arn_key):
            arn = str(params[arn_key])
            name = arn.rsplit("/", 1)[-1] if arn.startswith(self.thing_arn("")) else None
            if name is None:
                raise invalid(f"{arn} is not a thing ARN.")
        if name is None:
            raise invalid(f"{name_key} or {arn_key} is required.")
        t = self.things.get(name)
        if t is None:
            raise not_found(f"Thing {name} cannot be found.")
        return t

    def _group(
        self, params: Mapping[str, Any], name_key: str = "thingGroupName", arn_key: str = "thingGroupArn"
    ) -> Group:
        name = params.get(name_key)
        if name is None and params.get(arn_key):
            arn = str(params[arn_key])
            name = arn.rsplit("/", 1)[-1] if arn.startswith(self.group_arn("")) else None
            if name is None:
                raise invalid(f"{arn} is not a thing group ARN.")
        if name is None:
            raise invalid(f"{name_key} or {arn_key} is required.")
        g = self.groups.get(name)
        if g is None:
            raise not_found(f"Thing group {name} cannot be found.")
        return g

    def _new_thing(
        self, name: str, attrs: dict[str, str], type_name: str | None, billing: str | None, now: float
    ) -> Thing:
        t = Thing(name, self._uuid("thing", name), now, 1, attrs, type_name, billing)
        self.things[name] = t
        self._mark("thing", name)
        return t

    def _op_create_thing(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        name = _check_name(_require(p, "thingName"), "thingName")
        attrs = _check_attributes((p.get("attributePayload") or {}).get("attributes") or {})
        type_name, billing = p.get("thingTypeName"), p.get("billingGroupName")
        t = self.things.get(name)
        if t is not None:
            if t.attributes != attrs or t.type_name != type_name:
                raise already_exists(f"Thing {name} already exists with different attributes.")
        else:
            t = self._new_thing(name, attrs, type_name, billing, now)
        return {"thingName": name, "thingArn": self.thing_arn(name), "thingId": t.thing_id}

    def _op_describe_thing(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        t = self._thing(p)
        out: dict[str, Any] = {
            "defaultClientId": t.name,
            "thingName": t.name,
            "thingId": t.thing_id,
            "thingArn": self.thing_arn(t.name),
        }
        if t.type_name:
            out["thingTypeName"] = t.type_name
        out["attributes"] = dict(t.attributes)
        out["version"] = t.version
        if t.billing_group:
            out["billingGroupName"] = t.billing_group
        return out

    def _op_list_things(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        things = [self.things[n] for n in sorted(self.things)]
        attr, value = p.get("attributeName"), p.get("attributeValue")
        if attr is not None:
            prefix = bool(p.get("usePrefixAttributeValue"))
            things = [
                t
                for t in things
                if attr in t.attributes
                and (
                    value is None
                    or (t.attributes[attr].startswith(value) if prefix else t.attributes[attr] == value)
                )
            ]
        if p.get("thingTypeName"):
            things = [t for t in things if t.type_name == p["thingTypeName"]]
        page, token = _page(things, p)
        out: dict[str, Any] = {"things": [self._thing_attribute(t) for t in page]}
        if token:
            out["nextToken"] = token
        return out

    def _thing_attribute(self, t: Thing) -> dict[str, Any]:
        out: dict[str, Any] = {"thingName": t.name}
        if t.type_name:
            out["thingTypeName"] = t.type_name
        out.update(thingArn=self.thing_arn(t.name), attributes=dict(t.attributes), version=t.version)
        return out

    def _op_update_thing(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        t = self._thing(p)
        expected = p.get("expectedVersion")
        if expected is not None and expected != t.version:
            raise version_conflict(f"Thing {t.name} is at version {t.version}, not {expected}.")
        payload = p.get("attributePayload")
        if payload is not None:
            attrs = _check_attributes(payload.get("attributes") or {})
            if payload.get("merge"):
                for k, v in attrs.items():
                    if v == "":
                        t.attributes.pop(k, None)
                    else:
                        t.attributes[k] = v
            else:
                t.attributes = {k: v for k, v in attrs.items() if v != ""}
        if p.get("removeThingType"):
            t.type_name = None
        elif p.get("thingTypeName"):
            t.type_name = p["thingTypeName"]
        t.version += 1
        self._mark("thing", t.name)
        return {}

    def _op_delete_thing(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        name = _check_name(_require(p, "thingName"), "thingName")
        t = self.things.get(name)
        if t is None:
            return {}
        expected = p.get("expectedVersion")
        if expected is not None and expected != t.version:
            raise version_conflict(f"Thing {name} is at version {t.version}, not {expected}.")
        for e in list(self.by_thing.get(name, {}).values()):
            if e.status in PENDING and self.jobs[e.job_id].status in (IN_PROGRESS, CANCELED):
                self._terminal(e, REMOVED, now)
        for gname in t.groups:
            if gname in self.groups:
                self.groups[gname].members.discard(name)
        for job in self.jobs.values():
            if name in job.pending:
                job.pending.remove(name)
                self._mark("job", job.job_id)
        del self.things[name]
        self._touched.pop(name, None)
        self._mark("thing", name)
        return {}

    def _op_create_thing_group(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        name = _check_name(_require(p, "thingGroupName"), "thingGroupName")
        props = p.get("thingGroupProperties") or {}
        description = props.get("thingGroupDescription")
        if description is not None:
            _check_text(description, "thingGroupDescription", 2028)
        attrs = _check_attributes((props.get("attributePayload") or {}).get("attributes") or {})
        parent = p.get("parentGroupName")
        existing = self.groups.get(name)
        if existing is not None:
            if (
                existing.parent != parent
                or existing.description != description
                or existing.attributes != attrs
            ):
                raise already_exists(f"Thing group {name} already exists with different properties.")
            return {
                "thingGroupName": name,
                "thingGroupArn": self.group_arn(name),
                "thingGroupId": existing.group_id,
            }
        if parent is not None and parent not in self.groups:
            raise invalid(f"Parent group {parent} does not exist.")
        g = Group(
            name, self._uuid("group", name), now, 1, description, attrs, parent, list(p.get("tags") or [])
        )
        self.groups[name] = g
        if parent is not None:
            self.groups[parent].children.add(name)
        self._mark("group", name)
        return {"thingGroupName": name, "thingGroupArn": self.group_arn(name), "thingGroupId": g.group_id}

    def _op_describe_thing_group(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        g = self._group(p)
        props: dict[str, Any] = {}
        if g.description is not None:
            props["thingGroupDescription"] = g.description
        props["attributePayload"] = {"attributes": dict(g.attributes)}
        meta: dict[str, Any] = {}
        if g.parent is not None:
            meta["parentGroupName"] = g.parent
            meta["rootToParentThingGroups"] = [
                {"groupName": a, "groupArn": self.group_arn(a)} for a in reversed(self._ancestors(g.name))
            ]
        meta["creationDate"] = g.created
        return {
            "thingGroupName": g.name,
            "thingGroupId": g.group_id,
            "thingGroupArn": self.group_arn(g.name),
            "version": g.version,
            "thingGroupProperties": props,
            "thingGroupMetadata": meta,
        }

    def _op_list_thing_groups(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        groups = [self.groups[n] for n in sorted(self.groups)]
        parent = p.get("parentGroup")
        if parent is not None:
            if p.get("recursive"):
                groups = [g for g in groups if parent in self._ancestors(g.name)]
            else:
                groups = [g for g in groups if g.parent == parent]
        if p.get("namePrefixFilter"):
            groups = [g for g in groups if g.name.startswith(p["namePrefixFilter"])]
        page, token = _page(groups, p)
        out: dict[str, Any] = {
            "thingGroups": [{"groupName": g.name, "groupArn": self.group_arn(g.name)} for g in page]
        }
        if token:
            out["nextToken"] = token
        return out

    def _op_delete_thing_group(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        name = _check_name(_require(p, "thingGroupName"), "thingGroupName")
        g = self.groups.get(name)
        if g is None:
            return {}
        expected = p.get("expectedVersion")
        if expected is not None and expected != g.version:
            raise version_conflict(f"Thing group {name} is at version {g.version}, not {expected}.")
        if g.children:
            raise invalid(
                f"Thing group {name} has child groups ({', '.join(sorted(g.children))}); delete them first."
            )
        members = sorted(g.members)
        for thing in members:
            t = self.things[thing]
            t.groups.discard(name)
            self._mark("thing", thing)
        if g.parent in self.groups:
            self.groups[g.parent].children.discard(name)
        del self.groups[name]
        self._mark("group", name)
        for thing in members:
            self._membership_changed(thing, now)
        return {}

    def _op_add_thing_to_thing_group(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        g = self._group(p)
        t = self._thing(p)
        if g.name not in t.groups:
            t.groups.add(g.name)
            g.members.add(t.name)
            self._mark("thing", t.name)
            self._membership_changed(t.name, now)
        return {}

    def _op_remove_thing_from_thing_group(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        g = self._group(p)
        t = self._thing(p)
        if g.name in t.groups:
            t.groups.discard(g.name)
            g.members.discard(t.name)
            self._mark("thing", t.name)
            self._membership_changed(t.name, now)
        return {}

    def _op_list_things_in_thing_group(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        g = self._group(p)
        page, token = _page(sorted(self._group_things(g.name, recursive=bool(p.get("recursive")))), p)
        out: dict[str, Any] = {"things": page}
        if token:
            out["nextToken"] = token
        return out

    def _op_list_thing_groups_for_thing(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        t = self._thing(p)
        page, token = _page(sorted(t.groups), p)
        out: dict[str, Any] = {"thingGroups": [{"groupName": n, "groupArn": self.group_arn(n)} for n in page]}
        if token:
            out["nextToken"] = token
        return out

    # ------------------------------------------------------------------ job configuration
    def _validate_configs(self, p: Mapping[str, Any], now: float) -> dict[str, Any]:
        config: dict[str, Any] = {}
        if p.get("description") is not None:
            config["description"] = _check_text(p["description"], "description", 2028)
        presigned = p.get("presignedUrlConfig")
        if presigned is not None:
            if presigned.get("expiresInSec") is not None:
                _check_int(presigned["expiresInSec"], "presignedUrlConfig.expiresInSec", 60, 3600)
            config["presignedUrlConfig"] = dict(presigned)
        rollout = p.get("jobExecutionsRolloutConfig")
        if rollout is not None:
            if rollout.get("maximumPerMinute") is not None:
                _check_int(rollout["maximumPerMinute"], "maximumPerMinute", 1, math.inf)
            exp = rollout.get("exponentialRate")
            if exp is not None:
                _check_int(exp.get("baseRatePerMinute"), "exponentialRate.baseRatePerMinute", 1, 1000)
                factor = exp.get("incrementFactor")
                if not isinstance(factor, int | float) or isinstance(factor, bool) or not 1.1 <= factor <= 5:
                    raise invalid("exponentialRate.incrementFactor must be between 1.1 and 5.")
                if round(factor, 1) != factor:
                    raise invalid(
                        "exponentialRate.incrementFactor supports one digit after the decimal point."
                    )
                criteria = exp.get("rateIncreaseCriteria") or {}
                if not any(
                    criteria.get(k) is not None for k in ("numberOfNotifiedThings", "numberOfSucceededThings")
                ):
                    raise invalid(
                        "rateIncreaseCriteria needs numberOfNotifiedThings or numberOfSucceededThings."
                    )
                for k in ("numberOfNotifiedThings", "numberOfSucceededThings"):
                    if criteria.get(k) is not None:
                        _check_int(criteria[k], f"rateIncreaseCriteria.{k}", 1, math.inf)
            config["jobExecutionsRolloutConfig"] = json.loads(json.dumps(rollout))
        abort = p.get("abortConfig")
        if abort is not None:
            criteria_list = abort.get("criteriaList")
            if not isinstance(criteria_list, list) or not criteria_list:
                raise invalid("abortConfig.criteriaList needs at least one criterion.")
            for c in criteria_list:
                if c.get("failureType") not in ("FAILED", "REJECTED", "TIMED_OUT", "ALL"):
                    raise invalid("abortConfig failureType must be FAILED, REJECTED, TIMED_OUT or ALL.")
                if c.get("action") != "CANCEL":
                    raise invalid("abortConfig action must be CANCEL.")
                pct = c.get("thresholdPercentage")
                if (
                    not isinstance(pct, int | float)
                    or isinstance(pct, bool)
                    or not 0 <= pct <= 100
                    or round(pct, 2) != pct
                ):
                    raise invalid("thresholdPercentage must be at most 100 with at most two decimals.")
                _check_int(c.get("minNumberOfExecutedThings"), "minNumberOfExecutedThings", 1, math.inf)
            config["abortConfig"] = json.loads(json.dumps(abort))
        timeout = p.get("timeoutConfig")
        if timeout is not None:
            if timeout.get("inProgressTimeoutInMinutes") is not None:
                _check_int(timeout["inProgressTimeoutInMinutes"], "inProgressTimeoutInMinutes", 1, 10080)
            config["timeoutConfig"] = dict(timeout)
        retry = p.get("jobExecutionsRetryConfig")
        if retry is not None:
            criteria_list = retry.get("criteriaList")
            if not isinstance(criteria_list, list) or not 1 <= len(criteria_list) <= 2:
                raise invalid("jobExecutionsRetryConfig.criteriaList needs one or two criteria.")
            for c in criteria_list:
                if c.get("failureType") not in ("FAILED", "TIMED_OUT", "ALL"):
                    raise invalid("retry failureType must be FAILED, TIMED_OUT or ALL.")
                _check_int(c.get("numberOfRetries"), "numberOfRetries", 0, 10)
            if len({c["failureType"] for c in criteria_list}) != len(criteria_list):
                raise invalid("retry criteria must have different failure types.")
            config["jobExecutionsRetryConfig"] = json.loads(json.dumps(retry))
        for key in (
            "namespaceId",
            "documentParameters",
            "destinationPackageVersions",
            "tags",
            "jobTemplateArn",
        ):
            if p.get(key) is not None:
                config[key] = json.loads(json.dumps(p[key]))
        return config

    def _validate_windows(self, windows: Any) -> list[dict[str, Any]]:
        if not isinstance(windows, list):
            raise invalid("maintenanceWindows must be a list.")
        for w in windows:
            start = w.get("startTime")
            if not isinstance(start, str) or not 1 <= len(start) <= 256:
                raise invalid(
                    "maintenanceWindows startTime must be a cron expression of at most 256 characters."
                )
            try:
                self._cron(start)
            except ValueError as err:
                raise invalid(f"maintenanceWindows startTime: {err}") from None
            _check_int(w.get("durationInMinutes"), "durationInMinutes", 1, 1430)
        return [dict(w) for w in windows]

    def _validate_scheduling(
        self, sched: Mapping[str, Any], now: float
    ) -> tuple[dict[str, Any], float | None, float | None]:
        out: dict[str, Any] = {}
        start = end = None
        try:
            if sched.get("startTime") is not None:
                start = parse_datetime(sched["startTime"])
                out["startTime"] = sched["startTime"]
            if sched.get("endTime") is not None:
                end = parse_datetime(sched["endTime"])
                out["endTime"] = sched["endTime"]
        except ValueError as err:
            raise invalid(str(err)) from None
        if start is not None and not now + 30 * _MINUTE <= start <= now + 366 * 86400:
            raise invalid("startTime must be at least thirty minutes and at most a year from now.")
        if end is not None:
            if not (end >= (start or now) + 30 * _MINUTE and end <= now + 2 * 366 * 86400):
                raise invalid(
                    "endTime must be at least thirty minutes after startTime and at most two years from now."
                )
            if start is not None and end - start > 2 * 366 * 86400:
                raise invalid("endTime must be at most two years after startTime.")
        behavior = sched.get("endBehavior")
        if behavior is not None:
            if behavior not in ("STOP_ROLLOUT", "CANCEL", "FORCE_CANCEL"):
                raise invalid("endBehavior must be STOP_ROLLOUT, CANCEL or FORCE_CANCEL.")
            out["endBehavior"] = behavior
        if sched.get("maintenanceWindows") is not None:
            out["maintenanceWindows"] = self._validate_windows(sched["maintenanceWindows"])
        return out, start, end

    def _check_document(self, document: Any) -> str:
        if not isinstance(document, str) or len(document) > MAX_DOCUMENT:
            raise invalid(f"document must be a JSON string of at most {MAX_DOCUMENT} characters.")
        try:
            json.loads(document)
        except ValueError as err:
            raise invalid(f"document is not valid JSON: {err}") from None
        return document

    # ------------------------------------------------------------------ job operations
    def _job(self, p: Mapping[str, Any]) -> Job:
        job_id = _check_name(_require(p, "jobId"), "jobId", _JOB_ID)
        job = self.jobs.get(job_id)
        if job is None:
            raise not_found(f"Job {job_id} cannot be found.")
        return job

    def _op_create_job(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        job_id = _check_name(_require(p, "jobId"), "jobId", _JOB_ID)
        if job_id in self.jobs:
            raise already_exists(f"Job {job_id} already exists.")
        params = dict(p)
        if params.get("jobTemplateArn"):
            template_id = str(params["jobTemplateArn"]).rsplit("/", 1)[-1]
            template = self.templates.get(template_id)
            if template is None or params["jobTemplateArn"] != self.template_arn(template_id):
                raise not_found(f"Job template {params['jobTemplateArn']} cannot be found.")
            for key in (
                "document",
                "description",
                "presignedUrlConfig",
                "jobExecutionsRolloutConfig",
                "abortConfig",
                "timeoutConfig",
                "jobExecutionsRetryConfig",
                "destinationPackageVersions",
            ):
                if params.get(key) is None and template.get(key) is not None:
                    params[key] = template[key]
            if template.get("maintenanceWindows") and not (params.get("schedulingConfig") or {}).get(
                "maintenanceWindows"
            ):
                params["schedulingConfig"] = {
                    **(params.get("schedulingConfig") or {}),
                    "maintenanceWindows": template["maintenanceWindows"],
                }
        if params.get("documentSource") is not None and params.get("document") is None:
            raise invalid(
                "documentSource (a document in S3) is not supported by the local cloud; pass document."
            )
        document = self._check_document(_require(params, "document"))
        if params.get("documentParameters"):
            values = params["documentParameters"]
            document = _PARAMETER.sub(lambda m: str(values.get(m.group(1), m.group(0))), document)
        targets = params.get("targets")
        if not isinstance(targets, list) or not targets:
            raise invalid("targets needs at least one thing or thing group ARN.")
        for arn in targets:
            kind, name = self._arn_target(arn)
            if (kind == "thing" and name not in self.things) or (
                kind == "thinggroup" and name not in self.groups
            ):
                raise not_found(f"Target {arn} cannot be found.")
        selection = params.get("targetSelection") or "SNAPSHOT"
        if selection not in ("SNAPSHOT", "CONTINUOUS"):
            raise invalid("targetSelection must be SNAPSHOT or CONTINUOUS.")
        config = self._validate_configs(params, now)
        retry = config.get("jobExecutionsRetryConfig")
        if (
            retry
            and any(c["failureType"] == "TIMED_OUT" for c in retry["criteriaList"])
            and not ((config.get("timeoutConfig") or {}).get("inProgressTimeoutInMinutes"))
        ):
            raise invalid(
                "A TIMED_OUT retry criterion needs a timeoutConfig with inProgressTimeoutInMinutes."
            )
        start = end = None
        if params.get("schedulingConfig") is not None:
            sched, start, end = self._validate_scheduling(params["schedulingConfig"], now)
            config["schedulingConfig"] = sched
        job = Job(job_id, document, list(targets), selection, now, self._next_seq(), config, updated=now)
        job.start_at, job.end_at = start, end
        self.jobs[job_id] = job
        self.by_job[job_id] = {}
        self.counts[job_id] = {}
        self._mark("job", job_id)
        if start is not None:
            job.status = "SCHEDULED"
        else:
            self._update_window(job, now)
            job.pending.extend(self._resolve_targets(targets))
            self._rollout(job, now)
            self._check_completed(job, now)
        out = {"jobArn": self.job_arn(job_id), "jobId": job_id}
        if config.get("description"):
            out["description"] = config["description"]
        return out

    def _process_details(self, job: Job) -> dict[str, Any]:
        c = self.counts.get(job.job_id, {})
        out: dict[str, Any] = {}
        if job.pending:
            out["processingTargets"] = list(job.targets)
        out.update(
            numberOfCanceledThings=c.get(CANCELED, 0),
            numberOfSucceededThings=c.get(SUCCEEDED, 0),
            numberOfFailedThings=c.get(FAILED, 0),
            numberOfRejectedThings=c.get(REJECTED, 0),
            numberOfQueuedThings=c.get(QUEUED, 0),
            numberOfInProgressThings=c.get(IN_PROGRESS, 0),
            numberOfRemovedThings=c.get(REMOVED, 0),
            numberOfTimedOutThings=c.get(TIMED_OUT, 0),
        )
        return out

    def _scheduled_rollouts(self, job: Job, now: float) -> list[dict[str, str]]:
        """The next seven window starts (DescribeJob ``scheduledJobRollouts``)."""
        starts: set[float] = set()
        for w in job.windows:
            cron = self._cron(w["startTime"])
            t = cron.next_fire(max(now, job.start_at or now))
            for _ in range(7):
                if t is None:
                    break
                starts.add(t)
                t = cron.next_fire(t + _MINUTE)
        return [{"startTime": format_datetime(t)} for t in sorted(starts)[:7]]

    def _op_describe_job(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        job = self._job(p)
        c = job.config
        out: dict[str, Any] = {
            "jobArn": self.job_arn(job.job_id),
            "jobId": job.job_id,
            "targetSelection": job.target_selection,
            "status": job.status,
            "forceCanceled": job.force_canceled,
        }
        if job.reason_code:
            out["reasonCode"] = job.reason_code
        if job.comment:
            out["comment"] = job.comment
        out["targets"] = list(job.targets)
        for key in ("description", "presignedUrlConfig", "jobExecutionsRolloutConfig", "abortConfig"):
            if c.get(key) is not None:
                out[key] = c[key]
        out["createdAt"] = job.created
        out["lastUpdatedAt"] = job.updated
        if job.completed_at is not None:
            out["completedAt"] = job.completed_at
        out["jobProcessDetails"] = self._process_details(job)
        out["timeoutConfig"] = c.get("timeoutConfig") or {}
        for key in ("namespaceId", "jobTemplateArn", "jobExecutionsRetryConfig", "documentParameters"):
            if c.get(key) is not None:
                out[key] = c[key]
        out["isConcurrent"] = bool(job.pending) and job.status == IN_PROGRESS
        if c.get("schedulingConfig") is not None:
            out["schedulingConfig"] = c["schedulingConfig"]
            if job.windows:
                out["scheduledJobRollouts"] = self._scheduled_rollouts(job, now)
        if c.get("destinationPackageVersions") is not None:
            out["destinationPackageVersions"] = c["destinationPackageVersions"]
        return {"job": out}

    def _op_get_job_document(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        return {"document": self._job(p).document}

    def _op_list_jobs(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        jobs = sorted(self.jobs.values(), key=lambda j: -j.seq)
        if p.get("status"):
            jobs = [j for j in jobs if j.status == p["status"]]
        if p.get("targetSelection"):
            jobs = [j for j in jobs if j.target_selection == p["targetSelection"]]
        group_name = p.get("thingGroupName")
        if p.get("thingGroupId"):
            group_name = next((g.name for g in self.groups.values() if g.group_id == p["thingGroupId"]), "\0")
        if group_name:
            arn = self.group_arn(group_name)
            jobs = [j for j in jobs if arn in j.targets]
        page, token = _page(jobs, p)
        summaries = []
        for j in page:
            s: dict[str, Any] = {"jobArn": self.job_arn(j.job_id), "jobId": j.job_id}
            group = next(
                (
                    self.groups[n]
                    for k, n in map(self._arn_target, j.targets)
                    if k == "thinggroup" and n in self.groups
                ),
                None,
            )
            if group is not None:
                s["thingGroupId"] = group.group_id
            s.update(
                targetSelection=j.target_selection,
                status=j.status,
                createdAt=j.created,
                lastUpdatedAt=j.updated,
            )
            if j.completed_at is not None:
                s["completedAt"] = j.completed_at
            s["isConcurrent"] = bool(j.pending) and j.status == IN_PROGRESS
            summaries.append(s)
        out: dict[str, Any] = {"jobs": summaries}
        if token:
            out["nextToken"] = token
        return out

    def _op_update_job(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        job = self._job(p)
        if job.status not in (IN_PROGRESS, "SCHEDULED"):
            raise invalid(
                f"Job {job.job_id} is {job.status}; only IN_PROGRESS and SCHEDULED jobs can be updated."
            )
        config = self._validate_configs(p, now)
        retry = config.get("jobExecutionsRetryConfig")
        if retry and any(
            c["numberOfRetries"] > (self._retries_of(job, c["failureType"])) for c in retry["criteriaList"]
        ):
            raise invalid("UpdateJob can only lower numberOfRetries (to 0) of existing retry criteria.")
        for key in (
            "description",
            "presignedUrlConfig",
            "jobExecutionsRolloutConfig",
            "abortConfig",
            "timeoutConfig",
            "jobExecutionsRetryConfig",
        ):
            if key in config:
                job.config[key] = config[key]
        job.updated = now
        self._mark("job", job.job_id)
        self._rollout(job, now)
        return {}

    def _retries_of(self, job: Job, kind: str) -> int:
        for c in (job.config.get("jobExecutionsRetryConfig") or {}).get("criteriaList") or []:
            if c["failureType"] == kind:
                return int(c["numberOfRetries"])
        return 0

    def _op_cancel_job(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        job = self._job(p)
        reason, comment = p.get("reasonCode"), p.get("comment")
        if reason is not None and (not isinstance(reason, str) or not _REASON_CODE.match(reason)):
            raise invalid("reasonCode must match [\\p{Upper}\\p{Digit}_]+ (at most 128).")
        if comment is not None:
            _check_text(comment, "comment", 2028)
        force = bool(p.get("force"))
        if job.status == "COMPLETED":
            raise invalid(f"Job {job.job_id} is COMPLETED and cannot be canceled.")
        if job.status == CANCELED and not force:
            raise invalid(f"Job {job.job_id} is already CANCELED.")
        self._cancel_job(job, now, force=force, reason_code=reason, comment=comment)
        out = {"jobArn": self.job_arn(job.job_id), "jobId": job.job_id}
        if job.config.get("description"):
            out["description"] = job.config["description"]
        return out

    def _op_delete_job(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        job = self._job(p)
        force = bool(p.get("force"))
        if job.status in (IN_PROGRESS, "SCHEDULED") and not force:
            raise invalid_state(
                f"Job {job.job_id} is {job.status}; delete it with force=true or cancel it first."
            )
        if not force and any(e.status == IN_PROGRESS for e in self.by_job.get(job.job_id, {}).values()):
            raise invalid_state(f"Job {job.job_id} has IN_PROGRESS executions; delete it with force=true.")
        self._job_event(job, "deletion_in_progress", now)
        for key in [k for k in self.executions if k[0] == job.job_id]:
            e = self.executions.pop(key)
            self._mark("exec", e.key)
            if self.latest.get((e.job_id, e.thing)) is e:
                del self.latest[(e.job_id, e.thing)]
                self.by_thing.get(e.thing, {}).pop(e.job_id, None)
                self._execution_event(e, "deleted", now)
                if e.status in PENDING:
                    self._touch(e.thing, list_changed=True)
        del self.jobs[job.job_id]
        self.by_job.pop(job.job_id, None)
        self.counts.pop(job.job_id, None)
        self._mark("job", job.job_id)
        self._job_event(job, "deleted", now)
        return {}

    def _op_associate_targets_with_job(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        job = self._job(p)
        targets = p.get("targets")
        if not isinstance(targets, list) or not targets:
            raise invalid("targets needs at least one thing or thing group ARN.")
        if job.target_selection != "CONTINUOUS":
            raise invalid(
                f"Job {job.job_id} is a SNAPSHOT job; targets can be added to CONTINUOUS jobs only."
            )
        if job.status not in (IN_PROGRESS, "SCHEDULED"):
            raise invalid(f"Job {job.job_id} is {job.status}; targets can be added to IN_PROGRESS jobs only.")
        for arn in targets:
            kind, name = self._arn_target(arn)
            if (kind == "thing" and name not in self.things) or (
                kind == "thinggroup" and name not in self.groups
            ):
                raise not_found(f"Target {arn} cannot be found.")
        if p.get("comment") is not None:
            job.comment = _check_text(p["comment"], "comment", 2028)
        new = [t for t in targets if t not in job.targets]
        job.targets.extend(new)
        job.updated = now
        self._mark("job", job.job_id)
        if job.status == IN_PROGRESS:
            queued = set(job.pending)
            for thing in self._resolve_targets(new):
                if (job.job_id, thing) not in self.latest and thing not in queued:
                    job.pending.append(thing)
            self._rollout(job, now)
        out = {"jobArn": self.job_arn(job.job_id), "jobId": job.job_id}
        if job.config.get("description"):
            out["description"] = job.config["description"]
        return out

    # ------------------------------------------------------------------ execution operations
    def _execution(self, p: Mapping[str, Any]) -> Execution:
        job = self._job(p)
        thing = _check_name(_require(p, "thingName"), "thingName")
        number = p.get("executionNumber")
        if number is not None:
            e = self.executions.get((job.job_id, thing, int(number)))
        else:
            e = self.latest.get((job.job_id, thing))
        if e is None:
            raise not_found(f"Job {job.job_id} has no execution on thing {thing}.")
        return e

    def _op_describe_job_execution(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        e = self._execution(p)
        out: dict[str, Any] = {"jobId": e.job_id, "status": e.status, "forceCanceled": e.force_canceled}
        out["statusDetails"] = {"detailsMap": dict(e.details)}
        out["thingArn"] = self.thing_arn(e.thing)
        out["queuedAt"] = e.queued_at
        if e.started_at is not None:
            out["startedAt"] = e.started_at
        out.update(lastUpdatedAt=e.updated_at, executionNumber=e.number, versionNumber=e.version)
        if e.status == IN_PROGRESS and e.deadline is not None:
            out["approximateSecondsBeforeTimedOut"] = max(0, math.ceil(e.deadline - now))
        return {"execution": out}

    def _summary_for_control(self, e: Execution) -> dict[str, Any]:
        s: dict[str, Any] = {"status": e.status, "queuedAt": e.queued_at}
        if e.started_at is not None:
            s["startedAt"] = e.started_at
        s.update(lastUpdatedAt=e.updated_at, executionNumber=e.number, retryAttempt=e.retry_attempt)
        return s

    def _status_filter(self, p: Mapping[str, Any]) -> str | None:
        status = p.get("status")
        if status is not None and status not in EXECUTION_STATUSES:
            raise invalid(f"status must be one of {', '.join(sorted(EXECUTION_STATUSES))}.")
        return status

    def _op_list_job_executions_for_job(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        job = self._job(p)
        status = self._status_filter(p)
        execs = sorted(self.by_job.get(job.job_id, {}).values(), key=lambda e: e.seq)
        if status:
            execs = [e for e in execs if e.status == status]
        page, token = _page(execs, p)
        out: dict[str, Any] = {
            "executionSummaries": [
                {"thingArn": self.thing_arn(e.thing), "jobExecutionSummary": self._summary_for_control(e)}
                for e in page
            ]
        }
        if token:
            out["nextToken"] = token
        return out

    def _op_list_job_executions_for_thing(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        thing = _check_name(_require(p, "thingName"), "thingName")
        if thing not in self.things:
            raise not_found(f"Thing {thing} cannot be found.")
        status = self._status_filter(p)
        execs = sorted(self.by_thing.get(thing, {}).values(), key=lambda e: e.seq)
        if status:
            execs = [e for e in execs if e.status == status]
        if p.get("jobId"):
            execs = [e for e in execs if e.job_id == p["jobId"]]
        page, token = _page(execs, p)
        out: dict[str, Any] = {
            "executionSummaries": [
                {"jobId": e.job_id, "jobExecutionSummary": self._summary_for_control(e)} for e in page
            ]
        }
        if token:
            out["nextToken"] = token
        return out

    def _op_cancel_job_execution(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        e = self._execution({k: v for k, v in p.items() if k != "executionNumber"})
        if e.status in TERMINAL:
            raise invalid_state(f"Job execution {e.job_id} on {e.thing} is {e.status}, a terminal state.")
        force = bool(p.get("force"))
        if e.status == IN_PROGRESS and not force:
            raise invalid_state(
                f"Job execution {e.job_id} on {e.thing} is IN_PROGRESS; cancel it with force=true."
            )
        expected = p.get("expectedVersion")
        if expected is not None and expected != e.version:
            raise version_conflict(f"Job execution is at version {e.version}, not {expected}.")
        details = p.get("statusDetails")
        if details is not None:
            try:
                e.details = {**e.details, **(self._status_details({"statusDetails": details}) or {})}
            except DeviceError as err:
                raise invalid(err.message) from None
        self._terminal(e, CANCELED, now, force=force and e.status == IN_PROGRESS)
        return {}

    def _op_delete_job_execution(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        number = _require(p, "executionNumber")
        e = self._execution({**p, "executionNumber": number})
        if e.status in PENDING and not p.get("force"):
            raise invalid_state(
                f"Job execution {e.job_id} on {e.thing} is {e.status}; delete it with force=true."
            )
        del self.executions[(e.job_id, e.thing, e.number)]
        self._mark("exec", e.key)
        if self.latest.get((e.job_id, e.thing)) is e:
            del self.latest[(e.job_id, e.thing)]
            self.by_thing.get(e.thing, {}).pop(e.job_id, None)
            self.by_job.get(e.job_id, {}).pop(e.thing, None)
            self.counts[e.job_id][e.status] -= 1
            older = [x for (j, t, _n), x in self.executions.items() if j == e.job_id and t == e.thing]
            if older:
                self._index(max(older, key=lambda x: x.number))
            if e.status in PENDING:
                self._touch(e.thing, list_changed=True)
        self._execution_event(e, "deleted", now)
        job = self.jobs[e.job_id]
        if e.status in COMPLETED_STATES and job.outcomes.get(e.status, 0) > 0:
            job.outcomes[e.status] -= 1  # "deleted executions change the abort computation"
        job.updated = now
        self._mark("job", job.job_id)
        self._check_completed(job, now)
        return {}

    # ------------------------------------------------------------------ templates
    def _op_create_job_template(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        template_id = _check_name(_require(p, "jobTemplateId"), "jobTemplateId", _JOB_ID)
        if template_id in self.templates:
            raise conflict(f"Job template {template_id} already exists.")
        description = _check_text(_require(p, "description"), "description", 2028)
        document = p.get("document")
        source_job = p.get("jobArn")
        config: dict[str, Any] = {}
        if source_job:
            job_id = str(source_job).rsplit("/", 1)[-1]
            job = self.jobs.get(job_id)
            if job is None or source_job != self.job_arn(job_id):
                raise not_found(f"Job {source_job} cannot be found.")
            document = job.document
            for key in (
                "presignedUrlConfig",
                "jobExecutionsRolloutConfig",
                "abortConfig",
                "timeoutConfig",
                "jobExecutionsRetryConfig",
            ):
                if job.config.get(key) is not None:
                    config[key] = job.config[key]
        elif p.get("documentSource") is not None and document is None:
            raise invalid(
                "documentSource (a document in S3) is not supported by the local cloud; pass document."
            )
        document = self._check_document(document)
        config.update({k: v for k, v in self._validate_configs(p, now).items() if k != "description"})
        record: dict[str, Any] = {
            "jobTemplateId": template_id,
            "description": description,
            "document": document,
            "createdAt": now,
        }
        record.update(config)
        if p.get("maintenanceWindows") is not None:
            record["maintenanceWindows"] = self._validate_windows(p["maintenanceWindows"])
        self.templates[template_id] = record
        self._mark("template", template_id)
        return {"jobTemplateArn": self.template_arn(template_id), "jobTemplateId": template_id}

    def _op_describe_job_template(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        template_id = _check_name(_require(p, "jobTemplateId"), "jobTemplateId", _JOB_ID)
        t = self.templates.get(template_id)
        if t is None:
            raise not_found(f"Job template {template_id} cannot be found.")
        out: dict[str, Any] = {"jobTemplateArn": self.template_arn(template_id), "jobTemplateId": template_id}
        for key in (
            "description",
            "document",
            "createdAt",
            "presignedUrlConfig",
            "jobExecutionsRolloutConfig",
            "abortConfig",
            "timeoutConfig",
            "jobExecutionsRetryConfig",
            "maintenanceWindows",
            "destinationPackageVersions",
        ):
            if t.get(key) is not None:
                out[key] = t[key]
        return out

    def _op_list_job_templates(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        templates = sorted(self.templates.values(), key=lambda t: t["jobTemplateId"])
        page, token = _page(templates, p)
        out: dict[str, Any] = {
            "jobTemplates": [
                {
                    "jobTemplateArn": self.template_arn(t["jobTemplateId"]),
                    "jobTemplateId": t["jobTemplateId"],
                    "description": t["description"],
                    "createdAt": t["createdAt"],
                }
                for t in page
            ]
        }
        if token:
            out["nextToken"] = token
        return out

    def _op_delete_job_template(self, p: dict[str, Any], now: float) -> dict[str, Any]:
        template_id = _check_name(_require(p, "jobTemplateId"), "jobTemplateId", _JOB_ID)
        if template_id not in self.templates:
            raise not_found(f"Job template {template_id} cannot be found.")
        del self.templates[template_id]
        self._mark("template", template_id)
        return {}


def _snake(operation: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()


def _best_effort_token(payload: bytes) -> str | None:
    m = re.search(rb'"clientToken"\s*:\s*"([^"\\]{0,64})"', payload)
    return m.group(1).decode(errors="replace") if m else None
