"""The simulator's robot side, in memory: bytes in, bytes out, a simulated clock (no sockets, no sleeps)."""

from __future__ import annotations

import math
import re
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hal.opcodes import OPCODES, OIMode, Op
from hal.packets import GROUP_IDS, PACKETS, SINGLE_IDS, members, unpack
from hal.sim.faults import ByteNoise, PacedOutput
from hal.sim.robot import (
    FIRMWARE,
    TICK_S,
    CommandReceived,
    ControlError,
    ModeChanged,
    SimRobot,
)
from hal.sim.world import ChargingState, Mission, World


class Clock:
    """Drives a SimRobot through simulated time and collects everything it sends."""

    def __init__(self, robot: SimRobot, now: float = 0.0) -> None:
        self.robot = robot
        self.now = now
        self.out = bytearray()

    def send(self, data: bytes | list[int]) -> None:
        self.robot.feed(bytes(data), self.now)
        self.out += self.robot.poll(self.now)

    def run(self, seconds: float, step: float = TICK_S) -> bytes:
        start = len(self.out)
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            self.out += self.robot.poll(self.now)
        return bytes(self.out[start:])

    def ask(self, data: bytes | list[int], settle: float = 0.01) -> bytes:
        self.out.clear()
        self.send(data)
        self.run(settle, step=settle)
        reply = bytes(self.out)
        self.out.clear()
        return reply


def make(mode: OIMode = OIMode.SAFE, **kwargs: object) -> Clock:
    robot = SimRobot(seed=1, pace=False, **kwargs)  # type: ignore[arg-type]
    clock = Clock(robot)
    if mode is not OIMode.OFF:
        clock.send([Op.START])
    if mode is OIMode.SAFE:
        clock.send([Op.SAFE])
    elif mode is OIMode.FULL:
        clock.send([Op.FULL])
    assert robot.mode is mode
    return clock


def commands(robot: SimRobot) -> list[CommandReceived]:
    return [e for e in robot.drain_events() if isinstance(e, CommandReceived)]


def example_args(opcode: int) -> list[int]:
    """Data bytes that make a complete, valid command for each opcode."""
    spec = OPCODES[opcode]
    if opcode == Op.SONG:
        return [1, 2, 60, 16, 62, 16]
    if opcode in (Op.STREAM, Op.QUERY_LIST):
        return [2, 7, 35]
    if opcode == Op.SCRIPT:
        return [2, 128, 128]
    if opcode == Op.BAUD:
        return [11]
    if opcode == Op.PAUSE_RESUME_STREAM:
        return [1]
    if opcode == Op.SENSORS:
        return [7]
    assert spec.data_bytes is not None
    # 128 as filler proves data bytes are never mistaken for a Start opcode.
    return [128] * spec.data_bytes


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("opcode", sorted(OPCODES), ids=lambda op: f"{op}-{OPCODES[op].name}")
def test_every_opcode_consumes_exactly_its_data_bytes(opcode: int) -> None:
    clock = make(OIMode.FULL)
    robot = clock.robot
    if opcode == Op.PLAY:
        clock.send([Op.SONG, 128, 1, 60, 16])
    robot.drain_events()
    args = example_args(opcode)
    clock.send([opcode, *args])
    got = commands(robot)
    assert [(c.opcode, list(c.args)) for c in got] == [(opcode, args)]
    if opcode in (Op.RESET, Op.POWER):
        return  # the robot reboots / powers down and stops listening: covered by their own tests
    reply = clock.ask([Op.START, Op.SENSORS, 35])
    assert reply[-1:] == bytes([OIMode.PASSIVE])
    assert [c.opcode for c in commands(robot)] == [Op.START, Op.SENSORS]


def test_commands_split_across_reads_and_merged_in_one_read_give_the_same_result() -> None:
    script = b"".join(
        bytes(cmd)
        for cmd in (
            [Op.START, Op.SAFE],
            [Op.DRIVE_DIRECT, 0, 100, 255, 156],
            [Op.SONG, 0, 2, 60, 8, 64, 8],
            [Op.QUERY_LIST, 3, 35, 39, 41],
            [Op.LEDS, 4, 0, 128],
            [Op.SENSORS, 100],
        )
    )
    merged, split = make(OIMode.OFF), make(OIMode.OFF)
    merged.send(script)
    for byte in script:
        split.send([byte])
    merged.run(0.01, 0.01)
    split.run(0.01, 0.01)
    assert bytes(merged.out) == bytes(split.out)
    assert len(merged.out) == 1 + 2 + 2 + 80
    assert [c.opcode for c in commands(merged.robot)] == [c.opcode for c in commands(split.robot)]
    assert merged.robot.requested_right == 100 and merged.robot.requested_left == -100


