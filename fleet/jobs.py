"""``roomba-fleet jobs create|describe|list|cancel|delete|executions|watch``: AWS IoT Jobs for people.

The same operations the AWS CLI runs through the ``local`` profile (``aws iot create-job ...``), with options
in a person's terms: ``--targets``/``--group``/``--prefix``/``--all`` instead of ARNs (things are resolved
through ``ListThings``, groups through ``DescribeThingGroup``, so a typo is an error before anything is
created), ``--max-per-minute``/``--exponential``/``--abort``/``--retry``/``--timeout-minutes`` for the
rollout, abort, timeout and retry configurations, ``--document FILE`` or ``--template ID`` for what to run.
Every sub-command prints a short human summary, or with ``--json`` the operation's own output (botocore's
member names, timestamps in epoch seconds). The calls go through :mod:`localcloud.apiclient`.

``create --wait`` follows the job until it completes (for a CONTINUOUS job: until every execution so far is
terminal); ``watch JOB_ID`` draws its progress live on a terminal (counters, one bar per status, the most
recent executions) and carries on through a restart of ``up`` (it says it is reconnecting and polls again);
``--once`` prints the current view and exits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base import logs
from base.cli import Parser, add_json
from localcloud.apiclient import ApiClient, ApiNotRunning
from localcloud.awsapi.errors import ApiError
from localcloud.layout import DIR_HELP, CloudDir, SettingsError

if TYPE_CHECKING:
    from rich.console import RenderableType

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CODES = {
    EXIT_FAILED: "the control plane refused the request (its AWS error code is printed), or with --wait an "
    "execution ended other than SUCCEEDED",
    EXIT_USAGE: "usage error (bad option, no such thing or group), or the local cloud is not running",
    EXIT_TIMEOUT: "with --wait: the job was not done within --timeout",
}
STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED")
TERMINAL = frozenset(STATUSES[2:])
COUNTERS = {
    "QUEUED": "numberOfQueuedThings",
    "IN_PROGRESS": "numberOfInProgressThings",
    "SUCCEEDED": "numberOfSucceededThings",
    "FAILED": "numberOfFailedThings",
    "REJECTED": "numberOfRejectedThings",
    "TIMED_OUT": "numberOfTimedOutThings",
    "CANCELED": "numberOfCanceledThings",
    "REMOVED": "numberOfRemovedThings",
}
STYLES = {
    "QUEUED": "dim",
    "IN_PROGRESS": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "REJECTED": "magenta",
    "TIMED_OUT": "yellow",
    "CANCELED": "bright_black",
    "REMOVED": "bright_black",
}
JOB_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
MAX_DOCUMENT_CHARS = 32768
ABORT_TYPES = ("FAILED", "REJECTED", "TIMED_OUT", "ALL")
RETRY_TYPES = ("FAILED", "TIMED_OUT", "ALL")
PAGE = 250  # ListJobExecutionsForJob's and ListThings' largest page
DEFAULT_WAIT_S = 600.0
POLL_S = 1.0
RECONNECT_CAP_S = 5.0
REDRAWS_PER_S = 4
RECENT = 10

EXAMPLES = {
    "create": [
        'dock-all --document-json \'{"operation":"mission","action":"dock"}\' --all --wait',
        "fw-2 --document job.json --group kitchen --max-per-minute 50 --abort FAILED:10:20",
        "diag --template AWS-Run-Command --prefix lab- --retry FAILED:2 --timeout-minutes 30",
    ],
    "describe": ["dock-all", "dock-all --json"],
    "list": ["", "--status IN_PROGRESS --json"],
    "cancel": ["fw-2 --comment 'bad build'", "fw-2 --force"],
    "delete": ["fw-2 --force"],
    "executions": ["fw-2", "fw-2 --status FAILED --json", "--thing robot-001"],
    "watch": ["fw-2", "fw-2 --once --json"],
}


class UsageError(Exception):
    """What is wrong with the command line, in its options' terms (one line)."""


# the CreateJob request ---------------------------------------------------------------------------------------
def _number(flag: str, text: str, kind: type[int] | type[float], low: float, high: float) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise UsageError(f"{flag} {text}: not {'a whole' if kind is int else 'a'} number") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{flag} {text}: not a finite number")
    if not low <= value <= high:
        raise UsageError(f"{flag} {text}: must be {low:g}..{high:g}")
    return value


