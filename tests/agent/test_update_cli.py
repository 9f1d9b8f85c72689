"""``roomba-agent update install|status`` on a real release root, and what ``status`` and ``doctor`` say
about the release slots (pure renderers, table-driven)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.doctor import update_check
from agent.launcher import Layout, Slots
from agent.status import update_lines
from agent.update.testing import make_root, tree
from agent.updatecli import EXIT_FAILED, EXIT_NO_ROOT, EXIT_REJECTED
from provisioning import release

A, B = "0.1.0", "0.2.0"


def test_status_of_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_root(tmp_path / "root")
    assert main(["update", "status", "--root", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert f"release root {tmp_path / 'root'}" in out
    assert "  current     0.1.0\n  previous    (none)\n  installed   0.1.0" in out
    assert main(["update", "status", "--root", str(tmp_path / "root"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["current"], doc["installed"], doc["trial"]) == (A, [A], None)


def test_status_without_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["update", "status", "--root", str(tmp_path / "nothing")]) == EXIT_NO_ROOT
    assert "no release root at" in capsys.readouterr().err


def test_install_refuses_an_untrusted_bundle_and_leaves_the_root(
    tmp_path: Path, release_kit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    make_root(root)
    before = tree(root)
    release.keygen(tmp_path / "other", name="not trusted")
    code = main(
        [
            "update",
            "install",
            str(release_kit.build(B, deps=False)),
            "--root",
            str(root),
            "--trust",
            str(tmp_path / "other" / release.SIGNING_CERT),
        ]
    )
    assert code == EXIT_REJECTED
    assert "signature" in capsys.readouterr().err
    assert tree(root) == before


def test_a_failed_install_leaves_nothing_behind(
    tmp_path: Path, release_kit: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bundle without its dependencies' wheels cannot be installed offline: FAILED, no releases/0.2.0."""
    root = tmp_path / "root"
    make_root(root)
    before = tree(root)
    bundle = release_kit.build(B, deps=False)
    code = main(
        ["update", "install", str(bundle), "--root", str(root), "--trust", str(release_kit.trust_pem)]
    )
    assert code == EXIT_FAILED
    err = capsys.readouterr().err
    assert "pip install from the bundle's wheelhouse failed" in err
    assert tree(root) == before
    assert not Layout(root).release_dir(B).exists()


def slots(**kw: Any) -> Slots:
    base: dict[str, Any] = {"current": A, "installed": frozenset({A})}
    return Slots(**{**base, **kw})


TRIAL = {"version": B, "from": A, "failed_starts": 0, "commit_timeout_s": 300}


@pytest.mark.parametrize(
    ("state", "running", "status", "detail", "fix"),
    [
        (None, None, "passed", "no release root at /r: this agent does not run from releases", None),
        (slots(), {"agent_version": A}, "passed", "nothing pending; current 0.1.0", None),
        (
            slots(previous="0.0.9", last={"result": "rolled_back", "to": B, "reason": "3 failed starts"}),
            {"agent_version": A},
            "passed",
            "nothing pending; current 0.1.0, previous 0.0.9; the last update to 0.2.0 was rolled back: 3 failed starts",
            None,
        ),
        (
            slots(pending={"to": B}),
            {"agent_version": A},
            "failed",
            "a switch to 0.2.0 is pending but the launcher has not performed it",
            "the agent must be started by the launcher",
        ),
        (
            slots(current=B, previous=A, trial=TRIAL),
            {"agent_version": B, "update": {"trial": {"self_test": "healthy 12/30 s"}}},
            "passed",
            "trial of 0.2.0 (from 0.1.0): self-test healthy 12/30 s",
            None,
        ),
        (
            slots(current=B, previous=A, trial=TRIAL),
            None,
            "failed",
            "the trial of 0.2.0 (from 0.1.0) is pending but the agent is not running",
            "start it under the launcher",
        ),
        (
            slots(current=B, previous=A, trial={**TRIAL, "failed_starts": 1}),
            {"agent_version": B, "update": {"trial": {"self_test": "waiting: MQTT not connected"}}},
            "failed",
            "trial of 0.2.0: self-test waiting: MQTT not connected; 1 failed start(s)",
            "it rolls back on its own",
        ),
        (
            slots(current=B, previous=A, trial={**TRIAL, "failure": "self-test failed after 90 s: x"}),
            {"agent_version": B},
            "failed",
            "the trial of 0.2.0 failed (self-test failed after 90 s: x) and is not rolled back yet",
            "the launcher rolls it back at the next start",
        ),
        (
            slots(current=B, previous=A, trial=TRIAL),
            {"agent_version": A},
            "failed",
            "the trial of 0.2.0 is on but the agent running is 0.1.0",
            "the agent must be started by the launcher",
        ),
    ],
)
def test_doctor_update_stage(
    state: Slots | None, running: dict[str, Any] | None, status: str, detail: str, fix: str | None
) -> None:
    got_status, got_detail, got_fix = update_check("/r", state, running)
    assert got_status == status
    assert got_detail.startswith(detail), got_detail
    assert (got_fix is None) == (fix is None) and (fix is None or (got_fix or "").startswith(fix)), got_fix


