"""The OI's drive and motor commands as wheel speeds and motor duties, pure.

Create 2 OI spec: 137 Drive (velocity and turn radius, mm/s and mm), 145 Drive Direct (each wheel, mm/s), 146
Drive PWM (each wheel, -255..255), 138 Motors (on/off and direction bits), 144 PWM Motors (duty -127..127).
Out-of-range values are clamped, as the robot does. Wheel speeds come back as ``(left, right)`` in mm/s,
duties as ``(main_brush, side_brush, vacuum)`` from -1 to 1 (sign: direction).
"""

from __future__ import annotations

from hal.sim.world import WHEEL_BASE_MM

__all__ = ["STRAIGHT_RADII", "direct_wheels", "drive_wheels", "motor_duties", "pwm_duties", "pwm_wheels"]

STRAIGHT_RADII = (-32768, 32767)


def drive_wheels(velocity: int, radius: int) -> tuple[float, float]:
    """137 Drive: ``radius`` -1/1 turns in place clockwise/counter-clockwise, the special values drive
    straight, others follow an arc (clamped to 2 m) centred ``radius`` mm to the left."""
    v = float(max(-500, min(500, velocity)))
    if radius in STRAIGHT_RADII or radius == 0:  # the spec leaves 0 undefined: straight, never a crash
        return v, v
    if radius == -1:
        return v, -v
    if radius == 1:
        return -v, v
    r = float(max(-2000, min(2000, radius)))
    return v * (r - WHEEL_BASE_MM / 2) / r, v * (r + WHEEL_BASE_MM / 2) / r


def direct_wheels(right: int, left: int) -> tuple[int, int]:
    """145 Drive Direct (right first, as on the wire)."""
    return max(-500, min(500, left)), max(-500, min(500, right))


def pwm_wheels(right: int, left: int) -> tuple[float, float]:
    """146 Drive PWM (right first): full duty taken as the top speed, 500 mm/s."""
    right, left = max(-255, min(255, right)), max(-255, min(255, left))
    return left * 500.0 / 255.0, right * 500.0 / 255.0


def motor_duties(bits: int) -> tuple[float, float, float]:
    """138 Motors: bit 0 side brush, 1 vacuum, 2 main brush; bits 3 and 4 reverse the side and main brush."""
    side = (1.0 if bits & 0x01 else 0.0) * (-1.0 if bits & 0x08 else 1.0)
    vacuum = 1.0 if bits & 0x02 else 0.0
    main = (1.0 if bits & 0x04 else 0.0) * (-1.0 if bits & 0x10 else 1.0)
    return main, side, vacuum


def pwm_duties(main: int, side: int, vacuum: int) -> tuple[float, float, float]:
    """144 PWM Motors: the vacuum only runs one way."""
    return (
        max(-127, min(127, main)) / 127.0,
        max(-127, min(127, side)) / 127.0,
        max(0, min(127, vacuum)) / 127.0,
    )
