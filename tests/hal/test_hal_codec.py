"""The sans-I/O codec: the spec's byte-exact vectors, every encoder's range checks, every packet's decoding,
and the stream parser under noise, chatter and arbitrary chunking."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal import codec
from hal.codec import (
    BatteryLine,
    BootMarker,
    CorruptFrame,
    FirmwareBanner,
    SensorFrame,
    StreamParser,
    TextLine,
    encode_frame,
)
from hal.errors import CommandRangeError, ModeError, StreamBudgetError
from hal.opcodes import OPCODES, OIMode, Op, data_length
from hal.packets import GROUP_IDS, PACKETS, SINGLE_IDS, pack

# ------------------------- spec vectors: the Create 2 OI spec's (2016) byte-exact worked examples, pp. 12-22


def test_v1_drive() -> None:
    """Spec example (p.13): Drive at -200 mm/s on a 500 mm radius, two big-endian signed 16-bit fields."""
    assert codec.drive(-200, 500) == bytes([137, 255, 56, 1, 244])


def test_v2_motors() -> None:
    """Spec example (p.15): main brush plus clockwise side brush set bits 0, 2 and 3 of one byte."""
    assert codec.motors(main_brush=True, side_brush=True, side_clockwise=True) == bytes([138, 13])


def test_v3_leds() -> None:
    """Spec example (p.16): the Home/Dock LED bit and a green power LED at half intensity."""
    assert codec.leds(dock=True, power_color=0, power_intensity=128) == bytes([139, 4, 0, 128])


def test_v4_digit_leds_ascii() -> None:
    """Spec example (p.18): Digit LEDs ASCII sends the four characters as they are."""
    assert codec.digit_leds_ascii("ABCD") == bytes([164, 65, 66, 67, 68])


def test_v5_query_list_and_reply() -> None:
    """Spec example (p.21): Query List of bumpers and virtual wall; its 2-byte reply decoded by key."""
    assert codec.query_list([7, 13]) == bytes([149, 2, 7, 13])
    assert codec.reply_length([7, 13]) == 2
    assert codec.decode_reply([7, 13], bytes([3, 1])) == {"bumps_wheel_drops": 3, "virtual_wall": 1}


def test_v6_stream_request() -> None:
    """Spec example (p.22): a Stream request is the count, then the ids."""
    assert codec.stream([29, 13]) == bytes([148, 2, 29, 13])


def test_v7_stream_frame_header_inclusive_checksum() -> None:
    parser = StreamParser([29, 13])
    (event,) = parser.feed(bytes([19, 5, 29, 2, 25, 13, 0, 163]), now=1.5)
    assert isinstance(event, SensorFrame)
    # The spec's text says 549 (0x0225) but prints the byte 25 in decimal: the bytes decode to 2*256+25.
    assert event.values == {"cliff_front_left_signal": 2 * 256 + 25, "virtual_wall": 0}
    assert event.at == 1.5 and event.ids == (29, 13)
    assert encode_frame([29, 13], event.values) == bytes([19, 5, 29, 2, 25, 13, 0, 163])


def test_v7_old_header_exclusive_checksum_is_corrupt_not_an_exception() -> None:
    parser = StreamParser([29, 13])
    events = parser.feed(bytes([19, 5, 29, 2, 25, 13, 0, 182]))
    assert [type(e) for e in events] == [CorruptFrame]
    assert parser.frames_corrupt == 1 and parser.frames_ok == 0


def test_v8_schedule() -> None:
    """Spec example (p.12): Wed 15:00 and Fri 10:36 set day bits 3 and 5 and their times; names work too."""
    expected = bytes([167, 40, 0, 0, 0, 0, 0, 0, 15, 0, 0, 0, 10, 36, 0, 0])
    assert codec.schedule({3: (15, 0), 5: (10, 36)}) == expected
    assert codec.schedule({"wed": (15, 0), "Friday": (10, 36)}) == expected


def test_v9_schedule_disable() -> None:
    """An empty schedule disables scheduled cleaning: 167, then 15 zero bytes (p.12)."""
    assert codec.schedule({}) == bytes([167] + [0] * 15)


def test_d1_d2_special_radii() -> None:
    """The special radii: straight is 0x8000 (or 0x7FFF), spinning in place is -1 (CW) / +1 (CCW)."""
    assert codec.drive_straight(200) == bytes([137, 0, 200, 128, 0])
    assert codec.drive(200, 32767) == bytes([137, 0, 200, 127, 255])
    assert codec.spin(100, clockwise=True) == bytes([137, 0, 100, 255, 255])
    assert codec.spin(100, clockwise=False) == bytes([137, 0, 100, 0, 1])


def test_d3_drive_direct_right_first() -> None:
    assert codec.drive_direct(right=100, left=-100) == bytes([145, 0, 100, 255, 156])


def test_d4_d5_songs() -> None:
    """Songs as real clients send them (pycreate2's silent note, PyRoombaAdapter's 9 notes): 2N+3 bytes."""
    assert codec.song(2, [(70, 0)]) + codec.play(2) == bytes([140, 2, 1, 70, 0, 141, 2])
    notes = [(69, 40), (69, 40), (69, 40), (65, 30), (72, 10), (69, 40), (65, 30), (72, 10), (69, 80)]
    raw = codec.song(0, notes)
    assert raw == bytes([140, 0, 9, 69, 40, 69, 40, 69, 40, 65, 30, 72, 10, 69, 40, 65, 30, 72, 10, 69, 80])
    assert len(raw) == 2 * 9 + 3
    assert data_length(raw[0], raw[1:]) == len(raw) - 1


def test_d6_stream_frame() -> None:
    """A computed frame of packets 7 and 35 (Safe, no bumps) encodes and parses back, checksum included."""
    assert encode_frame([7, 35], {"oi_mode": 2}) == bytes([19, 4, 7, 0, 35, 2, 189])
    (event,) = StreamParser().feed(bytes([19, 4, 7, 0, 35, 2, 189]))
    assert isinstance(event, SensorFrame) and event.values == {"bumps_wheel_drops": 0, "oi_mode": 2}


def test_d7_libcreate_stream_size() -> None:
    """libcreate's 30-packet stream: 75 bytes per frame with n-bytes 72, as its traces show."""
    ids = [7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18, 21, 22, 23, 24, 25, 26, 35, 43, 44, 45]
    ids += [46, 47, 48, 49, 50, 51, 52, 53, 58]
    assert codec.stream(ids) == bytes([148, 30, *ids])
    assert codec.stream_frame_size(ids) == 75
    frame = encode_frame(ids, {})
    assert frame[1] == 72 and len(frame) == 75


