"""Sensor packets of the simulated robot, pure: the world and the OI's registers in, packet bytes out.

Sizes, signedness and group members come from ``hal.packets`` (the table the client codec decodes with),
so a group is the concatenation of its members, and a value outside its packet's width wraps as the
firmware's counters do. Reading Distance (19) or Angle (20) consumes them, as on the robot.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Protocol

from hal.codec import frame_from_body
from hal.odometry import unwrap16
from hal.opcodes import OIMode
from hal.packets import PACKETS, members, pack
from hal.quirks import ANGLE_BUG_FACTOR
from hal.sim.world import World

__all__ = ["OIRegisters", "SensorEncoder"]


class OIRegisters(Protocol):
    """What the packets read besides the world: the OI's own state (a :class:`~hal.sim.robot.SimRobot`)."""

    @property
    def world(self) -> World: ...
    @property
    def mode(self) -> OIMode: ...
    @property
    def quirks(self) -> frozenset[str]: ...
    @property
    def song_number(self) -> int: ...
    @property
    def song_until(self) -> float: ...
    @property
    def stream_ids(self) -> tuple[int, ...]: ...
    @property
    def requested_velocity(self) -> int: ...
    @property
    def requested_radius(self) -> int: ...
    @property
    def requested_right(self) -> int: ...
    @property
    def requested_left(self) -> int: ...


class SensorEncoder:
    """Packet bytes for one robot; each packet's layout (a ``struct`` and its value getters) is built once."""

    def __init__(self, registers: OIRegisters) -> None:
        self.registers = registers
        self.world = registers.world
        self._getters = self._build_getters()
        self._layouts: dict[int, tuple[struct.Struct, tuple[Callable[[], int], ...], tuple[int, ...]]] = {}

    def frame(self, stream_ids: tuple[int, ...]) -> bytes:
        """One stream frame (148 Stream's reply every 15 ms): header, length, id and data per packet, checksum."""
        body = bytearray()
        for pid in stream_ids:
            body.append(pid)
            body += self.packet(pid)
        return frame_from_body(body)

    def packet(self, pid: int) -> bytes:
        """Packet ``pid``'s data bytes (a group: its members' in order), as 142 Sensors returns them."""
        layout = self._layouts.get(pid)
        if layout is None:
            ids = members(pid)
            fmt = ">" + "".join(PACKETS[m].struct_format for m in ids)
            layout = self._layouts[pid] = (struct.Struct(fmt), tuple(self._getters[m] for m in ids), ids)
        packer, getters, ids = layout
        values = [get() for get in getters]
        try:
            return packer.pack(*values)
        except struct.error:  # a value outside its packet's width: wrap it as the firmware's counters do
            return b"".join(pack(m, v, wrap=True) for m, v in zip(ids, values, strict=True))

    def value(self, pid: int) -> int:
        """A single packet's current value (reading 19/20 consumes them, as on the robot)."""
        return self._getters[pid]()

    def take_angle(self) -> int:
        """Angle (20) since the last reading; with the ``angle_scale`` quirk in the buggy firmware's units."""
        if "angle_scale" not in self.registers.quirks:
            return self.world.take_angle()
        w = self.world
        raw = int(w.odo_angle_deg * ANGLE_BUG_FACTOR)
        w.odo_angle_deg -= raw / ANGLE_BUG_FACTOR
        return max(-32768, min(32767, raw))

    def _build_getters(self) -> dict[int, Callable[[], int]]:
        w = self.world
        r = self.registers

        def const(value: int) -> Callable[[], int]:
            return lambda: value

        g: dict[int, Callable[[], int]] = {
            7: lambda: w.bumps_wheel_drops,
            8: lambda: 1 if w.light_bits & 0x20 else 0,
            9: lambda: int(w.cliff[0]),
            10: lambda: int(w.cliff[1]),
            11: lambda: int(w.cliff[2]),
            12: lambda: int(w.cliff[3]),
            13: const(0),
            14: lambda: w.overcurrents,
            15: lambda: w.dirt,
            16: const(0),
            17: lambda: w.ir_omni,
            18: lambda: w.buttons,
            19: w.take_distance,
            20: self.take_angle,
            21: lambda: int(w.charging_state),
            22: lambda: min(65535, w.voltage_mv),
            23: lambda: max(-32768, min(32767, int(w.current_ma))),
            24: lambda: max(-128, min(127, round(w.battery_temp_c))),
            25: lambda: int(w.battery_mah),
            26: lambda: int(w.battery_capacity_mah),
            27: lambda: w.wall_signal,
            28: lambda: w.cliff_signal[0],
            29: lambda: w.cliff_signal[1],
            30: lambda: w.cliff_signal[2],
            31: lambda: w.cliff_signal[3],
            32: const(0),
            33: const(0),
            34: lambda: w.charging_sources,
            35: lambda: int(r.mode) + (1 if "mode_plus_one" in r.quirks and r.mode else 0),
            36: lambda: r.song_number,
            37: lambda: 1 if w.time < r.song_until else 0,
            38: lambda: len(r.stream_ids),
            39: lambda: r.requested_velocity,
            40: lambda: r.requested_radius,
            41: lambda: r.requested_right,
            42: lambda: r.requested_left,
            43: lambda: unwrap16(math.floor(w.enc_left)),
            44: lambda: unwrap16(math.floor(w.enc_right)),
            45: lambda: w.light_bits,
            46: lambda: w.light_signal[0],
            47: lambda: w.light_signal[1],
            48: lambda: w.light_signal[2],
            49: lambda: w.light_signal[3],
            50: lambda: w.light_signal[4],
            51: lambda: w.light_signal[5],
            52: lambda: w.ir_left,
            53: lambda: w.ir_right,
            54: lambda: w.wheel_current[0],
            55: lambda: w.wheel_current[1],
            56: lambda: int(abs(w.main_brush) * 250),
            57: lambda: int(abs(w.side_brush) * 100),
            58: lambda: w.stasis,
        }
        return g
