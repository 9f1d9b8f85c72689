"""The Robot: owns the serial link and one reader thread, holds the OI mode, keeps the stream running.

No protocol parsing happens here: bytes go through :mod:`hal.codec`, geometry comes from the
:class:`~hal.models.RobotModel`, workarounds from :class:`~hal.quirks.Quirks`. What this class adds is time
and persistence: it re-enters the requested mode when the robot drops to Passive (cliff, wheel drop,
charger), re-opens an unplugged link with capped backoff and restarts the stream there, and publishes an
immutable :class:`RobotState` after every frame. One turn of that work is :meth:`Robot.step`: the reader
thread calls it in a loop, and a caller that runs many robots without a thread each (the fleet simulator)
builds them with ``reader_thread=False`` and calls it itself. Listeners are called from whoever steps, with
no lock held; they must return quickly (an asyncio agent uses ``loop.call_soon_threadsafe``).

The decisions are made by sans-I/O parts, each tested alone; the Robot owns the port, the thread and the
clock, wires them, and writes what they decide: :class:`~hal.state.StateTracker` (frames into a
:class:`RobotState`, with :class:`~hal.odometry.PoseTracker` and :class:`~hal.link.LinkStats`),
:class:`~hal.mode.ModeKeeper` (the mode to hold and what to send for it), :class:`~hal.link.Reopening`,
:class:`~hal.link.ReadPacing` and :class:`~hal.link.Watchdog` (when to reopen, sleep, wake), and
:class:`~hal.events.Listeners` (the fan-out).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from base.backoff import Backoff
from base.logs import get_logger
from hal import codec
from hal.codec import BatteryLine, CorruptFrame, FirmwareBanner, SensorFrame, StreamEvent, StreamParser
from hal.errors import HalError, ModeError, NoResponseError, TransportError
from hal.events import (
    LinkDown,
    LinkUp,
    Listener,
    Listeners,
    ModeChanged,
    RobotEvent,
    StateUpdated,
)
from hal.link import STREAM_PERIOD_S, LinkHealth, ReadPacing, Reopening, Watchdog
from hal.mode import ModeKeeper, ModeReentry
from hal.models import RobotModel, get_model
from hal.opcodes import OIMode
from hal.packets import members
from hal.quirks import Quirks
from hal.state import RobotState, StateTracker
from hal.transport import SerialTransport, Transport

__all__ = [
    "LinkDown",
    "LinkHealth",
    "LinkUp",
    "Listener",
    "ModeChanged",
    "ModeReentry",
    "Robot",
    "RobotEvent",
    "RobotState",
    "StateUpdated",
    "reopen_backoff",
]


_MAX_READ_PAUSE_S = 10 * STREAM_PERIOD_S  # frames_per_read is at most 10


def reopen_backoff(rand: Callable[[], float] = random.random) -> Backoff:
    """The link's reopen rule: retry ``n`` waits uniform(0, min(2 s, 0.05 s * 2**n)), so a replugged cable is
    back within a few tens of milliseconds and a dead port is tried about once a second."""
    return Backoff(base_s=0.05, cap_s=2.0, rand=rand)


class Robot:
    """A robot (or simulator) behind ``port_url``.

    ``hold_mode`` is the OI mode to enter and keep (None: just Start, i.e. Passive, and never fight the
    robot). ``stream_ids`` defaults to the model's (group 100 on a Create 2) and must fit the 15 ms slot at
    the model's baud rate. ``silence_s``: with no frame for this long the Robot wakes the robot and restarts
    the stream. ``keep_awake_s``: in Passive the robot sleeps after 5 minutes without activity, so the BRC
    line is pulsed this often where the port has modem lines. ``release_on_close``: leave the robot in Passive
    on :meth:`close`. ``frames_per_read``: stream frames the reader lets pile up before it wakes (1: each
    frame as soon as it is complete; more: fewer wake-ups and less CPU, a frame then seen up to that many
    periods late, except while a :meth:`wait_for` is waiting). ``backoff`` paces reopening a failed link
    (:func:`reopen_backoff` by default). ``transport``: any :class:`~hal.transport.Transport` (default: a
    :class:`~hal.transport.SerialTransport` on ``port_url``). ``clock`` stamps frames and ages; a caller that
    steps the Robot passes ``now`` on this clock. ``reader_thread=False``: :meth:`start` starts no thread and
    the caller drives the Robot with :meth:`step`.
    """

    def __init__(
        self,
        port_url: str,
        model: RobotModel | str = "create2",
        hold_mode: OIMode | None = OIMode.SAFE,
        *,
        quirks: Quirks | None = None,
        stream_ids: Sequence[int] | None = None,
        baud: int | None = None,
        silence_s: float = 1.0,
        keep_awake_s: float = 60.0,
        release_on_close: bool = True,
        frames_per_read: int = 1,
        backoff: Backoff | None = None,
        transport: Transport | None = None,
        clock: Callable[[], float] = time.monotonic,
        reader_thread: bool = True,
    ) -> None:
        self.model = get_model(model) if isinstance(model, str) else model
        self.baud = baud or self.model.baud
        self.stream_ids = tuple(stream_ids or self.model.stream_ids)
        codec.check_stream_budget(self.stream_ids, self.baud)
        if 35 not in {m for pid in self.stream_ids for m in members(pid)}:
            raise ValueError(
                f"stream {list(self.stream_ids)} lacks packet 35 (OI Mode): the Robot verifies and holds the "
                "mode through it; add 35 to stream_ids"
            )
        self.port_url = port_url
        self._transport: Transport = transport or SerialTransport(port_url, self.baud)
        self._parser = StreamParser(self.stream_ids)
        self._clock = clock
        self._reopening = Reopening(backoff or reopen_backoff())
        self._pacing = ReadPacing(self.stream_ids, self.baud, frames_per_read)
        self._watchdog = Watchdog(silence_s, keep_awake_s)
        self._reader_thread = reader_thread
        self._running = False
        self._release_on_close = release_on_close
        self._waiters = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: str | None = None
        self.log = get_logger("hal.robot", port=port_url, model=self.model.name)
        self._listeners = Listeners(self.log)
        self._modes = ModeKeeper(hold_mode)
        self._tracker = StateTracker(
            self.model, port_url, self._parser, quirks=quirks, hold=self._modes.hold, log=self.log
        )
        self._link = self._tracker.link

    @property
    def quirks(self) -> Quirks:
        """The firmware workarounds in effect (the model's, switched by the firmware banner, unless given)."""
        return self._tracker.quirks

    @quirks.setter
    def quirks(self, quirks: Quirks) -> None:
        self._tracker.quirks = quirks

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, wait: float | None = None) -> Robot:
        """Start the reader thread, which opens the link (with ``reader_thread=False``: only allow
        :meth:`step` to). With ``wait``, block until the first frame arrives or raise :class:`NoResponseError`
        (the Robot keeps trying either way until :meth:`close`); without a thread, only while another thread
        steps it."""
        if not self._running:
            self._reopening.restart()
        self._stop.clear()
        self._running = True
        if self._reader_thread and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"robot-{self.port_url}", daemon=True)
            self._thread.start()
        if wait is not None:
            self.wait_for(lambda s: s.updated_at is not None, timeout=wait, what="a first sensor frame")
        return self

    def close(self) -> None:
        """Stop the wheels, pause the stream and, if we had taken control (Safe/Full), hand the robot back in
        Passive (where it charges, as the spec recommends); then stop the reader thread and close the port."""
        if self._running and self._transport.is_open:
            with contextlib.suppress(HalError):
                for command in self._modes.closing(self._tracker.state.oi_mode, self._release_on_close):
                    self._transport.write(command)
        self._stop.set()
        self._running = False
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._transport.close()

    def __enter__(self) -> Robot:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        """Started and not closed: :meth:`step` does its work."""
        return self._running

    @property
    def reader_alive(self) -> bool:
        """Whether the reader thread runs (False before :meth:`start`, after :meth:`close`, or if it died);
        with ``reader_thread=False``, whether the Robot is started, its stepping being the caller's."""
        if not self._reader_thread:
            return self._running
        thread = self._thread
        return thread is not None and thread.is_alive()

    # ------------------------------------------------------------------ state and listeners

    @property
    def state(self) -> RobotState:
        if self._link.last_frame_at is None:
            return self._tracker.state  # nothing to age: the clock is not read
        return self._tracker.current(self._clock())

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(event)`` from the reader thread for every :data:`RobotEvent`; returns a remover."""
        return self._listeners.add(callback)

    def wait_for(
        self, predicate: Callable[[RobotState], bool], timeout: float, what: str = "the condition"
    ) -> RobotState:
        """Block until ``predicate(state)`` holds; :class:`NoResponseError` after ``timeout`` seconds."""
        ready = threading.Event()

        def check(event: RobotEvent) -> None:
            if isinstance(event, StateUpdated) and predicate(event.state):
                ready.set()

        remove = self.add_listener(check)
        with self._lock:
            self._waiters += 1  # the reader wakes for every frame meanwhile
        try:
            if not predicate(self.state):
                ready.wait(timeout)
        finally:
            with self._lock:
                self._waiters -= 1
            remove()
        state = self.state
        if not predicate(state):
            link = state.link
            error = (
                f"; last link error: {self._last_error}" if self._last_error and not link.connected else ""
            )
            raise NoResponseError(
                f"timed out after {timeout} s waiting for {what} from {self.port_url} "
                f"(connected={link.connected}, frames ok={link.frames_ok}, corrupt={link.frames_corrupt}, "
                f"oi_mode={state.oi_mode.name if state.oi_mode is not None else None}); check that the robot is "
                f"on, the cable is seated and the baud rate ({self.baud}) matches the model{error}"
            )
        return state

    # ------------------------------------------------------------------ commands

    def _send(self, command: bytes) -> None:
        refusal = self._modes.refusal(command[0], self._tracker.state.oi_mode)
        if refusal is not None:
            raise ModeError(refusal)
        self._transport.write(command)

    def set_mode(self, mode: OIMode, *, wait: float | None = 1.0) -> None:
        """Enter ``mode`` and hold it (re-entered after a cliff, wheel drop or the charger drops it to Passive).

        With ``wait``, block until packet 35 confirms the mode (:class:`NoResponseError` otherwise).
        """
        mode = OIMode(mode)
        was_dormant = self._modes.dormant
        commands = self._modes.request(mode, self._tracker.state.oi_mode)
        self._publish_hold()
        if was_dormant and mode != OIMode.OFF:
            self._handshake(self._clock())  # powered off: wake it, Start, mode, stream
        else:
            for command in commands:
                self._transport.write(command)
            if mode == OIMode.OFF:
                return
        if wait is not None:
            self.wait_for(lambda s: s.oi_mode == mode, timeout=wait, what=f"OI mode {mode.name}")

    def _publish_hold(self) -> None:
        with self._lock:
            self._tracker.hold(self._modes.hold)

    def _passive_action(self, command: bytes, *, dormant: bool = False) -> None:
        """Clean, spot, max, dock and power hand the robot to its own firmware in Passive: stop holding."""
        self._send(command)
        self._modes.release(dormant=dormant)
        self._publish_hold()

    def drive(self, velocity: int, radius: int = codec.RADIUS_STRAIGHT) -> None:
        self._send(codec.drive(velocity, radius))

    def drive_direct(self, right: int, left: int) -> None:
        self._send(codec.drive_direct(right, left))

    def drive_pwm(self, right: int, left: int) -> None:
        self._send(codec.drive_pwm(right, left))

    def stop(self) -> None:
        """Stop the wheels (Drive Direct 0, 0)."""
        self._send(codec.drive_direct(0, 0))

    def motors(self, **flags: bool) -> None:
        self._send(codec.motors(**flags))

    def clean(self) -> None:
        self._passive_action(codec.clean())

    def spot(self) -> None:
        self._passive_action(codec.spot())

    def max_clean(self) -> None:
        self._passive_action(codec.max_clean())

    def seek_dock(self) -> None:
        self._passive_action(codec.seek_dock())

    def power_off(self) -> None:
        """133 Power: the robot powers down. The Robot stops waking it (no silence handshakes, no BRC
        keep-awake) until :meth:`set_mode` is called."""
        self._passive_action(codec.power(), dormant=True)

    def set_leds(
        self,
        *,
        debris: bool = False,
        spot: bool = False,
        dock: bool = False,
        check_robot: bool = False,
        power_color: int = 0,
        power_intensity: int = 0,
    ) -> None:
        self._send(
            codec.leds(
                debris=debris,
                spot=spot,
                dock=dock,
                check_robot=check_robot,
                power_color=power_color,
                power_intensity=power_intensity,
            )
        )

    def set_digit_leds_ascii(self, text: str) -> None:
        self._send(codec.digit_leds_ascii(text))

    def define_song(self, number: int, notes: Sequence[tuple[int, int]]) -> None:
        self._send(codec.song(number, notes))

    def play_song(self, number: int) -> None:
        self._send(codec.play(number))

    def set_schedule(self, times: Mapping[int | str, tuple[int, int]]) -> None:
        self._send(codec.schedule(times))

    def set_clock(self, day: int, hour: int, minute: int) -> None:
        self._send(codec.set_day_time(day, hour, minute))

    def reset_pose(self) -> None:
        self._tracker.odometry.reset()

    # ------------------------------------------------------------------ reader thread

    def step(self, now: float | None = None) -> float:
        """One turn of the reader: reopen the link if it is down and its backoff has passed, read what
        arrived, feed the parser, supervise (silence, keep-awake) and hold the mode.

        ``now`` is on the Robot's ``clock``; None reads the clock after the read, so a frame is stamped when
        it arrived (what the reader thread does). Returns how long the next turn may wait: the backoff before
        a reopen, or the time the next frame needs to arrive (0: go on). A caller that ticks anyway may ignore
        it. Does nothing unless started and not closed; never call it while the reader thread runs.

        The backoff only resets once a frame has arrived on the new link, so a port that opens and fails at
        once (a flapping adapter, a server that accepts and hangs up) is retried at the capped pace too.
        """
        if not self._running:
            return 0.0
        transport = self._transport
        if not transport.is_open:
            at = self._clock() if now is None else now
            wait = self._reopening.wait(at)
            if wait > 0:
                return wait
            try:
                transport.open()
            except TransportError as exc:
                self._last_error = str(exc)
                log = self.log.debug if self._reopening.failing else self.log.warning
                log("oi.link.open_failed", error=str(exc))
                return self._reopening.failed(at)
            self._reopening.opened()
            self._on_link_up(at)
        try:
            data = transport.read()
        except TransportError as exc:
            at = self._clock() if now is None else now
            self._on_link_down(str(exc), at)
            if not self._link.framed_since_up:
                return self._reopening.later(at)
            self._reopening.settled()
            return 0.0
        if now is None:
            now = self._clock()
        try:
            if data:
                for event in self._parser.feed(data, now):
                    self._on_stream_event(event, now)
            self._supervise(now)
        except Exception:  # a bug here must not silently end the robot's reader (or a simulator's ticker)
            self.log.exception("hal.robot.reader_error")
        return self._pacing.pause(self._parser.buffered, self._waiters > 0) if data else 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            pause = self.step()
            if pause > _MAX_READ_PAUSE_S:
                self._stop.wait(pause)  # a reopen backoff: close() cuts it short
            elif pause > 0:
                time.sleep(pause)  # a read pause, a few stream periods (cheaper than an Event's wait)
        self._link.link_down()

    def _on_link_up(self, now: float) -> None:
        reconnects = self._link.link_up(now)
        self._parser.reset()
        self._tracker.odometry.rebase()
        self._publish_link(now)
        self.log.info("oi.link.up", reconnects=reconnects)
        self._listeners.emit(LinkUp(reconnects, now))
        self._handshake(now)

    def _on_link_down(self, reason: str, now: float) -> None:
        self._last_error = reason
        self._link.link_down()
        self._publish_link(now)
        self.log.warning("oi.link.down", reason=reason)
        self._listeners.emit(LinkDown(reason, now))

    def _handshake(self, now: float) -> None:
        """Wake the robot, Start, re-enter the held mode, and (re)start the stream."""
        self._watchdog.handshook(now)
        if self._modes.dormant:
            return
        try:
            self._transport.wake()
            for command in self._modes.handshake():
                self._transport.write(command)
            self._transport.write(codec.stream(self.stream_ids, baud_rate=self.baud))
        except TransportError as exc:
            self._on_link_down(str(exc), now)

    def _supervise(self, now: float) -> None:
        if not self._transport.is_open or self._modes.dormant:
            return
        watchdog = self._watchdog
        if (
            self._transport.has_modem_lines
            and self._tracker.state.oi_mode == OIMode.PASSIVE
            and watchdog.pulse_due(now)
        ):
            self._transport.wake()
        silent = watchdog.silent_for(now, self._link.last_frame_at)
        if silent is not None:
            self.log.info("oi.stream.silent", seconds=round(silent, 2))
            self._handshake(now)

    def _on_stream_event(self, event: StreamEvent, now: float) -> None:
        if isinstance(event, SensorFrame):
            self._on_frame(event, now)
            return
        if isinstance(event, CorruptFrame):
            self.log.debug("oi.stream.corrupt", length=event.length, total=self._parser.frames_corrupt)
        elif isinstance(event, BatteryLine):
            with self._lock:
                self._tracker.battery(event)
        elif isinstance(event, FirmwareBanner):
            with self._lock:
                self._tracker.firmware(event)
        else:
            self.log.debug("oi.text", kind=type(event).__name__)
        self._listeners.emit(event)

    def _on_frame(self, frame: SensorFrame, now: float) -> None:
        old_mode = self._tracker.state.oi_mode
        with self._lock:
            state = self._tracker.frame(frame, now, self._modes.hold)
        mode = state.oi_mode
        if mode is not None and mode != old_mode:
            self.log.info(
                "oi.mode.changed", old=old_mode.name if old_mode is not None else None, new=mode.name
            )
            self._listeners.emit(ModeChanged(old_mode, mode, now))
        self._listeners.emit(StateUpdated(state))
        if mode is not None:
            reentry = self._modes.observe(mode, now)
            if reentry is not None:
                self._reenter(reentry, now)

    def _reenter(self, reentry: ModeReentry, now: float) -> None:
        log = self.log.info if reentry.attempt == 1 else self.log.debug
        log(
            "oi.mode.reenter", mode=reentry.mode.name, observed=reentry.observed.name, attempt=reentry.attempt
        )
        try:
            for command in reentry.commands:
                self._transport.write(command)
        except TransportError as exc:
            self._on_link_down(str(exc), now)
            return
        self._listeners.emit(reentry)

    def _publish_link(self, now: float) -> None:
        with self._lock:
            self._tracker.link_changed(now)
