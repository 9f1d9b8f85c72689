"""What the Robot knows about its robot, folded into one immutable :class:`RobotState`, without I/O.

:class:`StateTracker` takes the stream parser's events (sensor frames, battery lines, the firmware banner) and
the link's ups and downs, stamped with the caller's clock, and returns the next snapshot: sensors merged
across frame layouts, packet 35 read through the mode-report quirk, the pose from :class:`PoseTracker`, the
link counters from :class:`LinkStats`. The Robot publishes what it returns and acts on it (events, mode).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from base.logs import get_logger
from hal.codec import BatteryLine, FirmwareBanner, SensorFrame, StreamParser
from hal.link import LinkHealth, LinkStats
from hal.models import RobotModel
from hal.odometry import Pose, PoseTracker
from hal.opcodes import OIMode
from hal.quirks import Quirks, for_firmware

__all__ = ["RobotState", "StateTracker"]

_EMPTY: Mapping[str, int] = MappingProxyType({})


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


class StateTracker:
    """The latest :class:`RobotState` of one robot on one port, and the rules that produce the next.

    ``quirks`` given: kept; None: the model's, switched by the firmware banner (:func:`for_firmware`).
    ``log`` (default: ``hal.robot``'s, bound to port and model) hears the firmware and what looked wrong: an
    unknown mode report, an implausible odometry step.
    """

    def __init__(
        self,
        model: RobotModel,
        port: str,
        parser: StreamParser,
        *,
        quirks: Quirks | None = None,
        hold: OIMode | None = None,
        log: Any = None,
    ) -> None:
        self.model = model
        self.quirks = quirks if quirks is not None else model.quirks
        self._user_quirks = quirks is not None
        self.link = LinkStats(port, parser)
        self.odometry = PoseTracker(model)
        self.state = RobotState(model=model.name, hold_mode=hold, link=LinkHealth(port=port))
        self._covering_ids: tuple[int, ...] | None = None  # a frame of these ids holds every sensor key
        self._warned_mode = False
        self.log = log if log is not None else get_logger("hal.robot", port=port, model=model.name)

    def frame(self, frame: SensorFrame, now: float, hold: OIMode | None) -> RobotState:
        """A sensor frame arrived at ``now`` while the Robot holds ``hold``."""
        previous = self.state
        sensors: Mapping[str, int] = frame.values
        if frame.ids != self._covering_ids:
            # a frame of another layout: merge (the usual stream holds every key, and is shared as is)
            merged = {**previous.sensors, **frame.values.to_dict()}
            if len(merged) == len(frame.values):
                self._covering_ids = frame.ids
            else:
                sensors = MappingProxyType(merged)
        values, odometry, quirks = frame.values, self.odometry, self.quirks
        dt = self.link.frame(now)
        reports, encoders = odometry.rejected_reports, odometry.encoders.rejected
        pose = odometry.update(values, quirks, dt)
        if odometry.rejected_reports != reports or odometry.encoders.rejected != encoders:
            self._log_implausible(values, dt, reports, encoders)
        mode = previous.oi_mode
        raw_mode = values.get("oi_mode")
        if raw_mode is not None:
            try:
                mode = OIMode(quirks.mode(raw_mode))
            except ValueError:
                self._unknown_mode(raw_mode)
        self.state = state = RobotState(
            model=self.model.name,
            sensors=sensors,
            pose=pose,
            oi_mode=mode,
            hold_mode=hold,
            link=self.link.health(now),
            firmware=previous.firmware,
            battery_line=previous.battery_line,
            updated_at=now,
            reported_distance_mm=odometry.reported_distance_mm,
            reported_angle_deg=odometry.reported_angle_deg,
        )
        return state

    def battery(self, line: BatteryLine) -> RobotState:
        self.state = replace(self.state, battery_line=line)
        return self.state

    def firmware(self, banner: FirmwareBanner) -> RobotState:
        """The reset banner named the firmware: its quirks apply from now on (unless given)."""
        if not self._user_quirks:
            self.quirks = for_firmware(banner.version, self.model.quirks)
        self.log.info("oi.firmware", version=banner.version, quirks=self.quirks.active())
        self.state = replace(self.state, firmware=banner.version)
        return self.state

    def hold(self, mode: OIMode | None) -> RobotState:
        self.state = replace(self.state, hold_mode=mode)
        return self.state

    def link_changed(self, now: float) -> RobotState:
        self.state = replace(self.state, link=self.link.health(now))
        return self.state

    def current(self, now: float) -> RobotState:
        """The state as of ``now``: the last frame's age, and no frame rate once the stream is stale."""
        state = self.state
        if self.link.last_frame_at is None:
            return state
        return replace(state, link=self.link.current(state.link, now))

    def _unknown_mode(self, raw: int) -> None:
        """Packet 35 held no mode (the state keeps the last one); said once, with the likely cause."""
        if not self._warned_mode:
            self._warned_mode = True
            self.log.warning(
                "oi.mode.unknown",
                raw=raw,
                hint="packet 35 above 3: this firmware reports the mode one too high; "
                "switch on the mode_plus_one quirk",
            )

    def _log_implausible(
        self, values: Mapping[str, int], dt: float | None, reports: int, encoders: int
    ) -> None:
        """The odometry just left out a step no wheel could make (``reports``/``encoders``: the counts before)."""
        odometry = self.odometry
        if odometry.rejected_reports != reports:
            self.log.debug(
                "oi.odometry.implausible", distance=values.get("distance"), angle=values.get("angle")
            )
        if odometry.encoders.rejected != encoders:
            log = self.log.warning if encoders == 0 else self.log.debug
            log(
                "oi.odometry.implausible",
                left=values["left_encoder_counts"],
                right=values["right_encoder_counts"],
                max_step_mm=round(odometry.max_step_mm(dt) or 0.0, 1),
                rejected=odometry.encoders.rejected,
            )
