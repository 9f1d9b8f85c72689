"""The Open Interface codec, without I/O: commands in, bytes out; bytes in, events out.

Encoders check every argument against the spec and raise :class:`~hal.errors.CommandRangeError` before
producing a single byte, so an out-of-range request can never reach the robot half-sent. The
:class:`StreamParser` turns whatever the serial port delivered (stream frames, the robot's own ASCII
chatter, line noise) into frozen events; it never raises on bad input, it counts it. Time is passed in
(``now``), never read, so the parser is deterministic under test.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Literal

from hal.errors import CommandRangeError, ModeError, StreamBudgetError
from hal.opcodes import OPCODES, OIMode, Op
from hal.packets import PACKETS, members, pack

__all__ = [
    "RADIUS_STRAIGHT",
    "RADIUS_STRAIGHT_ALT",
    "REST",
    "SPIN_CCW",
    "SPIN_CW",
    "BatteryLine",
    "BootMarker",
    "BumpsWheelDrops",
    "Buttons",
    "ChargingSources",
    "ChargingState",
    "CorruptFrame",
    "FirmwareBanner",
    "FrameValues",
    "Layout",
    "LightBumper",
    "ParserStats",
    "Reading",
    "SensorFrame",
    "Stasis",
    "StreamEvent",
    "StreamParser",
    "TextLine",
    "WheelOvercurrents",
    "baud",
    "buttons",
    "check_mode",
    "check_stream_budget",
    "clean",
    "control",
    "decode_packet",
    "decode_reply",
    "digit_leds_ascii",
    "digit_leds_raw",
    "drive",
    "drive_direct",
    "drive_pwm",
    "drive_straight",
    "encode_frame",
    "enter_mode",
    "frame_from_body",
    "full",
    "interpret",
    "leds",
    "max_clean",
    "motors",
    "parse_text_line",
    "pause_resume_stream",
    "play",
    "power",
    "pwm_motors",
    "query_list",
    "readings",
    "reply_length",
    "reset",
    "safe",
    "schedule",
    "scheduling_leds",
    "seek_dock",
    "sensors",
    "set_day_time",
    "song",
    "spin",
    "spot",
    "start",
    "stop_oi",
    "stream",
    "stream_budget",
    "stream_frame_size",
]

# --------------------------------------------------------------------------------------------- encoders

_HEADER = 19  # stream frame header byte
RADIUS_STRAIGHT = 32768
RADIUS_STRAIGHT_ALT = 32767
SPIN_CW = -1
SPIN_CCW = 1
REST = 0

BAUD_CODES: dict[int, int] = {
    300: 0,
    600: 1,
    1200: 2,
    2400: 3,
    4800: 4,
    9600: 5,
    14400: 6,
    19200: 7,
    28800: 8,
    38400: 9,
    57600: 10,
    115200: 11,
}

_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _int(command: str, field: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise CommandRangeError(command, field, value, f"integer {lo}..{hi}")
    return value


def _flag(command: str, field: str, value: object) -> int:
    if not isinstance(value, bool):
        raise CommandRangeError(command, field, value, "True or False")
    return int(value)


def start() -> bytes:
    """128 Start: leaves Off (or any mode) for Passive. Must precede every other command."""
    return bytes([Op.START])


def reset() -> bytes:
    """7 Reset: reboots the robot as if the battery were pulled; it prints its boot banner."""
    return bytes([Op.RESET])


def stop_oi() -> bytes:
    """173 Stop: the OI stops answering (mode Off) until the next Start."""
    return bytes([Op.STOP])


def safe() -> bytes:
    return bytes([Op.SAFE])


def full() -> bytes:
    return bytes([Op.FULL])


def control() -> bytes:
    """130 Control: the legacy name of Safe."""
    return bytes([Op.CONTROL])


def enter_mode(mode: OIMode) -> bytes:
    """The command that leads to ``mode``: Start for Passive, Safe, Full, or Stop for Off."""
    commands = {OIMode.OFF: stop_oi, OIMode.PASSIVE: start, OIMode.SAFE: safe, OIMode.FULL: full}
    if not isinstance(mode, int) or mode not in commands:
        raise CommandRangeError("mode", "mode", mode, "OIMode.OFF, PASSIVE, SAFE or FULL")
    return commands[OIMode(mode)]()


def baud(rate: int) -> bytes:
    """129 Baud. The caller must wait 100 ms before talking at the new rate."""
    if rate not in BAUD_CODES:
        raise CommandRangeError("baud", "rate", rate, ", ".join(str(r) for r in BAUD_CODES))
    return bytes([Op.BAUD, BAUD_CODES[rate]])


def power() -> bytes:
    return bytes([Op.POWER])


def spot() -> bytes:
    return bytes([Op.SPOT])


def clean() -> bytes:
    return bytes([Op.CLEAN])


def max_clean() -> bytes:
    return bytes([Op.MAX])


def seek_dock() -> bytes:
    return bytes([Op.SEEK_DOCK])


def drive(velocity: int, radius: int = RADIUS_STRAIGHT) -> bytes:
    """137 Drive: ``velocity`` mm/s (−500..500), ``radius`` mm (−2000..2000, or the special values).

    Special radii: :data:`RADIUS_STRAIGHT` (32768, sent as 0x8000) or 32767 drive straight, :data:`SPIN_CW`
    (−1) and :data:`SPIN_CCW` (1) turn in place.
    """
    v = _int("drive", "velocity", velocity, -500, 500)
    if type(radius) is int and radius in (RADIUS_STRAIGHT, RADIUS_STRAIGHT_ALT):
        r = radius
    else:
        r = _int("drive", "radius", radius, -2000, 2000) & 0xFFFF
    return bytes([Op.DRIVE]) + _I16.pack(v) + _U16.pack(r)


def drive_straight(velocity: int) -> bytes:
    return drive(velocity, RADIUS_STRAIGHT)


def spin(velocity: int, *, clockwise: bool) -> bytes:
    return drive(velocity, SPIN_CW if clockwise else SPIN_CCW)


def drive_direct(right: int, left: int) -> bytes:
    """145 Drive Direct: each wheel −500..500 mm/s, right wheel first on the wire."""
    r = _int("drive_direct", "right", right, -500, 500)
    l_ = _int("drive_direct", "left", left, -500, 500)
    return bytes([Op.DRIVE_DIRECT]) + _I16.pack(r) + _I16.pack(l_)


def drive_pwm(right: int, left: int) -> bytes:
    """146 Drive PWM: each wheel −255..255, right first."""
    r = _int("drive_pwm", "right", right, -255, 255)
    l_ = _int("drive_pwm", "left", left, -255, 255)
    return bytes([Op.DRIVE_PWM]) + _I16.pack(r) + _I16.pack(l_)


def motors(
    *,
    side_brush: bool = False,
    vacuum: bool = False,
    main_brush: bool = False,
    side_clockwise: bool = False,
    main_outward: bool = False,
) -> bytes:
    """138 Motors, full speed on/off; directions as in the spec's bit table."""
    bits = (
        _flag("motors", "side_brush", side_brush)
        | _flag("motors", "vacuum", vacuum) << 1
        | _flag("motors", "main_brush", main_brush) << 2
        | _flag("motors", "side_clockwise", side_clockwise) << 3
        | _flag("motors", "main_outward", main_outward) << 4
    )
    return bytes([Op.MOTORS, bits])