def test_d8_pwm_motors() -> None:
    """PWM Motors takes signed bytes: a main brush at -55 is the byte 201."""
    assert codec.pwm_motors(-55, 0, 0) == bytes([144, 201, 0, 0])


def test_d9_group_100_frame() -> None:
    """The group 100 frame the Robot streams: 84 bytes, header 19 81 100, summing to 0 mod 256."""
    frame = encode_frame([100], {})
    assert len(frame) == 84 and frame[:3] == bytes([19, 81, 100])
    assert sum(frame) % 256 == 0


# ------------------------------------------------------------------ every opcode


ENCODED = {
    Op.RESET: codec.reset(),
    Op.START: codec.start(),
    Op.BAUD: codec.baud(115200),
    Op.CONTROL: codec.control(),
    Op.SAFE: codec.safe(),
    Op.FULL: codec.full(),
    Op.POWER: codec.power(),
    Op.SPOT: codec.spot(),
    Op.CLEAN: codec.clean(),
    Op.MAX: codec.max_clean(),
    Op.DRIVE: codec.drive(500, -2000),
    Op.MOTORS: codec.motors(vacuum=True, main_outward=True),
    Op.LEDS: codec.leds(debris=True, spot=True, check_robot=True, power_color=255, power_intensity=255),
    Op.SONG: codec.song(4, [(31, 255)] * 16),
    Op.PLAY: codec.play(4),
    Op.SENSORS: codec.sensors(100),
    Op.SEEK_DOCK: codec.seek_dock(),
    Op.PWM_MOTORS: codec.pwm_motors(127, -127, 127),
    Op.DRIVE_DIRECT: codec.drive_direct(-500, 500),
    Op.DRIVE_PWM: codec.drive_pwm(255, -255),
    Op.STREAM: codec.stream([100], baud_rate=115200),
    Op.QUERY_LIST: codec.query_list([7, 35, 101]),
    Op.PAUSE_RESUME_STREAM: codec.pause_resume_stream(True),
    Op.SCHEDULING_LEDS: codec.scheduling_leds(127, colon=True, pm=True, am=True, clock=True, schedule=True),
    Op.DIGIT_LEDS_RAW: codec.digit_leds_raw([127, 0, 1, 64]),
    Op.DIGIT_LEDS_ASCII: codec.digit_leds_ascii("hi"),
    Op.BUTTONS: codec.buttons(255),
    Op.SCHEDULE: codec.schedule({0: (23, 59), 6: (0, 0)}),
    Op.SET_DAY_TIME: codec.set_day_time(6, 23, 59),
    Op.STOP: codec.stop_oi(),
}


