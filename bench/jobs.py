"""Benchmark of AWS IoT Jobs on the local cloud with a simulated fleet; prints ONE JSON line.

Against a fresh ``roomba-fleet up``, N robots (default 1,000) run the real agent with its jobs feature under
``roomba-fleet simulate``. Once every robot is online (its retained presence; the agent asks for its pending jobs
on every connect) and a thing of the registry, two jobs go out through the control plane (:mod:`localcloud.apiclient`,
the same calls ``roomba-fleet jobs`` and boto3 make):

- ``online_s``: from launching the simulator until every robot is online (not part of the job times).
- ``all_succeeded_s``: an unthrottled SNAPSHOT job for every robot, from the CreateJob call until
  DescribeJob counts N executions SUCCEEDED (polled every 0.2 s). ``service_cpu_pct`` / ``service_rss_mb``:
  CPU time of the iot service process over that interval (percent of one core) and its resident memory
  after it, from /proc.
- ``configured_per_min`` / ``measured_per_min``: a second job with ``maximumPerMinute`` set; the rate is
  measured from the executions' ``queuedAt`` (the rollout meters notifications, i.e. the creation of
  QUEUED executions) over the first ``rate_window_s`` after the job's ``createdAt``: the executions queued
  before the latest one, over the time from the first to the latest (:func:`measured_rate`; the engine
  releases ``maximumPerMinute`` things at the start of each minute, so this needs a window past the second
  minute's start). At 1,000 robots and 600 a minute only the first window is measured (``rate_note`` says
  so: 600 at minute 0, 400 at minute 1) and what is left of the rollout is canceled after it.
  ``queued_at_offsets_s``: the first distinct ``queuedAt`` offsets from ``createdAt`` (the batches).
  ``rate_within_10pct`` is the issue's acceptance check; ``target_met``: all succeeded within 60 s.

    .venv/bin/python bench/jobs.py [--robots 1000] [--per-minute 600] [--rate-window 60] [--quick]

``--quick`` is a smoke test: 20 robots, 10 a minute (two batches seen in the 63 s window).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base import logs
from base.process import cpu_seconds, raise_nofile_limit, rss_mb
from fleetsim.runner import provision, robot_names
from localcloud.apiclient import ApiClient
from localcloud.awsapi.errors import ApiError
from localcloud.testing import LocalCloud

DEFAULT_DOCUMENT = json.dumps(
    {"operation": "set-settings", "settings": {"metrics_s": 60}}, separators=(",", ":")
)
"""AGENTJOBS's advice: no robot I/O and no side effect beyond memory; IN_PROGRESS then SUCCEEDED."""


def service_pid(cloud: LocalCloud) -> int:
    children = cloud.run_info()["children"]
    for name, pid in children.items():
        if "iot" in name and pid:
            return int(pid)
    raise SystemExit(f"no iot service among up's children: {sorted(children)}")


def wait_online(cloud: LocalCloud, names: list[str], since: float, timeout: float) -> float:
    """Until every robot's retained presence says ``online`` (published after ``since``): its agent is
    connected, and asks for its pending jobs on connecting. The seconds it took."""
    from localcloud.opclient import OperatorClient
    from shadow.topics import ANY, parse_agent_topic, presence_topic

    wanted, online = set(names), set[str]()
    started = time.monotonic()
    with OperatorClient(cloud.dir, timeout=10) as client:
        client.subscribe([presence_topic(ANY)], qos=0)
        while online < wanted and time.monotonic() - started < timeout:
            for pkt in client.messages(1.0):
                agent = parse_agent_topic(pkt.topic)
                try:
                    doc = json.loads(pkt.payload)
                except ValueError:
                    continue
                at = doc.get("at") if isinstance(doc, dict) else None
                if agent and agent[0] in wanted and doc.get("state") == "online" and (at or 0) >= since:
                    online.add(agent[0])
                if online >= wanted:
                    break
    return time.monotonic() - started


def registry(client: ApiClient, names: list[str]) -> dict[str, str]:
    """The robots' thing ARNs (``up`` makes every robot of DIR a thing)."""
    wanted = set(names)
    return {
        t["thingName"]: t["thingArn"]
        for t in client.pages("ListThings", {"maxResults": 250}, "things")
        if t["thingName"] in wanted
    }


def counts(client: ApiClient, job_id: str) -> tuple[dict[str, Any], dict[str, int]]:
    job = client.call("DescribeJob", {"jobId": job_id})["job"]
    details = job.get("jobProcessDetails") or {}
    return job, {k: int(v) for k, v in details.items() if k.startswith("numberOf")}


def unthrottled(
    client: ApiClient, arns: list[str], pid: int, document: str, timeout: float
) -> dict[str, Any]:
    job_id = f"bench-all-{uuid.uuid4().hex[:8]}"
    cpu0 = cpu_seconds(pid)
    t0 = time.monotonic()
    client.call("CreateJob", {"jobId": job_id, "targets": arns, "document": document})
    last: dict[str, int] = {}
    while time.monotonic() - t0 < timeout:
        _job, last = counts(client, job_id)
        if last.get("numberOfSucceededThings", 0) >= len(arns):
            break
        time.sleep(0.2)
    wall = time.monotonic() - t0
    succeeded = last.get("numberOfSucceededThings", 0)
    return {
        "all_succeeded_s": round(wall, 2) if succeeded >= len(arns) else None,
        "succeeded": succeeded,
        "unthrottled_counts": {k[8:-6]: v for k, v in last.items() if v},
        "service_cpu_pct": round(100 * (cpu_seconds(pid) - cpu0) / wall, 1),
        "service_rss_mb": round(rss_mb(pid), 1),
    }