def pwm_motors(main_brush: int, side_brush: int, vacuum: int) -> bytes:
    """144 PWM Motors: brushes −127..127 (duty out of 128, sign = direction), vacuum 0..127."""
    m = _int("pwm_motors", "main_brush", main_brush, -127, 127)
    s = _int("pwm_motors", "side_brush", side_brush, -127, 127)
    v = _int("pwm_motors", "vacuum", vacuum, 0, 127)
    return bytes([Op.PWM_MOTORS, m & 0xFF, s & 0xFF, v])


def leds(
    *,
    debris: bool = False,
    spot: bool = False,
    dock: bool = False,
    check_robot: bool = False,
    power_color: int = 0,
    power_intensity: int = 0,
) -> bytes:
    """139 LEDs: four indicator LEDs, and the power LED's colour (0 green..255 red) and intensity."""
    bits = (
        _flag("leds", "debris", debris)
        | _flag("leds", "spot", spot) << 1
        | _flag("leds", "dock", dock) << 2
        | _flag("leds", "check_robot", check_robot) << 3
    )
    color = _int("leds", "power_color", power_color, 0, 255)
    intensity = _int("leds", "power_intensity", power_intensity, 0, 255)
    return bytes([Op.LEDS, bits, color, intensity])


def scheduling_leds(
    weekdays: int = 0,
    *,
    colon: bool = False,
    pm: bool = False,
    am: bool = False,
    clock: bool = False,
    schedule: bool = False,
) -> bytes:
    """162 Scheduling LEDs: weekday bits (bit 0 Sunday..bit 6 Saturday) and the clock/schedule icons."""
    days = _int("scheduling_leds", "weekdays", weekdays, 0, 127)
    bits = (
        _flag("scheduling_leds", "colon", colon)
        | _flag("scheduling_leds", "pm", pm) << 1
        | _flag("scheduling_leds", "am", am) << 2
        | _flag("scheduling_leds", "clock", clock) << 3
        | _flag("scheduling_leds", "schedule", schedule) << 4
    )
    return bytes([Op.SCHEDULING_LEDS, days, bits])