@pytest.mark.parametrize("op", sorted(ENCODED), ids=lambda o: Op(o).name)
def test_every_current_opcode_encodes_with_its_table_length(op: Op) -> None:
    """A command a byte too long or too short would desynchronise the robot's command parser."""
    raw = ENCODED[op]
    assert raw[0] == op
    assert data_length(raw[0], raw[1:]) == len(raw) - 1


def test_every_non_removed_opcode_has_an_encoder() -> None:
    """No command of the spec is missing from the codec (the ones removed on the Create 2 excepted)."""
    assert {o for o, s in OPCODES.items() if not s.removed} == set(ENCODED)


def test_encoded_field_values() -> None:
    """Field packing: baud codes, signed 16-bit velocity and radius, the motor and LED bits, signed PWM."""
    assert ENCODED[Op.BAUD] == bytes([129, 11])
    assert codec.baud(57600) == bytes([129, 10])
    assert codec.baud(300) == bytes([129, 0])
    assert ENCODED[Op.DRIVE] == bytes([137, 1, 244, 0xF8, 0x30])
    assert ENCODED[Op.MOTORS] == bytes([138, 0b10010])
    assert ENCODED[Op.LEDS] == bytes([139, 0b1011, 255, 255])
    assert ENCODED[Op.PWM_MOTORS] == bytes([144, 127, 129, 127])
    assert ENCODED[Op.DRIVE_DIRECT] == bytes([145, 0xFE, 0x0C, 0x01, 0xF4])
    assert ENCODED[Op.DRIVE_PWM] == bytes([146, 0, 255, 0xFF, 0x01])
    assert ENCODED[Op.SCHEDULING_LEDS] == bytes([162, 127, 31])
    assert ENCODED[Op.DIGIT_LEDS_ASCII] == bytes([164, 104, 105, 32, 32])
    assert ENCODED[Op.SCHEDULE] == bytes([167, 65, 23, 59] + [0] * 10 + [0, 0])
    assert ENCODED[Op.SET_DAY_TIME] == bytes([168, 6, 23, 59])
    assert codec.pause_resume_stream(False) == bytes([150, 0])
    assert codec.stream([]) == bytes([148, 0])
    assert codec.song(1, [(codec.REST, 32)]) == bytes([140, 1, 1, 0, 32])
    assert codec.enter_mode(OIMode.FULL) == bytes([132])
    assert codec.enter_mode(OIMode.PASSIVE) == bytes([128])
    assert codec.enter_mode(OIMode.SAFE) == bytes([131])
    assert codec.enter_mode(OIMode.OFF) == bytes([173])


