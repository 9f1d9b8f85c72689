"""The rollout controller: AWS IoT Jobs for the stages, the robots' shadows and presence for their health.

A rollout of release ``V`` to a set of things runs in stages: a canary job ``<id>-canary`` (explicit thing
targets), then, once every canary robot is healthy, the main job ``<id>-main`` for the rest with AWS's
``jobExecutionsRolloutConfig`` (``--rate`` / ``--exponential``), ``abortConfig`` (what of ``--abort`` AWS can
express) and ``timeoutConfig``. Every :meth:`Rollout.step` reads the jobs' executions (and the
``statusDetails`` of those that changed), the robots' shadows and presence, classifies each robot
(:func:`rollout.policy.advance`), decides (:func:`rollout.policy.decide`) and acts:

- *promote*: create the main job;
- *pause*: start no next stage until ``resume`` (AWS has no pause: a running job is not held);
- *abort*: ``CancelJob`` on the running jobs (their QUEUED and not yet created executions; IN_PROGRESS ones
  run on) and a rollback job ``<id>-rollback`` (``<id>-rollback-2``, ... for robots with another previous
  version, or that reach the new version after the abort) updating exactly the robots on the new version to
  the version each ran before, with ``allow_downgrade: true``;
- *done*: every robot finished (healthy, or a verdict under the thresholds).

The whole state is ``DIR/rollouts/<id>.json``, written atomically after every step, so ``rollout status``
in another process reads it at any time and :meth:`Rollout.load` carries on after a crash. Other processes
ask for ``abort``/``pause``/``resume`` through ``DIR/rollouts/<id>.control.json``; the controller takes
the request at its next step.

The release record is ``roomba-agent/<version>/release.json`` in bucket ``roomba-releases`` of the
artifact store (``roomba-fleet release publish`` writes it): ``{"version", "sha256", "size", "s3_url",
"file", "manifest"}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from base import logs
from localcloud import releases
from localcloud.apiclient import ApiClient, ApiNotRunning
from localcloud.artifacts import ArtifactError, ArtifactStore
from localcloud.awsapi.errors import ApiError
from localcloud.layout import CloudDir
from provisioning.fsio import atomic_write
from rollout import policy
from rollout.policy import Decision, Observation, Plan, Track

RELEASE_BUCKET = releases.BUCKET
FORMAT = 1
PAGE = 250
DETAILS_PER_STEP = 200
"""At most this many DescribeJobExecution calls a step (those whose execution changed, terminal first)."""
PRESIGN_EXPIRES_S = 3600
MAX_FAILED_STEPS = 10
ROLLOUT_ID = re.compile(r"[a-zA-Z0-9_-]{1,48}")
PHASES = ("canary", "main", "paused", "aborting", "done", "aborted")
ACTIVE = frozenset({"canary", "main", "paused", "aborting"})
TERMINAL_EXEC = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED", "REMOVED"})
REVERTED, REVERTING, REVERT_FAILED = "reverted", "reverting", "revert_failed"


class RolloutError(Exception):
    """What stops a rollout from starting or going on, in the operator's terms (one line)."""


# files ---------------------------------------------------------------------------------------------------------
def rollouts_dir(cloud: CloudDir) -> Path:
    return cloud.root / "rollouts"


def state_path(cloud: CloudDir, rollout_id: str) -> Path:
    return rollouts_dir(cloud) / f"{rollout_id}.json"


def control_path(cloud: CloudDir, rollout_id: str) -> Path:
    return rollouts_dir(cloud) / f"{rollout_id}.control.json"


def write_json_atomic(path: Path, doc: Any) -> None:
    """Write-to-temp, fsync, rename, fsync the directory: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(doc, separators=(",", ":")).encode(), overwrite=True)


def load_state(cloud: CloudDir, rollout_id: str) -> dict[str, Any]:
    path = state_path(cloud, rollout_id)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RolloutError(f"no rollout {rollout_id!r} in {rollouts_dir(cloud)}") from None
    except (OSError, ValueError) as exc:
        raise RolloutError(f"{path}: unreadable ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise RolloutError(f"{path}: not a rollout state file of format {FORMAT}")
    return doc


def list_states(cloud: CloudDir) -> list[dict[str, Any]]:
    """Every rollout's state, newest first."""
    out: list[dict[str, Any]] = []
    d = rollouts_dir(cloud)
    if not d.is_dir():
        return out
    for path in d.glob("*.json"):
        if path.name.endswith(".control.json"):
            continue
        try:
            out.append(load_state(cloud, path.stem))
        except RolloutError:
            continue
    return sorted(out, key=lambda s: s.get("created_at") or 0.0, reverse=True)