def digit_leds_raw(digits: Sequence[int]) -> bytes:
    """163 Digit LEDs Raw, digits 3..0 left to right, segment bits A..G. Broken on current firmware."""
    if len(digits) != 4:
        raise CommandRangeError("digit_leds_raw", "digits", digits, "exactly 4 segment bytes")
    segs = [_int("digit_leds_raw", f"digits[{i}]", d, 0, 127) for i, d in enumerate(digits)]
    return bytes([Op.DIGIT_LEDS_RAW, *segs])


def digit_leds_ascii(text: str) -> bytes:
    """164 Digit LEDs ASCII: up to 4 printable ASCII characters (32..126), left to right, padded with spaces."""
    if not isinstance(text, str) or len(text) > 4 or any(not 32 <= ord(c) <= 126 for c in text):
        raise CommandRangeError("digit_leds_ascii", "text", text, "0-4 printable ASCII characters (32..126)")
    return bytes([Op.DIGIT_LEDS_ASCII]) + text.ljust(4).encode("ascii")


def buttons(bits: int) -> bytes:
    """165 Buttons: push buttons (bit 0 Clean..bit 7 Clock); they release after 1/6 s."""
    return bytes([Op.BUTTONS, _int("buttons", "bits", bits, 0, 255)])


def song(number: int, notes: Sequence[tuple[int, int]]) -> bytes:
    """140 Song: slot 0..4, 1..16 (note, duration) pairs; note 31..127 (MIDI) or 0 for a rest; duration in
    1/64 s (0..255)."""
    n = _int("song", "number", number, 0, 4)
    if not 1 <= len(notes) <= 16:
        raise CommandRangeError("song", "notes", len(notes), "1..16 notes")
    out = bytearray([Op.SONG, n, len(notes)])
    for i, pair in enumerate(notes):
        if len(pair) != 2:
            raise CommandRangeError("song", f"notes[{i}]", pair, "a (note, duration) pair")
        note, duration = pair
        if _int("song", f"notes[{i}].note", note, 0, 127) != REST and note < 31:
            raise CommandRangeError("song", f"notes[{i}].note", note, "31..127, or 0 for a rest")
        out += bytes([note, _int("song", f"notes[{i}].duration", duration, 0, 255)])
    return bytes(out)


def play(number: int) -> bytes:
    """141 Play a song slot defined with :func:`song`."""
    return bytes([Op.PLAY, _int("play", "number", number, 0, 4)])


def _packet_id(command: str, field: str, pid: object) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid not in PACKETS:
        raise CommandRangeError(command, field, pid, "a packet id 0-6, 7-58, 100, 101, 106 or 107")
    return pid


def sensors(packet_id: int) -> bytes:
    """142 Sensors: asks for one packet or group; the reply is its data bytes only."""
    return bytes([Op.SENSORS, _packet_id("sensors", "packet_id", packet_id)])


