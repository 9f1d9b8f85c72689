"""One simulated robot wired to the real HAL client in memory, stepped by a shared ticker (no thread per robot).

``hal.robot.Robot`` normally owns a reader thread that blocks on its port. A fleet of a thousand robots in
one process cannot afford a thousand threads waking every read timeout, so each link's Robot is built with
``reader_thread=False`` and the shard's one ticking task calls :meth:`SimLink.step`, which moves the bytes
both ways and then runs one turn of the Robot (:meth:`hal.robot.Robot.step`: open, parse, supervise, hold
mode). The cable is a :class:`hal.transport.MemoryTransport`: it can be unplugged (a link drop) and has a
BRC line (``wake`` reaches the simulator), like a USB cable with the wake pin wired.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

from hal.robot import Robot, reopen_backoff
from hal.sim.cable import SimCable
from hal.sim.robot import CommandReceived, SimRobot
from hal.transport import MemoryTransport


class SimLink:
    """A ``SimRobot`` and the HAL ``Robot`` that talks to it; :meth:`step` moves bytes both ways.

    ``clock`` is the Robot's (frame ages in its state): the clock the ticker's ``now`` comes from.
    """

    def __init__(
        self,
        thing: str,
        *,
        seed: int,
        stream_period_s: float,
        docked: bool = True,
        silence_s: float | None = None,
        now: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.thing = thing
        self.sim = SimRobot(seed=seed, now=now, docked=docked, pace=False, tick_s=stream_period_s)
        self.transport = MemoryTransport(f"sim://{thing}")
        self._silence_s = silence_s if silence_s is not None else max(2.0, 8 * stream_period_s)
        self._clock = clock
        self.robot = self._host()
        self.cable = SimCable(self.sim, self.transport)
        self.opcodes: Counter[str] = Counter()

    def _host(self) -> Robot:
        return Robot(
            self.transport.url,
            hold_mode=None,
            silence_s=self._silence_s,
            transport=self.transport,
            backoff=reopen_backoff(random.Random(self.transport.url).random),
            clock=self._clock,
            reader_thread=False,
        )

    def restart_host(self) -> Robot:
        """A new HAL ``Robot`` on the same cable, for the next start of the robot's agent (a new process has
        a new one; the simulated robot itself keeps running)."""
        self.robot.close()
        self.robot = self._host()
        return self.robot

    def unplug(self, now: float) -> None:
        """Pull the cable (what the Robot wrote before still reaches the simulator)."""
        self.cable.unplug(now)

    def plug(self) -> None:
        self.cable.plug()

    def step(self, now: float) -> None:
        sim = self.sim
        self.cable.carry(now)
        if sim.events:
            for event in sim.drain_events():
                if isinstance(event, CommandReceived) and event.ignored is None:
                    self.opcodes[event.name] += 1
        self.robot.step(now)
