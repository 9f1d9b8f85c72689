"""The pump: runs the sync engine's effects and wakes it when it asks.

:class:`~agent.sync.ShadowSync` decides (sans-I/O); the pump does. MQTT effects (``Publish``, ``Subscribe``)
and log lines (``CommandLog``, ``Notice``) are executed here; an effect that belongs to a feature
(``RunCommand``, ``ApplySetting``) goes to the handler that feature routed for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agent.metrics import Metrics
from agent.mqtt import MqttConnection, puback_ok
from agent.parts import AgentLog
from agent.sync import CommandLog, Effect, Notice, Publish, ShadowSync, Subscribe

E = TypeVar("E", bound=Effect)


class Pump:
    def __init__(
        self,
        sync: ShadowSync,
        mqtt: MqttConnection,
        metrics: Metrics,
        log: AgentLog,
        loop: asyncio.AbstractEventLoop,
        *,
        subscribe_qos: int,
    ) -> None:
        self.sync = sync
        self.mqtt = mqtt
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.subscribe_qos = subscribe_qos
        self.received_at = 0.0  # perf_counter() of the last message: where a command's latency starts
        self._routes: dict[type, Callable[[Any], None]] = {}
        self._holds = 0
        self._wake: asyncio.TimerHandle | None = None
        self._stopped = False

    def route(self, kind: type[E], handler: Callable[[E], None]) -> None:
        """Send every effect of type ``kind`` to ``handler`` (one handler per type)."""
        if kind in self._routes:
            raise ValueError(f"{kind.__name__} effects are already routed")
        self._routes[kind] = handler

    def hold(self) -> None:
        """A command's OI bytes are being written: publish nothing until :meth:`release`, so its ``done``
        goes out in the same update as ``accepted`` would have (one request, not two)."""
        self._holds += 1

    def release(self) -> None:
        self._holds -= 1

    def on_message(self, topic: str, payload: bytes, now: float) -> None:
        self.received_at = time.perf_counter()
        self.metrics.inc("messages_received")
        self.execute(self.sync.on_message(topic, payload, now))

    def execute(self, effects: Sequence[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Publish):
                if self.mqtt.connected:
                    self.metrics.inc("publishes")
                    self.mqtt.publish(eff.topic, eff.payload, eff.qos).add_done_callback(self.publish_done)
            elif isinstance(eff, Subscribe):
                for fut in self.mqtt.subscribe(eff.topics, self.subscribe_qos):
                    fut.add_done_callback(self.publish_done)
            elif isinstance(eff, CommandLog):
                log = self.log.info if eff.status in ("accepted", "done") else self.log.warning
                log(
                    "command",
                    command_id=eff.command_id,
                    action=eff.action,
                    status=eff.status,
                    reason=eff.reason,
                )
            elif isinstance(eff, Notice):
                self.log.warning(eff.event, **dict(eff.fields))
            else:
                self._routes[type(eff)](eff)

    def publish_done(self, fut: asyncio.Future[object]) -> None:
        """A failed publish, or a QoS 1 PUBACK with a failure reason (0x87 not authorized: the policy denies
        the topic), is counted and logged once per reason; the request's own timeout retries it."""
        if fut.cancelled() or fut.exception() is not None:
            self.metrics.inc("publish_failures")
            return
        ok, why = puback_ok(fut.result())
        if not ok:
            self.metrics.inc("publish_failures")
            self.metrics.inc(f"publish_rejected_{why}")
            if self.metrics.counters[f"publish_rejected_{why}"] == 1:
                self.log.warning(
                    "mqtt.publish.rejected", reason=why, hint="check the IoT policy: roomba-agent doctor"
                )

    def pump(self) -> None:
        """Publish what the sync engine allows now, then sleep until it next needs to run."""
        if self._stopped:
            return
        now = time.monotonic()
        if self._holds == 0:
            self.execute(self.sync.flush(now))
        if self._wake is not None:
            self._wake.cancel()
        self._wake = self.loop.call_later(max(0.01, self.sync.next_wakeup(now)), self.pump)

    def stop(self) -> None:
        self._stopped = True
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
