"""The update feature on a simulated fleet: the real agent's ``update`` job on every robot, with the
launcher's pure core in memory (:mod:`fleetsim.update`) and bad builds from the fault plan.

The unit tests drive :class:`~fleetsim.update.SimInstaller` alone. The fleet tests run one small fleet
(``roomba-fleet simulate`` against a real local cloud) through successive releases, each created as an AWS
IoT job through the control plane: a good one, one whose self-test fails everywhere, one that crashes at
start, one where every robot loses power at some phase of it. The releases are real signed bundles
(a stand-in agent wheel: the simulator verifies but never pip-installs them).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.launcher import EXIT_ROLLBACK, EXIT_SWITCH, MAX_FAILED_STARTS
from agent.update.installer import Installer
from base import testing
from fleet import rehearsal
from fleetsim.faults import (
    POWER_CUT_PHASES,
    FaultSpecError,
    UpdateFault,
    parse_faults,
    slow_link,
    update_faults,
)
from fleetsim.update import PowerCut, SimInstaller
from localcloud.apiclient import ApiClient
from localcloud.testing import LocalCloud
from provisioning import release

ROBOTS = 20
PREFIX = "upd-"
BAKE_S = 3.0


# --- the fault spec ------------------------------------------------------------------------------------------
def test_update_faults_parse_with_versions_phases_and_percentages() -> None:
    spec = parse_faults(
        "update-selftest@0.3.0=20%,update-crash=0.1,update-power-cut=installed:5%,"
        "update-power-cut=switching:0.05,update-slow=1%,update-disk-full@0.4.0=2%,update_slow_kbps=64"
    )
    assert spec.update == (
        UpdateFault("update-selftest", 0.2, "0.3.0"),
        UpdateFault("update-crash", 0.1),
        UpdateFault("update-power-cut", 0.05, None, "installed"),
        UpdateFault("update-power-cut", 0.05, None, "switching"),
        UpdateFault("update-slow", 0.01),
        UpdateFault("update-disk-full", 0.02, "0.4.0"),
    )
    assert spec.update_slow_kbps == 64 and spec.any_update and not spec.any
    assert spec.to_json()["update"][0] == "update-selftest@0.3.0=0.2"


def test_bad_update_faults_are_all_reported() -> None:
    with pytest.raises(FaultSpecError) as err:
        parse_faults(
            "update-gremlins=1,update-crash=150%,update-power-cut=somewhere:1,update-power-cut=self_test,"
            "update-selftest@=0.1,update-crash=0.1,update-crash=0.2,"
            "update-power-cut@1.0=preflight:0.7,update-power-cut@1.0=verified:0.7"
        )
    problems = err.value.problems
    assert len(problems) == 7, problems
    assert any("unknown update fault" in p for p in problems)
    assert any("update-crash=150%" in p and "percentage" in p for p in problems)
    assert sum("PHASE:P" in p for p in problems) == 2
    assert any("update-selftest@" in p and "VERSION" in p for p in problems)
    assert any("given twice" in p for p in problems)
    assert any("add up to 1.4" in p for p in problems)


def test_update_fault_plan_is_seeded_per_robot_and_version() -> None:
    spec = parse_faults("update-selftest@0.3.0=20%,update-crash=10%")
    things = [f"r{i:04d}" for i in range(2000)]
    bad = [t for t in things if update_faults(spec, 7, t, "0.3.0").selftest]
    assert 0.15 < len(bad) / len(things) < 0.25
    assert not any(update_faults(spec, 7, t, "0.2.0").selftest for t in things)  # only that version
    assert bad == [t for t in things if update_faults(spec, 7, t, "0.3.0").selftest]  # replayable
    assert bad != [t for t in things if update_faults(spec, 8, t, "0.3.0").selftest]  # seeded
    crashing = {t for t in things if update_faults(spec, 7, t, "0.2.0").crash}
    assert crashing == {t for t in things if update_faults(spec, 7, t, "0.9.0").crash}  # any version


def test_power_cut_phases_share_one_draw() -> None:
    share = 1.0 / len(POWER_CUT_PHASES) - 1e-9
    spec = parse_faults(",".join(f"update-power-cut={p}:{share}" for p in POWER_CUT_PHASES))
    cuts = [update_faults(spec, 1, f"r{i}", "0.2.0").power_cut for i in range(700)]
    assert None not in cuts[:100] or cuts.count(None) <= 1
    assert set(cuts) - {None} == set(POWER_CUT_PHASES)
    assert slow_link(parse_faults("update-slow@0.3.0=100%"), 1, "r1")


# --- the simulated installer alone ---------------------------------------------------------------------------
class FakeAgent:
    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.jobs = None

    def request_exit(self, code: int) -> None:
        self.exit_code = code


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, list[Any], release.Manifest]:
    release.keygen(tmp_path / "signer")
    signer = release.load_signer(tmp_path / "signer")
    wheel = rehearsal.stand_in_wheel(tmp_path / "w", "0.2.0")
    path = release.build_bundle(
        tmp_path / "b.bundle", [wheel], version="0.2.0", min_previous="0.1.0", signer=signer
    )
    trust = release.load_trust(tmp_path / "signer" / release.SIGNING_CERT)
    return path, trust, release.verify_bundle(path, trust)


def installer(tmp_path: Path, faults: str = "") -> SimInstaller:
    return SimInstaller(
        "r1", version="0.1.0", spec=parse_faults(faults), seed=0, download_dir=tmp_path / "dl"
    )


def test_good_update_switches_trials_and_commits(tmp_path: Path, signed: tuple[Path, list[Any], Any]) -> None:
    bundle, trust, manifest = signed
    inst = installer(tmp_path)
    assert inst.boot().version == "0.1.0"
    agent = FakeAgent()
    bound: Installer = inst.bind(agent, "0.1.0")  # type: ignore[arg-type]  # the feature's protocol
    assert bound.running_version() == "0.1.0" and bound.free_bytes() > manifest.install_bytes
    asyncio.run(bound.install(bundle, manifest, trust))
    assert inst.state.installed == {"0.1.0", "0.2.0"} and bound.slots() is inst.state
    bound.request_switch("0.2.0", 5, 60, {"job_id": "j"})
    bound.restart(EXIT_SWITCH)
    inst.exited(agent.exit_code, "exited with 100")
    start = inst.boot()
    assert (start.version, start.trial, start.commit_timeout_s) == ("0.2.0", True, 60)
    inst.bind(FakeAgent(), "0.2.0").commit("0.2.0")  # type: ignore[arg-type]
    assert inst.status()["version"] == "0.2.0" and inst.status()["previous"] == "0.1.0"
    assert inst.status()["update"]["result"] == "committed"


def test_bad_signature_is_refused_by_the_install(tmp_path: Path, signed: tuple[Path, list[Any], Any]) -> None:
    from agent.update.installer import InstallError

    bundle, _trust, manifest = signed
    release.keygen(tmp_path / "other")
    other = release.load_trust(tmp_path / "other" / release.SIGNING_CERT)
    inst = installer(tmp_path)
    inst.boot()
    with pytest.raises(InstallError, match="signature"):
        asyncio.run(inst.bind(FakeAgent(), "0.1.0").install(bundle, manifest, other))  # type: ignore[arg-type]
    assert inst.state.installed == {"0.1.0"}


def test_failed_self_test_rolls_back_with_its_reason(
    tmp_path: Path, signed: tuple[Path, list[Any], Any]
) -> None:
    bundle, trust, manifest = signed
    inst = installer(tmp_path, "update-selftest=100%")
    inst.boot()
    bound = inst.bind(FakeAgent(), "0.1.0")  # type: ignore[arg-type]
    asyncio.run(bound.install(bundle, manifest, trust))
    bound.request_switch("0.2.0", 5, 60, {})
    inst.exited(EXIT_SWITCH, "exited with 100")
    start = inst.boot()
    assert start.trial and start.faults.selftest
    trial = inst.bind(FakeAgent(), "0.2.0")  # type: ignore[arg-type]
    trial.fail_trial("OI sensor stream not alive")
    inst.exited(EXIT_ROLLBACK, "exited with 101")
    assert inst.boot().version == "0.1.0"
    last = inst.status()["update"]
    assert (last["result"], last["reason"]) == ("rolled_back", "OI sensor stream not alive")


def test_installer_crash_at_start_rolls_back_after_three_starts(
    tmp_path: Path, signed: tuple[Path, list[Any], Any]
) -> None:
    bundle, trust, manifest = signed
    inst = installer(tmp_path, "update-crash@0.2.0=100%")
    inst.boot()
    bound = inst.bind(FakeAgent(), "0.1.0")  # type: ignore[arg-type]
    asyncio.run(bound.install(bundle, manifest, trust))
    bound.request_switch("0.2.0", 5, 60, {})
    inst.exited(EXIT_SWITCH, "exited with 100")
    for _ in range(MAX_FAILED_STARTS):
        start = inst.boot()
        assert start.version == "0.2.0" and start.faults.crash
        inst.exited(1, "exited with 1")
    assert inst.boot().version == "0.1.0"
    assert inst.status()["update"]["result"] == "rolled_back"
    assert "3 failed starts" in inst.status()["update"]["reason"]


def test_power_cut_during_the_trial_is_not_a_failed_start(
    tmp_path: Path, signed: tuple[Path, list[Any], Any]
) -> None:
    bundle, trust, manifest = signed
    inst = installer(tmp_path, "update-power-cut=self_test:100%")
    cuts: list[str] = []
    inst.on_power_cut = cuts.append
    inst.boot()
    bound = inst.bind(FakeAgent(), "0.1.0")  # type: ignore[arg-type]
    asyncio.run(bound.install(bundle, manifest, trust))
    bound.request_switch("0.2.0", 5, 60, {})
    inst.exited(EXIT_SWITCH, "exited with 100")
    assert inst.boot().trial
    trial = inst.bind(FakeAgent(), "0.2.0")  # type: ignore[arg-type]
    assert inst.maybe_cut("0.2.0", "self_test") and cuts == ["self_test"]
    with pytest.raises(PowerCut):
        trial.commit("0.2.0")  # the dead agent's calls never reach the slots
    assert not inst.maybe_cut("0.2.0", "self_test")  # once
    again = inst.boot()  # no on_exit: the launcher died too
    assert again.version == "0.2.0" and again.trial
    assert inst.state.trial is not None
    assert (inst.state.trial["failed_starts"], inst.state.trial["interrupted_starts"]) == (0, 1)


# --- a small fleet through successive releases ---------------------------------------------------------------
class Scenario:
    def __init__(self, cloud: LocalCloud, fleet: rehearsal.SimFleet, work: Path, seed: int) -> None:
        self.cloud = cloud
        self.fleet = fleet
        self.work = work
        self.seed = seed
        self.things = [f"{PREFIX}{i:04d}" for i in range(1, ROBOTS + 1)]
        self.api = ApiClient(cloud.dir, timeout=30)
        self.arns: dict[str, str] = {}

    def release(self, version: str) -> str:
        """Build and publish ``version``, then send its update job to every robot; the job id."""
        info = rehearsal.publish(self.cloud.dir, rehearsal.bundle(self.cloud.dir, version, self.work))
        if not self.arns:
            self.arns = testing.wait_until(self._arns, 30, "every robot a thing", 0.5)
        job_id = f"upd-{version.replace('.', '-')}-{uuid.uuid4().hex[:6]}"
        self.api.call(
            "CreateJob",
            {
                "jobId": job_id,
                "targets": [self.arns[t] for t in self.things],
                "document": rehearsal.job_document(info, bake_s=BAKE_S),
            },
        )
        return job_id

    def _arns(self) -> dict[str, str] | None:
        arns = {
            t["thingName"]: t["thingArn"] for t in self.api.pages("ListThings", {"maxResults": 250}, "things")
        }
        return arns if all(t in arns for t in self.things) else None

    def executions(self, job_id: str) -> dict[str, dict[str, Any]]:
        out = {}
        for thing in self.things:
            doc = self.api.call("DescribeJobExecution", {"jobId": job_id, "thingName": thing})
            out[thing] = doc["execution"]
        return out

    def finished(self, job_id: str, timeout: float = 120) -> dict[str, dict[str, Any]]:
        """Every execution terminal and every robot settled on a release; the executions."""

        deadline = time.monotonic() + timeout
        while True:
            execs = self.executions(job_id)
            robots = self.fleet.per_robot()
            running = {t: e for t, e in execs.items() if e["status"] in ("QUEUED", "IN_PROGRESS")}
            unsettled = {t: robots.get(t) for t in self.things if not rehearsal.settled(robots.get(t, {}))}
            if not running and not unsettled:
                return execs
            assert time.monotonic() < deadline, f"job {job_id} not finished: {running}, robots {unsettled}"
            time.sleep(1.0)


def covering_seed() -> int:
    """The first seed whose plan cuts the power of some robot at every phase of 0.5.0's update."""
    spec = parse_faults(POWER_CUTS)
    for seed in range(1000):
        phases = {
            update_faults(spec, seed, f"{PREFIX}{i:04d}", "0.5.0").power_cut for i in range(1, ROBOTS + 1)
        }
        if set(POWER_CUT_PHASES) <= phases:
            return seed
    raise AssertionError("no seed below 1000 covers every phase")


