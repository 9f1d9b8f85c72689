"""End to end: the local cloud (Mosquitto over mutual TLS + shadow service), the simulator over a pty, the
agent as a subprocess, and an operator client writing desired state."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import pytest

from shadow import document as shadowdoc

START = 128
CLEAN, SPOT, MAX, DOCK, DRIVE, DRIVE_DIRECT, SONG, PLAY, SCHEDULE, SAFE = (
    135,
    134,
    136,
    143,
    137,
    145,
    140,
    141,
    167,
    131,
)


def no_command_delta(op: Any) -> bool:
    state = op.get()
    d = shadowdoc.delta(state.get("desired"), state.get("reported"))
    return d is None or "command" not in d


@pytest.mark.slow
def test_commands_settings_and_systemd_notify(rig: dict[str, Any]) -> None:
    """The happy path end to end: READY and watchdog, commands, settings, status, a graceful stop, no traceback."""
    op, sim, agent, notify = rig["operator"], rig["sim"], rig["agent"], rig["notify"]
    wait_until = rig["until"]
    agent.start()
    ready = wait_until(lambda: notify.has("READY"), 20, "READY=1 on the notify socket")
    assert notify.has("STATUS")[0][1]["STATUS"].startswith(("waiting for", "starting"))
    assert ready[0][1]["READY"] == "1"
    wait_until(lambda: len(notify.has("WATCHDOG")) >= 2, 5, "watchdog pings")
    assert any(p.get("state") == "online" for p in op.presence) or wait_until(
        lambda: any(p.get("state") == "online" for p in op.presence), 5, "online presence"
    )
    rep = op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 15, "first report")
    assert rep["oi_mode"] in ("passive", "safe") and rep["versions"]["agent"]

    # a mission: OI bytes reach the simulator, the answer comes back in reported, and nothing lingers
    op.command({"id": "m1", "action": "clean"})
    assert op.wait_command("m1")["status"] == "done"
    assert sim.opcodes().count(CLEAN) == 1
    rep = op.wait_reported(lambda r: r.get("mission") == "cleaning", 5, "mission cleaning")
    assert no_command_delta(op)

    # an invalid request is rejected visibly, with the reason, and does not loop
    op.command({"id": "bad-1", "action": "drive", "velocity_mm_s": 9000, "duration_ms": 200})
    cmd = op.wait_command("bad-1", ("rejected",))
    assert "maximum of 500" in cmd["reason"]
    op.update_desired({"schedule": {"mon": {"hour": 25, "minute": 0}}})
    rep = op.wait_reported(lambda r: "schedule" in (r.get("errors") or {}), 10, "schedule rejected")
    assert "schedule.mon.hour" in rep["errors"]["schedule"]
    time.sleep(1.5)  # several more documents arrive (our own reports): the rejections must not repeat
    counters = agent.status()["metrics"]["counters"]
    assert counters["desired_rejected"] == 1 and counters["commands_rejected"] == 1

    # fixing the setting applies it once (opcode 167) and clears the error
    op.update_desired({"schedule": {"mon": {"hour": 9, "minute": 30}, "fri": {"hour": 10, "minute": 36}}})
    op.wait_reported(
        lambda r: (
            r.get("schedule", {}).get("mon") == {"hour": 9, "minute": 30}
            and "schedule" not in (r.get("errors") or {})
        ),
        10,
        "schedule applied",
    )
    sched = [r for r in sim.records() if r["opcode"] == SCHEDULE]
    assert len(sched) == 1

    # bounded manual driving: Safe, Drive, then the dead-man stop after duration_ms
    op.command({"id": "d1", "action": "drive", "velocity_mm_s": 100, "duration_ms": 300})
    op.wait_command("d1", ("done",), timeout=10)
    codes = sim.opcodes()
    assert codes.count(DRIVE) == 1
    i = codes.index(DRIVE)
    assert SAFE in codes[:i] and DRIVE_DIRECT in codes[i:]

    op.command({"id": "l1", "action": "locate"})
    op.wait_command("l1")
    assert sim.opcodes().count(PLAY) == 1

    # agent settings through the named shadow `config`
    op.update_desired({"telemetry_s": 2, "log_level": "debug"}, shadow="config")
    op.wait_reported(
        lambda r: r.get("telemetry_s") == 2 and r.get("log_level") == "debug",
        10,
        "config applied",
        shadow="config",
    )

    # status: human and JSON
    import subprocess
    import sys

    exe = os.path.join(os.path.dirname(sys.executable), "roomba-agent")
    wait_until(lambda: agent.status()["metrics"]["counters"].get("commands_done", 0) >= 3, 5, "status file")
    out = subprocess.run(
        [exe, "status", "--config", str(rig["config"]), "--json"], capture_output=True, text=True, timeout=30
    )
    doc = json.loads(out.stdout)
    assert out.returncode == 0 and doc["ready"] and doc["metrics"]["counters"]["commands_done"] >= 3
    human = subprocess.run(
        [exe, "status", "--config", str(rig["config"])], capture_output=True, text=True, timeout=30
    )
    assert "running and connected" in human.stdout

    # graceful stop: STOPPING=1, a retained offline presence, exit 0
    agent.signal(signal.SIGTERM)
    assert agent.proc.wait(15) == 0
    assert notify.has("STOPPING")
    wait_until(lambda: op.presence and op.presence[-1].get("state") == "offline", 5, "offline presence")
    assert "agent stopped" in op.presence[-1].get("reason", "")
    assert agent.tracebacks() == []


@pytest.mark.slow
def test_refuses_unsafe_key(rig: dict[str, Any]) -> None:
    import subprocess
    import sys
    import tomllib

    cfg = tomllib.loads(rig["config"].read_text())
    key = cfg["connection"]["key"]
    os.chmod(key, 0o644)
    try:
        exe = os.path.join(os.path.dirname(sys.executable), "roomba-agent")
        out = subprocess.run(
            [exe, "run", "--config", str(rig["config"])], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 78
        assert "chmod 600" in out.stderr and "doctor" in out.stderr
        doc = subprocess.run(
            [exe, "doctor", "--config", str(rig["config"]), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        checks = {c["name"]: c for c in json.loads(doc.stdout)["checks"]}
        assert doc.returncode == 1
        assert checks["file modes"]["status"] == "failed" and "chmod 600" in checks["file modes"]["fix"]
        assert checks["certificates"]["status"] == "skipped"
        assert checks["clock"]["status"] == "passed"
    finally:
        os.chmod(key, 0o600)


def delivered_in_order(events: list[dict[str, Any]]) -> list[int]:
    """First arrival of each event id; duplicates (at-least-once) are recognised by event_id."""
    seen: dict[str, int] = {}
    for e in events:
        seen.setdefault(e["event_id"], e["seq"])
    return list(seen.values())


@pytest.mark.slow
def test_survives_broker_kill_serial_unplug_and_agent_sigkill(rig: dict[str, Any]) -> None:
    """Each fault is survived, nothing runs twice, no event is lost, and no run logs a traceback."""
    op, sim, agent, cloud = rig["operator"], rig["sim"], rig["agent"], rig["cloud"]
    wait_until = rig["until"]
    agent.start()
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 20, "first report")
    op.command({"id": "f1", "action": "clean"})
    op.wait_command("f1")

    # 1. serial link cut and restored: a command during the cut fails visibly and is never retried
    sim.ctl({"op": "unplug", "seconds": 3})
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "down", 10, "link down reported")
    op.command({"id": "f2", "action": "dock"})
    assert "serial link" in op.wait_command("f2", ("failed",))["reason"]
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 15, "link restored")

    # 2. broker killed (SIGKILL) while events happen; the supervisor is held so the outage lasts
    supervisor = cloud.run_info()["pid"]
    os.kill(supervisor, signal.SIGSTOP)
    try:
        os.kill(cloud.child_pid("mosquitto"), signal.SIGKILL)
        wait_until(
            lambda: not agent.status().get("mqtt", {}).get("connected", True), 15, "agent sees the outage"
        )
        sim.ctl({"op": "dock"})
        sim.ctl({"op": "battery", "percent": 5})
        wait_until(
            lambda: agent.status()["metrics"]["gauges"].get("outbox_depth", 0) >= 2,
            15,
            "events queued in the outbox while offline",
        )
        queued = agent.status()["metrics"]["gauges"]["outbox_depth"]
        # let the operator reconnect first (it plays the rules engine and must not miss the backlog)
        agent.signal(signal.SIGSTOP)
        connects = op.connects
    finally:
        os.kill(supervisor, signal.SIGCONT)
    try:
        wait_until(lambda: op.connects > connects and op.subscribed.is_set(), 30, "operator reconnected")
        op.command({"id": "f3", "action": "spot"})  # written while the agent is frozen
    finally:
        agent.signal(signal.SIGCONT)
    op.wait_command("f3", timeout=30)
    wait_until(lambda: agent.status()["metrics"]["gauges"].get("outbox_depth") == 0, 20, "outbox drained")
    assert len(op.events) >= queued

    # 3. agent SIGKILLed: the will says offline; a command written meanwhile runs once after the restart
    agent.kill()
    wait_until(
        lambda: any(
            p.get("state") == "offline" and p.get("reason") == "connection lost" for p in op.presence
        ),
        15,
        "will message",
    )
    op.command({"id": "f4", "action": "max"})
    agent.start()
    op.wait_command("f4", timeout=30)
    op.command({"id": "f4b", "action": "drive", "velocity_mm_s": 100, "duration_ms": 200})
    assert "dock" in op.wait_command("f4b", ("failed",))["reason"]  # on the dock Safe mode is refused
    sim.ctl({"op": "undock"})
    op.wait_reported(lambda r: r.get("docked") is False, 10, "undocked")
    sim.ctl({"op": "stuck", "on": True})
    op.command({"id": "f5", "action": "drive", "velocity_mm_s": 200, "duration_ms": 1500})
    op.wait_command("f5", timeout=20)
    wait_until(lambda: any(e["type"] == "stuck" for e in op.events), 15, "stuck event")

    # converged: reported answers the last command, no command delta left, nothing ran twice
    time.sleep(1.0)
    assert no_command_delta(op)
    codes = sim.opcodes()
    assert (
        codes.count(CLEAN),
        codes.count(DOCK),
        codes.count(SPOT),
        codes.count(MAX),
        codes.count(DRIVE),
    ) == (1, 0, 1, 1, 1)
    status = agent.status()
    assert status["metrics"]["counters"].get("commands_duplicate", 0) >= 0
    wait_until(lambda: agent.status()["metrics"]["gauges"].get("outbox_depth") == 0, 10, "outbox empty")
    # every event arrived, in order, gap-free (duplicates identifiable by event id)
    order = delivered_in_order(op.events)
    assert order == sorted(order) and order == list(range(1, len(order) + 1)), order
    kinds = [e["type"] for e in op.events]
    for kind in ("mission_started", "error", "serial_restored", "dock_reached", "battery_low", "stuck"):
        assert kind in kinds, (kind, kinds)
    assert agent.stop() == 0
    assert agent.tracebacks() == []


@pytest.mark.slow
def test_drive_interrupted_by_agent_kill_is_stopped_on_restart(rig: dict[str, Any]) -> None:
    """OI Drive keeps the wheels turning until told otherwise: a killed agent's dead-man is the restart."""
    op, sim, agent = rig["operator"], rig["sim"], rig["agent"]
    wait_until = rig["until"]
    if sim.ctl({"op": "state"})["docked"]:
        sim.ctl({"op": "undock"})
    agent.start()
    op.wait_reported(
        lambda r: r.get("docked") is False and r.get("link", {}).get("serial") == "up",
        20,
        "undocked robot reported",
    )
    op.command({"id": "k1", "action": "drive", "velocity_mm_s": 150, "duration_ms": 5000})
    op.wait_command("k1", ("accepted",))
    wait_until(lambda: sim.ctl({"op": "state"})["wheels_mm_s"] != [0.0, 0.0], 5, "wheels turning")
    agent.kill()
    killed_at = time.time()
    assert sim.ctl({"op": "state"})["wheels_mm_s"] != [0.0, 0.0]  # nobody stops them: the agent is dead
    agent.start()
    wait_until(lambda: sim.ctl({"op": "state"})["wheels_mm_s"] == [0.0, 0.0], 15, "wheels stopped")
    assert time.time() - killed_at < 5.0  # before the 5 s drive would have ended anyway
    after = [r["opcode"] for r in sim.records() if r["t"] > killed_at]
    assert DRIVE_DIRECT in after or START in after, after  # stopped by the restarted agent
    cmd = op.wait_command("k1", ("failed",))
    assert "not retried" in cmd["reason"]
    assert sim.opcodes().count(DRIVE) == 1
    assert agent.stop() == 0
    assert agent.tracebacks() == []