def query_list(packet_ids: Sequence[int]) -> bytes:
    """149 Query List: asks once for several packets; the reply is their data bytes in request order."""
    if not 1 <= len(packet_ids) <= 255:
        raise CommandRangeError("query_list", "packet_ids", len(packet_ids), "1..255 ids")
    ids = [_packet_id("query_list", f"packet_ids[{i}]", p) for i, p in enumerate(packet_ids)]
    return bytes([Op.QUERY_LIST, len(ids), *ids])


def stream(packet_ids: Sequence[int], *, baud_rate: int | None = None) -> bytes:
    """148 Stream: the robot sends these packets every 15 ms; ``[]`` asks it to stop (de facto, not spec).

    With ``baud_rate`` the frame is checked against what the link can carry in one 15 ms slot.
    """
    if len(packet_ids) > 255:
        raise CommandRangeError("stream", "packet_ids", len(packet_ids), "0..255 ids")
    ids = [_packet_id("stream", f"packet_ids[{i}]", p) for i, p in enumerate(packet_ids)]
    if baud_rate is not None and ids:
        check_stream_budget(ids, baud_rate)
    return bytes([Op.STREAM, len(ids), *ids])


def pause_resume_stream(resume: bool) -> bytes:
    """150: ``False`` pauses the stream keeping its list, ``True`` resumes it."""
    return bytes([Op.PAUSE_RESUME_STREAM, _flag("pause_resume_stream", "resume", resume)])


def schedule(times: Mapping[int | str, tuple[int, int]]) -> bytes:
    """167 Schedule: ``{day: (hour, minute)}`` with day 0=Sunday..6=Saturday or "sun".."sat"; ``{}``
    disables scheduled cleaning."""
    days = 0
    pairs = [0] * 14
    for day, hm in times.items():
        index = _DAYS.index(day[:3].lower()) if isinstance(day, str) and day[:3].lower() in _DAYS else day
        if not isinstance(index, int):
            raise CommandRangeError("schedule", "day", day, "0..6 (0 = Sunday) or sun..sat")
        i = _int("schedule", "day", index, 0, 6)
        if not isinstance(hm, tuple | list) or len(hm) != 2:
            raise CommandRangeError("schedule", f"times[{day!r}]", hm, "an (hour, minute) pair")
        days |= 1 << i
        pairs[2 * i] = _int("schedule", f"times[{day!r}].hour", hm[0], 0, 23)
        pairs[2 * i + 1] = _int("schedule", f"times[{day!r}].minute", hm[1], 0, 59)
    return bytes([Op.SCHEDULE, days, *pairs])


def set_day_time(day: int, hour: int, minute: int) -> bytes:
    """168 Set Day/Time: day 0=Sunday..6, 24 h clock."""
    return bytes(
        [
            Op.SET_DAY_TIME,
            _int("set_day_time", "day", day, 0, 6),
            _int("set_day_time", "hour", hour, 0, 23),
            _int("set_day_time", "minute", minute, 0, 59),
        ]
    )


def check_mode(command: bytes, mode: OIMode) -> None:
    """Raise :class:`ModeError` if the robot in ``mode`` would ignore ``command`` (its first byte)."""
    spec = OPCODES.get(command[0]) if command else None
    if spec is None:
        raise ModeError(f"{command[:1]!r} is not an OI opcode")
    if mode not in spec.allowed_modes:
        allowed = ", ".join(m.name for m in sorted(spec.allowed_modes)) or "none (removed on Create 2)"
        raise ModeError(
            f"{spec.name} ({spec.opcode}) is ignored in {OIMode(mode).name}; it needs one of: {allowed}"
        )


# ------------------------------------------------------------------------------------------ decoding


class ChargingState(IntEnum):
    NOT_CHARGING = 0
    RECONDITIONING = 1
    FULL_CHARGING = 2
    TRICKLE = 3
    WAITING = 4
    FAULT = 5


class BumpsWheelDrops(IntFlag):
    BUMP_RIGHT = 1
    BUMP_LEFT = 2
    WHEEL_DROP_RIGHT = 4
    WHEEL_DROP_LEFT = 8


