"""``roomba-agent doctor`` end to end: every stage passes against the local cloud and the simulator (exit 0),
and while the agent runs, the MQTT and robot stages are judged from its status file instead of competing
for the client id and the serial port."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent

STAGES = [
    "config",
    "file modes",
    "certificates",
    "clock",
    "dns",
    "tcp",
    "tls",
    "mqtt connect",
    "shadow round trip",
    "jobs subscription",
    "update",
    "serial port",
    "oi handshake",
    "robot health",
]


def doctor(config: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    out = subprocess.run(
        [str(BIN / "roomba-agent"), "doctor", "--config", str(config), "--json", "--timeout", "10"],
        capture_output=True,
        text=True,
        timeout=150,
    )
    return out.returncode, {c["name"]: c for c in json.loads(out.stdout)["checks"]}


@pytest.mark.slow
def test_doctor_passes_every_stage_then_defers_to_the_running_agent(rig: dict[str, Any]) -> None:
    """Doctor connects itself while no agent runs; with one running it reads the status file instead of taking its client id."""
    code, checks = doctor(rig["config"])
    assert list(checks) == STAGES
    assert {n: c["status"] for n, c in checks.items()} == dict.fromkeys(STAGES, "passed"), checks
    assert code == 0
    assert checks["mqtt connect"]["detail"] == f"connected as {rig['thing']}"

    agent = rig["agent"].start()
    rig["until"](lambda: agent.status().get("ready"), 30, "agent ready")
    rig["until"](lambda: agent.status()["metrics"]["shadow_rtt"]["n"], 30, "a shadow update")
    code, checks = doctor(rig["config"])
    assert code == 0, checks
    assert "status file" in checks["mqtt connect"]["detail"]
    assert checks["shadow round trip"]["detail"].startswith("running agent")
    assert checks["serial port"]["detail"].startswith("running agent: link up")
    assert agent.proc is not None and agent.proc.poll() is None  # the doctor did not take its client id
