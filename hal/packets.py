"""The Open Interface sensor packet table: one declarative line per packet.

The table is the single source of truth for sizes and signedness, shared by the client codec and the
simulator (which packs what the client unpacks), so the two can never drift apart. Values come from the
iRobot Create 2 Open Interface Specification (2016), tabulated in ``tests/hal/hal_data/oi_packets.tsv`` (the
tests check this table against it); where the spec contradicts itself the table follows the per-packet page
(e.g. encoders 43/44 are signed, motor currents are signed).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "GROUP_IDS",
    "KEY_TO_ID",
    "PACKETS",
    "SINGLE_IDS",
    "PacketSpec",
    "members",
    "pack",
    "unpack",
]


@dataclass(frozen=True, slots=True)
class PacketSpec:
    """One sensor packet (7–58) or group (0–6, 100, 101, 106, 107).

    ``key`` is the stable snake_case name used in ``RobotState.sensors`` and in telemetry. ``min``/``max``
    are the spec's documented range (informational: real robots and quirky firmware may exceed it).
    ``members`` is empty for a single packet and lists the member ids, ascending, for a group.
    """

    id: int
    name: str
    key: str
    size: int
    signed: bool
    units: str
    min: int
    max: int
    members: tuple[int, ...] = field(default=())

    @property
    def is_group(self) -> bool:
        return bool(self.members)

    @property
    def struct_format(self) -> str:
        """The ``struct`` format character of a single packet (``B``, ``b``, ``H`` or ``h``)."""
        if self.is_group:
            raise ValueError(f"packet {self.id} is a group; it has no single struct format")
        char = "B" if self.size == 1 else "H"
        return char.lower() if self.signed else char


def _single(
    pid: int, name: str, key: str, size: int, signed: bool, units: str, lo: int, hi: int
) -> PacketSpec:
    return PacketSpec(pid, name, key, size, signed, units, lo, hi)


_SINGLES: tuple[PacketSpec, ...] = (
    _single(7, "Bumps and Wheel Drops", "bumps_wheel_drops", 1, False, "bitfield", 0, 15),
    _single(8, "Wall", "wall", 1, False, "bool", 0, 1),
    _single(9, "Cliff Left", "cliff_left", 1, False, "bool", 0, 1),
    _single(10, "Cliff Front Left", "cliff_front_left", 1, False, "bool", 0, 1),
    _single(11, "Cliff Front Right", "cliff_front_right", 1, False, "bool", 0, 1),
    _single(12, "Cliff Right", "cliff_right", 1, False, "bool", 0, 1),
    _single(13, "Virtual Wall", "virtual_wall", 1, False, "bool", 0, 1),
    _single(14, "Wheel Overcurrents", "wheel_overcurrents", 1, False, "bitfield", 0, 31),
    _single(15, "Dirt Detect", "dirt_detect", 1, False, "level", 0, 255),
    _single(16, "Unused Byte", "unused_16", 1, False, "none", 0, 0),
    _single(17, "Infrared Character Omni", "ir_omni", 1, False, "char", 0, 255),
    _single(18, "Buttons", "buttons", 1, False, "bitfield", 0, 255),
    _single(19, "Distance", "distance", 2, True, "mm", -32768, 32767),
    _single(20, "Angle", "angle", 2, True, "deg", -32768, 32767),
    _single(21, "Charging State", "charging_state", 1, False, "enum", 0, 5),
    _single(22, "Voltage", "voltage", 2, False, "mV", 0, 65535),
    _single(23, "Current", "current", 2, True, "mA", -32768, 32767),
    _single(24, "Temperature", "temperature", 1, True, "degC", -128, 127),
    _single(25, "Battery Charge", "battery_charge", 2, False, "mAh", 0, 65535),
    _single(26, "Battery Capacity", "battery_capacity", 2, False, "mAh", 0, 65535),
    _single(27, "Wall Signal", "wall_signal", 2, False, "raw", 0, 1023),
    _single(28, "Cliff Left Signal", "cliff_left_signal", 2, False, "raw", 0, 4095),
    _single(29, "Cliff Front Left Signal", "cliff_front_left_signal", 2, False, "raw", 0, 4095),
    _single(30, "Cliff Front Right Signal", "cliff_front_right_signal", 2, False, "raw", 0, 4095),
    _single(31, "Cliff Right Signal", "cliff_right_signal", 2, False, "raw", 0, 4095),
    _single(32, "Unused 2", "unused_32", 1, False, "none", 0, 255),
    _single(33, "Unused 3", "unused_33", 2, False, "none", 0, 65535),
    _single(34, "Charging Sources Available", "charging_sources", 1, False, "bitfield", 0, 3),
    _single(35, "OI Mode", "oi_mode", 1, False, "enum", 0, 3),
    _single(36, "Song Number", "song_number", 1, False, "index", 0, 15),
    _single(37, "Song Playing", "song_playing", 1, False, "bool", 0, 1),
    _single(38, "Number of Stream Packets", "stream_packets", 1, False, "count", 0, 108),
    _single(39, "Requested Velocity", "requested_velocity", 2, True, "mm/s", -500, 500),
    _single(40, "Requested Radius", "requested_radius", 2, True, "mm", -32768, 32767),
    _single(41, "Requested Right Velocity", "requested_right_velocity", 2, True, "mm/s", -500, 500),
    _single(42, "Requested Left Velocity", "requested_left_velocity", 2, True, "mm/s", -500, 500),
    _single(43, "Left Encoder Counts", "left_encoder_counts", 2, True, "counts", -32768, 32767),
    _single(44, "Right Encoder Counts", "right_encoder_counts", 2, True, "counts", -32768, 32767),
    _single(45, "Light Bumper", "light_bumper", 1, False, "bitfield", 0, 127),
    _single(46, "Light Bump Left Signal", "light_bump_left_signal", 2, False, "raw", 0, 4095),
    _single(47, "Light Bump Front Left Signal", "light_bump_front_left_signal", 2, False, "raw", 0, 4095),
    _single(48, "Light Bump Center Left Signal", "light_bump_center_left_signal", 2, False, "raw", 0, 4095),
    _single(49, "Light Bump Center Right Signal", "light_bump_center_right_signal", 2, False, "raw", 0, 4095),
    _single(50, "Light Bump Front Right Signal", "light_bump_front_right_signal", 2, False, "raw", 0, 4095),
    _single(51, "Light Bump Right Signal", "light_bump_right_signal", 2, False, "raw", 0, 4095),
    _single(52, "Infrared Character Left", "ir_left", 1, False, "char", 0, 255),
    _single(53, "Infrared Character Right", "ir_right", 1, False, "char", 0, 255),
    _single(54, "Left Motor Current", "left_motor_current", 2, True, "mA", -32768, 32767),
    _single(55, "Right Motor Current", "right_motor_current", 2, True, "mA", -32768, 32767),
    _single(56, "Main Brush Motor Current", "main_brush_motor_current", 2, True, "mA", -32768, 32767),
    _single(57, "Side Brush Motor Current", "side_brush_motor_current", 2, True, "mA", -32768, 32767),
    _single(58, "Stasis", "stasis", 1, False, "bitfield", 0, 3),
)

_GROUP_RANGES: tuple[tuple[int, str, int, int], ...] = (
    (0, "Group 0", 7, 26),
    (1, "Group 1", 7, 16),
    (2, "Group 2", 17, 20),
    (3, "Group 3", 21, 26),
    (4, "Group 4", 27, 34),
    (5, "Group 5", 35, 42),
    (6, "Group 6", 7, 42),
    (100, "Group 100 (all)", 7, 58),
    (101, "Group 101", 43, 58),
    (106, "Group 106 (light bump signals)", 46, 51),
    (107, "Group 107 (motor currents and stasis)", 54, 58),
)

_BY_ID_SINGLE = {p.id: p for p in _SINGLES}


def _group(gid: int, name: str, first: int, last: int) -> PacketSpec:
    ids = tuple(range(first, last + 1))
    size = sum(_BY_ID_SINGLE[i].size for i in ids)
    return PacketSpec(gid, name, f"group_{gid}", size, False, "group", 0, 0, ids)


PACKETS: dict[int, PacketSpec] = {p.id: p for p in _SINGLES}
PACKETS.update({g[0]: _group(*g) for g in _GROUP_RANGES})
PACKETS = dict(sorted(PACKETS.items()))

SINGLE_IDS: tuple[int, ...] = tuple(p.id for p in _SINGLES)
GROUP_IDS: tuple[int, ...] = tuple(g[0] for g in _GROUP_RANGES)
KEY_TO_ID: dict[str, int] = {p.key: p.id for p in PACKETS.values()}

_STRUCTS: dict[int, struct.Struct] = {p.id: struct.Struct(">" + p.struct_format) for p in _SINGLES}


def _spec(pid: int) -> PacketSpec:
    try:
        return PACKETS[pid]
    except KeyError:
        raise KeyError(
            f"unknown OI sensor packet id {pid}; valid ids are 0-6, 7-58, 100, 101, 106, 107"
        ) from None


def members(pid: int) -> tuple[int, ...]:
    """The single packet ids whose data a request for ``pid`` returns, in wire order."""
    spec = _spec(pid)
    return spec.members if spec.is_group else (spec.id,)


def pack(pid: int, value: int, *, wrap: bool = False) -> bytes:
    """Encode one single packet's value big-endian with the spec's signedness.

    A value that does not fit the packet's width raises ``ValueError`` unless ``wrap`` is set, in which case
    it is reduced modulo 2**bits first (what cumulative counters such as the encoders do on the robot).
    """
    spec = _spec(pid)
    if spec.is_group:
        raise ValueError(f"packet {pid} is a group; pack its members one by one")
    bits = 8 * spec.size
    if wrap:
        value &= (1 << bits) - 1
        if spec.signed and value >= 1 << (bits - 1):
            value -= 1 << bits
    try:
        return _STRUCTS[pid].pack(value)
    except struct.error:
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if spec.signed else (0, (1 << bits) - 1)
        raise ValueError(f"packet {pid} ({spec.key}) holds {lo}..{hi}, got {value}") from None


def unpack(pid: int, data: bytes | bytearray | memoryview) -> int:
    """Decode one single packet's data bytes (exactly ``size`` of them)."""
    spec = _spec(pid)
    if spec.is_group:
        raise ValueError(f"packet {pid} is a group; use hal.codec to decode groups")
    if len(data) != spec.size:
        raise ValueError(f"packet {pid} ({spec.key}) is {spec.size} byte(s), got {len(data)}")
    value: int = _STRUCTS[pid].unpack(data)[0]
    return value
