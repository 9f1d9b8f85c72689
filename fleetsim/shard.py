"""One simulator process: a slice of the fleet on one asyncio loop, started with ``multiprocessing`` spawn.

Everything here shares the process: one asyncio loop runs every agent, one ticking task steps every
``SimLink`` (the simulated robot and its in-memory cable), a few worker threads carry the blocking robot
calls, and every MQTT client uses awscrt's process-wide default ``EventLoopGroup``/``ClientBootstrap``
(the SDK builder falls back to the static default when no bootstrap is given, so all clients share it).
A TLS context per identity cannot be shared; robots are started at a controlled rate so that building
them (about 13 ms each) and the TLS handshakes are spread out.

Each robot's agent runs under a small supervisor (:meth:`Shard._life`) playing the stable launcher's and
systemd's part: before every start it asks the robot's :class:`~fleetsim.update.SimInstaller` what to run
(a pending switch, a trial, a rollback), and when the agent exits (EXIT_SWITCH, EXIT_ROLLBACK, a crash at
start, a missed commit deadline, a power cut) it builds a new :class:`~fleetsim.agent.SimAgent` for the
same robot, link, configuration and state directory. Its ledger and outbox survive, as on disk.

The parent talks to a shard over a ``multiprocessing`` pipe: the shard sends a status document every
``report_s`` and a final one before it exits; the parent sends ``"stop"``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import signal
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from base import logs
from base.process import raise_nofile_limit
from fleetsim.faults import FaultAction, FaultSpec, RobotFaults, slow_link
from fleetsim.update import CRASH_AFTER_S, REBOOT_S

if TYPE_CHECKING:  # imported when used: awscrt must load after quiet_system_trust_store
    from agent.config import AgentConfig
    from fleetsim.agent import Lane, SimAgent, WorkerPool
    from fleetsim.link import SimLink
    from fleetsim.update import SimInstaller, Start

WORKER_THREADS = 8
EXECUTOR_THREADS = 32
RESTART_PAUSE_S = 1.0
"""The launcher's pause between an agent's exit and the next start (systemd's RestartSec, ours too)."""


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
    release_trust: str | None = None  # the release-signing certificates the robots trust ([update] trust)
    version: str | None = None  # the release every robot starts on (None: agent.__version__)
    commit_timeout_s: float | None = None  # the robots' [update] commit_timeout_s (None: their config's)


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
    def __init__(
        self,
        thing: str,
        link: SimLink,
        agent: SimAgent,
        faults: RobotFaults,
        *,
        config: AgentConfig,
        lane: Lane,
        installer: SimInstaller,
    ) -> None:
        self.thing = thing
        self.link = link
        self.agent = agent
        self.faults = faults
        self.config = config
        self.lane = lane
        self.installer = installer
        self.task: asyncio.Task[None] | None = None
        self.applied: Counter[str] = Counter()
        self.start: Start | None = None
        self.cut = False  # the power was cut under the running agent
        self.deadline_missed = False
        self.unplugged_by_build = False  # a bad build's dead sensor stream (update-selftest)
        self.down: str | None = None  # why no agent runs now (None: one does, or is about to)


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
                doc = dict(r.agent.status())
                doc.update(r.installer.status())
                doc["working"] = self._working(r)
                doc["down"] = r.down
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
        update: dict[str, Any] = {}
        if s.release_trust:
            update["trust"] = s.release_trust
        if s.commit_timeout_s is not None:
            update["commit_timeout_s"] = s.commit_timeout_s
        if slow_link(s.faults, s.seed, thing):
            update["download_limit_kbps"] = int(s.faults.update_slow_kbps)
        if update:
            changes["update"] = dataclasses.replace(config.update, **update)
        if s.connection is not None:
            changes.update(endpoint=s.connection.endpoint, port=s.connection.port, local=s.connection.local)
            if s.connection.root_ca:
                changes["root_ca"] = s.connection.root_ca
        return dataclasses.replace(config, **changes)

    def _build(self, i: int, thing: str, pool: WorkerPool) -> _Robot:
        from agent import __version__ as agent_version
        from fleetsim.link import SimLink
        from fleetsim.update import SimInstaller

        s = self.spec
        now = time.monotonic()
        link = SimLink(
            thing, seed=zlib.crc32(f"{s.seed}/{thing}".encode()), stream_period_s=s.stream_period_s, now=now
        )
        if s.faults.serial_noise:
            link.sim.control({"op": "noise", "corrupt": s.faults.serial_noise}, now)
        config = self._config(thing)
        installer = SimInstaller(
            thing,
            version=s.version or agent_version,
            spec=s.faults,
            seed=s.seed,
            download_dir=Path(config.state_dir) / "downloads",
        )
        lane = pool.lane(i)
        start = installer.boot()
        robot = _Robot(
            thing,
            link,
            self._agent(thing, config, link, lane, installer, start.version or installer.base_version),
            RobotFaults(s.faults, s.seed, thing),
            config=config,
            lane=lane,
            installer=installer,
        )
        robot.start = start
        installer.on_power_cut = lambda phase: self._cut(robot, phase)
        return robot

    def _agent(
        self,
        thing: str,
        config: AgentConfig,
        link: SimLink,
        lane: Lane,
        installer: SimInstaller,
        version: str,
    ) -> SimAgent:
        from fleetsim.agent import SimAgent

        s = self.spec
        return SimAgent(
            config,
            link,
            lane,
            reconnect_max_ms=s.reconnect_max_ms,
            durable=s.durable,
            installer=installer,
            version=version,
        )

    # -- one robot's starts: the launcher's loop ---------------------------------------------------------
    async def _life(self, r: _Robot) -> None:
        """Start the robot's agent, and start it again whenever it exits, as the launcher and systemd do."""
        first = True
        while not self.stopping.is_set():
            start = r.start if first and r.start is not None else r.installer.boot()
            first = False
            r.start = start
            if start.version is None:
                r.down = "no runnable release"
                self.log.error("fleetsim.update.unbootable", thing=r.thing, slots=r.installer.status())
                return
            code, reason = await self._run_once(r, start)
            if r.cut:
                r.down = "power cut"
                await self._pause(REBOOT_S)
                continue
            if r.deadline_missed and start.commit_timeout_s is not None:
                r.installer.deadline_missed(start.version, start.commit_timeout_s)
            else:
                r.installer.exited(code, reason, stopping=self.stopping.is_set())
            if self.stopping.is_set():
                return
            r.down = f"restarting: {reason}"
            await self._pause(RESTART_PAUSE_S)

    async def _run_once(self, r: _Robot, start: Start) -> tuple[int | None, str]:
        """One start of the robot's agent on ``start.version``; (exit code or None, why it ended)."""
        assert start.version is not None
        loop = asyncio.get_running_loop()
        r.cut = False
        r.deadline_missed = False
        faults = start.faults
        if faults.crash:
            r.down = f"{start.version} crashing at start"
            r.installer.crashes += 1
            await asyncio.sleep(CRASH_AFTER_S)
            return 1, "exited with 1"
        if start.trial and faults.selftest:
            if r.link.transport.plugged:
                r.link.unplug(time.monotonic())
                r.unplugged_by_build = True
        elif r.unplugged_by_build:
            r.link.plug()
            r.unplugged_by_build = False
        if r.agent.started:
            r.link.restart_host()
            r.agent = self._agent(r.thing, r.config, r.link, r.lane, r.installer, start.version)
        r.down = None
        timers: list[asyncio.TimerHandle] = []
        if start.trial and start.commit_timeout_s:
            timers.append(loop.call_later(start.commit_timeout_s, self._deadline, r, r.agent))
        if (
            start.trial
            and faults.power_cut == "self_test"
            and (start.version, "self_test") not in r.installer.fired
        ):
            bake = float((r.installer.state.trial or {}).get("bake_s") or 2.0)
            at = random.Random(f"{self.spec.seed}/{r.thing}/self_test").uniform(0.3, 0.8) * max(bake, 1.0)
            timers.append(loop.call_later(at, r.installer.maybe_cut, start.version, "self_test"))
        try:
            code = await r.agent.run()
        finally:
            for t in timers:
                t.cancel()
        return code, f"exited with {code}"

    def _deadline(self, r: _Robot, agent: SimAgent) -> None:
        """The trial's commit deadline: the launcher stops the agent (and rolls the trial back)."""
        if r.agent is agent and not agent.stopping.is_set() and not r.cut:
            trial = r.installer.state.trial
            if trial is not None and trial.get("version") == agent.agent.version:
                r.deadline_missed = True
                agent.stopping.set()

    def _cut(self, r: _Robot, phase: str) -> None:
        """A power cut under the running agent: its link dies without a DISCONNECT (the will fires), then it
        is taken down; the launcher's on_exit never runs."""
        r.cut = True
        r.applied[f"update_power_cut_{phase}"] += 1
        self.log.info("fleet.sim.fault", thing=r.thing, kind="update_power_cut", phase=phase)
        try:
            r.agent.mqtt.drop()
        except Exception as exc:
            self.log.warning("fleet.sim.fault.failed", thing=r.thing, kind="update_power_cut", error=str(exc))
        r.agent.stopping.set()

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.stopping.wait(), seconds)
        except TimeoutError:
            pass

    def _working(self, r: _Robot) -> bool:
        """Whether the robot runs a release that works: an agent is up on its launcher's current version
        (or on a trial), and that version is not a bad build (crashing, or failing its self-test)."""
        start = r.start
        if start is None or start.version is None or r.down is not None:
            return False
        faults = r.installer.faults_of(start.version)
        return not (faults.crash or faults.selftest) and not r.agent.stopping.is_set()

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
            robot.task = loop.create_task(self._life(robot))
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
        # every robot's blocking calls (an update's download, its verification) share the default executor
        loop.set_default_executor(ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="sim-io"))
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
