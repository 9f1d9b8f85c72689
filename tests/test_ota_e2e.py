"""Over-the-air updates end to end, with real processes only: the local cloud (Mosquitto over mutual TLS, the
Jobs service, the artifact store behind presigned URLs), ``roomba-sim`` on a pty, and the stable launcher
(``agent/launcher.py`` copied alone and run by the system ``python3``, in systemd's role) starting the agent
of a real release venv under a scratch release root.

Release A is installed with ``roomba-agent update install --activate``; a job updates A to B (downloaded,
verified, installed into its own venv, switched, self-tested, committed: SUCCEEDED only after the commit,
with power cuts - kill -9 of the launcher and the agent - while B installs and in B's trial on the way); then B', a source copy patched so that its shadow never syncs,
fails its self-test and the robot is back on B by itself, the job FAILED with the reason; then a bundle
with a bad signature is REJECTED and nothing under the root changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.launcher import Layout, Slots
from base.testing import tracebacks, wait_until
from localcloud.releases import job_document, publish
from localcloud.testing import LocalCloud, PahoOperator

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
LAUNCHER = Path(__file__).resolve().parents[1] / "agent" / "launcher.py"
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
A, B, BAD = "0.2.0", "0.3.0", "0.4.0"
THING = "ota-e2e-1"


class Robot:
    """roomba-sim on a pty + the launcher over a release root, playing a robot booted by systemd."""

    def __init__(self, cloud: LocalCloud, tmp: Path, trust: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "opt" / "roomba-agent"
        self.layout = Layout(self.root)
        self.lib = tmp / "usr-lib"
        self.lib.mkdir()
        shutil.copy(LAUNCHER, self.lib / "launcher.py")
        self.link = tmp / "robot.tty"
        with open(tmp / "sim.log", "wb") as log:
            self.sim = subprocess.Popen(
                [
                    str(BIN / "roomba-sim"),
                    "robot",
                    "--link",
                    str(self.link),
                    "--control",
                    str(tmp / "robot.ctl"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_until(self.link.exists, 20, "the simulator's pty")
        self.config = Path(cloud.add_robot(THING, str(self.link)))
        self.config.write_text(
            self.config.read_text()
            + "\n[intervals]\nstatus_s = 0.5\nreport_min_s = 0.2\nheartbeat_s = 30\n"
            + "\n[jobs]\nrequest_timeout_s = 3\n"
            + f'\n[update]\nroot = "{self.root}"\ntrust = "{trust}"\nbake_s = 3\ncommit_timeout_s = 35\n'
        )
        self.state_dir = Path(tomllib.loads(self.config.read_text())["state_dir"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.boots = 0

    def boot(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.boots += 1
        with open(self.tmp / f"launcher-{self.boots}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PYTHON,
                    str(self.lib / "launcher.py"),
                    "--root",
                    str(self.root),
                    "--pause",
                    "0.5",
                    "--",
                    "run",
                    "--config",
                    str(self.config),
                ],
                env={**os.environ, "ROOMBA_AGENT_RECONNECT_MAX_MS": "1500", "ROOMBA_LOG_FORMAT": "json"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )

    def agents(self) -> list[int]:
        """Pids of the agents the launcher started (from its spawn lines) still alive."""
        out = []
        for e in self.events("launcher.spawn"):
            pid = int(e["pid"])
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            stat = Path(f"/proc/{pid}/stat")
            if stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z":
                out.append(pid)
        return out

    def power_cut(self) -> None:
        assert self.proc is not None
        agents = self.agents()
        self.proc.kill()
        for pid in agents:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        wait_until(lambda: not self.agents(), 10, "the agents gone")

    def shutdown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in self.agents():
            os.kill(pid, signal.SIGKILL)
        if self.sim.poll() is None:
            self.sim.terminate()
            self.sim.wait(10)

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.state_dir / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.tmp.glob("*.log")))

    def events(self, name: str) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == name:
                    out.append(doc)
        return out

    def slots(self) -> Slots:
        return self.layout.read()

    def check(self) -> Slots:
        """Always: current -> an installed release, never both slots broken."""
        s = self.slots()
        assert s.current is not None and s.current in s.installed, s
        assert not (s.current in s.broken and s.previous in s.broken), s
        return s


def tree(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed) with its content's hash; ``downloads/`` left out."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(dirpath) == root and d == "downloads")]
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if rel.endswith(".lock"):
                continue
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def bad_signature(bundle: Path, dest: Path) -> Path:
    """A copy of ``bundle`` whose ``manifest.sig`` has one byte flipped (the tar stays valid)."""
    out = dest / bundle.name
    shutil.copy(bundle, out)
    with tarfile.open(bundle) as tar:
        member = tar.getmember("manifest.sig")
    with open(out, "r+b") as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return out


def never_syncs(source: Path) -> Path:
    """Patch a source copy so its shadow requests go to a topic no shadow service answers."""
    topics = source / "shadow" / "topics.py"
    text = topics.read_text()
    old = 'base = f"{_THINGS}{thing}/shadow"'
    assert old in text, "shadow/topics.py changed: update this patch"
    topics.write_text(text.replace(old, 'base = f"{_THINGS}{thing}/shadow-never"'))
    return source


@pytest.fixture
def robot(local_cloud: LocalCloud, release_kit: Any, tmp_path: Path) -> Iterator[Robot]:
    r = Robot(local_cloud, tmp_path, release_kit.trust_pem)
    try:
        yield r
    finally:
        r.shutdown()


def execution(client: Any, job_id: str) -> dict[str, Any]:
    return dict(client.describe_job_execution(jobId=job_id, thingName=THING)["execution"])


def details(e: dict[str, Any]) -> dict[str, str]:
    return dict(e.get("statusDetails", {}).get("detailsMap", {}))


def wait_status(client: Any, robot: Robot, job_id: str, status: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        e = execution(client, job_id)
        return e if e["status"] == status else None

    try:
        return wait_until(done, timeout, f"{job_id} {status}", interval=0.3)
    except AssertionError:
        raise AssertionError(f"{job_id}: {execution(client, job_id)}\n{robot.logs()[-12000:]}") from None


def test_a_to_b_then_a_bad_build_rolls_back_then_a_bad_signature_is_rejected(
    local_cloud: LocalCloud, release_kit: Any, robot: Robot, tmp_path: Path
) -> None:
    bundle_a = release_kit.build(A)
    bundle_b = release_kit.build(B)
    bundle_bad = release_kit.build(BAD, source=never_syncs(release_kit.source_copy(tmp_path / "bad-src")))

    # the image's first release: installed by hand, current without a trial
    installed = subprocess.run(
        [
            str(BIN / "roomba-agent"),
            "update",
            "install",
            str(bundle_a),
            "--root",
            str(robot.root),
            "--trust",
            str(release_kit.trust_pem),
            "--activate",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert installed.returncode == 0, installed.stderr
    assert json.loads(installed.stdout)["current"] == A  # stdout is the JSON document alone (logs: stderr)
    assert (robot.check().current, robot.slots().previous) == (A, None)

    client = local_cloud.boto3_client("iot")
    try:
        client.create_thing(thingName=THING)
    except client.exceptions.ResourceAlreadyExistsException:
        pass
    arn = client.describe_thing(thingName=THING)["thingArn"]

    def create_job(job_id: str, document: dict[str, Any]) -> None:
        client.create_job(
            jobId=job_id, targets=[arn], document=json.dumps(document), targetSelection="SNAPSHOT"
        )

    robot.boot()
    wait_until(lambda: (robot.status().get("jobs") or {}).get("subscribed"), 60, "A's jobs subscribed")
    assert robot.status()["agent_version"] == A
    operator = PahoOperator(local_cloud, THING)
    try:
        # --- A -> B, with a power cut while B installs and another in B's trial ----------------------------
        create_job("update-b", {**job_document(publish(local_cloud.dir, bundle_b)), "bake_s": 3})
        wait_until(
            lambda: details(execution(client, "update-b")).get("phase") == "verified",
            120,
            "B downloaded and verified (its install starts)",
        )
        robot.power_cut()
        s = robot.check()
        assert (s.current, s.pending, s.trial) == (A, None, None), (
            "a cut before the switch leaves A as it was"
        )
        robot.boot()
        wait_until(
            lambda: any(e.get("version") == B for e in robot.events("launcher.trial_start")),
            300,
            "the launcher starting B's trial",
        )
        assert execution(client, "update-b")["status"] == "IN_PROGRESS"
        robot.power_cut()
        s = robot.check()
        assert s.trial is not None and s.trial["version"] == B and s.trial["in_flight"] is True
        robot.boot()
        done = wait_status(client, robot, "update-b", "SUCCEEDED", timeout=120)
        s = robot.check()
        assert (s.current, s.previous, s.trial) == (B, A, None)
        assert s.last is not None and (s.last["result"], s.last["to"]) == ("committed", B)
        assert details(done)["phase"] == "committed", details(done)
        # SUCCEEDED only after the commit: the commit is on disk from before the execution's last update
        committed_at = [e for e in robot.events("update.committed") if e.get("version") == B]
        assert committed_at, "B logged its commit"
        interrupted = [e for e in robot.events("launcher.trial_interrupted") if e.get("version") == B]
        assert [e["interrupted"] for e in interrupted] == [1], "the power cut counted as interrupted"
        assert [e["version"] for e in robot.events("launcher.spawn")].count(A) == 2, "A ran before each cut"
        assert not robot.events("launcher.trial_failed")

        def versions_show_b() -> dict[str, Any] | None:
            v = (operator.reported().get("versions") or {}) if operator.reported() else {}
            return v if v.get("agent") == B and v.get("previous") == A else None

        versions = wait_until(versions_show_b, 30, "reported.versions with B and A")
        assert versions.get("trial") is None
        assert (versions.get("update") or {}).get("result") == "committed"

        # --- B -> B' (its shadow never syncs): FAILED with the reason, back on B by itself -----------------
        create_job("update-bad", {**job_document(publish(local_cloud.dir, bundle_bad)), "bake_s": 3})
        failed = wait_status(client, robot, "update-bad", "FAILED", timeout=300)
        reason = details(failed).get("reason", "")
        assert reason, details(failed)
        s = robot.check()
        assert (s.current, s.previous, s.trial) == (B, A, None)
        assert s.last is not None and (s.last["result"], s.last["to"]) == ("rolled_back", BAD)
        assert s.last["reason"] and s.last["reason"] in reason, (s.last["reason"], reason)
        assert BAD in s.broken
        wait_until(lambda: robot.status().get("agent_version") == B, 60, "B running again")

        def versions_show_rollback() -> dict[str, Any] | None:
            v = operator.reported().get("versions") or {}
            update = v.get("update") or {}
            return v if v.get("agent") == B and update.get("result") == "rolled_back" else None

        wait_until(versions_show_rollback, 30, "reported.versions with the rollback")

        # --- a bad signature: REJECTED, the root untouched ------------------------------------------------------
        before = tree(robot.root)
        forged = bad_signature(bundle_bad, tmp_path)
        create_job("update-forged", {**job_document(publish(local_cloud.dir, forged)), "bake_s": 3})
        rejected = wait_status(client, robot, "update-forged", "REJECTED", timeout=120)
        assert "signature" in details(rejected).get("reason", ""), details(rejected)
        assert tree(robot.root) == before
        assert robot.check().current == B
    finally:
        operator.close()
    assert tracebacks(robot.logs()) == [], robot.logs()[-8000:]
