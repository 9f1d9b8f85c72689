"""The Robot: owns the serial link and one reader thread, holds the OI mode, keeps the stream running.

No protocol parsing happens here: bytes go through :mod:`hal.codec`, geometry comes from the
:class:`~hal.models.RobotModel`, workarounds from :class:`~hal.quirks.Quirks`. What this class adds is time
and persistence: it re-enters the requested mode when the robot drops to Passive (cliff, wheel drop,
charger), re-opens an unplugged link with capped backoff and restarts the stream there, and publishes an
immutable :class:`RobotState` after every frame. One turn of that work is :meth:`Robot.step`: the reader
thread calls it in a loop, and a caller that runs many robots without a thread each (the fleet simulator)
builds them with ``reader_thread=False`` and calls it itself. Listeners are called from whoever steps, with
no lock held; they must return quickly (an asyncio agent uses ``loop.call_soon_threadsafe``).
"""

from __future__ import annotations

import contextlib
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from base.backoff import Backoff
from base.logs import get_logger
from hal import codec
from hal.codec import BatteryLine, CorruptFrame, FirmwareBanner, SensorFrame, StreamEvent, StreamParser
from hal.errors import HalError, ModeError, NoResponseError, TransportError
from hal.models import RobotModel, get_model
from hal.odometry import DeltaOdometry, EncoderOdometry, Pose
from hal.opcodes import OPCODES, OIMode
from hal.packets import members
from hal.quirks import Quirks, for_firmware
from hal.transport import SerialTransport, Transport

__all__ = [
    "LinkDown",
    "LinkHealth",
    "LinkUp",
    "ModeChanged",
    "ModeReentry",
    "Robot",
    "RobotEvent",
    "RobotState",
    "StateUpdated",
    "reopen_backoff",
]

_EMPTY: Mapping[str, int] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class LinkHealth:
    port: str
    connected: bool = False
    frames_ok: int = 0
    frames_corrupt: int = 0
    frames_per_s: float = 0.0
    bytes_discarded: int = 0
    text_lines: int = 0
    reconnects: int = 0
    last_frame_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class RobotState:
    """A consistent snapshot; a new one replaces it after every frame, so it is safe to keep and share.

    ``sensors`` is keyed by ``PacketSpec.key`` (raw integers in the spec's units); ``oi_mode`` is the mode
    after the mode-report quirk; ``hold_mode`` is the mode the Robot keeps re-entering (None: not holding).
    ``reported_distance_mm`` / ``reported_angle_deg`` sum the robot's own Distance (19) and Angle (20)
    packets since start (angle quirk applied), to compare with the encoder ``pose``.
    """

    model: str
    sensors: Mapping[str, int] = field(default_factory=lambda: _EMPTY)
    pose: Pose = field(default_factory=Pose)
    oi_mode: OIMode | None = None
    hold_mode: OIMode | None = None
    link: LinkHealth = field(default_factory=lambda: LinkHealth(port=""))
    firmware: str | None = None
    battery_line: BatteryLine | None = None
    updated_at: float | None = None
    reported_distance_mm: float = 0.0
    reported_angle_deg: float = 0.0


@dataclass(frozen=True, slots=True)
class StateUpdated:
    state: RobotState


@dataclass(frozen=True, slots=True)
class ModeChanged:
    old: OIMode | None
    new: OIMode
    at: float


@dataclass(frozen=True, slots=True)
class ModeReentry:
    """The robot left the held mode (it reports ``observed``) and the Robot sent the command again."""

    mode: OIMode
    observed: OIMode
    attempt: int
    at: float


@dataclass(frozen=True, slots=True)
class LinkDown:
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class LinkUp:
    reconnects: int
    at: float


RobotEvent = StateUpdated | ModeChanged | ModeReentry | LinkDown | LinkUp | StreamEvent
Listener = Callable[[RobotEvent], None]

