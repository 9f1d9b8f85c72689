"""Open Interface commands as bytes: one function per opcode, every argument range-checked first.

An encoder raises :class:`~hal.errors.CommandRangeError` before producing a single byte, so an out-of-range
request can never reach the robot half-sent (we asked for something illegal: nothing is sent).
:func:`check_mode` says whether the robot in a given OI mode would act on a command or silently ignore it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from hal.codec.streaming import check_stream_budget
from hal.errors import CommandRangeError, ModeError
from hal.opcodes import OPCODES, OIMode, Op
from hal.packets import PACKETS

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
