"""The simulator's pure parts on their own: sensor packet bytes, firmware text, control requests, drive math."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest

from hal import codec
from hal.codec import StreamParser
from hal.opcodes import OIMode
from hal.quirks import ANGLE_BUG_FACTOR
from hal.sim.control import ControlError, apply_control, snapshot
from hal.sim.drive import direct_wheels, drive_wheels, motor_duties, pwm_duties, pwm_wheels
from hal.sim.firmware import BUILD_STAMP, battery_line, reset_banner, version_tuple
from hal.sim.robot import SimRobot
from hal.sim.sensors import SensorEncoder
from hal.sim.world import WHEEL_BASE_MM, ChargingState, World


@dataclass
class Registers:
    """The OI state a SensorEncoder reads, set by hand."""

    world: World = field(default_factory=World)
    mode: OIMode = OIMode.SAFE
    quirks: frozenset[str] = frozenset()
    song_number: int = 0
    song_until: float = -1.0
    stream_ids: tuple[int, ...] = ()
    requested_velocity: int = 0
    requested_radius: int = 0
    requested_right: int = 0
    requested_left: int = 0


def test_sensor_packets_are_the_hal_table_layouts() -> None:
    registers = Registers(requested_velocity=-200, requested_radius=500, requested_right=7, requested_left=-7)
    encoder = SensorEncoder(registers)
    assert encoder.packet(35) == bytes([2])
    assert encoder.packet(39) == struct.pack(">h", -200)
    assert encoder.packet(40) == struct.pack(">h", 500)
    assert encoder.packet(41) + encoder.packet(42) == struct.pack(">hh", 7, -7)
    assert encoder.value(38) == 0
    registers.stream_ids = (100, 7)
    assert encoder.value(38) == 2


def test_sensor_mode_plus_one_quirk_reports_one_too_high_except_off() -> None:
    registers = Registers(quirks=frozenset({"mode_plus_one"}))
    encoder = SensorEncoder(registers)
    assert encoder.value(35) == 3
    registers.mode = OIMode.OFF
    assert encoder.value(35) == 0


def test_sensor_distance_and_angle_are_consumed_when_read() -> None:
    world = World()
    world.odo_distance_mm, world.odo_angle_deg = 12.7, 5.5
    encoder = SensorEncoder(Registers(world=world))
    assert encoder.packet(19) == struct.pack(">h", 12) and encoder.packet(20) == struct.pack(">h", 5)
    assert encoder.value(19) == 0 and encoder.value(20) == 0
    assert world.odo_distance_mm == pytest.approx(0.7)


def test_sensor_angle_scale_quirk_uses_the_buggy_firmware_units() -> None:
    world = World()
    world.odo_angle_deg = 10.0
    encoder = SensorEncoder(Registers(world=world, quirks=frozenset({"angle_scale"})))
    assert encoder.take_angle() == int(10.0 * ANGLE_BUG_FACTOR)
    assert world.odo_angle_deg == pytest.approx(10.0 - int(10.0 * ANGLE_BUG_FACTOR) / ANGLE_BUG_FACTOR)


def test_sensor_value_outside_its_width_wraps_like_the_firmware() -> None:
    world = World()
    world.battery_mah = 70000.0  # above 16 bits unsigned
    encoder = SensorEncoder(Registers(world=world))
    assert encoder.packet(25) == struct.pack(">H", 70000 & 0xFFFF)


def test_sensor_frame_decodes_with_the_hal_parser() -> None:
    """The simulator's frame is byte-for-byte the codec's encode_frame, and the HAL parser reads it back."""
    encoder = SensorEncoder(Registers(mode=OIMode.FULL))
    frame = encoder.frame((7, 35))
    assert frame == codec.encode_frame([7, 35], {"oi_mode": 3})
    (event,) = StreamParser((7, 35)).feed(frame)
    assert isinstance(event, codec.SensorFrame) and event.values["oi_mode"] == 3


def test_version_tuple_accepts_only_three_numbers() -> None:
    assert version_tuple("3.7.1") == (3, 7, 1) and version_tuple(" 3.4.0\n") == (3, 4, 0)
    assert version_tuple("latest") is None and version_tuple("3.7") is None


def test_battery_line_is_the_firmware_text() -> None:
    world = World(time=125.0, charge_started_at=0.0, current_ma=1500.4)
    world.charging_state = ChargingState.FULL_CHARGING
    world.battery_temp_c, world.battery_mah = 25.0, 2000.6
    assert (
        battery_line(world)
        == (
            f"bat: min 2 sec 5  mV {world.voltage_mv}  mA 1500  tenths-deg-C 250  mAH 2000  state 2  mode 8\r\n"
        ).encode()
    )


def test_reset_banner_names_the_firmware_version() -> None:
    banner = reset_banner("3.4.0")
    assert [t for t, _ in banner] == [0.015, 1.0, 3.0, 4.0]
    text = b"".join(chunk for _, chunk in banner)
    assert b"release-stm32-3.4.0:6174" in text and BUILD_STAMP.encode() in text


def test_control_refuses_an_unknown_op_with_the_list_of_ops() -> None:
    robot = SimRobot(seed=1, pace=False)
    with pytest.raises(ControlError, match="unknown op 'fly'; ops: state"):
        apply_control(robot, {"op": "fly"}, 0.0)
    with pytest.raises(ControlError, match='"on" must be true or false'):
        apply_control(robot, {"op": "cliff", "on": "yes"}, 0.0)
    with pytest.raises(ControlError, match='"percent" must be between 0 and 100'):
        apply_control(robot, {"op": "battery", "percent": 101}, 0.0)


def test_control_cliff_in_safe_drops_to_passive_and_snapshot_shows_it() -> None:
    robot = SimRobot(seed=1, pace=False)
    robot.feed(bytes([128, 131, 145, 0, 100, 0, 100]), 0.0)
    assert robot.mode is OIMode.SAFE
    assert apply_control(robot, {"op": "cliff"}, 0.01) == {"cliff": True}
    state = snapshot(robot)
    assert state["oi_mode"] == "passive" and state == robot.state()
    assert state["wheels_mm_s"] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("velocity", "radius", "wheels"),
    [
        pytest.param(200, 32767, (200.0, 200.0), id="straight"),
        pytest.param(200, -32768, (200.0, 200.0), id="straight_other_special"),
        pytest.param(200, 0, (200.0, 200.0), id="radius_0_undefined_goes_straight"),
        pytest.param(100, -1, (100.0, -100.0), id="spin_clockwise"),
        pytest.param(100, 1, (-100.0, 100.0), id="spin_counter_clockwise"),
        pytest.param(900, 32767, (500.0, 500.0), id="velocity_clamped"),
    ],
)
def test_drive_wheels(velocity: int, radius: int, wheels: tuple[float, float]) -> None:
    """137 Drive's special radii and clamping give these exact wheel speeds."""
    assert drive_wheels(velocity, radius) == wheels


def test_drive_wheels_on_an_arc_keep_the_centre_speed() -> None:
    left, right = drive_wheels(200, 500)
    assert left == pytest.approx(200 * (500 - WHEEL_BASE_MM / 2) / 500) and (
        left + right
    ) / 2 == pytest.approx(200)
    assert drive_wheels(200, 5000) == drive_wheels(200, 2000)  # radius clamped to 2 m


def test_direct_and_pwm_wheels_take_right_first_and_clamp() -> None:
    assert direct_wheels(700, -100) == (-100, 500)
    assert pwm_wheels(255, -300) == (-500.0, 500.0)


def test_motor_bits_and_pwm_duties() -> None:
    """138 Motors' direction bits reverse the brushes only; 144 PWM Motors clamps and never reverses the vacuum."""
    assert motor_duties(0b00111) == (1.0, 1.0, 1.0)
    assert motor_duties(0b11101) == (-1.0, -1.0, 0.0)
    assert pwm_duties(127, -200, -5) == (1.0, -1.0, 0.0)
