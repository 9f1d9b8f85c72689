"""Watchdog pings follow real health: the health feature against a notify socket the test opens, with a
real HAL reader thread, a real robot worker and a fake MQTT connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from pathlib import Path

from agent import config as cfg
from agent.features.health import Health
from agent.metrics import Metrics
from agent.parts import AgentLog, RobotSide
from agent.pump import Pump
from agent.robot_link import RobotLink, Worker
from agent.sdnotify import Notifier
from agent.store import Ledger, open_db
from agent.sync import ShadowSync
from hal.robot import Robot


def make_config(tmp: Path) -> cfg.AgentConfig:
    config, problems = cfg.validate(
        {
            "thing_name": "wd-robot",
            "state_dir": str(tmp / "state"),
            "connection": {
                "endpoint": "127.0.0.1",
                "root_ca": "/r",
                "cert": "/c",
                "key": "/k",
                "local": True,
            },
            "robot": {"serial_port": "/dev/null"},
        }
    )
    assert config is not None, problems
    return config


class FakeMqtt:
    """An MQTT connection that is up and publishes nowhere."""

    def __init__(self, connected: bool = True) -> None:
        self.connected = connected

    def start(self) -> None:
        pass

    async def stop(self, goodbye: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        pass

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def subscribe(self, topics: Sequence[str], qos: int) -> list[asyncio.Future[object]]:
        return []

    def pending_operations(self) -> int:
        return 0

    def drop(self) -> None:
        self.connected = False

    def resume(self) -> None:
        self.connected = True


def make_health(tmp: Path, notifier: Notifier, robot: Robot, *, watchdog: bool = True) -> Health:
    config = make_config(tmp)
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    metrics, log, mqtt = Metrics(), AgentLog(config.thing_name), FakeMqtt()
    sync = ShadowSync(config.thing_name, Ledger(open_db(config.state_dir)), metrics)
    side = RobotSide(RobotLink(robot, lambda _snap: None), Worker())
    pump = Pump(sync, mqtt, metrics, log, asyncio.get_running_loop(), subscribe_qos=0)
    return Health(
        config=config,
        notifier=notifier,
        robot=side,
        mqtt=mqtt,
        sync=sync,
        pump=pump,
        metrics=metrics,
        log=log,
        watchdog=watchdog,
        started=0.0,
    )


def received(sock: socket.socket) -> list[dict[str, str]]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(4096).decode()
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.splitlines()))


def test_watchdog_pings_only_while_healthy(tmp_path: Path) -> None:
    """A connected client whose shadow requests all time out is wedged: no ping, STATUS says why."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
        robot = Robot(str(tmp_path / "no-such-port"), hold_mode=None)  # the reader keeps retrying: alive

        async def scenario() -> tuple[list[dict[str, str]], list[dict[str, str]], str]:
            health = make_health(tmp_path, notifier, robot)
            robot.start()
            health.start()
            await asyncio.sleep(0.35)
            healthy = received(sock)
            health.sync.get_timeouts = 3
            await asyncio.sleep(0.35)
            wedged = received(sock)
            why = health.healthy()[1]
            await health.stop()
            health.robot.worker.close()
            return healthy, wedged, why

        try:
            healthy, wedged, why = asyncio.run(scenario())
        finally:
            robot.close()
    assert sum("WATCHDOG" in m for m in healthy) >= 2
    assert not any("WATCHDOG" in m for m in wedged)
    assert any(m.get("STATUS", "").startswith("unhealthy") for m in wedged)
    assert "time out" in why


def test_dead_reader_thread_is_unhealthy(tmp_path: Path) -> None:
    robot = Robot(str(tmp_path / "no-such-port"), hold_mode=None)  # never started: no reader thread

    async def scenario() -> tuple[bool, str]:
        health = make_health(tmp_path, Notifier({}), robot)
        result = health.healthy()
        health.robot.worker.close()
        return result

    ok, why = asyncio.run(scenario())
    assert not ok and "HAL reader" in why


def test_dead_worker_thread_is_unhealthy(tmp_path: Path) -> None:
    robot = Robot(str(tmp_path / "no-such-port"), hold_mode=None)

    async def scenario() -> tuple[bool, str]:
        health = make_health(tmp_path, Notifier({}), robot)
        robot.start()
        health.robot.worker.close()
        return health.healthy()

    try:
        ok, why = asyncio.run(scenario())
    finally:
        robot.close()
    assert not ok and "worker" in why


def test_not_ready_while_the_serial_link_is_down_even_with_a_snapshot(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        robot = Robot(str(tmp_path / "no-such-port"), hold_mode=None)

        async def scenario() -> tuple[list[dict[str, str]], bool]:
            from agent.model import Snapshot

            health = make_health(tmp_path, Notifier({"NOTIFY_SOCKET": path}), robot, watchdog=False)
            health.check_ready()  # no snapshot yet, and the link is down
            health.robot.snapshot = Snapshot()
            health.check_ready()  # a snapshot, but the serial link itself is still down
            ready = health.ready
            health.robot.worker.close()
            return received(sock), ready

        messages, ready = asyncio.run(scenario())
    assert not ready
    # STATUS= goes out when the text changes, not on every check
    assert [m.get("STATUS") for m in messages] == ["waiting for the serial link to the robot"]
    assert not any("READY" in m for m in messages)