SHARE = 1.0 / len(POWER_CUT_PHASES) - 1e-6
POWER_CUTS = ",".join(f"update-power-cut@0.5.0={p}:{SHARE:.6f}" for p in POWER_CUT_PHASES)
FAULTS = f"update-selftest@0.3.0=100%,update-crash@0.4.0=100%,{POWER_CUTS},update-disk-full@0.6.0=100%"


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    work = tmp_path_factory.mktemp("releases")
    seed = covering_seed()
    with LocalCloud.start() as cloud:
        rehearsal.signer_for(cloud.dir)  # before the fleet starts: its robots trust this certificate
        fleet = rehearsal.SimFleet(
            cloud.dir,
            ROBOTS,
            prefix=PREFIX,
            args=["--faults", FAULTS, "--seed", str(seed), "--commit-timeout", "30", "--log-level", "info"],
        )
        s = Scenario(cloud, fleet, work, seed)
        try:
            fleet.wait_ready(90)
            yield s
        finally:
            s.api.close()
            assert fleet.stop() == 0, fleet.stderr()
            tb = testing.tracebacks(
                "\n".join(p.read_text(errors="replace") for p in cloud.dir.logs_dir.glob("simulate-*.log"))
            )
            assert not tb, tb[:3]


slow = pytest.mark.slow


