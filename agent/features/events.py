"""Mission events through the durable outbox: in order, at least once.

Each event is a SQLite row first (it survives a restart or a long outage), then goes to
``roomba/<thing>/events`` one at a time: send the oldest, wait for its PUBACK, delete it, repeat.
"""

from __future__ import annotations

import asyncio
import time

from agent.metrics import Metrics
from agent.model import Event
from agent.mqtt import MqttConnection, puback_ok
from agent.parts import AgentLog
from agent.store import Outbox
from base.backoff import Backoff
from shadow.topics import events_topic


class Events:
    name = "events"

    def __init__(
        self,
        *,
        thing: str,
        outbox: Outbox,
        mqtt: MqttConnection,
        metrics: Metrics,
        log: AgentLog,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.topic = events_topic(thing)
        self.outbox = outbox
        self.mqtt = mqtt
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.queued = 0  # events queued since start-up
        self._busy = False
        self._retry = Backoff(base_s=0.5, cap_s=30.0)
        self._retry_timer: asyncio.TimerHandle | None = None
        self._stopped = False

    def start(self) -> None:
        self._stopped = False

    def stop(self) -> None:
        self._stopped = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None

    def emit(self, event: Event) -> None:
        queued = self.outbox.put(event.kind, {"at": round(time.time(), 3), **event.data})
        self.queued += 1
        self.metrics.inc(f"events_{event.kind}")
        self.log.info("event.queued", kind=event.kind, event_id=queued.event_id)
        self.metrics.set("outbox_depth", self.outbox.depth())
        self.send()

    def send(self) -> None:
        """Send the oldest event unless one is in flight or MQTT is down (a reconnect calls this again)."""
        if self._busy or self._stopped or not self.mqtt.connected:
            return
        head = self.outbox.head()
        if head is None:
            self.metrics.set("outbox_depth", 0)
            return
        self._busy = True
        fut = self.mqtt.publish(self.topic, head.to_json(), 1)

        def done(f: asyncio.Future[object]) -> None:
            self._busy = False
            if self._stopped:
                return
            ok, why = (False, "error") if f.cancelled() or f.exception() else puback_ok(f.result())
            if ok:
                self.outbox.ack(head.seq)
                self.metrics.inc("events_delivered")
                self._retry.reset()
                self.metrics.set("outbox_depth", self.outbox.depth())
                self.send()
            elif not self.mqtt.connected:
                # the connection went down under it (a reconnect fails what was queued): the next connect
                # sends it again; not worth a warning about the policy
                self.metrics.inc("events_publish_failed_disconnected")
            else:
                self.metrics.inc(f"events_publish_failed_{why}")
                delay = self._retry.next_delay()
                if self._retry.attempt == 1:
                    self.log.warning(
                        "events.publish.failed",
                        reason=why,
                        event_id=head.event_id,
                        retry_in_s=round(delay, 1),
                        hint="PUBACK not_authorized: the IoT policy must allow roomba/<thing>/events",
                    )
                self._retry_timer = self.loop.call_later(delay, self.send)

        fut.add_done_callback(done)