class WheelOvercurrents(IntFlag):
    SIDE_BRUSH = 1
    RESERVED = 2
    MAIN_BRUSH = 4
    RIGHT_WHEEL = 8
    LEFT_WHEEL = 16


class Buttons(IntFlag):
    CLEAN = 1
    SPOT = 2
    DOCK = 4
    MINUTE = 8
    HOUR = 16
    DAY = 32
    SCHEDULE = 64
    CLOCK = 128


class ChargingSources(IntFlag):
    INTERNAL = 1
    HOME_BASE = 2


class LightBumper(IntFlag):
    LEFT = 1
    FRONT_LEFT = 2
    CENTER_LEFT = 4
    CENTER_RIGHT = 8
    FRONT_RIGHT = 16
    RIGHT = 32


class Stasis(IntFlag):
    TOGGLING = 1
    DISABLED = 2


_TYPED: dict[int, type[IntEnum] | type[IntFlag]] = {
    7: BumpsWheelDrops,
    14: WheelOvercurrents,
    18: Buttons,
    21: ChargingState,
    34: ChargingSources,
    35: OIMode,
    45: LightBumper,
    58: Stasis,
}


@dataclass(frozen=True, slots=True)
class Reading:
    """A decoded value with its meaning: ``value`` is a bool, an enum/flag, or an int in ``units``."""

    key: str
    raw: int
    value: object
    units: str


_KEY_SPEC = {p.key: p for p in PACKETS.values() if not p.is_group}


def interpret(key: str, raw: int) -> Reading:
    """Give a raw sensor value its type: booleans, enums and bit flags, or a number with units.

    Enum values the spec does not define (e.g. a charging state of 6, seen in the wild) stay plain ints.
    """
    spec = _KEY_SPEC[key]
    value: object = raw
    if spec.units == "bool":
        value = bool(raw)
    elif spec.id in _TYPED:
        kind = _TYPED[spec.id]
        try:
            value = kind(raw)
        except ValueError:
            value = raw
    return Reading(key, raw, value, spec.units)


def readings(values: Mapping[str, int]) -> dict[str, Reading]:
    return {k: interpret(k, v) for k, v in values.items() if k in _KEY_SPEC}


class Layout:
    """A precompiled decoder for one list of requested packet ids (a reply or a stream frame).

    Built once per distinct request; decoding is then a single ``struct.unpack_from`` and a ``zip``.
    """

    __slots__ = (
        "frame_size",
        "frame_struct",
        "id_checks",
        "ids",
        "index",
        "keys",
        "nbytes",
        "reply_size",
        "reply_struct",
    )

    def __init__(self, ids: Iterable[int]) -> None:
        self.ids: tuple[int, ...] = tuple(ids)
        keys: list[str] = []
        reply_fmt = [">"]
        frame_fmt = [">xx"]
        id_checks: list[tuple[int, int]] = []
        offset = 2
        for pid in self.ids:
            id_checks.append((offset, pid))
            frame_fmt.append("x")
            offset += 1
            for member in members(pid):
                spec = PACKETS[member]
                keys.append(spec.key)
                reply_fmt.append(spec.struct_format)
                frame_fmt.append(spec.struct_format)
                offset += spec.size
        frame_fmt.append("x")
        self.keys: tuple[str, ...] = tuple(keys)
        self.index: dict[str, int] = {key: i for i, key in enumerate(self.keys)}
        self.reply_struct = struct.Struct("".join(reply_fmt))
        self.frame_struct = struct.Struct("".join(frame_fmt))
        self.reply_size: int = self.reply_struct.size
        self.frame_size: int = self.frame_struct.size
        self.nbytes: int = self.frame_size - 3
        self.id_checks: tuple[tuple[int, int], ...] = tuple(id_checks)

    def decode_reply(self, data: bytes | bytearray | memoryview) -> dict[str, int]:
        if len(data) != self.reply_size:
            raise ValueError(f"reply to {list(self.ids)} is {self.reply_size} bytes, got {len(data)}")
        return dict(zip(self.keys, self.reply_struct.unpack(data), strict=False))


def reply_length(packet_ids: Sequence[int]) -> int:
    """Bytes the robot answers to 142/149 for these ids (data only: no header, no checksum)."""
    return sum(PACKETS[m].size for pid in packet_ids for m in members(pid))