RANGE_ERRORS = [
    pytest.param(lambda: codec.drive(501, 0), "velocity", id="drive_velocity_high"),
    pytest.param(lambda: codec.drive(-501, 0), "velocity", id="drive_velocity_low"),
    pytest.param(lambda: codec.drive(100, 2001), "radius", id="drive_radius_high"),
    pytest.param(lambda: codec.drive(100, -2001), "radius", id="drive_radius_low"),
    pytest.param(lambda: codec.drive(100.5, 0), "velocity", id="drive_velocity_float"),  # type: ignore[arg-type]
    pytest.param(lambda: codec.drive(True, 0), "velocity", id="drive_velocity_bool"),
    pytest.param(lambda: codec.drive(100, 32768.0), "radius", id="drive_radius_float"),  # type: ignore[arg-type]
    pytest.param(lambda: codec.song(0, [(0.0, 8)]), "notes[0].note", id="song_note_float"),  # type: ignore[list-item]
    pytest.param(lambda: codec.schedule({0: (1,)}), "times", id="schedule_pair"),  # type: ignore[dict-item]
    pytest.param(lambda: codec.drive_direct(0, 501), "left", id="drive_direct_left"),
    pytest.param(lambda: codec.drive_direct(-501, 0), "right", id="drive_direct_right"),
    pytest.param(lambda: codec.drive_pwm(256, 0), "right", id="drive_pwm_right"),
    pytest.param(lambda: codec.drive_pwm(0, -256), "left", id="drive_pwm_left"),
    pytest.param(lambda: codec.pwm_motors(128, 0, 0), "main_brush", id="pwm_main"),
    pytest.param(lambda: codec.pwm_motors(0, -128, 0), "side_brush", id="pwm_side"),
    pytest.param(lambda: codec.pwm_motors(0, 0, -1), "vacuum", id="pwm_vacuum"),
    pytest.param(lambda: codec.motors(vacuum=1), "vacuum", id="motors_not_bool"),  # type: ignore[arg-type]
    pytest.param(lambda: codec.leds(power_color=256), "power_color", id="leds_color"),
    pytest.param(lambda: codec.leds(power_intensity=-1), "power_intensity", id="leds_intensity"),
    pytest.param(lambda: codec.scheduling_leds(128), "weekdays", id="sched_leds_days"),
    pytest.param(lambda: codec.digit_leds_raw([0, 0, 0]), "digits", id="digits_raw_count"),
    pytest.param(lambda: codec.digit_leds_raw([0, 0, 0, 128]), "digits[3]", id="digits_raw_value"),
    pytest.param(lambda: codec.digit_leds_ascii("ABCDE"), "text", id="ascii_too_long"),
    pytest.param(lambda: codec.digit_leds_ascii("é"), "text", id="ascii_not_ascii"),
    pytest.param(lambda: codec.digit_leds_ascii("a\n"), "text", id="ascii_control"),
    pytest.param(lambda: codec.buttons(256), "bits", id="buttons"),
    pytest.param(lambda: codec.song(5, [(60, 8)]), "number", id="song_number"),
    pytest.param(lambda: codec.song(0, []), "notes", id="song_empty"),
    pytest.param(lambda: codec.song(0, [(60, 8)] * 17), "notes", id="song_too_long"),
    pytest.param(lambda: codec.song(0, [(30, 8)]), "notes[0].note", id="song_note_low"),
    pytest.param(lambda: codec.song(0, [(128, 8)]), "notes[0].note", id="song_note_high"),
    pytest.param(lambda: codec.song(0, [(60, 256)]), "notes[0].duration", id="song_duration"),
    pytest.param(lambda: codec.play(5), "number", id="play_number"),
    pytest.param(lambda: codec.play(-1), "number", id="play_negative"),
    pytest.param(lambda: codec.sensors(59), "packet_id", id="sensors_unknown"),
    pytest.param(lambda: codec.query_list([]), "packet_ids", id="query_empty"),
    pytest.param(lambda: codec.query_list([7, 200]), "packet_ids[1]", id="query_unknown"),
    pytest.param(lambda: codec.stream([102]), "packet_ids[0]", id="stream_unknown"),
    pytest.param(lambda: codec.schedule({7: (1, 0)}), "day", id="schedule_day"),
    pytest.param(lambda: codec.schedule({"xyz": (1, 0)}), "day", id="schedule_day_name"),
    pytest.param(lambda: codec.schedule({0: (24, 0)}), "hour", id="schedule_hour"),
    pytest.param(lambda: codec.schedule({0: (0, 60)}), "minute", id="schedule_minute"),
    pytest.param(lambda: codec.set_day_time(7, 0, 0), "day", id="clock_day"),
    pytest.param(lambda: codec.set_day_time(0, 24, 0), "hour", id="clock_hour"),
    pytest.param(lambda: codec.set_day_time(0, 0, 60), "minute", id="clock_minute"),
    pytest.param(lambda: codec.baud(9601), "rate", id="baud_rate"),
    pytest.param(lambda: codec.enter_mode(7), "mode", id="mode_unknown"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("call", "field"), RANGE_ERRORS)
def test_out_of_range_raises_clear_error(call: object, field: str) -> None:
    """An out-of-range argument raises before any byte exists, naming the field and the allowed range."""
    with pytest.raises(CommandRangeError) as info:
        call()  # type: ignore[operator]
    assert field in info.value.field
    assert "nothing was sent" in str(info.value) and "allowed" in str(info.value)


def test_stream_budget_scales_with_baud() -> None:
    """A stream bigger than one 15 ms slot at the baud rate is refused: its frames would be corrupted."""
    assert codec.stream_budget(115200) == 172
    assert codec.stream_budget(57600) == 86
    assert codec.stream_budget(19200) == 28
    codec.stream([100], baud_rate=57600)
    with pytest.raises(StreamBudgetError, match="172 bytes per 15 ms"):
        codec.stream([100, 6, 0, 3], baud_rate=115200)
    with pytest.raises(StreamBudgetError, match="28 bytes"):
        codec.stream([100], baud_rate=19200)


def test_mode_check() -> None:
    """check_mode says when the robot in its current mode would silently ignore a command."""
    codec.check_mode(codec.drive(100, 0), OIMode.SAFE)
    codec.check_mode(codec.start(), OIMode.OFF)
    with pytest.raises(ModeError, match=r"Drive .* ignored in PASSIVE"):
        codec.check_mode(codec.drive(100, 0), OIMode.PASSIVE)
    with pytest.raises(ModeError, match="removed"):
        codec.check_mode(bytes([147, 0]), OIMode.FULL)


# ------------------------------------------------------------------ every packet


@pytest.mark.parametrize("pid", SINGLE_IDS)
def test_every_single_packet_decodes_with_signedness(pid: int) -> None:
    """A wrong size or signedness would turn -1 into 65535: every packet round-trips its extremes."""
    spec = PACKETS[pid]
    top = bytes([0xFF] * spec.size)
    (value,) = codec.decode_packet(pid, top).values()
    assert value == (-1 if spec.signed else (1 << (8 * spec.size)) - 1)
    assert codec.decode_packet(pid, pack(pid, spec.max)) == {spec.key: spec.max}
    assert codec.decode_packet(pid, pack(pid, spec.min)) == {spec.key: spec.min}
    reading = codec.interpret(spec.key, spec.max)
    assert reading.units == spec.units and reading.raw == spec.max


@pytest.mark.parametrize("gid", GROUP_IDS)
def test_every_group_decodes_to_its_members(gid: int) -> None:
    """A group reply is its members in spec order, each decoded with its own size."""
    spec = PACKETS[gid]
    values = {PACKETS[m].key: (m if PACKETS[m].max >= m else PACKETS[m].max) for m in spec.members}
    data = b"".join(pack(m, values[PACKETS[m].key]) for m in spec.members)
    assert len(data) == spec.size == codec.reply_length([gid])
    assert codec.decode_packet(gid, data) == values
    assert list(codec.decode_packet(gid, data)) == [PACKETS[m].key for m in spec.members]


def test_reply_of_wrong_length_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="80 bytes, got 79"):
        codec.decode_reply([100], bytes(79))


