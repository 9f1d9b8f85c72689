"""Health: readiness, systemd's STATUS= and watchdog, and the periodic shadow probe.

READY=1 goes to systemd once both the robot link (with a first snapshot) and MQTT are up; until then
STATUS= says what the agent waits for. The watchdog pings only while the loop runs, the robot worker and
the HAL reader are alive and the MQTT client is not wedged, so systemd restarts an agent that is stuck,
not one that is merely offline. The probe (a classic shadow ``get`` every ``health_probe_s``) keeps a
silent client visible and catches up on a desired change whose document was missed.
"""

from __future__ import annotations

import asyncio
import threading
import time

from agent.commands import warm_up
from agent.config import AgentConfig
from agent.features import cancel_all, every
from agent.metrics import Metrics
from agent.mqtt import MqttConnection
from agent.parts import AgentLog, RobotSide
from agent.pump import Pump
from agent.sdnotify import Notifier
from agent.sync import ShadowSync


class Health:
    name = "health"

    def __init__(
        self,
        *,
        config: AgentConfig,
        notifier: Notifier,
        robot: RobotSide,
        mqtt: MqttConnection,
        sync: ShadowSync,
        pump: Pump,
        metrics: Metrics,
        log: AgentLog,
        watchdog: bool,
        started: float,
    ) -> None:
        self.config = config
        self.notifier = notifier
        self.robot = robot
        self.mqtt = mqtt
        self.sync = sync
        self.pump = pump
        self.metrics = metrics
        self.log = log
        self.watchdog = watchdog
        self.started = started
        self.ready = False
        self._status_text = ""
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.watchdog:
            self._tasks.append(loop.create_task(self.watchdog_task()))
        interval = self.config.intervals.health_probe_s
        self._tasks.append(loop.create_task(every("probe", lambda: interval, self.probe, self.log)))

    async def stop(self) -> None:
        await cancel_all(self._tasks)

    def check_ready(self) -> None:
        waiting = []
        if not self.robot.link_up or self.robot.snapshot is None:
            waiting.append("the serial link to the robot")
        if not self.mqtt.connected:
            waiting.append(f"MQTT connection to {self.config.endpoint}:{self.config.port}")
        if not waiting and not self.ready:
            self.ready = True
            ready_s = time.monotonic() - self.started
            self.metrics.set("ready_s", round(ready_s, 3))
            self.log.info("agent.ready", seconds=round(ready_s, 3))
            self._status_text = f"connected to {self.config.endpoint}, robot link up"
            self.notifier.ready(self._status_text)
            threading.Thread(target=warm_up, name="agent-warm-up", daemon=True).start()
        elif waiting:
            self.set_status("waiting for " + " and ".join(waiting))
        elif self.ready:
            self.set_status(f"connected to {self.config.endpoint}, robot link up")

    def set_status(self, text: str) -> None:
        """systemd's STATUS=, sent only when it changes."""
        if text != self._status_text:
            self._status_text = text
            self.notifier.status(text)

    def healthy(self) -> tuple[bool, str]:
        """Watchdog health: the loop runs (we are here), the worker and the HAL reader are alive, and the
        MQTT client is not wedged (a stuck shadow request while connected means a silent client)."""
        if not self.robot.worker.alive:
            return False, "robot worker thread died"
        if not self.robot.link.reader_alive:
            return False, "HAL reader thread died"
        if self.sync.get_timeouts >= 3 and self.mqtt.connected:
            return False, "MQTT client connected but shadow requests time out"
        return True, "ok"

    async def watchdog_task(self) -> None:
        interval = (self.notifier.watchdog_s or 10.0) / 2
        while True:
            ok, why = self.healthy()
            if ok:
                self.notifier.watchdog()
            else:
                self.log.error("agent.unhealthy", reason=why)
                self.notifier.status(f"unhealthy: {why}")
            await asyncio.sleep(interval)

    def probe(self) -> None:
        self.pump.execute(self.sync.probe(time.monotonic()))
        self.pump.pump()
