"""Test helpers shipped with the HAL: the real :class:`~hal.robot.Robot` and the simulator back to back.

In the spirit of h11's ``ConnectionPair``: both ends of the protocol in one process, wired by a
:class:`~hal.transport.MemoryTransport`, on one simulated clock that moves only when the test says so. No
thread, no pty, no sleep: a test of mode holding, reconnects or the silence handshake runs in milliseconds
and the same seed gives the same bytes every run.

    pair = RobotPair(seed=1, hold_mode=OIMode.SAFE)
    pair.run_until(lambda s: s.oi_mode == OIMode.SAFE)
    pair.robot.drive(200)
    pair.advance(1.0)
    assert pair.robot.state.pose.x_mm > 150
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hal.errors import NoResponseError
from hal.models import RobotModel
from hal.opcodes import OIMode
from hal.robot import Robot, RobotState, reopen_backoff
from hal.sim.cable import SimCable
from hal.sim.robot import TICK_S, SimRobot
from hal.transport import MemoryTransport

__all__ = ["RobotPair"]


class RobotPair:
    """A started, thread-less :class:`Robot` talking to a :class:`SimRobot` over a :class:`MemoryTransport`.

    ``robot``, ``sim`` and ``transport`` are the real objects: call the Robot's commands, the simulator's
    ``control`` (cliff, dock, sleep...) and the cable's ``unplug``/``plug``, then :meth:`advance`. ``now`` is
    the shared clock (the Robot's ``clock`` reads it). ``hold_mode`` is the Robot's (None by default here: Start,
    then Passive, no mode held). The simulator is a Create 2: another ``model`` is only as good as what it
    shares with one. ``pace`` sends the simulator's bytes at 115200 baud, as on a real line. Other keyword
    arguments go to :class:`Robot` (``silence_s``, ``quirks``, ``frames_per_read``...); reconnects use a
    fixed-jitter backoff unless ``backoff`` is given, so a seed replays exactly.

    A Robot call that waits (``set_mode``'s default ``wait``, :meth:`Robot.wait_for`) would wait for a step
    that never comes: pass ``wait=None`` and use :meth:`run_until`.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        model: RobotModel | str = "create2",
        docked: bool = False,
        hold_mode: OIMode | None = None,
        firmware: str | None = None,
        pace: bool = True,
        start: float = 0.0,
        tick_s: float = TICK_S,
        **robot_options: Any,
    ) -> None:
        self.now = start
        self.tick_s = tick_s
        sim_options: dict[str, Any] = {} if firmware is None else {"firmware": firmware}
        self.sim = SimRobot(seed=seed, now=start, docked=docked, pace=pace, tick_s=tick_s, **sim_options)
        self.transport = MemoryTransport("memory://robot-pair")
        robot_options.setdefault("backoff", reopen_backoff(rand=lambda: 0.5))  # reproducible reconnects
        self.robot = Robot(
            self.transport.url,
            model,
            hold_mode,
            transport=self.transport,
            clock=self.clock,
            reader_thread=False,
            **robot_options,
        )
        self.cable = SimCable(self.sim, self.transport)
        self.robot.start()

    def clock(self) -> float:
        return self.now

    def step(self, now: float | None = None) -> None:
        """One turn at ``now`` (default: one tick later): BRC, the Robot's bytes to the simulator, the
        simulator's output to the Robot, then :meth:`Robot.step`."""
        now = self.now + self.tick_s if now is None else now
        if now < self.now:
            raise ValueError(f"the pair's clock runs forward: {now} is before {self.now}")
        self.now = now
        self.cable.carry(now)
        self.robot.step(now)

    def advance(self, seconds: float, dt: float | None = None) -> RobotState:
        """Step every ``dt`` (default: a tick) for ``seconds`` of simulated time; the Robot's state after."""
        dt = self.tick_s if dt is None else dt
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt}")
        end = self.now + seconds
        while self.now < end:
            self.step(min(end, self.now + dt))
        return self.robot.state

    def run_until(
        self,
        predicate: Callable[[RobotState], bool],
        timeout: float = 5.0,
        what: str = "the condition",
        dt: float | None = None,
    ) -> RobotState:
        """Step until ``predicate(robot.state)`` holds; :class:`NoResponseError` after ``timeout`` simulated
        seconds (what :meth:`Robot.wait_for` does on a threaded Robot)."""
        dt = self.tick_s if dt is None else dt
        end = self.now + timeout
        while not predicate(self.robot.state):
            if self.now >= end:
                state = self.robot.state
                raise NoResponseError(
                    f"{what} did not happen within {timeout} simulated seconds (connected="
                    f"{state.link.connected}, frames ok={state.link.frames_ok}, oi_mode="
                    f"{state.oi_mode.name if state.oi_mode is not None else None}, sim={self.sim.state()})"
                )
            self.step(min(end, self.now + dt))
        return self.robot.state

    def unplug(self) -> None:
        """Pull the cable; what the Robot wrote before reaches the simulator (a real line is that fast)."""
        self.cable.unplug(self.now)

    def plug(self) -> None:
        self.cable.plug()

    def close(self) -> None:
        """Close the Robot and let the simulator hear its goodbye (wheels stopped, stream paused, Passive)."""
        self.robot.close()
        self.cable.flush(self.now)

    def __enter__(self) -> RobotPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
