"""Glue between the HAL's ``Robot`` and the agent: state snapshots out, validated commands in.

The listener runs on the HAL's reader thread at the stream rate (every 15 ms). It forwards a snapshot to
the agent's loop only when something that matters changed, or every ``sample_s``, so an idle robot costs
the agent almost nothing; the reader itself wakes once per ``FRAMES_PER_READ`` frames. Blocking robot calls
run on a :class:`RobotWorker`, never on the loop: ``set_mode`` waits for the mode to be confirmed by the
stream.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from agent.commands import Command
from agent.model import (
    P_BUMPS_DROPS,
    P_CAPACITY,
    P_CHARGE,
    P_CHARGING_STATE,
    P_CLIFFS,
    P_OVERCURRENTS,
    P_SOURCES,
    Snapshot,
)
from hal.errors import HalError
from hal.opcodes import OIMode
from hal.packets import KEY_TO_ID, PACKETS
from hal.robot import LinkDown, LinkUp, ModeChanged, Robot, RobotEvent, RobotState, StateUpdated

_WATCH = [PACKETS[p].key for p in (P_BUMPS_DROPS, *P_CLIFFS, P_OVERCURRENTS, P_CHARGING_STATE, P_SOURCES)]
_CHARGE, _CAPACITY = PACKETS[P_CHARGE].key, PACKETS[P_CAPACITY].key
_SOURCES = PACKETS[P_SOURCES].key
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
LOCATE_SONG = 3
# the reader wakes every third frame (45 ms): a third of the wake-ups, which are most of its CPU; the agent
# reports at most every report_min_s, and Robot.wait_for (mode changes) still sees every frame
FRAMES_PER_READ = 3
LOCATE_NOTES = ((84, 8), (88, 8), (91, 8), (96, 16), (91, 8), (96, 24))


def snapshot(state: RobotState) -> Snapshot:
    sensors = {KEY_TO_ID[k]: v for k, v in state.sensors.items() if k in KEY_TO_ID}
    pose = state.pose
    return Snapshot(
        sensors=sensors,
        oi_mode=int(state.oi_mode) if state.oi_mode is not None else None,
        pose=(pose.x_mm, pose.y_mm, pose.theta_rad) if state.updated_at is not None else None,
        link_up=state.link.connected,
        frames=state.link.frames_ok,
        checksum_errors=state.link.frames_corrupt,
        firmware=state.firmware,
    )


class RobotLink:
    def __init__(self, robot: Robot, post: Callable[[Snapshot], None], sample_s: float = 1.0) -> None:
        self.robot = robot
        self._post = post
        self.sample_s = sample_s
        self._last_key: tuple[Any, ...] | None = None
        self._last_post = -1e9
        robot.add_listener(self._listener)

    def _listener(self, event: RobotEvent) -> None:
        """Per frame: a dozen lookups and one tuple compare; a snapshot is built only when it is posted."""
        if type(event) is StateUpdated:
            state = event.state
            s = state.sensors
            capacity = s.get(_CAPACITY) or 0
            key = (
                *map(s.get, _WATCH),
                state.oi_mode,
                (100 * (s.get(_CHARGE) or 0) // capacity) if capacity else None,
            )
            now = state.updated_at or 0.0
            if key != self._last_key or now - self._last_post >= self.sample_s:
                self._last_key, self._last_post = key, now
                self._post(snapshot(state))
        elif isinstance(event, LinkDown | LinkUp | ModeChanged):
            self._last_key = None
            self._post(snapshot(self.robot.state))

    @property
    def link_up(self) -> bool:
        return bool(self.robot.state.link.connected)

    @property
    def reader_alive(self) -> bool:
        """Whether the HAL's reader runs (a dead reader means no snapshot, no reconnect: restart us)."""
        return bool(self.robot.reader_alive)

    # actions (worker thread) ------------------------------------------------------------------------------
    def _to_passive(self) -> None:
        self.robot.set_mode(OIMode.PASSIVE, wait=None)

    def run(self, cmd: Command) -> None:
        """Send the command's OI bytes. Raises HalError (link down, wrong mode) for a ``failed`` answer."""
        r = self.robot
        a = cmd.action
        if a == "clean":
            r.clean()
        elif a == "spot":
            r.spot()
        elif a == "max":
            r.max_clean()
        elif a == "dock":
            r.seek_dock()
        elif a == "stop":
            # leaves any mission: Safe stops the firmware's cleaning, then back to Passive so it can charge
            r.set_mode(OIMode.SAFE, wait=1.0)
            r.stop()
            self._to_passive()
        elif a == "locate":
            r.set_mode(OIMode.SAFE, wait=1.0)
            r.define_song(LOCATE_SONG, LOCATE_NOTES)
            r.play_song(LOCATE_SONG)
        elif a == "drive":
            if r.state.sensors.get(_SOURCES, 0) & 0b10:
                raise HalError(
                    "the robot is on its dock, where the OI refuses Safe mode (manual driving); "
                    "undock it first (a clean/spot mission leaves the dock)"
                )
            r.set_mode(OIMode.SAFE, wait=1.0)
            velocity = int(cmd.args["velocity_mm_s"])
            radius = cmd.args.get("radius_mm")
            if radius is None:
                r.drive(velocity)
            else:
                r.drive(velocity, int(radius))
        elif a == "set_clock":
            if "day" in cmd.args:
                r.set_clock(int(cmd.args["day"]), int(cmd.args["hour"]), int(cmd.args["minute"]))
            else:
                now = dt.datetime.now().astimezone()
                r.set_clock((now.weekday() + 1) % 7, now.hour, now.minute)
        else:  # the schema makes this unreachable; keep the failure explicit
            raise HalError(f"action {a!r} has no robot mapping")

    def end_drive(self) -> None:
        """The dead-man: stop the wheels and hand the robot back to Passive (Start, which also stops them:
        in Passive the robot takes no drive commands)."""
        try:
            if self.robot.state.oi_mode in (OIMode.SAFE, OIMode.FULL, None):
                self.robot.stop()
        finally:
            self._to_passive()

    def apply(self, key: str, value: Mapping[str, Any]) -> None:
        r = self.robot
        if key == "schedule":
            times: dict[int | str, tuple[int, int]] = {
                DAYS.index(d): (int(t["hour"]), int(t["minute"])) for d, t in value.items() if t
            }
            r.set_schedule(times)
        elif key == "leds":
            r.set_mode(OIMode.SAFE, wait=1.0)
            r.set_leds(**{k: v for k, v in value.items() if k != "digits"})
            if "digits" in value:
                r.set_digit_leds_ascii(str(value["digits"]).ljust(4))
        else:
            raise HalError(f"setting {key!r} has no robot mapping")


Job = tuple[Callable[[], None], Callable[[BaseException | None], None]]


class RobotWorker(Protocol):
    """Runs blocking robot calls in order, off the loop; each outcome goes to its ``done`` (on the worker's
    thread: ``done`` posts back to the loop itself)."""

    def submit(self, fn: Callable[[], None], done: Callable[[BaseException | None], None]) -> None: ...

    @property
    def alive(self) -> bool: ...

    def close(self, timeout: float = 3.0) -> None: ...


class JobQueue(Protocol):
    def get(self) -> Job | None: ...


def run_jobs(q: JobQueue) -> None:
    """Run queued ``(fn, done)`` jobs in order until ``None`` arrives; each outcome goes to its ``done``."""
    while True:
        item = q.get()
        if item is None:
            return
        fn, done = item
        try:
            fn()
        except Exception as exc:
            done(exc)
        else:
            done(None)


class Worker:
    """One thread that runs robot calls in order, reporting each outcome back to the loop."""

    def __init__(self) -> None:
        import queue

        self._q: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="agent-robot-worker", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        self._q.put((fn, done))

    def _run(self) -> None:
        run_jobs(self._q)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float = 3.0) -> None:
        self._q.put(None)
        self._thread.join(timeout)
