"""The rollout controller against a real local cloud (Mosquitto over mTLS, the iot service, the control
plane), with robots played by test code over MQTT: the stages' jobs and their AWS configurations, health
from shadows and presence, the pause, and the brake: cancel what is queued, roll back exactly the robots on
the new version. The controller's clock is the test's (``step(now)``), so bake times pass in a few steps."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from localcloud.apiclient import ApiClient
from localcloud.testing import LocalCloud
from rollout.controller import (
    Rollout,
    RolloutError,
    canary_of,
    load_state,
    read_release,
    request,
    state_path,
)
from rollout.policy import make_plan

OLD = "0.1.0"

pytestmark = pytest.mark.slow


def uid() -> str:
    return uuid.uuid4().hex[:6]


def drive(r: Rollout, fleet: Sequence[Any], now: float, *, steps: int = 40, dt: float = 10.0) -> float:
    """Controller step, then every robot moves once; until the rollout is over (or ``steps``)."""
    for _ in range(steps):
        r.step(now)
        if r.finished:
            break
        for robot in fleet:
            robot.tick()
        now += dt
    return now


def targets_of(cloud: LocalCloud, job_id: str) -> list[str]:
    job = cloud.boto3_client("iot").describe_job(jobId=job_id)["job"]
    return sorted(t.rsplit("/", 1)[1] for t in job["targets"])


def executions(cloud: LocalCloud, job_id: str) -> dict[str, str]:
    with ApiClient(cloud.dir) as api:
        items = api.pages("ListJobExecutionsForJob", {"jobId": job_id}, "executionSummaries")
        return {i["thingArn"].rsplit("/", 1)[1]: i["jobExecutionSummary"]["status"] for i in items}


def test_a_good_release_goes_through_canary_and_main_and_ends_done(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    u = uid()
    new = f"0.2.{int(u, 16) % 1000}"
    record = release(new)
    release(OLD)
    fleet = [robots(f"good-{u}-{i}", OLD) for i in range(4)]
    names = [r.thing for r in fleet]
    plan = make_plan(canary="1", exponential="50,2", abort="failed>10% after 2", bake="30s", window="docked")
    r = Rollout.start(
        local_cloud.dir, release=new, targets=names, plan=plan, rollout_id=f"good-{u}", now=1000.0
    )
    assert r.phase == "canary" and r.state["canary"] == canary_of(f"good-{u}", names, 1)
    assert targets_of(local_cloud, f"good-{u}-canary") == r.state["canary"]
    document = json.loads(
        local_cloud.boto3_client("iot").get_job_document(jobId=f"good-{u}-canary")["document"]
    )
    assert document == {
        "operation": "update",
        "release": {
            "version": new,
            "url": "${aws:iot:s3-presigned-url:" + record["s3_url"] + "}",
            "sha256": record["sha256"],
            "size": record["size"],
        },
        "allow_downgrade": False,
        "bake_s": 30.0,
        "requires": {"docked": True},
    }
    drive(r, fleet, 1000.0)
    assert r.phase == "done", r.state["events"]
    main = local_cloud.boto3_client("iot").describe_job(jobId=f"good-{u}-main")["job"]
    assert sorted(t.rsplit("/", 1)[1] for t in main["targets"]) == sorted(set(names) - set(r.state["canary"]))
    assert main["jobExecutionsRolloutConfig"]["exponentialRate"] == {
        "baseRatePerMinute": 50,
        "incrementFactor": 2.0,
        "rateIncreaseCriteria": {"numberOfSucceededThings": 50},
    }
    criteria = main["abortConfig"]["criteriaList"]
    assert sorted(
        (c["failureType"], c["thresholdPercentage"], c["minNumberOfExecutedThings"]) for c in criteria
    ) == [
        ("FAILED", 10.0, 2),
        ("TIMED_OUT", 10.0, 2),
    ]
    assert main["timeoutConfig"]["inProgressTimeoutInMinutes"] == plan.execution_timeout_minutes
    summary = r.summary()
    assert summary["states"]["healthy"] == 4 and summary["on_new_version"] == 4 and summary["touched"] == 4
    assert summary["versions"][new]["healthy"] == 4 and summary["rollback"]["robots"] == 0
    assert [robot.version for robot in fleet] == [new] * 4
    on_disk = load_state(local_cloud.dir, f"good-{u}")
    assert on_disk["phase"] == "done" and on_disk["summary"]["states"]["healthy"] == 4
    assert [e["phase"] for e in on_disk["events"]] == ["canary", "main", "done"]
    r.close()


def test_a_bad_canary_aborts_before_the_main_stage_and_rolls_back_the_robots_it_updated(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    u = uid()
    new = f"0.3.{int(u, 16) % 1000}"
    release(new)
    release(OLD)
    rid = f"badc-{u}"
    names = [f"badc-{u}-{i}" for i in range(6)]
    canary = canary_of(rid, names, 2)
    fleet = [robots(t, OLD, "selftest" if t == canary[0] else "good") for t in names]
    plan = make_plan(canary="2", rate="100", abort="failed>10% after 2", bake="90s")
    r = Rollout.start(local_cloud.dir, release=new, targets=names, plan=plan, rollout_id=rid, now=1000.0)
    drive(r, fleet, 1000.0)
    assert r.phase == "aborted", r.state["events"]
    assert r.state["jobs"]["main"] is None and r.state["jobs"]["rollback"] == [f"{rid}-rollback"]
    assert targets_of(local_cloud, f"{rid}-rollback") == [canary[1]]
    iot = local_cloud.boto3_client("iot")
    # the robots' self-test holds: short, the fleet bakes 90 s; back to a known-good version: shorter
    assert json.loads(iot.get_job_document(jobId=f"{rid}-canary")["document"])["bake_s"] == 60.0
    doc = json.loads(iot.get_job_document(jobId=f"{rid}-rollback")["document"])
    assert doc["release"]["version"] == OLD and doc["allow_downgrade"] is True and doc["bake_s"] == 30.0
    assert r.tracks[canary[0]].state == "rolled_back" and "self-test" in r.tracks[canary[0]].reason
    assert "failed>10% after 2" in r.state["reason"] and "rolled back 1 robots" in r.state["reason"]
    assert {robot.thing: robot.version for robot in fleet} == dict.fromkeys(names, OLD)
    assert all(robot.jobs_seen == [] for robot in fleet if robot.thing not in canary)
    assert r.summary()["touched"] == 2
    r.close()


@pytest.mark.parametrize(
    ("abort", "why"),
    [
        pytest.param(
            "rolled_back>30% after 4",
            "rolled_back>30% after 4: 2 of 6 finished robots (33.3%)",
            id="our_brake",
        ),
        pytest.param(
            "failed>30% after 4",
            "AWS aborted {rid}-main: Job aborted by abortConfig criterion 1: 2 of 5 completed executions FAILED",
            id="aws_abort_config_first",
        ),
    ],
)
def test_a_bad_main_stage_aborts_at_the_threshold_cancels_the_queued_and_rolls_back_the_updated(
    local_cloud: LocalCloud,
    release: Callable[[str], dict[str, Any]],
    robots: Callable[..., Any],
    abort: str,
    why: str,
) -> None:
    """AWS's abortConfig counts SUCCEEDED at once, so with ``failed>`` it brakes before the bake is over;
    ``rolled_back>`` has no AWS form and is the controller's own brake, once the robots baked."""
    u = uid()
    new = f"0.4.{int(u, 16) % 1000}"
    release(new)
    release(OLD)
    rid = f"badm-{u}"
    names = [f"badm-{u}-{i}" for i in range(9)]
    canary = canary_of(rid, names, 1)
    rest = [t for t in names if t not in canary]
    roles = dict.fromkeys(canary, "good")
    roles.update(
        zip(rest, ["good", "good", "good", "selftest", "selftest", "slow", "idle", "idle"], strict=True)
    )
    fleet = [robots(t, OLD, roles[t]) for t in names]
    ticking = [robot for robot in fleet if robot.behaviour != "idle"]
    plan = make_plan(canary="1", rate="100", abort=abort, bake="30s")
    r = Rollout.start(local_cloud.dir, release=new, targets=names, plan=plan, rollout_id=rid, now=1000.0)
    now = drive(r, ticking, 1000.0)
    assert r.phase == "aborting", r.state["events"]
    assert r.state["reason"].startswith(why.format(rid=rid)), r.state["reason"]
    on_new = sorted(t for t in names if roles[t] in ("good", "slow"))
    assert targets_of(local_cloud, f"{rid}-rollback") == on_new
    main = executions(local_cloud, f"{rid}-main")
    assert sorted(t for t, s in main.items() if s == "CANCELED") == sorted(
        t for t in names if roles[t] == "idle"
    )
    assert main[next(t for t in names if roles[t] == "slow")] == "IN_PROGRESS"
    slow = next(robot for robot in fleet if robot.behaviour == "slow")
    slow.release_slow = True
    drive(r, ticking, now)
    assert r.phase == "aborted", r.state["events"]
    states = {t: item["state"] for t, item in r.state["rollback"].items()}
    assert states == dict.fromkeys(on_new, "reverted")
    assert {robot.thing: robot.version for robot in fleet} == dict.fromkeys(names, OLD)
    assert sorted(t for t, tr in r.tracks.items() if tr.state == "canceled") == sorted(
        t for t in names if roles[t] == "idle"
    )
    r.close()