@slow
def test_good_release_reaches_every_robot(scenario: Scenario) -> None:
    job = scenario.release("0.2.0")
    execs = scenario.finished(job)
    assert {e["status"] for e in execs.values()} == {"SUCCEEDED"}, execs
    robots = scenario.fleet.per_robot()
    for thing in scenario.things:
        r = robots[thing]
        assert (r["version"], r["previous"], r["running"]) == ("0.2.0", "0.1.0", "0.2.0"), r
        assert r["update"]["result"] == "committed" and r["restarts"] >= 1
    versions = scenario.fleet.status()["versions"]
    assert versions["0.2.0"]["robots"] == ROBOTS and versions["0.2.0"]["working"] == ROBOTS


@slow
def test_failing_self_test_rolls_every_robot_back(scenario: Scenario) -> None:
    job = scenario.release("0.3.0")
    execs = scenario.finished(job)
    assert {e["status"] for e in execs.values()} == {"FAILED"}, execs
    robots = scenario.fleet.per_robot()
    for thing, e in execs.items():
        r = robots[thing]
        assert (r["version"], r["running"]) == ("0.2.0", "0.2.0"), r
        assert r["update"]["result"] == "rolled_back" and r["update"]["to"] == "0.3.0"
        details = json.dumps(e.get("statusDetails") or {})
        assert r["update"]["reason"] and r["update"]["reason"][:40] in details, (r["update"], details)


