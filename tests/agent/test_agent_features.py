"""The feature registry (start order, reverse stop, failures by name), PUBACK outcomes, and the MQTT
connection's fault-injection seam (drop without DISCONNECT, resume) against the local cloud."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from awscrt import mqtt5

from agent import config as cfg
from agent.features import FeatureRegistry, FeatureStartError
from agent.metrics import Metrics
from agent.mqtt import Connected, Disconnected, MqttClient, MqttEvent, Stopped, puback_ok
from agent.parts import AgentLog
from agent.pump import Pump
from agent.store import Ledger, open_db
from agent.sync import ShadowSync
from base import logs
from base.testing import tracebacks, wait_until
from localcloud.testing import PahoOperator


class Recorder:
    def __init__(self, name: str, journal: list[str], *, fail_start: bool = False, fail_stop: bool = False):
        self.name = name
        self.journal = journal
        self.fail_start = fail_start
        self.fail_stop = fail_stop

    def start(self) -> None:
        if self.fail_start:
            raise RuntimeError("no robot here")
        self.journal.append(f"start {self.name}")

    def stop(self) -> None:
        self.journal.append(f"stop {self.name}")
        if self.fail_stop:
            raise RuntimeError("stuck")


class AsyncRecorder(Recorder):
    async def start(self) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().start()

    async def stop(self) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().stop()


def test_features_start_in_order_and_stop_in_reverse() -> None:
    """Plain and async features start in registration order and stop in reverse."""
    journal: list[str] = []
    registry = FeatureRegistry(AgentLog("t"))
    for feature in (Recorder("a", journal), AsyncRecorder("b", journal), Recorder("c", journal)):
        registry.add(feature)

    async def scenario() -> None:
        await registry.start_all()
        assert registry.started == ["a", "b", "c"]
        assert await registry.stop_all() == []

    asyncio.run(scenario())
    assert journal == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    assert registry.names == ["a", "b", "c"] and registry.started == []


def test_a_feature_that_fails_to_start_is_named_and_the_started_ones_stop() -> None:
    journal: list[str] = []
    registry = FeatureRegistry(AgentLog("t"))
    registry.add(Recorder("a", journal))
    registry.add(AsyncRecorder("b", journal))
    registry.add(Recorder("c", journal, fail_start=True))
    registry.add(Recorder("d", journal))

    with pytest.raises(FeatureStartError) as err:
        asyncio.run(registry.start_all())
    assert err.value.name == "c" and "no robot here" in str(err.value)
    assert journal == ["start a", "start b", "stop b", "stop a"]  # d never started


def test_a_feature_that_fails_to_stop_does_not_keep_the_others_running() -> None:
    journal: list[str] = []
    registry = FeatureRegistry(AgentLog("t"))
    registry.add(Recorder("a", journal))
    registry.add(Recorder("b", journal, fail_stop=True))

    async def scenario() -> list[tuple[str, Exception]]:
        await registry.start_all()
        return await registry.stop_all()

    failures = asyncio.run(scenario())
    assert [name for name, _ in failures] == ["b"]
    assert journal == ["start a", "start b", "stop b", "stop a"]


def test_two_features_with_one_name_are_refused() -> None:
    registry = FeatureRegistry(AgentLog("t"))
    registry.add(Recorder("a", []))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(Recorder("a", []))


# --- PUBACK outcomes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        pytest.param(mqtt5.PublishCompletionData(), (True, "success"), id="qos0_no_puback"),
        pytest.param(
            mqtt5.PublishCompletionData(puback=mqtt5.PubackPacket()), (True, "success"), id="no_reason_code"
        ),
        pytest.param(
            mqtt5.PublishCompletionData(
                puback=mqtt5.PubackPacket(reason_code=mqtt5.PubackReasonCode.SUCCESS)
            ),
            (True, "success"),
            id="success",
        ),
        pytest.param(
            mqtt5.PublishCompletionData(
                puback=mqtt5.PubackPacket(reason_code=mqtt5.PubackReasonCode.NOT_AUTHORIZED)
            ),
            (False, "not_authorized"),
            id="not_authorized",
        ),
    ],
)
def test_puback_outcome(result: object, expected: tuple[bool, str]) -> None:
    """PUBACK results: none (QoS 0) and no reason code are success, 0x87 is a named rejection."""
    assert puback_ok(result) == expected


def test_a_puback_without_reason_code_is_counted_as_delivered(tmp_path: Path) -> None:
    """The broker-restart defect: ``int(None)`` raised inside the publish callback (an asyncio traceback)
    and the publish was never counted; it is a success (MQTT 5, 3.4.2.1)."""

    async def scenario() -> Metrics:
        metrics = Metrics()
        sync = ShadowSync("t", Ledger(open_db(tmp_path)), metrics)
        pump = Pump(
            sync,
            SimpleNamespace(connected=False),
            metrics,
            AgentLog("t"),
            asyncio.get_running_loop(),
            subscribe_qos=1,
        )  # type: ignore[arg-type]
        errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(pump.publish_done)
        fut.set_result(mqtt5.PublishCompletionData(puback=mqtt5.PubackPacket()))
        await asyncio.sleep(0)
        assert errors == []
        return metrics

    metrics = asyncio.run(scenario())
    assert metrics.counters["publish_failures"] == 0


# --- drop / resume against the local cloud -------------------------------------------------------------


@pytest.mark.slow
def test_drop_lets_the_will_fire_and_resume_reconnects(local_cloud: Any, tmp_path: Path) -> None:
    """``drop`` is a link that dies (no DISCONNECT: the broker publishes the retained will), not a
    goodbye; ``resume`` connects again on the same client."""
    thing = "features-drop-resume"
    config = cfg.load(Path(local_cloud.add_robot(thing, str(tmp_path / "tty"))), env={})
    config = dataclasses.replace(config, state_dir=str(tmp_path))
    operator = PahoOperator(local_cloud, thing)
    events: list[MqttEvent] = []

    async def scenario() -> None:
        client = MqttClient(config, asyncio.get_running_loop(), events.append, reconnect_max_ms=1000)
        assert not client.connected and client.pending_operations() == 0  # nothing built before start

        async def until(what: str, predicate: Any) -> None:
            for _ in range(200):
                if predicate():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError(f"timed out waiting for {what}: {events}")

        client.start()
        await until("connected", lambda: client.connected)
        client.drop()
        await until("stopped", lambda: any(isinstance(e, Stopped) for e in events))
        assert not client.connected
        client.resume()
        await until("reconnected", lambda: client.connected)
        assert sum(isinstance(e, Connected) for e in events) == 2
        await client.stop()
        assert not client.connected

    try:
        asyncio.run(scenario())
        wait_until(
            lambda: any(
                p.get("state") == "offline" and p.get("reason") == "connection lost"
                for p in operator.presence
            ),
            10,
            "the will after drop()",
        )
    finally:
        operator.close()
    assert any(isinstance(e, Disconnected) for e in events)


# --- the fault tests' traceback check ------------------------------------------------------------------


def test_an_exception_escaping_a_callback_is_found_in_the_agent_log() -> None:
    """What the fault tests assert against: the PUBACK defect's asyncio "Exception in callback" and a
    logged exception (JSON ``exception`` field) are both found; ordinary lines are not."""
    import io
    import logging

    stream = io.StringIO()
    logs.configure("info", json=True, stream=stream)
    handler = logging.StreamHandler(stream)  # what basicConfig installs outside pytest's capture
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger("asyncio").addHandler(handler)

    async def scenario() -> None:
        fut: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: int(None))  # type: ignore[call-overload, arg-type]
        fut.set_result(None)
        await asyncio.sleep(0)

    try:
        asyncio.run(scenario())
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    log = logs.get_logger("agent")
    log.info("mqtt.connected", session_present=False)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("agent.periodic.failed", task="status")
    found = tracebacks(stream.getvalue())
    assert len(found) == 2, stream.getvalue()
    assert tracebacks('{"event": "x", "exception": null}\nplain line\n') == []
