"""The command contract through the real local cloud (Mosquitto over mutual TLS + the shadow service), the
agent as a subprocess and the simulator on a pty: a second command written as a plain shadow update (no
nulls) runs, fields left by a command written while the robot was offline are ignored by their metadata
timestamps, and an error of a desired key goes once the key leaves desired."""

from __future__ import annotations

import time
from typing import Any

import pytest

from base.testing import wait_until

CLEAN, DRIVE, DRIVE_DIRECT = 135, 137, 145


def desired_command(op: Any) -> Any:
    return (op.get().get("desired") or {}).get("command")


@pytest.mark.slow
def test_raw_second_command_and_offline_leftovers(rig: dict[str, Any]) -> None:
    op, sim, agent = rig["operator"], rig["sim"], rig["agent"]
    agent.start()
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 20, "first report")

    # a drive, then a raw clean written as a plain shadow update: both run (the clean used to be rejected)
    op.update_desired({"command": {"id": "d1", "action": "drive", "velocity_mm_s": 100, "duration_ms": 300}})
    op.wait_command("d1", ("done",), timeout=10)
    wait_until(lambda: desired_command(op) is None, 10, "desired.command cleared by the robot")
    op.update_desired({"command": {"id": "c2", "action": "clean"}})
    assert op.wait_command("c2") == {"id": "c2", "action": "clean", "status": "done"}
    assert sim.opcodes().count(DRIVE) == 1 and sim.opcodes().count(CLEAN) == 1
    wait_until(lambda: desired_command(op) is None, 10, "desired.command cleared again")

    # offline: a drive and then, a second later, a raw clean; the robot sees only the merged result
    assert agent.stop() == 0
    op.update_desired({"command": {"id": "o1", "action": "drive", "velocity_mm_s": 100, "duration_ms": 300}})
    second = int(time.time())
    wait_until(lambda: int(time.time()) > second, 3, "the next second (metadata timestamps are seconds)")
    op.update_desired({"command": {"id": "o2", "action": "clean"}})
    merged = desired_command(op)
    assert merged == {"id": "o2", "action": "clean", "velocity_mm_s": 100, "duration_ms": 300}
    agent.start()
    assert op.wait_command("o2", timeout=30) == {"id": "o2", "action": "clean", "status": "done"}
    wait_until(lambda: desired_command(op) is None, 10, "desired.command cleared after the restart")
    assert sim.opcodes().count(DRIVE) == 1 and sim.opcodes().count(CLEAN) == 2  # o1 was never run
    counters = wait_until(
        lambda: (
            agent.status()["metrics"]["counters"].get("commands_done", 0) >= 1
            and agent.status()["metrics"]["counters"]
        ),
        10,
        "the restarted agent's status file",
    )
    assert counters["command_stale_fields_ignored"] == 1 and counters.get("commands_rejected", 0) == 0
    assert agent.stop() == 0
    assert agent.tracebacks() == []


@pytest.mark.slow
def test_error_goes_when_its_key_leaves_desired(rig: dict[str, Any]) -> None:
    op, agent = rig["operator"], rig["agent"]
    agent.start()
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 20, "first report")
    op.update_desired({"mode": "clean"})
    rep = op.wait_reported(lambda r: "mode" in (r.get("errors") or {}), 10, "mode rejected")
    assert "unknown setting" in rep["errors"]["mode"]
    op.update_desired({"mode": None})
    op.wait_reported(lambda r: "errors" not in r, 10, "reported.errors.mode cleared")
    assert agent.stop() == 0


@pytest.mark.slow
def test_a_mission_that_supersedes_a_drive_reaches_the_robot_after_the_stop(rig: dict[str, Any]) -> None:
    """A clean written while a drive is still turning the wheels: the robot gets the drive's stop first and
    the Clean after it (the stop used to arrive after the Clean, on a robot already cleaning)."""
    op, sim, agent = rig["operator"], rig["sim"], rig["agent"]
    agent.start()
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 20, "first report")
    op.update_desired(
        {"command": {"id": "long", "action": "drive", "velocity_mm_s": 100, "duration_ms": 5000}}
    )
    op.wait_command("long", ("accepted",), timeout=10)
    op.update_desired({"command": {"id": "then", "action": "clean"}})
    assert op.wait_command("then") == {"id": "then", "action": "clean", "status": "done"}
    codes = sim.opcodes()
    last_stop = max(i for i, c in enumerate(codes) if c in (DRIVE, DRIVE_DIRECT))
    assert codes.index(CLEAN) > last_stop, codes
    assert agent.stop() == 0
    assert agent.tracebacks() == []
