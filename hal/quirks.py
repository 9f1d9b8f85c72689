"""Named firmware quirks, each with a switch.

Real robots differ from the spec in a few well-documented ways: some Roomba 6xx report packet 35 one too high
(4 for Full; libcreate's mode-report workaround subtracts 1), firmware up to 3.4 reports Distance and Angle
wrong (Create 2 OI spec, Appendix B), and the signed 16-bit encoder counts wrap. Each workaround is a
named boolean so that a deployment can turn it on or off from configuration (``"mode_plus_one=on"``) instead
of patching code, and so that logs can say which workaround was active.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

__all__ = ["QUIRK_HELP", "Quirks", "firmware_tuple", "for_firmware"]

ANGLE_BUG_FACTOR = 0.324056

QUIRK_HELP: dict[str, str] = {
    "mode_plus_one": "packet 35 reports the OI mode one too high (some Roomba 6xx; libcreate PR #67): subtract 1",
    "encoder_odometry": "compute x, y, heading from the wheel encoders (43/44), not Distance/Angle (19/20), "
    "which are wrong on firmware before 3.3.0 / up to 3.4.0",
    "angle_scale": "Angle (20) is scaled wrong on firmware up to 3.4.0: divide the raw value by 0.324056",
    "encoder_wrap": "the encoder counts are 16-bit and roll over in both directions: unwrap them",
}


@dataclass(frozen=True, slots=True)
class Quirks:
    mode_plus_one: bool = False
    encoder_odometry: bool = True
    angle_scale: bool = False
    encoder_wrap: bool = True

    def mode(self, raw: int) -> int:
        """The true OI mode from packet 35's raw value."""
        return raw - 1 if self.mode_plus_one and raw > 0 else raw

    def angle_degrees(self, raw: int) -> float:
        """Degrees turned from packet 20's raw value."""
        return raw / ANGLE_BUG_FACTOR if self.angle_scale else float(raw)

    def switched(self, spec: str) -> Quirks:
        """Apply ``"name=on,other=off"`` (also ``true/false/1/0/yes/no``); unknown names raise ValueError."""
        changes: dict[str, bool] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, value = item.partition("=")
            name = name.strip().replace("-", "_")
            if name not in QUIRK_HELP:
                raise ValueError(f"unknown quirk {name!r}; known quirks: {', '.join(QUIRK_HELP)}")
            flag = value.strip().lower() or "on"
            if flag not in ("on", "off", "true", "false", "1", "0", "yes", "no"):
                raise ValueError(f"quirk {name}: {value!r} is not on/off")
            changes[name] = flag in ("on", "true", "1", "yes")
        return replace(self, **changes)

    def active(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


def firmware_tuple(version: str) -> tuple[int, int, int] | None:
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", version)
    if not match:
        return None
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def for_firmware(version: str | None, base: Quirks) -> Quirks:
    """Switch on the workarounds a known-bad firmware version needs (never switches one off)."""
    parsed = firmware_tuple(version) if version else None
    if parsed is None:
        return base
    quirks = base
    if parsed <= (3, 4, 0):
        quirks = replace(quirks, angle_scale=True, encoder_odometry=True)
    return quirks
