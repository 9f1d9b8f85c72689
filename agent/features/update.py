"""Over-the-air updates: the ``update`` job operation, the self-test of a trial, the commit.

The jobs feature (:mod:`agent.features.jobs`) hands this feature an ``update`` job (a :class:`JobRun`: the
journal and the cloud for that job). The job goes through phases, each journalled before it is reported in
``statusDetails.phase``: ``preflight`` (versions, one update at a time, disk space, the robot docked or
idle) → ``downloading n/m`` (resumable, SHA-256 checked) → ``verified`` (the manifest's signature against
the trusted release certificates, then every wheel's hash, before anything is unpacked; the bundle is the
release the job names, for this Python, newer) → ``installed`` (beside the running release, by the
:class:`agent.update.installer.Installer`) → ``switching`` (the launcher is asked for the switch; the agent
exits with ``EXIT_SWITCH``). The new version starts in its trial and runs the self-test
(:mod:`agent.update.selftest`) from its start, before the cloud hands the job back; healthy for ``bake_s``,
it commits (read back), then reports ``committed`` and SUCCEEDED. A failed self-test sets the trial's reason
and exits with ``EXIT_ROLLBACK``; the launcher goes back to the previous version, which reports FAILED with
that reason (``state/last.json``). What a job cut short by a restart does next is
:func:`agent.update.decide.after_restart`'s decision.

REJECTED (bad signature, wrong hash, incompatible or not newer) and FAILED before the switch leave
``current`` and ``previous`` untouched; a half-installed release is removed by the installer.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agent import __version__ as AGENT_VERSION
from agent.config import AgentConfig
from agent.launcher import EXIT_ROLLBACK, EXIT_SWITCH
from agent.metrics import Metrics
from agent.mqtt import MqttConnection
from agent.parts import AgentLog, RobotSide
from agent.sync import ShadowSync
from agent.update import decide, preflight, selftest
from agent.update.installer import Installer, InstallError, InstallRefused

CONTRACT = 2  # reported.versions.contract: the shadow contract this agent speaks (1: before versions.*)
SAMPLE_S = 1.0
FLUSH_S = 10.0
PROGRESS_EVERY_S = 2.0
NO_INSTALLER = "this agent cannot install releases (no installer)"
Outcome = tuple[str, dict[str, Any]]


class JobRun(Protocol):
    """What the jobs feature gives the update of one job execution."""

    @property
    def job(self) -> dict[str, Any]:  # {"job_id", "execution_number"}
        ...

    def record(self, state: Mapping[str, Any]) -> None:
        """Journal the update's state (durable before it returns)."""
        ...

    def report(self, details: Mapping[str, Any]) -> None:
        """An IN_PROGRESS update with these statusDetails (within AWS's limits)."""
        ...

    def wait_for(self, unmet: Callable[[], str | None]) -> Awaitable[None]:
        """Wait until ``unmet()`` is None, saying what the job waits for."""
        ...

    def flush(self, timeout_s: float) -> Awaitable[None]:
        """Wait (at most ``timeout_s``) until every update sent for this job is acknowledged."""
        ...


@dataclass(frozen=True)
class Release:
    version: str
    url: str
    sha256: str
    size: int
    allow_downgrade: bool
    bake_s: float | None

    @classmethod
    def of(cls, args: Mapping[str, Any]) -> Release:
        rel = args["release"]
        bake = args.get("bake_s")
        return cls(
            version=str(rel["version"]),
            url=str(rel["url"]),
            sha256=str(rel["sha256"]).lower(),
            size=int(rel["size"]),
            allow_downgrade=bool(args.get("allow_downgrade", False)),
            bake_s=None if bake is None else float(bake),
        )


def robot_abi() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


