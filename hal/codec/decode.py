"""What the robot's sensor bytes mean: packets and groups decoded by the packet table, typed values, and the
replies to Sensors (142) and Query List (149).

A :class:`Layout` is compiled once per list of requested ids, so decoding a reply or a stream frame is one
``struct`` call; :class:`FrameValues` is the read-only mapping a stream frame's values are shared as.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from hal.opcodes import OIMode
from hal.packets import PACKETS, members


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