def test_typed_readings() -> None:
    """Raw values get their meaning: modes and charging states as enums, bit fields as flags, bools, units."""
    r = codec.readings(
        {
            "oi_mode": 3,
            "charging_state": 2,
            "bumps_wheel_drops": 5,
            "cliff_left": 1,
            "angle": -90,
            "charging_state_x": 1,
        }
    )
    assert r["oi_mode"].value is OIMode.FULL
    assert r["charging_state"].value is codec.ChargingState.FULL_CHARGING
    assert (
        r["bumps_wheel_drops"].value
        == codec.BumpsWheelDrops.BUMP_RIGHT | codec.BumpsWheelDrops.WHEEL_DROP_RIGHT
    )
    assert r["cliff_left"].value is True
    assert (r["angle"].value, r["angle"].units) == (-90, "deg")
    assert "charging_state_x" not in r
    assert codec.interpret("charging_state", 6).value == 6
    assert codec.interpret("voltage", 15000).units == "mV"


# ------------------------------------------------------------------ stream parser


def _frame(seed: int, ids: tuple[int, ...] = (100,)) -> tuple[bytes, dict[str, int]]:
    rng = random.Random(seed)
    values: dict[str, int] = {}
    for pid in ids:
        for m in PACKETS[pid].members or (pid,):
            spec = PACKETS[m]
            values[spec.key] = rng.randint(spec.min, spec.max)
    return encode_frame(ids, values), values


def test_frames_split_at_every_boundary() -> None:
    """A serial read can end anywhere: frames cut at any byte are still decoded exactly once."""
    frames = [_frame(i) for i in range(3)]
    wire = b"".join(f for f, _ in frames)
    for cut in range(1, len(wire)):
        parser = StreamParser([100])
        events = parser.feed(wire[:cut]) + parser.feed(wire[cut:])
        assert [e.values for e in events if isinstance(e, SensorFrame)] == [v for _, v in frames]
        assert parser.frames_corrupt == 0 and parser.buffered == 0


