"""Pure pieces: odometry (including 16-bit wrap both ways), quirks and their switches, models, backoff, and
the transport against pyserial's loop:// and a real pty."""

from __future__ import annotations

import math
import os
import random
import tty

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hal.errors import StreamBudgetError, TransportError
from hal.models import MODELS, get_model
from hal.odometry import DeltaOdometry, EncoderOdometry, unwrap16
from hal.quirks import QUIRK_HELP, Quirks, firmware_tuple, for_firmware
from hal.robot import Robot, reopen_backoff
from hal.transport import SerialTransport

CREATE2 = MODELS["create2"]


def test_mm_per_count_from_spec() -> None:
    """Encoder counts to millimetres: a 72 mm wheel, 508.8 counts per revolution (spec, packets 43/44)."""
    assert CREATE2.mm_per_count == pytest.approx(math.pi * 72.0 / 508.8)


def test_straight_line() -> None:
    """Equal counts on both wheels move the pose straight ahead, without turning."""
    odo = EncoderOdometry(CREATE2.mm_per_count, CREATE2.wheelbase_mm)
    odo.update(100, 100)
    pose = odo.update(100 + 1000, 100 + 1000)
    assert pose.x_mm == pytest.approx(1000 * CREATE2.mm_per_count)
    assert pose.y_mm == pytest.approx(0) and pose.theta_rad == pytest.approx(0)


