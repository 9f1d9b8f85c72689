"""The Open Interface opcode table: data sizes, the modes each command is accepted in, and where it leads.

Shared by the client codec (which refuses to build a command the current mode would ignore, if asked to) and
the simulator (which must consume exactly the right number of data bytes to stay aligned, whatever the mode).
Source: the iRobot Create 2 Open Interface Specification (2016), tabulated in
``tests/hal/hal_data/oi_opcodes.tsv`` (the tests check this table against it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "ALL_MODES",
    "CONTROL_MODES",
    "OPCODES",
    "OIMode",
    "Op",
    "OpcodeSpec",
    "data_length",
]


class OIMode(IntEnum):
    """OI mode as reported by packet 35."""

    OFF = 0
    PASSIVE = 1
    SAFE = 2
    FULL = 3


class Op(IntEnum):
    """Opcode numbers by name, so code reads ``Op.DRIVE`` rather than ``137``."""

    RESET = 7
    START = 128
    BAUD = 129
    CONTROL = 130
    SAFE = 131
    FULL = 132
    POWER = 133
    SPOT = 134
    CLEAN = 135
    MAX = 136
    DRIVE = 137
    MOTORS = 138
    LEDS = 139
    SONG = 140
    PLAY = 141
    SENSORS = 142
    SEEK_DOCK = 143
    PWM_MOTORS = 144
    DRIVE_DIRECT = 145
    DRIVE_PWM = 146
    DIGITAL_OUTPUTS = 147
    STREAM = 148
    QUERY_LIST = 149
    PAUSE_RESUME_STREAM = 150
    SEND_IR = 151
    SCRIPT = 152
    PLAY_SCRIPT = 153
    SHOW_SCRIPT = 154
    WAIT_TIME = 155
    WAIT_DISTANCE = 156
    WAIT_ANGLE = 157
    WAIT_EVENT = 158
    SCHEDULING_LEDS = 162
    DIGIT_LEDS_RAW = 163
    DIGIT_LEDS_ASCII = 164
    BUTTONS = 165
    SCHEDULE = 167
    SET_DAY_TIME = 168
    STOP = 173


ALL_MODES: frozenset[OIMode] = frozenset(OIMode)
ACTIVE_MODES: frozenset[OIMode] = frozenset({OIMode.PASSIVE, OIMode.SAFE, OIMode.FULL})
CONTROL_MODES: frozenset[OIMode] = frozenset({OIMode.SAFE, OIMode.FULL})
_NONE: frozenset[OIMode] = frozenset()


@dataclass(frozen=True, slots=True)
class OpcodeSpec:
    """One opcode.

    ``data_bytes`` is the fixed number of data bytes after the opcode, or ``None`` when it depends on the
    data itself (Song, Stream, Query List, Script): use :func:`data_length`. ``mode_after`` is ``None`` when
    the command leaves the mode unchanged. ``removed`` marks Create 1 opcodes that the Create 2 ignores
    (their sizes are Create 1's, so a receiver can still skip them); their ``allowed_modes`` is empty.
    """

    opcode: int
    name: str
    data_bytes: int | None
    allowed_modes: frozenset[OIMode]
    mode_after: OIMode | None
    removed: bool = False


def _op(
    op: Op,
    name: str,
    data_bytes: int | None,
    allowed: frozenset[OIMode],
    after: OIMode | None,
    removed: bool = False,
) -> OpcodeSpec:
    return OpcodeSpec(int(op), name, data_bytes, allowed, after, removed)


_TABLE: tuple[OpcodeSpec, ...] = (
    _op(Op.RESET, "Reset", 0, ALL_MODES, OIMode.OFF),
    _op(Op.START, "Start", 0, ALL_MODES, OIMode.PASSIVE),
    _op(Op.BAUD, "Baud", 1, ACTIVE_MODES, None),
    _op(Op.CONTROL, "Control", 0, ACTIVE_MODES, OIMode.SAFE),
    _op(Op.SAFE, "Safe", 0, ACTIVE_MODES, OIMode.SAFE),
    _op(Op.FULL, "Full", 0, ACTIVE_MODES, OIMode.FULL),
    _op(Op.POWER, "Power", 0, ACTIVE_MODES, OIMode.PASSIVE),
    _op(Op.SPOT, "Spot", 0, ACTIVE_MODES, OIMode.PASSIVE),
    _op(Op.CLEAN, "Clean", 0, ACTIVE_MODES, OIMode.PASSIVE),
    _op(Op.MAX, "Max", 0, ACTIVE_MODES, OIMode.PASSIVE),
    _op(Op.DRIVE, "Drive", 4, CONTROL_MODES, None),
    _op(Op.MOTORS, "Motors", 1, CONTROL_MODES, None),
    _op(Op.LEDS, "LEDs", 3, CONTROL_MODES, None),
    _op(Op.SONG, "Song", None, ACTIVE_MODES, None),
    _op(Op.PLAY, "Play", 1, CONTROL_MODES, None),
    _op(Op.SENSORS, "Sensors", 1, ACTIVE_MODES, None),
    _op(Op.SEEK_DOCK, "Seek Dock", 0, ACTIVE_MODES, OIMode.PASSIVE),
    _op(Op.PWM_MOTORS, "PWM Motors", 3, CONTROL_MODES, None),
    _op(Op.DRIVE_DIRECT, "Drive Direct", 4, CONTROL_MODES, None),
    _op(Op.DRIVE_PWM, "Drive PWM", 4, CONTROL_MODES, None),
    _op(Op.DIGITAL_OUTPUTS, "Digital Outputs (removed)", 1, _NONE, None, True),
    _op(Op.STREAM, "Stream", None, ACTIVE_MODES, None),
    _op(Op.QUERY_LIST, "Query List", None, ACTIVE_MODES, None),
    _op(Op.PAUSE_RESUME_STREAM, "Pause/Resume Stream", 1, ACTIVE_MODES, None),
    _op(Op.SEND_IR, "Send IR (removed)", 1, _NONE, None, True),
    _op(Op.SCRIPT, "Script (removed)", None, _NONE, None, True),
    _op(Op.PLAY_SCRIPT, "Play Script (removed)", 0, _NONE, None, True),
    _op(Op.SHOW_SCRIPT, "Show Script (removed)", 0, _NONE, None, True),
    _op(Op.WAIT_TIME, "Wait Time (removed)", 1, _NONE, None, True),
    _op(Op.WAIT_DISTANCE, "Wait Distance (removed)", 2, _NONE, None, True),
    _op(Op.WAIT_ANGLE, "Wait Angle (removed)", 2, _NONE, None, True),
    _op(Op.WAIT_EVENT, "Wait Event (removed)", 1, _NONE, None, True),
    _op(Op.SCHEDULING_LEDS, "Scheduling LEDs", 2, CONTROL_MODES, None),
    _op(Op.DIGIT_LEDS_RAW, "Digit LEDs Raw", 4, CONTROL_MODES, None),
    _op(Op.DIGIT_LEDS_ASCII, "Digit LEDs ASCII", 4, CONTROL_MODES, None),
    _op(Op.BUTTONS, "Buttons", 1, ACTIVE_MODES, None),
    _op(Op.SCHEDULE, "Schedule", 15, ACTIVE_MODES, None),
    _op(Op.SET_DAY_TIME, "Set Day/Time", 3, ACTIVE_MODES, None),
    _op(Op.STOP, "Stop", 0, ACTIVE_MODES, OIMode.OFF),
)

OPCODES: dict[int, OpcodeSpec] = {spec.opcode: spec for spec in _TABLE}


def data_length(opcode: int, received: bytes | bytearray | memoryview | Sequence[int]) -> int | None:
    """Total data bytes ``opcode`` needs, given the data bytes received so far; ``None`` while unknown.

    Song needs its length byte (the second data byte) before the size is known: ``2 + 2 * N``. Stream,
    Query List and Script need their count byte (the first): ``1 + N``. Raises ``KeyError`` for a byte that
    is not an opcode, so a receiver can decide to skip it.
    """
    try:
        spec = OPCODES[opcode]
    except KeyError:
        raise KeyError(f"{opcode} is not an OI opcode") from None
    if spec.data_bytes is not None:
        return spec.data_bytes
    if opcode == Op.SONG:
        return 2 + 2 * received[1] if len(received) >= 2 else None
    return 1 + received[0] if len(received) >= 1 else None
