"""The README's make targets: `make run` (→ scripts/run-demo.sh) runs the whole loop and the mission lands,
on the port `make run PORT=…` names; `make dist` builds the wheel that "Installing on a robot image"
installs, and that wheel works on its own."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from localcloud.testing import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_the_fleet_mission_takes_effect(tmp_path: Path) -> None:
    port = free_port()
    env = dict(
        os.environ, ROOMBA_FLEET_DIR=str(tmp_path / "demo"), DEMO_SECONDS="6", FLEET="3", DEMO_PORT=str(port)
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "run-demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    table = {line.split()[0]: line.split() for line in lines if line.startswith(("robot-001", "sim-"))}
    assert sorted(table) == ["robot-001", "sim-0001", "sim-0002", "sim-0003"], proc.stdout
    assert all(row[1] == "online" for row in table.values()), proc.stdout
    summary = {line.split()[0]: line.split()[1:] for line in lines if line[:10].strip()}
    assert summary["robots"][:3] == ["4", "connected", "4"], proc.stdout
    assert summary["commands"] == ["applied", "4"], proc.stdout
    # the pty robot really received the Clean opcode (135) from its agent, once
    record = (tmp_path / "demo" / "logs" / "robot-001.oi.jsonl").read_text().splitlines()
    assert sum('"opcode": 135' in line or '"opcode":135' in line for line in record) == 1
    # DEMO_PORT (make run PORT=...) reached up, and so the robots' configurations
    assert json.loads((tmp_path / "demo" / "settings.json").read_text())["port"] == port
    config = tomllib.loads((tmp_path / "demo" / "robots" / "robot-001.toml").read_text())
    assert config["connection"]["port"] == port
    assert config["robot"]["serial_port"] == str(tmp_path / "demo" / "robot-001.tty")
    (watch_line,) = [x for x in lines if x.startswith("demo: raw MQTT as the operator: mosquitto_sub ")]
    assert f"-p {port} " in watch_line


def test_demo_stops_at_once_with_the_reason_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = dict(os.environ, ROOMBA_FLEET_DIR=str(tmp_path / "demo"), DEMO_PORT=str(port))
        proc = subprocess.run(
            ["bash", str(ROOT / "scripts" / "run-demo.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1
    assert f"127.0.0.1:{port} is already in use" in proc.stderr
    assert "make run PORT=N" in proc.stderr.splitlines()[-1]


def _make_dry_run(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["make", "-n", "-o", "setup", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_make_run_passes_port_to_the_demo_and_ignores_an_exported_port() -> None:
    """PORT=… on make's command line becomes the demo's DEMO_PORT; a PORT some other tool exported does not."""
    assert "DEMO_PORT='18999' bash scripts/run-demo.sh" in _make_dry_run("run", "PORT=18999")
    exported = dict(os.environ, PORT="8080")
    assert "DEMO_PORT='' bash scripts/run-demo.sh" in _make_dry_run("run", env=exported)


def _install_section() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Installing on a robot image", 1)[1].split("\n#", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no shell block in the README's install section"
    return match.group(1)


@pytest.mark.slow
def test_make_dist_builds_the_wheel_the_install_section_installs(tmp_path: Path) -> None:
    block = _install_section()
    assert block.splitlines()[0].startswith("make dist")
    (wheel_ref,) = set(re.findall(r"dist/roomba_agent-[^\s]+\.whl", block))
    for ref in re.findall(r"(?<= )(systemd/\S+|docs/\S+\.md|README\.md)", block):
        assert (ROOT / ref).is_file(), f"the install section uses {ref}, which does not exist"
    unit = (ROOT / "systemd" / "roomba-agent.service").read_text()
    docs = re.findall(r"file:/usr/share/doc/roomba-agent/(\S+)", unit)
    assert docs, "the unit's Documentation= does not point at the installed docs"
    assert all(doc in block.split("/usr/share/doc/roomba-agent", 1)[1].splitlines()[0] for doc in docs)

    dist = tmp_path / "dist"
    built = subprocess.run(
        ["make", "-o", "setup", "dist", f"DIST={dist}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    wheel = dist / Path(wheel_ref).name
    assert wheel.is_file(), sorted(p.name for p in dist.iterdir())
    assert (dist / wheel.name.replace("-py3-none-any.whl", ".tar.gz")).is_file(), "no sdist"
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in sorted((ROOT / "agent" / "schemas").glob("*.json")):
        assert f"agent/schemas/{data.name}" in names, f"{data.name} is missing from the wheel"
    assert not any(n.startswith(("tests/", "bench/")) for n in names)

    # installed alone into a new venv (its dependencies then borrowed from this one), the wheel runs.
    # Only that venv's own pip touches it: a pip of this venv would swap out the checkout's editable install.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    (site,) = (venv / "lib").glob("python3*/site-packages")
    import structlog  # a dependency: its directory is where this venv keeps them

    # a plain path: the directory's own .pth files (this checkout's editable install) are not read
    (site / "deps.pth").write_text(str(Path(structlog.__file__).parents[1]) + "\n")
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    version = subprocess.run(
        [str(venv / "bin" / "roomba-agent"), "--version"],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert version.returncode == 0 and version.stdout.startswith("roomba-agent "), version.stderr
    check = (
        "import agent, agent.commands as c; print(agent.__file__); "
        "c.load_schema('desired'); c.load_schema('config')"
    )
    loaded = subprocess.run(
        [str(venv / "bin" / "python"), "-c", check],
        cwd=tmp_path,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith(str(site)), f"agent was imported from {loaded.stdout} (not the wheel)"
