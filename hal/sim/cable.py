"""The simulator's end of an in-memory serial cable (:class:`~hal.transport.MemoryTransport`).

One piece of code moves the bytes both ways and carries the BRC pulse, for everything that wires a
:class:`~hal.sim.robot.SimRobot` to a HAL ``Robot`` in memory: the fleet simulator's links and
:class:`hal.testing.RobotPair`.
"""

from __future__ import annotations

from hal.sim.robot import SimRobot
from hal.transport import MemoryTransport

__all__ = ["SimCable"]


class SimCable:
    """Connects ``sim`` to the robot side of ``transport``; the caller steps it on its own clock."""

    def __init__(self, sim: SimRobot, transport: MemoryTransport) -> None:
        self.sim = sim
        self.transport = transport
        self._wakes_seen = 0

    def carry(self, now: float) -> None:
        """One turn of the line at ``now``: a BRC pulse wakes the simulator, the host's bytes reach it, and
        what it sent meanwhile goes to the host."""
        sim, transport = self.sim, self.transport
        if transport.wake_requests != self._wakes_seen:
            self._wakes_seen = transport.wake_requests
            sim.wake(now)
        self.flush(now)
        data = sim.poll(now)
        if data:
            transport.deliver(data)

    def flush(self, now: float) -> None:
        """Hand the simulator what the host has written so far."""
        out = self.transport.take_for_robot()
        if out:
            self.sim.feed(out, now)

    def unplug(self, now: float) -> None:
        """Pull the cable. Bytes already written reach the robot first: on a real line a command is through
        in well under a millisecond, so only a stepped cable's batching would otherwise lose them."""
        self.flush(now)
        self.transport.unplug()

    def plug(self) -> None:
        self.transport.plug()
