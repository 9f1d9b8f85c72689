"""Reconnects the agent owns: the pure schedule, and a live agent whose broker dies (the real local cloud,
Mosquitto killed while its supervisor is held) logging every failed attempt with its next delay, and
``roomba-agent status`` saying "reconnecting" (exit 1) until the broker is back (exit 0)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

from agent.reconnect import ReconnectSchedule
from base.testing import wait_until

EXE = os.path.join(os.path.dirname(sys.executable), "roomba-agent")


def test_schedule_ceilings_cap_and_reset() -> None:
    """Full jitter under ceilings 1, 2, 4, ... capped at 60 s; only a connection that stayed up 30 s resets
    the exponent; a refusal retrying cannot fix waits 60 s and up to 300 s more."""
    top = ReconnectSchedule(rand=lambda: 1.0)
    assert [top.failed() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert top.failures == 8
    top.connected(100.0)
    assert top.failures == 0
    assert top.lost(110.0) == 60  # up for 10 s only: no reset, the broker may be kicking us out
    top.connected(200.0)
    assert top.lost(230.0) == 1  # up for 30 s: a fresh outage
    assert ReconnectSchedule(rand=lambda: 0.5).failed(fatal=True) == 60 + 150
    low = ReconnectSchedule(rand=lambda: 0.25)
    assert [low.failed() for _ in range(3)] == [0.25, 0.5, 1.0]


def status(config: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [EXE, "status", "--config", str(config), *args], capture_output=True, text=True, timeout=30
    )


def log_lines(agent: Any, event: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(agent.tmp.glob("agent-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("event") == event:
                out.append(doc)
    return out


@pytest.mark.slow
def test_status_and_logs_through_a_broker_outage(rig: dict[str, Any]) -> None:
    op, agent, cloud, config = rig["operator"], rig["agent"], rig["cloud"], rig["config"]
    agent.start()
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 20, "first report")
    wait_until(lambda: status(config).returncode == 0, 10, "status: running and connected")

    supervisor = cloud.run_info()["pid"]
    os.kill(supervisor, signal.SIGSTOP)  # held, so the broker stays down until we say
    try:
        os.kill(cloud.child_pid("mosquitto"), signal.SIGKILL)
        wait_until(
            lambda: (agent.status().get("mqtt", {}).get("reconnect") or {}).get("attempt", 0) >= 2,
            30,
            "two failed reconnect attempts in the status file",
        )
        out = status(config)
        assert out.returncode == 1, out.stdout + out.stderr
        verdict = out.stdout.splitlines()[0]
        assert "running, reconnecting (attempt " in verdict, verdict
        assert ("next in " in verdict or "connecting now" in verdict) and "refused" in verdict, verdict
        doc = json.loads(status(config, "--json").stdout)
        reconnect = doc["mqtt"]["reconnect"]
        assert doc["mqtt"]["connected"] is False and reconnect["attempt"] >= 2
        assert reconnect["next_retry_at"] and "connection_refused" in reconnect["last_error"]
        # every failed attempt is logged with its reason, its number and the next delay
        failed = log_lines(agent, "mqtt.connect.failed")
        assert [f["attempt"] for f in failed[:2]] == [1, 2]
        assert all("connection_refused" in f["reason"] and 0 <= f["retry_in_s"] <= 1.5 for f in failed)
        assert log_lines(agent, "mqtt.disconnected")[0]["retry_in_s"] <= 1.0
    finally:
        os.kill(supervisor, signal.SIGCONT)
    wait_until(lambda: agent.status().get("mqtt", {}).get("connected"), 30, "reconnected")
    out = status(config)
    assert out.returncode == 0 and "running and connected" in out.stdout, out.stdout
    back = log_lines(agent, "mqtt.connected")[-1]
    assert back["failed_attempts"] >= 2 and back["down_s"] > 0
    assert agent.stop() == 0
    assert agent.tracebacks() == []


def test_parsers_have_version_and_exit_codes() -> None:
    from agent import daemon, status

    for parser in (status.build_parser(), daemon.build_parser()):
        text = parser.format_help()
        assert "--version" in text and "exit codes:" in text
    assert "MQTT (re)connecting" in status.build_parser().format_help()
