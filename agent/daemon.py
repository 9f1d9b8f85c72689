"""``roomba-agent run``: the long-running robot agent, and the one start-up every agent goes through.

One asyncio loop owns all agent state; the HAL's reader thread, the CRT's threads and the robot worker only
post to it. :class:`Agent` is the wiring: it builds the shared parts (store, sync engine, pump, robot side,
MQTT connection), registers the features (:mod:`agent.features`) and routes robot snapshots and MQTT
events to them. :class:`Hooks` holds what differs between a process of its own under systemd
(:func:`run_agent`) and one agent among many in a fleet-simulator process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent import __version__ as AGENT_VERSION
from agent import config as cfg
from agent import credentials
from agent.features import FeatureRegistry, FeatureStartError
from agent.features.commands import Commands
from agent.features.events import Events
from agent.features.health import Health
from agent.features.jobs import Jobs
from agent.features.remote_commands import RemoteCommands
from agent.features.reporting import Reporting
from agent.features.settings import Settings, initial_settings
from agent.features.update import UpdateFeature
from agent.metrics import Metrics
from agent.model import Snapshot, reported_state
from agent.mqtt import (
    DEFAULT_RECONNECT_MAX_MS,
    Connected,
    ConnectFailed,
    Disconnected,
    Message,
    MqttClient,
    MqttConnection,
    MqttEvent,
    MqttFactory,
    set_tcp_nodelay,
    user_requested,
)
from agent.parts import AgentLog, CloudLink, RobotSide
from agent.pump import Pump
from agent.robot_link import FRAMES_PER_READ, RobotLink, RobotWorker, Worker
from agent.sdnotify import Notifier
from agent.store import Ledger, Outbox, open_db
from agent.sync import ShadowSync
from base.cli import Parser
from base.logs import configure, get_logger
from hal.robot import Robot
from shadow.topics import presence_topic

EX_CONFIG = 78  # sysexits: systemd's RestartPreventExitStatus keeps a bad config from restart-looping


def serial_robot(config: cfg.AgentConfig) -> Robot:
    """The HAL robot on the configured serial port (started by :meth:`Agent.run`)."""
    return Robot(config.serial_port, model=config.model, hold_mode=None, frames_per_read=FRAMES_PER_READ)


@dataclass(frozen=True)
class Hooks:
    """What differs between the agent of ``roomba-agent run`` and an agent in the fleet simulator.

    ``robot`` builds the HAL robot (not started) and ``worker`` the thread(s) for blocking robot calls.
    ``credential_check`` runs before MQTT starts; its problems stop the agent with EX_CONFIG.
    ``handle_signals``: SIGTERM/SIGINT stop the agent (a process of its own). ``watchdog``: ping systemd's
    watchdog while healthy. ``tcp_nodelay``: turn Nagle off on the MQTT socket (one client per process;
    a process hosting many agents would scan its descriptors on every connect). ``durable``: fsync the
    store (a simulated robot need not survive a power cut). ``on_stopping`` runs first when the agent
    stops, while its state is still open.
    """

    robot: Callable[[], Robot]
    worker: Callable[[], RobotWorker] = Worker
    notifier: Notifier = field(default_factory=lambda: Notifier(env={}))
    mqtt: MqttFactory = MqttClient
    credential_check: Callable[[], Sequence[credentials.CredentialProblem]] | None = None
    handle_signals: bool = False
    watchdog: bool = False
    tcp_nodelay: bool = False
    durable: bool = True
    reconnect_max_ms: int = DEFAULT_RECONNECT_MAX_MS
    on_stopping: Callable[[], None] | None = None
    # the version this agent runs as (None: the installed code's, ``agent.__version__``); a simulated
    # fleet's robots run the versions their simulated installer says
    version: str | None = None
    # builds the update feature's installer (None: the real one, on ``[update] root``)
    installer: Callable[[Agent], Any] | None = None


class Agent:
    """The wiring: builds the shared parts, registers the features, routes robot snapshots and MQTT events
    to them, and runs the one start-up (:meth:`run`). Everything it builds exists from construction on, so a
    caller may read ``metrics``, ``ready`` or the ``outbox`` before :meth:`run` and while it runs (the store
    closes when it returns)."""

    def __init__(self, config: cfg.AgentConfig, hooks: Hooks) -> None:
        self.config = config
        self.hooks = hooks
        self.notifier = hooks.notifier
        self.loop = asyncio.get_running_loop()
        self.log = AgentLog(config.thing_name)
        self.metrics = Metrics()
        self.started = time.monotonic()
        self.stopping = asyncio.Event()
        self.version = hooks.version or AGENT_VERSION
        self.exit_code = 0
        self._closed = False
        self.cloud_link = CloudLink()

        self.db = open_db(config.state_dir)
        if not hooks.durable:
            # no fsync: commits stay atomic and survive a crash of this process, not a power cut
            self.db.execute("PRAGMA synchronous=OFF")
        self.ledger = Ledger(self.db)
        self.outbox = Outbox(self.db, config.thing_name, config.outbox_max_events)
        settings = initial_settings(config)
        self.sync = ShadowSync(
            config.thing_name,
            self.ledger,
            self.metrics,
            report_min_s=config.intervals.report_min_s,
            heartbeat_s=config.intervals.heartbeat_s,
            rate_per_s=config.shadow_rate_per_s,
            qos=0 if config.local else 1,
            settings=settings,
        )
        link = RobotLink(hooks.robot(), self._post_snapshot, sample_s=min(1.0, self.sync.report_min_s))
        self.robot = RobotSide(link, hooks.worker())
        self.mqtt: MqttConnection = hooks.mqtt(
            config, self.loop, self.on_mqtt_event, reconnect_max_ms=hooks.reconnect_max_ms
        )
        self.pump = Pump(
            self.sync, self.mqtt, self.metrics, self.log, self.loop, subscribe_qos=0 if config.local else 1
        )

        # the features, in start order (they stop in reverse)
        self.features = FeatureRegistry(self.log)
        self.events = self.features.add(
            Events(
                thing=config.thing_name,
                outbox=self.outbox,
                mqtt=self.mqtt,
                loop=self.loop,
                metrics=self.metrics,
                log=self.log,
            )
        )
        self.commands = self.features.add(
            Commands(
                robot=self.robot,
                sync=self.sync,
                ledger=self.ledger,
                pump=self.pump,
                events=self.events,
                loop=self.loop,
                metrics=self.metrics,
                log=self.log,
            )
        )
        self.remote_commands = self.features.add(
            RemoteCommands(
                thing=config.thing_name,
                features=self.features,
                commands=self.commands,
                ledger=self.ledger,
                mqtt=self.mqtt,
                pump=self.pump,
                metrics=self.metrics,
                log=self.log,
                loop=self.loop,
            )
        )
        self.settings = self.features.add(
            Settings(
                values=settings,
                robot=self.robot,
                sync=self.sync,
                pump=self.pump,
                log=self.log,
                loop=self.loop,
            )
        )
        self.health = self.features.add(
            Health(
                config=config,
                notifier=self.notifier,
                robot=self.robot,
                mqtt=self.mqtt,
                sync=self.sync,
                pump=self.pump,
                watchdog=hooks.watchdog,
                started=self.started,
                metrics=self.metrics,
                log=self.log,
            )
        )
        self.reporting = self.features.add(
            Reporting(
                config=config,
                robot=self.robot,
                mqtt=self.mqtt,
                sync=self.sync,
                outbox=self.outbox,
                health=self.health,
                settings=settings,
                cloud_link=self.cloud_link,
                started=self.started,
                metrics=self.metrics,
                log=self.log,
                version=self.version,
            )
        )
        self.update = self.features.add(
            UpdateFeature(
                config=config,
                installer=self._installer(),
                robot=self.robot,
                mqtt=self.mqtt,
                sync=self.sync,
                status_sections=self.reporting.sections,
                metrics=self.metrics,
                log=self.log,
                loop=self.loop,
                version=self.version,
            )
        )
        self.jobs = self.features.add(
            Jobs(
                config=config,
                features=self.features,
                robot=self.robot,
                mqtt=self.mqtt,
                db=self.db,
                sync=self.sync,
                pump=self.pump,
                events=self.events,
                settings=self.settings,
                status_sections=self.reporting.sections,
                status_doc=self.reporting.status_doc,
                stopping=self.stopping,
                own_process=hooks.handle_signals,
                metrics=self.metrics,
                log=self.log,
                loop=self.loop,
                version=self.version,
                updater=self.update,
            )
        )

    def _installer(self) -> Any:
        """The update feature's installer: the hook's (a simulated fleet), else, for an agent in a process
        of its own with ``[update] enabled``, the releases under ``[update] root`` (None: no updates)."""
        if self.hooks.installer is not None:
            return self.hooks.installer(self)
        if not (self.config.update.enabled and self.hooks.handle_signals):
            return None
        from agent.update.installer import LauncherInstaller

        return LauncherInstaller(self.config.update.root, version=self.version, restart=self.request_exit)

    @property
    def ready(self) -> bool:
        return self.health.ready

    # --- the one start-up ------------------------------------------------------------------------------
    async def run(self) -> int:
        """Open the robot link, check credentials, start the features and MQTT, run until :attr:`stopping`
        is set, then stop everything in reverse. Returns the process exit code."""
        hooks = self.hooks
        if hooks.handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.loop.add_signal_handler(sig, self.stopping.set)
        self.notifier.status("starting: opening the serial link and checking credentials")
        self.robot.link.robot.start()
        if hooks.credential_check is not None:
            problems = await self.loop.run_in_executor(None, hooks.credential_check)
            if problems:
                await self._close()
                return refuse(self.log, self.notifier, problems)
        try:
            await self.features.start_all()
        except FeatureStartError as exc:
            print(f"roomba-agent: {exc}", file=sys.stderr)
            self.notifier.status(str(exc)[:200])
            await self._close()
            return 1
        self.metrics.inc("connection_attempts")
        self.mqtt.start()
        self.health.check_ready()
        self.pump.pump()
        await self.stopping.wait()
        await self.shutdown()
        return self.exit_code

    def request_exit(self, code: int) -> None:
        """Stop cleanly and exit with ``code`` (``agent.launcher.EXIT_SWITCH``: restart me into a pending
        switch; ``EXIT_ROLLBACK``: my trial failed)."""
        self.exit_code = code
        self.stopping.set()

    async def shutdown(self) -> None:
        if self.hooks.on_stopping is not None:
            self.hooks.on_stopping()
        self.notifier.stopping("stopping: disconnecting")
        self.log.info("agent.stopping")
        await self.features.stop_all()
        goodbye = json.dumps({"state": "offline", "reason": "agent stopped", "at": round(time.time(), 3)})
        await self.mqtt.stop((presence_topic(self.config.thing_name), goodbye.encode()))
        await self._close(final_status=True)
        self.log.info("agent.stopped")

    async def _close(self, *, final_status: bool = False) -> None:
        """Release the robot and the store: after this no callback touches agent state."""
        self._closed = True
        self.pump.stop()
        self.robot.worker.close()
        await asyncio.to_thread(self.robot.link.robot.close)
        if final_status:
            try:
                self.reporting.write_status()
            except OSError:
                pass
        self.ledger.commit()
        self.ledger.close()
        self.db.close()

    # --- robot side -------------------------------------------------------------------------------------
    def _post_snapshot(self, snap: Snapshot) -> None:
        try:
            self.loop.call_soon_threadsafe(self.on_snapshot, snap)
        except RuntimeError:
            pass  # loop already closed during shutdown

    def on_snapshot(self, snap: Snapshot) -> None:
        if self._closed:
            return
        robot = self.robot
        robot.snapshot = snap
        self.metrics.set("serial_frames", snap.frames)
        self.metrics.set("serial_checksum_errors", snap.checksum_errors)
        self.metrics.set("serial_link", "up" if snap.link_up else "down")
        for event in robot.tracker.on_snapshot(snap):
            self.events.emit(event)
        state = reported_state(snap, robot.tracker.state, self.version)
        state["versions"].update(self.update.versions())  # previous, trial, the last update, contract
        self.sync.set_robot_state(state)
        self.commands.on_snapshot(snap)
        self.health.check_ready()
        self.pump.pump()

    # --- mqtt side --------------------------------------------------------------------------------------
    def on_mqtt_event(self, event: MqttEvent) -> None:
        if self._closed:
            return
        now = time.monotonic()
        if isinstance(event, Message):
            handler = self.features.route(event.topic)
            if handler is not None:
                self.metrics.inc("messages_received")
                handler(event.topic, event.payload)
            else:
                self.pump.on_message(event.topic, event.payload, now)
        elif isinstance(event, Connected):
            self.metrics.inc("connections")
            if self.hooks.tcp_nodelay:
                self.metrics.set("tcp_nodelay_sockets", set_tcp_nodelay(self.config.port))
            link = self.cloud_link
            outage = {}
            if link.down_since is not None:
                outage = {"failed_attempts": link.attempt, "down_s": round(time.time() - link.down_since, 1)}
            self.log.info("mqtt.connected", session_present=event.session_present, **outage)
            link.up()
            self.publish_presence("online")
            self.pump.execute(self.sync.on_connected(event.session_present, now))
            self.features.connected(event.session_present)
            self.health.check_ready()
            self.events.send()
            self._status_changed()
        elif isinstance(event, Disconnected):
            self.metrics.inc("disconnects")
            self.metrics.inc(f"disconnect_reason_{event.reason}")
            quiet = self.stopping.is_set() or user_requested(event.reason)
            retry = {} if event.retry_in_s is None else {"retry_in_s": round(event.retry_in_s, 1)}
            (self.log.info if quiet else self.log.warning)("mqtt.disconnected", reason=event.reason, **retry)
            if event.retry_in_s is not None:
                self.metrics.inc("connection_attempts")
            self.cloud_link.down(event.reason, 0, event.retry_in_s, time.time())
            self.sync.on_disconnected()
            if event.fatal:
                self.on_fatal(event.reason, event.retry_in_s)
            self.health.check_ready()
            self._status_changed()
        elif isinstance(event, ConnectFailed):
            self.metrics.inc("connection_failures")
            self.metrics.inc(f"connection_failure_{event.reason}")
            if event.retry_in_s is not None:
                self.metrics.inc("connection_attempts")  # the attempt the schedule just planned
            # every failed attempt says why and when the next one is; the first of an outage as a warning
            log = self.log.warning if event.attempt <= 1 else self.log.info
            retry = {} if event.retry_in_s is None else {"retry_in_s": round(event.retry_in_s, 1)}
            log("mqtt.connect.failed", reason=event.reason, attempt=event.attempt, **retry)
            self.cloud_link.down(event.reason, event.attempt, event.retry_in_s, time.time())
            if event.fatal:
                self.on_fatal(event.reason, event.retry_in_s)
            self._status_changed()
        self.pump.pump()

    def _status_changed(self) -> None:
        """The connection went up or down: ``roomba-agent status`` should not wait for the next rewrite."""
        try:
            self.reporting.write_status()
        except OSError:
            pass

    def on_fatal(self, reason: str, retry_in_s: float | None) -> None:
        """Not authorized or session taken over: retrying hot will not help, so the MQTT client's schedule
        waits minutes (``agent.reconnect``); say so loudly."""
        when = "" if retry_in_s is None else f"; retrying in {round(retry_in_s)} s"
        self.log.error(
            "mqtt.fatal",
            reason=reason,
            retry_in_s=None if retry_in_s is None else round(retry_in_s),
            hint="another device uses this thing name, or the policy denies it: roomba-agent doctor",
        )
        self.notifier.status(f"MQTT refused ({reason}){when}")

    def publish_presence(self, state: str) -> None:
        body = {"state": state, "agent_version": self.version, "at": round(time.time(), 3)}
        fut = self.mqtt.publish(
            presence_topic(self.config.thing_name), json.dumps(body).encode(), 1, retain=True
        )
        fut.add_done_callback(self.pump.publish_done)


def refuse(log: AgentLog, notifier: Notifier, problems: Sequence[credentials.CredentialProblem]) -> int:
    for p in problems:
        log.error("credentials.refused", code=p.code, reason=p.message, hint=p.hint)
        print(f"roomba-agent: refusing to connect: {p.message}\n  fix: {p.hint}", file=sys.stderr)
    notifier.status("refusing to connect: " + problems[0].message[:200])
    return EX_CONFIG


async def run_agent(
    config: cfg.AgentConfig,
    notifier: Notifier,
    reconnect_max_ms: int = DEFAULT_RECONNECT_MAX_MS,
    credential_check: Callable[[], Sequence[credentials.CredentialProblem]] | None = None,
) -> int:
    """``roomba-agent run``'s agent: a process of its own, under systemd."""
    hooks = Hooks(
        robot=lambda: serial_robot(config),
        notifier=notifier,
        credential_check=credential_check,
        handle_signals=True,
        watchdog=True,
        tcp_nodelay=True,
        reconnect_max_ms=reconnect_max_ms,
    )
    return await Agent(config, hooks).run()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="roomba-agent run",
        description="Run the robot agent: shadow sync, commands, telemetry and events, until SIGTERM.",
        epilog="environment: ROOMBA_AGENT_RECONNECT_MAX_MS caps the reconnect delay "
        f"(default {DEFAULT_RECONNECT_MAX_MS} ms); ROOMBA_AGENT_LOG_LEVEL, ROOMBA_LOG_FORMAT=json|console",
        exit_codes={
            0: "stopped cleanly (SIGTERM or SIGINT)",
            1: "the agent failed (a feature did not start, or an OS error)",
            EX_CONFIG: "invalid configuration, or credentials refused (systemd does not restart it)",
            100: "an update asked for a switch to a new release: the launcher performs it and starts it",
            101: "a new release failed its self-test in its trial: the launcher rolls back",
        },
    )
    cfg.add_override_arguments(p)
    p.add_argument("--log-level", default=None, help="debug, info, warning or error")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    overrides = cfg.cli_overrides(args)
    if args.log_level:
        overrides["log_level"] = args.log_level
    configure(args.log_level or os.environ.get("ROOMBA_AGENT_LOG_LEVEL") or "info")
    log = get_logger("agent")
    notifier = Notifier()
    try:
        config = cfg.load(args.config, cli=overrides)
    except cfg.ConfigError as exc:
        for problem in exc.problems:
            print(f"roomba-agent: config problem: {problem}", file=sys.stderr)
        print(
            f"  fix the above, then check: roomba-agent config check --config {cfg.resolve_path(args.config)[0]}",
            file=sys.stderr,
        )
        notifier.status("invalid configuration: " + "; ".join(exc.problems)[:200])
        return EX_CONFIG
    configure(config.log_level)
    log = get_logger("agent", thing=config.thing_name)
    check = credentials.start_isolated_check(config.thing_name, config.cert, config.key)
    reconnect_max = int(os.environ.get("ROOMBA_AGENT_RECONNECT_MAX_MS", str(DEFAULT_RECONNECT_MAX_MS)))
    # hand-offs between the HAL reader, CRT and loop threads wait for the GIL; 5 ms by default
    sys.setswitchinterval(0.0005)
    try:
        return asyncio.run(run_agent(config, notifier, reconnect_max, check))
    except OSError as exc:
        log.error("agent.failed", error=str(exc))
        print(f"roomba-agent: {exc}", file=sys.stderr)
        return 1