def test_unknown_layout_learned_without_expect() -> None:
    """A frame of a layout nobody declared is decoded from the packet table, not dropped."""
    wire, values = _frame(1, (7, 43, 44, 106))
    parser = StreamParser()
    (event,) = parser.feed(wire)
    assert isinstance(event, SensorFrame) and event.values == values and event.ids == (7, 43, 44, 106)


def test_layout_change_mid_stream() -> None:
    """After a new Stream request, frames of the old and the new layout interleave and both decode."""
    a, va = _frame(1, (100,))
    b, vb = _frame(2, (7, 35))
    parser = StreamParser([100])
    events = parser.feed(a + b + a)
    assert [e.values for e in events if isinstance(e, SensorFrame)] == [va, vb, va]


def test_bad_checksum_resyncs_on_frame_inside() -> None:
    """After a bad checksum the search restarts inside the bad frame, so the good frame after it survives."""
    good, values = _frame(3)
    bad = bytearray(good)
    bad[40] ^= 0x55
    parser = StreamParser([100])
    events = parser.feed(bytes(bad) + good)
    assert [type(e) for e in events if not isinstance(e, TextLine)] == [CorruptFrame, SensorFrame]
    assert events[-1].values == values  # type: ignore[union-attr]
    assert parser.frames_corrupt == 1 and parser.frames_ok == 1


def test_chatter_between_frames_becomes_events() -> None:
    """The robot's ASCII between frames (banner, battery lines, 0xFE) becomes events and costs no frame."""
    f1, v1 = _frame(4)
    f2, v2 = _frame(5)
    bat = b"bat: min 0 sec 10  mV 5930  mA 302  tenths-deg-C 182  mAH 0  state 6  mode 8\r\n"
    banner = (
        b"Soft reset!\n\xfeRoomba by iRobot!\r\nstm32\r\n2015-12-18-1607-L   \r\n"
        b"r3-robot/tags/release-stm32-3.7.1:6174 CLEAN\r\n"
    )
    parser = StreamParser([100])
    events = parser.feed(f1 + bat[:20], now=1.0) + parser.feed(bat[20:] + banner + f2, now=2.0)
    kinds = [type(e) for e in events]
    assert kinds == [
        SensorFrame,
        BatteryLine,
        TextLine,
        BootMarker,
        TextLine,
        TextLine,
        TextLine,
        FirmwareBanner,
        SensorFrame,
    ]
    battery = events[1]
    assert isinstance(battery, BatteryLine)
    assert (battery.millivolts, battery.milliamps, battery.tenths_deg_c, battery.state, battery.mode) == (
        5930,
        302,
        182,
        6,
        8,
    )
    assert battery.at == 2.0
    fw = events[7]
    assert isinstance(fw, FirmwareBanner) and fw.version == "3.7.1"
    assert [e.values for e in events if isinstance(e, SensorFrame)] == [v1, v2]
    assert parser.frames_corrupt == 0 and parser.bytes_discarded == 0


def test_text_line_split_by_a_frame() -> None:
    """A battery line interrupted by a frame is joined back together."""
    f, _ = _frame(6)
    parser = StreamParser([100])
    events = parser.feed(
        b"bat: min 0 sec 1" + f + b"1  mV 1  mA -2  tenths-deg-C 3  mAH 4  state 5  mode 6\r\n"
    )
    assert isinstance(events[0], SensorFrame)
    assert isinstance(events[1], BatteryLine) and events[1].seconds == 11 and events[1].milliamps == -2


def test_other_firmware_banner_forms() -> None:
    """The firmware version is found in the older 3.5.x banner and in the spec's r3_robot spelling."""
    line = codec.parse_text_line("r3-robot/tags/release-3.5.x-tags/release-3.5.4:6058 CLEAN", 0.0)
    assert isinstance(line, FirmwareBanner) and line.version == "3.5.4"
    assert isinstance(codec.parse_text_line("r3_robot/tags/release-3.3.0", 0.0), FirmwareBanner)