def test_spin_in_place_quarter_turn_ccw() -> None:
    """Opposite counts turn in place: a quarter turn counter-clockwise, no drift."""
    odo = EncoderOdometry(CREATE2.mm_per_count, CREATE2.wheelbase_mm)
    odo.update(0, 0)
    arc = (math.pi / 2) * CREATE2.wheelbase_mm / 2
    counts = round(arc / CREATE2.mm_per_count)
    for step in range(1, 11):
        pose = odo.update(-counts * step // 10, counts * step // 10)
    assert pose.heading_deg == pytest.approx(90, abs=0.5)
    assert math.hypot(pose.x_mm, pose.y_mm) < 1


@pytest.mark.parametrize(
    ("start", "delta"),
    [
        pytest.param(32700, 200, id="forward_across_plus_max"),
        pytest.param(-32700, -200, id="backward_across_minus_max"),
        pytest.param(65500, 100, id="unsigned_reading_forward"),
        pytest.param(30, -100, id="backward_across_zero_unsigned"),
    ],
)
def test_encoder_wrap_both_directions(start: int, delta: int) -> None:
    """The 16-bit counters roll over forwards and backwards without a jump in distance."""
    odo = EncoderOdometry(1.0, 235.0)

    def wire(value: int) -> int:  # what signed int16 decoding of the wire bytes gives
        value &= 0xFFFF
        return value - 65536 if value >= 32768 else value

    odo.update(wire(start), wire(start))
    pose = odo.update(wire(start + delta), wire(start + delta))
    assert pose.distance_mm == pytest.approx(delta)


def test_wrap_switched_off_shows_the_jump() -> None:
    odo = EncoderOdometry(1.0, 235.0, wrap=False)
    odo.update(32700, 32700)
    assert odo.update(-32636, -32636).distance_mm == pytest.approx(-65336)


@given(st.integers(-32768, 32767), st.integers(-2000, 2000))
def test_unwrap16_property(start: int, delta: int) -> None:
    """unwrap16 recovers any step smaller than half the counter's range."""
    end = ((start + delta + 32768) & 0xFFFF) - 32768
    assert unwrap16(end - start) == delta


def test_rebase_ignores_the_jump_after_reconnect() -> None:
    odo = EncoderOdometry(1.0, 235.0)
    odo.update(0, 0)
    odo.update(500, 500)
    odo.rebase()
    odo.update(0, 0)  # the robot rebooted and restarted its counters
    assert odo.update(10, 10).distance_mm == pytest.approx(510)


def test_delta_odometry() -> None:
    """Without encoders the pose comes from the robot's own Distance (19) and Angle (20) packets."""
    odo = DeltaOdometry(235.0)
    odo.update(100, 0)
    pose = odo.update(0, 90)
    assert (pose.x_mm, pose.heading_deg) == (pytest.approx(100), pytest.approx(90))


def test_quirk_mode_plus_one() -> None:
    """The mode_plus_one workaround subtracts one from packet 35, and leaves Off (0) alone."""
    assert Quirks().mode(3) == 3
    q = Quirks().switched("mode_plus_one=on")
    assert q.mode(4) == 3 and q.mode(2) == 1 and q.mode(0) == 0


def test_quirk_angle_scale() -> None:
    """The angle_scale workaround undoes old firmware's Angle scaling (divide by 0.324056)."""
    assert Quirks().angle_degrees(90) == 90.0
    assert Quirks(angle_scale=True).angle_degrees(29) == pytest.approx(29 / 0.324056)


def test_quirk_switches_parse() -> None:
    """Quirk switches from configuration: on/off spellings, dashes; unknown names and values are refused."""
    q = Quirks().switched("mode-plus-one, encoder_wrap=off,angle_scale=yes")
    assert q.mode_plus_one and not q.encoder_wrap and q.angle_scale
    assert set(q.active()) == {"mode_plus_one", "encoder_odometry", "angle_scale"}
    with pytest.raises(ValueError, match="known quirks: mode_plus_one"):
        Quirks().switched("warp_drive=on")
    with pytest.raises(ValueError, match="not on/off"):
        Quirks().switched("encoder_wrap=maybe")
    assert set(QUIRK_HELP) == {"mode_plus_one", "encoder_odometry", "angle_scale", "encoder_wrap"}


def test_quirks_from_firmware() -> None:
    """Firmware up to 3.4.0 switches the angle and encoder workarounds on by itself; later ones do not."""
    assert firmware_tuple("r3-robot/tags/release-stm32-3.7.1:6174") == (3, 7, 1)
    assert firmware_tuple("unknown") is None
    old = for_firmware("3.4.0", Quirks(encoder_odometry=False))
    assert old.angle_scale and old.encoder_odometry
    assert for_firmware("3.4.1", Quirks()) == Quirks()
    assert for_firmware(None, Quirks()) == Quirks()


def test_models() -> None:
    """Each model's baud, stream budget and default stream fit together; an unknown model lists the known."""
    assert CREATE2.baud == 115200 and CREATE2.stream_budget == 172 and CREATE2.stream_frame_bytes == 84
    old = get_model("Roomba 400")
    assert old.baud == 57600 and old.stream_budget == 86 and not old.has_encoders
    assert old.stream_frame_bytes <= old.stream_budget
    assert not old.quirks.encoder_odometry
    for model in MODELS.values():
        assert model.stream_frame_bytes <= model.stream_budget
        assert set(model.stream_ids) <= model.packets
    with pytest.raises(ValueError, match="known models: create2"):
        get_model("dalek")


def test_robot_refuses_a_stream_over_budget() -> None:
    """A Robot refuses a stream that does not fit its baud rate, or that lacks the mode packet 35."""
    with pytest.raises(StreamBudgetError, match="57600 baud carries only 86"):
        Robot("loop://", "create1", stream_ids=[6, 0, 1])
    with pytest.raises(ValueError, match="lacks packet 35"):
        Robot("loop://", stream_ids=[101])
    assert Robot("loop://", stream_ids=[43, 44, 35]).stream_ids == (43, 44, 35)


def test_reopen_backoff_is_capped_with_full_jitter() -> None:
    """The link's reopen rule is the project's one Backoff: 0.05 s doubling to a 2 s cap, full jitter."""
    ceilings = reopen_backoff(rand=lambda: 1.0)
    values = [ceilings.next_delay() for _ in range(12)]
    assert values[:4] == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert max(values) == values[-1] == 2.0
    rng = random.Random(1)
    jittered = reopen_backoff(rand=rng.random).delays()
    draws = [next(jittered) for _ in range(12)]
    assert all(0.0 <= d <= c for d, c in zip(draws, values, strict=True))
    assert len(set(draws)) == len(draws)  # full jitter: no two alike
    ceilings.reset()
    assert ceilings.next_delay() == pytest.approx(0.05)


def test_transport_loop_url_round_trip() -> None:
    """pyserial's loop:// carries bytes through SerialTransport; no BRC line; writes after close fail."""
    transport = SerialTransport("loop://", read_timeout=0.01)
    transport.open()
    transport.write(b"\x13\x01\x02")
    data = b""
    for _ in range(10):
        data += transport.read()
    assert data == b"\x13\x01\x02"
    assert transport.wake(pulse_s=0) is False  # loop:// has no real modem lines
    transport.close()
    with pytest.raises(TransportError, match="not open"):
        transport.write(b"x")


def test_transport_on_pty_has_no_modem_lines_and_detects_hangup() -> None:
    master, slave = os.openpty()
    tty.setraw(slave)
    transport = SerialTransport(os.ttyname(slave), read_timeout=0.05)
    try:
        transport.open()
        assert transport.wake(pulse_s=0) is False
        os.write(master, b"hello")
        got = b""
        for _ in range(10):
            got += transport.read()
            if got == b"hello":
                break
        assert got == b"hello"
        transport.write(b"\x80")
        assert os.read(master, 1) == b"\x80"
        os.close(master)
        os.close(slave)
        master = slave = -1
        with pytest.raises(TransportError, match="failed"):
            for _ in range(20):
                transport.read()
        assert not transport.is_open
    finally:
        transport.close()
        for fd in (master, slave):
            if fd >= 0:
                os.close(fd)


def test_transport_open_failure_is_actionable(tmp_path: os.PathLike[str]) -> None:
    """A port that cannot be opened says so with the port's name, as one TransportError."""
    with pytest.raises(TransportError, match="cannot open"):
        SerialTransport(f"{tmp_path}/nope").open()


def test_implausible_encoder_step_is_rejected_and_a_reboot_rebases() -> None:
    odo = EncoderOdometry(1.0, 235.0)
    odo.update(0, 0, max_step_mm=60)
    odo.update(10, 10, max_step_mm=60)
    # A frame whose checksum passed by chance: 20 m of phantom travel in one 15 ms frame.
    assert odo.update(20_010, 20_010, max_step_mm=60).distance_mm == pytest.approx(10)
    assert odo.update(20, 20, max_step_mm=60).distance_mm == pytest.approx(20)
    assert odo.rejected == 1
    # The robot rebooted under a live link: every step from the old baseline is implausible, so after three
    # in a row the new counts become the baseline and odometry carries on from there.
    for counts in (5000, 5005, 5010):
        odo.update(counts, counts, max_step_mm=60)
    assert odo.rejected == 4
    assert odo.update(5020, 5020, max_step_mm=60).distance_mm == pytest.approx(30)
    # Without a bound (first frame on a link, or a caller that knows no timing) every step counts.
    assert odo.update(9000, 9000).distance_mm == pytest.approx(30 + 3980)


def test_transport_closes_the_socket_when_the_peer_hung_up() -> None:
    """pyserial's socket:// close() leaks the descriptor after a hang-up; the transport must not."""
    import socket
    import struct

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        transport = SerialTransport(f"socket://127.0.0.1:{server.getsockname()[1]}", read_timeout=0.05)
        transport.open()
        sock = transport._port._socket
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()  # a reset, as from a bridge or simulator that went away
        with pytest.raises(TransportError, match="failed"):
            for _ in range(20):
                transport.write(b"\x80")
                transport.read()
    assert not transport.is_open
    assert sock.fileno() == -1


def test_transport_reads_everything_waiting_on_a_socket_in_one_call() -> None:
    """pyserial's socket:// read hands over 1-2 bytes per call; the transport must take what has arrived."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        transport = SerialTransport(f"socket://127.0.0.1:{server.getsockname()[1]}", read_timeout=0.5)
        transport.open()
        conn, _ = server.accept()
        with conn:
            conn.sendall(bytes(range(256)) * 2)
            got, reads = b"", 0
            while len(got) < 512 and reads < 50:
                got += transport.read()
                reads += 1
        transport.close()
    assert got == bytes(range(256)) * 2
    assert reads <= 3