def test_actuator_commands_in_passive_are_ignored_but_their_data_bytes_consumed() -> None:
    clock = make(OIMode.PASSIVE)
    clock.robot.drain_events()
    clock.out.clear()
    clock.send([Op.DRIVE, 0, Op.SENSORS, 0, Op.START])
    clock.run(0.01, step=0.01)
    assert clock.out == b""  # the Sensors(0) inside Drive's data was data, not a request (26 bytes)
    assert clock.robot.world.cmd_left == 0 and clock.robot.world.cmd_right == 0
    assert clock.ask([Op.SENSORS, 35]) == bytes([OIMode.PASSIVE])
    drive, *rest = commands(clock.robot)
    assert drive.opcode == Op.DRIVE and drive.ignored == "not allowed in PASSIVE"
    assert drive.args == (0, Op.SENSORS, 0, Op.START)
    assert [c.opcode for c in rest] == [Op.SENSORS]


def test_off_ignores_everything_but_start_and_consumes_data_bytes() -> None:
    clock = make(OIMode.OFF)
    assert clock.ask([Op.SENSORS, 35]) == b""
    clock.send([Op.DRIVE, Op.START, Op.START, Op.START, Op.START])
    assert clock.robot.mode is OIMode.OFF
    clock.send([Op.START])
    assert clock.robot.mode is OIMode.PASSIVE
    assert clock.ask([Op.SENSORS, 35]) == bytes([OIMode.PASSIVE])


def test_unknown_bytes_are_skipped_and_reported() -> None:
    clock = make(OIMode.PASSIVE)
    clock.robot.drain_events()
    assert clock.ask([0, 255, 13, Op.SENSORS, 35]) == bytes([OIMode.PASSIVE])
    unknown = [c for c in commands(clock.robot) if c.name == "unknown"]
    assert [c.opcode for c in unknown] == [0, 255, 13]


# ---------------------------------------------------------------------------- modes


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ([Op.START], OIMode.PASSIVE),
        ([Op.START, Op.SAFE], OIMode.SAFE),
        ([Op.START, Op.CONTROL], OIMode.SAFE),
        ([Op.START, Op.FULL], OIMode.FULL),
        ([Op.START, Op.FULL, Op.SAFE], OIMode.SAFE),
        ([Op.START, Op.FULL, Op.START], OIMode.PASSIVE),
        ([Op.START, Op.SAFE, Op.STOP], OIMode.OFF),
        ([Op.START, Op.FULL, Op.RESET], OIMode.OFF),
        ([Op.START, Op.SAFE, Op.CLEAN], OIMode.PASSIVE),
        ([Op.START, Op.FULL, Op.SPOT], OIMode.PASSIVE),
        ([Op.START, Op.FULL, Op.MAX], OIMode.PASSIVE),
        ([Op.START, Op.SAFE, Op.SEEK_DOCK], OIMode.PASSIVE),
        ([Op.START, Op.FULL, Op.POWER], OIMode.PASSIVE),
        ([Op.SAFE], OIMode.OFF),
        ([Op.START, Op.STOP, Op.FULL], OIMode.OFF),
    ],
    ids=lambda v: "-".join(str(int(x)) for x in v) if isinstance(v, list) else v.name,
)
def test_mode_transitions_follow_the_spec(script: list[int], expected: OIMode) -> None:
    """Each command sequence ends in the mode the spec's transition table says."""
    clock = make(OIMode.OFF)
    clock.send(script)
    assert clock.robot.mode is expected


def test_safe_drops_to_passive_on_cliff_while_driving_forward_and_full_does_not() -> None:
    clock = make(OIMode.SAFE)
    clock.send([Op.DRIVE_DIRECT, 0, 100, 0, 100])
    clock.run(0.1)
    assert clock.robot.control({"op": "cliff", "on": True}, clock.now) == {"cliff": True}
    clock.run(0.05)
    assert clock.robot.mode is OIMode.PASSIVE
    assert clock.robot.world.cmd_left == 0 and clock.robot.world.cmd_right == 0
    changes = [e for e in clock.robot.drain_events() if isinstance(e, ModeChanged)]
    assert changes[-1].reason == "safety: cliff"

    full = make(OIMode.FULL)
    full.robot.control({"op": "cliff", "on": True}, full.now)
    full.send([Op.DRIVE_DIRECT, 0, 100, 0, 100])
    full.run(0.1)
    assert full.robot.mode is OIMode.FULL
    assert full.robot.world.cmd_left == 100
    assert full.ask([Op.QUERY_LIST, 4, 9, 10, 11, 12]) == b"\x01\x01\x01\x01"


