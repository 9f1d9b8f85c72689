"""Robot commands from the shadow, and the drive dead-man.

The sync engine decides which commands run (at most once per id, through the durable ledger); this feature
runs them on the robot and answers. The answer goes out first, then the log line and the ledger commit.
The one-write actions run right on the loop (no thread hop: this is the latency path); the others on the
robot worker. A ``drive`` keeps the wheels turning until told otherwise (OI Drive, opcode 137), so a timer
stops it after ``duration_ms``; a drive cut short by a restart is stopped as soon as the link is up again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.commands import Command
from agent.features.events import Events
from agent.metrics import Metrics
from agent.model import Snapshot
from agent.parts import AgentLog, RobotSide
from agent.pump import Pump
from agent.store import Ledger
from agent.sync import RunCommand, ShadowSync

INLINE_ACTIONS = frozenset({"clean", "spot", "max", "dock", "set_clock"})

# (command id, final status, reason, ledger document): every outcome, from any channel; the document is
# given only for a command a previous run left unfinished (failed at start-up), so its channel can be told
OutcomeListener = Callable[[str, str, str | None, Mapping[str, Any] | None], None]


class Commands:
    name = "commands"

    def __init__(
        self,
        *,
        robot: RobotSide,
        sync: ShadowSync,
        ledger: Ledger,
        pump: Pump,
        events: Events,
        metrics: Metrics,
        log: AgentLog,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.robot = robot
        self.sync = sync
        self.ledger = ledger
        self.pump = pump
        self.events = events
        self.metrics = metrics
        self.log = log
        self.loop = loop
        self.driving: str | None = None
        self._drive_timer: asyncio.TimerHandle | None = None
        self._wheels_must_stop = False
        self._outcome_listeners: list[OutcomeListener] = []
        pump.route(RunCommand, self.run)

    def on_outcome(self, listener: OutcomeListener) -> None:
        """Tell ``listener`` every command's final status (another channel than the shadow, such as AWS IoT
        Commands, answers its own commands from it); called after the shadow answer, before the commit."""
        self._outcome_listeners.append(listener)

    def _tell(
        self, command_id: str, status: str, reason: str | None, document: Mapping[str, Any] | None
    ) -> None:
        for listener in self._outcome_listeners:
            try:
                listener(command_id, status, reason, document)
            except Exception:
                self.log.exception("command.outcome_listener_failed", command_id=command_id)

    def start(self) -> None:
        """Fail what a previous run left unfinished (never retried), and stop an interrupted drive."""
        for entry in self.ledger.unfinished():
            reason = "agent restarted before the command finished; not retried"
            self.ledger.finish(entry.id, "failed", reason)
            self.log.warning("command.interrupted", command_id=entry.id, action=entry.action)
            self._tell(entry.id, "failed", reason, entry.document)
            if entry.action == "drive":
                # the robot may still be driving on the last Drive it got: stop it once the link is up
                self._wheels_must_stop = True
        self.ledger.commit()
        self.stop_wheels_if_needed()

    async def stop(self) -> None:
        if self._drive_timer is not None and self.driving is not None:
            self._drive_timer.cancel()
            self._finish_drive(self.driving, "agent stopping")
            await asyncio.sleep(0.05)

    def on_snapshot(self, snap: Snapshot) -> None:
        if snap.link_up and self._wheels_must_stop and self.driving is None:
            self.stop_wheels_if_needed()

    def run(self, eff: RunCommand) -> None:
        cmd = eff.command
        superseding = False
        if self.driving is not None and self._drive_timer is not None:
            # any new command supersedes a manual drive: stop the wheels first; the new command then goes
            # through the same worker queue, so the robot gets the stop before it (never after a Clean)
            self._drive_timer.cancel()
            self._finish_drive(self.driving, "superseded by command " + cmd.id)
            superseding = True
        link = self.robot.link
        if not link.link_up:
            self.finish(cmd.id, "failed", "serial link to the robot is down")
            return

        def done(exc: BaseException | None) -> None:
            self.loop.call_soon_threadsafe(self._ran, cmd, exc)

        self.pump.hold()
        if cmd.action in INLINE_ACTIONS and not superseding:
            # one short serial write: run it right here, no thread hop
            try:
                link.run(cmd)
                self.metrics.observe("command_to_oi", time.perf_counter() - self.pump.received_at)
            except Exception as exc:
                self._ran(cmd, exc)
                return
            self._ran(cmd, None)
            return
        self.robot.worker.submit(lambda: link.run(cmd), done)

    def _ran(self, cmd: Command, exc: BaseException | None) -> None:
        self.pump.release()
        if exc is not None:
            self.finish(cmd.id, "failed", str(exc))
            return
        if cmd.action == "drive":
            self.driving = cmd.id
            self.sync.command_progress(cmd.id, "accepted")
            self._drive_timer = self.loop.call_later(
                cmd.args["duration_ms"] / 1000.0, self._finish_drive, cmd.id, None
            )
            self.pump.pump()
            self.ledger.commit()
        else:
            self.finish(cmd.id, "done", None)
        # events (each a durable outbox row) only for what the robot was told, and after the answer
        for event in self.robot.tracker.on_command(cmd.action):
            self.events.emit(event)

    def _finish_drive(self, command_id: str, reason: str | None) -> None:
        self.driving = None
        self._drive_timer = None
        self.robot.tracker.on_drive_finished()

        def done(exc: BaseException | None) -> None:
            status = "failed" if exc is not None else "done"
            why = (
                f"the dead-man stop could not be sent ({exc}); retried when the link returns"
                if exc
                else reason
            )
            if exc is not None:
                self._wheels_must_stop = True
            self.loop.call_soon_threadsafe(self.finish, command_id, status, why)

        self.robot.worker.submit(self.robot.link.end_drive, done)

    def stop_wheels_if_needed(self) -> None:
        """A drive whose stop never reached the robot (link cut, agent killed): stop it as soon as we can."""
        if not self._wheels_must_stop or not self.robot.link_up:
            return
        self._wheels_must_stop = False

        def done(exc: BaseException | None) -> None:
            if exc is not None:
                self._wheels_must_stop = True
            else:
                self.log.info("drive.stopped_after_interruption")

        self.robot.worker.submit(self.robot.link.end_drive, done)

    def finish(self, command_id: str, status: str, reason: str | None) -> None:
        """Answer first, then log it and make the outcome durable: the answer waits for neither."""
        effects = self.sync.command_finished(command_id, status, reason)
        self.pump.pump()
        self.pump.execute(effects)
        self._tell(command_id, status, reason, None)
        self.ledger.commit()
