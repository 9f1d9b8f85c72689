"""One simulator process: a slice of the fleet on one asyncio loop, started with ``multiprocessing`` spawn.

Everything here shares the process: one asyncio loop runs every agent, one ticking task steps every
``SimLink`` (the simulated robot and its in-memory cable), a few worker threads carry the blocking robot
calls, and every MQTT client uses awscrt's process-wide default ``EventLoopGroup``/``ClientBootstrap``
(the SDK builder falls back to the static default when no bootstrap is given, so all clients share it).
A TLS context per identity cannot be shared; robots are started at a controlled rate so that building
them (about 13 ms each) and the TLS handshakes are spread out.

The parent talks to a shard over a ``multiprocessing`` pipe: the shard sends a status document every
``report_s`` and a final one before it exits; the parent sends ``"stop"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base import logs
from base.process import raise_nofile_limit
from fleetsim.faults import FaultAction, FaultSpec, RobotFaults

if TYPE_CHECKING:  # imported when used: awscrt must load after quiet_system_trust_store
    from agent.config import AgentConfig
    from fleetsim.agent import SimAgent, WorkerPool
    from fleetsim.link import SimLink

WORKER_THREADS = 8


@dataclass(frozen=True)
class ConnectionOverride:
    """Where to connect instead of the local cloud of DIR (from an agent config given to ``simulate``)."""

    endpoint: str
    port: int
    root_ca: str | None
    local: bool


@dataclass(frozen=True)
class ShardSpec:
    index: int
    things: tuple[str, ...]
    cloud_dir: str
    seed: int
    faults: FaultSpec
    stream_period_s: float
    ramp_per_s: float
    report_min_s: float
    telemetry_s: float
    status_s: float
    reconnect_max_ms: int
    durable: bool
    log_level: str
    log_file: str
    start_wall: float
    report_s: float = 1.0
    connection: ConnectionOverride | None = None
    robot_index_base: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def quiet_system_trust_store(spec: ShardSpec) -> None:
    """Point ``SSL_CERT_FILE``/``SSL_CERT_DIR`` at the one CA the robots trust, before awscrt loads.

    Every agent passes its root CA explicitly, so the system store is never used; but the TLS library still
    loads all of ``/etc/ssl/certs`` for each new context first: measured 19 ms per robot identity with the
    system store, 2 ms with this. At a thousand robots that is most of the start-up CPU.
    """
    from localcloud.layout import CloudDir

    ca = spec.connection.root_ca if spec.connection and spec.connection.root_ca else None
    ca = ca or str(CloudDir.at(spec.cloud_dir).ca_cert)
    if Path(ca).is_file():
        os.environ["SSL_CERT_FILE"] = ca
        os.environ["SSL_CERT_DIR"] = str(Path(ca).parent)


def shard_main(spec: ShardSpec, conn: Connection) -> None:
    """Entry point of a spawned shard process."""
    # Ctrl-C reaches the whole process group; until the loop installs its handler, let the parent (which
    # sends "stop") coordinate, rather than die mid-import with a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    quiet_system_trust_store(spec)
    Path(spec.log_file).parent.mkdir(parents=True, exist_ok=True)
    with open(spec.log_file, "a", buffering=1) as log_stream:
        logs.configure(spec.log_level, json=True, stream=log_stream)
        raise_nofile_limit()
        try:
            asyncio.run(Shard(spec, conn).run())
        finally:
            conn.close()


class _Robot:
    def __init__(self, thing: str, link: SimLink, agent: SimAgent, faults: RobotFaults) -> None:
        self.thing = thing
        self.link = link
        self.agent = agent
        self.faults = faults
        self.task: asyncio.Task[None] | None = None
        self.applied: Counter[str] = Counter()


class Shard:
    def __init__(self, spec: ShardSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        self.log = logs.get_logger("fleetsim.shard", shard=spec.index)
        self.robots: list[_Robot] = []
        self.stopping = asyncio.Event()
        self.error: str | None = None

    # -- control -----------------------------------------------------------------------------------------
    def _on_control(self) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):
            message = "stop"
        if message == "stop":
            self.stopping.set()

    def _send(self, final: bool = False) -> None:
        robots: dict[str, Any] = {}
        for r in self.robots:
            try:
                doc = r.agent.status()
            except Exception as exc:  # a status must never take the shard down
                doc = {"error": f"status failed: {exc}"}
            doc["faults"] = dict(r.applied)
            robots[r.thing] = doc
        message = {
            "shard": self.spec.index,
            "pid": os.getpid(),
            "final": final,
            "started": len(self.robots),
            "planned": len(self.spec.things),
            "robots": robots,
            "error": self.error,
        }
        try:
            self.conn.send(message)
        except (OSError, ValueError):
            self.stopping.set()

    # -- building robots ---------------------------------------------------------------------------------
    def _config(self, thing: str) -> AgentConfig:
        from agent import config as cfg
        from localcloud.layout import CloudDir

        s = self.spec
        config = cfg.load(CloudDir.at(s.cloud_dir).robot_config(thing), env={})
        intervals = dataclasses.replace(
            config.intervals, report_min_s=s.report_min_s, telemetry_s=s.telemetry_s, status_s=s.status_s
        )
        changes: dict[str, Any] = {"intervals": intervals, "log_level": s.log_level}
        if s.connection is not None:
            changes.update(endpoint=s.connection.endpoint, port=s.connection.port, local=s.connection.local)
            if s.connection.root_ca:
                changes["root_ca"] = s.connection.root_ca
        return dataclasses.replace(config, **changes)

    def _build(self, i: int, thing: str, pool: WorkerPool) -> _Robot:
        from fleetsim.agent import SimAgent
        from fleetsim.link import SimLink

        s = self.spec
        now = time.monotonic()
        link = SimLink(
            thing, seed=zlib.crc32(f"{s.seed}/{thing}".encode()), stream_period_s=s.stream_period_s, now=now
        )
        if s.faults.serial_noise:
            link.sim.control({"op": "noise", "corrupt": s.faults.serial_noise}, now)
        agent = SimAgent(
            self._config(thing), link, pool.lane(i), reconnect_max_ms=s.reconnect_max_ms, durable=s.durable
        )
        return _Robot(thing, link, agent, RobotFaults(s.faults, s.seed, thing))

    async def _ramp(self, pool: WorkerPool) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.log.info("fleetsim.shard.ramp", robots=len(self.spec.things), per_s=self.spec.ramp_per_s)
        for i, thing in enumerate(self.spec.things):
            if self.stopping.is_set():
                return
            # always yield: behind schedule, the ticker and the MQTT callbacks must still run between robots
            await asyncio.sleep(max(0.0, t0 + i / self.spec.ramp_per_s - loop.time()))
            try:
                robot = self._build(i, thing, pool)
            except Exception as exc:
                self.error = f"{thing}: {exc}"
                self.log.error("fleet.sim.robot.failed", thing=thing, error=str(exc))
                continue
            self.robots.append(robot)
            robot.task = loop.create_task(robot.agent.run())
        self.log.info("fleetsim.shard.started", robots=len(self.robots))

    # -- the ticker and the weather ----------------------------------------------------------------------
    async def _tick(self) -> None:
        period = self.spec.stream_period_s
        faults = self.spec.faults.any
        while True:
            now = time.monotonic()
            t_fleet = time.time() - self.spec.start_wall
            for r in self.robots:
                if faults:
                    for action in r.faults.due(t_fleet):
                        self._apply(r, action, now)
                r.link.step(now)
            await asyncio.sleep(max(0.001, period - (time.monotonic() - now)))

    def _apply(self, r: _Robot, action: FaultAction, now: float) -> None:
        kind = action.kind
        r.applied[kind] += 1
        self.log.info("fleet.sim.fault", thing=r.thing, kind=kind)
        try:
            if kind == "serial_drop":
                r.link.unplug(now)
            elif kind == "serial_restore":
                r.link.plug()
            elif kind in ("stuck", "unstuck"):
                r.link.sim.control({"op": "stuck", "on": kind == "stuck"}, now)
            elif kind == "flat":
                r.link.sim.control({"op": "battery", "percent": action.value}, now)
            elif kind == "link_drop":
                r.agent.mqtt.drop()  # no DISCONNECT packet: the broker sees the link die, the will fires
            elif kind == "link_restore" and not r.agent.stopping.is_set():
                r.agent.mqtt.resume()
        except Exception as exc:
            self.log.warning("fleet.sim.fault.failed", thing=r.thing, kind=kind, error=str(exc))

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.spec.report_s)
            self._send()

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def run(self) -> None:
        from fleetsim.agent import WorkerPool

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_reader(self.conn.fileno(), self._on_control)
        pool = WorkerPool(WORKER_THREADS)
        try:
            from agent.commands import warm_up

            warm_up()  # build the schema validators once for the whole shard, before the ramp
        except ImportError:
            pass
        ticker = loop.create_task(self._tick())
        reporter = loop.create_task(self._report())
        ramp = loop.create_task(self._ramp(pool))
        await self.stopping.wait()
        ramp.cancel()
        reporter.cancel()
        for r in self.robots:
            r.agent.stopping.set()
        tasks = [r.task for r in self.robots if r.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        ticker.cancel()
        await asyncio.gather(ticker, reporter, ramp, return_exceptions=True)
        loop.remove_reader(self.conn.fileno())
        self._send(final=True)
        pool.close()
        self.log.info("fleetsim.shard.stopped", robots=len(self.robots))