def test_safe_cliff_while_stationary_keeps_safe_until_driving_forward() -> None:
    clock = make(OIMode.SAFE)
    clock.robot.control({"op": "cliff", "on": True}, clock.now)
    clock.run(0.1)
    assert clock.robot.mode is OIMode.SAFE
    clock.send([Op.DRIVE, 0, 100, 0x80, 0x00])
    clock.run(0.05)
    assert clock.robot.mode is OIMode.PASSIVE


def test_safe_drops_to_passive_on_wheel_drop() -> None:
    clock = make(OIMode.SAFE)
    clock.robot.control({"op": "wheel_drop", "on": True}, clock.now)
    clock.run(0.05)
    assert clock.robot.mode is OIMode.PASSIVE
    assert clock.ask([Op.SENSORS, 7])[0] & 0x0C == 0x0C


def test_safe_on_the_charger_drops_to_passive_and_full_stays_but_does_not_charge() -> None:
    clock = make(OIMode.PASSIVE, docked=True)
    clock.run(0.1)
    assert clock.robot.world.charging_state is ChargingState.FULL_CHARGING
    clock.send([Op.SAFE])
    clock.run(0.05)
    assert clock.robot.mode is OIMode.PASSIVE
    clock.send([Op.FULL])
    clock.run(0.1)
    assert clock.robot.mode is OIMode.FULL
    assert clock.robot.world.charging_state is ChargingState.NOT_CHARGING
    assert clock.ask([Op.SENSORS, 34]) == b"\x02"


# ---------------------------------------------------------------------------- replies


@pytest.mark.parametrize("pid", sorted(PACKETS), ids=lambda p: f"packet-{p}")
def test_sensors_reply_has_exactly_the_packet_size(pid: int) -> None:
    clock = make(OIMode.PASSIVE)
    assert len(clock.ask([Op.SENSORS, pid])) == PACKETS[pid].size


def test_query_list_of_every_packet_and_group_has_the_summed_size() -> None:
    clock = make(OIMode.PASSIVE)
    ids = sorted(PACKETS)
    reply = clock.ask([Op.QUERY_LIST, len(ids), *ids])
    assert len(reply) == sum(PACKETS[i].size for i in ids)


def test_group_sizes_match_the_spec_table() -> None:
    """The simulator answers each group with the size the spec lists (p.37)."""
    expected = {0: 26, 1: 10, 2: 6, 3: 10, 4: 14, 5: 12, 6: 52, 100: 80, 101: 28, 106: 12, 107: 9}
    clock = make(OIMode.PASSIVE)
    assert {g: len(clock.ask([Op.SENSORS, g])) for g in GROUP_IDS} == expected


def test_unknown_packet_id_gets_no_reply_and_the_parser_stays_aligned() -> None:
    clock = make(OIMode.PASSIVE)
    assert clock.ask([Op.SENSORS, 99]) == b""
    assert clock.ask([Op.QUERY_LIST, 3, 35, 99, 35]) == b"\x01\x01"


def test_group_100_decodes_to_the_world_state() -> None:
    """Group 100's bytes are the simulated world: pose counters, battery, mode."""
    clock = make(OIMode.SAFE)
    data = clock.ask([Op.SENSORS, 100])
    values, pos = {}, 0
    for pid in members(100):
        size = PACKETS[pid].size
        values[pid] = unpack(pid, data[pos : pos + size])
        pos += size
    w = clock.robot.world
    assert values[35] == OIMode.SAFE
    assert values[26] == int(w.battery_capacity_mah)
    assert values[25] == int(w.battery_mah)
    assert 13000 < values[22] < 17500
    assert values[23] < 0
    assert all(2700 < values[i] < 4095 for i in (28, 29, 30, 31))


# ---------------------------------------------------------------------------- streams


def checksum_ok(frame: bytes) -> bool:
    return sum(frame) & 0xFF == 0


def split_frames(data: bytes) -> list[bytes]:
    frames, pos = [], 0
    while pos < len(data):
        assert data[pos] == 19, f"no header at {pos}: {data[pos : pos + 8].hex()}"
        end = pos + 3 + data[pos + 1]
        frames.append(data[pos:end])
        pos = end
    return frames


def test_stream_frame_matches_the_spec_example_layout_with_header_inclusive_checksum() -> None:
    clock = make(OIMode.SAFE)
    clock.send([Op.STREAM, 2, 29, 13])
    frames = split_frames(clock.run(TICK_S * 3 + 1e-6))
    assert len(frames) == 3
    frame = frames[0]
    assert frame[:3] == bytes([19, 5, 29]) and frame[5:7] == bytes([13, 0])
    assert checksum_ok(frame)


