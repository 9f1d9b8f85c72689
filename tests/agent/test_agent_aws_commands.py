"""The agent's ``aws-commands`` feature in one process: the whole :class:`agent.daemon.Agent` on the HAL's
in-memory robot pair, with a fake MQTT connection whose "broker" is the local cloud's Commands engine
(``localcloud.commands.engine``) and shadow engine, so every request, update and answer is AWS's."""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from agent import config as cfg
from agent.daemon import Agent, Hooks
from agent.mqtt import Connected, Disconnected, Message, MqttConnection, MqttEvent, MqttFactory, Stopped
from agent.store import Ledger, open_db
from hal.sim.robot import CommandReceived
from hal.testing import RobotPair
from localcloud.commands.engine import CommandsEngine
from shadow.engine import ShadowEngine

THING = "cmd-robot"
ARN = "arn:aws:iot:us-east-1:000000000000"
TARGET = f"{ARN}:thing/{THING}"


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
    Path(config.state_dir).mkdir(parents=True, exist_ok=True)
    return config


def matches(pattern: str, topic: str) -> bool:
    p, t = pattern.split("/"), topic.split("/")
    if p and p[-1] == "#":
        head = p[:-1]
        return len(t) >= len(head) and all(a in ("+", b) for a, b in zip(head, t[: len(head)], strict=True))
    return len(p) == len(t) and all(a in ("+", b) for a, b in zip(p, t, strict=True))


