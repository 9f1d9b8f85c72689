"""The Jobs engine's state as values: things, thing groups, jobs and executions, each with its JSON record.

A record is what ``JobsEngine.take_dirty`` hands out and what a new engine is built from; the field names
follow botocore's where one exists.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

Out = tuple[str, bytes]
Record = dict[str, Any]
RecordKey = tuple[str, str]

QUEUED, IN_PROGRESS = "QUEUED", "IN_PROGRESS"
SUCCEEDED, FAILED, REJECTED = "SUCCEEDED", "FAILED", "REJECTED"
TIMED_OUT, CANCELED, REMOVED = "TIMED_OUT", "CANCELED", "REMOVED"
PENDING = frozenset({QUEUED, IN_PROGRESS})
TERMINAL = frozenset({SUCCEEDED, FAILED, REJECTED, TIMED_OUT, CANCELED, REMOVED})
COMPLETED_STATES = (SUCCEEDED, FAILED, REJECTED, TIMED_OUT)
DEVICE_STATUSES = frozenset({IN_PROGRESS, SUCCEEDED, FAILED, REJECTED})
EXECUTION_STATUSES = PENDING | TERMINAL

NOTIFY_LIMIT = 10
DEFAULT_PER_MINUTE = 1000
MAX_RETRIES_PER_THING = 10
MAX_DOCUMENT = 32768
ABORT_REASON_CODE = "ABORT_CRITERIA_MET"
STATUS_DETAILS_MAX_PAIRS = 10
STATUS_DETAILS_MAX_VALUE = 1024
STEP_TIMEOUT_MAX = 10080


@dataclass
class Thing:
    name: str
    thing_id: str
    created: float
    version: int = 1
    attributes: dict[str, str] = field(default_factory=dict)
    type_name: str | None = None
    billing_group: str | None = None
    groups: set[str] = field(default_factory=set)
    front: list[Any] | None = None  # [jobId, executionNumber] last sent on notify-next

    def record(self) -> Record:
        return {
            "name": self.name,
            "thingId": self.thing_id,
            "created": self.created,
            "version": self.version,
            "attributes": self.attributes,
            "thingTypeName": self.type_name,
            "billingGroupName": self.billing_group,
            "groups": sorted(self.groups),
            "front": self.front,
        }

    @classmethod
    def from_record(cls, r: Record) -> Thing:
        return cls(
            r["name"],
            r["thingId"],
            r["created"],
            r["version"],
            dict(r["attributes"]),
            r.get("thingTypeName"),
            r.get("billingGroupName"),
            set(r["groups"]),
            r.get("front"),
        )


@dataclass
class Group:
    name: str
    group_id: str
    created: float
    version: int = 1
    description: str | None = None
    attributes: dict[str, str] = field(default_factory=dict)
    parent: str | None = None
    tags: list[dict[str, str]] = field(default_factory=list)
    members: set[str] = field(default_factory=set)
    children: set[str] = field(default_factory=set)

    def record(self) -> Record:
        return {
            "name": self.name,
            "thingGroupId": self.group_id,
            "created": self.created,
            "version": self.version,
            "description": self.description,
            "attributes": self.attributes,
            "parent": self.parent,
            "tags": self.tags,
        }

    @classmethod
    def from_record(cls, r: Record) -> Group:
        return cls(
            r["name"],
            r["thingGroupId"],
            r["created"],
            r["version"],
            r.get("description"),
            dict(r["attributes"]),
            r.get("parent"),
            list(r.get("tags") or []),
        )


@dataclass
class Job:
    job_id: str
    document: str
    targets: list[str]
    target_selection: str
    created: float
    seq: int
    config: dict[str, Any]  # description, presignedUrlConfig, rollout/abort/timeout/retry/scheduling, ...
    status: str = IN_PROGRESS
    updated: float = 0.0
    completed_at: float | None = None
    force_canceled: bool = False
    reason_code: str | None = None
    comment: str | None = None
    pending: deque[str] = field(default_factory=deque)
    rollout_stopped: bool = False
    minute_start: float | None = None  # the current rollout minute began here
    minute_count: int = 0  # executions created in it
    rate_level: int = 0
    notified: int = 0
    start_at: float | None = None
    end_at: float | None = None
    ended: bool = False
    window_open: bool = True
    window_next: float | None = None
    outcomes: dict[str, int] = field(default_factory=dict)  # completed executions by status, retried ones too

    @property
    def windows(self) -> list[dict[str, Any]]:
        return list((self.config.get("schedulingConfig") or {}).get("maintenanceWindows") or [])

    def record(self) -> Record:
        return {
            "jobId": self.job_id,
            "document": self.document,
            "targets": self.targets,
            "targetSelection": self.target_selection,
            "created": self.created,
            "seq": self.seq,
            "config": self.config,
            "status": self.status,
            "updated": self.updated,
            "completedAt": self.completed_at,
            "forceCanceled": self.force_canceled,
            "reasonCode": self.reason_code,
            "comment": self.comment,
            "pending": list(self.pending),
            "rolloutStopped": self.rollout_stopped,
            "minuteStart": self.minute_start,
            "minuteCount": self.minute_count,
            "rateLevel": self.rate_level,
            "notified": self.notified,
            "startAt": self.start_at,
            "endAt": self.end_at,
            "ended": self.ended,
            "windowOpen": self.window_open,
            "windowNext": self.window_next,
            "outcomes": self.outcomes,
        }

    @classmethod
    def from_record(cls, r: Record) -> Job:
        return cls(
            r["jobId"],
            r["document"],
            list(r["targets"]),
            r["targetSelection"],
            r["created"],
            r["seq"],
            dict(r["config"]),
            r["status"],
            r["updated"],
            r.get("completedAt"),
            r.get("forceCanceled", False),
            r.get("reasonCode"),
            r.get("comment"),
            deque(r.get("pending") or []),
            r.get("rolloutStopped", False),
            r.get("minuteStart"),
            r.get("minuteCount", 0),
            r.get("rateLevel", 0),
            r.get("notified", 0),
            r.get("startAt"),
            r.get("endAt"),
            r.get("ended", False),
            r.get("windowOpen", True),
            r.get("windowNext"),
            dict(r.get("outcomes") or {}),
        )


@dataclass
class Execution:
    job_id: str
    thing: str
    number: int
    queued_at: float
    seq: int
    status: str = QUEUED
    details: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None
    updated_at: float = 0.0
    version: int = 1
    retry_attempt: int = 0
    retries: dict[str, int] = field(default_factory=dict)  # failure type -> retries used so far
    step_deadline: float | None = None
    progress_deadline: float | None = None
    force_canceled: bool = False

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.thing}/{self.number}"

    @property
    def deadline(self) -> float | None:
        times = [t for t in (self.step_deadline, self.progress_deadline) if t is not None]
        return min(times) if times else None

    def record(self) -> Record:
        return {
            "jobId": self.job_id,
            "thing": self.thing,
            "number": self.number,
            "queuedAt": self.queued_at,
            "seq": self.seq,
            "status": self.status,
            "details": self.details,
            "startedAt": self.started_at,
            "updatedAt": self.updated_at,
            "version": self.version,
            "retryAttempt": self.retry_attempt,
            "retries": self.retries,
            "stepDeadline": self.step_deadline,
            "progressDeadline": self.progress_deadline,
            "forceCanceled": self.force_canceled,
        }

    @classmethod
    def from_record(cls, r: Record) -> Execution:
        return cls(
            r["jobId"],
            r["thing"],
            r["number"],
            r["queuedAt"],
            r["seq"],
            r["status"],
            dict(r["details"]),
            r.get("startedAt"),
            r["updatedAt"],
            r["version"],
            r.get("retryAttempt", 0),
            dict(r.get("retries") or {}),
            r.get("stepDeadline"),
            r.get("progressDeadline"),
            r.get("forceCanceled", False),
        )
