"""``roomba-agent run``: the long-running robot agent.

One asyncio loop owns all agent state; the HAL's reader thread, the CRT's threads and the robot worker only
post to it. The sync rules live in :mod:`agent.sync` (sans-I/O); this module executes their effects,
keeps the durable outbox flowing, writes the status file, and speaks to systemd.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__ as AGENT_VERSION
from agent import config as cfg
from agent import credentials
from agent.commands import warm_up
from agent.metrics import Metrics
from agent.model import Event, MissionTracker, Snapshot, reported_state, telemetry
from agent.sdnotify import Notifier
from agent.store import Ledger, Outbox, open_db
from agent.sync import (
    ApplySetting,
    CommandLog,
    Effect,
    Notice,
    Publish,
    RunCommand,
    ShadowSync,
    Subscribe,
)
from base.backoff import Backoff
from base.logs import configure, get_logger

EX_CONFIG = 78  # sysexits: systemd's RestartPreventExitStatus keeps a bad config from restart-looping
STATUS_FILE = "status.json"
INLINE_ACTIONS = frozenset({"clean", "spot", "max", "dock", "set_clock"})


def write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, separators=(",", ":"))
    os.replace(tmp, path)


class Agent:
    def __init__(
        self, config: cfg.AgentConfig, notifier: Notifier, *, reconnect_max_ms: int = 120000
    ) -> None:
        self.config = config
        self.notifier = notifier
        self.reconnect_max_ms = reconnect_max_ms
        self.log = get_logger("agent", thing=config.thing_name)
        self.metrics = Metrics()
        self.db = open_db(config.state_dir)
        self.ledger = Ledger(self.db)
        self.outbox = Outbox(self.db, config.thing_name, config.outbox_max_events)
        iv = config.intervals
        self.settings: dict[str, Any] = {
            "report_min_s": iv.report_min_s,
            "heartbeat_s": iv.heartbeat_s,
            "telemetry_s": iv.telemetry_s,
            "metrics_s": iv.metrics_s,
            "log_level": config.log_level,
        }
        self.sync = ShadowSync(
            config.thing_name,
            self.ledger,
            self.metrics,
            report_min_s=iv.report_min_s,
            heartbeat_s=iv.heartbeat_s,
            rate_per_s=config.shadow_rate_per_s,
            qos=0 if config.local else 1,
            settings=self.settings,
        )
        self.tracker = MissionTracker()
        self.snapshot: Snapshot | None = None
        self.started = time.monotonic()
        self.ready = False
        self.stopping = asyncio.Event()
        self._wake: asyncio.TimerHandle | None = None
        self._outbox_busy = False
        self._outbox_retry = Backoff(base_s=0.5, cap_s=30.0)
        self._drive_timer: asyncio.TimerHandle | None = None
        self._driving: str | None = None
        self._commands_running = 0
        self._message_at = 0.0
        self._status_text = ""
        self._wheels_must_stop = False
        self.loop = asyncio.get_running_loop()
        self.mqtt: Any = None
        self.robot_link: Any = None
        self.worker: Any = None
        # run_agent (one client per process) turns Nagle off on the MQTT socket; a process hosting many
        # agents (the fleet simulator) leaves it, as scanning its descriptors on every connect would cost
        self.tcp_nodelay = False

    # --- start-up ------------------------------------------------------------------------------------------
    def recover_ledger(self) -> None:
        for entry in self.ledger.unfinished():
            reason = "agent restarted before the command finished; not retried"
            self.ledger.finish(entry.id, "failed", reason)
            self.log.warning("command.interrupted", command_id=entry.id, action=entry.action)
            if entry.action == "drive":
                # the robot may still be driving on the last Drive it got: stop it once the link is up
                self._wheels_must_stop = True
        self.ledger.commit()

    def start_robot(self) -> None:
        from agent.robot_link import FRAMES_PER_READ, RobotLink, Worker
        from hal.robot import Robot

        robot = Robot(
            self.config.serial_port, model=self.config.model, hold_mode=None, frames_per_read=FRAMES_PER_READ
        )
        self.robot_link = RobotLink(robot, self._post_snapshot, sample_s=min(1.0, self.sync.report_min_s))
        self.worker = Worker()
        robot.start()

    def start_mqtt(self) -> None:
        from agent.mqtt import MqttClient

        self.mqtt = MqttClient(
            self.config, self.loop, self.on_mqtt_event, reconnect_max_ms=self.reconnect_max_ms
        )
        self.metrics.inc("connection_attempts")
        self.mqtt.start()

    # --- robot side ----------------------------------------------------------------------------------------
    def _post_snapshot(self, snap: Snapshot) -> None:
        try:
            self.loop.call_soon_threadsafe(self.on_snapshot, snap)
        except RuntimeError:
            pass

    def on_snapshot(self, snap: Snapshot) -> None:
        self.snapshot = snap
        self.metrics.set("serial_frames", snap.frames)
        self.metrics.set("serial_checksum_errors", snap.checksum_errors)
        self.metrics.set("serial_link", "up" if snap.link_up else "down")
        for event in self.tracker.on_snapshot(snap):
            self.emit(event)
        self.sync.set_robot_state(reported_state(snap, self.tracker.state, AGENT_VERSION))
        if snap.link_up and self._wheels_must_stop and self._driving is None:
            self.stop_wheels_if_needed()
        self.check_ready()
        self.pump()

    def emit(self, event: Event) -> None:
        queued = self.outbox.put(event.kind, {"at": round(time.time(), 3), **event.data})
        self.metrics.inc(f"events_{event.kind}")
        self.log.info("event.queued", kind=event.kind, event_id=queued.event_id)
        self.metrics.set("outbox_depth", self.outbox.depth())
        self.pump_outbox()

    # --- mqtt side -----------------------------------------------------------------------------------------
    def on_mqtt_event(self, event: Any) -> None:
        from agent.mqtt import Connected, ConnectFailed, Disconnected, Message

        now = time.monotonic()
        if isinstance(event, Message):
            self._message_at = time.perf_counter()
            self.metrics.inc("messages_received")
            self.execute(self.sync.on_message(event.topic, event.payload, now))
        elif isinstance(event, Connected):
            self.metrics.inc("connections")
            if self.tcp_nodelay:
                from agent.mqtt import set_tcp_nodelay

                self.metrics.set("tcp_nodelay_sockets", set_tcp_nodelay(self.config.port))
            self.log.info("mqtt.connected", session_present=event.session_present)
            self.publish_presence("online")
            self.execute(self.sync.on_connected(event.session_present, now))
            self.check_ready()
            self.pump_outbox()
        elif isinstance(event, Disconnected):
            self.metrics.inc("disconnects")
            self.metrics.inc(f"disconnect_reason_{event.reason}")
            quiet = self.stopping.is_set() or event.reason.endswith("user_requested_stop")
            (self.log.info if quiet else self.log.warning)("mqtt.disconnected", reason=event.reason)
            self.sync.on_disconnected()
            if event.fatal:
                self.on_fatal(event.reason)
        elif isinstance(event, ConnectFailed):
            self.metrics.inc("connection_failures")
            self.metrics.inc(f"connection_failure_{event.reason}")
            self.metrics.inc("connection_attempts")
            log = self.log.warning if self.metrics.counters["connection_failures"] == 1 else self.log.debug
            log("mqtt.connect.failed", reason=event.reason)
            if event.fatal:
                self.on_fatal(event.reason)
        self.pump()

    def on_fatal(self, reason: str) -> None:
        """Not authorized or session taken over: the CRT would retry hot; stop and come back much later."""
        delay = Backoff(base_s=60, cap_s=300).next_delay(fatal=True) + 60
        self.log.error(
            "mqtt.fatal",
            reason=reason,
            retry_in_s=round(delay),
            hint="another device uses this thing name, or the policy denies it: roomba-agent doctor",
        )
        self.notifier.status(f"MQTT refused ({reason}); retrying in {round(delay)} s")
        mqtt = self.mqtt

        async def restart() -> None:
            await mqtt.stop(timeout=5)
            await asyncio.sleep(delay)
            if not self.stopping.is_set():
                self.start_mqtt()

        self.loop.create_task(restart())

    def publish_presence(self, state: str) -> None:
        from agent.mqtt import presence_topic

        body = {"state": state, "agent_version": AGENT_VERSION, "at": round(time.time(), 3)}
        fut = self.mqtt.publish(
            presence_topic(self.config.thing_name), json.dumps(body).encode(), 1, retain=True
        )
        fut.add_done_callback(self._publish_done)

    # --- effects -------------------------------------------------------------------------------------------
    def execute(self, effects: Sequence[Effect]) -> None:
        for eff in effects:
            if isinstance(eff, Publish):
                if self.mqtt is not None and self.mqtt.connected:
                    self.metrics.inc("publishes")
                    fut = self.mqtt.publish(eff.topic, eff.payload, eff.qos)
                    fut.add_done_callback(self._publish_done)
            elif isinstance(eff, Subscribe):
                qos = 0 if self.config.local else 1
                for fut in self.mqtt.subscribe(eff.topics, qos):
                    fut.add_done_callback(self._publish_done)
            elif isinstance(eff, RunCommand):
                self.run_command(eff)
            elif isinstance(eff, ApplySetting):
                self.apply_setting(eff)
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

    def _publish_done(self, fut: asyncio.Future[Any]) -> None:
        """A failed publish, or a QoS 1 PUBACK with a failure reason (0x87 not authorized: the policy denies
        the topic), is counted and logged once per reason; the request's own timeout retries it."""
        from agent.mqtt import puback_ok

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

    def run_command(self, eff: RunCommand) -> None:
        cmd = eff.command
        if self._driving is not None and self._drive_timer is not None:
            # any new command supersedes a manual drive: stop the wheels first (same worker queue, in order)
            self._drive_timer.cancel()
            self._finish_drive(self._driving, "superseded by command " + cmd.id)
        if self.robot_link is None or not self.robot_link.link_up:
            self.finish_command(cmd.id, "failed", "serial link to the robot is down")
            return

        def done(exc: BaseException | None) -> None:
            self.loop.call_soon_threadsafe(self._command_ran, cmd, exc)

        if cmd.action in INLINE_ACTIONS:
            # one short serial write: run it right here, no thread hop (this is the latency path)
            try:
                self.robot_link.run(cmd)
                self.metrics.observe("command_to_oi", time.perf_counter() - self._message_at)
            except Exception as exc:
                self._commands_running += 1
                self._command_ran(cmd, exc)
                return
            self._commands_running += 1
            self._command_ran(cmd, None)
            return
        self._commands_running += 1
        self.worker.submit(lambda: self.robot_link.run(cmd), done)

    def _command_ran(self, cmd: Any, exc: BaseException | None) -> None:
        self._commands_running -= 1
        if exc is not None:
            self.finish_command(cmd.id, "failed", str(exc))
            return
        if cmd.action == "drive":
            self._driving = cmd.id
            self.sync.command_progress(cmd.id, "accepted")
            self._drive_timer = self.loop.call_later(
                cmd.args["duration_ms"] / 1000.0, self._finish_drive, cmd.id, None
            )
            self.pump()
            self.ledger.commit()
        else:
            self.finish_command(cmd.id, "done", None)
        # events (each a durable outbox row) only for what the robot was told, and after the answer
        for event in self.tracker.on_command(cmd.action):
            self.emit(event)

    def _finish_drive(self, command_id: str, reason: str | None) -> None:
        self._driving = None
        self._drive_timer = None
        self.tracker.on_drive_finished()

        def done(exc: BaseException | None) -> None:
            status = "failed" if exc is not None else "done"
            why = (
                f"the dead-man stop could not be sent ({exc}); retried when the link returns"
                if exc
                else reason
            )
            if exc is not None:
                self._wheels_must_stop = True
            self.loop.call_soon_threadsafe(self.finish_command, command_id, status, why)

        self.worker.submit(self.robot_link.end_drive, done)

    def stop_wheels_if_needed(self) -> None:
        """A drive whose stop never reached the robot (link cut, agent killed): stop it as soon as we can."""
        if not self._wheels_must_stop or self.robot_link is None or not self.robot_link.link_up:
            return
        self._wheels_must_stop = False

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                self._wheels_must_stop = True
            else:
                self.log.info("drive.stopped_after_interruption")

        self.worker.submit(self.robot_link.end_drive, done)

    def finish_command(self, command_id: str, status: str, reason: str | None) -> None:
        """Answer first, then log it and make the outcome durable: the answer waits for neither."""
        effects = self.sync.command_finished(command_id, status, reason)
        self.pump()
        self.execute(effects)
        self.ledger.commit()

    def apply_setting(self, eff: ApplySetting) -> None:
        if eff.shadow is not None:
            self.apply_agent_setting(eff.key, eff.value)
            self.sync.setting_result(eff.shadow, eff.key, eff.value, None)
            return
        if self.robot_link is None or not self.robot_link.link_up:
            self.sync.setting_result(None, eff.key, eff.value, "serial link to the robot is down; will retry")
            return

        def done(exc: BaseException | None) -> None:
            def back() -> None:
                self.sync.setting_result(None, eff.key, eff.value, str(exc) if exc else None)
                self.log.info(
                    "setting.applied" if exc is None else "setting.failed",
                    key=eff.key,
                    error=str(exc) if exc else None,
                )
                self.pump()

            self.loop.call_soon_threadsafe(back)

        self.worker.submit(lambda: self.robot_link.apply(eff.key, eff.value), done)

    def apply_agent_setting(self, key: str, value: Any) -> None:
        self.settings[key] = value
        if key == "report_min_s":
            self.sync.report_min_s = float(value)
            if self.robot_link is not None:
                self.robot_link.sample_s = min(1.0, float(value))
        elif key == "heartbeat_s":
            self.sync.heartbeat_s = float(value)
        elif key == "log_level":
            configure(str(value))
            self.log = get_logger("agent", thing=self.config.thing_name)
        self.log.info("config.applied", key=key, value=value)

    # --- the pump: flush the sync engine, schedule the next wake-up ------------------------------------
    def pump(self) -> None:
        """Publish what the sync engine allows now. While a command's OI bytes are being written, wait:
        its ``done`` then goes out in the same update as ``accepted`` would have (one request, not two)."""
        now = time.monotonic()
        if self._commands_running == 0:
            self.execute(self.sync.flush(now))
        if self._wake is not None:
            self._wake.cancel()
        self._wake = self.loop.call_later(max(0.01, self.sync.next_wakeup(now)), self.pump)

    def pump_outbox(self) -> None:
        """Send the oldest event, wait for its PUBACK, delete it, repeat: in order, at least once."""
        if self._outbox_busy or self.mqtt is None or not self.mqtt.connected:
            return
        head = self.outbox.head()
        if head is None:
            self.metrics.set("outbox_depth", 0)
            return
        self._outbox_busy = True
        fut = self.mqtt.publish(f"roomba/{self.config.thing_name}/events", head.to_json(), 1)

        def done(f: asyncio.Future[Any]) -> None:
            from agent.mqtt import puback_ok

            self._outbox_busy = False
            ok, why = (False, "error") if f.cancelled() or f.exception() else puback_ok(f.result())
            if ok:
                self.outbox.ack(head.seq)
                self.metrics.inc("events_delivered")
                self._outbox_retry.reset()
                self.metrics.set("outbox_depth", self.outbox.depth())
                self.pump_outbox()
            else:
                self.metrics.inc(f"events_publish_failed_{why}")
                delay = self._outbox_retry.next_delay()
                if self._outbox_retry.attempt == 1:
                    self.log.warning(
                        "events.publish.failed",
                        reason=why,
                        event_id=head.event_id,
                        retry_in_s=round(delay, 1),
                        hint="PUBACK not_authorized: the IoT policy must allow roomba/<thing>/events",
                    )
                self.loop.call_later(delay, self.pump_outbox)

        fut.add_done_callback(done)

    # --- periodic tasks ------------------------------------------------------------------------------------
    def check_ready(self) -> None:
        waiting = []
        if self.robot_link is None or not self.robot_link.link_up or self.snapshot is None:
            waiting.append("the serial link to the robot")
        if self.mqtt is None or not self.mqtt.connected:
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
        if self.worker is not None and not self.worker.alive:
            return False, "robot worker thread died"
        robot = self.robot_link.robot if self.robot_link is not None else None
        thread = getattr(robot, "_thread", None)
        if robot is not None and (thread is None or not thread.is_alive()):
            return False, "HAL reader thread died"
        if self.sync.get_timeouts >= 3 and self.mqtt is not None and self.mqtt.connected:
            return False, "MQTT client connected but shadow requests time out"
        return True, "ok"

    async def watchdog_task(self) -> None:
        interval = (self.notifier.watchdog_s or 10.0) / 2
        while not self.stopping.is_set():
            ok, why = self.healthy()
            if ok:
                self.notifier.watchdog()
            else:
                self.log.error("agent.unhealthy", reason=why)
                self.notifier.status(f"unhealthy: {why}")
            await asyncio.sleep(interval)

    async def periodic(self, name: str, interval: Any, fn: Any) -> None:
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), float(interval()))
            except TimeoutError:
                try:
                    fn()
                except Exception:
                    self.log.exception("agent.periodic.failed", task=name)

    def health_probe(self) -> None:
        self.execute(self.sync.probe(time.monotonic()))
        self.pump()

    def send_telemetry(self) -> None:
        if self.snapshot is not None and self.mqtt is not None and self.mqtt.connected:
            body = {"at": round(time.time(), 3), "mission": self.tracker.state, **telemetry(self.snapshot)}
            self.mqtt.publish(f"roomba/{self.config.thing_name}/telemetry", json.dumps(body).encode(), 0)
            self.metrics.inc("telemetry_sent")

    def status_doc(self) -> dict[str, Any]:
        snap = self.snapshot
        self.metrics.set("outbox_depth", self.outbox.depth())
        self.metrics.set("outbox_dropped", self.outbox.dropped())
        if self.mqtt is not None:
            self.metrics.set("mqtt_pending_operations", self.mqtt.pending_operations())
        return {
            "thing_name": self.config.thing_name,
            "pid": os.getpid(),
            "agent_version": AGENT_VERSION,
            "written_at": round(time.time(), 3),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "ready": self.ready,
            "mqtt": {
                "endpoint": f"{self.config.endpoint}:{self.config.port}",
                "connected": bool(self.mqtt and self.mqtt.connected),
            },
            "robot": {
                "port": self.config.serial_port,
                "link_up": bool(snap and snap.link_up),
                "mission": self.tracker.state,
                "reported": reported_state(snap, self.tracker.state, AGENT_VERSION) if snap else None,
            },
            "last_command": self.sync.classic.current.get("command"),
            "errors": self.sync.classic.current.get("errors"),
            "settings": self.settings,
            "metrics": self.metrics.snapshot(),
        }

    def write_status(self) -> None:
        write_json_atomic(Path(self.config.state_dir) / STATUS_FILE, self.status_doc())

    def send_metrics(self) -> None:
        if self.mqtt is not None and self.mqtt.connected:
            body = {"at": round(time.time(), 3), **self.status_doc()["metrics"]}
            self.mqtt.publish(f"roomba/{self.config.thing_name}/metrics", json.dumps(body).encode(), 0)

    # --- shutdown ------------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        self.notifier.stopping("stopping: disconnecting")
        self.log.info("agent.stopping")
        if self._drive_timer is not None and self._driving is not None:
            self._drive_timer.cancel()
            self._finish_drive(self._driving, "agent stopping")
            await asyncio.sleep(0.05)
        if self.mqtt is not None:
            from agent.mqtt import presence_topic

            goodbye = json.dumps({"state": "offline", "reason": "agent stopped", "at": round(time.time(), 3)})
            await self.mqtt.stop((presence_topic(self.config.thing_name), goodbye.encode()))
        if self.worker is not None:
            self.worker.close()
        if self.robot_link is not None:
            await asyncio.to_thread(self.robot_link.robot.close)
        try:
            self.write_status()
        except OSError:
            pass
        self.ledger.commit()
        self.ledger.close()
        self.db.close()