def request(
    cloud: CloudDir, rollout_id: str, action: str, reason: str = "", *, now: float | None = None
) -> None:
    """Ask the running controller to ``abort``, ``pause`` or ``resume`` (taken at its next step). An abort
    already asked for is never replaced by another request."""
    if action not in ("abort", "pause", "resume"):
        raise ValueError(f"unknown request {action!r}")
    load_state(cloud, rollout_id)
    path = control_path(cloud, rollout_id)
    try:
        pending = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pending = None
    if isinstance(pending, dict) and pending.get("action") == "abort" and action != "abort":
        return
    write_json_atomic(
        path,
        {"action": action, "reason": reason, "at": time.time() if now is None else now, "pid": os.getpid()},
    )


def controller_alive(state: Mapping[str, Any], now: float | None = None, *, stale_s: float = 30.0) -> bool:
    """Whether a controller process still runs this rollout (its pid exists and it wrote recently)."""
    pid = state.get("pid")
    beat = state.get("heartbeat_at")
    if not isinstance(pid, int) or not isinstance(beat, int | float):
        return False
    if (time.time() if now is None else now) - beat > stale_s:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# the release -----------------------------------------------------------------------------------------------
def release_key(version: str) -> str:
    return releases.release_key(version, releases.RELEASE_JSON)


def read_release(cloud: CloudDir, version: str) -> dict[str, Any]:
    """The release record of ``version`` from the artifact store (:func:`localcloud.releases.release_info`);
    :class:`RolloutError` when it is not published or malformed."""
    try:
        path = ArtifactStore(cloud.artifacts_dir).path_of(RELEASE_BUCKET, release_key(version))
    except ArtifactError as exc:
        raise RolloutError(
            f"release {version!r}: not a version the artifact store can hold ({exc})"
        ) from None
    try:
        doc = releases.release_info(cloud, version)
    except (OSError, ValueError) as exc:
        raise RolloutError(f"{path}: unreadable release record ({exc})") from None
    if doc is None:
        raise RolloutError(
            f"release {version} is not published ({path} does not exist): "
            "`roomba-fleet release publish BUNDLE` first"
        )
    missing = [
        k for k in ("version", "sha256", "size", "s3_url") if not isinstance(doc, dict) or k not in doc
    ]
    if missing:
        raise RolloutError(f"{path}: the release record lacks {', '.join(missing)}")
    if not policy.same_version(str(doc["version"]), version):
        raise RolloutError(f"{path}: the record is for version {doc['version']}, not {version}")
    return dict(doc)


# the robots ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seen:
    """One robot as the feed last saw it."""

    reported: dict[str, Any] | None = None
    presence: str | None = None
    presence_at: float | None = None
    presence_version: str | None = None


class RobotFeed(Protocol):
    """Where the controller reads robots from (the cloud's shadows and presence; a fake in unit tests)."""

    def observe(self, things: Sequence[str]) -> Mapping[str, Seen]: ...

    def close(self) -> None: ...


