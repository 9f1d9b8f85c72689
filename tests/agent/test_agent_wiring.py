"""The whole agent in one process, without a broker: :class:`agent.daemon.Agent` through its one start-up,
on the HAL's in-memory robot pair (``hal.testing.RobotPair``, stepped on the real clock) and a fake MQTT
connection whose "broker" is the local cloud's shadow engine (``shadow.engine``)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent import config as cfg
from agent.daemon import Agent, Hooks
from agent.mqtt import Connected, Disconnected, Message, MqttConnection, MqttEvent, MqttFactory, Stopped
from hal.sim.robot import CommandReceived
from hal.testing import RobotPair
from shadow.engine import ShadowEngine
from shadow.topics import events_topic, presence_topic, shadow_topic

THING = "wired-robot"


def make_config(tmp: Path) -> cfg.AgentConfig:
    config, problems = cfg.validate(
        {
            "thing_name": THING,
            "state_dir": str(tmp / "state"),
            "connection": {
                "endpoint": "127.0.0.1",
                "root_ca": "/r",
                "cert": "/c",
                "key": "/k",
                "local": True,
            },
            "robot": {"serial_port": "sim://" + THING},
            "intervals": {"report_min_s": 0.1, "status_s": 0.2},
        }
    )
    assert config is not None, problems
    Path(config.state_dir).mkdir(parents=True)
    return config


class FakeBroker:
    """An MQTT connection whose broker answers shadow requests with the shadow engine (PUBACKs at once)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_event: Callable[[MqttEvent], None]) -> None:
        self.loop = loop
        self.on_event = on_event
        self.engine = ShadowEngine(rate_per_thing=0)
        self.connected = False
        self.subscribed: set[str] = set()
        self.published: list[tuple[str, bytes, bool]] = []
        self.starts = 0

    def _post(self, event: MqttEvent) -> None:
        def deliver() -> None:
            if isinstance(event, Connected):
                self.connected = True
            elif isinstance(event, Disconnected | Stopped):
                self.connected = False
            self.on_event(event)

        self.loop.call_soon(deliver)

    def _answer(self, responses: list[tuple[str, bytes]]) -> None:
        for topic, payload in responses:
            if topic in self.subscribed:
                self._post(Message(topic, payload))

    def start(self) -> None:
        self.starts += 1
        self._post(Connected(session_present=False))

    async def stop(self, goodbye: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        if goodbye is not None and self.connected:
            self.published.append((goodbye[0], goodbye[1], True))
        self.connected = False
        self.on_event(Stopped())

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[object]:
        self.published.append((topic, payload, retain))
        self._answer(self.engine.handle(topic, payload, time.time()))
        fut: asyncio.Future[object] = self.loop.create_future()
        fut.set_result(None)
        return fut

    def subscribe(self, topics: Sequence[str], qos: int) -> list[asyncio.Future[object]]:
        self.subscribed.update(topics)
        fut: asyncio.Future[object] = self.loop.create_future()
        fut.set_result(None)
        return [fut]

    def pending_operations(self) -> int:
        return 0

    def drop(self) -> None:
        self._post(Disconnected("connection_reset", False))

    def resume(self) -> None:
        self.start()

    # the fleet side -------------------------------------------------------------------------------------
    def desire(self, desired: dict[str, Any]) -> None:
        body = json.dumps({"state": {"desired": desired}}).encode()
        self._answer(self.engine.handle(shadow_topic(THING, "update"), body, time.time()))

    def reported(self) -> dict[str, Any]:
        responses = self.engine.handle(shadow_topic(THING, "get"), b"{}", time.time())
        doc = json.loads(responses[0][1])
        return dict(doc.get("state", {}).get("reported", {}))

    def topics(self, topic: str) -> list[dict[str, Any]]:
        return [json.loads(p) for t, p, _ in self.published if t == topic]


def broker_factory(brokers: list[FakeBroker]) -> MqttFactory:
    """The ``Hooks.mqtt`` that builds a :class:`FakeBroker` and keeps it for the test."""

    def factory(
        _config: cfg.AgentConfig,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[MqttEvent], None],
        *,
        reconnect_max_ms: int,
    ) -> MqttConnection:
        brokers.append(FakeBroker(loop, on_event))
        return brokers[-1]

    return factory