class UpdateFeature:
    name = "update"

    def __init__(
        self,
        *,
        config: AgentConfig,
        installer: Installer | None,
        robot: RobotSide,
        mqtt: MqttConnection,
        sync: ShadowSync,
        status_sections: dict[str, Callable[[], Any]],
        metrics: Metrics,
        log: AgentLog,
        loop: asyncio.AbstractEventLoop,
        version: str = AGENT_VERSION,
    ) -> None:
        self.config = config
        self.uc = config.update
        self.installer = installer
        self.robot = robot
        self.mqtt = mqtt
        self.sync = sync
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.version = version
        self.slots: Any = None  # the installer's last read (agent.launcher.Slots)
        self.test: selftest.SelfTest | None = None
        self.trial_done: asyncio.Future[selftest.SelfTest] = loop.create_future()
        self.job: dict[str, Any] | None = None  # the update job running here: phase, from, to
        self._task: asyncio.Task[None] | None = None
        status_sections["update"] = self.status

    # --- lifecycle --------------------------------------------------------------------------------------
    @property
    def can_install(self) -> bool:
        return self.installer is not None and self.uc.enabled

    def start(self) -> None:
        self.refresh()
        trial = self.trial
        if trial is not None:
            self.log.info("update.trial_started", version=self.version, previous=trial.get("from"))
            self._task = self.loop.create_task(self._self_test(trial))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def refresh(self) -> None:
        if self.installer is None:
            return
        try:
            self.slots = self.installer.slots()
        except Exception as exc:  # a missing or unreadable root: no update state to show
            self.log.warning("update.slots_unreadable", error=str(exc))
            self.slots = None

    @property
    def trial(self) -> Mapping[str, Any] | None:
        """This start's trial (the launcher started this version to prove itself), or None."""
        trial = getattr(self.slots, "trial", None)
        if isinstance(trial, Mapping) and trial.get("version") == self.version:
            return trial
        return None

    # --- what the robot says about its versions -------------------------------------------------------
    def versions(self) -> dict[str, Any]:
        """The fields of ``reported.versions`` besides ``agent`` and ``firmware``."""
        s = self.slots
        last = getattr(s, "last", None)
        trial = getattr(s, "trial", None)
        update = None
        if isinstance(last, Mapping):
            reason = last.get("reason")
            update = {
                "result": last.get("result"),
                "to": last.get("to"),
                "from": last.get("from"),
                "reason": reason[-256:] if isinstance(reason, str) else None,
                "at": last.get("at"),
            }
        return {
            "previous": getattr(s, "previous", None),
            "trial": trial.get("version") if isinstance(trial, Mapping) else None,
            "update": update,
            "contract": CONTRACT,
        }

    def status(self) -> dict[str, Any]:
        s = self.slots
        trial = getattr(s, "trial", None)
        pending = getattr(s, "pending", None)
        test = self.test
        return {
            "enabled": self.uc.enabled,
            "installer": None if self.installer is None else type(self.installer).__name__,
            "root": self.uc.root,
            "running": self.version,
            "current": getattr(s, "current", None),
            "previous": getattr(s, "previous", None),
            "installed": sorted(getattr(s, "installed", None) or []),
            "trial": None
            if not isinstance(trial, Mapping)
            else {
                "version": trial.get("version"),
                "from": trial.get("from"),
                "failed_starts": trial.get("failed_starts"),
                "bake_s": trial.get("bake_s"),
                "self_test": None if test is None else test.progress(time.monotonic()),
            },
            "pending": None if not isinstance(pending, Mapping) else {"to": pending.get("to")},
            "last": getattr(s, "last", None),
            "job": self.job,
        }

    # --- the self-test of a trial ------------------------------------------------------------------------
    def sample(self, now: float) -> selftest.Sample:
        side = self.sync.classic
        inflight = side.inflight
        snap = self.robot.snapshot
        return selftest.Sample(
            at=now,
            mqtt_connected=self.mqtt.connected,
            shadow_synced=side.synced,
            reports_accepted=self.metrics.counters.get("shadow_update_accepted", 0),
            unacked_s=None if inflight is None else max(0.0, now - inflight.sent),
            link_up=self.robot.link_up,
            frames=0 if snap is None else snap.frames,
        )

    async def _self_test(self, trial: Mapping[str, Any]) -> None:
        asked_bake, asked_deadline = trial.get("bake_s"), trial.get("commit_timeout_s")
        bake = float(self.uc.bake_s if asked_bake is None else asked_bake)  # a job's bake_s 0 stays 0
        deadline = float(self.uc.commit_timeout_s if asked_deadline is None else asked_deadline)
        started = time.monotonic()
        job = trial.get("job")
        need_robot = not isinstance(job, Mapping) or job.get("robot_link") is not False
        limit = selftest.limit_for(bake, deadline)
        test = self.test = selftest.SelfTest(started, bake, limit, need_robot=need_robot)
        while not test.done:
            await asyncio.sleep(SAMPLE_S)
            test = self.test = selftest.observe(test, self.sample(time.monotonic()))
        assert self.installer is not None
        if test.result == selftest.PASSED:
            try:
                self.installer.commit(self.version)
            except Exception as exc:
                test = self.test = selftest.SelfTest(
                    test.started,
                    test.bake_s,
                    test.limit_s,
                    result=selftest.FAILED,
                    reason=f"commit failed: {exc}",
                )
            else:
                self.metrics.inc("update_committed")
                self.log.info("update.committed", version=self.version, bake_s=bake)
        self.refresh()
        if not self.trial_done.done():
            self.trial_done.set_result(test)
        if test.result == selftest.FAILED:
            reason = test.reason or "self-test failed"
            self.metrics.inc("update_self_test_failed")
            self.log.error("update.self_test_failed", version=self.version, reason=reason)
            try:
                self.installer.fail_trial(reason)
            except Exception as exc:
                self.log.error("update.fail_trial_failed", error=str(exc))
            self.installer.restart(EXIT_ROLLBACK)

    # --- the job ---------------------------------------------------------------------------------------
    def _details(self, phase: str, rel: Release, frm: str | None, **extra: Any) -> dict[str, Any]:
        return {"phase": phase, "from": frm, "to": rel.version, **extra}

    def _enter(self, run: JobRun, phase: str, rel: Release, frm: str | None, **extra: Any) -> None:
        state = {"phase": phase.split(" ", 1)[0], "from": frm, "to": rel.version}
        self.job = {**state, **run.job}
        run.record(state)
        run.report(self._details(phase, rel, frm, **extra))
        self.log.info("update.phase", phase=phase, to=rel.version, **run.job)

    def _end(self, status: str, reason: str | None, rel: Release, frm: str | None, phase: str) -> Outcome:
        self.job = None
        self.metrics.inc(f"update_{status.lower()}")
        (self.log.info if status == "SUCCEEDED" else self.log.warning)(
            "update.finished", status=status, to=rel.version, reason=reason
        )
        out: dict[str, Any] = {"reason": reason, "phase": phase, "from": frm, "to": rel.version}
        return status, out

    async def run(self, run: JobRun, args: Mapping[str, Any], progress: Mapping[str, Any]) -> Outcome:
        """An update job, from its start (``progress`` empty) or after a restart (the journalled state)."""
        rel = Release.of(args)
        state = progress.get("update") if isinstance(progress.get("update"), Mapping) else None
        frm = str(state.get("from")) if state and state.get("from") else self.version
        if self.installer is None or not self.uc.enabled:
            return self._end("REJECTED", NO_INSTALLER, rel, frm, decide.PREFLIGHT)
        self.refresh()
        phase = None if state is None else state.get("phase")
        if state is None:
            action = decide.START
        else:
            d = decide.after_restart(
                str(phase), to=rel.version, running=self.version, slots=self.slots, job=run.job
            )
            self.log.info("update.resumed", phase=phase, decision=d.action, reason=d.reason, to=rel.version)
            if d.action == decide.FAILED:
                return self._end("FAILED", d.reason, rel, frm, str(phase))
            action = d.action
        try:
            return await self._advance(run, rel, frm, action)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("update.failed", to=rel.version)
            return self._end(
                "FAILED", f"the update failed: {exc}", rel, frm, str((self.job or {}).get("phase"))
            )

    async def _advance(self, run: JobRun, rel: Release, frm: str, action: str) -> Outcome:
        installer = self.installer
        assert installer is not None
        if action == decide.SUCCEEDED:
            return await self._committed(run, rel, frm)
        if action == decide.SELF_TEST:
            return await self._await_trial(run, rel, frm)
        if action == decide.START:
            self._enter(run, decide.PREFLIGHT, rel, frm)
            slots = self.slots
            if getattr(slots, "current", None) is None:
                return self._end(
                    "REJECTED",
                    f"this agent does not run from a release under {self.uc.root} (no current link): "
                    "install one first with roomba-agent update install",
                    rel,
                    frm,
                    decide.PREFLIGHT,
                )
            # here, not at the top: the download pulls in urllib, http and email (2 MB the agent needs only
            # while an update job runs)
            from agent.update.download import partial_bytes

            refusal = preflight.check_before_download(
                running=self.version,
                target=rel.version,
                allow_downgrade=rel.allow_downgrade,
                bundle_size=rel.size,
                already_downloaded=partial_bytes(installer.download_dir(), rel.sha256),
                free_bytes=installer.free_bytes(),
                min_free_mb=self.uc.min_free_mb,
                pending=getattr(slots, "pending", None),
                trial=getattr(slots, "trial", None),
            )
            if refusal is not None:
                return self._end(refusal.status, refusal.reason, rel, frm, decide.PREFLIGHT)
            await run.wait_for(self._gate)
            action = decide.DOWNLOAD
        if action == decide.DOWNLOAD:
            outcome = await self._download(run, rel, frm)
            if outcome is not None:
                return outcome
            action = decide.INSTALL
        if action == decide.INSTALL:
            outcome = await self._verify_and_install(run, rel, frm)
            if outcome is not None:
                return outcome
            action = decide.SWITCH
        if action == decide.SWITCH:
            return await self._switch(run, rel, frm)
        return self._end("FAILED", f"no way on from {action!r}", rel, frm, str((self.job or {}).get("phase")))

    def _gate(self) -> str | None:
        snap = self.robot.snapshot
        if snap is None:
            return preflight.robot_gate(None, None, False)
        from agent.model import docked

        return preflight.robot_gate(docked(snap.sensors), self.robot.tracker.state, snap.link_up)

    def _bundle_path(self, rel: Release) -> Path:
        assert self.installer is not None
        return self.installer.download_dir() / f"{rel.sha256}.bundle"

    async def _download(self, run: JobRun, rel: Release, frm: str) -> Outcome | None:
        from agent.update.download import DownloadError, Target, download, partial_bytes

        assert self.installer is not None
        have = partial_bytes(self.installer.download_dir(), rel.sha256)
        self._enter(run, f"{decide.DOWNLOADING} {have}/{rel.size}", rel, frm)
        last = [time.monotonic(), -1]

        def progress(n: int, total: int) -> None:
            now = time.monotonic()
            pct = int(100 * n / total) if total else 100
            if now - last[0] >= PROGRESS_EVERY_S and pct != last[1]:
                last[0], last[1] = now, pct
                run.report(self._details(f"{decide.DOWNLOADING} {n}/{total}", rel, frm))

        try:
            await download(
                Target(rel.url, rel.sha256, rel.size),
                self.installer.download_dir(),
                limit_kbps=self.uc.download_limit_kbps,
                timeout_s=self.uc.download_timeout_s,
                progress=progress,
            )
        except DownloadError as exc:
            status = "REJECTED" if exc.kind == "hash" else "FAILED"
            return self._end(status, str(exc), rel, frm, decide.DOWNLOADING)
        run.report(self._details(f"{decide.DOWNLOADING} {rel.size}/{rel.size}", rel, frm))
        return None

    async def _verify_and_install(self, run: JobRun, rel: Release, frm: str) -> Outcome | None:
        from provisioning.release import ReleaseError, current_platform, load_trust, verify_bundle

        installer = self.installer
        assert installer is not None
        bundle = self._bundle_path(rel)
        if not bundle.exists():  # cut short before the rename, or removed: download (the rest) again
            outcome = await self._download(run, rel, frm)
            if outcome is not None:
                return outcome
        try:
            trust = await asyncio.to_thread(load_trust, self.uc.trust)
        except ReleaseError as exc:
            return self._end(
                "FAILED",
                f"cannot read the release trust {self.uc.trust}: {exc}",
                rel,
                frm,
                decide.DOWNLOADING,
            )
        try:
            manifest = await asyncio.to_thread(verify_bundle, bundle, trust)
        except ReleaseError as exc:
            bundle.unlink(missing_ok=True)
            status = "FAILED" if exc.kind == "io" else "REJECTED"
            return self._end(status, f"the bundle does not verify: {exc}", rel, frm, decide.DOWNLOADING)
        refusal = preflight.check_manifest(
            running=frm,
            expected_version=rel.version,
            version=manifest.version,
            min_previous=manifest.min_previous,
            python_abi=manifest.python_abi,
            robot_abi=robot_abi(),
            allow_downgrade=rel.allow_downgrade,
            install_bytes=manifest.install_bytes,
            free_bytes=installer.free_bytes(),
            min_free_mb=self.uc.min_free_mb,
            platform=manifest.platform,
            robot_platform=current_platform(),
        )
        if refusal is not None:
            if refusal.status == "REJECTED":
                bundle.unlink(missing_ok=True)
            return self._end(refusal.status, refusal.reason, rel, frm, decide.VERIFIED)
        self._enter(run, decide.VERIFIED, rel, frm)
        try:
            await installer.install(bundle, manifest, trust)
        except InstallRefused as exc:
            bundle.unlink(missing_ok=True)
            return self._end("REJECTED", str(exc), rel, frm, decide.VERIFIED)
        except InstallError as exc:
            return self._end("FAILED", str(exc), rel, frm, decide.VERIFIED)
        bundle.unlink(missing_ok=True)  # the release holds its wheels now
        self.refresh()
        self._enter(run, decide.INSTALLED, rel, frm)
        return None

    async def _switch(self, run: JobRun, rel: Release, frm: str) -> Outcome:
        installer = self.installer
        assert installer is not None
        await run.wait_for(self._gate)
        bake = rel.bake_s if rel.bake_s is not None else self.uc.bake_s
        state = {"phase": decide.SWITCHING, "from": frm, "to": rel.version}
        run.record(state)  # durable before the switch is asked for: a restart asks again or goes on
        # what worked before the switch is what the trial must keep working (a robot whose serial link is
        # down now cannot fail its self-test for it)
        job = {**run.job, "robot_link": bool(self.robot.link_up)}
        # the launcher's deadline covers the bake (a job may bake longer than [update] commit_timeout_s)
        commit_timeout = selftest.commit_timeout_for(bake, self.uc.commit_timeout_s)
        installer.request_switch(rel.version, bake, commit_timeout, job)
        self.refresh()
        self.job = {**state, **run.job}
        run.report(self._details(decide.SWITCHING, rel, frm, bake_s=bake))
        self.log.warning("update.switching", to=rel.version, bake_s=bake, **run.job)
        await run.flush(FLUSH_S)
        installer.restart(EXIT_SWITCH)
        await asyncio.Event().wait()  # cancelled when the features stop
        raise AssertionError("unreachable")

    async def _await_trial(self, run: JobRun, rel: Release, frm: str) -> Outcome:
        self._enter(run, decide.SELF_TEST, rel, frm, self_test="active")
        test = await asyncio.shield(self.trial_done)
        if test.result == selftest.PASSED and getattr(self.slots, "current", None) == rel.version:
            return await self._committed(run, rel, frm)
        # failed: the rollback restart is under way; the version running next reports it
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def _committed(self, run: JobRun, rel: Release, frm: str) -> Outcome:
        self._enter(run, decide.COMMITTED, rel, frm)
        self.job = None
        self.metrics.inc("update_succeeded")
        self.log.info("update.finished", status="SUCCEEDED", to=rel.version, previous=frm)
        return "SUCCEEDED", {
            "phase": decide.COMMITTED,
            "from": frm,
            "to": rel.version,
            "reason": f"accepted {rel.version}",
        }