class CloudFeed:
    """Shadows and presence through the operator's MQTT connection: the retained presence and one shadow
    ``get`` per robot first, then the shadows' ``update/documents`` as they come. Reconnects (with a fresh
    ``get``) when the cloud went away."""

    def __init__(self, cloud: CloudDir, *, timeout: float = 5.0, drain_s: float = 0.2) -> None:
        self.cloud = cloud
        self.timeout = timeout
        self.drain_s = drain_s
        self.client: Any = None
        self.subscribed: set[str] = set()
        self.seen: dict[str, Seen] = {}
        self.versions: dict[str, int] = {}
        self.fetched: set[str] = set()
        self.log = logs.get_logger("rollout.feed")

    def _connect(self) -> Any:
        from localcloud.opclient import OperatorClient
        from shadow.topics import ANY, presence_topic

        client = OperatorClient(self.cloud, timeout=self.timeout)
        client.subscribe([presence_topic(ANY)])
        self.client, self.subscribed, self.fetched = client, set(), set()
        return client

    def _subscribe(self, things: Sequence[str]) -> None:
        from localcloud.opclient import WILDCARD_ABOVE
        from shadow.topics import ANY, shadow_topic

        want = {ANY} if len(things) > WILDCARD_ABOVE else set(things)
        if ANY in self.subscribed:
            return
        new = sorted(want - self.subscribed)
        if not new:
            return
        filters = [
            shadow_topic(t, op, r)
            for t in new
            for op, r in (("update", "documents"), ("get", "accepted"), ("get", "rejected"))
        ]
        for i in range(0, len(filters), 60):
            self.client.subscribe(filters[i : i + 60])
        self.subscribed |= set(new)

    def observe(self, things: Sequence[str]) -> Mapping[str, Seen]:
        from localcloud.opclient import CloudNotRunning

        try:
            if self.client is None:
                self._connect()
            self._subscribe(things)
            todo = [t for t in things if t not in self.fetched]
            tokens: dict[str, str] = {}
            if todo:
                from localcloud.opclient import publish_shadow_requests

                payloads = {
                    t: {
                        "clientToken": f"rollout-{hashlib.sha1(t.encode()).hexdigest()[:10]}-{time.monotonic_ns()}"
                    }
                    for t in todo
                }
                tokens = publish_shadow_requests(self.client, "get", payloads)
                self.fetched |= set(todo)
            self._drain(tokens)
        except CloudNotRunning as exc:
            self.log.warning("rollout.feed.lost", reason=str(exc))
            self.close()
        wanted = set(things)
        return {t: s for t, s in self.seen.items() if t in wanted}

    def _drain(self, tokens: dict[str, str]) -> None:
        """Read what arrived: until every ``get`` asked for is answered (at most ``timeout``), then until
        nothing more comes (at most ``drain_s``)."""
        waiting = bool(tokens)
        deadline = time.monotonic() + (self.timeout if waiting else self.drain_s)
        while time.monotonic() < deadline:
            got = 0
            for pkt in self.client.messages(0.05):
                got += 1
                self._apply(pkt.topic, pkt.payload, tokens)
                if waiting and not tokens:
                    break
            if waiting and not tokens:
                waiting = False
                deadline = min(deadline, time.monotonic() + self.drain_s)
            elif not waiting and got == 0:
                return

    def _apply(self, topic: str, payload: bytes, tokens: dict[str, str]) -> None:
        from shadow.topics import parse_agent_topic, parse_shadow_topic

        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            return
        agent = parse_agent_topic(topic)
        if agent is not None and agent[1] == "presence":
            prev = self.seen.get(agent[0], Seen())
            if isinstance(doc, dict):
                state = doc.get("state")
                at = doc.get("at")
                ver = doc.get("agent_version")
                self.seen[agent[0]] = replace(
                    prev,
                    presence=state if isinstance(state, str) else "unknown",
                    presence_at=float(at) if isinstance(at, int | float) else None,
                    presence_version=ver if isinstance(ver, str) else None,
                )
            return
        parsed = parse_shadow_topic(topic)
        if parsed is None or parsed.shadow_name or not isinstance(doc, dict):
            return
        if parsed.operation == "get":
            token = doc.get("clientToken")
            if isinstance(token, str):
                tokens.pop(token, None)
            if parsed.response != "accepted":
                return
            current = doc
        elif (parsed.operation, parsed.response) == ("update", "documents"):
            current = doc.get("current") or {}
        else:
            return
        version = current.get("version")
        if isinstance(version, int):
            if version < self.versions.get(parsed.thing, -1):
                return
            self.versions[parsed.thing] = version
        reported = (current.get("state") or {}).get("reported")
        prev = self.seen.get(parsed.thing, Seen())
        self.seen[parsed.thing] = replace(prev, reported=reported if isinstance(reported, dict) else None)

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # closing a connection that already broke
                pass
        self.client = None
        self.subscribed = set()
        self.fetched = set()


# the controller ----------------------------------------------------------------------------------------------
def canary_of(rollout_id: str, targets: Sequence[str], size: int) -> list[str]:
    """``size`` targets spread over the fleet, the same for the same rollout id (a hash order, not the
    first names)."""
    ranked = sorted(targets, key=lambda t: hashlib.sha256(f"{rollout_id}/{t}".encode()).digest())
    return sorted(ranked[:size])


def default_id(version: str, now: float) -> str:
    return (
        "v" + re.sub(r"[^a-zA-Z0-9_-]", "_", version)[:24] + time.strftime("-%Y%m%dT%H%M%S", time.gmtime(now))
    )


