"""The real agent (``agent.daemon.Agent``) on a simulated robot, sharing one process with hundreds of others.

Only the two places where the daemon touches hardware differ: ``start_robot`` takes a ready
:class:`~fleetsim.link.SimLink` instead of opening a serial port, and robot calls run on a *lane* of a
shard-wide :class:`WorkerPool` instead of a thread per robot (one lane per robot keeps its calls in order,
as the daemon's own worker does). Shadow sync, commands, the ledger, the outbox, telemetry and the MQTT
client are the agent's own code, unchanged.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from agent import config as cfg
from agent.daemon import Agent
from agent.model import Event
from agent.robot_link import Job, run_jobs
from agent.sdnotify import Notifier
from fleetsim.link import SimLink


class WorkerPool:
    """A few threads for the blocking robot calls (``set_mode`` waits for the stream) of a whole shard."""

    def __init__(self, threads: int) -> None:
        self._queues: list[queue.SimpleQueue[Job | None]] = [queue.SimpleQueue() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(q,), name=f"sim-worker-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _run(q: queue.SimpleQueue[Job | None]) -> None:
        run_jobs(q)

    def lane(self, index: int) -> Lane:
        i = index % len(self._queues)
        return Lane(self._queues[i], self._threads[i])

    def close(self, timeout: float = 3.0) -> None:
        for q in self._queues:
            q.put(None)
        for t in self._threads:
            t.join(timeout)


class Lane:
    """What the daemon expects of its ``Worker`` (submit, alive, close), on a shared thread."""

    def __init__(self, q: queue.SimpleQueue[Job | None], thread: threading.Thread) -> None:
        self._q = q
        self._thread = thread

    def submit(self, fn: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        self._q.put((fn, done))

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 3.0) -> None:
        """The pool outlives any one robot; it is closed with the shard."""


class SimAgent(Agent):
    def __init__(
        self,
        config: cfg.AgentConfig,
        link: SimLink,
        lane: Lane,
        *,
        reconnect_max_ms: int,
        durable: bool = False,
    ) -> None:
        super().__init__(config, Notifier(env={}), reconnect_max_ms=reconnect_max_ms)
        if not durable:
            # a simulated robot need not survive a power cut: no fsync (commits stay atomic and survive a
            # crash of this process), or a thousand robots starting at once queue behind the disk
            self.db.execute("PRAGMA synchronous=OFF")
        self.link = link
        self.lane = lane
        self.events_queued = 0
        self._final: dict[str, Any] | None = None

    def start_robot(self) -> None:
        from agent.robot_link import RobotLink

        self.robot_link = RobotLink(
            self.link.robot, self._post_snapshot, sample_s=min(1.0, self.sync.report_min_s)
        )
        self.worker = self.lane
        self.link.robot.start()

    def emit(self, event: Event) -> None:
        super().emit(event)
        self.events_queued += 1

    def status(self) -> dict[str, Any]:
        """What the fleet simulator reports for this robot (read by tests and ``simulate`` status)."""
        if self._final is not None:
            return self._final
        c = self.metrics.counters
        link = self.link
        robot_state = link.robot.state
        return {
            "connected": bool(self.mqtt is not None and self.mqtt.connected),
            "ready": self.ready,
            "mission": self.tracker.state,
            "connections": c["connections"],
            "shadow_updates": c["shadow_update_accepted"],
            "shadow_throttled": c["throttled"],
            "events_queued": self.events_queued,
            "events_delivered": c["events_delivered"],
            "outbox_depth": self.outbox.depth(),
            "commands": {k[len("commands_") :]: v for k, v in c.items() if k.startswith("commands_")},
            "opcodes": dict(link.opcodes),
            "serial": {
                "up": robot_state.link.connected,
                "frames_ok": robot_state.link.frames_ok,
                "frames_corrupt": robot_state.link.frames_corrupt,
                "reconnects": robot_state.link.reconnects,
            },
            "battery_pct": round(link.sim.world.battery_percent, 1),
        }

    async def shutdown(self) -> None:
        final = self.status()
        await super().shutdown()
        final["connected"] = False
        self._final = final


async def run_sim_agent(agent: SimAgent) -> None:
    """``agent.daemon.run_agent`` minus what belongs to the process (signals, sd_notify, watchdog)."""
    agent.recover_ledger()
    agent.start_robot()
    agent.start_mqtt()
    agent.check_ready()
    agent.pump()
    config = agent.config
    tasks = [
        agent.loop.create_task(
            agent.periodic("status", lambda: config.intervals.status_s, agent.write_status)
        ),
        agent.loop.create_task(
            agent.periodic("telemetry", lambda: agent.settings["telemetry_s"], agent.send_telemetry)
        ),
        agent.loop.create_task(
            agent.periodic("metrics", lambda: agent.settings["metrics_s"], agent.send_metrics)
        ),
    ]
    probe = getattr(agent, "health_probe", None)
    if probe is not None:
        tasks.append(
            agent.loop.create_task(agent.periodic("probe", lambda: config.intervals.health_probe_s, probe))
        )
    try:
        await agent.stopping.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await agent.shutdown()
