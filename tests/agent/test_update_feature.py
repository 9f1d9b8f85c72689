"""The update feature's trial, commit and rollback report, in one process: an in-memory installer on
``agent.launcher``'s pure core (the launcher's own rules), the feature sampling a robot and an MQTT link
that are healthy or not. A failed self-test records its reason and asks for the rollback; the launcher's
rules revert; the previous version, handed the job back, reports FAILED with that reason. A passing one
commits (read back) before it reports SUCCEEDED, and ``reported.versions`` says what happened."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import agent.features.update as update_feature
from agent import launcher
from agent.config import AgentConfig, UpdateConfig
from agent.features.update import NO_INSTALLER, UpdateFeature
from agent.launcher import EXIT_ROLLBACK, Slots
from agent.metrics import Metrics
from agent.parts import AgentLog
from agent.update import selftest

A, B = "0.1.0", "0.2.0"
JOB = {"job_id": "up-1", "execution_number": 1}
ARGS = {"release": {"version": B, "url": "https://example.invalid/b.bundle", "sha256": "0" * 64, "size": 10}}


class MemoryInstaller:
    """Slots in memory, changed by the launcher's own pure functions."""

    def __init__(self, slots: Slots, version: str, tmp: Path) -> None:
        self.s = slots
        self.version = version
        self.tmp = tmp
        self.restarts: list[int] = []

    def running_version(self) -> str:
        return self.version

    def slots(self) -> Slots:
        return self.s

    def free_bytes(self) -> int:
        return 10**12

    def download_dir(self) -> Path:
        return self.tmp

    async def install(self, bundle: Path, manifest: Any, trust: Any) -> None:
        raise AssertionError("not in these tests")

    def request_switch(self, to: str, bake_s: float, commit_timeout_s: float, job: dict[str, Any]) -> None:
        self.s = launcher.request_switch(self.s, to, bake_s, commit_timeout_s, job, time.time())

    def commit(self, version: str) -> None:
        self.s = launcher.committed(self.s, version, time.time())

    def fail_trial(self, reason: str) -> None:
        self.s = launcher.fail_trial(self.s, reason, time.time())

    def restart(self, code: int) -> None:
        self.restarts.append(code)


@dataclass
class Side:
    synced: bool = True
    inflight: Any = None


@dataclass
class Sync:
    classic: Side = field(default_factory=Side)


@dataclass
class Mqtt:
    connected: bool = True


@dataclass
class Snap:
    frames: int = 0
    link_up: bool = True
    sensors: dict[int, int] = field(default_factory=dict)


@dataclass
class Tracker:
    state: str = "idle"


@dataclass
class Robot:
    snapshot: Snap = field(default_factory=Snap)
    tracker: Tracker = field(default_factory=Tracker)

    @property
    def link_up(self) -> bool:
        return self.snapshot.link_up


class Run:
    def __init__(self) -> None:
        self.recorded: list[dict[str, Any]] = []
        self.reported: list[dict[str, Any]] = []

    @property
    def job(self) -> dict[str, Any]:
        return dict(JOB)

    def record(self, state: Mapping[str, Any]) -> None:
        self.recorded.append(dict(state))

    def report(self, details: Mapping[str, Any]) -> None:
        self.reported.append(dict(details))

    async def wait_for(self, unmet: Callable[[], str | None]) -> None:
        assert unmet() is None

    async def flush(self, timeout_s: float) -> None:
        return None


def config(tmp: Path) -> AgentConfig:
    return AgentConfig(
        thing_name="robot-1",
        endpoint="127.0.0.1",
        port=8883,
        root_ca="ca.pem",
        cert="c.pem",
        key="k.pem",
        pkcs11=None,
        serial_port="/dev/null",
        update=UpdateConfig(root=str(tmp / "root"), bake_s=0.05, commit_timeout_s=30),
    )


def feature(
    tmp: Path, installer: MemoryInstaller | None, version: str, mqtt: Mqtt, robot: Robot
) -> UpdateFeature:
    metrics = Metrics()
    metrics.inc("shadow_update_accepted")
    return UpdateFeature(
        config=config(tmp),
        installer=installer,
        robot=robot,  # type: ignore[arg-type]
        mqtt=mqtt,  # type: ignore[arg-type]
        sync=Sync(),  # type: ignore[arg-type]
        status_sections={},
        metrics=metrics,
        log=AgentLog("robot-1"),
        loop=asyncio.get_running_loop(),
        version=version,
    )


@pytest.fixture(autouse=True)
def fast_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(update_feature, "SAMPLE_S", 0.01)
    # a trial may take 0.5 s past its bake time (the feature's margin against the launcher's deadline)
    monkeypatch.setattr(selftest, "limit_for", lambda bake, deadline: bake + 0.5)


def in_trial() -> Slots:
    s = Slots(current=A, installed=frozenset({A, B}))
    s = launcher.request_switch(s, B, 0.05, 30, JOB, time.time())
    s, version, _ = launcher.on_boot(s, time.time())
    assert version == B and s.trial is not None
    return s