def test_stream_of_bumps_and_mode_is_the_computed_vector() -> None:
    """Streaming 7 and 35 in Safe sends the computed vector 19 4 7 0 35 2 189."""
    clock = make(OIMode.SAFE)
    clock.send([Op.STREAM, 2, 7, 35])
    assert split_frames(clock.run(TICK_S + 1e-6)) == [bytes([19, 4, 7, 0, 35, 2, 189])]


def test_groups_in_a_stream_are_gid_then_member_data() -> None:
    clock = make(OIMode.PASSIVE)
    clock.send([Op.STREAM, 2, 100, 35])
    frames = split_frames(clock.run(TICK_S * 4 + 1e-6))
    assert len(frames) == 4
    for frame in frames:
        assert len(frame) == 3 + 1 + 80 + 2 and frame[2] == 100 and frame[83] == 35 and frame[84] == 1
        assert checksum_ok(frame)


def test_stream_runs_every_15_ms_pauses_resumes_and_stops() -> None:
    clock = make(OIMode.PASSIVE)
    clock.send([Op.STREAM, 1, 35])
    assert len(split_frames(clock.run(1.5 + 1e-6))) == 100
    clock.send([Op.PAUSE_RESUME_STREAM, 0])
    assert clock.run(0.5) == b""
    clock.send([Op.PAUSE_RESUME_STREAM, 1])
    assert len(split_frames(clock.run(0.15 + 1e-6))) == 10
    clock.send([Op.STREAM, 0])
    assert clock.run(0.5) == b""
    clock.send([Op.PAUSE_RESUME_STREAM, 1])
    assert clock.run(0.5) == b""


def test_stop_ends_the_stream() -> None:
    clock = make(OIMode.SAFE)
    clock.send([Op.STREAM, 1, 7])
    clock.run(0.1)
    clock.send([Op.STOP])
    assert clock.run(0.2) == b""
    assert clock.robot.mode is OIMode.OFF


def test_distance_in_a_stream_is_consumed_per_frame() -> None:
    clock = make(OIMode.SAFE)
    clock.send([Op.DRIVE_DIRECT, 0, 200, 0, 200, Op.STREAM, 1, 19])
    frames = split_frames(clock.run(1.0 + 1e-6))
    total = sum(struct.unpack(">h", f[3:5])[0] for f in frames)
    assert 190 <= total <= 201


# ---------------------------------------------------------------------------- physics


def test_drive_one_second_at_200_mm_s_moves_200_mm_by_encoders_and_distance() -> None:
    clock = make(OIMode.SAFE)
    before = clock.ask([Op.QUERY_LIST, 3, 19, 43, 44])
    assert before == b"\x00" * 6
    clock.send([Op.DRIVE, 0, 200, 0x80, 0x00])
    clock.run(1.0)
    clock.send([Op.DRIVE, 0, 0, 0x80, 0x00])
    distance, left, right = struct.unpack(">hhh", clock.ask([Op.QUERY_LIST, 3, 19, 43, 44]))
    assert distance == pytest.approx(200, abs=4)
    for counts in (left, right):
        assert counts * math.pi * 72.0 / 508.8 == pytest.approx(200, abs=4)
    assert clock.robot.world.y - 700.0 == pytest.approx(200, abs=4)
    assert struct.unpack(">h", clock.ask([Op.SENSORS, 19]))[0] == 0


def test_turn_in_place_reports_angle_ccw_positive() -> None:
    clock = make(OIMode.SAFE)
    clock.send([Op.DRIVE, 0, 100, 0, 1])
    seconds = math.radians(90) * 235.0 / 2 / 100.0
    clock.run(seconds)
    clock.send([Op.DRIVE, 0, 0, 0, 1])
    angle = struct.unpack(">h", clock.ask([Op.SENSORS, 20]))[0]
    assert angle == pytest.approx(90, abs=3)
    assert math.degrees(clock.robot.world.theta) == pytest.approx(180, abs=3)


def test_drive_radius_and_requested_packets() -> None:
    """The spec's Drive example turns the wheels backwards on a right arc and reads back in 39/40."""
    clock = make(OIMode.SAFE)
    clock.send([137, 255, 56, 1, 244])  # the spec's example: -200 mm/s, radius 500
    reply = clock.ask([Op.QUERY_LIST, 2, 39, 40])
    assert struct.unpack(">hh", reply) == (-200, 500)
    w = clock.robot.world
    assert w.cmd_right < w.cmd_left < 0