@slow
def test_fleet_crash_at_start_rolls_back_after_three_starts(scenario: Scenario) -> None:
    job = scenario.release("0.4.0")
    execs = scenario.finished(job)
    assert {e["status"] for e in execs.values()} == {"FAILED"}, execs
    for thing, r in scenario.fleet.per_robot().items():
        assert (r["version"], r["running"]) == ("0.2.0", "0.2.0"), (thing, r)
        assert r["update"]["result"] == "rolled_back" and "3 failed starts" in r["update"]["reason"], r
        assert r["crashes"] >= MAX_FAILED_STARTS


@slow
def test_power_cut_at_every_phase_leaves_a_working_version(scenario: Scenario) -> None:
    job = scenario.release("0.5.0")
    execs = scenario.finished(job, timeout=180)
    robots = scenario.fleet.per_robot()
    cut_at = {t: r["faults"] for t, r in robots.items()}
    phases = {k for f in cut_at.values() for k in f if k.startswith("update_power_cut_")}
    assert phases == {f"update_power_cut_{p}" for p in POWER_CUT_PHASES}, cut_at
    assert rehearsal.without_working_version(robots) == []
    for thing, e in execs.items():
        r = robots[thing]
        # the truth: SUCCEEDED exactly when 0.5.0 was committed, else FAILED on the release it runs
        assert (e["status"] == "SUCCEEDED") == (r["version"] == "0.5.0"), (thing, e, r)
        assert r["version"] in ("0.2.0", "0.5.0") and r["running"] == r["version"], r


@slow
def test_disk_full_half_way_fails_and_changes_nothing(scenario: Scenario) -> None:
    before = {t: r["version"] for t, r in scenario.fleet.per_robot().items()}
    job = scenario.release("0.6.0")
    execs = scenario.finished(job)
    assert {e["status"] for e in execs.values()} == {"FAILED"}, execs
    robots = scenario.fleet.per_robot()
    for thing, e in execs.items():
        r = robots[thing]
        assert r["version"] == before[thing] and "0.6.0" not in r["installed"], r
        assert "No space left on device" in json.dumps(e.get("statusDetails") or {}), e