def test_buffer_is_bounded() -> None:
    """A peer that never completes a frame cannot grow the parser's buffer past its cap."""
    parser = StreamParser([100], max_buffer=1024)
    # A header whose declared frame never completes: the parser waits, but never holds more than the cap.
    stuck = bytes([19, 81, 100]) + bytes(60)
    parser.feed(stuck)
    for _ in range(50):
        parser.feed(bytes([19, 4, 7]))
        assert parser.buffered <= 1024
    frame, values = _frame(7)
    events = parser.feed(b"\x00" * 2048 + frame)
    assert [e.values for e in events if isinstance(e, SensorFrame)] == [values]
    assert parser.overflows >= 1


def test_long_text_without_newline_is_flushed() -> None:
    parser = StreamParser(max_line=64)
    events = parser.feed(b"x" * 100)
    assert isinstance(events[0], TextLine) and parser.text_lines == 1


def test_stats_snapshot() -> None:
    """The counters LinkHealth is built from (frames, corrupt, discarded, resyncs); reset() empties the buffer."""
    parser = StreamParser([100])
    frame, _ = _frame(8)
    parser.feed(b"\x01\x02" + frame)
    stats = parser.stats
    assert (stats.frames_ok, stats.frames_corrupt, stats.bytes_discarded, stats.resyncs) == (1, 0, 2, 1)
    parser.feed(frame[:10])
    parser.reset()
    assert parser.buffered == 0


@settings(max_examples=150, deadline=None)
@given(
    noise=st.lists(st.binary(min_size=0, max_size=40), min_size=6, max_size=6),
    seeds=st.lists(st.integers(0, 10_000), min_size=5, max_size=5),
    chunk=st.integers(1, 200),
)
def test_resync_under_random_noise(noise: list[bytes], seeds: list[int], chunk: int) -> None:
    """Frames separated by arbitrary noise, in arbitrary chunks: every decoded frame is one that was sent, in
    order (a bad checksum is never decoded), the parser recovers after the noise, and nothing raises."""
    frames = [_frame(s) for s in seeds]
    wire = noise[0] + b"".join(f + n for (f, _), n in zip(frames, noise[1:], strict=True))
    # Guarantee recovery: end with two clean frames.
    tail, tail_values = _frame(99)
    wire += tail + tail
    parser = StreamParser([100])
    events = []
    for i in range(0, len(wire), chunk):
        events += parser.feed(wire[i : i + chunk], now=float(i))
    decoded = [e.values for e in events if isinstance(e, SensorFrame)]
    sent = [v for _, v in frames]
    it = iter([*sent, tail_values, tail_values])
    assert all(any(d == s for s in it) for d in decoded)  # decoded is a subsequence of what was sent
    assert decoded[-1] == tail_values
    assert parser.frames_ok == len(decoded)


@settings(max_examples=150, deadline=None)
@given(
    noise=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\x13", b"")), min_size=6, max_size=6),
    seeds=st.lists(st.integers(0, 10_000), min_size=5, max_size=5),
    chunk=st.integers(1, 200),
)
def test_noise_without_header_bytes_loses_no_frame(noise: list[bytes], seeds: list[int], chunk: int) -> None:
    """Noise that cannot fake a header costs nothing: every frame is decoded, none is counted corrupt, and
    every noise byte that is not text is counted as discarded."""
    frames = [_frame(s) for s in seeds]
    wire = noise[0] + b"".join(f + n for (f, _), n in zip(frames, noise[1:], strict=True))
    parser = StreamParser([100])
    events = []
    for i in range(0, len(wire), chunk):
        events += parser.feed(wire[i : i + chunk])
    assert [e.values for e in events if isinstance(e, SensorFrame)] == [v for _, v in frames]
    assert parser.frames_corrupt == 0
    assert parser.bytes_discarded <= sum(len(n) for n in noise)


