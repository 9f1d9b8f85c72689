"""Rehearsing an update on a simulated fleet: signed bundles for it, the fleet as a process, what it says.

Shared by ``tests/fleetsim`` and ``bench/rollout.py`` (beside ``roomba-fleet simulate``, which it runs). A simulated robot verifies the real bundle (the
manifest's signature against the local cloud's release-signing certificate, every file's SHA-256) but never
pip-installs it, so a rehearsal bundle may carry a stand-in agent wheel (:func:`stand_in_wheel`: a valid
wheel archive with only its metadata), which takes milliseconds to make instead of a ``pip wheel`` of the
tree; ``real=True`` builds the agent's own wheel (``roomba-fleet release build --no-deps``) instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from localcloud.layout import CloudDir

READY_LINE = "simulate ready"


def stand_in_wheel(out_dir: Path, version: str) -> Path:
    """``roomba_agent-<version>-py3-none-any.whl`` holding only its ``.dist-info`` (never installed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"roomba_agent-{version}-py3-none-any.whl"
    info = f"roomba_agent-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: roomba-agent\nVersion: {version}\n")
        z.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: fleetsim\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        z.writestr(f"{info}/RECORD", "")
    return path


def signer_for(cloud: CloudDir) -> Any:
    """The local cloud's release signer (``DIR/release-signing``; made on first use, as ``release build``)."""
    from fleet.release import cloud_signer_dir
    from provisioning import release

    directory = cloud_signer_dir(cloud)
    if not (directory / release.SIGNING_CERT).is_file():
        release.keygen(directory)
    return release.load_signer(directory)


def trust_path(cloud: CloudDir) -> Path:
    from fleet.release import cloud_signer_dir
    from provisioning.release import SIGNING_CERT

    return cloud_signer_dir(cloud) / SIGNING_CERT


def bundle(
    cloud: CloudDir, version: str, out_dir: Path, *, min_previous: str = "0.0.1", real: bool = False
) -> Path:
    """A signed bundle of ``version`` for the simulated fleet of ``cloud``."""
    from provisioning import release

    signer = signer_for(cloud)
    if real:
        from fleet.release import build_release

        return build_release(
            signer=signer, out_dir=out_dir, version=version, min_previous=min_previous, deps=False
        ).bundle
    wheel = stand_in_wheel(out_dir / f"wheels-{version}", version)
    return release.build_bundle(
        out_dir / release.bundle_name(version),
        [wheel],
        version=version,
        min_previous=min_previous,
        signer=signer,
    )


def publish(cloud: CloudDir, path: Path) -> dict[str, Any]:
    """Put the bundle in the artifact store (``roomba-fleet release publish``); its ``release.json``."""
    from fleet.release import publish as publish_release

    return publish_release(cloud, path, trust=trust_path(cloud))


def job_document(info: dict[str, Any], *, bake_s: float | None = None, allow_downgrade: bool = False) -> str:
    from fleet.release import job_document as document

    doc = document(info, allow_downgrade=allow_downgrade)
    if bake_s is not None:
        doc["bake_s"] = bake_s
    return json.dumps(doc, separators=(",", ":"))


class SimFleet:
    """``roomba-fleet simulate`` as a process against the local cloud in ``cloud``; :meth:`status` reads
    ``DIR/run/simulate.json``."""

    def __init__(self, cloud: CloudDir, robots: int, *, prefix: str, args: Sequence[str] = ()) -> None:
        self.cloud = cloud
        self.robots = robots
        self.prefix = prefix
        self.ready = threading.Event()
        self.stderr_path = cloud.root / f"simulate-{prefix.strip('-')}.stderr"
        self._stderr = open(self.stderr_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet.simulate",
                "--robots",
                str(robots),
                "--dir",
                str(cloud.root),
                "--prefix",
                prefix,
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(READY_LINE):
                self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"simulate exited with {self.proc.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"simulate not ready after {timeout:g} s: {self.stderr()}")

    def status(self) -> dict[str, Any]:
        from fleetsim.runner import status_path

        try:
            doc: dict[str, Any] = json.loads(status_path(self.cloud.root).read_text())
        except (OSError, ValueError):
            return {}
        return doc

    def per_robot(self) -> dict[str, dict[str, Any]]:
        robots: dict[str, dict[str, Any]] = self.status().get("per_robot") or {}
        return robots

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._stderr.close()
        return int(self.proc.returncode)


def settled(robot: dict[str, Any], version: str | None = None) -> bool:
    """A robot whose agent runs its launcher's current release, working and connected, with no switch
    or trial under way (and on ``version`` when given)."""
    return (
        bool(robot.get("working"))
        and bool(robot.get("connected"))
        and robot.get("running") == robot.get("version")
        and not robot.get("trial")
        and not robot.get("pending")
        and (version is None or robot.get("version") == version)
    )


def without_working_version(robots: dict[str, dict[str, Any]]) -> list[str]:
    """Robots that run no working release (nothing runnable, a bad build current, or no agent up)."""
    return sorted(t for t, r in robots.items() if not r.get("working"))


def wait_settled(fleet: SimFleet, things: Sequence[str], timeout: float, version: str | None = None) -> float:
    """Seconds until every robot of ``things`` is :func:`settled` (on ``version`` when given); raises
    RuntimeError naming the first ones that are not, after ``timeout``."""
    t0 = time.monotonic()
    while True:
        robots = fleet.per_robot()
        lagging = [t for t in things if not settled(robots.get(t, {}), version)]
        if not lagging:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            sample = {t: robots.get(t) for t in lagging[:3]}
            raise RuntimeError(f"{len(lagging)} robots not settled after {timeout:g} s, e.g. {sample}")
        time.sleep(1.0)


def rehearse(
    cloud: CloudDir,
    *,
    version: str,
    things: Sequence[str],
    plan: Any,
    rollout_id: str,
    timeout: float,
    interval: float = 2.0,
) -> dict[str, Any]:
    """Roll ``version`` (published) out to ``things`` with ``plan`` (:class:`rollout.policy.Plan`) through
    the rollout controller, until it is over; what happened: the final phase and reason, the seconds it
    took, the robots it touched, and (when it aborted) the seconds from the abort to the end of the rollback.
    """
    from rollout.controller import Rollout

    t0 = time.time()
    with Rollout.start(cloud, release=version, targets=list(things), plan=plan, rollout_id=rollout_id) as r:
        phase = r.run(until=t0 + timeout, interval=interval)
        summary = r.summary()
        events = list(r.state["events"])
    end = time.time()
    aborting = next((e["at"] for e in events if e["phase"] == "aborting"), None)
    aborted = next((e["at"] for e in reversed(events) if e["phase"] == "aborted"), None)
    return {
        "phase": phase,
        "reason": summary.get("reason"),
        "seconds": round(end - t0, 1),
        "touched": int(summary["touched"]),
        "touched_pct": round(100.0 * int(summary["touched"]) / max(1, len(things)), 2),
        "rollback_robots": int(summary["rollback"]["robots"]),
        "rollback_states": summary["rollback"]["states"],
        "rollback_s": round(aborted - aborting, 1) if aborting is not None and aborted is not None else None,
        "states": summary["states"],
        "events": [f"{round(e['at'] - t0, 1)}s {e['phase']}: {e['reason']}" for e in events],
    }