def test_encoders_wrap_both_ways_and_follow_commanded_direction() -> None:
    clock = make(OIMode.SAFE)
    clock.robot.world.enc_left = clock.robot.world.enc_right = 32767 - 10
    clock.send([Op.DRIVE_DIRECT, 0, 100, 0, 100])
    clock.run(0.3)
    left = struct.unpack(">h", clock.ask([Op.SENSORS, 43]))[0]
    assert -32768 <= left < -32768 + 100
    clock.robot.world.enc_left = clock.robot.world.enc_right = -32768 + 10
    clock.send([Op.DRIVE_DIRECT, 255, 156, 255, 156])  # -100 both
    clock.run(0.3)
    right = struct.unpack(">h", clock.ask([Op.SENSORS, 44]))[0]
    assert 32767 - 100 < right <= 32767


def test_stuck_wheels_spin_but_the_robot_does_not_move() -> None:
    clock = make(OIMode.FULL)
    clock.robot.control({"op": "stuck", "on": True}, clock.now)
    clock.send([Op.DRIVE_DIRECT, 0, 200, 0, 200])
    clock.run(1.0)
    w = clock.robot.world
    assert (w.x, w.y) == (2000.0, 700.0)
    assert w.enc_left > 400
    assert clock.ask([Op.SENSORS, 58]) == b"\x00"
    assert clock.ask([Op.SENSORS, 14])[0] & 0x18 == 0x18


def test_driving_into_a_wall_bumps_and_stops_at_the_wall() -> None:
    clock = make(OIMode.FULL, speed=10.0)
    clock.send([Op.DRIVE_DIRECT, 1, 244, 1, 244])
    clock.run(1.0)
    w = clock.robot.world
    assert w.y == pytest.approx(w.room.height - 170.0)
    assert clock.ask([Op.SENSORS, 7])[0] & 0x03 == 0x03
    assert clock.ask([Op.SENSORS, 45])[0] & 0x0C == 0x0C
    assert struct.unpack(">H", clock.ask([Op.SENSORS, 49]))[0] > 3000


def test_dock_charges_and_reports_home_base_and_ir() -> None:
    """On the dock the battery charges and the sensors show the home base and its IR."""
    clock = make(OIMode.PASSIVE)
    clock.robot.control({"op": "battery", "percent": 50}, clock.now)
    start = clock.robot.world.battery_mah
    clock.robot.control({"op": "dock"}, clock.now)
    clock.run(1.0)
    reply = clock.ask([Op.QUERY_LIST, 4, 21, 34, 23, 17])
    state, sources, current, ir = struct.unpack(">BBhB", reply)
    assert state == ChargingState.FULL_CHARGING
    assert sources == 0x02
    assert current > 1000
    assert ir & 0xF0 == 0xA0 and ir & 0x01
    assert clock.robot.world.battery_mah > start


def test_battery_drains_with_motion_and_brushes() -> None:
    idle, busy = make(OIMode.FULL, speed=20.0), make(OIMode.FULL, speed=20.0)
    busy.send([Op.DRIVE, 0, 200, 0, 1, Op.MOTORS, 7])
    idle.run(1.0)
    busy.run(1.0)
    used_idle = 2156.8 - idle.robot.world.battery_mah
    used_busy = 2156.8 - busy.robot.world.battery_mah
    assert 0 < used_idle < used_busy
    assert struct.unpack(">h", busy.ask([Op.SENSORS, 56]))[0] > 0


def test_ir_near_the_dock_and_nothing_far_away() -> None:
    """The dock's IR beams are seen in front of it and not across the room."""
    w = World()
    w.place(2000.0, 400.0, -math.pi / 2)
    assert w.ir_omni == 160 | 1 | 4 | 8 and w.ir_left and w.ir_right
    w.place(600.0, 2800.0, 0.0)
    assert w.ir_omni == 0


# ---------------------------------------------------------------------------- missions and buttons


def test_clean_moves_the_robot_in_passive_and_seek_dock_docks_it() -> None:
    clock = make(OIMode.SAFE, speed=10.0)
    clock.send([Op.CLEAN])
    assert clock.robot.mode is OIMode.PASSIVE
    clock.run(3.0, step=0.1)
    w = clock.robot.world
    assert w.mission is Mission.CLEAN and w.travelled_mm > 1000 and w.main_brush
    clock.send([Op.SEEK_DOCK])
    for _ in range(600):
        clock.run(0.1, step=0.1)
        if w.docked:
            break
    assert w.docked and w.mission is Mission.NONE
    clock.run(0.2)
    assert clock.ask([Op.SENSORS, 21]) == bytes([ChargingState.FULL_CHARGING])