def decode_reply(packet_ids: Sequence[int], data: bytes | bytearray | memoryview) -> dict[str, int]:
    """Decode the reply to Sensors (142) or Query List (149) for ``packet_ids``, keyed by packet key."""
    return Layout(packet_ids).decode_reply(data)


def decode_packet(packet_id: int, data: bytes | bytearray | memoryview) -> dict[str, int]:
    """Decode one packet or group's data; a group expands to its members' keys."""
    return Layout((packet_id,)).decode_reply(data)


def stream_frame_size(packet_ids: Sequence[int]) -> int:
    """Bytes on the wire per stream frame: header, n-bytes, ids, data, checksum."""
    return 3 + len(packet_ids) + reply_length(packet_ids)


def stream_budget(baud_rate: int) -> int:
    """Bytes the link carries in one 15 ms stream slot (10 bits per byte): 172 at 115200."""
    return baud_rate * 15 // 10_000


def check_stream_budget(packet_ids: Sequence[int], baud_rate: int) -> None:
    size, budget = stream_frame_size(packet_ids), stream_budget(baud_rate)
    if size > budget:
        raise StreamBudgetError(
            f"a stream of {list(packet_ids)} is {size} bytes per frame but {baud_rate} baud carries only "
            f"{budget} bytes per 15 ms; request fewer packets (frames would be corrupted)"
        )


def frame_from_body(body: bytes | bytearray) -> bytes:
    """Wrap ``[id1][data1]…[idN][dataN]`` as a stream frame: header 19, n-bytes, body, and the checksum that
    makes the sum of every byte, header included, 0 mod 256 (the simulator sends exactly this). n-bytes is one
    byte: an oversized body wraps it, as a robot asked for too much would."""
    frame = bytearray((_HEADER, len(body) & 0xFF))
    frame += body
    frame.append(-sum(frame) & 0xFF)
    return bytes(frame)


def encode_frame(packet_ids: Sequence[int], values: Mapping[str, int]) -> bytes:
    """Build a stream frame, as the robot would. For tests, benchmarks and simulators."""
    body = bytearray()
    for pid in packet_ids:
        body.append(pid)
        for member in members(pid):
            body += pack(member, values.get(PACKETS[member].key, 0))
    if len(body) > 255:
        raise ValueError(
            f"a stream frame body holds at most 255 bytes (n-bytes is one byte), got {len(body)}"
        )
    return frame_from_body(body)


class FrameValues(Mapping[str, int]):
    """A read-only mapping over one decoded frame: the unpacked tuple plus the layout's shared key index.

    Building it costs one object, not a dict of 52 entries per frame; ``to_dict()`` gives a plain dict.
    """

    __slots__ = ("_index", "_keys", "raw")

    def __init__(self, keys: tuple[str, ...], index: Mapping[str, int], raw: tuple[int, ...]) -> None:
        self._keys = keys
        self._index = index
        self.raw = raw

    def __getitem__(self, key: str) -> int:
        return self.raw[self._index[key]]

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, key: str, default: int | None = None) -> int | None:  # type: ignore[override]
        i = self._index.get(key)
        return default if i is None else self.raw[i]

    def to_dict(self) -> dict[str, int]:
        return dict(zip(self._keys, self.raw, strict=False))

    def __repr__(self) -> str:
        return f"FrameValues({self.to_dict()!r})"


# ------------------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class SensorFrame:
    """A stream frame whose checksum held. ``values`` maps ``PacketSpec.key`` to the decoded integer."""

    values: FrameValues
    ids: tuple[int, ...]
    at: float


@dataclass(frozen=True, slots=True)
class CorruptFrame:
    """A frame-shaped run of bytes whose checksum failed; the parser resynchronised after its header."""

    ids: tuple[int, ...]
    length: int
    at: float


@dataclass(frozen=True, slots=True)
class TextLine:
    """A line of the robot's own ASCII output (boot banner, status text) that no other event covers."""

    text: str
    at: float


