"""The README's main job (`make run` → scripts/run-demo.sh) runs the whole loop and the mission lands."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_the_fleet_mission_takes_effect(tmp_path: Path) -> None:
    env = dict(os.environ, ROOMBA_FLEET_DIR=str(tmp_path / "demo"), DEMO_SECONDS="6", FLEET="3")
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