def parse_exponential(text: str) -> dict[str, Any]:
    """``BASE,FACTOR,NOTIFIED:N`` or ``BASE,FACTOR,SUCCEEDED:N`` → ``exponentialRate``: start at BASE per
    minute, multiply by FACTOR each time N more things were notified (or succeeded)."""
    flag = "--exponential"
    parts = text.split(",")
    if len(parts) != 3 or ":" not in parts[2]:
        raise UsageError(
            f"{flag} {text}: use BASE,FACTOR,NOTIFIED:N or BASE,FACTOR,SUCCEEDED:N (e.g. 10,2,NOTIFIED:50)"
        )
    base = _number(flag, parts[0], int, 1, 1000)
    factor = _number(flag, parts[1], float, 1.1, 5.0)
    if round(factor, 1) != factor:
        raise UsageError(f"{flag} {text}: FACTOR takes one decimal at most (e.g. 1.5)")
    kind, _, count = parts[2].partition(":")
    criteria = {"NOTIFIED": "numberOfNotifiedThings", "SUCCEEDED": "numberOfSucceededThings"}.get(
        kind.upper()
    )
    if criteria is None:
        raise UsageError(f"{flag} {text}: the step is NOTIFIED:N or SUCCEEDED:N, not {kind}")
    n = _number(flag, count, int, 1, 1_000_000)
    return {"baseRatePerMinute": base, "incrementFactor": factor, "rateIncreaseCriteria": {criteria: n}}


def parse_abort(text: str) -> dict[str, Any]:
    """``TYPE:PCT:MIN`` → one abort criterion: cancel the rollout once PCT % of at least MIN executed
    things ended TYPE (FAILED, REJECTED, TIMED_OUT or ALL)."""
    flag = "--abort"
    parts = text.split(":")
    if len(parts) != 3:
        raise UsageError(f"{flag} {text}: use TYPE:PCT:MIN (e.g. FAILED:10:20)")
    kind = parts[0].upper()
    if kind not in ABORT_TYPES:
        raise UsageError(f"{flag} {text}: TYPE is one of {', '.join(ABORT_TYPES)}")
    pct = _number(flag, parts[1], float, 0.0, 100.0)
    if pct <= 0 or round(pct, 2) != pct:
        raise UsageError(f"{flag} {text}: PCT is above 0, at most 100, with 2 decimals at most")
    minimum = _number(flag, parts[2], int, 1, 10_000_000)
    return {
        "failureType": kind,
        "action": "CANCEL",
        "thresholdPercentage": pct,
        "minNumberOfExecutedThings": minimum,
    }


def parse_retry(text: str) -> dict[str, Any]:
    """``TYPE:N`` → one retry criterion: a thing whose execution ended TYPE (FAILED, TIMED_OUT or ALL)
    gets up to N new executions."""
    flag = "--retry"
    kind, sep, count = text.partition(":")
    if not sep:
        raise UsageError(f"{flag} {text}: use TYPE:N (e.g. FAILED:2)")
    kind = kind.upper()
    if kind not in RETRY_TYPES:
        raise UsageError(
            f"{flag} {text}: TYPE is one of {', '.join(RETRY_TYPES)} (REJECTED is never retried)"
        )
    return {"failureType": kind, "numberOfRetries": _number(flag, count, int, 0, 10)}


def read_document(*, path: str | None = None, text: str | None = None) -> str:
    """The job document as sent: a JSON object, at most 32,768 characters."""
    where = f"--document {path}" if path is not None else "--document-json"
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{where}: cannot read it ({exc})") from None
    assert text is not None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{where}: not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{where}: a job document is a JSON object")
    compact = json.dumps(doc, separators=(",", ":"))
    if len(compact) > MAX_DOCUMENT_CHARS:
        raise UsageError(f"{where}: {len(compact)} characters, AWS takes at most {MAX_DOCUMENT_CHARS}")
    return compact


@dataclass(frozen=True)
class JobSpec:
    """What ``jobs create`` asks for, before targets and templates are resolved."""

    job_id: str
    document: str | None = None
    template: str | None = None
    description: str | None = None
    continuous: bool = False
    max_per_minute: int | None = None
    exponential: dict[str, Any] | None = None
    abort: tuple[dict[str, Any], ...] = ()
    timeout_minutes: int | None = None
    retry: tuple[dict[str, Any], ...] = ()


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    if not JOB_ID.fullmatch(args.job_id):
        raise UsageError(f"JOB_ID {args.job_id!r}: 1-64 characters of a-z A-Z 0-9 _ - only")
    sources = [s for s in (args.document, args.document_json, args.template) if s is not None]
    if len(sources) != 1:
        raise UsageError("give exactly one of --document FILE, --document-json JSON, --template ID")
    document = None
    if args.document is not None:
        document = read_document(path=args.document)
    elif args.document_json is not None:
        document = read_document(text=args.document_json)
    retry = tuple(parse_retry(t) for t in args.retry or ())
    if len(retry) > 2:
        raise UsageError("--retry: at most two (one per failure type)")
    if len({r["failureType"] for r in retry}) != len(retry):
        raise UsageError("--retry: one per failure type")
    if any(r["failureType"] in ("TIMED_OUT", "ALL") for r in retry) and args.timeout_minutes is None:
        raise UsageError("--retry TIMED_OUT needs --timeout-minutes (nothing times out without it)")
    return JobSpec(
        job_id=args.job_id,
        document=document,
        template=args.template,
        description=args.description,
        continuous=args.continuous,
        max_per_minute=None
        if args.max_per_minute is None
        else _number("--max-per-minute", str(args.max_per_minute), int, 1, 1000),
        exponential=None if args.exponential is None else parse_exponential(args.exponential),
        abort=tuple(parse_abort(t) for t in args.abort or ()),
        timeout_minutes=None
        if args.timeout_minutes is None
        else _number("--timeout-minutes", str(args.timeout_minutes), int, 1, 10080),
        retry=retry,
    )