def test_buttons_show_for_a_sixth_of_a_second_and_start_behaviours() -> None:
    clock = make(OIMode.PASSIVE)
    clock.robot.control({"op": "button", "name": "spot"}, clock.now)
    assert clock.ask([Op.SENSORS, 18]) == b"\x02"
    assert clock.robot.world.mission is Mission.SPOT
    clock.run(0.2)
    assert clock.ask([Op.SENSORS, 18]) == b"\x00"
    clock.send([Op.BUTTONS, 0x04])
    assert clock.robot.world.mission is Mission.SEEK_DOCK


# ---------------------------------------------------------------------------- reset, text, sleep


def test_reset_prints_the_real_create2_banner_on_its_timeline() -> None:
    clock = make(OIMode.SAFE, docked=True)
    clock.out.clear()
    clock.send([Op.RESET])
    assert clock.robot.mode is OIMode.OFF
    assert clock.run(0.02, step=0.005) == b"Soft reset!\n"
    assert clock.run(0.99, step=0.05) == b"\xfe"
    clock.send([Op.START])  # still booting: ignored
    text = clock.run(4.5, step=0.05)
    assert clock.robot.mode is OIMode.OFF
    assert text.startswith(b"Roomba by iRobot!\r\nstm32\r\n2015-12-18-1607-L   \r\n")
    assert FIRMWARE.encode() in text
    assert b"r3-robot/tags/release-stm32-3.7.1" in text
    lines = text.split(b"\r\n")
    bat = [line for line in lines if line.startswith(b"bat:")]
    assert bat, text
    pattern = rb"bat: min \d+ sec \d+  mV \d+  mA -?\d+  tenths-deg-C \d+  mAH \d+  state \d  mode \d+"
    assert re.fullmatch(pattern, bat[0])
    clock.send([Op.START])
    assert clock.robot.mode is OIMode.PASSIVE
    assert b"bat:" not in clock.run(2.0, step=0.05)


def test_battery_line_once_a_second_only_while_docked_and_off() -> None:
    clock = make(OIMode.OFF, docked=True)
    lines = clock.run(3.05, step=0.05).split(b"\r\n")
    assert len([line for line in lines if line.startswith(b"bat:")]) == 3
    undocked = make(OIMode.OFF)
    assert undocked.run(3.0, step=0.05) == b""


def test_passive_sleeps_after_five_minutes_and_a_start_byte_wakes_it() -> None:
    clock = make(OIMode.PASSIVE, speed=100.0)
    clock.send([Op.STREAM, 1, 35])
    clock.run(2.9, step=0.05)
    assert not clock.robot.asleep
    clock.run(0.2, step=0.05)
    assert clock.robot.asleep
    clock.out.clear()
    clock.run(0.5, step=0.05)
    assert clock.out == b""
    assert clock.ask([Op.SENSORS, 35]) == b""
    clock.send([Op.START])
    text = clock.run(0.6, step=0.05)
    assert not clock.robot.asleep
    assert re.fullmatch(rb"slept for \d+ minutes \d+ seconds\r\n", text)
    assert clock.ask([Op.SENSORS, 35]) == bytes([OIMode.PASSIVE])


def test_safe_never_sleeps_and_brc_wake_works() -> None:
    clock = make(OIMode.SAFE, speed=100.0)
    clock.run(4.0, step=0.1)
    assert not clock.robot.asleep
    clock.send([Op.POWER])
    assert clock.robot.asleep
    assert clock.robot.control({"op": "wake"}, clock.now) == {"woke": True}
    clock.run(0.6, step=0.05)
    assert not clock.robot.asleep and clock.robot.mode is OIMode.PASSIVE


# ---------------------------------------------------------------------------- faults, pacing, control


def test_noise_is_seeded_and_corrupts_frames() -> None:
    def noisy_run(seed: int) -> bytes:
        robot = SimRobot(seed=seed, pace=False)
        clock = Clock(robot)
        clock.send([Op.START, Op.STREAM, 1, 100])
        robot.control({"op": "noise", "corrupt": 0.01, "drop": 0.01}, clock.now)
        return clock.run(1.5)

    a, b, c = noisy_run(7), noisy_run(7), noisy_run(8)
    assert a == b and a != c
    assert 84 * 100 * 0.97 < len(a) < 84 * 100


def test_byte_noise_rejects_fractions_outside_0_1() -> None:
    import random

    with pytest.raises(ValueError, match="between 0 and 1"):
        ByteNoise(random.Random(0), corrupt=1.5)


