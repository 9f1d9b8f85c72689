"""The update job end to end on one robot: the real agent process, ``roomba-sim`` on a pty, the local cloud
(Mosquitto over mutual TLS, the Jobs service, the artifact store behind presigned URLs), a real release
root and signed bundles from :class:`fleet.release.ReleaseKit`.

The running version (0.1.0) is this checkout, entered in the root as ``releases/0.1.0`` (its venv's
``roomba-agent`` is this virtualenv's); the new one (0.2.0) is built, signed, published, downloaded,
verified, installed into its own venv (offline, from the bundle's wheelhouse) and switched to: the agent
exits with ``EXIT_SWITCH``. Then the launcher (``agent/launcher.py``, in systemd's role) starts 0.2.0 in its
trial; it passes its self-test, commits and reports SUCCEEDED, and ``reported.versions`` says so.
REJECTED cases (a bundle signed by an untrusted key, a wrong SHA-256, a bundle for another Python, an
older version without ``allow_downgrade``) leave the root exactly as it was."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.launcher import EXIT_SWITCH, Layout
from agent.update.testing import make_root, tree
from base.testing import wait_until
from fleet.release import job_document, publish
from provisioning import release

BIN = Path(sys.executable).parent
A, B = "0.1.0", "0.2.0"


def configure(rig: dict[str, Any], root: Path, trust: Path, bake_s: float = 3) -> None:
    config: Path = rig["config"]
    config.write_text(
        config.read_text()
        + f'\n[jobs]\nrequest_timeout_s = 3\n\n[update]\nroot = "{root}"\ntrust = "{trust}"\nbake_s = {bake_s}\n'
    )


def iot(rig: dict[str, Any]) -> Any:
    client = rig["cloud"].boto3_client("iot")
    try:
        client.create_thing(thingName=rig["thing"])
    except client.exceptions.ResourceAlreadyExistsException:
        pass
    return client


def create_job(client: Any, rig: dict[str, Any], job_id: str, document: Any) -> None:
    arn = client.describe_thing(thingName=rig["thing"])["thingArn"]
    client.create_job(jobId=job_id, targets=[arn], document=json.dumps(document), targetSelection="SNAPSHOT")


def execution(client: Any, rig: dict[str, Any], job_id: str) -> dict[str, Any]:
    return dict(client.describe_job_execution(jobId=job_id, thingName=rig["thing"])["execution"])


def details(e: dict[str, Any]) -> dict[str, str]:
    return dict(e.get("statusDetails", {}).get("detailsMap", {}))


def wait_status(
    client: Any, rig: dict[str, Any], job_id: str, status: str, timeout: float = 60
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        e = execution(client, rig, job_id)
        return e if e["status"] == status else None

    try:
        return wait_until(done, timeout, f"{job_id} {status}", interval=0.3)
    except AssertionError:
        raise AssertionError(f"{job_id}: {execution(client, rig, job_id)}\nlogs:\n{logs(rig)}") from None


def logs(rig: dict[str, Any]) -> str:
    tmp: Path = rig["tmp"]
    return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(tmp.glob("*.log")))


def events(rig: dict[str, Any], name: str) -> list[dict[str, Any]]:
    out = []
    for p in sorted(Path(rig["tmp"]).glob("*.log")):
        for line in p.read_text(errors="replace").splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == name:
                    out.append(doc)
    return out


def wheels_of(bundle: Path, trust: Path, dest: Path) -> list[Path]:
    with release.BundleReader(bundle) as reader:
        reader.verify(release.load_trust(trust))
        reader.extract(dest)
    return sorted((dest / "wheels").glob("*.whl"))


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "root"
    make_root(path)
    yield path


@pytest.mark.slow
def test_update_job_installs_switches_and_the_new_version_commits(
    rig: dict[str, Any], root: Path, release_kit: Any, tmp_path: Path
) -> None:
    configure(rig, root, release_kit.trust_pem)
    info = publish(rig["cloud"].dir, release_kit.build(B))
    client = iot(rig)
    before_a = tree(root / "releases" / A)
    agent = rig["agent"].start()
    wait_until(lambda: (agent.status().get("jobs") or {}).get("subscribed"), 30, "jobs subscribed")
    status = agent.status()
    assert status["update"]["current"] == A and status["update"]["running"] == A

    create_job(client, rig, "update-b", {**job_document(info), "bake_s": 3})
    proc = agent.proc
    assert proc is not None

    def exited() -> int | None:
        assert execution(client, rig, "update-b")["status"] in ("QUEUED", "IN_PROGRESS"), logs(rig)
        code: int | None = proc.poll()
        return code

    assert wait_until(exited, 240, "the agent exits for the switch", interval=0.5) == EXIT_SWITCH, logs(rig)
    phases = [e["phase"] for e in events(rig, "update.phase")]
    assert phases[:1] == ["preflight"] and "verified" in phases and "installed" in phases, phases
    assert phases.index("verified") < phases.index("installed")
    assert [e["to"] for e in events(rig, "update.switching")] == [B]
    e = execution(client, rig, "update-b")
    assert e["status"] == "IN_PROGRESS"
    assert {k: details(e).get(k) for k in ("phase", "from", "to")} == {
        "phase": "switching",
        "from": A,
        "to": B,
    }
    layout = Layout(root)
    s = layout.read()
    assert s.pending is not None
    assert (s.current, s.installed, s.pending["to"]) == (A, frozenset({A, B}), B)
    assert s.pending["job"] == {
        "job_id": "update-b",
        "execution_number": e["executionNumber"],
        "robot_link": True,
    }
    assert tree(root / "releases" / A) == before_a
    assert list((root / "downloads").iterdir()) == []  # the bundle went into the release
    said = subprocess.run(
        [
            str(layout.release_dir(B) / "venv" / "bin" / "python"),
            "-I",  # not this checkout from the working directory
            "-c",
            "import agent; print(agent.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert said.stdout.strip() == B

    # the launcher plays systemd: it switches, starts 0.2.0 in its trial, which self-tests and commits
    import agent.launcher as launcher_module

    with open(tmp_path / "launcher.log", "wb") as log:
        launcher = subprocess.Popen(
            [
                sys.executable,
                launcher_module.__file__,
                "--root",
                str(root),
                "--",
                "run",
                "--config",
                str(rig["config"]),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env=rig["agent"].env,
            start_new_session=True,
        )
    try:
        done = wait_status(client, rig, "update-b", "SUCCEEDED", timeout=120)
        assert {k: details(done).get(k) for k in ("phase", "from", "to")} == {
            "phase": "committed",
            "from": A,
            "to": B,
        }
        s = layout.read()
        assert (s.current, s.previous, s.trial, s.pending) == (B, A, None, None)
        assert s.last is not None and (s.last["result"], s.last["from"], s.last["to"]) == ("committed", A, B)

        def versions() -> dict[str, Any] | None:
            v = (rig["operator"].get().get("reported") or {}).get("versions") or {}
            return v if v.get("agent") == B and (v.get("update") or {}).get("result") == "committed" else None

        v = wait_until(versions, 30, "reported.versions of 0.2.0")
        assert (v["previous"], v.get("trial"), v["contract"], v["update"]["from"]) == (A, None, 2, A)
        st = agent.status()
        assert st["agent_version"] == B and st["update"]["previous"] == A
    finally:
        launcher.terminate()
        launcher.wait(30)


@pytest.mark.slow
def test_rejected_updates_leave_the_root_untouched(
    rig: dict[str, Any], root: Path, release_kit: Any, tmp_path: Path
) -> None:
    configure(rig, root, release_kit.trust_pem)
    cloud_dir = rig["cloud"].dir
    good = release_kit.build(B, deps=False)
    wheels = wheels_of(good, release_kit.trust_pem, tmp_path / "unpacked")
    # signed by a key the robot does not trust
    release.keygen(tmp_path / "other-signer", name="not the release key")
    with release.load_signer(tmp_path / "other-signer") as signer:
        untrusted = release.build_bundle(
            tmp_path / "untrusted" / f"roomba-agent-{B}.bundle",
            wheels,
            version=B,
            min_previous=A,
            signer=signer,
        )
    # signed by the trusted key, built for another Python
    with release.load_signer(release_kit.signer_dir) as signer:
        other_abi = release.build_bundle(
            tmp_path / "abi" / f"roomba-agent-{B}.bundle",
            wheels,
            version=B,
            min_previous=A,
            signer=signer,
            python_abi="cp39",
        )
    client = iot(rig)
    before = tree(root)
    agent = rig["agent"].start()
    wait_until(lambda: (agent.status().get("jobs") or {}).get("subscribed"), 30, "jobs subscribed")

    def same(doc: dict[str, Any]) -> dict[str, Any]:
        return doc

    def wrong_sha(doc: dict[str, Any]) -> dict[str, Any]:
        return {**doc, "release": {**doc["release"], "sha256": hashlib.sha256(b"another bundle").hexdigest()}}

    older = release_kit.build("0.0.9", deps=False, min_previous="0.0.1")
    cases: list[
        tuple[str, Path, Callable[[dict[str, Any]], dict[str, Any]], str]
    ] = [  # each published just before its job (three are 0.2.0: the same artifact key)
        ("bad-signature", untrusted, same, "the bundle does not verify: "),
        ("wrong-sha256", good, wrong_sha, "the download's SHA-256 is "),
        ("abi", other_abi, same, "the release is built for Python cp39; this robot's Python is cp"),
        (
            "older",
            older,
            same,
            "version 0.0.9 is older than the running 0.1.0 and the job does not allow",
        ),
    ]
    for job_id, bundle, change, reason in cases:
        create_job(client, rig, job_id, change(job_document(publish(cloud_dir, bundle))))
        e = wait_status(client, rig, job_id, "REJECTED")
        assert details(e)["reason"].startswith(reason), (job_id, details(e))
        assert tree(root) == before, job_id
    assert agent.proc is not None and agent.proc.poll() is None  # still running, still 0.1.0
    assert agent.status()["update"]["current"] == A
    assert rig["agent"].tracebacks() == []


@pytest.mark.slow
def test_kill_9_while_downloading_and_while_installing_resumes(
    rig: dict[str, Any], root: Path, release_kit: Any
) -> None:
    """SIGKILL mid-download: the next start goes on from the partial file (Range); SIGKILL mid-install:
    the half-built release is removed and built again (and the killed agent's pip died with it)."""
    configure(rig, root, release_kit.trust_pem)
    config: Path = rig["config"]
    config.write_text(config.read_text() + "download_limit_kbps = 16000\n")  # ~2 MB/s: seconds to cut into
    info = publish(rig["cloud"].dir, release_kit.build(B))
    client = iot(rig)
    part = root / "downloads" / f"{info['sha256']}.part"
    agent = rig["agent"].start()
    wait_until(lambda: (agent.status().get("jobs") or {}).get("subscribed"), 30, "jobs subscribed")
    create_job(client, rig, "update-k", {**job_document(info), "bake_s": 3})
    wait_until(lambda: part.exists() and part.stat().st_size > 2_000_000, 60, "half a download")
    agent.kill()
    cut_at = part.stat().st_size
    assert 0 < cut_at < info["size"]

    agent.start()
    rdir = Layout(root).release_dir(B)
    wait_until(lambda: (rdir / "venv" / "bin" / "python").exists(), 120, "the install under way")
    agent.kill()
    assert not Layout(root).is_installed(B)

    proc = agent.start().proc
    assert proc is not None
    assert wait_until(proc.poll, 240, "the agent exits for the switch", interval=0.5) == EXIT_SWITCH, logs(
        rig
    )
    resumed = [e["decision"] for e in events(rig, "update.resumed")]
    assert resumed == ["download", "install"], resumed
    s = Layout(root).read()
    assert (s.current, B in s.installed, (s.pending or {}).get("to")) == (A, True, B)
    assert not part.exists() and list((root / "downloads").iterdir()) == []