def refuse(log: Any, notifier: Notifier, problems: Sequence[credentials.CredentialProblem]) -> int:
    for p in problems:
        log.error("credentials.refused", code=p.code, reason=p.message, hint=p.hint)
        print(f"roomba-agent: refusing to connect: {p.message}\n  fix: {p.hint}", file=sys.stderr)
    notifier.status("refusing to connect: " + problems[0].message[:200])
    return EX_CONFIG


async def run_agent(
    config: cfg.AgentConfig,
    notifier: Notifier,
    reconnect_max_ms: int = 120000,
    credential_check: Callable[[], list[credentials.CredentialProblem]] | None = None,
) -> int:
    agent = Agent(config, notifier, reconnect_max_ms=reconnect_max_ms)
    agent.tcp_nodelay = True
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stopping.set)
    agent.recover_ledger()
    notifier.status("starting: opening the serial link and checking credentials")
    agent.start_robot()
    if credential_check is not None:
        problems = await loop.run_in_executor(None, credential_check)
        if problems:
            await asyncio.to_thread(agent.robot_link.robot.close)
            agent.worker.close()
            agent.db.close()
            return refuse(agent.log, notifier, problems)
    agent.start_mqtt()
    agent.check_ready()
    agent.pump()
    tasks = [
        loop.create_task(agent.watchdog_task()),
        loop.create_task(agent.periodic("status", lambda: config.intervals.status_s, agent.write_status)),
        loop.create_task(
            agent.periodic("telemetry", lambda: agent.settings["telemetry_s"], agent.send_telemetry)
        ),
        loop.create_task(agent.periodic("metrics", lambda: agent.settings["metrics_s"], agent.send_metrics)),
        loop.create_task(
            agent.periodic("probe", lambda: config.intervals.health_probe_s, agent.health_probe)
        ),
    ]
    agent.write_status()
    await agent.stopping.wait()
    for task in tasks:
        task.cancel()
    await agent.shutdown()
    agent.log.info("agent.stopped")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roomba-agent run", description="run the robot agent")
    cfg.add_override_arguments(p)
    p.add_argument("--log-level", default=None, help="debug, info, warning, error")
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
            f"  fix the above, then check: roomba-agent doctor --config {args.config or 'FILE'}",
            file=sys.stderr,
        )
        notifier.status("invalid configuration: " + "; ".join(exc.problems)[:200])
        return EX_CONFIG
    configure(config.log_level)
    log = get_logger("agent", thing=config.thing_name)
    check = credentials.start_isolated_check(config.thing_name, config.cert, config.key)
    reconnect_max = int(os.environ.get("ROOMBA_AGENT_RECONNECT_MAX_MS", "120000"))
    # hand-offs between the HAL reader, CRT and loop threads wait for the GIL; 5 ms by default
    sys.setswitchinterval(0.0005)
    try:
        return asyncio.run(run_agent(config, notifier, reconnect_max, check))
    except OSError as exc:
        log.error("agent.failed", error=str(exc))
        print(f"roomba-agent: {exc}", file=sys.stderr)
        return 1