def test_status_lines() -> None:
    assert update_lines({}) == []
    assert update_lines({"enabled": True, "current": None, "last": None}) == []  # not from releases
    doc = {
        "enabled": True,
        "running": B,
        "current": B,
        "previous": A,
        "trial": {"version": B, "from": A, "self_test": "healthy 3/30 s"},
        "last": {
            "result": "rolled_back",
            "from": A,
            "to": "0.1.5",
            "at": "2026-12-07T22:00:00Z",
            "reason": "crash",
        },
    }
    assert update_lines(doc) == [
        "  release     running 0.2.0, previous 0.1.0; TRIAL of 0.2.0 (from 0.1.0): self-test healthy 3/30 s",
        "  last update rolled back 0.1.0 -> 0.1.5 at 2026-12-07T22:00:00Z: crash",
    ]
    job = {"enabled": True, "running": A, "current": A, "job": {"to": B, "phase": "downloading"}}
    assert update_lines(job) == ["  release     running 0.1.0; updating to 0.2.0: downloading"]


def _installed_build(layout: Layout, version: str, manifest_bytes: bytes) -> None:
    """An installed release ``version`` (a venv stub) whose manifest.json is ``manifest_bytes``."""
    venv_bin = layout.release_dir(version) / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "roomba-agent").write_text("#!/bin/sh\n")
    layout.mark_installed(version, manifest_bytes)


@pytest.mark.parametrize("in_use", [True, False])
def test_a_rebuild_of_an_installed_version(
    tmp_path: Path, release_kit: Any, monkeypatch: pytest.MonkeyPatch, in_use: bool
) -> None:
    """A fixed 0.2.0 after a bad 0.2.0: the installed one is another build (its manifest's bytes differ).
    In use (current, previous, trial): REJECTED, the root untouched; else the old build is replaced."""
    import asyncio
    import dataclasses

    from agent.update.installer import InstallRefused, LauncherInstaller

    root = tmp_path / "root"
    layout = make_root(root)
    bundle = release_kit.build(B, deps=False)
    manifest = release.verify_bundle(bundle, release.load_trust(release_kit.trust_pem))
    old_build = dataclasses.replace(manifest, created_at="2000-01-01T00:00:00Z").to_bytes()
    _installed_build(layout, B, old_build)
    if in_use:
        layout.activate(B)
    before = tree(root)
    installer = LauncherInstaller(root, version=A, restart=lambda code: None)
    installs: list[bool] = []

    async def fake_install(bundle: Path, manifest: Any, trust: Any) -> None:
        installs.append(layout.release_dir(B).exists())  # the old build is gone before the new one

    monkeypatch.setattr(installer, "_install", fake_install)
    trust = release.load_trust(release_kit.trust_pem)
    if in_use:
        with pytest.raises(InstallRefused, match="already installed with different content: publish the fix"):
            asyncio.run(installer.install(bundle, manifest, trust))
        assert tree(root) == before and installs == []
    else:
        asyncio.run(installer.install(bundle, manifest, trust))
        assert installs == [False]


def test_the_same_build_installed_is_reused(
    tmp_path: Path, release_kit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from agent.update.installer import LauncherInstaller

    root = tmp_path / "root"
    layout = make_root(root)
    bundle = release_kit.build(B, deps=False)
    trust = release.load_trust(release_kit.trust_pem)
    manifest = release.verify_bundle(bundle, trust)
    with release.BundleReader(bundle) as reader:
        _installed_build(layout, B, reader.manifest_bytes)
    before = tree(root)
    installer = LauncherInstaller(root, version=A, restart=lambda code: None)
    monkeypatch.setattr(installer, "_install", None)  # never called
    asyncio.run(installer.install(bundle, manifest, trust))
    assert tree(root) == before