def test_a_failed_self_test_rolls_back_and_the_previous_version_reports_why(tmp_path: Path) -> None:
    async def scenario() -> tuple[MemoryInstaller, tuple[str, dict[str, Any]]]:
        installer = MemoryInstaller(in_trial(), B, tmp_path)
        trial = feature(tmp_path, installer, B, Mqtt(connected=False), Robot())
        trial.start()
        for _ in range(300):
            if installer.restarts:
                break
            await asyncio.sleep(0.01)
        await trial.stop()
        assert installer.restarts == [EXIT_ROLLBACK]
        assert installer.s.trial is not None and installer.s.trial["failure"].startswith("self-test failed")
        # the launcher's rules on that exit: back to 0.1.0
        installer.s = launcher.on_exit(installer.s, EXIT_ROLLBACK, "exit 101", time.time())
        again = MemoryInstaller(installer.s, A, tmp_path)
        previous = feature(tmp_path, again, A, Mqtt(), Robot())
        previous.start()
        progress = {"update": {"phase": "self_test", "from": A, "to": B}}
        outcome = await previous.run(Run(), ARGS, progress)
        versions = previous.versions()
        await previous.stop()
        assert versions["update"]["result"] == "rolled_back" and versions["previous"] is None
        return installer, outcome

    installer, (status, details) = asyncio.run(scenario())
    assert installer.s.current == A and installer.s.trial is None
    assert status == "FAILED"
    reason = details["reason"]
    assert reason.startswith("rolled back to 0.1.0: self-test failed after ") and reason.endswith(
        " s: MQTT not connected; no OI sensor frame since this start"
    )
    assert (details["from"], details["to"]) == (A, B)


def test_a_healthy_trial_commits_before_it_reports_succeeded(tmp_path: Path) -> None:
    async def scenario() -> tuple[MemoryInstaller, tuple[str, dict[str, Any]], Run, dict[str, Any]]:
        installer = MemoryInstaller(in_trial(), B, tmp_path)
        robot = Robot()
        trial = feature(tmp_path, installer, B, Mqtt(), robot)
        trial.start()

        async def frames() -> None:
            while True:
                robot.snapshot.frames += 1
                await asyncio.sleep(0.005)

        ticking = asyncio.get_running_loop().create_task(frames())
        run = Run()
        # the job is handed back while the self-test runs
        outcome = await trial.run(run, ARGS, {"update": {"phase": "switching", "from": A, "to": B}})
        versions = trial.versions()
        ticking.cancel()
        await trial.stop()
        return installer, outcome, run, versions

    installer, (status, details), run, versions = asyncio.run(scenario())
    assert installer.restarts == []
    assert (installer.s.current, installer.s.previous, installer.s.trial) == (B, A, None)
    assert status == "SUCCEEDED" and details["phase"] == "committed"
    assert [r["phase"] for r in run.reported] == ["self_test", "committed"]
    assert versions["update"]["result"] == "committed" and versions["previous"] == A
    assert versions["contract"] == 2 and versions["trial"] is None


def test_without_an_installer_an_update_is_rejected(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        f = feature(tmp_path, None, A, Mqtt(), Robot())
        f.start()
        assert not f.can_install
        return await f.run(Run(), ARGS, {})

    status, details = asyncio.run(scenario())
    assert (status, details["reason"]) == ("REJECTED", NO_INSTALLER)


def test_an_agent_not_from_a_release_rejects_updates(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, dict[str, Any]]:
        f = feature(tmp_path, MemoryInstaller(Slots(), A, tmp_path), A, Mqtt(), Robot())
        f.start()
        return await f.run(Run(), ARGS, {})

    status, details = asyncio.run(scenario())
    assert status == "REJECTED"
    assert details["reason"].startswith("this agent does not run from a release under")


def test_a_bake_longer_than_the_commit_timeout_raises_the_launchers_deadline(tmp_path: Path) -> None:
    # [update] commit_timeout_s is 30 here; the job bakes 600 s: the switch asks for 600 s plus the grace
    # the configuration allows (30 - 15 = 15 s) plus the margin to commit (15 s)
    async def scenario() -> MemoryInstaller:
        installer = MemoryInstaller(Slots(current=A, installed=frozenset({A, B})), A, tmp_path)
        f = feature(tmp_path, installer, A, Mqtt(), Robot())
        f.start()
        progress = {"update": {"phase": "installed", "from": A, "to": B}}
        task = asyncio.get_running_loop().create_task(f.run(Run(), {**ARGS, "bake_s": 600}, progress))
        for _ in range(300):
            if installer.restarts:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return installer

    installer = asyncio.run(scenario())
    assert installer.restarts == [launcher.EXIT_SWITCH]
    pending = installer.s.pending
    assert pending is not None and pending["to"] == B and pending["bake_s"] == 600
    assert pending["commit_timeout_s"] == 600 + (30 - selftest.MARGIN_S) + selftest.MARGIN_S


def test_a_jobs_bake_of_zero_is_not_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []

    def limit_for(bake: float, deadline: float) -> float:
        seen.append(bake)
        return bake + 0.5

    monkeypatch.setattr(selftest, "limit_for", limit_for)

    async def scenario() -> None:
        s = Slots(current=A, installed=frozenset({A, B}))
        s = launcher.request_switch(s, B, 0, 30, JOB, time.time())
        s, _, _ = launcher.on_boot(s, time.time())
        installer = MemoryInstaller(s, B, tmp_path)
        f = feature(tmp_path, installer, B, Mqtt(), Robot())
        f.config = config(tmp_path)
        f.uc = UpdateConfig(root=str(tmp_path / "root"), bake_s=3600, commit_timeout_s=30)
        f.start()
        await asyncio.sleep(0.05)
        await f.stop()

    asyncio.run(scenario())
    assert seen == [0.0]