@dataclass(frozen=True, slots=True)
class BatteryLine:
    """The once-a-second ``bat:`` line a docked robot prints, parsed."""

    minutes: int
    seconds: int
    millivolts: int
    milliamps: int
    tenths_deg_c: int
    mah: int
    state: int
    mode: int
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class FirmwareBanner:
    """The firmware release line of the boot banner, e.g. ``r3-robot/tags/release-stm32-3.7.1:6174 CLEAN``."""

    version: str
    text: str
    at: float


@dataclass(frozen=True, slots=True)
class BootMarker:
    """A 0xFE byte: the robot (re)booted, or is stuck in its bootloader if these keep coming."""

    at: float


StreamEvent = SensorFrame | CorruptFrame | TextLine | BatteryLine | FirmwareBanner | BootMarker


@dataclass(frozen=True, slots=True)
class ParserStats:
    frames_ok: int
    frames_corrupt: int
    bytes_discarded: int
    resyncs: int
    text_lines: int
    overflows: int


_BOOT = 0xFE
_TEXT_RUN = re.compile(rb"[\t\n\r\x20-\x7e]+")
_BAT = re.compile(
    r"bat:\s+min\s+(-?\d+)\s+sec\s+(-?\d+)\s+mV\s+(-?\d+)\s+mA\s+(-?\d+)\s+tenths-deg-C\s+(-?\d+)"
    r"\s+mAH\s+(-?\d+)\s+state\s+(-?\d+)\s+mode\s+(-?\d+)"
)
_FIRMWARE = re.compile(r"r3[-_]robot/tags/.*?(\d+\.\d+\.\d+)(?=[:\s]|$)")


def parse_text_line(text: str, at: float) -> TextLine | BatteryLine | FirmwareBanner:
    """Classify one line of the robot's ASCII output."""
    bat = _BAT.search(text)
    if bat:
        m, s, mv, ma, temp, mah, state, mode = (int(g) for g in bat.groups())
        return BatteryLine(m, s, mv, ma, temp, mah, state, mode, text, at)
    fw = _FIRMWARE.search(text)
    if fw:
        return FirmwareBanner(fw.group(1), text, at)
    return TextLine(text, at)