def measured_rate(queued: list[float], horizon: float) -> tuple[float | None, int, float]:
    """Executions per minute from their ``queuedAt`` times up to ``horizon``: those queued before the latest
    one, over the time from the first to the latest. Whether the rollout releases things one by one or in
    per-minute batches (the engine's way: ``maximumPerMinute`` at minute 0, 1, 2, ...), this is the rate over
    whole periods; None when everything was queued at once. Also (count used, span in seconds)."""
    seen = sorted(q for q in queued if q <= horizon)
    if len(seen) < 2 or seen[-1] <= seen[0]:
        return None, len(seen), 0.0
    span = seen[-1] - seen[0]
    before = sum(1 for q in seen if q < seen[-1])
    return before * 60.0 / span, before, span


def throttled(
    client: ApiClient, arns: list[str], per_minute: int, window: float, document: str
) -> dict[str, Any]:
    job_id = f"bench-rate-{uuid.uuid4().hex[:8]}"
    client.call(
        "CreateJob",
        {
            "jobId": job_id,
            "targets": arns,
            "document": document,
            "jobExecutionsRolloutConfig": {"maximumPerMinute": per_minute},
        },
    )
    created = float(client.call("DescribeJob", {"jobId": job_id})["job"]["createdAt"])
    # past the window's end (plus the service's timer granularity), then read every execution's queuedAt
    time.sleep(max(0.0, created + window + 3.0 - time.time()))
    queued = [
        float(e["jobExecutionSummary"]["queuedAt"])
        for e in client.pages(
            "ListJobExecutionsForJob", {"jobId": job_id, "maxResults": 250}, "executionSummaries"
        )
        if e.get("jobExecutionSummary", {}).get("queuedAt") is not None
    ]
    measured, used, span = measured_rate(queued, created + window + 3.0)
    note = (
        f"{len(queued)} of {len(arns)} executions queued in the first {window + 3:g} s; rate = the {used} "
        f"queued before the latest, over the {span:.1f} s from the first to the latest queuedAt"
    )
    if len(queued) < len(arns):
        try:
            client.call("CancelJob", {"jobId": job_id, "comment": "bench: rate measured"})
            note += "; the rest of the rollout was canceled"
        except ApiError as exc:
            note += f"; CancelJob: {exc.code}: {exc.message}"
    return {
        "configured_per_min": per_minute,
        "measured_per_min": None if measured is None else round(measured, 1),
        "rate_within_10pct": measured is not None and abs(measured - per_minute) <= 0.1 * per_minute,
        "rate_window_s": round(window + 3.0, 1),
        "rate_note": note,
        "first_queued_after_s": round(min(queued) - created, 3) if queued else None,
        "queued_at_offsets_s": sorted({round(q - created, 1) for q in queued})[:5],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.robots
    result: dict[str, Any] = {"robots": n, "cores": os.cpu_count()}
    with LocalCloud.start() as cloud:
        names = robot_names("jobs-", n)
        provision(cloud.dir, names)
        pid = service_pid(cloud)
        started = time.time()
        stderr = open(cloud.dir.root / "simulate.stderr", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet.simulate",
                "--robots",
                str(n),
                "--dir",
                str(cloud.dir.root),
                "--prefix",
                "jobs-",
                "--per-process",
                str(args.per_process),
                "--ramp",
                str(args.ramp),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            result["online_s"] = round(wait_online(cloud, names, started, args.timeout), 1)
            with ApiClient(cloud.dir, timeout=30) as client:
                things = registry(client, names)
                if len(things) < n:
                    result["error"] = f"only {len(things)} of {n} robots are things"
                    return result
                time.sleep(args.settle)
                arns = [things[name] for name in names]
                result.update(unthrottled(client, arns, pid, args.document_json, args.timeout))
                result.update(throttled(client, arns, args.per_minute, args.rate_window, args.document_json))
                result["api_throttled"] = client.throttled
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            stderr.close()
    result["target_met"] = result.get("all_succeeded_s") is not None and result["all_succeeded_s"] <= 60.0
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", type=int, default=1000, help="simulated robots (default 1000)")
    p.add_argument("--per-minute", type=int, default=600, help="maximumPerMinute of the throttled job")
    p.add_argument(
        "--rate-window",
        type=float,
        default=60.0,
        help="seconds of the rollout observed (plus 3) for the rate",
    )
    p.add_argument("--quick", action="store_true", help="smoke test: 20 robots, 10 a minute")
    p.add_argument("--per-process", type=int, default=500, help="robots per simulator process")
    p.add_argument("--ramp", type=float, default=200.0, help="new connections per second")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between all ready and the first job")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for each phase")
    p.add_argument("--document-json", default=DEFAULT_DOCUMENT, help="the job document the robots run")
    args = p.parse_args()
    if args.quick:
        args.robots, args.per_minute = 20, 10
    logs.configure("warning")
    raise_nofile_limit()
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
