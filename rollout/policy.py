"""The rollout's rules, pure: option specs, what each robot's state is, and what the rollout does next.

No I/O and no clock: every function takes ``now`` (epoch seconds). :mod:`rollout.controller` feeds it what it
read from the control plane (job executions and their ``statusDetails``) and from the robots (the shadow's
``reported`` and the retained presence), and carries out the :class:`Decision`.

A robot is in one of :data:`STATES`. It is *touched* once it has a job execution, *on the new version* from
the first time it reports running it (in trial or committed: "the time it got the new version"), *healthy*
when its execution SUCCEEDED and it ran the new version for the bake time with no problem seen (never
offline longer than the limit, no restart, no new error, no failing command, no battery drain above its
own earlier rate), *unhealthy* when a problem was seen on the new version. A final state never changes.

Abort rules (``--abort "failed>10% after 20,unhealthy>3"``) count robots, not job statuses: ``failed``
counts failed + rolled_back + unhealthy; ``rolled_back``, ``unhealthy`` and ``rejected`` count themselves.
A percentage is of the robots that finished (healthy, failed, rolled_back, rejected, unhealthy), and
applies once at least ``after`` robots finished (default 1); a count applies at once.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

QUEUED = "queued"
UPDATING = "updating"
IN_TRIAL = "in_trial"
UPDATED = "updated"
HEALTHY = "healthy"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
REJECTED = "rejected"
UNHEALTHY = "unhealthy"
CANCELED = "canceled"
STATES = (QUEUED, UPDATING, IN_TRIAL, UPDATED, HEALTHY, ROLLED_BACK, FAILED, REJECTED, UNHEALTHY, CANCELED)
FINISHED = frozenset({HEALTHY, ROLLED_BACK, FAILED, REJECTED, UNHEALTHY})
"""Robots with a verdict: the denominators of the percentages."""
FINAL = FINISHED | {CANCELED}
FAILURES = frozenset({FAILED, ROLLED_BACK, UNHEALTHY})
METRICS: dict[str, frozenset[str]] = {
    "failed": FAILURES,
    "rolled_back": frozenset({ROLLED_BACK}),
    "unhealthy": frozenset({UNHEALTHY}),
    "rejected": frozenset({REJECTED}),
}
WINDOWS: dict[str, dict[str, bool]] = {"docked": {"docked": True}, "idle": {"idle": True}, "any": {}}

CONTINUE, PROMOTE, PAUSE, ABORT, DONE = "continue", "promote", "pause", "abort", "done"
ACTIONS = (CONTINUE, PROMOTE, PAUSE, ABORT, DONE)

_ABORT = re.compile(
    r"(?P<metric>[a-z_]+)\s*>\s*(?P<value>\d+(?:\.\d+)?)\s*(?P<pct>%)?(?:\s+after\s+(?P<after>\d+))?"
)
_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h)?")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MAX_RATE = 1000
DEFAULT_SELF_TEST_S = 60.0
"""The robot's self-test hold (the job document's ``bake_s``) without ``--self-test``, at most the bake."""
ROLLBACK_SELF_TEST_S = 30.0
"""The rollback job's self-test hold (at most the robot's): it goes back to a version known good."""


class SpecError(ValueError):
    """An option's value the rollout cannot take; the message names the option and says what is wanted."""


# option specs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Canary:
    """``--canary N`` robots or ``--canary P%`` of the targets (at least one when P > 0)."""

    count: int | None = None
    percent: float | None = None

    def size(self, total: int) -> int:
        if self.percent is not None:
            n = math.ceil(self.percent * total / 100 - 1e-9)
            return min(total, max(1 if self.percent > 0 else 0, n))
        return min(total, self.count or 0)

    def to_text(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count or 0)


def parse_canary(text: str) -> Canary:
    t = text.strip()
    try:
        if t.endswith("%"):
            pct = float(t[:-1])
            if not 0 <= pct <= 100 or not math.isfinite(pct):
                raise ValueError
            return Canary(percent=pct)
        n = int(t)
        if n < 0:
            raise ValueError
        return Canary(count=n)
    except ValueError:
        raise SpecError(f"--canary {text}: use N robots (e.g. 5) or P% of the targets (e.g. 2%)") from None


