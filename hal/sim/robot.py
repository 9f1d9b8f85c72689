"""The robot side of the Open Interface, without I/O: bytes in, bytes out, a world underneath.

``SimRobot.feed(data, now)`` takes whatever the serial line delivered (any split, any merge);
``SimRobot.poll(now)`` returns the bytes the robot has put on the line by ``now``, paced like a 115200-baud
UART; ``SimRobot.next_deadline(now)`` says when to call ``poll`` again. ``now`` is any monotonic clock in
seconds (the server passes ``time.monotonic()``). No threads, sockets or sleeps, so the fleet simulator can
run hundreds of these in one process, and tests can drive one byte by byte.

Opcode data lengths, allowed modes and mode transitions come from ``hal.opcodes``; packet bytes from
:class:`~hal.sim.sensors.SensorEncoder` (over ``hal.packets``, the tables the client codec uses); the banner
and battery text from :mod:`hal.sim.firmware`; control-socket requests go to :mod:`hal.sim.control`.
Serial-line timing (streams every 15 ms, replies, the reset banner) runs in real time; the physical world
runs ``speed`` times faster.
"""

from __future__ import annotations

import math
import random
import struct
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hal.opcodes import OPCODES, OIMode, Op, data_length
from hal.packets import PACKETS
from hal.quirks import Quirks, for_firmware
from hal.sim.control import MAX_BUMP_S, ControlError, apply_control, snapshot
from hal.sim.drive import STRAIGHT_RADII, direct_wheels, drive_wheels, motor_duties, pwm_duties, pwm_wheels
from hal.sim.faults import BAUD_CODES, DEFAULT_BAUD, ByteNoise, PacedOutput
from hal.sim.firmware import (
    BANNER_DONE_S,
    BOOT_BUSY_S,
    BUILD_STAMP,
    FIRMWARE,
    FIRMWARE_VERSION,
    QUIRKS,
    RESET_BANNER,
    battery_line,
    reset_banner,
    version_tuple,
)
from hal.sim.sensors import SensorEncoder
from hal.sim.world import BUTTON_BITS, ROBOT_RADIUS_MM, Mission, World

__all__ = [
    "BANNER_DONE_S",
    "BOOT_BUSY_S",
    "BUILD_STAMP",
    "FIRMWARE",
    "FIRMWARE_VERSION",
    "IDLE_WAKE_S",
    "MAX_BUMP_S",
    "MAX_CATCH_UP_S",
    "MAX_SPEED",
    "MISSION_OPCODES",
    "QUIRKS",
    "REPLY_LATENCY_S",
    "RESET_BANNER",
    "SLEEP_AFTER_S",
    "STRAIGHT_RADII",
    "STREAM_BACKLOG",
    "TICK_S",
    "WAKE_DELAY_S",
    "CommandReceived",
    "ControlError",
    "ModeChanged",
    "PowerEvent",
    "SimEvent",
    "SimRobot",
    "reset_banner",
]

TICK_S = 0.015
IDLE_WAKE_S = 0.25
REPLY_LATENCY_S = 0.002
SLEEP_AFTER_S = 300.0
WAKE_DELAY_S = 0.5
STREAM_BACKLOG = 512  # bytes the transmit queue may hold before stream frames are cut (spec: "corrupted")
MAX_CATCH_UP_S = 30.0
MAX_SPEED = 1000.0  # world seconds per real second; beyond this a 15 ms tick is a quarter hour of physics

MISSION_OPCODES = {
    Op.SPOT: Mission.SPOT,
    Op.CLEAN: Mission.CLEAN,
    Op.MAX: Mission.MAX,
    Op.SEEK_DOCK: Mission.SEEK_DOCK,
}


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """One complete command as it arrived; ``ignored`` says why the robot did nothing with it."""

    t: float
    opcode: int
    name: str
    args: tuple[int, ...]
    mode: OIMode
    ignored: str | None = None


@dataclass(frozen=True, slots=True)
class ModeChanged:
    t: float
    old: OIMode
    new: OIMode
    reason: str


@dataclass(frozen=True, slots=True)
class PowerEvent:
    """Sleep, wake, reset: things an engineer looking at a log will want to see."""

    t: float
    what: str


SimEvent = CommandReceived | ModeChanged | PowerEvent