def thing_arns(api: ApiClient, things: Iterable[str]) -> dict[str, str]:
    """name → ARN for the named things; :class:`RolloutError` naming the missing ones."""
    registry = {
        str(t["thingName"]): str(t["thingArn"])
        for t in api.pages("ListThings", {"maxResults": PAGE}, "things")
    }
    names = list(dict.fromkeys(things))
    missing = [t for t in names if t not in registry]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise RolloutError(f"no such thing(s): {', '.join(missing[:5])}{more}")
    return {t: registry[t] for t in names}


class Rollout:
    """One rollout: :meth:`start` a new one or :meth:`load` one from its state file, then :meth:`step` /
    :meth:`run` it; :meth:`summary` says where it is. Not thread-safe."""

    def __init__(
        self,
        cloud: CloudDir,
        state: dict[str, Any],
        *,
        api: ApiClient | None = None,
        feed: RobotFeed | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cloud = cloud
        self.state = state
        self.plan = Plan.from_json(state["plan"])
        self.api = api if api is not None else ApiClient(cloud)
        self.feed: RobotFeed = feed if feed is not None else CloudFeed(cloud)
        self.clock = clock
        self.on_event = on_event
        self.tracks: dict[str, Track] = {
            t: Track.from_json(d) for t, d in (state.get("robots") or {}).items()
        }
        self.log = logs.get_logger("rollout", rollout=state["id"])
        self.exec_seen: dict[tuple[str, str], tuple[str, Any]] = {}
        self.details: dict[tuple[str, str], dict[str, Any]] = {}
        self.last_saved = 0.0
        self.last_decision: Decision | None = None

    # construction -------------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        cloud: CloudDir,
        *,
        release: str,
        targets: Sequence[str],
        plan: Plan,
        rollout_id: str | None = None,
        now: float | None = None,
        api: ApiClient | None = None,
        feed: RobotFeed | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Rollout:
        """Check everything, write the state and create the first job (the canary's, or the main one when
        the canary is empty). :class:`RolloutError` before anything is created when something is wrong."""
        now = clock() if now is None else now
        rid = rollout_id or default_id(release, now)
        if not ROLLOUT_ID.fullmatch(rid):
            raise RolloutError(f"rollout id {rid!r}: 1-48 characters of a-z A-Z 0-9 _ - only")
        if state_path(cloud, rid).exists():
            raise RolloutError(f"rollout {rid} exists already ({state_path(cloud, rid)})")
        things = list(dict.fromkeys(targets))
        if not things:
            raise RolloutError("no targets: name things, a group, a prefix or --all")
        record = read_release(cloud, release)
        api = api if api is not None else ApiClient(cloud)
        arns = thing_arns(api, things)
        for suffix in ("canary", "main", "rollback"):
            try:
                api.call("DescribeJob", {"jobId": f"{rid}-{suffix}"})
            except ApiError as exc:
                if exc.code == "ResourceNotFoundException":
                    continue
                raise
            raise RolloutError(f"job {rid}-{suffix} exists already: pick another rollout id")
        canary = canary_of(rid, things, plan.canary.size(len(things)))
        state: dict[str, Any] = {
            "format": FORMAT,
            "id": rid,
            "release": record,
            "version": str(record["version"]),
            "plan": plan.to_json(),
            "targets": things,
            "arns": arns,
            "canary": canary,
            "phase": "canary" if canary else "main",
            "paused_from": None,
            "stage_started_at": now,
            "created_at": now,
            "updated_at": now,
            "finished_at": None,
            "jobs": {"canary": None, "main": None, "rollback": []},
            "rollback": {},
            "events": [],
            "reason": "",
            "robots": {t: Track(t, str(record["version"])).to_json() for t in things},
            "summary": {},
            "pid": os.getpid(),
            "heartbeat_at": now,
        }
        r = cls(cloud, state, api=api, feed=feed, clock=clock, on_event=on_event)
        if canary:
            r._create_stage("canary", canary, now)
        else:
            r._create_stage("main", things, now)
        r._event(now, state["phase"], f"started: {len(things)} targets, canary {len(canary)}")
        r.save(now)
        return r

    @classmethod
    def load(
        cls,
        cloud: CloudDir,
        rollout_id: str,
        *,
        api: ApiClient | None = None,
        feed: RobotFeed | None = None,
        clock: Callable[[], float] = time.time,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> Rollout:
        """Carry on controlling a rollout from its state file (this process becomes its controller)."""
        state = load_state(cloud, rollout_id)
        state["pid"] = os.getpid()
        return cls(cloud, state, api=api, feed=feed, clock=clock, on_event=on_event)

    # reading ------------------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return str(self.state["id"])

    @property
    def version(self) -> str:
        return str(self.state["version"])

    @property
    def phase(self) -> str:
        return str(self.state["phase"])

    @property
    def finished(self) -> bool:
        return self.phase not in ACTIVE

    def stage_things(self) -> list[str]:
        """The robots of the stages started so far."""
        if self.state["jobs"].get("main"):
            return list(self.state["targets"])
        return list(self.state["canary"])

    def touched(self) -> list[str]:
        return [t for t, tr in self.tracks.items() if tr.touched]

    def summary(self) -> dict[str, Any]:
        """Where the rollout is: phase, counts per robot state and per running version, touched robots,
        the rollback's progress."""
        states = [tr.state for tr in self.tracks.values()]
        by_version: dict[str, dict[str, int]] = {}
        for tr in self.tracks.values():
            v = tr.version or "unknown"
            row = by_version.setdefault(v, dict.fromkeys(policy.STATES, 0))
            row[tr.state] += 1
        rollback = self.state.get("rollback") or {}
        rb_counts: dict[str, int] = {}
        for item in rollback.values():
            rb_counts[item["state"]] = rb_counts.get(item["state"], 0) + 1
        return {
            "id": self.id,
            "version": self.version,
            "phase": self.phase,
            "reason": self.state.get("reason", ""),
            "targets": len(self.state["targets"]),
            "canary": len(self.state["canary"]),
            "notified": sum(1 for tr in self.tracks.values() if tr.notified),
            "touched": sum(1 for tr in self.tracks.values() if tr.touched),
            "on_new_version": sum(
                1 for tr in self.tracks.values() if policy.same_version(tr.version, self.version)
            ),
            "states": policy.counts(states),
            "versions": dict(sorted(by_version.items())),
            "rollback": {
                "robots": len(rollback),
                "states": rb_counts,
                "jobs": list(self.state["jobs"]["rollback"]),
            },
            "jobs": self.state["jobs"],
            "created_at": self.state["created_at"],
            "updated_at": self.state["updated_at"],
            "finished_at": self.state.get("finished_at"),
        }

    # writing ------------------------------------------------------------------------------------------------
    def save(self, now: float) -> None:
        self.state["robots"] = {t: tr.to_json() for t, tr in self.tracks.items()}
        self.state["updated_at"] = now
        self.state["heartbeat_at"] = now
        self.state["pid"] = os.getpid()
        self.state["summary"] = self.summary()
        write_json_atomic(state_path(self.cloud, self.id), self.state)
        self.last_saved = now

    def _event(self, now: float, phase: str, reason: str) -> None:
        event = {"at": now, "phase": phase, "reason": reason}
        self.state["events"].append(event)
        self.state["events"] = self.state["events"][-200:]
        self.log.info("rollout.stage", phase=phase, reason=reason)
        if self.on_event is not None:
            self.on_event(event)

    def _set_phase(self, phase: str, reason: str, now: float) -> None:
        self.state["phase"] = phase
        self.state["reason"] = reason
        if phase not in ACTIVE:
            self.state["finished_at"] = now
        self._event(now, phase, reason)

    # the jobs -----------------------------------------------------------------------------------------------
    def _create_job(
        self, job_id: str, things: Sequence[str], document: Mapping[str, Any], config: Mapping[str, Any]
    ) -> None:
        arns = self.state["arns"]
        params: dict[str, Any] = {
            "jobId": job_id,
            "targets": [arns[t] for t in things],
            "targetSelection": "SNAPSHOT",
            "document": json.dumps(document, separators=(",", ":")),
            "description": f"rollout {self.id}: roomba-agent {document['release']['version']}",
            "presignedUrlConfig": {"expiresInSec": PRESIGN_EXPIRES_S},
            **config,
        }
        if self.plan.presign_role_arn:
            params["presignedUrlConfig"]["roleArn"] = self.plan.presign_role_arn
        try:
            self.api.call("CreateJob", params)
        except ApiError as exc:
            if exc.code != "ResourceAlreadyExistsException":  # a step that crashed after creating it
                raise
        self.log.info("rollout.job.created", job=job_id, robots=len(things))

    def _create_stage(self, stage: str, things: Sequence[str], now: float) -> None:
        plan = self.plan
        document = policy.job_document(
            self.state["release"],
            bake_s=plan.robot_bake_s,
            allow_downgrade=plan.allow_downgrade,
            window=plan.window,
        )
        config: dict[str, Any] = {
            "timeoutConfig": {"inProgressTimeoutInMinutes": plan.execution_timeout_minutes}
        }
        if stage == "main":
            rollout = policy.rollout_config(plan)
            if rollout:
                config["jobExecutionsRolloutConfig"] = rollout
            abort = policy.aws_abort_config(plan.abort)
            if abort:
                config["abortConfig"] = abort
        job_id = f"{self.id}-{stage}"
        self._create_job(job_id, things, document, config)
        self.state["jobs"][stage] = job_id
        self.state["stage_started_at"] = now

    def _executions(self, job_id: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        params = {"jobId": job_id, "maxResults": PAGE}
        for item in self.api.pages("ListJobExecutionsForJob", params, "executionSummaries"):
            thing = str(item.get("thingArn", "")).rsplit("/", 1)[-1]
            out[thing] = dict(item.get("jobExecutionSummary") or {})
        return out

    def _read_details(self, job_id: str, changed: list[tuple[str, dict[str, Any]]]) -> None:
        changed.sort(key=lambda item: item[1].get("status") not in TERMINAL_EXEC)
        for thing, _summary in changed[:DETAILS_PER_STEP]:
            try:
                answer = self.api.call("DescribeJobExecution", {"jobId": job_id, "thingName": thing})
            except ApiError as exc:
                if exc.code == "ResourceNotFoundException":
                    continue
                raise
            execution = answer.get("execution") or {}
            self.details[(job_id, thing)] = dict(
                (execution.get("statusDetails") or {}).get("detailsMap") or {}
            )
            self.exec_seen[(job_id, thing)] = (str(execution.get("status")), execution.get("lastUpdatedAt"))

    def _job_status(self, job_id: str) -> dict[str, Any]:
        return dict(self.api.call("DescribeJob", {"jobId": job_id}).get("job") or {})

    # one step -----------------------------------------------------------------------------------------------
    def step(self, now: float | None = None) -> Decision | None:
        """One look at the jobs and the robots, then one decision carried out; the state is saved. Returns
        the decision (None once the rollout is over)."""
        now = self.clock() if now is None else now
        if self.finished:
            return None
        self._take_request(now)
        if self.finished:
            self.save(now)
            return None
        stage_jobs = [self.state["jobs"][s] for s in ("canary", "main") if self.state["jobs"].get(s)]
        statuses: dict[str, dict[str, Any]] = {}
        aws_aborted: str | None = None
        for job_id in stage_jobs:
            execs = self._executions(job_id)
            changed = []
            for thing, summary in execs.items():
                key = (job_id, thing)
                mark = (str(summary.get("status")), summary.get("lastUpdatedAt"))
                if summary.get("status") != "QUEUED" and self.exec_seen.get(key) != mark:
                    changed.append((thing, summary))
                statuses[thing] = {"status": summary.get("status"), "job": job_id}
            if changed:
                self._read_details(job_id, changed)
            if self.phase in ("canary", "main", "paused") and not self.state["jobs"].get("rollback"):
                job = self._job_status(job_id)
                if job.get("status") == "CANCELED" and job.get("reasonCode") == "ABORT_CRITERIA_MET":
                    aws_aborted = f"AWS aborted {job_id}: {job.get('comment') or 'abort criteria met'}"
        things = self.stage_things()
        seen = self.feed.observe(list(self.state["targets"]))
        for thing in self.state["targets"]:
            track = self.tracks[thing]
            info = statuses.get(thing)
            status = info["status"] if info else None
            details = self.details.get((info["job"], thing), {}) if info else {}
            s = seen.get(thing, Seen())
            obs = Observation(
                status=status,
                details=details,
                reported=s.reported,
                presence=s.presence,
                presence_at=s.presence_at,
                presence_version=s.presence_version,
            )
            self.tracks[thing] = policy.advance(
                track, obs, now, bake_s=self.plan.bake_s, limits=self.plan.limits
            )
        decision = self._decide(things, now, aws_aborted)
        self.last_decision = decision
        self.save(now)
        return decision

    def _decide(self, things: Sequence[str], now: float, aws_aborted: str | None) -> Decision:
        states = {t: self.tracks[t].state for t in things}
        phase = self.phase
        if phase == "aborting":
            return self._watch_rollback(now)
        stage = self.state.get("paused_from") if phase == "paused" else phase
        decision = policy.decide(
            self.plan,
            stage=str(stage),
            states=states,
            canary=self.state["canary"],
            stage_started_at=float(self.state["stage_started_at"]),
            now=now,
        )
        if aws_aborted is not None and decision.action != policy.ABORT:
            decision = Decision(policy.ABORT, aws_aborted)
        if decision.action == policy.ABORT:
            self.abort(decision.reason, now=now)
            return decision
        if phase == "paused":
            return Decision(policy.PAUSE, str(self.state.get("reason") or "paused"))
        if decision.action == policy.PROMOTE:
            rest = [t for t in self.state["targets"] if t not in set(self.state["canary"])]
            if not rest:  # the canary was every target
                self._set_phase("done", decision.reason, now)
                return Decision(policy.DONE, decision.reason)
            self._create_stage("main", rest, now)
            self.state["phase"] = "main"
            self._event(now, "main", f"promoted: {decision.reason}")
        elif decision.action == policy.PAUSE:
            self.state["paused_from"] = phase
            self._set_phase("paused", decision.reason, now)
        elif decision.action == policy.DONE:
            self._set_phase("done", decision.reason, now)
        return decision

    def _take_request(self, now: float) -> None:
        path = control_path(self.cloud, self.id)
        # claim it first: a request written while this one is read lands in a new file, for the next step
        claimed = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.taken")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.log.warning("rollout.request.unclaimed", path=str(path), reason=str(exc))
            return
        try:
            req = json.loads(claimed.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            self.log.warning("rollout.request.unreadable", path=str(path), reason=str(exc))
            req = None
        finally:
            claimed.unlink(missing_ok=True)
        if not isinstance(req, dict):
            return
        action, reason = req.get("action"), str(req.get("reason") or "")
        if action == "abort":
            self.abort(reason or "aborted by the operator", now=now)
        elif action == "pause":
            self.pause(reason or "paused by the operator", now=now)
        elif action == "resume":
            self.resume(now=now)

    # the operator's actions ---------------------------------------------------------------------------------
    def pause(self, reason: str = "paused by the operator", *, now: float | None = None) -> None:
        """Start no next stage until :meth:`resume` (a job AWS already rolls out is not held)."""
        now = self.clock() if now is None else now
        if self.phase in ("canary", "main"):
            self.state["paused_from"] = self.phase
            self._set_phase("paused", reason, now)

    def resume(self, *, now: float | None = None) -> None:
        """Leave a pause: a paused canary is promoted (the operator's call), a paused main stage goes on."""
        now = self.clock() if now is None else now
        if self.phase != "paused":
            return
        was = self.state.get("paused_from") or "main"
        self.state["paused_from"] = None
        if was == "canary":
            rest = [t for t in self.state["targets"] if t not in set(self.state["canary"])]
            self.state["phase"] = "main"
            if rest:
                self._create_stage("main", rest, now)
            self._event(now, "main", "resumed by the operator: promoted")
        else:
            self.state["phase"] = was
            self._event(now, was, "resumed by the operator")

    def abort(self, reason: str = "aborted by the operator", *, now: float | None = None) -> None:
        """Cancel the running jobs (their queued executions) and roll the robots on the new version back."""
        now = self.clock() if now is None else now
        if self.phase not in ("canary", "main", "paused"):
            return
        for stage in ("canary", "main"):
            job_id = self.state["jobs"].get(stage)
            if not job_id:
                continue
            try:
                self.api.call(
                    "CancelJob", {"jobId": job_id, "reasonCode": "ROLLOUT_ABORTED", "comment": reason[:2000]}
                )
            except ApiError as exc:
                if exc.code not in ("InvalidRequestException", "ResourceNotFoundException"):
                    raise
        self._set_phase("aborting", reason, now)
        self._roll_back(now)

    def _needs_rollback(self, tr: Track) -> bool:
        return (
            tr.touched
            and policy.same_version(tr.version, self.version)
            and tr.thing not in self.state["rollback"]
            and tr.state not in (policy.ROLLED_BACK, policy.REJECTED)
        )

    def _roll_back(self, now: float) -> None:
        """A rollback job for every robot on the new version not in one yet, per version it goes back to."""
        groups: dict[str, list[str]] = {}
        for tr in self.tracks.values():
            if self._needs_rollback(tr):
                to = tr.before
                if to is None or policy.same_version(to, self.version):
                    self.state["rollback"][tr.thing] = {
                        "job": None,
                        "to": None,
                        "state": REVERT_FAILED,
                        "status": None,
                        "reason": tr.before_unknown or "previous version unknown",
                    }
                    continue
                groups.setdefault(to, []).append(tr.thing)
        for to, things in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            n = len(self.state["jobs"]["rollback"])
            job_id = f"{self.id}-rollback" + (f"-{n + 1}" if n else "")
            try:
                record = read_release(self.cloud, to)
            except RolloutError as exc:
                for t in things:
                    self.state["rollback"][t] = {
                        "job": None,
                        "to": to,
                        "state": REVERT_FAILED,
                        "status": None,
                        "reason": str(exc),
                    }
                self.log.error("rollout.rollback.no_release", to=to, robots=len(things), reason=str(exc))
                continue
            document = policy.job_document(
                record, bake_s=self.plan.rollback_bake_s, allow_downgrade=True, window="any"
            )
            config = {"timeoutConfig": {"inProgressTimeoutInMinutes": self.plan.execution_timeout_minutes}}
            self._create_job(job_id, sorted(things), document, config)
            self.state["jobs"]["rollback"].append(job_id)
            for t in things:
                self.state["rollback"][t] = {
                    "job": job_id,
                    "to": to,
                    "state": REVERTING,
                    "status": "QUEUED",
                    "reason": "",
                }
            self._event(now, "aborting", f"rollback job {job_id}: {len(things)} robots to {to}")

    def _watch_rollback(self, now: float) -> Decision:
        rollback = self.state["rollback"]
        for job_id in self.state["jobs"]["rollback"]:
            for thing, summary in self._executions(job_id).items():
                item = rollback.get(thing)
                if item is None or item["job"] != job_id:
                    continue
                status = str(summary.get("status"))
                item["status"] = status
                tr = self.tracks.get(thing)
                running = tr.version if tr else None
                if status == "SUCCEEDED" or (
                    status in TERMINAL_EXEC and policy.same_version(running, item["to"])
                ):
                    item["state"] = REVERTED
                elif status in TERMINAL_EXEC:
                    item["state"] = REVERT_FAILED
                    item["reason"] = status
        self._roll_back(now)  # robots that reached the new version after the abort
        still_running = any(
            tr.status == "IN_PROGRESS" and tr.thing not in rollback for tr in self.tracks.values()
        )
        pending = [t for t, item in rollback.items() if item["state"] == REVERTING]
        if not pending and not still_running:
            reverted = sum(1 for item in rollback.values() if item["state"] == REVERTED)
            failed = sum(1 for item in rollback.values() if item["state"] == REVERT_FAILED)
            why = f"{self.state.get('reason')}; rolled back {reverted} robots" + (
                f", {failed} could not be" if failed else ""
            )
            self.state["reason"] = why
            self.state["phase"] = "aborted"
            self.state["finished_at"] = now
            self._event(now, "aborted", why)
            return Decision(policy.DONE, why)
        return Decision(policy.ABORT, f"rolling back: {len(pending)} robots still reverting")

    # the loop -----------------------------------------------------------------------------------------------
    def run(
        self,
        until: float | None = None,
        *,
        interval: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> str:
        """:meth:`step` every ``interval`` seconds until the rollout is over (``done`` or ``aborted``) or the
        clock passes ``until``; returns the phase. A control plane that went away is waited for; an error
        answer is tried again at the next look, and raised after :data:`MAX_FAILED_STEPS` in a row."""
        failed = 0
        while not self.finished:
            now = self.clock()
            if until is not None and now >= until:
                break
            try:
                self.step(now)
                failed = 0
            except ApiNotRunning as exc:
                self.log.warning("rollout.cloud.lost", reason=str(exc))
                self.api.close()
            except ApiError as exc:
                failed += 1
                self.log.warning("rollout.step.failed", code=exc.code, reason=exc.message, in_a_row=failed)
                if failed >= MAX_FAILED_STEPS:
                    raise
            sleep(interval)
        return self.phase

    def close(self) -> None:
        self.feed.close()
        self.api.close()

    def __enter__(self) -> Rollout:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