@settings(max_examples=100, deadline=None)
@given(
    seeds=st.lists(st.integers(0, 10_000), min_size=1, max_size=8),
    lines=st.lists(
        st.sampled_from(
            [
                b"bat: min 1 sec 2  mV 15000  mA -300  tenths-deg-C 250  mAH 1900  state 0  mode 1\r\n",
                b"Roomba by iRobot!\r\n",
                b"\xfe",
                b"2015-12-18-1607-L   \r\n",
                b"battery-current-zero 254\r\n",
                b"",
            ]
        ),
        min_size=1,
        max_size=8,
    ),
    chunk=st.integers(1, 97),
)
def test_chatter_never_costs_a_frame(seeds: list[int], lines: list[bytes], chunk: int) -> None:
    frames = [_frame(s) for s in seeds]
    wire = b"".join(line + f for line, (f, _) in zip(lines * 8, frames, strict=False))
    parser = StreamParser([100])
    events = []
    for i in range(0, len(wire), chunk):
        events += parser.feed(wire[i : i + chunk])
    assert [e.values for e in events if isinstance(e, SensorFrame)] == [v for _, v in frames]
    assert parser.frames_corrupt == 0 and parser.bytes_discarded == 0
    used = lines * 8
    expected_bat = sum(1 for line in used[: len(frames)] if line.startswith(b"bat:"))
    assert sum(isinstance(e, BatteryLine) for e in events) == expected_bat


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parser = StreamParser([100])
    parser.feed(data)
    parser.feed(data[::-1])
    assert parser.buffered <= 4096


@given(velocity=st.integers(-5000, 5000), radius=st.integers(-40000, 40000))
def test_drive_accepts_exactly_the_spec_ranges(velocity: int, radius: int) -> None:
    valid = -500 <= velocity <= 500 and (-2000 <= radius <= 2000 or radius in (32767, 32768))
    if not valid:
        with pytest.raises(CommandRangeError):
            codec.drive(velocity, radius)
        return
    raw = codec.drive(velocity, radius)
    assert raw[0] == 137 and len(raw) == 5
    assert int.from_bytes(raw[1:3], "big", signed=True) == velocity
    assert int.from_bytes(raw[3:5], "big") == radius & 0xFFFF


@given(right=st.integers(-1000, 1000), left=st.integers(-1000, 1000))
def test_drive_direct_accepts_exactly_the_spec_ranges(right: int, left: int) -> None:
    if abs(right) > 500 or abs(left) > 500:
        with pytest.raises(CommandRangeError):
            codec.drive_direct(right, left)
        return
    raw = codec.drive_direct(right, left)
    assert codec.decode_reply([41, 42], raw[1:]) == {
        "requested_right_velocity": right,
        "requested_left_velocity": left,
    }


# ------------------------------------------------------------------ the package's public face

# Every public name of hal/codec.py before it became a package (its __all__, plus BAUD_CODES).
CODEC_NAMES = {
    *("BAUD_CODES", "RADIUS_STRAIGHT", "RADIUS_STRAIGHT_ALT", "REST", "SPIN_CCW", "SPIN_CW"),
    *("BatteryLine", "BootMarker", "BumpsWheelDrops", "Buttons", "ChargingSources", "ChargingState"),
    *("CorruptFrame", "FirmwareBanner", "FrameValues", "Layout", "LightBumper", "ParserStats", "Reading"),
    *("SensorFrame", "Stasis", "StreamEvent", "StreamParser", "TextLine", "WheelOvercurrents"),
    *("baud", "buttons", "check_mode", "check_stream_budget", "clean", "control", "decode_packet"),
    *("decode_reply", "digit_leds_ascii", "digit_leds_raw", "drive", "drive_direct", "drive_pwm"),
    *("drive_straight", "encode_frame", "enter_mode", "frame_from_body", "full", "interpret", "leds"),
    *("max_clean", "motors", "parse_text_line", "pause_resume_stream", "play", "power", "pwm_motors"),
    *("query_list", "readings", "reply_length", "reset", "safe", "schedule", "scheduling_leds"),
    *("seek_dock", "sensors", "set_day_time", "song", "spin", "spot", "start", "stop_oi", "stream"),
    *("stream_budget", "stream_frame_size"),
}


def test_codec_split_keeps_every_public_name() -> None:
    """``from hal.codec import X`` keeps working for every name the single module had, and adds none."""
    from hal.codec import decode, encode, streaming

    assert set(codec.__all__) == CODEC_NAMES
    for name in CODEC_NAMES:
        homes = [m for m in (encode, decode, streaming) if name in vars(m)]
        assert homes and all(vars(m)[name] is getattr(codec, name) for m in homes), name
    assert {codec.drive.__module__, codec.check_mode.__module__} == {"hal.codec.encode"}
    assert {codec.Layout.__module__, codec.interpret.__module__} == {"hal.codec.decode"}
    assert {codec.StreamParser.__module__, codec.check_stream_budget.__module__} == {"hal.codec.streaming"}
    assert callable(codec.stream) and codec.stream([7]) == bytes([148, 1, 7])  # the encoder, not a module