class SimRobot:
    """A Create 2 as seen from its serial port."""

    def __init__(
        self,
        *,
        seed: int = 0,
        speed: float = 1.0,
        now: float = 0.0,
        docked: bool = False,
        pace: bool = True,
        world: World | None = None,
        max_events: int = 10_000,
        tick_s: float = TICK_S,
        firmware: str = FIRMWARE_VERSION,
        quirks: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """``tick_s`` is the world step and stream period: keep the real robot's 15 ms on a serial link; a
        fleet simulator that only needs state (not OI timing) may pass a longer one to save CPU."""
        if not (isinstance(speed, int | float) and math.isfinite(speed) and 0 < speed <= MAX_SPEED):
            raise ValueError(f"speed must be a number above 0 and at most {MAX_SPEED:g}, got {speed!r}")
        if not 0.001 <= tick_s <= 1.0:
            raise ValueError(f"tick_s must be between 0.001 and 1 s, got {tick_s}")
        unknown = set(quirks) - set(QUIRKS)
        if unknown:
            raise ValueError(f"unknown quirk(s) {sorted(unknown)}; known: {', '.join(QUIRKS)}")
        version = version_tuple(firmware)
        if version is None:
            raise ValueError(f"firmware must look like 3.7.1, got {firmware!r}")
        self.firmware = firmware
        buggy_angle = for_firmware(
            firmware, Quirks()
        ).angle_scale  # the HAL's rule for which firmware is buggy
        self.quirks = frozenset(quirks) | ({"angle_scale"} if buggy_angle else set())
        self._banner = reset_banner(firmware)
        self.rng = random.Random(seed)
        self.world = world or World(rng=random.Random(self.rng.getrandbits(32)))
        if docked:
            self.world.dock_now()
        else:
            self.world.place(self.world.x, self.world.y, self.world.theta)
        self.speed = float(speed)
        self.noise = ByteNoise(random.Random(self.rng.getrandbits(32)))
        self.output = PacedOutput(DEFAULT_BAUD if pace else None)
        self.events: deque[SimEvent] = deque(maxlen=max_events)
        self.mode = OIMode.OFF
        self.baud = DEFAULT_BAUD
        self._rx = bytearray()
        self.tick_s = float(tick_s)
        self._next_tick = now + self.tick_s
        self._last_command_world = self.world.time
        self.stream_ids: tuple[int, ...] = ()
        self.stream_on = False
        self.requested_velocity = 0
        self.requested_radius = 0
        self.requested_right = 0
        self.requested_left = 0
        self.leds = (0, 0, 0)
        self.scheduling_leds = (0, 0)
        self.digits = b"    "
        self.digits_raw = (0, 0, 0, 0)
        self.songs: dict[int, tuple[tuple[int, int], ...]] = {}
        self.song_number = 0
        self.song_until = -1.0  # world time the current song or tone ends
        self.schedule: tuple[int, ...] = (0,) * 15
        self.day_time = (0, 0, 0)
        self.asleep = False
        self._asleep_since_world = 0.0
        self._wake_at: float | None = None
        self._boot_until = now
        self._scheduled: list[tuple[float, bytes]] = []
        self._next_bat_line = now + 1.0
        self.dropped_rx = 0
        self.frames_sent = 0
        self.sensors = SensorEncoder(self)

    # ------------------------------------------------------------------ sans-I/O surface

    def feed(self, data: bytes, now: float) -> None:
        """Bytes received from the client; commands may be split or merged in any way."""
        self.advance(now)
        for byte in data:
            if self.asleep:
                self._feed_asleep(byte, now)
                continue
            if now < self._boot_until:
                self.dropped_rx += 1
                continue
            rx = self._rx
            if not rx:
                spec = OPCODES.get(byte)
                if spec is None:
                    self.events.append(CommandReceived(now, byte, "unknown", (), self.mode, "not an opcode"))
                    continue
                rx.append(byte)
            else:
                rx.append(byte)
            opcode = rx[0]
            need = data_length(opcode, rx[1:])
            if need is not None and len(rx) - 1 >= need:
                args = bytes(rx[1:])
                rx.clear()
                self._execute(opcode, args, now)

    def poll(self, now: float) -> bytes:
        """Bytes the robot has finished sending by ``now``."""
        self.advance(now)
        return self.output.pop(now)

    def next_deadline(self, now: float) -> float:
        """The latest time :meth:`poll` should next be called."""
        busy = self.stream_on or self.world.mission is not Mission.NONE or self._moving
        deadline = (
            self._next_tick if busy else max(self._next_tick, min(now + IDLE_WAKE_S, self._next_bat_line))
        )
        ready = self.output.next_ready()
        if ready is not None:
            deadline = min(deadline, ready)
        if self._scheduled:
            deadline = min(deadline, self._scheduled[0][0])
        if self._wake_at is not None:
            deadline = min(deadline, self._wake_at)
        return deadline

    def advance(self, now: float) -> None:
        """Run the world's fixed steps up to ``now`` and emit whatever is due on the line."""
        if now - self._next_tick > MAX_CATCH_UP_S:
            self._next_tick = now
        while self._next_tick <= now:
            self._tick(self._next_tick)
            self._next_tick += self.tick_s
        self._release_scheduled(now)
        if self._wake_at is not None and now >= self._wake_at:
            self._finish_wake(now)

    def drain_events(self) -> list[SimEvent]:
        out = list(self.events)
        self.events.clear()
        return out

    @property
    def _moving(self) -> bool:
        w = self.world
        return bool(w.cmd_left or w.cmd_right)

    # ------------------------------------------------------------------ command execution

    def _execute(self, opcode: int, args: bytes, now: float) -> None:
        spec = OPCODES[opcode]
        mode = self.mode
        self._last_command_world = self.world.time
        if spec.removed:
            self.events.append(
                CommandReceived(now, opcode, spec.name, tuple(args), mode, "removed on Create 2")
            )
            return
        if mode not in spec.allowed_modes:
            why = "OI is Off: send Start (128) first" if mode is OIMode.OFF else f"not allowed in {mode.name}"
            self.events.append(CommandReceived(now, opcode, spec.name, tuple(args), mode, why))
            return
        ignored = self._apply(opcode, args, now)
        self.events.append(CommandReceived(now, opcode, spec.name, tuple(args), mode, ignored))
        if spec.mode_after is not None and opcode not in (Op.RESET, Op.POWER):
            self._set_mode(spec.mode_after, now, spec.name)

    def _apply(self, opcode: int, args: bytes, now: float) -> str | None:
        w = self.world
        if opcode == Op.RESET:
            self._reset(now)
        elif opcode == Op.START:
            if self.mode is OIMode.OFF:
                self._play_tone(0.1)
        elif opcode == Op.BAUD:
            if args[0] >= len(BAUD_CODES):
                return f"baud code {args[0]} is not 0-11"
            self.baud = BAUD_CODES[args[0]]
            if self.output.baud is not None:
                self.output.baud = self.baud
        elif opcode in (Op.CONTROL, Op.SAFE, Op.FULL):
            w.end_mission()
            self._stop_drive()
            self.leds = (0, 0, 0)
        elif opcode == Op.POWER:
            self._set_mode(OIMode.PASSIVE, now, "Power")
            w.end_mission()
            self._stop_drive()
            self.fall_asleep(now, "power")
        elif opcode in MISSION_OPCODES:
            self._stop_drive()
            w.start_mission(MISSION_OPCODES[Op(opcode)])
        elif opcode == Op.DRIVE:
            velocity, radius = struct.unpack(">hh", args)
            self._drive(velocity, radius)
        elif opcode == Op.DRIVE_DIRECT:
            right, left = struct.unpack(">hh", args)
            self._drive_direct(right, left)
        elif opcode == Op.DRIVE_PWM:
            w.set_wheels(*pwm_wheels(*struct.unpack(">hh", args)))
        elif opcode == Op.MOTORS:
            w.main_brush, w.side_brush, w.vacuum = motor_duties(args[0])
        elif opcode == Op.PWM_MOTORS:
            w.main_brush, w.side_brush, w.vacuum = pwm_duties(*struct.unpack(">bbb", args))
        elif opcode == Op.LEDS:
            self.leds = (args[0], args[1], args[2])
        elif opcode == Op.SCHEDULING_LEDS:
            self.scheduling_leds = (args[0], args[1])
        elif opcode == Op.DIGIT_LEDS_RAW:
            self.digits_raw = (args[0], args[1], args[2], args[3])
        elif opcode == Op.DIGIT_LEDS_ASCII:
            self.digits = bytes(b if 32 <= b <= 126 else 32 for b in args)
        elif opcode == Op.SONG:
            number, length = args[0], args[1]
            if length < 1 or length > 16:
                return f"song length {length} is not 1-16"
            self.songs[number] = tuple((args[2 + 2 * i], args[3 + 2 * i]) for i in range(length))
        elif opcode == Op.PLAY:
            song = self.songs.get(args[0])
            if song is None:
                return f"song {args[0]} was never defined"
            self.song_number = args[0]
            self._play_tone(sum(d for _, d in song) / 64.0)
        elif opcode == Op.SENSORS:
            if args[0] not in PACKETS:
                return f"unknown packet id {args[0]}"
            self._send(self.sensors.packet(args[0]), now, REPLY_LATENCY_S)
        elif opcode == Op.QUERY_LIST:
            ids = args[1:]
            unknown = [pid for pid in ids if pid not in PACKETS]
            self._send(
                b"".join(self.sensors.packet(pid) for pid in ids if pid in PACKETS), now, REPLY_LATENCY_S
            )
            if unknown:
                return f"unknown packet ids {unknown} skipped"
        elif opcode == Op.STREAM:
            stream_ids = tuple(pid for pid in args[1:] if pid in PACKETS)
            self.stream_ids = stream_ids
            self.stream_on = bool(stream_ids)
            if len(stream_ids) != args[0]:
                return "unknown packet ids skipped"
        elif opcode == Op.PAUSE_RESUME_STREAM:
            if args[0] not in (0, 1):
                return f"pause/resume takes 0 or 1, not {args[0]}"
            self.stream_on = bool(args[0]) and bool(self.stream_ids)
        elif opcode == Op.BUTTONS:
            w.press_buttons_bits(args[0])
            self.button_behaviour(args[0])
        elif opcode == Op.SCHEDULE:
            self.schedule = tuple(args)
        elif opcode == Op.SET_DAY_TIME:
            if args[0] > 6 or args[1] > 23 or args[2] > 59:
                return "day/time out of range"
            self.day_time = (args[0], args[1], args[2])
        elif opcode == Op.STOP:
            self.stream_on = False
            w.end_mission()
            self._stop_drive()
            self._play_tone(0.3)
        return None

    def _drive(self, velocity: int, radius: int) -> None:
        self.requested_velocity, self.requested_radius = velocity, radius
        self.world.set_wheels(*drive_wheels(velocity, radius))

    def _drive_direct(self, right: int, left: int) -> None:
        self.requested_right, self.requested_left = right, left
        self.world.set_wheels(*direct_wheels(right, left))

    def _stop_drive(self) -> None:
        self.world.set_wheels(0.0, 0.0)
        self.world.main_brush = self.world.side_brush = self.world.vacuum = 0.0

    def button_behaviour(self, bits: int) -> None:
        """A button press (or 165 Buttons) outside Safe/Full starts the firmware's own mission."""
        if self.mode in (OIMode.SAFE, OIMode.FULL):
            return
        if bits & BUTTON_BITS["clean"]:
            self.world.start_mission(Mission.CLEAN)
        elif bits & BUTTON_BITS["spot"]:
            self.world.start_mission(Mission.SPOT)
        elif bits & BUTTON_BITS["dock"]:
            self.world.start_mission(Mission.SEEK_DOCK)

    def _play_tone(self, seconds: float) -> None:
        self.song_until = self.world.time + seconds

    def _set_mode(self, new: OIMode, now: float, reason: str) -> None:
        old = self.mode
        self.mode = new
        self.world.charge_allowed = new in (OIMode.OFF, OIMode.PASSIVE)
        if old is not new:
            if new in (OIMode.OFF, OIMode.PASSIVE) and old in (OIMode.SAFE, OIMode.FULL):
                self._stop_drive()
            if new is OIMode.OFF:
                self.stream_on = False
            self.events.append(ModeChanged(now, old, new, reason))

    def _reset(self, now: float) -> None:
        w = self.world
        w.end_mission()
        self._stop_drive()
        self.stream_on = False
        self.stream_ids = ()
        self.songs.clear()
        self.baud = DEFAULT_BAUD
        if self.output.baud is not None:
            self.output.baud = DEFAULT_BAUD
        self.output.clear()
        w.enc_left = w.enc_right = 0.0
        w.odo_distance_mm = w.odo_angle_deg = 0.0
        self._set_mode(OIMode.OFF, now, "Reset")
        self._boot_until = now + BOOT_BUSY_S
        self._scheduled = [(now + delay, text) for delay, text in self._banner]
        self._next_bat_line = now + BANNER_DONE_S
        self.events.append(PowerEvent(now, "reset"))

    # ------------------------------------------------------------------ sleep and wake

    def fall_asleep(self, now: float, why: str) -> None:
        """The robot sleeps: the stream stops, and only Start or a BRC pulse wakes it."""
        self.asleep = True
        self._asleep_since_world = self.world.time
        self.stream_on = False
        self._rx.clear()
        self._send(b"processor-sleep\r\n", now)
        self.events.append(PowerEvent(now, f"sleep ({why})"))

    def _feed_asleep(self, byte: int, now: float) -> None:
        self.dropped_rx += 1
        if byte == Op.START and self._wake_at is None:
            self._wake_at = now + WAKE_DELAY_S

    def wake(self, now: float, how: str = "brc") -> bool:
        """A BRC pulse: wakes a sleeping robot (after the firmware's wake-up delay) and resets the timer."""
        self.advance(now)
        self._last_command_world = self.world.time
        if not self.asleep:
            return False
        if self._wake_at is None:
            self._wake_at = now + WAKE_DELAY_S
        self.events.append(PowerEvent(now, f"wake requested ({how})"))
        return True

    def _finish_wake(self, now: float) -> None:
        self._wake_at = None
        if not self.asleep:
            return
        self.asleep = False
        slept = max(0, int(self.world.time - self._asleep_since_world))
        self._send(f"slept for {slept // 60} minutes {slept % 60} seconds\r\n".encode(), now)
        self._last_command_world = self.world.time
        self._set_mode(OIMode.PASSIVE, now, "wake")
        self.events.append(PowerEvent(now, "awake"))

    # ------------------------------------------------------------------ the 15 ms tick

    def _tick(self, t: float) -> None:
        w = self.world
        w.step(self.tick_s * self.speed)
        if self.mode is OIMode.SAFE:
            self.apply_safety(t)
        if (
            self.mode is OIMode.PASSIVE
            and not self.asleep
            and w.mission is Mission.NONE
            and not w.docked
            and w.time - self._last_command_world > SLEEP_AFTER_S
        ):
            self.fall_asleep(t, "five minutes in Passive without commands")
        if self.stream_on and not self.asleep:
            self._send(self.sensors.frame(self.stream_ids), t, limit=STREAM_BACKLOG)
            self.frames_sent += 1
        if t >= self._next_bat_line:
            self._next_bat_line = t + 1.0
            if self.mode is OIMode.OFF and w.docked and not self.asleep and t >= self._boot_until:
                self._send(battery_line(w), t)

    def apply_safety(self, t: float) -> None:
        """Safe mode's rule (Create 2 OI spec, "Safe mode"): a wheel drop, a cliff while driving forward or
        turning tightly backwards, or the charger stop the wheels and drop the OI to Passive."""
        w = self.world
        forward = w.cmd_left + w.cmd_right > 0
        tight_reverse = (
            w.cmd_left + w.cmd_right < 0
            and self.requested_radius not in STRAIGHT_RADII
            and abs(self.requested_radius) < ROBOT_RADIUS_MM
        )
        reason = None
        if w.wheel_drop:
            reason = "wheel drop"
        elif any(w.cliff) and (forward or tight_reverse):
            reason = "cliff"
        elif w.docked:
            reason = "charger"
        if reason is not None:
            self._stop_drive()
            self._set_mode(OIMode.PASSIVE, t, f"safety: {reason}")

    # ------------------------------------------------------------------ output

    def _send(self, data: bytes, now: float, latency: float = 0.0, limit: int | None = None) -> None:
        self.output.push(self.noise.apply(data), now, latency, limit)

    def _release_scheduled(self, now: float) -> None:
        while self._scheduled and self._scheduled[0][0] <= now:
            t, text = self._scheduled.pop(0)
            self._send(text, t)

    def sensor_value(self, pid: int) -> int:
        """A single packet's current value (reading 19/20 consumes them, as on the robot)."""
        return self.sensors.value(pid)

    def control(self, request: Mapping[str, Any], now: float) -> dict[str, Any]:
        """Apply one control-socket request that concerns the robot itself (not the link).

        Raises :class:`ControlError` with an actionable message for a bad request.
        """
        return apply_control(self, request, now)

    def state(self) -> dict[str, Any]:
        """A JSON-ready snapshot for the control socket and for tests."""
        return snapshot(self)