def test_paced_output_is_no_faster_than_115200_baud() -> None:
    out = PacedOutput(115200)
    out.push(b"x" * 200, now=10.0)
    assert out.pop(10.0) == b""
    assert len(out.pop(10.005)) == 57  # 5 ms * 11.52 bytes/ms
    assert len(out.pop(10.010)) == 115 - 57
    assert out.next_ready(chunk=24) == pytest.approx(10.0 + (115 + 24) / 11520.0)
    assert len(out.pop(11.0)) == 200 - 115


def test_oversized_stream_overflows_the_line_and_corrupts() -> None:
    robot = SimRobot(seed=0)  # paced
    clock = Clock(robot)
    clock.send([Op.START, Op.STREAM, 4, 100, 100, 100, 6])
    clock.run(2.0, step=0.005)
    assert robot.output.overflowed > 0
    assert len(clock.out) <= 2.0 * 11520 + 1


def test_control_rejects_bad_requests_with_a_reason() -> None:
    clock = make(OIMode.PASSIVE)
    with pytest.raises(ControlError, match="unknown op"):
        clock.robot.control({"op": "fly"}, clock.now)
    with pytest.raises(ControlError, match="percent"):
        clock.robot.control({"op": "battery", "percent": 150}, clock.now)
    with pytest.raises(ControlError, match='"on" must be true or false'):
        clock.robot.control({"op": "cliff", "on": "yes"}, clock.now)
    with pytest.raises(ControlError, match="button name"):
        clock.robot.control({"op": "button", "name": "turbo"}, clock.now)


def test_same_seed_and_input_reproduce_the_same_bytes() -> None:
    def run(seed: int) -> bytes:
        clock = make(OIMode.SAFE, speed=5.0)
        clock.robot.world.rng.seed(seed)
        clock.send([Op.CLEAN, Op.STREAM, 1, 100])
        return clock.run(3.0)

    assert run(3) == run(3)


def test_every_single_packet_has_a_value_in_range() -> None:
    """Every packet the simulator sends is within the spec's range for it."""
    clock = make(OIMode.SAFE)
    for pid in SINGLE_IDS:
        spec = PACKETS[pid]
        value = unpack(pid, clock.ask([Op.SENSORS, pid]))
        if pid not in (43, 44):
            assert spec.min <= value <= spec.max, (pid, value)


@settings(max_examples=300, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=12),
    mode=st.sampled_from([OIMode.OFF, OIMode.PASSIVE, OIMode.SAFE, OIMode.FULL]),
)
def test_random_bytes_never_crash_the_robot_and_replies_stay_bounded(
    chunks: list[bytes], mode: OIMode
) -> None:
    clock = make(mode)
    for chunk in chunks:
        clock.send(chunk)
        clock.run(0.02, step=0.01)
    state = clock.robot.state()
    assert state["oi_mode"] in ("off", "passive", "safe", "full")
    assert len(clock.out) <= 1000 * (1 + len(chunks))


def test_baud_command_changes_the_pacing_rate() -> None:
    """After 129 Baud the simulator's bytes come out at the new rate."""
    robot = SimRobot(seed=0)
    clock = Clock(robot)
    clock.send([Op.START, Op.BAUD, 7])  # 19200 baud: 1920 bytes/s
    assert robot.baud == 19200
    clock.send([Op.SENSORS, 100])
    early = clock.run(0.021, step=0.001)  # 80 bytes need 41.7 ms at 19200 baud
    assert 30 < len(early) < 45
    assert len(early + clock.run(0.05, step=0.01)) == 80


def test_a_longer_tick_for_the_fleet_simulator_keeps_physics_and_streams_per_tick() -> None:
    robot = SimRobot(seed=0, pace=False, tick_s=0.1)
    clock = Clock(robot)
    clock.send([Op.START, Op.SAFE, Op.DRIVE_DIRECT, 0, 200, 0, 200, Op.STREAM, 1, 35])
    frames = split_frames(clock.run(1.0 + 1e-6, step=0.1))
    assert len(frames) == 10
    assert robot.world.y - 700.0 == pytest.approx(200, abs=1)
    with pytest.raises(ValueError, match="tick_s"):
        SimRobot(tick_s=5.0)


@pytest.mark.parametrize("radius", [0, 1, -1, 32767, -32768, 2500, -2500, 10, -10])
def test_drive_accepts_every_radius_without_crashing(radius: int) -> None:
    clock = make(OIMode.FULL)
    clock.send([Op.DRIVE, *struct.pack(">hh", 300, radius)])
    clock.run(0.1)
    assert abs(clock.robot.world.cmd_left) <= 500 and abs(clock.robot.world.cmd_right) <= 500
    assert struct.unpack(">h", clock.ask([Op.SENSORS, 40]))[0] == radius