_RATE_WINDOW_S = 2.0
_STREAM_PERIOD_S = 0.015  # the OI sends a stream frame every 15 ms
_READ_EARLY_S = 0.001
_MAX_READ_PAUSE_S = 10 * _STREAM_PERIOD_S  # frames_per_read is at most 10


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
        self.quirks = quirks if quirks is not None else self.model.quirks
        self._user_quirks = quirks is not None
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
        self._backoff = backoff or reopen_backoff()
        self._reader_thread = reader_thread
        self._running = False
        self._reopen_at = 0.0
        self._open_failed = False
        self._silence_s = silence_s
        self._frame_size = codec.stream_frame_size(self.stream_ids)
        self._byte_s = 10.0 / self.baud  # start bit, 8 data bits, stop bit
        self._keep_awake_s = keep_awake_s
        self._release_on_close = release_on_close
        if not (isinstance(frames_per_read, int) and 1 <= frames_per_read <= 10):
            raise ValueError(f"frames_per_read must be an integer from 1 to 10, got {frames_per_read!r}")
        self._frames_per_read = frames_per_read
        self._waiters = 0
        self._awake_pulse_at = 0.0
        self._up_at = 0.0
        self._dormant = False
        self._warned_mode = False
        self._hold = OIMode(hold_mode) if hold_mode is not None else None
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = RobotState(model=self.model.name, hold_mode=self._hold, link=LinkHealth(port=port_url))
        self._covering_ids: tuple[int, ...] | None = None  # a frame of these ids holds every sensor key
        self._frame_times: deque[float] = deque()
        self._last_frame_at: float | None = None
        self._reconnects = 0
        self._ever_connected = False
        self._connected = False
        self._reentry_at = 0.0
        self._reentry_delay = 0.2
        self._reentry_attempts = 0
        self._handshake_at = 0.0
        self._firmware: str | None = None
        self._last_error: str | None = None
        self._battery: BatteryLine | None = None
        self._encoders = EncoderOdometry(
            self.model.mm_per_count, self.model.wheelbase_mm, wrap=self.quirks.encoder_wrap
        )
        self._deltas = DeltaOdometry(self.model.wheelbase_mm)
        self._reported_distance = 0.0
        self._reported_angle = 0.0
        self.log = get_logger("hal.robot", port=port_url, model=self.model.name)

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, wait: float | None = None) -> Robot:
        """Start the reader thread, which opens the link (with ``reader_thread=False``: only allow
        :meth:`step` to). With ``wait``, block until the first frame arrives or raise :class:`NoResponseError`
        (the Robot keeps trying either way until :meth:`close`); without a thread, only while another thread
        steps it."""
        if not self._running:
            self._reopen_at, self._open_failed = 0.0, False
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
                in_control = self._state.oi_mode in (OIMode.SAFE, OIMode.FULL)
                if in_control:
                    self._transport.write(codec.drive_direct(0, 0))
                self._transport.write(codec.pause_resume_stream(False))
                if in_control and self._release_on_close:
                    self._transport.write(codec.start())
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
        state = self._state
        last = self._last_frame_at
        if last is None:
            return state
        age = max(0.0, self._clock() - last)
        rate = state.link.frames_per_s if age < _RATE_WINDOW_S else 0.0
        return replace(state, link=replace(state.link, last_frame_age_s=age, frames_per_s=rate))

    def add_listener(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback(event)`` from the reader thread for every :data:`RobotEvent`; returns a remover."""
        with self._lock:
            self._listeners = [*self._listeners, callback]

        def remove() -> None:
            with self._lock:
                self._listeners = [cb for cb in self._listeners if cb is not callback]

        return remove

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

    def _emit(self, event: RobotEvent) -> None:
        for callback in self._listeners:
            try:
                callback(event)
            except Exception:  # a listener's bug must not stop the robot's reader thread
                self.log.exception("hal.listener.failed", listener=repr(callback), kind=type(event).__name__)

    # ------------------------------------------------------------------ commands

    def _send(self, command: bytes) -> None:
        spec = OPCODES[command[0]]
        mode = self._state.oi_mode
        if mode is not None and mode not in spec.allowed_modes:
            hint = ""
            if self._hold in spec.allowed_modes:
                hint = (
                    f"; the Robot is re-entering {self._hold.name} (the robot dropped out of it), try again"
                )
            elif OIMode.SAFE in spec.allowed_modes:
                hint = "; call set_mode(OIMode.SAFE) or set_mode(OIMode.FULL) first"
            raise ModeError(f"{spec.name} is ignored by the robot in {mode.name}{hint}; nothing was sent")
        self._transport.write(command)

    def set_mode(self, mode: OIMode, *, wait: float | None = 1.0) -> None:
        """Enter ``mode`` and hold it (re-entered after a cliff, wheel drop or the charger drops it to Passive).

        With ``wait``, block until packet 35 confirms the mode (:class:`NoResponseError` otherwise).
        """
        mode = OIMode(mode)
        was_dormant, self._dormant = self._dormant, False
        self._hold = mode if mode != OIMode.OFF else None
        self._reentry_delay, self._reentry_attempts = 0.2, 0
        self._publish_hold()
        if was_dormant and mode != OIMode.OFF:
            self._handshake(self._clock())  # powered off: wake it, Start, mode, stream
            if wait is not None:
                self.wait_for(lambda s: s.oi_mode == mode, timeout=wait, what=f"OI mode {mode.name}")
            return
        if mode in (OIMode.SAFE, OIMode.FULL) and self._state.oi_mode in (None, OIMode.OFF):
            self._transport.write(codec.start())
        self._transport.write(codec.enter_mode(mode))
        if mode == OIMode.OFF:
            return
        if wait is not None:
            self.wait_for(lambda s: s.oi_mode == mode, timeout=wait, what=f"OI mode {mode.name}")

    def _publish_hold(self) -> None:
        with self._lock:
            self._state = replace(self._state, hold_mode=self._hold)

    def _passive_action(self, command: bytes) -> None:
        """Clean, spot, max, dock and power hand the robot to its own firmware in Passive: stop holding."""
        self._send(command)
        self._hold = None
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
        self._passive_action(codec.power())
        self._dormant = True

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
        self._encoders.reset()
        self._deltas.reset()
        self._reported_distance = self._reported_angle = 0.0

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
            if at < self._reopen_at:
                return self._reopen_at - at
            try:
                transport.open()
            except TransportError as exc:
                self._last_error = str(exc)
                log = self.log.debug if self._open_failed else self.log.warning
                log("oi.link.open_failed", error=str(exc))
                self._open_failed = True
                self._reopen_at = at + self._backoff.next_delay()
                return self._reopen_at - at
            self._open_failed = False
            self._on_link_up(at)
        try:
            data = transport.read()
        except TransportError as exc:
            at = self._clock() if now is None else now
            self._on_link_down(str(exc), at)
            if self._last_frame_at is None or self._last_frame_at < self._up_at:
                self._reopen_at = at + self._backoff.next_delay()
                return self._reopen_at - at
            self._backoff.reset()
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
        return self._read_pause() if data else 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            pause = self.step()
            if pause > _MAX_READ_PAUSE_S:
                self._stop.wait(pause)  # a reopen backoff: close() cuts it short
            elif pause > 0:
                time.sleep(pause)  # a read pause, a few stream periods (cheaper than an Event's wait)
        self._connected = False

    def _read_pause(self) -> float:
        """How long the reader sleeps after a read that returned bytes.

        The line is paced by the baud rate (an 84-byte frame takes 7.3 ms at 115200), so a reader that wakes
        for every few bytes spends its CPU on wake-ups. A partial frame waits for the bytes still missing;
        after a whole frame the next one cannot be complete for another stream period, so sleep most of it
        (waking a little early, then for the few missing bytes, keeps the delay below one frame time).
        ``frames_per_read`` above 1 adds whole periods, so that many frames are read in one wake-up.
        """
        later = 0.0 if self._waiters else (self._frames_per_read - 1) * _STREAM_PERIOD_S
        buffered = self._parser.buffered
        if 0 < buffered < self._frame_size:
            return later + (self._frame_size - buffered) * self._byte_s
        return later + _STREAM_PERIOD_S - _READ_EARLY_S

    def _on_link_up(self, now: float) -> None:
        self._up_at = now
        if self._ever_connected:
            self._reconnects += 1
        self._ever_connected = True
        self._connected = True
        self._parser.reset()
        self._encoders.rebase()
        self._publish_link(now)
        self.log.info("oi.link.up", reconnects=self._reconnects)
        self._emit(LinkUp(self._reconnects, now))
        self._handshake(now)

    def _on_link_down(self, reason: str, now: float) -> None:
        self._last_error = reason
        self._connected = False
        self._publish_link(now)
        self.log.warning("oi.link.down", reason=reason)
        self._emit(LinkDown(reason, now))

    def _handshake(self, now: float) -> None:
        """Wake the robot, Start, re-enter the held mode, and (re)start the stream."""
        self._handshake_at = now
        self._awake_pulse_at = now
        if self._dormant:
            return
        try:
            self._transport.wake()
            self._transport.write(codec.start())
            if self._hold in (OIMode.SAFE, OIMode.FULL):
                self._transport.write(codec.enter_mode(self._hold))
            self._transport.write(codec.stream(self.stream_ids, baud_rate=self.baud))
        except TransportError as exc:
            self._on_link_down(str(exc), now)

    def _supervise(self, now: float) -> None:
        if not self._transport.is_open or self._dormant:
            return
        if (
            self._transport.has_modem_lines
            and self._state.oi_mode == OIMode.PASSIVE
            and now - self._awake_pulse_at > self._keep_awake_s
        ):
            self._awake_pulse_at = now
            self._transport.wake()
        last = self._last_frame_at if self._last_frame_at is not None else self._handshake_at
        if now - max(last, self._handshake_at) > self._silence_s:
            self.log.info("oi.stream.silent", seconds=round(now - last, 2))
            self._handshake(now)

    def _on_stream_event(self, event: StreamEvent, now: float) -> None:
        if isinstance(event, SensorFrame):
            self._on_frame(event, now)
            return
        if isinstance(event, CorruptFrame):
            self.log.debug("oi.stream.corrupt", length=event.length, total=self._parser.frames_corrupt)
        elif isinstance(event, BatteryLine):
            self._battery = event
            with self._lock:
                self._state = replace(self._state, battery_line=event)
        elif isinstance(event, FirmwareBanner):
            self._firmware = event.version
            if not self._user_quirks:
                self.quirks = for_firmware(event.version, self.model.quirks)
            self.log.info("oi.firmware", version=event.version, quirks=self.quirks.active())
            with self._lock:
                self._state = replace(self._state, firmware=event.version)
        else:
            self.log.debug("oi.text", kind=type(event).__name__)
        self._emit(event)

    def _on_frame(self, frame: SensorFrame, now: float) -> None:
        sensors: Mapping[str, int] = frame.values
        if frame.ids != self._covering_ids:
            # a frame of another layout: merge (the usual stream holds every key, and is shared as is)
            merged = {**self._state.sensors, **frame.values.to_dict()}
            if len(merged) == len(frame.values):
                self._covering_ids = frame.ids
            else:
                sensors = MappingProxyType(merged)
        times = self._frame_times
        times.append(now)
        while times and now - times[0] > _RATE_WINDOW_S:
            times.popleft()
        previous, self._last_frame_at = self._last_frame_at, now
        pose = self._update_pose(frame.values, None if previous is None else now - previous)
        old_mode = self._state.oi_mode
        mode = old_mode
        raw_mode = frame.values.get("oi_mode")
        if raw_mode is not None:
            try:
                mode = OIMode(self.quirks.mode(raw_mode))
            except ValueError:
                mode = old_mode
                if not self._warned_mode:
                    self._warned_mode = True
                    self.log.warning(
                        "oi.mode.unknown",
                        raw=raw_mode,
                        hint="packet 35 above 3: this firmware reports the mode one too high; "
                        "switch on the mode_plus_one quirk",
                    )
        state = RobotState(
            model=self.model.name,
            sensors=sensors,
            pose=pose,
            oi_mode=mode,
            hold_mode=self._hold,
            link=self._link_health(now),
            firmware=self._firmware,
            battery_line=self._battery,
            updated_at=now,
            reported_distance_mm=self._reported_distance,
            reported_angle_deg=self._reported_angle,
        )
        with self._lock:
            self._state = state
        if mode is not None and mode != old_mode:
            self.log.info(
                "oi.mode.changed", old=old_mode.name if old_mode is not None else None, new=mode.name
            )
            self._emit(ModeChanged(old_mode, mode, now))
        self._emit(StateUpdated(state))
        if mode is not None:
            self._hold_mode(mode, now)

    def _max_step_mm(self, dt: float | None) -> float | None:
        """The most a wheel can travel between two frames ``dt`` seconds apart (None: no bound known).

        Generous (top speed x 1.5, plus 50 mm for frames that arrive bunched in one read), yet a frame
        whose checksum passed by chance on a noisy line is almost always far outside it.
        """
        if dt is None:
            return None
        return self.model.max_velocity_mm_s * 1.5 * max(0.0, dt) + 50.0

    def _update_pose(self, values: Mapping[str, int], dt: float | None = None) -> Pose:
        limit = self._max_step_mm(dt)
        distance = values.get("distance")
        if distance is not None and limit is not None and abs(distance) > limit:
            distance = None
        angle = None if "angle" not in values else self.quirks.angle_degrees(values["angle"])
        if (
            angle is not None
            and limit is not None
            and abs(angle) > math.degrees(2 * limit / self.model.wheelbase_mm)
        ):
            angle = None
        if (distance is None and "distance" in values) or (angle is None and "angle" in values):
            self.log.debug(
                "oi.odometry.implausible", distance=values.get("distance"), angle=values.get("angle")
            )
        if distance is not None:
            self._reported_distance += distance
        if angle is not None:
            self._reported_angle += angle
        if (
            self.quirks.encoder_odometry
            and "left_encoder_counts" in values
            and "right_encoder_counts" in values
        ):
            self._encoders.wrap = self.quirks.encoder_wrap
            rejected = self._encoders.rejected
            pose = self._encoders.update(
                values["left_encoder_counts"], values["right_encoder_counts"], max_step_mm=limit
            )
            if self._encoders.rejected != rejected:
                log = self.log.warning if rejected == 0 else self.log.debug
                log(
                    "oi.odometry.implausible",
                    left=values["left_encoder_counts"],
                    right=values["right_encoder_counts"],
                    max_step_mm=round(limit or 0.0, 1),
                    rejected=self._encoders.rejected,
                )
            return pose
        if distance is not None and angle is not None:
            return self._deltas.update(distance, angle)
        return self._encoders.pose

    def _hold_mode(self, mode: OIMode, now: float) -> None:
        hold = self._hold
        if hold is None or mode == hold or (hold == OIMode.PASSIVE and mode != OIMode.OFF):
            if hold is not None and mode == hold:
                self._reentry_delay, self._reentry_attempts = 0.2, 0
            return
        if now < self._reentry_at:
            return
        self._reentry_attempts += 1
        self._reentry_at = now + self._reentry_delay
        self._reentry_delay = min(5.0, self._reentry_delay * 2)
        log = self.log.info if self._reentry_attempts == 1 else self.log.debug
        log("oi.mode.reenter", mode=hold.name, observed=mode.name, attempt=self._reentry_attempts)
        try:
            if mode == OIMode.OFF:
                self._transport.write(codec.start())
            self._transport.write(codec.enter_mode(hold))
        except TransportError as exc:
            self._on_link_down(str(exc), now)
            return
        self._emit(ModeReentry(hold, mode, self._reentry_attempts, now))

    def _link_health(self, now: float) -> LinkHealth:
        times = self._frame_times
        span = now - times[0] if len(times) > 1 else 0.0
        rate = (len(times) - 1) / span if span > 0 else 0.0
        parser = self._parser
        return LinkHealth(
            port=self.port_url,
            connected=self._connected,
            frames_ok=parser.frames_ok,
            frames_corrupt=parser.frames_corrupt,
            frames_per_s=round(rate, 2),
            bytes_discarded=parser.bytes_discarded,
            text_lines=parser.text_lines,
            reconnects=self._reconnects,
            last_frame_age_s=None if self._last_frame_at is None else max(0.0, now - self._last_frame_at),
        )

    def _publish_link(self, now: float) -> None:
        with self._lock:
            self._state = replace(self._state, link=self._link_health(now))
