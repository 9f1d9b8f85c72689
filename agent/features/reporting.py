"""What the agent says about itself: telemetry, the metrics topic, and the status file.

Telemetry (raw figures, QoS 0, never in the shadow) and metrics go to ``roomba/<thing>/telemetry`` and
``roomba/<thing>/metrics`` every ``telemetry_s`` and ``metrics_s`` (settings the ``config`` shadow may
change). The status file is what ``roomba-agent status`` reads, so it works when the daemon or the network
is broken; it is rewritten every ``intervals.status_s``, whenever the MQTT connection goes up or down (with
the reconnect state: last failed attempt, its error, when the next one is) and once more at exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import __version__ as AGENT_VERSION
from agent.config import AgentConfig
from agent.features import cancel_all, every
from agent.features.health import Health
from agent.metrics import Metrics
from agent.model import reported_state, telemetry
from agent.mqtt import MqttConnection
from agent.parts import AgentLog, CloudLink, RobotSide
from agent.store import Outbox
from agent.sync import ShadowSync
from shadow.topics import metrics_topic, telemetry_topic

STATUS_FILE = "status.json"


def write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    os.replace(tmp, path)


class Reporting:
    name = "reporting"

    def __init__(
        self,
        *,
        config: AgentConfig,
        robot: RobotSide,
        mqtt: MqttConnection,
        sync: ShadowSync,
        outbox: Outbox,
        health: Health,
        settings: Mapping[str, Any],
        metrics: Metrics,
        log: AgentLog,
        started: float,
        cloud_link: CloudLink | None = None,
        version: str = AGENT_VERSION,
    ) -> None:
        self.config = config
        self.version = version
        self.robot = robot
        self.mqtt = mqtt
        self.sync = sync
        self.outbox = outbox
        self.health = health
        self.settings = settings
        self.metrics = metrics
        self.log = log
        self.started = started
        self.cloud_link = cloud_link or CloudLink()
        self.status_path = Path(config.state_dir) / STATUS_FILE
        self._tasks: list[asyncio.Task[None]] = []
        # sections other features add to the status document (``jobs``), name -> builder
        self.sections: dict[str, Callable[[], Any]] = {}

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        status_s = self.config.intervals.status_s
        self._tasks += [
            loop.create_task(every("status", lambda: status_s, self.write_status, self.log)),
            loop.create_task(
                every("telemetry", lambda: self.settings["telemetry_s"], self.send_telemetry, self.log)
            ),
            loop.create_task(
                every("metrics", lambda: self.settings["metrics_s"], self.send_metrics, self.log)
            ),
        ]
        self.write_status()

    async def stop(self) -> None:
        await cancel_all(self._tasks)

    def send_telemetry(self) -> None:
        snap = self.robot.snapshot
        if snap is not None and self.mqtt.connected:
            body = {"at": round(time.time(), 3), "mission": self.robot.tracker.state, **telemetry(snap)}
            self.mqtt.publish(telemetry_topic(self.config.thing_name), json.dumps(body).encode(), 0)
            self.metrics.inc("telemetry_sent")

    def send_metrics(self) -> None:
        if self.mqtt.connected:
            body = {"at": round(time.time(), 3), **self.status_doc()["metrics"]}
            self.mqtt.publish(metrics_topic(self.config.thing_name), json.dumps(body).encode(), 0)

    def status_doc(self) -> dict[str, Any]:
        snap = self.robot.snapshot
        mission = self.robot.tracker.state
        self.metrics.set("outbox_depth", self.outbox.depth())
        self.metrics.set("outbox_dropped", self.outbox.dropped())
        self.metrics.set("mqtt_pending_operations", self.mqtt.pending_operations())
        return {
            "thing_name": self.config.thing_name,
            "pid": os.getpid(),
            "agent_version": self.version,
            "written_at": round(time.time(), 3),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "ready": self.health.ready,
            "mqtt": {
                "endpoint": f"{self.config.endpoint}:{self.config.port}",
                "connected": self.mqtt.connected,
                "reconnect": self.cloud_link.to_json(),
            },
            "robot": {
                "port": self.config.serial_port,
                "link_up": bool(snap and snap.link_up),
                "mission": mission,
                "reported": reported_state(snap, mission, self.version) if snap else None,
            },
            "last_command": self.sync.classic.current.get("command"),
            "errors": self.sync.classic.current.get("errors"),
            "settings": self.settings,
            **{name: build() for name, build in self.sections.items()},
            "metrics": self.metrics.snapshot(),
        }

    def write_status(self) -> None:
        write_json_atomic(self.status_path, self.status_doc())
