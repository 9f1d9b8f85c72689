"""Safer defaults of ``roomba-fleet`` as a user meets them: without ``--dir`` every command, from any working
directory, finds the same per-user cloud; a new cloud is never created silently; relative paths given to
``robot add`` are stored absolute."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.testing import wait_until
from localcloud.testing import LocalCloud, free_port, tls_refused

ROOT = Path(__file__).resolve().parents[2]
NOTICE = "creating a new local cloud in "


def _env(tmp_path: Path) -> dict[str, str]:
    """A user whose per-user state lives in ``tmp_path/state``, with no ``$ROOMBA_FLEET_DIR``."""
    env = {k: v for k, v in os.environ.items() if k != "ROOMBA_FLEET_DIR"}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    env["PYTHONPATH"] = str(ROOT)  # the cwd is elsewhere: `python -m fleet.cli` must still find the project
    return env


def _fleet(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def default_cloud(tmp_path: Path) -> Iterator[LocalCloud]:
    """``roomba-fleet up`` with no ``--dir``, started from ``tmp_path/a``."""
    cwd = tmp_path / "a"
    cwd.mkdir()
    port = free_port()
    with open(tmp_path / "up.stderr", "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleet.cli", "up", "--port", str(port)],
            cwd=cwd,
            env=_env(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.decode(errors="replace").rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    cloud = LocalCloud(tmp_path / "state" / "roomba-fleet" / "local-cloud", port, proc, owns_dir=False)
    try:
        wait_until(lambda: "ready" in lines or proc.poll() is not None, 60, "roomba-fleet up", 0.05)
        assert "ready" in lines, (tmp_path / "up.stderr").read_text()
        cloud.output = lines
        yield cloud
    finally:
        cloud.stop()


@pytest.mark.slow
def test_robot_add_from_another_directory_joins_the_running_default_cloud(
    default_cloud: LocalCloud, tmp_path: Path
) -> None:
    """The trap: ``robot add`` from another directory silently made a new cloud whose CA the broker refused."""
    per_user = tmp_path / "state" / "roomba-fleet" / "local-cloud"
    assert f"local cloud ready in {per_user}" in default_cloud.output
    assert f"{NOTICE}{per_user}" in (tmp_path / "up.stderr").read_text()
    elsewhere = tmp_path / "b"
    elsewhere.mkdir()
    added = _fleet(["robot", "add", "wanderer"], elsewhere, _env(tmp_path))
    assert added.returncode == 0, added.stderr
    assert NOTICE not in added.stderr, "robot add created a second cloud"
    config_path = Path(added.stdout.splitlines()[-1])
    assert config_path == per_user / "robots" / "wanderer.toml"
    config = tomllib.loads(config_path.read_text())
    assert Path(config["connection"]["root_ca"]).read_bytes() == default_cloud.ca_path.read_bytes()
    assert config["connection"]["port"] == default_cloud.port
    ident = default_cloud.identity("wanderer")
    assert tls_refused(default_cloud, ident.cert, ident.key) is None, "the running broker refused the robot"
    assert not (elsewhere / "var").exists() and not (tmp_path / "a" / "var").exists()


def test_robot_add_on_a_fresh_directory_says_so_once_and_stores_absolute_paths(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    env = _env(tmp_path)
    first = _fleet(["robot", "add", "r1", "--dir", "clouds/new", "--serial-port", "ttys/r1"], cwd, env)
    assert first.returncode == 0, first.stderr
    assert f"roomba-fleet: {NOTICE}{cwd / 'clouds' / 'new'}" in first.stderr.splitlines()
    again = _fleet(["robot", "add", "r2", "--dir", str(cwd / "clouds" / "new")], tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert NOTICE not in again.stderr
    config = tomllib.loads(Path(first.stdout.splitlines()[-1]).read_text())
    assert config["robot"]["serial_port"] == str(cwd / "ttys" / "r1")
    assert Path(config["state_dir"]).is_absolute() and Path(config["connection"]["key"]).is_absolute()
