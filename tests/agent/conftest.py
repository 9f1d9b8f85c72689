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
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

BIN = Path(sys.executable).parent


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Operator:
    """The fleet side: writes desired, reads shadows, records events and presence."""

    def __init__(self, cloud: Any, thing: str) -> None:
        ident = cloud.operator()
        self.thing = thing
        self.base = f"$aws/things/{thing}/shadow"
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        self.responses: dict[str, dict[str, Any]] = {}
        self.connects = 0
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"operator-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set(ca_certs=str(ident.ca), certfile=str(ident.cert), keyfile=str(ident.key))
        self.client.reconnect_delay_set(0.05, 0.2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", cloud.port)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 20, "operator subscription")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self.subscribed.clear()
        client.subscribe(
            [(f"{self.base}/#", 1), (f"roomba/{self.thing}/events", 1), (f"roomba/{self.thing}/presence", 1)]
        )
        with self.lock:
            self.connects += 1

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            if msg.topic.endswith("/events"):
                self.events.append(doc)
            elif msg.topic.endswith("/presence"):
                self.presence.append(doc)
            elif (
                isinstance(doc, dict)
                and str(doc.get("clientToken", "")).startswith("op-")
                and msg.topic.endswith(("/accepted", "/rejected"))
            ):
                self.responses[doc["clientToken"]] = {"topic": msg.topic, **doc}

    def prefix(self, shadow: str | None) -> str:
        return self.base if shadow is None else f"{self.base}/name/{shadow}"

    def update_desired(self, desired: dict[str, Any], shadow: str | None = None) -> None:
        token = f"op-{uuid.uuid4().hex[:10]}"
        body = {"state": {"desired": desired}, "clientToken": token}
        self.client.publish(f"{self.prefix(shadow)}/update", json.dumps(body), qos=1)
        wait_until(lambda: token in self.responses, 20, "desired update accepted")
        assert self.responses[token]["topic"].endswith("/accepted"), self.responses[token]

    def command(self, cmd: dict[str, Any]) -> None:
        """Replace desired.command the way the fleet must (docs/agent.md): old arguments nulled."""
        from agent.commands import desired_command_patch

        previous = (self.get().get("desired") or {}).get("command")
        self.update_desired({"command": desired_command_patch(previous, cmd)})

    def get(self, shadow: str | None = None, timeout: float = 30) -> dict[str, Any]:
        """Asked again every 2 s: after a broker restart the shadow service needs a moment to come back."""
        tokens: list[str] = []

        def answered() -> dict[str, Any] | None:
            for t in tokens:
                if t in self.responses:
                    return self.responses[t]
            if not tokens or time.monotonic() - sent[0] > 2:
                tokens.append(f"op-{uuid.uuid4().hex[:10]}")
                sent[0] = time.monotonic()
                self.client.publish(
                    f"{self.prefix(shadow)}/get", json.dumps({"clientToken": tokens[-1]}), qos=1
                )
            return None

        sent = [0.0]
        resp = wait_until(answered, timeout, "shadow get")
        state = resp.get("state") or {}
        return state if isinstance(state, dict) else {}

    def reported(self, shadow: str | None = None) -> dict[str, Any]:
        return self.get(shadow).get("reported") or {}

    def wait_reported(
        self, predicate: Callable[[dict[str, Any]], Any], timeout: float, what: str, shadow: str | None = None
    ) -> dict[str, Any]:
        box: dict[str, Any] = {}

        def check() -> bool:
            box["r"] = self.reported(shadow)
            return bool(predicate(box["r"]))

        try:
            wait_until(check, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last reported: {json.dumps(box.get('r'))[:1500]}") from None
        return box["r"]

    def wait_command(
        self, command_id: str, statuses: tuple[str, ...] = ("done",), timeout: float = 15
    ) -> dict:
        rep = self.wait_reported(
            lambda r: (
                (r.get("command") or {}).get("id") == command_id and r["command"].get("status") in statuses
            ),
            timeout,
            f"command {command_id}",
        )
        return dict(rep["command"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


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


def agent_config(cloud: Any, thing: str, serial: Path, **intervals: float) -> Path:
    path = Path(cloud.add_robot(thing, str(serial)))
    ivals = {"status_s": 0.5, "report_min_s": 0.2, "heartbeat_s": 30, **intervals}
    path.write_text(path.read_text() + "\n[intervals]\n" + "".join(f"{k} = {v}\n" for k, v in ivals.items()))
    return path


@pytest.fixture(scope="module")
def local_cloud() -> Iterator[Any]:
    from fleet.testing import LocalCloud

    with LocalCloud.start() as cloud:
        yield cloud


@pytest.fixture
def rig(local_cloud: Any, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """One robot: simulator + agent config + operator; the agent is started by the test."""
    thing = "e2e-" + request.node.name.split("[")[0].removeprefix("test_")[:40].replace("_", "-")
    sim = Sim(tmp_path)
    config = agent_config(local_cloud, thing, sim.link)
    operator = Operator(local_cloud, thing)
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