def create_params(spec: JobSpec, targets: Sequence[str], template_arn: str | None = None) -> dict[str, Any]:
    """``CreateJob``'s parameters (botocore member names) for ``spec`` and the target ARNs."""
    params: dict[str, Any] = {
        "jobId": spec.job_id,
        "targets": list(targets),
        "targetSelection": "CONTINUOUS" if spec.continuous else "SNAPSHOT",
    }
    if spec.document is not None:
        params["document"] = spec.document
    if template_arn is not None:
        params["jobTemplateArn"] = template_arn
    if spec.description is not None:
        params["description"] = spec.description
    rollout: dict[str, Any] = {}
    if spec.max_per_minute is not None:
        rollout["maximumPerMinute"] = spec.max_per_minute
    if spec.exponential is not None:
        rollout["exponentialRate"] = spec.exponential
    if rollout:
        params["jobExecutionsRolloutConfig"] = rollout
    if spec.abort:
        params["abortConfig"] = {"criteriaList": list(spec.abort)}
    if spec.timeout_minutes is not None:
        params["timeoutConfig"] = {"inProgressTimeoutInMinutes": spec.timeout_minutes}
    if spec.retry:
        params["jobExecutionsRetryConfig"] = {"criteriaList": list(spec.retry)}
    return params


def thing_name(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def list_things(client: ApiClient) -> dict[str, str]:
    """Every thing of the registry: name → ARN."""
    return {
        str(t["thingName"]): str(t["thingArn"])
        for t in client.pages("ListThings", {"maxResults": PAGE}, "things")
    }


def resolve_targets(
    client: ApiClient,
    *,
    things: Sequence[str] = (),
    groups: Sequence[str] = (),
    prefix: str | None = None,
    every: bool = False,
) -> list[str]:
    """The target ARNs: named things (each must exist), groups (by ``DescribeThingGroup``), every thing
    whose name starts with ``prefix``, or every thing (``every``). :class:`UsageError` names what is missing."""
    arns: list[str] = []
    if things or prefix is not None or every:
        registry = list_things(client)
        if things:
            missing = [t for t in things if t not in registry]
            if missing:
                more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
                raise UsageError(
                    f"no such thing(s): {', '.join(missing[:5])}{more}; a robot becomes a thing with "
                    "`roomba-fleet robot add` or when it first connects"
                )
            arns += [registry[t] for t in dict.fromkeys(things)]
        if prefix is not None or every:
            names = sorted(n for n in registry if every or n.startswith(prefix or ""))
            if not names:
                raise UsageError(
                    "no things in the registry"
                    if every
                    else f"--prefix {prefix}: no thing's name starts with it"
                )
            arns += [registry[n] for n in names]
    for group in dict.fromkeys(groups):
        try:
            arns.append(str(client.call("DescribeThingGroup", {"thingGroupName": group})["thingGroupArn"]))
        except ApiError as exc:
            if exc.code == "ResourceNotFoundException":
                raise UsageError(f"--group {group}: no such thing group") from None
            raise
    return list(dict.fromkeys(arns))


def template_arn(client: ApiClient, template: str) -> str:
    try:
        return str(client.call("DescribeJobTemplate", {"jobTemplateId": template})["jobTemplateArn"])
    except ApiError as exc:
        if exc.code == "ResourceNotFoundException":
            raise UsageError(f"--template {template}: no such job template") from None
        raise


# reading a job ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Execution:
    thing: str
    status: str
    execution_number: int | None = None
    retry_attempt: int | None = None
    queued_at: float | None = None
    started_at: float | None = None
    updated_at: float | None = None

    @classmethod
    def from_summary(cls, item: Mapping[str, Any]) -> Execution:
        summary = item.get("jobExecutionSummary") or {}
        return cls(
            thing=thing_name(str(item.get("thingArn", ""))),
            status=str(summary.get("status", "?")),
            execution_number=summary.get("executionNumber"),
            retry_attempt=summary.get("retryAttempt"),
            queued_at=summary.get("queuedAt"),
            started_at=summary.get("startedAt"),
            updated_at=summary.get("lastUpdatedAt"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "thing": self.thing,
            "status": self.status,
            "executionNumber": self.execution_number,
            "retryAttempt": self.retry_attempt,
            "queuedAt": self.queued_at,
            "startedAt": self.started_at,
            "lastUpdatedAt": self.updated_at,
        }


def executions(client: ApiClient, job_id: str, status: str | None = None) -> list[Execution]:
    params: dict[str, Any] = {"jobId": job_id, "maxResults": PAGE}
    if status:
        params["status"] = status
    return [
        Execution.from_summary(i)
        for i in client.pages("ListJobExecutionsForJob", params, "executionSummaries")
    ]


@dataclass
class Progress:
    """One look at a job: DescribeJob's ``job`` and its executions (when read)."""

    job: dict[str, Any]
    executions: list[Execution] | None = None
    at: float = field(default_factory=time.time)

    @property
    def counts(self) -> dict[str, int]:
        details = self.job.get("jobProcessDetails") or {}
        return {s: int(details.get(key) or 0) for s, key in COUNTERS.items()}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def done(self) -> bool:
        """A SNAPSHOT job completed or canceled; a CONTINUOUS one with every execution so far terminal."""
        status = self.job.get("status")
        if status in ("COMPLETED", "CANCELED") and not self.job.get("isConcurrent"):
            return True
        counts = self.counts
        return (
            self.job.get("targetSelection") == "CONTINUOUS"
            and self.total > 0
            and counts["QUEUED"] + counts["IN_PROGRESS"] == 0
            and not self.job.get("isConcurrent")
        )

    @property
    def all_succeeded(self) -> bool:
        counts = self.counts
        return self.total > 0 and counts["SUCCEEDED"] == self.total

    def recent(self, n: int = RECENT) -> list[Execution]:
        rows = self.executions or []
        return sorted(rows, key=lambda e: (e.updated_at or 0.0, e.thing), reverse=True)[:n]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"job": self.job, "counts": self.counts, "done": self.done}
        if self.executions is not None:
            out["executions"] = [e.to_json() for e in self.executions]
        return out


def _when(at: Any) -> str:
    if not isinstance(at, int | float):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def counts_line(counts: Mapping[str, int]) -> str:
    shown = [f"{n} {s}" for s, n in counts.items() if n] or ["no executions yet"]
    return ", ".join(shown)


def describe_text(job: Mapping[str, Any]) -> str:
    """DescribeJob's ``job`` for a person."""
    progress = Progress(dict(job))
    lines = [
        f"job {job.get('jobId')}: {job.get('status')} ({job.get('targetSelection')})",
        f"  arn:        {job.get('jobArn')}",
        f"  created:    {_when(job.get('createdAt'))}",
        f"  updated:    {_when(job.get('lastUpdatedAt'))}",
    ]
    if job.get("completedAt"):
        lines.append(f"  completed:  {_when(job.get('completedAt'))}")
    if job.get("description"):
        lines.append(f"  about:      {job['description']}")
    targets = job.get("targets") or []
    names = ", ".join(thing_name(t) for t in targets[:5]) + (
        f" (+{len(targets) - 5})" if len(targets) > 5 else ""
    )
    lines.append(f"  targets:    {len(targets)}: {names}")
    lines.append(f"  executions: {counts_line(progress.counts)}")
    rollout = job.get("jobExecutionsRolloutConfig")
    if rollout:
        lines.append(f"  rollout:    {json.dumps(rollout, separators=(',', ':'))}")
    for key, label in (
        ("abortConfig", "abort:      "),
        ("timeoutConfig", "timeout:    "),
        ("jobExecutionsRetryConfig", "retry:      "),
        ("schedulingConfig", "scheduling: "),
    ):
        if job.get(key):
            lines.append(f"  {label}{json.dumps(job[key], separators=(',', ':'))}")
    if job.get("reasonCode") or job.get("comment"):
        lines.append(f"  canceled:   {job.get('reasonCode') or ''} {job.get('comment') or ''}".rstrip())
    return "\n".join(lines)


def executions_table(rows: Sequence[Execution]) -> str:
    header = ("THING", "STATUS", "EXEC", "RETRY", "QUEUED", "STARTED", "UPDATED")
    cells = [
        (
            e.thing,
            e.status,
            "-" if e.execution_number is None else str(e.execution_number),
            "-" if e.retry_attempt is None else str(e.retry_attempt),
            _when(e.queued_at),
            _when(e.started_at),
            _when(e.updated_at),
        )
        for e in rows
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in [header, *cells]
    )


def progress_text(progress: Progress) -> str:
    """The watch view without a terminal (``--once``, pipes)."""
    job = progress.job
    lines = [
        f"job {job.get('jobId')}: {job.get('status')} ({job.get('targetSelection')}), "
        f"{progress.total} executions: {counts_line(progress.counts)}"
    ]
    total = max(1, progress.total)
    for status, n in progress.counts.items():
        if n:
            width = round(30 * n / total)
            lines.append(f"  {status:<11} {'#' * width:<30} {n}")
    if progress.executions:
        lines.append("recent:")
        lines += ["  " + line for line in executions_table(progress.recent()).splitlines()]
    return "\n".join(lines)


# the live view ------------------------------------------------------------------------------------------------
@dataclass
class Poll:
    """What the watch loop knows about the control plane, for the title and the status line."""

    state: str = "connecting"  # connected | reconnecting
    attempt: int = 0
    reason: str = ""
    last: Progress | None = None


def follow(
    cloud: CloudDir,
    job_id: str,
    *,
    interval: float = POLL_S,
    live: bool = True,
    poll: Poll | None = None,
    sleep: Callable[[float], None] = time.sleep,
    with_executions: bool = True,
    on_lost: Callable[[Poll], None] | None = None,
) -> Iterator[Progress]:
    """Each look at the job, every ``interval`` seconds (one only unless ``live``). The first failing to
    reach the control plane raises :class:`ApiNotRunning`; later ones (``up`` restarting) are retried with
    backoff, ``poll`` saying so. A job that is not there raises :class:`ApiError`."""
    from base.backoff import Backoff

    poll = poll if poll is not None else Poll()
    backoff = Backoff(base_s=interval / 2, cap_s=RECONNECT_CAP_S)
    client: ApiClient | None = None
    try:
        while True:
            try:
                if client is None:
                    client = ApiClient(cloud)
                job = dict(client.call("DescribeJob", {"jobId": job_id}).get("job") or {})
                rows = executions(client, job_id) if with_executions else None
                progress = Progress(job, rows)
                poll.state, poll.reason, poll.attempt, poll.last = "connected", "", 0, progress
                backoff.reset()
                yield progress
                if not live:
                    return
                sleep(interval)
            except (ApiNotRunning, SettingsError) as exc:
                if client is not None:
                    client.close()
                client = None
                if not live or poll.last is None:
                    raise
                poll.state, poll.reason = "reconnecting", str(exc)
                poll.attempt += 1
                if on_lost is not None:
                    on_lost(poll)
                sleep(backoff.next_delay() + interval / 2)
    finally:
        if client is not None:
            client.close()


def live_view(poll: Poll, job_id: str, width: int, height: int) -> RenderableType:
    """Title, status line while reconnecting, one bar per status, the most recent executions."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    progress = poll.last
    now = time.time()
    job = progress.job if progress else {}
    where = "connected" if poll.state == "connected" else "not connected"
    age = f"data {now - progress.at:.0f} s old" if progress else "no data yet"
    title = Text(
        f" roomba-fleet jobs watch {job_id}  {time.strftime('%H:%M:%S')}  {job.get('status', '?')} "
        f"({job.get('targetSelection', '?')})  {age}  {where} ",
        style="bold reverse",
        no_wrap=True,
        overflow="ellipsis",
    )
    parts: list[RenderableType] = [title]
    if poll.state == "reconnecting":
        parts.append(
            Text(
                f"reconnecting (attempt {poll.attempt})… {poll.reason}",
                style="bold yellow",
                no_wrap=True,
                overflow="ellipsis",
            )
        )
    if progress is None:
        return Group(*parts)
    counts, total = progress.counts, max(1, progress.total)
    parts.append(
        Text(f"{progress.total} executions: {counts_line(counts)}", no_wrap=True, overflow="ellipsis")
    )
    bars = Table.grid(padding=(0, 1))
    bars.add_column(width=11)
    bars.add_column(width=max(10, min(60, width - 24)))
    bars.add_column(justify="right")
    for status in STATUSES:
        bars.add_row(
            Text(status, style=STYLES[status]),
            ProgressBar(
                total=total,
                completed=counts[status],
                complete_style=STYLES[status],
                width=max(10, min(60, width - 24)),
            ),
            str(counts[status]),
        )
    parts.append(bars)
    room = max(0, height - len(parts) - len(STATUSES) - 3)
    recent = progress.recent(min(RECENT, room))
    if recent:
        parts.append(Text("recent executions", style="bold"))
        header, *lines = executions_table(recent).splitlines()
        parts.append(Text(header, style="bold", no_wrap=True, overflow="ellipsis"))
        parts += [
            Text(line, style=STYLES.get(e.status, ""), no_wrap=True, overflow="ellipsis")
            for line, e in zip(lines, recent, strict=True)
        ]
    if progress.done:
        parts.append(Text("done: every execution is final (Ctrl-C to leave)", style="bold green"))
    return Group(*parts)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _live(feed: Iterator[Progress], draw: Callable[[int, int], RenderableType]) -> None:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    if threading.current_thread() is threading.main_thread():  # `kill` leaves the view as Ctrl-C does
        signal.signal(signal.SIGTERM, _interrupt)

    def frame() -> RenderableType:
        try:
            size = console.size
            return draw(size.width, size.height)
        except Exception as exc:  # a bad frame must not stop the redraw thread; say what broke
            return Text(f"roomba-fleet jobs watch: cannot draw the view: {exc!r}", style="bold red")

    with Live(get_renderable=frame, console=console, auto_refresh=True, refresh_per_second=REDRAWS_PER_S):
        for _ in feed:
            pass


# the command line ---------------------------------------------------------------------------------------------
def _common(sp: argparse.ArgumentParser, what: str) -> None:
    sp.add_argument("--dir", help=DIR_HELP)
    add_json(sp, what)


def build_parser() -> Parser:
    p = Parser(
        prog="roomba-fleet jobs",
        description="AWS IoT Jobs on the local cloud: create a job for robots, follow it, cancel it. The calls "
        "are AWS's own control-plane operations (the same as `aws iot ... --profile local`); --json prints "
        "their output.",
        exit_codes=EXIT_CODES,
    )
    sub = p.add_subparsers(dest="op", required=True, metavar="OP", title="operations")

    def add(name: str, help_: str, description: str) -> Parser:
        sp: Parser = sub.add_parser(
            name,
            help=help_,
            description=description,
            epilog="examples:\n"
            + "\n".join(f"  roomba-fleet jobs {name} {e}".rstrip() for e in EXAMPLES[name]),
            exit_codes=EXIT_CODES,
        )
        return sp

    c = add(
        "create",
        "create a job (CreateJob) for things, groups, a prefix or every robot",
        "Create a job. The document comes from a file, the command line or a job template; the targets are "
        "things (--targets), thing groups (--group), every thing whose name starts with a prefix (--prefix) or "
        "every thing (--all). The rollout, abort, timeout and retry options map to CreateJob's configurations; "
        "--wait follows the job until every execution is final.",
    )
    c.add_argument("job_id", metavar="JOB_ID", help="the job's id: 1-64 of a-z A-Z 0-9 _ -")
    doc = c.add_mutually_exclusive_group(required=True)
    doc.add_argument("--document", metavar="FILE", help="the job document, a JSON file")
    doc.add_argument("--document-json", metavar="JSON", help="the job document given inline")
    doc.add_argument("--template", metavar="ID", help="a job template (CreateJobTemplate) to take it from")
    targets = c.add_mutually_exclusive_group(required=True)
    targets.add_argument("--targets", nargs="+", metavar="THING", help="these things (names)")
    targets.add_argument("--group", nargs="+", metavar="G", help="these thing groups (names)")
    targets.add_argument("--prefix", metavar="P", help="every thing whose name starts with P")
    targets.add_argument("--all", action="store_true", help="every thing of the registry")
    c.add_argument("--description", help="a description of the job")
    c.add_argument(
        "--continuous",
        action="store_true",
        help="CONTINUOUS: a thing that joins a target group later gets an execution too (default SNAPSHOT)",
    )
    c.add_argument(
        "--max-per-minute", type=int, metavar="N", help="notify at most N things a minute (1-1000)"
    )
    c.add_argument(
        "--exponential",
        metavar="BASE,FACTOR,NOTIFIED:N",
        help="exponential rollout: BASE things a minute, times FACTOR after every N notified (or SUCCEEDED:N) things",
    )
    c.add_argument(
        "--abort",
        action="append",
        metavar="TYPE:PCT:MIN",
        help="cancel the rollout when PCT percent of at least MIN executions ended TYPE (FAILED, REJECTED, "
        "TIMED_OUT, ALL); repeat for more criteria, checked in order",
    )
    c.add_argument(
        "--timeout-minutes", type=int, metavar="N", help="an execution IN_PROGRESS for N minutes times out"
    )
    c.add_argument(
        "--retry",
        action="append",
        metavar="TYPE:N",
        help="retry an execution that ended TYPE (FAILED, TIMED_OUT, ALL) up to N times (0-10); repeatable",
    )
    c.add_argument("--wait", action="store_true", help="follow the job until every execution is final")
    c.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help=f"with --wait: give up after S seconds (default {DEFAULT_WAIT_S:g})",
    )
    _common(c, "CreateJob's output (with --wait: and the final DescribeJob)")

    d = add(
        "describe",
        "show one job (DescribeJob) and its counters",
        "Show one job: status, targets, configurations and the number of executions in each status.",
    )
    d.add_argument("job_id", metavar="JOB_ID", help="the job's id")
    _common(d, "DescribeJob's output")

    li = add("list", "list jobs (ListJobs)", "List the jobs, newest first.")
    li.add_argument(
        "--status",
        choices=("IN_PROGRESS", "CANCELED", "COMPLETED", "DELETION_IN_PROGRESS", "SCHEDULED"),
        help="only jobs in this status",
    )
    _common(li, "the jobs (ListJobs' summaries)")

    ca = add(
        "cancel",
        "cancel a job (CancelJob): its queued executions; --force also those in progress",
        "Cancel a job: executions not started are canceled; with --force those in progress are canceled too "
        "(the robot can no longer update them).",
    )
    ca.add_argument("job_id", metavar="JOB_ID", help="the job's id")
    ca.add_argument("--force", action="store_true", help="cancel IN_PROGRESS executions as well")
    ca.add_argument("--reason-code", metavar="CODE", help="a reason code (A-Z 0-9 _, at most 128)")
    ca.add_argument("--comment", help="why it was canceled")
    _common(ca, "CancelJob's output")

    de = add(
        "delete",
        "delete a job (DeleteJob) and its executions",
        "Delete a job and its executions; an IN_PROGRESS job needs --force.",
    )
    de.add_argument("job_id", metavar="JOB_ID", help="the job's id")
    de.add_argument("--force", action="store_true", help="delete a job that is still in progress")
    _common(de, "the job id deleted")

    ex = add(
        "executions",
        "list a job's executions (ListJobExecutionsForJob), or a thing's with --thing",
        "List the executions of a job, one line per thing; or with --thing, every job execution of one thing.",
    )
    ex.add_argument("job_id", metavar="JOB_ID", nargs="?", help="the job's id (or use --thing)")
    ex.add_argument(
        "--thing", metavar="THING", help="the executions of this thing instead (ListJobExecutionsForThing)"
    )
    ex.add_argument("--status", choices=STATUSES, help="only executions in this status")
    _common(ex, "the executions")

    w = add(
        "watch",
        "live view of a job's progress (counters, bars, recent executions)",
        "A job's progress, live: its counters, one bar per execution status and the most recent executions. "
        "It carries on through a restart of the local cloud. Through a pipe it prints a line each time the "
        "counters change; --once prints the current view and exits.",
    )
    w.add_argument("job_id", metavar="JOB_ID", help="the job's id")
    w.add_argument("--once", action="store_true", help="print the current view and exit")
    w.add_argument(
        "--interval",
        type=float,
        default=POLL_S,
        metavar="S",
        help=f"seconds between looks (default {POLL_S:g})",
    )
    _common(w, "the view (one document with --once, else one line per change)")
    return p


def _say(prog: str, text: str) -> None:
    print(f"{prog}: {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logs.configure("warning")
    prog = f"roomba-fleet jobs {args.op}"
    cloud = CloudDir.at(args.dir)
    try:
        return RUN[args.op](args, cloud, prog)
    except UsageError as exc:
        _say(prog, str(exc))
        return EXIT_USAGE
    except (ApiNotRunning, SettingsError) as exc:
        _say(prog, str(exc))
        return EXIT_USAGE
    except ApiError as exc:
        _say(prog, f"{exc.code}: {exc.message}")
        return EXIT_FAILED


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


def _create(args: argparse.Namespace, cloud: CloudDir, prog: str) -> int:
    spec = spec_from_args(args)
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout is for --wait (add --wait to follow the job)")
    timeout = DEFAULT_WAIT_S if args.timeout is None else args.timeout
    if timeout <= 0:
        raise UsageError(f"--timeout {timeout:g}: must be above 0 seconds")
    with ApiClient(cloud) as client:
        arns = resolve_targets(
            client,
            things=args.targets or (),
            groups=args.group or (),
            prefix=args.prefix,
            every=args.all,
        )
        template = template_arn(client, spec.template) if spec.template else None
        result = client.call("CreateJob", create_params(spec, arns, template))
    out: dict[str, Any] = {**result, "targets": len(arns)}
    if not args.json:
        print(
            f"created job {result.get('jobId', spec.job_id)} for {len(arns)} target(s): {result.get('jobArn')}",
            flush=True,
        )
    if not args.wait:
        if args.json:
            _print_json(out)
        return EXIT_OK
    code, last = _wait(cloud, spec.job_id, timeout, quiet=args.json)
    if args.json:
        out["job"] = last.job if last else None
        _print_json(out)
    return code


def _wait(cloud: CloudDir, job_id: str, timeout: float, *, quiet: bool) -> tuple[int, Progress | None]:
    deadline = time.monotonic() + timeout
    last: Progress | None = None
    shown = ""
    for progress in follow(cloud, job_id, with_executions=False):
        last = progress
        line = counts_line(progress.counts)
        if not quiet and line != shown:
            shown = line
            print(f"  {progress.job.get('status')}: {line}", flush=True)
        if progress.done:
            break
        if time.monotonic() >= deadline:
            _say("roomba-fleet jobs create", f"job {job_id} not done after {timeout:g} s: {line}")
            return EXIT_TIMEOUT, last
    if last is None:
        return EXIT_FAILED, None
    if last.all_succeeded:
        return EXIT_OK, last
    _say(
        "roomba-fleet jobs create", f"job {job_id} ended {last.job.get('status')}: {counts_line(last.counts)}"
    )
    return EXIT_FAILED, last


def _describe(args: argparse.Namespace, cloud: CloudDir, _prog: str) -> int:
    with ApiClient(cloud) as client:
        result = client.call("DescribeJob", {"jobId": args.job_id})
    if args.json:
        _print_json(result)
    else:
        print(describe_text(result.get("job") or {}))
    return EXIT_OK


def _list(args: argparse.Namespace, cloud: CloudDir, _prog: str) -> int:
    params: dict[str, Any] = {"maxResults": PAGE}
    if args.status:
        params["status"] = args.status
    with ApiClient(cloud) as client:
        jobs = list(client.pages("ListJobs", params, "jobs"))
    jobs.sort(key=lambda j: j.get("createdAt") or 0, reverse=True)
    if args.json:
        _print_json({"jobs": jobs})
        return EXIT_OK
    header = ("JOB", "STATUS", "SELECTION", "CREATED", "COMPLETED")
    rows = [
        (
            str(j.get("jobId")),
            str(j.get("status")),
            str(j.get("targetSelection")),
            _when(j.get("createdAt")),
            _when(j.get("completedAt")),
        )
        for j in jobs
    ]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    for row in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _cancel(args: argparse.Namespace, cloud: CloudDir, _prog: str) -> int:
    params: dict[str, Any] = {"jobId": args.job_id}
    if args.force:
        params["force"] = True
    if args.reason_code:
        params["reasonCode"] = args.reason_code
    if args.comment:
        params["comment"] = args.comment
    with ApiClient(cloud) as client:
        result = client.call("CancelJob", params)
    if args.json:
        _print_json(result)
    else:
        print(f"canceled job {args.job_id}" + (" (forced: in-progress executions too)" if args.force else ""))
    return EXIT_OK


def _delete(args: argparse.Namespace, cloud: CloudDir, _prog: str) -> int:
    params: dict[str, Any] = {"jobId": args.job_id}
    if args.force:
        params["force"] = True
    with ApiClient(cloud) as client:
        client.call("DeleteJob", params)
    if args.json:
        _print_json({"jobId": args.job_id, "deleted": True})
    else:
        print(f"deleted job {args.job_id}")
    return EXIT_OK


def _executions(args: argparse.Namespace, cloud: CloudDir, _prog: str) -> int:
    if (args.job_id is None) == (args.thing is None):
        raise UsageError("give JOB_ID, or --thing THING (not both)")
    with ApiClient(cloud) as client:
        if args.thing is None:
            rows = executions(client, args.job_id, args.status)
            if args.json:
                _print_json({"jobId": args.job_id, "executions": [e.to_json() for e in rows]})
            else:
                print(executions_table(rows))
            return EXIT_OK
        params: dict[str, Any] = {"thingName": args.thing, "maxResults": PAGE}
        if args.status:
            params["status"] = args.status
        items = list(client.pages("ListJobExecutionsForThing", params, "executionSummaries"))
    if args.json:
        _print_json({"thingName": args.thing, "executionSummaries": items})
        return EXIT_OK
    header = ("JOB", "STATUS", "EXEC", "RETRY", "QUEUED", "UPDATED")
    rows2 = []
    for item in items:
        s = item.get("jobExecutionSummary") or {}
        rows2.append(
            (
                str(item.get("jobId")),
                str(s.get("status")),
                str(s.get("executionNumber", "-")),
                str(s.get("retryAttempt", "-")),
                _when(s.get("queuedAt")),
                _when(s.get("lastUpdatedAt")),
            )
        )
    widths = [max([len(h)] + [len(r[i]) for r in rows2]) for i, h in enumerate(header)]
    for row in [header, *rows2]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _watch(args: argparse.Namespace, cloud: CloudDir, prog: str) -> int:
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval:g}: must be above 0 seconds")
    live = not args.once
    terminal = live and not args.json and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
    poll = Poll()

    def lost(p: Poll) -> None:
        _say(prog, f"lost the control plane ({p.reason}); reconnecting (attempt {p.attempt})")

    feed = follow(
        cloud, args.job_id, interval=args.interval, live=live, poll=poll, on_lost=None if terminal else lost
    )
    try:
        if terminal:
            next(feed)  # the first look: a cloud that is not running, or no such job, is an error
            _live(feed, lambda w, h: live_view(poll, args.job_id, w, h))
            return EXIT_OK
        shown = ""
        for progress in feed:
            if args.once:
                print(json.dumps(progress.to_json()) if args.json else progress_text(progress))
                return EXIT_OK
            line = json.dumps(
                {"jobId": args.job_id, "status": progress.job.get("status"), "counts": progress.counts}
            )
            if line != shown:
                shown = line
                print(
                    line if args.json else f"{progress.job.get('status')}: {counts_line(progress.counts)}",
                    flush=True,
                )
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


RUN: dict[str, Callable[[argparse.Namespace, CloudDir, str], int]] = {
    "create": _create,
    "describe": _describe,
    "list": _list,
    "cancel": _cancel,
    "delete": _delete,
    "executions": _executions,
    "watch": _watch,
}


if __name__ == "__main__":
    sys.exit(main())