def parse_rate(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_RATE:
        raise SpecError(f"--rate {text}: robots a minute, a whole number 1..{MAX_RATE}")
    return n


@dataclass(frozen=True)
class Exponential:
    """AWS's ``exponentialRate``: ``base`` a minute, times ``factor`` each time another ``step`` robots
    succeeded (``criterion`` SUCCEEDED) or were notified (NOTIFIED)."""

    base: int
    factor: float
    step: int
    criterion: str = "SUCCEEDED"

    def to_aws(self) -> dict[str, Any]:
        key = "numberOfSucceededThings" if self.criterion == "SUCCEEDED" else "numberOfNotifiedThings"
        return {
            "baseRatePerMinute": self.base,
            "incrementFactor": self.factor,
            "rateIncreaseCriteria": {key: self.step},
        }

    def to_text(self) -> str:
        return f"{self.base},{self.factor:g},{self.criterion}:{self.step}"


def parse_exponential(text: str) -> Exponential:
    """``BASE,FACTOR`` (the rate rises each time another BASE robots succeeded), ``BASE,FACTOR,N`` or
    ``BASE,FACTOR,SUCCEEDED:N`` / ``NOTIFIED:N``."""
    flag = f"--exponential {text}"
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise SpecError(f"{flag}: use BASE,FACTOR or BASE,FACTOR,SUCCEEDED:N|NOTIFIED:N (e.g. 10,2)")
    try:
        base = int(parts[0])
    except ValueError:
        raise SpecError(f"{flag}: BASE is robots a minute, a whole number 1..{MAX_RATE}") from None
    if not 1 <= base <= MAX_RATE:
        raise SpecError(f"{flag}: BASE is robots a minute, a whole number 1..{MAX_RATE}")
    try:
        factor = float(parts[1])
    except ValueError:
        factor = 0.0
    if not 1.1 <= factor <= 5.0 or round(factor, 1) != factor:
        raise SpecError(f"{flag}: FACTOR is 1.1..5.0 with one decimal at most (AWS's incrementFactor)")
    criterion, step = "SUCCEEDED", base
    if len(parts) == 3:
        kind, sep, count = parts[2].rpartition(":")
        if sep:
            criterion = kind.upper()
            if criterion not in ("SUCCEEDED", "NOTIFIED"):
                raise SpecError(f"{flag}: the step is N, SUCCEEDED:N or NOTIFIED:N, not {kind}")
        try:
            step = int(count)
        except ValueError:
            step = 0
        if not 1 <= step <= 1_000_000:
            raise SpecError(f"{flag}: the step N is a whole number 1..1000000")
    return Exponential(base, factor, step, criterion)


@dataclass(frozen=True)
class AbortRule:
    """One ``METRIC>VALUE[%] [after N]``."""

    metric: str
    value: float
    percent: bool
    after: int = 1

    def to_text(self) -> str:
        after = f" after {self.after}" if self.percent and self.after != 1 else ""
        return f"{self.metric}>{self.value:g}{'%' if self.percent else ''}{after}"

    def crossed(self, states: Iterable[str]) -> tuple[bool, str]:
        """Whether the rule holds over these robots' states, and the sentence saying why."""
        counted = METRICS[self.metric]
        items = list(states)
        finished = sum(1 for s in items if s in FINISHED)
        n = sum(1 for s in items if s in counted)
        what = (
            "failed, rolled back or unhealthy" if self.metric == "failed" else self.metric.replace("_", " ")
        )
        if not self.percent:
            return n > self.value, f"{self.to_text()}: {n} robots {what}"
        if finished < max(1, self.after):
            return False, f"{self.to_text()}: {finished} of {self.after} robots finished"
        pct = 100.0 * n / finished
        return pct > self.value, f"{self.to_text()}: {n} of {finished} finished robots ({pct:.1f}%) {what}"


def parse_abort(text: str) -> tuple[AbortRule, ...]:
    """``failed>10% after 20``, ``rolled_back>5%``, ``unhealthy>3``; several joined by ``,``."""
    rules: list[AbortRule] = []
    for raw in text.split(","):
        part = raw.strip().lower()
        if not part:
            raise SpecError(f"--abort {text!r}: an empty rule (rules are joined by ',')")
        m = _ABORT.fullmatch(part)
        if m is None:
            raise SpecError(
                f"--abort {raw.strip()!r}: use METRIC>N, METRIC>P% or METRIC>P% after N "
                f"(e.g. 'failed>10% after 20'; METRIC is {', '.join(METRICS)})"
            )
        metric = m.group("metric")
        if metric not in METRICS:
            raise SpecError(f"--abort {raw.strip()!r}: no metric {metric!r}; use one of {', '.join(METRICS)}")
        value, pct = float(m.group("value")), m.group("pct") is not None
        if pct and not 0 <= value < 100:
            raise SpecError(f"--abort {raw.strip()!r}: a percentage is 0..99.99 (it is crossed when above)")
        after = m.group("after")
        if after is not None and not pct:
            raise SpecError(
                f"--abort {raw.strip()!r}: 'after N' goes with a percentage (e.g. failed>10% after 20)"
            )
        n_after = int(after) if after is not None else 1
        if n_after < 1:
            raise SpecError(f"--abort {raw.strip()!r}: 'after N' needs N of at least 1")
        rules.append(AbortRule(metric, value, pct, n_after))
    return tuple(rules)


def parse_duration(text: str, flag: str = "--bake") -> float:
    """``10m``, ``30s``, ``1h``, ``1.5m``, ``500ms`` or plain seconds."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise SpecError(f"{flag} {text}: a duration like 30s, 10m, 1h (or seconds)")
    return float(m.group("n")) * _UNITS[m.group("unit")]


def parse_window(text: str) -> str:
    w = text.strip().lower()
    if w not in WINDOWS:
        raise SpecError(f"--window {text}: one of {', '.join(WINDOWS)} (the robot waits until it holds)")
    return w


# the plan ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HealthLimits:
    """What makes a robot on the new version unhealthy."""

    offline_s: float = 60.0
    """Offline (presence) or with its serial link down longer than this."""
    max_reconnects: int = 2
    """More reconnects than this after it got the new version (a restart is a reconnect)."""
    drain_factor: float = 2.0
    drain_floor_pct_per_h: float = 100.0
    drain_min_drop_pct: float = 3.0
    """Battery drain while discharging above ``max(factor × its own rate before, floor)``, once it fell at
    least ``drain_min_drop_pct`` points."""
    mismatch_s: float = 30.0
    """SUCCEEDED but the shadow still reports another version for longer than this."""

    def to_json(self) -> dict[str, Any]:
        return {
            "offline_s": self.offline_s,
            "max_reconnects": self.max_reconnects,
            "drain_factor": self.drain_factor,
            "drain_floor_pct_per_h": self.drain_floor_pct_per_h,
            "drain_min_drop_pct": self.drain_min_drop_pct,
            "mismatch_s": self.mismatch_s,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> HealthLimits:
        return cls(**{k: doc[k] for k in cls().to_json() if k in doc})


@dataclass(frozen=True)
class Plan:
    """Everything ``rollout start`` asked for, parsed."""

    canary: Canary = field(default_factory=lambda: Canary(count=0))
    rate: int | None = None
    exponential: Exponential | None = None
    abort: tuple[AbortRule, ...] = ()
    bake_s: float = 600.0
    window: str = "any"
    allow_downgrade: bool = False
    self_test_s: float | None = None
    """The robot's own self-test hold (the job document's ``bake_s``) before it commits, while the fleet
    bakes on; None: :data:`DEFAULT_SELF_TEST_S`. Never more than the bake time."""
    timeout_minutes: int | None = None
    """An execution IN_PROGRESS this long times out; None: derived from the bake time."""
    stage_timeout_s: float | None = None
    """A canary not finished this long after it started pauses the rollout; None: derived."""
    limits: HealthLimits = field(default_factory=HealthLimits)
    presign_role_arn: str | None = None
    """With AWS: the IAM role that lets IoT presign the bundle's S3 URL (``presignedUrlConfig.roleArn``)."""

    @property
    def robot_bake_s(self) -> float:
        """The update job's ``bake_s``: the self-test hold, at most the bake time."""
        hold = DEFAULT_SELF_TEST_S if self.self_test_s is None else self.self_test_s
        return min(hold, self.bake_s)

    @property
    def rollback_bake_s(self) -> float:
        """The rollback job's ``bake_s``: a short hold, back to a version known good."""
        return min(ROLLBACK_SELF_TEST_S, self.robot_bake_s)

    @property
    def execution_timeout_minutes(self) -> int:
        if self.timeout_minutes is not None:
            return self.timeout_minutes
        return max(10, math.ceil((self.robot_bake_s + 900) / 60))

    @property
    def canary_timeout_s(self) -> float:
        if self.stage_timeout_s is not None:
            return self.stage_timeout_s
        return self.execution_timeout_minutes * 60.0 + self.bake_s

    def to_json(self) -> dict[str, Any]:
        return {
            "canary": self.canary.to_text(),
            "rate": self.rate,
            "exponential": None if self.exponential is None else self.exponential.to_text(),
            "abort": ",".join(r.to_text() for r in self.abort),
            "bake_s": self.bake_s,
            "window": self.window,
            "allow_downgrade": self.allow_downgrade,
            "self_test_s": self.self_test_s,
            "timeout_minutes": self.timeout_minutes,
            "stage_timeout_s": self.stage_timeout_s,
            "limits": self.limits.to_json(),
            "presign_role_arn": self.presign_role_arn,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Plan:
        return cls(
            canary=parse_canary(str(doc.get("canary", "0"))),
            rate=doc.get("rate"),
            exponential=parse_exponential(doc["exponential"]) if doc.get("exponential") else None,
            abort=parse_abort(doc["abort"]) if doc.get("abort") else (),
            bake_s=float(doc.get("bake_s", 600.0)),
            window=str(doc.get("window", "any")),
            allow_downgrade=bool(doc.get("allow_downgrade", False)),
            self_test_s=doc.get("self_test_s"),
            timeout_minutes=doc.get("timeout_minutes"),
            stage_timeout_s=doc.get("stage_timeout_s"),
            limits=HealthLimits.from_json(doc.get("limits") or {}),
            presign_role_arn=doc.get("presign_role_arn"),
        )


def make_plan(
    *,
    canary: str | None = None,
    rate: str | None = None,
    exponential: str | None = None,
    abort: str | None = None,
    bake: str | None = None,
    window: str | None = None,
    allow_downgrade: bool = False,
    self_test: str | None = None,
    timeout_minutes: int | None = None,
    stage_timeout: str | None = None,
    limits: HealthLimits | None = None,
    presign_role_arn: str | None = None,
) -> Plan:
    """A :class:`Plan` from the command line's texts (:class:`SpecError` for the first bad one)."""
    if rate is not None and exponential is not None:
        raise SpecError("--rate and --exponential: give one of them")
    if timeout_minutes is not None and not 1 <= timeout_minutes <= 10080:
        raise SpecError(f"--timeout-minutes {timeout_minutes}: 1..10080 (AWS's inProgressTimeoutInMinutes)")
    bake_s = parse_duration(bake) if bake is not None else 600.0
    self_test_s = parse_duration(self_test, "--self-test") if self_test is not None else None
    if self_test_s is not None and self_test_s > bake_s:
        raise SpecError(
            f"--self-test {self_test}: longer than the bake ({bake_s:g} s); the robot's hold is part of the bake"
        )
    return Plan(
        canary=parse_canary(canary) if canary is not None else Canary(count=0),
        rate=parse_rate(rate) if rate is not None else None,
        exponential=parse_exponential(exponential) if exponential is not None else None,
        abort=parse_abort(abort) if abort is not None else (),
        bake_s=bake_s,
        window=parse_window(window) if window is not None else "any",
        allow_downgrade=allow_downgrade,
        self_test_s=self_test_s,
        timeout_minutes=timeout_minutes,
        stage_timeout_s=parse_duration(stage_timeout, "--stage-timeout")
        if stage_timeout is not None
        else None,
        limits=limits or HealthLimits(),
        presign_role_arn=presign_role_arn,
    )


# what the jobs carry -----------------------------------------------------------------------------------------
def job_document(
    release: Mapping[str, Any], *, bake_s: float, allow_downgrade: bool, window: str
) -> dict[str, Any]:
    """The update job's document (operation ``update``); the URL is AWS's presign placeholder around the
    release's S3 URL, replaced by the cloud each time a robot fetches the document."""
    doc: dict[str, Any] = {
        "operation": "update",
        "release": {
            "version": str(release["version"]),
            "url": "${aws:iot:s3-presigned-url:" + str(release["s3_url"]) + "}",
            "sha256": str(release["sha256"]),
            "size": int(release["size"]),
        },
        "allow_downgrade": allow_downgrade,
        "bake_s": round(bake_s, 3),
    }
    requires = WINDOWS.get(window) or {}
    if requires:
        doc["requires"] = dict(requires)
    return doc


def aws_abort_config(rules: Iterable[AbortRule]) -> dict[str, Any] | None:
    """AWS's own ``abortConfig`` for the rules it can express: a percentage of ``failed`` (FAILED and
    TIMED_OUT executions) or of ``rejected``. Health rules have no AWS form; the controller applies all."""
    criteria: list[dict[str, Any]] = []
    for r in rules:
        if not r.percent or r.value <= 0:
            continue
        kinds = {"failed": ("FAILED", "TIMED_OUT"), "rejected": ("REJECTED",)}.get(r.metric, ())
        for kind in kinds:
            criteria.append(
                {
                    "failureType": kind,
                    "action": "CANCEL",
                    "thresholdPercentage": round(r.value, 2),
                    "minNumberOfExecutedThings": r.after,
                }
            )
    return {"criteriaList": criteria} if criteria else None


def rollout_config(plan: Plan) -> dict[str, Any] | None:
    if plan.exponential is not None:
        return {"exponentialRate": plan.exponential.to_aws()}
    if plan.rate is not None:
        return {"maximumPerMinute": plan.rate}
    return None


# one robot ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """What the controller saw of one robot at one moment."""

    status: str | None = None
    """Its job execution's status, None when it has none yet."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """The execution's ``statusDetails`` (``phase``, ``reason``, ...), when read."""
    reported: Mapping[str, Any] | None = None
    """The shadow's ``state.reported``; None when there is no shadow (yet)."""
    presence: str | None = None
    """``online`` / ``offline`` from the retained presence; None when never seen."""
    presence_at: float | None = None
    """The presence message's own ``at`` (a new one on every connect)."""
    presence_version: str | None = None
    """The presence message's ``agent_version``."""


@dataclass(frozen=True)
class Track:
    """One robot's rollout memory across observations; :func:`advance` makes the next one."""

    thing: str
    target: str
    state: str = QUEUED
    reason: str = ""
    status: str | None = None
    phase: str | None = None
    version: str | None = None
    before: str | None = None
    """The version it ran before this update (where a rollback takes it)."""
    before_unknown: str | None = None
    """Why :attr:`before` is unknown when what the robot reported is not a version (no rollback for it)."""
    trial: str | None = None
    seen_at: float | None = None
    started_at: float | None = None
    on_target_at: float | None = None
    """The first time it reported running the new version (in trial or committed)."""
    final_at: float | None = None
    online: bool | None = None
    offline_since: float | None = None
    serial_down_since: float | None = None
    mismatch_since: float | None = None
    presence_at: float | None = None
    presence_version: str | None = None
    reconnects: int = 0
    errors: tuple[str, ...] = ()
    command_id: str | None = None
    restarts: int | None = None
    battery_first: tuple[float, float] | None = None
    battery_before: tuple[float, float] | None = None
    battery_on_target: tuple[float, float] | None = None

    @property
    def notified(self) -> bool:
        """It has (or had) a job execution."""
        return self.status is not None

    @property
    def touched(self) -> bool:
        """It took the update (its execution left QUEUED other than by a cancel): the release reached it."""
        return self.started_at is not None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def on_target(self) -> bool:
        return self.on_target_at is not None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in self.__dataclass_fields__:
            v = getattr(self, k)
            out[k] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Track:
        kwargs: dict[str, Any] = {}
        for k in cls.__dataclass_fields__:
            if k not in doc:
                continue
            v = doc[k]
            if k == "errors":
                v = tuple(v or ())
            elif k.startswith("battery_") and v is not None:
                v = (float(v[0]), float(v[1]))
            kwargs[k] = v
        return cls(**kwargs)


def same_version(a: str | None, b: str | None) -> bool:
    """PEP 440 equality (``0.2`` is ``0.2.0``), plain equality for what does not parse."""
    if a is None or b is None:
        return False
    return a == b or _parsed(a) == _parsed(b)


def is_version(v: str) -> bool:
    """A PEP 440 version (what a release and a rollback can be): ``0.1.0`` yes, ``..`` no."""
    return not isinstance(_parsed(v), str)


@functools.lru_cache(maxsize=1024)
def _parsed(v: str) -> object:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(v)
    except InvalidVersion:
        return v


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _restarts(reported: Mapping[str, Any]) -> int | None:
    for holder in (_mapping(reported.get("health")), reported):
        n = holder.get("restarts")
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def _details_reason(details: Mapping[str, Any], update: Mapping[str, Any], status: str) -> str:
    for key in ("reason", "error", "message"):
        text = _str(details.get(key))
        if text:
            return text
    text = _str(update.get("reason"))
    return text or status


def _rolled_back(update: Mapping[str, Any], details: Mapping[str, Any], target: str) -> bool:
    if update.get("result") == "rolled_back" and same_version(_str(update.get("to")), target):
        return True
    return details.get("phase") == "rolled_back" or details.get("result") == "rolled_back"


def _health(t: Track, reported: Mapping[str, Any] | None, now: float, limits: HealthLimits) -> str | None:
    """The first problem of a robot on the new version, or None."""
    if t.offline_since is not None and now - t.offline_since > limits.offline_s:
        return f"offline for {now - t.offline_since:.0f} s on {t.target}"
    if t.serial_down_since is not None and now - t.serial_down_since > limits.offline_s:
        return f"serial link down for {now - t.serial_down_since:.0f} s on {t.target}"
    if t.reconnects > limits.max_reconnects:
        return f"reconnected {t.reconnects} times on {t.target}"
    if reported is None:
        return None
    restarts = _restarts(reported)
    if restarts is not None and t.restarts is not None and restarts > t.restarts:
        return f"restarted {restarts - t.restarts} times on {t.target}"
    errors = sorted(set(_mapping(reported.get("errors"))) - set(t.errors))
    if errors:
        return f"new error(s) on {t.target}: {', '.join(errors)}"
    command = _mapping(reported.get("command"))
    cid, cstatus = _str(command.get("id")), command.get("status")
    if cid is not None and cid != t.command_id and cstatus in ("failed", "rejected"):
        why = _str(command.get("reason"))
        return f"command {cid} {cstatus} on {t.target}" + (f": {why}" if why else "")
    return _drain(t, reported, now, limits)


def _charging(reported: Mapping[str, Any]) -> bool:
    battery = _mapping(reported.get("battery"))
    return battery.get("charging") in ("charging", "trickle", "reconditioning", "full") or bool(
        reported.get("docked")
    )


def _drain(t: Track, reported: Mapping[str, Any], now: float, limits: HealthLimits) -> str | None:
    pct = _number(_mapping(reported.get("battery")).get("percent"))
    if pct is None or t.battery_on_target is None or _charging(reported):
        return None
    t0, p0 = t.battery_on_target
    drop, hours = p0 - pct, (now - t0) / 3600
    if drop < limits.drain_min_drop_pct or hours <= 0:
        return None
    rate = drop / hours
    before = 0.0
    if t.battery_first is not None and t.battery_before is not None:
        (ta, pa), (tb, pb) = t.battery_first, t.battery_before
        if tb - ta >= 60:
            before = max(0.0, (pa - pb) / ((tb - ta) / 3600))
    allowed = max(limits.drain_factor * before, limits.drain_floor_pct_per_h)
    if rate > allowed:
        return f"battery drains {rate:.0f} %/h on {t.target} (before: {before:.0f} %/h)"
    return None


def advance(t: Track, obs: Observation, now: float, *, bake_s: float, limits: HealthLimits) -> Track:
    """The robot's next :class:`Track` after one observation at ``now``."""
    reported = obs.reported
    rep = _mapping(reported)
    versions = _mapping(rep.get("versions"))
    update = _mapping(versions.get("update"))
    version = _str(versions.get("agent")) or t.version
    trial = _str(versions.get("trial")) if reported is not None else t.trial
    status = obs.status if obs.status is not None else t.status
    phase = _str(obs.details.get("phase")) or (t.phase if status == t.status else None)
    on_target_now = same_version(version, t.target)
    changes: dict[str, Any] = {"status": status, "phase": phase, "version": version, "trial": trial}
    if t.seen_at is None:
        changes["seen_at"] = now
    if t.started_at is None and status not in (None, "QUEUED", "CANCELED", "REMOVED"):
        changes["started_at"] = now
    before = t.before
    candidates: list[str | None] = []
    if before is None and version is not None and not on_target_now and t.on_target_at is None:
        candidates.append(version)
    if before is None and same_version(_str(update.get("to")), t.target):
        candidates.append(_str(update.get("from")))
    if before is None and on_target_now:
        candidates.append(_str(versions.get("previous")))
    for candidate in candidates:
        if candidate is None:
            continue
        if is_version(candidate):
            before, changes["before_unknown"] = candidate, None
            break
        changes["before_unknown"] = f"previous version unknown: it reported {candidate!r}, not a version"
    changes["before"] = before
    # presence: offline spells, and reconnects once on the new version
    if obs.presence == "online":
        changes["online"], changes["offline_since"] = True, None
        if obs.presence_at is not None:
            # a new connection of the new version (its first one, the switch, is not counted)
            if (
                t.on_target_at is not None
                and t.presence_at is not None
                and obs.presence_at != t.presence_at
                and same_version(t.presence_version, t.target)
            ):
                changes["reconnects"] = t.reconnects + 1
            changes["presence_at"] = obs.presence_at
            changes["presence_version"] = obs.presence_version
    elif obs.presence is not None:
        changes["online"] = False
        if t.offline_since is None:
            changes["offline_since"] = now
    link = _mapping(rep.get("link"))
    if reported is not None:
        if link.get("serial") == "down":
            if t.serial_down_since is None:
                changes["serial_down_since"] = now
        else:
            changes["serial_down_since"] = None
    # battery: its own rate before the update, and from the new version on
    pct = _number(_mapping(rep.get("battery")).get("percent"))
    if pct is not None and reported is not None:
        if t.on_target_at is None and not on_target_now:
            if _charging(rep):
                changes["battery_first"], changes["battery_before"] = None, None
            else:
                if t.battery_first is None:
                    changes["battery_first"] = (now, pct)
                changes["battery_before"] = (now, pct)
        elif _charging(rep) or t.battery_on_target is None:
            changes["battery_on_target"] = (now, pct)
    if t.on_target_at is None and on_target_now:
        changes["on_target_at"] = now
        changes["errors"] = tuple(sorted(_mapping(rep.get("errors"))))
        changes["command_id"] = _str(_mapping(rep.get("command")).get("id"))
        changes["restarts"] = _restarts(rep)
        if pct is not None and "battery_on_target" not in changes:
            changes["battery_on_target"] = (now, pct)
    n = replace(t, **changes)
    if t.state in FINAL:
        return n
    state, reason = _classify(n, obs, rep if reported is not None else None, update, now, bake_s, limits)
    if state == UPDATED and n.status == "SUCCEEDED" and not same_version(n.version, n.target):
        since = n.mismatch_since if n.mismatch_since is not None else now
        n = replace(n, mismatch_since=since)
        if now - since > limits.mismatch_s:
            state, reason = UNHEALTHY, f"SUCCEEDED but reports {n.version} for {now - since:.0f} s"
    elif n.mismatch_since is not None:
        n = replace(n, mismatch_since=None)
    return replace(n, state=state, reason=reason, final_at=now if state in FINAL else None)


def _classify(
    t: Track,
    obs: Observation,
    reported: Mapping[str, Any] | None,
    update: Mapping[str, Any],
    now: float,
    bake_s: float,
    limits: HealthLimits,
) -> tuple[str, str]:
    status = t.status
    on_target = same_version(t.version, t.target)
    if status is None or status == "QUEUED":
        return QUEUED, ""
    if status in ("CANCELED", "REMOVED"):
        return CANCELED, f"execution {status}"
    if status == "REJECTED":
        return REJECTED, _details_reason(obs.details, update, status)
    if status in ("FAILED", "TIMED_OUT"):
        reason = _details_reason(obs.details, update, status)
        if _rolled_back(update, obs.details, t.target) or (t.on_target and not on_target):
            return ROLLED_BACK, reason
        return FAILED, reason
    if t.on_target:
        problem = _health(t, reported, now, limits)
        if problem is not None:
            return UNHEALTHY, problem
    if status == "IN_PROGRESS":
        if t.on_target and not on_target and _rolled_back(update, obs.details, t.target):
            return ROLLED_BACK, _details_reason(obs.details, update, "rolled back")
        if on_target or same_version(t.trial, t.target) or t.phase in ("switching", "self_test", "committed"):
            return IN_TRIAL, t.phase or "self test"
        return UPDATING, t.phase or "started"
    if status == "SUCCEEDED":
        if t.on_target and not on_target and _rolled_back(update, obs.details, t.target):
            return ROLLED_BACK, _details_reason(obs.details, update, "rolled back after SUCCEEDED")
        since = t.on_target_at if t.on_target_at is not None else now
        if on_target and now - since >= bake_s:
            return HEALTHY, f"baked {now - since:.0f} s"
        return UPDATED, f"baking {now - since:.0f}/{bake_s:.0f} s"
    return UPDATING, status


# the rollout ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    action: str
    reason: str


def counts(states: Iterable[str]) -> dict[str, int]:
    """How many robots in each state, every state listed (in :data:`STATES` order)."""
    out = dict.fromkeys(STATES, 0)
    for s in states:
        out[s] = out.get(s, 0) + 1
    return out


def counts_text(states: Iterable[str]) -> str:
    c = counts(states)
    return ", ".join(f"{n} {s}" for s, n in c.items() if n) or "no robots"


def decide(
    plan: Plan,
    *,
    stage: str,
    states: Mapping[str, str],
    canary: Iterable[str],
    stage_started_at: float,
    now: float,
    pause_requested: bool = False,
) -> Decision:
    """What the rollout does next. ``stage`` is ``canary`` or ``main``; ``states`` the state of every robot of
    the stages started so far (thing → state); ``canary`` the canary robots."""
    for rule in plan.abort:
        crossed, why = rule.crossed(states.values())
        if crossed:
            return Decision(ABORT, why)
    if stage == "canary":
        group = [states.get(t, QUEUED) for t in canary]
        summary = counts_text(group)
        if pause_requested:
            return Decision(PAUSE, f"paused by the operator (canary: {summary})")
        if group and all(s in FINAL for s in group):
            if all(s == HEALTHY for s in group):
                return Decision(PROMOTE, f"canary: all {len(group)} healthy")
            return Decision(
                PAUSE, f"canary finished but not all healthy ({summary}): resume to go on, abort to roll back"
            )
        if not group:
            return Decision(PROMOTE, "no canary")
        if now - stage_started_at > plan.canary_timeout_s:
            return Decision(PAUSE, f"canary not finished after {now - stage_started_at:.0f} s ({summary})")
        return Decision(CONTINUE, f"canary: {summary}")
    summary = counts_text(states.values())
    if states and all(s in FINAL for s in states.values()):
        return Decision(DONE, summary)
    return Decision(CONTINUE, summary)
