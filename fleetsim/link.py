"""One simulated robot wired to the real HAL client in memory, stepped by a shared ticker (no thread per robot).

``hal.robot.Robot`` normally owns a reader thread that blocks on its port. A fleet of a thousand robots in
one process cannot afford a thousand threads waking every read timeout, so :class:`SteppedRobot` runs the
very same per-read work (open, parse, supervise, hold mode) from :meth:`SteppedRobot.step`, called by the
shard's one ticking task. :class:`MemoryTransport` is the cable: writes from any thread queue up for the
``SimRobot``; bytes from the ``SimRobot`` are handed over at each step. It can be unplugged (a link drop) and
has a BRC line (``wake`` reaches the simulator), like a USB cable with the wake pin wired.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

from hal.errors import TransportError
from hal.robot import Robot
from hal.sim.robot import CommandReceived, SimRobot
from hal.transport import SerialTransport


def _never_open(*_args: Any, **_kwargs: Any) -> Any:
    raise TransportError("a MemoryTransport has no device to open")


class MemoryTransport(SerialTransport):
    """The serial cable between a :class:`SteppedRobot` and a ``SimRobot``, in memory."""

    def __init__(self, url: str) -> None:
        super().__init__(url, open_fn=_never_open)
        self._open = False
        self._to_robot = bytearray()
        self._to_host = bytearray()
        self._cable_lock = threading.Lock()
        self.plugged = True
        self.wake_requests = 0
        self.has_modem_lines = True

    @property
    def is_open(self) -> bool:
        return self._open

    def open(self) -> None:
        if not self.plugged:
            raise TransportError(f"cannot open {self.url}: the simulated cable is unplugged")
        self._open = True

    def close(self) -> None:
        self._open = False

    def read(self, size: int = 4096) -> bytes:
        if not self._open:
            raise TransportError(f"{self.url} is not open")
        if not self.plugged:
            self._open = False
            raise TransportError(f"reading from {self.url} failed: the simulated cable was unplugged")
        with self._cable_lock:
            data = bytes(self._to_host[:size])
            del self._to_host[:size]
        return data

    def write(self, data: bytes) -> None:
        if not self._open or not self.plugged:
            raise TransportError(f"{self.url} is not open (the robot link is down; it is being reopened)")
        with self._cable_lock:
            self._to_robot += data

    def reset_input(self) -> None:
        with self._cable_lock:
            self._to_host.clear()

    def wake(self, pulse_s: float = 0.1) -> bool:
        if not self._open:
            return False
        self.wake_requests += 1
        return True

    # the simulator's side of the cable (ticker only) -----------------------------------------------------
    def take_for_robot(self) -> bytes:
        with self._cable_lock:
            if not self._to_robot:
                return b""
            data = bytes(self._to_robot)
            self._to_robot.clear()
        return data

    def deliver(self, data: bytes) -> None:
        if self._open and self.plugged:
            with self._cable_lock:
                self._to_host += data

    def unplug(self) -> None:
        self.plugged = False
        with self._cable_lock:
            self._to_robot.clear()
            self._to_host.clear()

    def plug(self) -> None:
        self.plugged = True


class SteppedRobot(Robot):
    """``hal.robot.Robot`` without its reader thread: :meth:`step` does what one turn of that thread does.

    Everything else (listeners, actions, ``wait_for``, mode holding, reconnect backoff, odometry) is the
    HAL's own code, so the agent on top behaves exactly as with a real serial port.
    """

    def __init__(self, transport: MemoryTransport, **kwargs: Any) -> None:
        super().__init__(transport.url, transport=transport, **kwargs)
        self._memory = transport
        self._reopen_at = 0.0
        self._rng = random.Random(transport.url)
        self._delays: Iterator[float] = self._backoff.delays(self._rng)
        self._failing = False
        self._running = False
        self._warned = False

    def start(self, *, wait: float | None = None) -> Robot:
        self._running = True
        self._stop.clear()
        return self

    @property
    def running(self) -> bool:
        return self._running and not self._stop.is_set()

    def step(self, now: float) -> None:
        if not self.running:
            return
        transport = self._memory
        if not transport.is_open:
            if now < self._reopen_at:
                return
            try:
                transport.open()
            except TransportError as exc:
                self._last_error = str(exc)
                (self.log.debug if self._warned else self.log.warning)("oi.link.open_failed", error=str(exc))
                self._warned = True
                self._reopen_at = now + next(self._delays)
                return
            self._warned = False
            self._on_link_up()
        try:
            data = transport.read()
        except TransportError as exc:
            self._on_link_down(str(exc))
            self._reopen_at = now + next(self._delays)
            self._failing = True
            return
        try:
            if data:
                for event in self._parser.feed(data, now):
                    self._on_stream_event(event, now)
                if self._failing and self._last_frame_at is not None and self._last_frame_at >= self._up_at:
                    self._failing = False
                    self._delays = self._backoff.delays(self._rng)
            self._supervise(now)
        except Exception:  # a bug here must not stop the whole shard's ticker
            self.log.exception("hal.robot.reader_error")

    def close(self) -> None:
        self._running = False
        super().close()


class SimLink:
    """A ``SimRobot`` and the ``SteppedRobot`` that talks to it; :meth:`step` moves bytes both ways."""

    def __init__(
        self,
        thing: str,
        *,
        seed: int,
        stream_period_s: float,
        docked: bool = True,
        silence_s: float | None = None,
        now: float,
    ) -> None:
        self.thing = thing
        self.sim = SimRobot(seed=seed, now=now, docked=docked, pace=False, tick_s=stream_period_s)
        self.transport = MemoryTransport(f"sim://{thing}")
        self.robot = SteppedRobot(
            self.transport,
            hold_mode=None,
            silence_s=silence_s if silence_s is not None else max(2.0, 8 * stream_period_s),
        )
        self.opcodes: Counter[str] = Counter()
        self._wakes_seen = 0

    def unplug(self, now: float) -> None:
        """Pull the cable. Bytes already written reach the robot first: on a real line a command is through
        in well under a millisecond, so only the ticker's batching would otherwise lose them."""
        out = self.transport.take_for_robot()
        if out:
            self.sim.feed(out, now)
        self.transport.unplug()

    def plug(self) -> None:
        self.transport.plug()

    def step(self, now: float) -> None:
        sim, transport = self.sim, self.transport
        if transport.wake_requests != self._wakes_seen:
            self._wakes_seen = transport.wake_requests
            sim.wake(now)
        out = transport.take_for_robot()
        if out:
            sim.feed(out, now)
        data = sim.poll(now)
        if data:
            transport.deliver(data)
        if sim.events:
            for event in sim.drain_events():
                if isinstance(event, CommandReceived) and event.ignored is None:
                    self.opcodes[event.name] += 1
        self.robot.step(now)
