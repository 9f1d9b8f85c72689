"""The simulated robot's firmware facts, pure: its version, its reset banner timeline, its battery lines.

What a real Create 2 prints on the serial line besides OI replies: the reset banner after 7 Reset (the spec
only says that a welcome message with the firmware version follows; the timeline here is YARC's capture of
firmware 3.7.1), and the once-a-second ``bat:`` line of a docked robot with the OI off.
"""

from __future__ import annotations

from hal.sim.world import World

__all__ = [
    "BANNER_DONE_S",
    "BOOT_BUSY_S",
    "BUILD_STAMP",
    "FIRMWARE",
    "FIRMWARE_VERSION",
    "QUIRKS",
    "RESET_BANNER",
    "battery_line",
    "reset_banner",
    "version_tuple",
]

FIRMWARE_VERSION = "3.7.1"
FIRMWARE = "r3-robot/tags/release-stm32-3.7.1:6174 CLEAN"
BUILD_STAMP = "2015-12-18-1607-L   "
QUIRKS = {
    "mode_plus_one": "packet 35 reports the OI mode one too high (some Roomba 6xx)",
    "angle_scale": "Angle (20) reports degrees x 0.324056 (firmware up to 3.4.0; on by default for those)",
}


def reset_banner(version: str = FIRMWARE_VERSION) -> tuple[tuple[float, bytes], ...]:
    """The real Create 2 reset timeline (YARC's capture of firmware 3.7.1; the spec only says that a welcome
    message with the firmware version follows 7 Reset)."""
    firmware = f"r3-robot/tags/release-stm32-{version}:6174 CLEAN".encode()
    stamp = BUILD_STAMP.encode()
    return (
        (0.015, b"Soft reset!\n"),
        (1.0, b"\xfe"),
        (3.0, b"Roomba by iRobot!\r\nstm32\r\n" + stamp + b"\r\nbattery-current-zero 254\r\n"),
        (
            4.0,
            b"\r\n"
            + stamp
            + b"\r\n"
            + firmware
            + b"\r\n\r\nbootloader id: 3115 C200 0033 5860 \r\nassembly: 3.5-lite\r\nrevision: 8\r\n"
            b"flash version: 10\r\nflash info crc passed: 1\r\n\r\nbattery-current-zero 252\r\n"
            b"estimate-battery-level-from-voltage 2697 mAH 17734 mV\r\nstart-charge: "
            + stamp
            + b"\r\nDetermining battery type.\r\n",
        ),
    )


RESET_BANNER = reset_banner()
BOOT_BUSY_S = 3.0
BANNER_DONE_S = 5.0


def version_tuple(text: str) -> tuple[int, int, int] | None:
    """``"3.7.1"`` as ``(3, 7, 1)``; None if it does not look like a firmware version."""
    parts = text.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def battery_line(w: World) -> bytes:
    """The ``bat:`` line a docked robot prints every second while the OI is off."""
    secs = int(max(0.0, w.time - w.charge_started_at))
    return (
        f"bat: min {secs // 60} sec {secs % 60}  mV {w.voltage_mv}  mA {int(w.current_ma)}  "
        f"tenths-deg-C {int(w.battery_temp_c * 10)}  mAH {int(w.battery_mah)}  "
        f"state {int(w.charging_state)}  mode 8\r\n"
    ).encode()
