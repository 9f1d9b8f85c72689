"""The issue's rehearsal: a staged rollout on a simulated fleet, with 20 % bad builds injected.

200 simulated robots (the real agent and its update feature on each; the simulated installer) against a
real local cloud, driven by the rollout controller (:class:`rollout.controller.Rollout`, what ``roomba-fleet
rollout start`` runs): a canary of 20, then the rest at an exponential rate, the brake
``failed>5% after 20``. A good release reaches every robot; a release whose self-test fails on a seeded
20 % of the robots is stopped after the canary and the canary robots that took it are rolled back, and no
robot is ever left without a working version. The same rehearsal on 1,000 robots is ``bench/rollout.py``
(about five minutes here: too long for the suite).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import __version__ as BASE_VERSION
from fleet import rehearsal
from fleetsim.faults import parse_faults, update_faults
from fleetsim.runner import provision, robot_names
from localcloud.testing import LocalCloud
from rollout.policy import make_plan

pytestmark = pytest.mark.slow

ROBOTS = 200
CANARY = 20
GOOD, BAD = "0.2.0", "0.3.0"
FAULTS = f"update-selftest@{BAD}=20%"
PLAN = make_plan(
    canary=str(CANARY),
    exponential="200,2,NOTIFIED:200",
    abort="failed>5% after 20",
    bake="5s",
    self_test="3s",
)


class Rehearsal:
    def __init__(self, cloud: LocalCloud, fleet: rehearsal.SimFleet, names: list[str]) -> None:
        self.cloud = cloud
        self.fleet = fleet
        self.names = names


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rehearsal]:
    work: Path = tmp_path_factory.mktemp("releases")
    with LocalCloud.start() as cloud:
        names = robot_names("reh-", ROBOTS)
        provision(cloud.dir, names)
        for version in (BASE_VERSION, GOOD, BAD):
            rehearsal.publish(cloud.dir, rehearsal.bundle(cloud.dir, version, work))
        sim = rehearsal.SimFleet(
            cloud.dir, ROBOTS, prefix="reh-", args=["--faults", FAULTS, "--commit-timeout", "30"]
        )
        try:
            sim.wait_ready(90)
            yield Rehearsal(cloud, sim, names)
        finally:
            assert sim.stop() == 0, sim.stderr()


def test_good_release_reaches_all_robots(fleet: Rehearsal) -> None:
    out = rehearsal.rehearse(
        fleet.cloud.dir, version=GOOD, things=fleet.names, plan=PLAN, rollout_id="reh-good", timeout=150
    )
    assert out["phase"] == "done", out
    assert out["touched"] == ROBOTS and out["rollback_robots"] == 0, out
    rehearsal.wait_settled(fleet.fleet, fleet.names, 60, GOOD)
    robots = fleet.fleet.per_robot()
    assert rehearsal.without_working_version(robots) == []
    assert all(robots[t]["update"]["result"] == "committed" for t in fleet.names)


def test_bad_release_is_stopped_after_the_canary_and_rolled_back(fleet: Rehearsal) -> None:
    before = fleet.fleet.per_robot()
    start = {t: r["version"] for t, r in before.items()}
    out = rehearsal.rehearse(
        fleet.cloud.dir, version=BAD, things=fleet.names, plan=PLAN, rollout_id="reh-bad", timeout=150
    )
    assert out["phase"] == "aborted", out
    assert out["touched"] == CANARY, out  # stopped after the canary: the other 180 never got the job
    rehearsal.wait_settled(fleet.fleet, fleet.names, 90)
    robots = fleet.fleet.per_robot()
    assert rehearsal.without_working_version(robots) == []
    assert {r["version"] for r in robots.values()} == set(start.values())  # nobody left on the bad build
    touched = [t for t in fleet.names if BAD in robots[t]["installed"]]
    assert len(touched) == CANARY, touched
    spec = parse_faults(FAULTS)
    failed = [t for t in touched if update_faults(spec, 0, t, BAD).selftest]
    assert 0 < len(failed) < CANARY  # the seeded plan put bad builds in the canary, and good ones
    assert out["rollback_robots"] == CANARY - len(failed), out  # the ones that took it were rolled back
    for t in touched:
        last = robots[t]["update"]
        if t in failed:  # rolled back by themselves, the reason from their failed self-test
            assert last["result"] == "rolled_back" and "self-test failed" in last["reason"], last
        else:  # committed 0.3.0, then brought back by the rollback job
            assert (last["result"], last["from"], last["to"]) == ("committed", BAD, start[t]), last
