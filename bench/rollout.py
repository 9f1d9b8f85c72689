"""Benchmark of staged rollouts on a simulated fleet; prints ONE JSON line.

Against a fresh ``roomba-fleet up``, N simulated robots (default 1,000) run the real agent with its update
feature under ``roomba-fleet simulate``; their installer is the simulated one (:mod:`fleetsim.update`: the
launcher's pure core in memory, the real bundle downloaded and verified, no pip). The robots start on this
agent's version; three signed releases are published beforehand (not timed): that version (a rollback
target), a good ``0.2.0`` and a bad ``0.3.0``, whose self-test fails on 20 % of the robots (the fault plan's
``update-selftest@0.3.0=20%``, seeded: the same robots on every run). Each rollout goes through the rollout
controller (:class:`rollout.controller.Rollout`, what ``roomba-fleet rollout start`` runs) with the same plan:
a canary of 20 robots, then an exponential rollout, an abort rule, a bake time.

- ``baseline_noop_s``: the same fleet runs an unthrottled no-op job (``set-settings``), from CreateJob until
  every execution SUCCEEDED: what any job costs on this machine, to compare with.
- ``good_rollout_s``: rollout of 0.2.0 from its start until the controller says ``done`` (every robot
  SUCCEEDED and baked); ``good_on_new_version``: robots whose launcher then runs 0.2.0, committed.
- ``bad_touched_pct``: robots that got a 0.3.0 job execution before the abort, in percent of the fleet;
  ``rollback_s``: from the abort until the rollback job has every updated robot back on 0.2.0.
- ``robots_without_working_version``: at the end, robots whose agent does not run a working release
  (nothing runnable, a bad build current, no agent up), from the simulator's status.
- ``targets_met``: good ≤ 300 s, bad stopped before 5 % of the fleet, no robot without a working version.

    .venv/bin/python bench/rollout.py [--robots 1000] [--stand-in]

``--stand-in`` uses bundles with a stand-in agent wheel instead of ``release build --no-deps`` (the simulator
never pip-installs; only the download size differs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent import __version__ as BASE_VERSION
from base import logs
from base.process import raise_nofile_limit
from fleet import rehearsal
from fleetsim.runner import provision, robot_names
from localcloud.apiclient import ApiClient
from localcloud.testing import LocalCloud
from rollout.policy import make_plan

GOOD, BAD = "0.2.0", "0.3.0"
NOOP = json.dumps({"operation": "set-settings", "settings": {"metrics_s": 60}}, separators=(",", ":"))


def noop_job(api: ApiClient, arns: list[str], timeout: float) -> float | None:
    job_id = f"bench-noop-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    api.call("CreateJob", {"jobId": job_id, "targets": arns, "document": NOOP})
    while time.monotonic() - t0 < timeout:
        details = api.call("DescribeJob", {"jobId": job_id})["job"].get("jobProcessDetails") or {}
        if int(details.get("numberOfSucceededThings", 0)) >= len(arns):
            return round(time.monotonic() - t0, 1)
        time.sleep(0.5)
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.robots
    plan = make_plan(
        canary=args.canary,
        exponential=args.exponential,
        abort=args.abort,
        bake=args.bake,
        self_test=args.self_test,
    )
    result: dict[str, Any] = {
        "robots": n,
        "cores": os.cpu_count(),
        "plan": {
            "canary": args.canary,
            "exponential": args.exponential,
            "abort": args.abort,
            "bake": args.bake,
            "self_test": args.self_test,
        },
        "bad_build": f"update-selftest@{BAD}={args.bad_pct:g}%",
    }
    with LocalCloud.start() as cloud:
        names = robot_names("roll-", n)
        provision(cloud.dir, names)
        work = cloud.dir.root / "releases"
        for version in (BASE_VERSION, GOOD, BAD):
            rehearsal.publish(cloud.dir, rehearsal.bundle(cloud.dir, version, work, real=not args.stand_in))
        result["bundle_bytes"] = (work / f"roomba-agent-{GOOD}.bundle").stat().st_size
        fleet = rehearsal.SimFleet(
            cloud.dir,
            n,
            prefix="roll-",
            args=[
                "--faults",
                result["bad_build"],
                "--seed",
                str(args.seed),
                "--per-process",
                str(args.per_process),
                "--ramp",
                str(args.ramp),
            ],
        )
        try:
            t0 = time.monotonic()
            fleet.wait_ready(args.timeout)
            result["online_s"] = round(time.monotonic() - t0, 1)
            with ApiClient(cloud.dir, timeout=30) as api:
                registry = {
                    t["thingName"]: t["thingArn"]
                    for t in api.pages("ListThings", {"maxResults": 250}, "things")
                }
                result["baseline_noop_s"] = noop_job(api, [registry[t] for t in names], args.timeout)

            good = rehearsal.rehearse(
                cloud.dir,
                version=GOOD,
                things=names,
                plan=plan,
                rollout_id="bench-good",
                timeout=args.timeout,
            )
            result["good_phase"] = good["phase"]
            result["good_rollout_s"] = good["seconds"] if good["phase"] == "done" else None
            rehearsal.wait_settled(fleet, names, 120)
            robots = fleet.per_robot()
            result["good_on_new_version"] = sum(
                1 for t in names if rehearsal.settled(robots.get(t, {}), GOOD)
            )

            bad = rehearsal.rehearse(
                cloud.dir, version=BAD, things=names, plan=plan, rollout_id="bench-bad", timeout=args.timeout
            )
            result["bad_phase"] = bad["phase"]
            result["bad_reason"] = bad["reason"]
            result["bad_touched"] = bad["touched"]
            result["bad_touched_pct"] = bad["touched_pct"]
            result["rollback_s"] = bad["rollback_s"]
            result["rolled_back_by_job"] = bad["rollback_robots"]
            result["bad_events"] = bad["events"]
            try:
                rehearsal.wait_settled(fleet, names, 180)
            except RuntimeError as exc:
                result["settle_error"] = str(exc)[:500]
            robots = fleet.per_robot()
            result["robots_without_working_version"] = len(rehearsal.without_working_version(robots))
            result["versions_at_end"] = {
                v: row["robots"] for v, row in (fleet.status().get("versions") or {}).items()
            }
            result["restarts"] = sum(int(r.get("restarts") or 0) for r in robots.values())
        finally:
            result["simulate_exit"] = fleet.stop()
    result["targets_met"] = (
        result.get("good_rollout_s") is not None
        and result["good_rollout_s"] <= 300
        and result.get("good_on_new_version") == n
        and result.get("bad_phase") == "aborted"
        and float(result.get("bad_touched_pct", 100)) < 5.0
        and result.get("robots_without_working_version") == 0
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", type=int, default=1000, help="simulated robots (default 1000)")
    p.add_argument("--canary", default="20", help="rollout --canary (default 20 robots: 2%% of 1,000)")
    p.add_argument("--exponential", default="200,2,NOTIFIED:200", help="rollout --exponential")
    p.add_argument("--abort", default="failed>5% after 20", help="rollout --abort")
    p.add_argument("--bake", default="10s", help="rollout --bake: health watched after success")
    p.add_argument("--self-test", default="5s", help="the robots' self-test hold (the job's bake_s)")
    p.add_argument("--bad-pct", type=float, default=20.0, help="robots on which the bad build fails")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-process", type=int, default=500)
    p.add_argument("--ramp", type=float, default=200.0)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for each phase")
    p.add_argument("--stand-in", action="store_true", help="stand-in agent wheel (no pip wheel build)")
    args = p.parse_args()
    logs.configure("warning")
    raise_nofile_limit()
    print(json.dumps(run(args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