class CommandsBroker:
    """An MQTT connection whose broker is the Commands engine (and the shadow engine for the rest).

    ``hold`` keeps the engine's answers to the robot's updates until :meth:`release`, to see that the
    robot waits for one before sending the next."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_event: Callable[[MqttEvent], None]) -> None:
        self.loop = loop
        self.on_event = on_event
        self.shadow = ShadowEngine(rate_per_thing=0)
        ids = (f"exec-{n}" for n in itertools.count(1))
        self.engine = CommandsEngine(things=lambda name: name == THING, new_id=lambda: next(ids))
        self.connected = False
        self.subscribed: set[str] = set()
        self.published: list[tuple[str, bytes]] = []
        self.hold = False
        self.held: list[tuple[str, bytes]] = []
        self.conflict_once: set[str] = set()  # update statuses answered DataConflict the first time

    def _post(self, event: MqttEvent) -> None:
        def deliver() -> None:
            if isinstance(event, Connected):
                self.connected = True
            elif isinstance(event, Disconnected | Stopped):
                self.connected = False
            self.on_event(event)

        self.loop.call_soon(deliver)

    def deliver(self, outputs: Sequence[tuple[str, bytes]]) -> None:
        for topic, payload in outputs:
            if any(matches(f, topic) for f in self.subscribed):
                self._post(Message(topic, payload))

    def release(self) -> None:
        held, self.held = self.held, []
        self.deliver(held)

    def start(self) -> None:
        self._post(Connected(session_present=False))

    async def stop(self, goodbye: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        self.connected = False
        self.on_event(Stopped())

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[object]:
        self.published.append((topic, payload))
        status = json.loads(payload).get("status") if topic.endswith("/response/json") else None
        if status in self.conflict_once:
            self.conflict_once.discard(status)
            body = {"error": "DataConflict", "errorMessage": "modified concurrently", "executionId": "x"}
            self.deliver([(topic.removesuffix("/json") + "/rejected/json", json.dumps(body).encode())])
        elif topic.startswith("$aws/commands/"):
            answers = self.engine.handle(topic, payload, time.time())
            if self.hold:
                self.held += answers
            else:
                self.deliver(answers)
        else:
            self.deliver(self.shadow.handle(topic, payload, time.time()))
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

    # the fleet side ---------------------------------------------------------------------------------
    def create(self, command_id: str, doc: Any) -> None:
        content = base64.b64encode(json.dumps(doc).encode()).decode()
        params = {"commandId": command_id, "payload": {"content": content, "contentType": "application/json"}}
        self.engine.call("CreateCommand", params, time.time())

    def start_execution(self, command_id: str, timeout_s: int = 60) -> tuple[str, list[tuple[str, bytes]]]:
        params = {
            "targetArn": TARGET,
            "commandArn": f"{ARN}:command/{command_id}",
            "executionTimeoutSeconds": timeout_s,
        }
        result, outputs = self.engine.call("StartCommandExecution", params, time.time())
        self.deliver(outputs)
        return str(result["executionId"]), outputs

    def execution(self, execution_id: str) -> dict[str, Any]:
        params = {"executionId": execution_id, "targetArn": TARGET}
        return self.engine.call("GetCommandExecution", params, time.time())[0]

    def updates(self, execution_id: str) -> list[dict[str, Any]]:
        topic = f"$aws/commands/things/{THING}/executions/{execution_id}/response/json"
        return [json.loads(p) for t, p in self.published if t == topic]


def factory(brokers: list[CommandsBroker]) -> MqttFactory:
    def build(
        config: cfg.AgentConfig,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[MqttEvent], None],
        *,
        reconnect_max_ms: int,
    ) -> MqttConnection:
        brokers.append(CommandsBroker(loop, on_event))
        return brokers[-1]

    return build


async def until(what: str, predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def tick(pair: RobotPair, opcodes: Counter[str]) -> None:
    while True:
        pair.step(time.monotonic())
        for event in pair.sim.drain_events():
            if isinstance(event, CommandReceived) and event.ignored is None:
                opcodes[event.name] += 1
        await asyncio.sleep(0.015)


Scenario = Callable[[Agent, CommandsBroker, Counter[str]], Awaitable[Any]]


def run(tmp: Path, scenario: Scenario) -> Any:
    config = make_config(tmp)
    brokers: list[CommandsBroker] = []

    async def main() -> Any:
        pair = RobotPair(seed=1, pace=False, start=time.monotonic())
        opcodes: Counter[str] = Counter()
        ticker = asyncio.get_running_loop().create_task(tick(pair, opcodes))
        agent = Agent(config, Hooks(robot=lambda: pair.robot, mqtt=factory(brokers)))
        running = asyncio.get_running_loop().create_task(agent.run())
        await until("ready", lambda: agent.ready)
        broker = brokers[0]
        await until("subscribed", lambda: any("/request/" in t for t in broker.subscribed))
        try:
            return await scenario(agent, broker, opcodes)
        finally:
            agent.stopping.set()
            await running
            ticker.cancel()

    return asyncio.run(main())


def test_a_command_execution_runs_once_and_ends_succeeded(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        broker.create("clean", {"action": "clean"})
        execution_id, _ = broker.start_execution("clean")
        await until("succeeded", lambda: broker.execution(execution_id)["status"] == "SUCCEEDED")
        await until("the robot got Clean", lambda: opcodes["Clean"] >= 1)
        await asyncio.sleep(0.2)
        assert opcodes["Clean"] == 1
        assert [u["status"] for u in broker.updates(execution_id)] == ["IN_PROGRESS", "SUCCEEDED"]
        assert agent.ledger.get(execution_id) is not None
        assert agent.features.get("aws-commands") is not None
        events = [t for t, _ in broker.published if t.startswith("$aws/events/")]
        assert events == []  # events are the cloud's, never the robot's
        await until("forgotten", lambda: not agent.remote_commands.open)

    run(tmp_path, scenario)


def test_a_request_delivered_twice_reaches_the_robot_once(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        broker.create("dock", {"action": "dock"})
        execution_id, outputs = broker.start_execution("dock")
        await until("succeeded", lambda: broker.execution(execution_id)["status"] == "SUCCEEDED")
        await until("forgotten", lambda: not agent.remote_commands.open)
        broker.deliver(outputs)  # the broker redelivers the request (QoS 1)
        await until("answered again", lambda: len(broker.updates(execution_id)) == 3)
        await until("the robot got Seek Dock", lambda: opcodes["Seek Dock"] >= 1)
        await asyncio.sleep(0.3)
        assert opcodes["Seek Dock"] == 1
        assert broker.updates(execution_id)[-1]["status"] == "SUCCEEDED"
        assert broker.execution(execution_id)["status"] == "SUCCEEDED"
        assert agent.metrics.counters["aws_commands_duplicate"] == 1

    run(tmp_path, scenario)


def test_an_invalid_command_is_rejected_with_the_validation_reason(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        broker.create("fly", {"action": "fly"})
        execution_id, _ = broker.start_execution("fly")
        await until("rejected", lambda: broker.execution(execution_id)["status"] == "REJECTED")
        reason = broker.execution(execution_id)["statusReason"]
        assert reason["reasonCode"] == "INVALID_COMMAND"
        assert "action" in reason["reasonDescription"]
        broker.create(
            "drive-bad", {"action": "drive", "velocity_mm_s": 9000, "radius_mm": 0, "duration_ms": 100}
        )
        second, _ = broker.start_execution("drive-bad")
        await until("rejected too", lambda: broker.execution(second)["status"] == "REJECTED")
        assert "velocity_mm_s" in broker.execution(second)["statusReason"]["reasonDescription"]
        broker.create("text", "clean")
        third, _ = broker.start_execution("text")
        await until("not an object", lambda: broker.execution(third)["status"] == "REJECTED")
        actions = ("Clean", "Spot", "Max", "Seek Dock", "Drive", "Song", "Play")
        assert [k for k in opcodes if k in actions] == []

    run(tmp_path, scenario)


def rejected(broker: CommandsBroker, execution_id: str) -> bool:
    return bool(broker.execution(execution_id)["status"] == "REJECTED")


def test_a_payload_that_is_not_json_is_rejected_not_left_to_time_out(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        for command_id, content_type in (("cbor", "application/cbor"), ("text", "text/plain")):
            content = base64.b64encode(b"\xa1fascii").decode()
            params = {"commandId": command_id, "payload": {"content": content, "contentType": content_type}}
            broker.engine.call("CreateCommand", params, time.time())
            execution_id, outputs = broker.start_execution(command_id)
            assert outputs[0][0].split("/")[6:] in (["request", "cbor"], ["request"])
            await until("rejected", functools.partial(rejected, broker, execution_id))
            reason = broker.execution(execution_id)["statusReason"]
            assert reason["reasonCode"] == "INVALID_COMMAND"
            assert "JSON" in reason["reasonDescription"]

    run(tmp_path, scenario)


def test_a_drive_is_in_progress_until_its_duration_is_over(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        doc = {"action": "drive", "velocity_mm_s": 100, "radius_mm": 0, "duration_ms": 400}
        broker.create("nudge", doc)
        execution_id, _ = broker.start_execution("nudge")
        await until("succeeded", lambda: broker.execution(execution_id)["status"] == "SUCCEEDED")
        assert [u["status"] for u in broker.updates(execution_id)] == ["IN_PROGRESS", "SUCCEEDED"]
        await until("the dead-man stop", lambda: opcodes["Drive Direct"] >= 1)
        assert opcodes["Drive"] == 1

    run(tmp_path, scenario)


def test_updates_wait_for_the_service_answer(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        broker.create("clean", {"action": "clean"})
        broker.hold = True
        execution_id, _ = broker.start_execution("clean")
        await until("clean ran", lambda: opcodes["Clean"] == 1)
        await asyncio.sleep(0.2)
        assert [u["status"] for u in broker.updates(execution_id)] == ["IN_PROGRESS"]
        broker.hold = False
        broker.release()
        await until("succeeded", lambda: broker.execution(execution_id)["status"] == "SUCCEEDED")
        assert [u["status"] for u in broker.updates(execution_id)] == ["IN_PROGRESS", "SUCCEEDED"]

    run(tmp_path, scenario)


def test_an_update_answered_data_conflict_is_sent_again(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        broker.create("clean", {"action": "clean"})
        broker.conflict_once.add("SUCCEEDED")
        execution_id, _ = broker.start_execution("clean")
        await until("succeeded", lambda: broker.execution(execution_id)["status"] == "SUCCEEDED")
        assert [u["status"] for u in broker.updates(execution_id)] == [
            "IN_PROGRESS",
            "SUCCEEDED",
            "SUCCEEDED",
        ]
        assert agent.metrics.counters["aws_command_updates_rejected"] == 1
        assert opcodes["Clean"] == 1

    run(tmp_path, scenario)


def test_an_update_in_flight_is_sent_again_after_a_reconnect(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        broker.create("locate", {"action": "locate"})
        broker.hold = True
        execution_id, _ = broker.start_execution("locate")
        await until("in progress sent", lambda: broker.updates(execution_id))
        broker.held.clear()  # the answer is lost with the connection
        broker.hold = False
        broker.drop()
        await until("disconnected", lambda: not broker.connected)
        broker.resume()
        await until("succeeded", lambda: broker.execution(execution_id)["status"] == "SUCCEEDED")
        await until("the locate song", lambda: opcodes["Song"] + opcodes["Play"] >= 1)
        assert [u["status"] for u in broker.updates(execution_id)][-1] == "SUCCEEDED"

    run(tmp_path, scenario)


def test_a_command_a_restart_interrupted_is_reported_failed_not_rerun(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    db = open_db(config.state_dir)
    ledger = Ledger(db)
    ledger.begin("exec-1", "clean", {"id": "exec-1", "action": "clean", "via": "aws-commands"})
    ledger.close()
    db.close()

    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> None:
        broker.create("clean", {"action": "clean"})
        execution_id, _ = broker.start_execution("clean")  # the same id, as after the cloud's restart
        assert execution_id == "exec-1"
        await until("failed", lambda: broker.execution(execution_id)["status"] == "FAILED")
        reason = broker.execution(execution_id)["statusReason"]
        assert reason["reasonCode"] in ("INTERRUPTED_BY_RESTART", "COMMAND_FAILED")
        assert "restarted" in reason["reasonDescription"]
        await asyncio.sleep(0.3)
        assert opcodes["Clean"] == 0

    run(tmp_path, scenario)


def test_an_update_still_waiting_goes_out_when_the_agent_stops(tmp_path: Path) -> None:
    async def scenario(agent: Agent, broker: CommandsBroker, opcodes: Counter[str]) -> CommandsBroker:
        broker.create("clean", {"action": "clean"})
        broker.hold = True  # the service never answers IN_PROGRESS before the agent stops
        execution_id, _ = broker.start_execution("clean")
        await until("clean ran", lambda: opcodes["Clean"] == 1)
        await until("SUCCEEDED waiting", lambda: agent.remote_commands.open[execution_id].pending)
        assert [u["status"] for u in broker.updates(execution_id)] == ["IN_PROGRESS"]
        return broker

    broker = run(tmp_path, scenario)
    (execution_id,) = broker.engine.executions
    assert [u["status"] for u in broker.updates(execution_id)] == ["IN_PROGRESS", "SUCCEEDED"]