async def until(what: str, predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def tick(pair: RobotPair, opcodes: Counter[str]) -> None:
    """The robot's side in real time: what a reader thread and a serial line would do."""
    while True:
        pair.step(time.monotonic())
        for event in pair.sim.drain_events():
            if isinstance(event, CommandReceived) and event.ignored is None:
                opcodes[event.name] += 1
        await asyncio.sleep(0.015)


def test_one_start_up_runs_a_command_survives_a_drop_and_stops_in_order(tmp_path: Path) -> None:
    """Every feature starts and the agent gets ready; a clean command reaches the robot once and is
    answered, with its event; a dropped connection comes back; a stop says goodbye and writes a final
    status file."""
    config = make_config(tmp_path)
    brokers: list[FakeBroker] = []
    factory = broker_factory(brokers)

    async def scenario() -> tuple[int, list[str], list[str]]:
        pair = RobotPair(seed=1, pace=False, start=time.monotonic())
        opcodes: Counter[str] = Counter()
        ticker = asyncio.get_running_loop().create_task(tick(pair, opcodes))
        agent = Agent(config, Hooks(robot=lambda: pair.robot, mqtt=factory))
        broker = brokers[0]
        assert agent.features.names == [
            "events",
            "commands",
            "aws-commands",
            "settings",
            "health",
            "reporting",
            "update",
            "jobs",
        ]
        running = asyncio.get_running_loop().create_task(agent.run())
        await until("ready", lambda: agent.ready)
        started = agent.features.started
        await until("first report", lambda: broker.reported().get("link", {}).get("serial") == "up")

        broker.desire({"command": {"id": "w1", "action": "clean"}})
        await until("w1 done", lambda: broker.reported().get("command", {}).get("status") == "done")
        assert opcodes["Clean"] == 1
        await until("mission event", lambda: broker.topics(events_topic(THING)))
        assert broker.topics(events_topic(THING))[0]["type"] == "mission_started"

        broker.drop()
        await until("disconnected", lambda: not broker.connected)
        broker.resume()
        await until("reconnected", lambda: agent.metrics.counters["connections"] == 2)

        agent.stopping.set()
        code = await running
        ticker.cancel()
        presence = [p["state"] for p in broker.topics(presence_topic(THING))]
        return code, started, presence

    code, started, presence = asyncio.run(scenario())
    assert code == 0
    assert started == [
        "events",
        "commands",
        "aws-commands",
        "settings",
        "health",
        "reporting",
        "update",
        "jobs",
    ]
    assert presence == ["online", "online", "offline"]
    status = json.loads((Path(config.state_dir) / "status.json").read_text())
    assert status["last_command"]["id"] == "w1" and status["mqtt"]["connected"] is False


def test_a_feature_that_cannot_start_stops_the_agent_before_mqtt_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The status file cannot be written (its path is a directory): reporting fails to start, the
    features started before it stop again, MQTT never starts, and the exit code is 1."""
    config = make_config(tmp_path)
    (Path(config.state_dir) / "status.json").mkdir()
    brokers: list[FakeBroker] = []
    factory = broker_factory(brokers)

    async def scenario() -> tuple[int, list[str]]:
        pair = RobotPair(seed=1, pace=False, start=time.monotonic())
        agent = Agent(config, Hooks(robot=lambda: pair.robot, mqtt=factory))
        code = await agent.run()
        return code, agent.features.started

    code, started = asyncio.run(scenario())
    assert code == 1 and started == []
    assert brokers[0].starts == 0
    assert "feature 'reporting' failed to start" in capsys.readouterr().err


def test_reconnect_state_reaches_the_log_and_the_status_file(tmp_path: Path) -> None:
    """What the MQTT connection says about its schedule (a lost connection, failed attempts, the next
    delay) is logged once per attempt and written to status.json at once; `roomba-agent status` then says
    "reconnecting" with exit 1 although `ready` stays latched, and "connected" (exit 0) once it is back."""
    from structlog.testing import capture_logs

    from agent import status
    from agent.mqtt import ConnectFailed

    config = make_config(tmp_path)
    brokers: list[FakeBroker] = []
    path = Path(config.state_dir) / "status.json"

    def verdict() -> tuple[str, int]:
        return status.assess(json.loads(path.read_text()), time.time())

    async def scenario() -> list[tuple[str, int]]:
        pair = RobotPair(seed=1, pace=False, start=time.monotonic())
        ticker = asyncio.get_running_loop().create_task(tick(pair, Counter()))
        agent = Agent(config, Hooks(robot=lambda: pair.robot, mqtt=broker_factory(brokers)))
        running = asyncio.get_running_loop().create_task(agent.run())
        await until("ready", lambda: agent.ready)
        await until("status file", lambda: path.exists() and verdict()[1] == 0)
        seen = [verdict()]
        broker = brokers[0]
        broker.connected = False
        agent.on_mqtt_event(Disconnected("aws_io_socket_closed", False, retry_in_s=0.4))
        agent.on_mqtt_event(
            ConnectFailed("aws_io_socket_connection_refused", False, attempt=1, retry_in_s=0.8)
        )
        agent.on_mqtt_event(
            ConnectFailed("aws_io_socket_connection_refused", False, attempt=2, retry_in_s=30)
        )
        seen.append(verdict())
        broker.start()
        await until("reconnected", lambda: agent.metrics.counters["connections"] == 2)
        seen.append(verdict())
        agent.stopping.set()
        await running
        ticker.cancel()
        return seen

    with capture_logs() as logs:
        seen = asyncio.run(scenario())
    ok, down, back = seen
    assert ok == ("running and connected", 0) and back == ("running and connected", 0)
    assert down[1] == 1 and down[0].startswith(
        ("running, reconnecting (attempt 2, next in 29.", "running, reconnecting (attempt 2, next in 30.0")
    )
    assert down[0].endswith("s): aws_io_socket_connection_refused")
    failed = [e for e in logs if e["event"] == "mqtt.connect.failed"]
    assert [(e["attempt"], e["retry_in_s"], e["log_level"]) for e in failed] == [
        (1, 0.8, "warning"),
        (2, 30, "info"),
    ]
    lost = [e for e in logs if e["event"] == "mqtt.disconnected"]
    assert lost[0]["retry_in_s"] == 0.4
    connected = [e for e in logs if e["event"] == "mqtt.connected"]
    assert connected[-1]["failed_attempts"] == 2
