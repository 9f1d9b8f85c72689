"""Parts of the agent that the wiring and several features share: the agent's log and the robot side."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.model import MissionTracker, Snapshot
from agent.robot_link import RobotLink, RobotWorker
from base.logs import configure, get_logger


class AgentLog:
    """The agent's logger (name ``agent``, bound to the thing name), one object for every part.

    A bound structlog logger keeps the level it was bound with, so a log-level change at run time (the
    ``config`` shadow's ``log_level``) rebinds this one object instead of each holder's copy.
    """

    def __init__(self, thing: str) -> None:
        self.thing = thing
        self._log = get_logger("agent", thing=thing)

    def set_level(self, level: str) -> None:
        configure(level)
        self._log = get_logger("agent", thing=self.thing)

    def debug(self, event: str, **fields: object) -> None:
        self._log.debug(event, **fields)

    def info(self, event: str, **fields: object) -> None:
        self._log.info(event, **fields)

    def warning(self, event: str, **fields: object) -> None:
        self._log.warning(event, **fields)

    def error(self, event: str, **fields: object) -> None:
        self._log.error(event, **fields)

    def exception(self, event: str, **fields: object) -> None:
        self._log.exception(event, **fields)


@dataclass
class RobotSide:
    """The robot as the agent's loop sees it.

    ``link`` delivers snapshots from the HAL's reader and runs the one-write actions; ``worker`` runs the
    blocking calls. ``snapshot`` (the latest) and ``tracker`` (the mission it implies) change on the loop
    only, with each snapshot the link posts.
    """

    link: RobotLink
    worker: RobotWorker
    tracker: MissionTracker = field(default_factory=MissionTracker)
    snapshot: Snapshot | None = None

    @property
    def link_up(self) -> bool:
        return self.link.link_up


@dataclass
class CloudLink:
    """The MQTT connection's story as ``status.json`` tells it: while it is down, which attempt failed
    last, why, and when the next one is (wall-clock times: another process reads them)."""

    connected: bool = False
    attempt: int = 0
    next_retry_at: float | None = None
    last_error: str | None = None
    down_since: float | None = None

    def up(self) -> None:
        self.connected = True
        self.attempt = 0
        self.next_retry_at = None
        self.down_since = None

    def down(self, reason: str, attempt: int, retry_in_s: float | None, now: float) -> None:
        self.connected = False
        self.attempt = attempt
        self.last_error = reason
        self.next_retry_at = None if retry_in_s is None else round(now + retry_in_s, 3)
        if self.down_since is None:
            self.down_since = round(now, 3)

    def to_json(self) -> dict[str, object]:
        return {
            "attempt": self.attempt,
            "next_retry_at": self.next_retry_at,
            "last_error": self.last_error,
            "down_since": self.down_since,
        }
