"""Desired settings: ``schedule`` and ``leds`` on the robot, the agent's own from the ``config`` named shadow.

The sync engine validates each key and reports the outcome; this feature applies it. Robot settings run on
the robot worker (Safe mode is entered and confirmed first); agent settings take effect at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.config import AgentConfig
from agent.parts import AgentLog, RobotSide
from agent.pump import Pump
from agent.sync import ApplySetting, ShadowSync


def initial_settings(config: AgentConfig) -> dict[str, Any]:
    """The agent settings the ``config`` shadow may change, as the configuration file set them."""
    iv = config.intervals
    return {
        "report_min_s": iv.report_min_s,
        "heartbeat_s": iv.heartbeat_s,
        "telemetry_s": iv.telemetry_s,
        "metrics_s": iv.metrics_s,
        "log_level": config.log_level,
    }


class Settings:
    name = "settings"

    def __init__(
        self,
        *,
        values: dict[str, Any],
        robot: RobotSide,
        sync: ShadowSync,
        pump: Pump,
        log: AgentLog,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.values = values
        self.robot = robot
        self.sync = sync
        self.pump = pump
        self.log = log
        self.loop = loop
        pump.route(ApplySetting, self.apply)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def apply(self, eff: ApplySetting) -> None:
        if eff.shadow is not None:
            self.apply_agent_setting(eff.key, eff.value)
            self.sync.setting_result(eff.shadow, eff.key, eff.value, None)
            return
        link = self.robot.link
        if not link.link_up:
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
                self.pump.pump()

            self.loop.call_soon_threadsafe(back)

        self.robot.worker.submit(lambda: link.apply(eff.key, eff.value), done)

    def apply_agent_setting(self, key: str, value: Any) -> None:
        self.values[key] = value
        if key == "report_min_s":
            self.sync.report_min_s = float(value)
            self.robot.link.sample_s = min(1.0, float(value))
        elif key == "heartbeat_s":
            self.sync.heartbeat_s = float(value)
        elif key == "log_level":
            self.log.set_level(str(value))
        self.log.info("config.applied", key=key, value=value)
