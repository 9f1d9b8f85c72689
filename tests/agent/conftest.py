"""Real peers for the agent's end-to-end tests: the local cloud, the simulator on a pty, the agent as a
subprocess, and an operator MQTT client (paho, mutual TLS) that plays the fleet side."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from base.testing import tracebacks, wait_until
from localcloud.testing import PahoOperator

BIN = Path(sys.executable).parent


class Sim:
    def __init__(self, tmp: Path, *extra: str) -> None:
        self.link = tmp / "robot.tty"
        self.control = tmp / "robot.ctl"
        self.record = tmp / "record.jsonl"
        with open(tmp / "sim.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "roomba-sim"),
                    "robot",
                    "--link",
                    str(self.link),
                    "--control",
                    str(self.control),
                    "--record",
                    str(self.record),
                    *extra,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        wait_until(
            lambda: self.link.exists() and self.control.exists(), 20, "simulator pty and control socket"
        )

    def ctl(self, request: dict[str, Any]) -> dict[str, Any]:
        from hal.sim.server import send_control

        return send_control(self.control, request)

    def opcodes(self) -> list[int]:
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text().splitlines():
            if line.strip():
                out.append(int(json.loads(line)["opcode"]))
        return out

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, tmp: Path) -> None:
        self.path = str(tmp / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.sock.settimeout(0.2)
        self.thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096).decode()
            except (TimeoutError, OSError):
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def has(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [m for m in self.messages if key in m[1]]

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


class AgentProc:
    def __init__(self, config: Path, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.tmp = tmp
        self.env = {
            **os.environ,
            "ROOMBA_AGENT_RECONNECT_MAX_MS": "1500",
            "ROOMBA_LOG_FORMAT": "json",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> AgentProc:
        self.starts += 1
        with open(self.tmp / f"agent-{self.starts}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "roomba-agent"), "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=self.env,
                start_new_session=True,
            )
        return self

    def status(self) -> dict[str, Any]:
        import tomllib

        state_dir = tomllib.loads(self.config.read_text())["state_dir"]
        try:
            return dict(json.loads((Path(state_dir) / "status.json").read_text()))
        except (OSError, ValueError):
            return {}

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp.glob("agent-*.log")))

    def tracebacks(self) -> list[str]:
        """Every traceback in every run's log (a fault must be handled, never escape as a traceback)."""
        return [line for p in sorted(self.tmp.glob("agent-*.log")) for line in tracebacks(p.read_text())]


def agent_config(cloud: Any, thing: str, serial: Path, **intervals: float) -> Path:
    path = Path(cloud.add_robot(thing, str(serial)))
    ivals = {"status_s": 0.5, "report_min_s": 0.2, "heartbeat_s": 30, **intervals}
    path.write_text(path.read_text() + "\n[intervals]\n" + "".join(f"{k} = {v}\n" for k, v in ivals.items()))
    return path


@pytest.fixture(scope="module")
def local_cloud() -> Iterator[Any]:
    from localcloud.testing import LocalCloud

    with LocalCloud.start() as cloud:
        yield cloud


@pytest.fixture
def rig(local_cloud: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """One robot: simulator + agent config + operator; the agent is started by the test."""
    thing = "e2e-" + request.node.name.split("[")[0].removeprefix("test_")[:40].replace("_", "-")
    sim = Sim(tmp_path)
    config = agent_config(local_cloud, thing, sim.link)
    operator = PahoOperator(local_cloud, thing)
    notify = NotifySocket(tmp_path)
    agent = AgentProc(config, tmp_path, env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    try:
        yield {
            "cloud": local_cloud,
            "thing": thing,
            "sim": sim,
            "config": config,
            "operator": operator,
            "agent": agent,
            "notify": notify,
            "tmp": tmp_path,
            "until": wait_until,
        }
    finally:
        agent.stop()
        operator.close()
        sim.stop()
        notify.close()
