"""Robot models as values: link speed, geometry, limits and the packets each one has.

Everything that differs between a Create 2 and a 2008 Roomba lives here, not in ``if model == ...``
branches, so adding a model is adding a value. Geometry from the OI spec and libcreate ``types.cpp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hal.codec import stream_budget, stream_frame_size
from hal.quirks import Quirks

__all__ = ["MODELS", "RobotModel", "get_model"]


@dataclass(frozen=True, slots=True)
class RobotModel:
    name: str
    description: str
    baud: int
    wheelbase_mm: float
    wheel_diameter_mm: float
    counts_per_rev: float
    max_velocity_mm_s: int
    max_radius_mm: int
    packets: frozenset[int]
    stream_ids: tuple[int, ...]
    quirks: Quirks = field(default_factory=Quirks)

    @property
    def has_encoders(self) -> bool:
        return 43 in self.packets and 44 in self.packets

    @property
    def mm_per_count(self) -> float:
        return math.pi * self.wheel_diameter_mm / self.counts_per_rev

    @property
    def stream_budget(self) -> int:
        """Bytes per 15 ms stream slot at this model's baud rate (172 at 115200)."""
        return stream_budget(self.baud)

    @property
    def stream_frame_bytes(self) -> int:
        return stream_frame_size(self.stream_ids)


_ALL = frozenset(range(7, 59)) | {0, 1, 2, 3, 4, 5, 6, 100, 101, 106, 107}
_OLD = frozenset(range(7, 43)) | {0, 1, 2, 3, 4, 5, 6}

MODELS: dict[str, RobotModel] = {
    m.name: m
    for m in (
        RobotModel("create2", "iRobot Create 2", 115200, 235.0, 72.0, 508.8, 500, 2000, _ALL, (100,)),
        RobotModel("roomba600", "Roomba 600 series", 115200, 235.0, 72.0, 508.8, 500, 2000, _ALL, (100,)),
        RobotModel("roomba500", "Roomba 500 series", 115200, 235.0, 72.0, 508.8, 500, 2000, _ALL, (100,)),
        RobotModel(
            "roomba400",
            "Roomba 400 series (SCI, 57600 baud, no encoders)",
            57600,
            258.0,
            78.0,
            508.8,
            500,
            2000,
            _OLD,
            (6,),
            Quirks(encoder_odometry=False),
        ),
        RobotModel(
            "create1",
            "iRobot Create (1st generation, 57600 baud, no encoders)",
            57600,
            258.0,
            78.0,
            508.8,
            500,
            2000,
            _OLD,
            (6,),
            Quirks(encoder_odometry=False),
        ),
    )
}


def get_model(name: str) -> RobotModel:
    key = name.strip().lower().replace(" ", "").replace("-", "").replace("_", "")
    if key in MODELS:
        return MODELS[key]
    raise ValueError(f"unknown robot model {name!r}; known models: {', '.join(MODELS)}")