class StreamParser:
    """Incremental parser for everything the robot sends while a Stream (148) runs.

    Frames are found by header (19) and checked with the header-inclusive checksum; a frame matching the
    expected layout is decoded with one precompiled struct. Anything between frames is either the robot's
    ASCII text (collected into lines and classified) or noise (counted and skipped). After a bad checksum the
    search restarts one byte after the bad header, so a real frame hidden inside the bad one is not lost.
    The buffer is capped: if a peer floods it without ever completing a frame, the oldest bytes are dropped.
    """

    def __init__(
        self, ids: Sequence[int] | None = None, *, max_buffer: int = 4096, max_line: int = 256
    ) -> None:
        self._buf = bytearray()
        self._text = bytearray()
        self._layouts: dict[tuple[int, ...], Layout] = {}
        self._layout: Layout | None = None
        self._max_buffer = max(max_buffer, 512)
        self._max_line = max_line
        self.frames_ok = 0
        self.frames_corrupt = 0
        self.bytes_discarded = 0
        self.resyncs = 0
        self.text_lines = 0
        self.overflows = 0
        if ids:
            self.expect(ids)

    def expect(self, ids: Sequence[int]) -> None:
        """Declare the stream list just requested, so its frames take the fast path."""
        key = tuple(ids)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = Layout(key)
        self._layout = layout

    def reset(self) -> None:
        """Forget buffered bytes (after a reconnect: a half frame from the old link is meaningless)."""
        self._buf.clear()
        self._text.clear()

    @property
    def stats(self) -> ParserStats:
        return ParserStats(
            self.frames_ok,
            self.frames_corrupt,
            self.bytes_discarded,
            self.resyncs,
            self.text_lines,
            self.overflows,
        )

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview, now: float = 0.0) -> list[StreamEvent]:
        """Add received bytes; return the events they complete, in wire order. Never raises on content."""
        buf = self._buf
        buf += data
        events: list[StreamEvent] = []
        if len(buf) > self._max_buffer:
            excess = len(buf) - self._max_buffer
            del buf[:excess]
            self.bytes_discarded += excess
            self.overflows += 1
        end = len(buf)
        pos = 0
        layout = self._layout
        if layout is not None:
            l_nbytes, l_first, l_size = layout.nbytes, layout.ids[0], layout.frame_size
            l_multi = len(layout.ids) > 1
        else:
            l_nbytes = l_first = l_size = -1
            l_multi = False
        append = events.append
        ok = 0
        view = memoryview(buf)
        try:
            while pos < end:
                h = pos if buf[pos] == _HEADER else buf.find(_HEADER, pos)
                if h < 0:
                    self._junk(buf, pos, end, events, now)
                    pos = end
                    break
                if h > pos:
                    self._junk(buf, pos, h, events, now)
                    pos = h
                if end - h < 3:
                    break
                nbytes = buf[h + 1]
                candidate: Layout | None = None
                if nbytes == l_nbytes and buf[h + 2] == l_first:
                    assert layout is not None
                    candidate = layout
                    if l_multi:
                        for off, pid in layout.id_checks:
                            if buf[h + off] != pid:
                                candidate = None
                                break
                    if candidate is not None and h + l_size > end:
                        break
                if candidate is None:
                    walked = self._walk(buf, h, end, nbytes)
                    if walked is None:
                        break
                    if walked is False:
                        self.bytes_discarded += 1
                        self.resyncs += 1
                        self._text.clear()
                        pos = h + 1
                        continue
                    candidate = walked
                size = candidate.frame_size
                if sum(view[h : h + size]) & 0xFF:
                    self.frames_corrupt += 1
                    self.bytes_discarded += 1
                    append(CorruptFrame(candidate.ids, size, now))
                    pos = h + 1
                    continue
                ok += 1
                append(
                    SensorFrame(
                        FrameValues(
                            candidate.keys, candidate.index, candidate.frame_struct.unpack_from(buf, h)
                        ),
                        candidate.ids,
                        now,
                    )
                )
                pos = h + size
        finally:
            view.release()
        self.frames_ok += ok
        if pos:
            del buf[:pos]
        return events

    def _walk(self, buf: bytearray, h: int, end: int, nbytes: int) -> Layout | Literal[False] | None:
        """Read a frame's id list using the packet table: a Layout, None (need more bytes) or False (not a
        frame: unknown id, or the sizes do not add up to n-bytes)."""
        if nbytes == 0:
            return False
        stop = h + 2 + nbytes
        off = h + 2
        ids: list[int] = []
        while off < stop:
            if off >= end:
                return None
            spec = PACKETS.get(buf[off])
            if spec is None:
                return False
            ids.append(spec.id)
            off += 1 + spec.size
        if off != stop:
            return False
        if stop + 1 > end:
            return None
        key = tuple(ids)
        layout = self._layouts.get(key)
        if layout is None:
            if len(self._layouts) > 64:
                self._layouts.clear()
            layout = self._layouts[key] = Layout(key)
        return layout

    def _junk(self, buf: bytearray, start: int, stop: int, events: list[StreamEvent], now: float) -> None:
        segment = bytes(buf[start:stop])
        last = 0
        for match in _TEXT_RUN.finditer(segment):
            if match.start() > last:
                self._noise(segment[last : match.start()], events, now)
            self._add_text(match.group(), events, now)
            last = match.end()
        if last < len(segment):
            self._noise(segment[last:], events, now)

    def _noise(self, chunk: bytes, events: list[StreamEvent], now: float) -> None:
        if chunk.count(_BOOT) == len(chunk):
            events.extend(BootMarker(now) for _ in chunk)
            return
        self.bytes_discarded += len(chunk)
        self.resyncs += 1
        self._text.clear()

    def _add_text(self, chunk: bytes, events: list[StreamEvent], now: float) -> None:
        text = self._text
        text += chunk
        while True:
            nl = text.find(b"\n")
            if nl < 0:
                break
            line = text[:nl].decode("ascii").strip()
            del text[: nl + 1]
            if line:
                self.text_lines += 1
                events.append(parse_text_line(line, now))
        if len(text) > self._max_line:
            self.text_lines += 1
            events.append(TextLine(text.decode("ascii").strip(), now))
            text.clear()