@st.composite
def valid_commands(draw: st.DrawFn) -> bytes:
    opcode = draw(st.sampled_from(sorted(set(OPCODES) - {Op.RESET, Op.POWER})))
    spec = OPCODES[opcode]
    if spec.data_bytes is not None:
        args = draw(st.binary(min_size=spec.data_bytes, max_size=spec.data_bytes))
    elif opcode == Op.SONG:
        n = draw(st.integers(0, 20))
        args = bytes([draw(st.integers(0, 255)), n]) + draw(st.binary(min_size=2 * n, max_size=2 * n))
    else:
        ids = draw(st.lists(st.integers(0, 255), max_size=12))
        args = bytes([len(ids), *ids])
    return bytes([opcode]) + args


@settings(max_examples=400, deadline=None)
@given(script=st.lists(valid_commands(), min_size=1, max_size=15))
@example(script=[b"\x81\x00", b"\x8e\x00"])  # Baud 300 must not switch pacing on for an unpaced robot
def test_any_sequence_of_well_formed_commands_keeps_the_parser_aligned(script: list[bytes]) -> None:
    clock = make(OIMode.FULL, speed=50.0)
    for command in script:
        clock.send(command)
        clock.run(0.03, step=0.015)
    clock.robot.stream_on = False
    clock.run(0.2, step=0.05)
    assert clock.ask([Op.START, Op.SENSORS, 35], settle=0.5)[-1:] == bytes([OIMode.PASSIVE])


def test_clean_from_the_dock_backs_off_and_a_low_battery_sends_it_home_to_charge() -> None:
    clock = make(OIMode.PASSIVE, docked=True, speed=10.0)
    w = clock.robot.world
    assert w.docked
    clock.send([Op.CLEAN])
    clock.run(3.0, step=0.1)
    assert not w.docked and w.travelled_mm > 500 and w.mission is Mission.CLEAN
    clock.robot.control({"op": "battery", "percent": 14}, clock.now)
    clock.run(0.2, step=0.1)
    assert w.mission is Mission.SEEK_DOCK
    for _ in range(600):
        clock.run(0.1, step=0.1)
        if w.docked:
            break
    assert w.docked and w.mission is Mission.NONE
    clock.run(0.5, step=0.1)
    assert w.charging_state is ChargingState.FULL_CHARGING and w.current_ma > 0


def test_quirk_mode_plus_one_reports_full_as_4() -> None:
    clock = make(OIMode.FULL, quirks={"mode_plus_one"})
    assert clock.ask([Op.SENSORS, 35]) == b"\x04"
    with pytest.raises(ValueError, match="unknown quirk"):
        SimRobot(quirks={"turbo"})


def test_old_firmware_has_the_angle_bug_and_says_its_version_in_the_banner() -> None:
    clock = make(OIMode.SAFE, firmware="3.4.0")
    assert "angle_scale" in clock.robot.quirks
    clock.send([Op.DRIVE, 0, 100, 0, 1])
    clock.run(math.radians(90) * 235.0 / 2 / 100.0)
    clock.send([Op.DRIVE, 0, 0, 0, 1])
    raw = struct.unpack(">h", clock.ask([Op.SENSORS, 20]))[0]
    assert raw / 0.324056 == pytest.approx(90, abs=4)
    clock.send([Op.RESET])
    assert b"r3-robot/tags/release-stm32-3.4.0:" in clock.run(4.5, step=0.05)
    with pytest.raises(ValueError, match="firmware must look like"):
        SimRobot(firmware="latest")


def test_the_simulator_uses_the_hal_tables_not_copies() -> None:
    """One source of truth: geometry, charging codes, buttons, baud codes and quirk names come from hal/."""
    from hal import codec, models, quirks
    from hal.sim import faults, robot, sensors, world

    create2 = models.get_model("create2")
    assert create2.wheelbase_mm == world.WHEEL_BASE_MM
    assert pytest.approx(1 / create2.mm_per_count) == world.COUNTS_PER_MM
    assert world.ChargingState is codec.ChargingState
    assert {b.name.lower(): int(b) for b in codec.Buttons if b.name} == world.BUTTON_BITS
    assert {faults.BAUD_CODES[code]: code for code in range(12)} == codec.BAUD_CODES
    assert create2.baud == faults.DEFAULT_BAUD
    assert sensors.ANGLE_BUG_FACTOR == quirks.ANGLE_BUG_FACTOR
    assert set(robot.QUIRKS) <= set(quirks.QUIRK_HELP)
