"""The real agent (``agent.daemon.Agent``) on a simulated robot, sharing one process with hundreds of others.

The agent goes through the same start-up as ``roomba-agent run``; only its :class:`~agent.daemon.Hooks`
differ: the robot is a ready :class:`~fleetsim.link.SimLink`'s instead of one on a serial port, robot calls
run on a *lane* of a shard-wide :class:`WorkerPool` instead of a thread per robot (one lane per robot keeps
its calls in order, as the daemon's own worker does), and what belongs to a process of its own (signals,
sd_notify and its watchdog, the credential check, TCP_NODELAY, fsync) is left out. Shadow sync, commands,
the ledger, the outbox, telemetry and the MQTT client are the agent's own code, unchanged.

A robot's agent is one start of it: when it exits (a switch to a new release, a rollback, a simulated crash
or power cut) the shard builds a new one on the same link, configuration and state directory, running the
version its :class:`~fleetsim.update.SimInstaller` says (``Hooks.version``, ``Hooks.installer``).
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import config as cfg
from agent.daemon import Agent, Hooks
from agent.mqtt import MqttConnection
from agent.robot_link import Job, run_jobs
from fleetsim.link import SimLink

if TYPE_CHECKING:
    from fleetsim.update import SimInstaller


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
    """An :class:`agent.robot_link.RobotWorker` (submit, alive, close) on a thread shared by many robots."""

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


class SimAgent:
    """One simulated robot's agent, and the status the fleet simulator reports for it."""

    def __init__(
        self,
        config: cfg.AgentConfig,
        link: SimLink,
        lane: Lane,
        *,
        reconnect_max_ms: int,
        durable: bool = False,
        installer: SimInstaller | None = None,
        version: str | None = None,
    ) -> None:
        self.link = link
        self.started = False
        self._final: dict[str, Any] | None = None
        hooks = Hooks(
            robot=lambda: link.robot,
            worker=lambda: lane,
            reconnect_max_ms=reconnect_max_ms,
            durable=durable,
            on_stopping=self._keep_final_status,
            version=version,
            installer=None if installer is None else (lambda agent: installer.bind(agent, agent.version)),
        )
        self.agent = Agent(config, hooks)

    @property
    def mqtt(self) -> MqttConnection:
        return self.agent.mqtt

    @property
    def stopping(self) -> asyncio.Event:
        return self.agent.stopping

    async def run(self) -> int:
        """Runs the agent until it stops; its exit code (``agent.launcher.EXIT_SWITCH``, ...)."""
        self.started = True
        code = await self.agent.run()
        if self._final is not None:
            self._final["connected"] = False
        return code

    def _keep_final_status(self) -> None:
        """Taken as the agent starts to stop, while its store is still open."""
        self._final = self.status()

    def status(self) -> dict[str, Any]:
        """What the fleet simulator reports for this robot (read by tests and ``simulate`` status)."""
        if self._final is not None:
            return self._final
        agent = self.agent
        c = agent.metrics.counters
        link = self.link
        robot_state = link.robot.state
        return {
            "running": agent.version,
            "connected": agent.mqtt.connected,
            "ready": agent.ready,
            "mission": agent.robot.tracker.state,
            "connections": c["connections"],
            "shadow_updates": c["shadow_update_accepted"],
            "shadow_throttled": c["throttled"],
            "events_queued": agent.events.queued,
            "events_delivered": c["events_delivered"],
            "outbox_depth": agent.outbox.depth(),
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