def test_a_canary_not_all_healthy_pauses_and_resume_from_another_process_promotes(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    u = uid()
    new = f"0.5.{int(u, 16) % 1000}"
    release(new)
    rid = f"pause-{u}"
    names = [f"pause-{u}-{i}" for i in range(4)]
    canary = canary_of(rid, names, 2)
    fleet = [robots(t, OLD, "reject" if t == canary[0] else "good") for t in names]
    plan = make_plan(canary="2", abort="failed>50% after 4", bake="20s")
    r = Rollout.start(local_cloud.dir, release=new, targets=names, plan=plan, rollout_id=rid, now=1000.0)
    now = drive(r, fleet, 1000.0, steps=12)
    assert r.phase == "paused" and "canary finished but not all healthy" in r.state["reason"]
    assert r.state["jobs"]["main"] is None
    assert load_state(local_cloud.dir, rid)["phase"] == "paused"
    request(local_cloud.dir, rid, "resume")
    drive(r, fleet, now)
    assert r.phase == "done", r.state["events"]
    assert r.summary()["states"]["healthy"] == 3 and r.summary()["states"]["rejected"] == 1
    assert [e["phase"] for e in r.state["events"]] == ["canary", "paused", "main", "done"]
    r.close()


def test_start_refuses_an_unpublished_release_unknown_things_and_a_taken_id(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    u = uid()
    new = f"0.6.{int(u, 16) % 1000}"
    robot = robots(f"refuse-{u}", OLD)
    plan = make_plan()
    with pytest.raises(RolloutError, match=f"release {new} is not published"):
        Rollout.start(local_cloud.dir, release=new, targets=[robot.thing], plan=plan, rollout_id=f"r-{u}")
    release(new)
    with pytest.raises(RolloutError, match=f"no such thing\\(s\\): nobody-{u}"):
        Rollout.start(local_cloud.dir, release=new, targets=[f"nobody-{u}"], plan=plan, rollout_id=f"r-{u}")
    assert not state_path(local_cloud.dir, f"r-{u}").exists()
    r = Rollout.start(local_cloud.dir, release=new, targets=[robot.thing], plan=plan, rollout_id=f"r-{u}")
    r.close()
    with pytest.raises(RolloutError, match="exists already"):
        Rollout.start(local_cloud.dir, release=new, targets=[robot.thing], plan=plan, rollout_id=f"r-{u}")


def test_an_abort_asked_by_another_process_rolls_back_stragglers_too_and_says_what_it_could_not(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    """The abort comes through the control file; a robot that was downloading reaches the new version
    after it and gets a rollback job of its own; a robot whose previous version is not published cannot be
    rolled back, and the rollout says so."""
    u = uid()
    new = f"0.7.{int(u, 16) % 1000}"
    release(new)
    release(OLD)
    rid = f"strag-{u}"
    a, b, c, d = (robots(f"strag-{u}-{n}", "0.0.9" if n == "d" else OLD) for n in "abcd")
    r = Rollout.start(
        local_cloud.dir,
        release=new,
        targets=[a.thing, b.thing, c.thing, d.thing],
        plan=make_plan(bake="1h"),
        rollout_id=rid,
        now=1000.0,
    )
    r.step(1000.0)
    for robot, moves in ((a, 3), (d, 3), (b, 1)):
        for _ in range(moves):
            robot.tick()
    r.step(1010.0)
    assert [r.tracks[x.thing].state for x in (a, b, c, d)] == ["updated", "updating", "queued", "updated"]
    request(local_cloud.dir, rid, "abort", "by hand")
    r.step(1020.0)
    assert r.phase == "aborting" and r.state["jobs"]["rollback"] == [f"{rid}-rollback"]
    assert targets_of(local_cloud, f"{rid}-rollback") == [a.thing]
    assert r.state["rollback"][d.thing]["state"] == "revert_failed"
    assert "release 0.0.9 is not published" in r.state["rollback"][d.thing]["reason"]
    assert executions(local_cloud, f"{rid}-main")[c.thing] == "CANCELED"
    b.tick()
    b.tick()
    drive(r, [a, b, c, d], 1030.0)
    assert r.phase == "aborted", r.state["events"]
    assert r.state["jobs"]["rollback"] == [f"{rid}-rollback", f"{rid}-rollback-2"]
    assert targets_of(local_cloud, f"{rid}-rollback-2") == [b.thing]
    assert {t: item["state"] for t, item in r.state["rollback"].items()} == {
        a.thing: "reverted",
        b.thing: "reverted",
        d.thing: "revert_failed",
    }
    assert r.state["reason"] == "by hand; rolled back 2 robots, 1 could not be"
    assert (a.version, b.version, c.version, d.version) == (OLD, OLD, OLD, new)
    assert c.jobs_seen == []
    r.close()


def test_a_robot_that_reported_no_version_before_is_left_out_of_the_rollback_and_says_why(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    """A shadow's ``versions.agent`` that is not a version (``..``) is no place to roll back to: the abort
    goes on for the others, that robot's rollback entry says why, and the state is saved."""
    u = uid()
    new = f"0.5.{int(u, 16) % 1000}"
    release(new)
    release(OLD)
    with pytest.raises(RolloutError, match=r"release '\.\.': not a version the artifact store can hold"):
        read_release(local_cloud.dir, "..")
    rid = f"nover-{u}"
    a, e = robots(f"nover-{u}-a", OLD), robots(f"nover-{u}-e", "..")
    r = Rollout.start(
        local_cloud.dir,
        release=new,
        targets=[a.thing, e.thing],
        plan=make_plan(bake="1h"),
        rollout_id=rid,
        now=1000.0,
    )
    r.step(1000.0)
    for robot in (a, e):
        for _ in range(3):
            robot.tick()
    r.step(1010.0)
    assert [r.tracks[x.thing].state for x in (a, e)] == ["updated", "updated"]
    assert r.tracks[e.thing].before is None and "'..'" in str(r.tracks[e.thing].before_unknown)
    request(local_cloud.dir, rid, "abort", "by hand")
    r.step(1020.0)
    assert r.phase == "aborting" and targets_of(local_cloud, f"{rid}-rollback") == [a.thing]
    saved = load_state(local_cloud.dir, rid)
    assert saved["phase"] == "aborting" and saved["rollback"][e.thing]["state"] == "revert_failed"
    assert saved["rollback"][e.thing]["reason"] == "previous version unknown: it reported '..', not a version"
    drive(r, [a, e], 1030.0)
    assert r.phase == "aborted" and r.state["reason"] == "by hand; rolled back 1 robots, 1 could not be"
    r.close()


def test_a_request_written_while_the_controller_reads_the_last_one_is_not_lost(
    local_cloud: LocalCloud,
    release: Callable[[str], dict[str, Any]],
    robots: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another process writes an abort just as the controller reads a pause: the controller took its file
    first, so the abort is in a new one, taken at the next step."""
    u = uid()
    new = f"0.4.{int(u, 16) % 1000}"
    release(new)
    rid = f"race-{u}"
    robot = robots(f"race-{u}", OLD)
    r = Rollout.start(
        local_cloud.dir,
        release=new,
        targets=[robot.thing],
        plan=make_plan(bake="1h"),
        rollout_id=rid,
        now=1000.0,
    )
    request(local_cloud.dir, rid, "pause", "hold on")
    read_text = Path.read_text
    written: list[str] = []

    def racing_read(self: Path, *args: Any, **kwargs: Any) -> str:
        text = read_text(self, *args, **kwargs)
        if self.name.startswith(f"{rid}.control.json") and not written:
            written.append(self.name)
            request(local_cloud.dir, rid, "abort", "by hand")  # another process, between read and delete
        return text

    monkeypatch.setattr(Path, "read_text", racing_read)
    r.step(1010.0)
    monkeypatch.setattr(Path, "read_text", read_text)
    assert written and r.phase == "paused"
    r.step(1020.0)
    assert r.phase == "aborted" and r.state["reason"] == "by hand; rolled back 0 robots", r.state["events"]
    leftovers = sorted(p.name for p in state_path(local_cloud.dir, rid).parent.glob(f"{rid}.control*"))
    assert leftovers == []
    r.close()


def test_another_controller_takes_over_from_the_state_file(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    """A controller that dies mid-canary (its process gone): ``Rollout.load`` carries on where the state file
    says, without creating anything twice."""
    u = uid()
    new = f"0.8.{int(u, 16) % 1000}"
    release(new)
    rid = f"take-{u}"
    fleet = [robots(f"take-{u}-{i}", OLD) for i in range(3)]
    plan = make_plan(canary="1", bake="20s")
    first = Rollout.start(
        local_cloud.dir, release=new, targets=[r.thing for r in fleet], plan=plan, rollout_id=rid, now=1000.0
    )
    drive(first, fleet, 1000.0, steps=2)
    before = load_state(local_cloud.dir, rid)
    assert before["phase"] == "canary"
    first.close()
    second = Rollout.load(local_cloud.dir, rid)
    assert second.tracks == first.tracks and second.phase == "canary"
    drive(second, fleet, 1020.0)
    assert second.phase == "done", second.state["events"]
    assert [e["phase"] for e in second.state["events"]] == ["canary", "main", "done"]
    assert sorted(r.jobs_seen[0] for r in fleet) == sorted([f"{rid}-canary"] + [f"{rid}-main"] * 2)
    assert all(len(r.jobs_seen) == 1 for r in fleet)
    second.close()


def test_a_canary_of_every_target_is_the_whole_rollout(
    local_cloud: LocalCloud, release: Callable[[str], dict[str, Any]], robots: Callable[..., Any]
) -> None:
    u = uid()
    new = f"0.9.{int(u, 16) % 1000}"
    release(new)
    fleet = [robots(f"all-{u}-{i}", OLD) for i in range(2)]
    r = Rollout.start(
        local_cloud.dir,
        release=new,
        targets=[x.thing for x in fleet],
        plan=make_plan(canary="100%", bake="10s"),
        rollout_id=f"all-{u}",
        now=1000.0,
    )
    drive(r, fleet, 1000.0)
    assert r.phase == "done" and r.state["jobs"]["main"] is None, r.state["events"]
    assert r.state["reason"] == "canary: all 2 healthy"
    r.close()
