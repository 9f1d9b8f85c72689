"""Dead reckoning, pure: wheel encoder counts (or Distance/Angle deltas) in, pose out.

The encoders are cumulative signed 16-bit counters that roll over about every 14.5 m, in both directions;
taking each difference modulo 2**16 makes the wrap invisible (libcreate's unsigned handling breaks when
reversing, libcreate #70/#71). The first sample only sets the baseline, and so does the first one after
:meth:`EncoderOdometry.rebase` (a reconnect, or a robot that rebooted and restarted its counts at zero).
:class:`PoseTracker` picks the source per frame and guards both against steps no wheel could make.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from hal.models import RobotModel
from hal.quirks import Quirks

__all__ = ["REBASE_AFTER", "DeltaOdometry", "EncoderOdometry", "Pose", "PoseTracker", "unwrap16"]


@dataclass(frozen=True, slots=True)
class Pose:
    """Position in mm from where odometry started, heading in radians (CCW positive), path length in mm
    (signed: backwards counts negative), and the per-wheel travel behind it."""

    x_mm: float = 0.0
    y_mm: float = 0.0
    theta_rad: float = 0.0
    distance_mm: float = 0.0
    left_mm: float = 0.0
    right_mm: float = 0.0

    @property
    def heading_deg(self) -> float:
        return math.degrees(self.theta_rad)


def unwrap16(delta: int) -> int:
    """The shortest signed difference between two 16-bit counter readings."""
    return ((delta + 32768) & 0xFFFF) - 32768


def _advance(pose: Pose, d_left: float, d_right: float, wheelbase: float) -> Pose:
    d_center = (d_left + d_right) / 2
    d_theta = (d_right - d_left) / wheelbase
    mid = pose.theta_rad + d_theta / 2
    theta = math.atan2(math.sin(pose.theta_rad + d_theta), math.cos(pose.theta_rad + d_theta))
    return Pose(
        pose.x_mm + d_center * math.cos(mid),
        pose.y_mm + d_center * math.sin(mid),
        theta,
        pose.distance_mm + d_center,
        pose.left_mm + d_left,
        pose.right_mm + d_right,
    )


REBASE_AFTER = 3


class EncoderOdometry:
    """Pose from cumulative wheel encoder counts.

    ``update(..., max_step_mm=...)`` rejects a step that no wheel could have made (a frame whose 8-bit
    checksum passed by chance on a noisy line can carry any count: up to 14 m of phantom travel). The pose
    then stays put and ``rejected`` counts it; after :data:`REBASE_AFTER` implausible steps in a row the
    counters are taken as a new baseline (the robot rebooted and restarted its counts without a link drop).
    """

    def __init__(self, mm_per_count: float, wheelbase_mm: float, *, wrap: bool = True) -> None:
        self.mm_per_count = mm_per_count
        self.wheelbase_mm = wheelbase_mm
        self.wrap = wrap
        self.pose = Pose()
        self.rejected = 0
        self._last: tuple[int, int] | None = None
        self._implausible_run = 0

    def rebase(self) -> None:
        self._last = None
        self._implausible_run = 0

    def reset(self, pose: Pose | None = None) -> None:
        self.pose = pose or Pose()
        self.rebase()

    def update(self, left: int, right: int, *, max_step_mm: float | None = None) -> Pose:
        if self._last is not None:
            dl, dr = left - self._last[0], right - self._last[1]
            if self.wrap:
                dl, dr = unwrap16(dl), unwrap16(dr)
            left_mm, right_mm = dl * self.mm_per_count, dr * self.mm_per_count
            if max_step_mm is not None and max(abs(left_mm), abs(right_mm)) > max_step_mm:
                self.rejected += 1
                self._implausible_run += 1
                if self._implausible_run >= REBASE_AFTER:
                    self._implausible_run = 0
                    self._last = (left, right)
                return self.pose
            self.pose = _advance(self.pose, left_mm, right_mm, self.wheelbase_mm)
        self._implausible_run = 0
        self._last = (left, right)
        return self.pose


class DeltaOdometry:
    """For robots without encoders: Distance (19, mm) and Angle (20, degrees) since the last reading."""

    def __init__(self, wheelbase_mm: float) -> None:
        self.wheelbase_mm = wheelbase_mm
        self.pose = Pose()

    def reset(self, pose: Pose | None = None) -> None:
        self.pose = pose or Pose()

    def update(self, distance_mm: float, angle_deg: float) -> Pose:
        d_theta = math.radians(angle_deg)
        half = d_theta * self.wheelbase_mm / 2
        self.pose = _advance(self.pose, distance_mm - half, distance_mm + half, self.wheelbase_mm)
        return self.pose


class PoseTracker:
    """The pose from each sensor frame, and the sums of the robot's own Distance (19) and Angle (20) reports.

    Encoders drive the pose where the firmware has them (``quirks.encoder_odometry``), Distance/Angle
    otherwise. Every step is checked against what the wheels could have done since the previous frame
    (:meth:`max_step_mm`): a frame whose 8-bit checksum passed by chance on a noisy line is almost always far
    outside it. ``rejected_reports`` counts frames whose Distance or Angle was left out for that;
    ``encoders.rejected`` the encoder steps.
    """

    def __init__(self, model: RobotModel) -> None:
        self.max_velocity_mm_s = model.max_velocity_mm_s
        self.wheelbase_mm = model.wheelbase_mm
        self.encoders = EncoderOdometry(
            model.mm_per_count, model.wheelbase_mm, wrap=model.quirks.encoder_wrap
        )
        self.deltas = DeltaOdometry(model.wheelbase_mm)
        self.reported_distance_mm = 0.0
        self.reported_angle_deg = 0.0
        self.rejected_reports = 0

    def max_step_mm(self, dt: float | None) -> float | None:
        """The most a wheel can travel between two frames ``dt`` seconds apart (None: no bound known).

        Generous: top speed x 1.5, plus 50 mm for frames that arrive bunched in one read.
        """
        if dt is None:
            return None
        return self.max_velocity_mm_s * 1.5 * max(0.0, dt) + 50.0

    def update(self, values: Mapping[str, int], quirks: Quirks, dt: float | None = None) -> Pose:
        """One frame's ``values`` (``PacketSpec.key`` to raw value), ``dt`` seconds after the previous one."""
        limit = self.max_step_mm(dt)
        distance = values.get("distance")
        if distance is not None and limit is not None and abs(distance) > limit:
            distance = None
        angle = None if "angle" not in values else quirks.angle_degrees(values["angle"])
        if (
            angle is not None
            and limit is not None
            and abs(angle) > math.degrees(2 * limit / self.wheelbase_mm)
        ):
            angle = None
        if (distance is None and "distance" in values) or (angle is None and "angle" in values):
            self.rejected_reports += 1
        if distance is not None:
            self.reported_distance_mm += distance
        if angle is not None:
            self.reported_angle_deg += angle
        if quirks.encoder_odometry and "left_encoder_counts" in values and "right_encoder_counts" in values:
            self.encoders.wrap = quirks.encoder_wrap
            return self.encoders.update(
                values["left_encoder_counts"], values["right_encoder_counts"], max_step_mm=limit
            )
        if distance is not None and angle is not None:
            return self.deltas.update(distance, angle)
        return self.encoders.pose

    def rebase(self) -> None:
        """A new link: the next encoder reading is a baseline, not a step."""
        self.encoders.rebase()

    def reset(self) -> None:
        """Back to the origin, with the report sums at zero."""
        self.encoders.reset()
        self.deltas.reset()
        self.reported_distance_mm = self.reported_angle_deg = 0.0
