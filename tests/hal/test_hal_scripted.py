"""The Robot against a scripted robot on a real pty: exact bytes sent, firmware quirks in effect, the robot's
ASCII chatter surfaced as events, silence handling, and BRC wake on a port that has modem lines."""

from __future__ import annotations

import os
import threading
import time
import tty
from collections.abc import Iterator
from typing import Any

import pytest

from hal import codec
from hal.codec import BatteryLine, FirmwareBanner
from hal.opcodes import OIMode
from hal.quirks import Quirks
from hal.robot import ModeReentry, Robot, RobotEvent, StateUpdated
from hal.transport import SerialTransport

pytestmark = pytest.mark.timeout(30)


class ScriptedRobot:
    """The device side of a pty: records every byte the Robot sends; the test decides what to answer."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.received = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        import select

        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    return
                with self._lock:
                    self.received += data

    def sent(self) -> bytes:
        with self._lock:
            return bytes(self.received)

    def clear(self) -> None:
        with self._lock:
            self.received.clear()

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def frame(self, **values: int) -> None:
        self.send(codec.encode_frame([100], values))

    def wait_sent(self, needle: bytes, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.sent():
                return
            time.sleep(0.01)
        raise AssertionError(f"{needle!r} was never sent; got {self.sent()!r}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def scripted() -> Iterator[ScriptedRobot]:
    robot = ScriptedRobot()
    yield robot
    robot.close()


def test_handshake_bytes(scripted: ScriptedRobot) -> None:
    """Opening the link sends exactly Start, the held mode and the group 100 stream request."""
    with Robot(scripted.path, hold_mode=OIMode.FULL):
        scripted.wait_sent(bytes([128, 132, 148, 1, 100]))


def test_mode_plus_one_quirk_reads_4_as_full(scripted: ScriptedRobot) -> None:
    """With mode_plus_one a robot reporting 4 is in Full: no re-entry is sent."""
    events: list[RobotEvent] = []
    with Robot(scripted.path, hold_mode=OIMode.FULL, quirks=Quirks(mode_plus_one=True)) as robot:
        robot.add_listener(events.append)
        scripted.wait_sent(bytes([148, 1, 100]))
        scripted.clear()
        for _ in range(20):
            scripted.frame(oi_mode=4)
            time.sleep(0.005)
        state = robot.wait_for(lambda s: s.link.frames_ok >= 20, timeout=5)
        assert state.oi_mode == OIMode.FULL
        assert state.sensors["oi_mode"] == 4  # raw value kept; the quirk applies to the interpreted mode
    assert not [e for e in events if isinstance(e, ModeReentry)]
    assert bytes([132]) not in scripted.sent().split(bytes([150, 0]))[0]


def test_without_the_quirk_the_same_robot_looks_wrong(scripted: ScriptedRobot) -> None:
    """Without the quirk a mode+1 robot in Safe looks like Full and the Robot re-enters Safe."""
    with Robot(scripted.path, hold_mode=OIMode.SAFE) as robot:
        scripted.wait_sent(bytes([148, 1, 100]))
        scripted.clear()
        for _ in range(20):
            scripted.frame(oi_mode=3)  # a mode+1 robot in Safe reports 3
            time.sleep(0.005)
        state = robot.wait_for(lambda s: s.link.frames_ok >= 20, timeout=5)
        assert state.oi_mode == OIMode.FULL
        scripted.wait_sent(bytes([131]))  # the Robot believes it left Safe and re-enters it


def test_passive_drop_is_reentered_with_backoff(scripted: ScriptedRobot) -> None:
    """A robot stuck in Passive gets Safe again at a doubling pace, not once per frame."""
    events: list[RobotEvent] = []
    with Robot(scripted.path, hold_mode=OIMode.SAFE) as robot:
        robot.add_listener(events.append)
        scripted.wait_sent(bytes([148, 1, 100]))
        scripted.clear()
        for _ in range(40):  # a robot stuck in Passive (e.g. on the charger) for 0.6 s
            scripted.frame(oi_mode=1)
            time.sleep(0.015)
        robot.wait_for(lambda s: s.link.frames_ok >= 40, timeout=5)
    attempts = [e for e in events if isinstance(e, ModeReentry)]
    assert 1 <= len(attempts) <= 4  # 0.2 s, then 0.4 s: backoff, never one command per frame (40 frames)
    assert [a.attempt for a in attempts] == list(range(1, len(attempts) + 1))


def test_firmware_banner_switches_quirks_and_battery_lines_are_events(scripted: ScriptedRobot) -> None:
    """An old firmware banner switches the angle workaround on; battery lines reach listeners as events."""
    events: list[RobotEvent] = []
    with Robot(scripted.path, hold_mode=None) as robot:
        robot.add_listener(events.append)
        scripted.wait_sent(bytes([148, 1, 100]))
        scripted.send(b"Soft reset!\n\xfe")
        scripted.send(b"r3-robot/tags/release-3.4.0:5000 CLEAN\r\n")
        scripted.send(b"bat: min 1 sec 2  mV 15500  mA 900  tenths-deg-C 250  mAH 1200  state 2  mode 8\r\n")
        scripted.frame(oi_mode=1, angle=29, distance=10)
        state = robot.wait_for(lambda s: s.updated_at is not None and s.firmware is not None, timeout=5)
        assert state.firmware == "3.4.0"
        assert robot.quirks.angle_scale
        assert state.reported_angle_deg == pytest.approx(29 / 0.324056)
        assert state.battery_line is not None and state.battery_line.milliamps == 900
    assert [e.version for e in events if isinstance(e, FirmwareBanner)] == ["3.4.0"]
    assert [e.state for e in events if isinstance(e, BatteryLine)] == [2]


def test_silence_restarts_the_stream(scripted: ScriptedRobot) -> None:
    """A robot that stops streaming gets the handshake again after silence_s."""
    with Robot(scripted.path, hold_mode=None, silence_s=0.3) as robot:
        scripted.wait_sent(bytes([148, 1, 100]))
        scripted.frame(oi_mode=1)
        robot.wait_for(lambda s: s.updated_at is not None, timeout=5)
        scripted.clear()
        scripted.wait_sent(bytes([128, 148, 1, 100]), timeout=3)


def test_close_stops_wheels_and_releases_control(scripted: ScriptedRobot) -> None:
    """close() stops the wheels, pauses the stream and hands the robot back in Passive."""
    robot = Robot(scripted.path, hold_mode=OIMode.SAFE).start()
    scripted.wait_sent(bytes([148, 1, 100]))
    scripted.frame(oi_mode=2)
    robot.wait_for(lambda s: s.oi_mode == OIMode.SAFE, timeout=5)
    scripted.clear()
    robot.close()
    scripted.wait_sent(bytes([145, 0, 0, 0, 0, 150, 0, 128]))


def test_listener_sees_every_frame_in_order(scripted: ScriptedRobot) -> None:
    """Listeners get one StateUpdated per frame, in wire order, none skipped."""
    seen: list[int] = []

    def listener(event: RobotEvent) -> None:
        if isinstance(event, StateUpdated):
            seen.append(event.state.sensors["voltage"])

    with Robot(scripted.path, hold_mode=None) as robot:
        robot.add_listener(listener)
        scripted.wait_sent(bytes([148, 1, 100]))
        for v in range(1, 51):
            scripted.frame(oi_mode=1, voltage=v)
        robot.wait_for(lambda s: s.link.frames_ok >= 50, timeout=5)
    assert seen == list(range(1, 51))


class FakeModemPort:
    """A port with modem lines (like an FTDI cable): records the BRC pulses."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.lines: list[tuple[str, bool]] = []

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("rts", "dtr"):
            self.lines.append((name, value))
        object.__setattr__(self, name, value)

    def close(self) -> None:
        pass


def test_wake_pulses_brc_where_the_port_has_modem_lines() -> None:
    port = FakeModemPort()
    transport = SerialTransport("/dev/ttyUSB9", open_fn=lambda *a, **k: port, sleep=lambda s: None)
    transport.open()
    assert transport.wake() is True
    assert port.lines == [("rts", True), ("dtr", True), ("rts", False), ("dtr", False)]
    assert transport.has_modem_lines is True


def test_power_off_is_not_undone_by_the_silence_handshake(scripted: ScriptedRobot) -> None:
    with Robot(scripted.path, hold_mode=OIMode.SAFE, silence_s=0.2) as robot:
        scripted.wait_sent(bytes([148, 1, 100]))
        scripted.frame(oi_mode=2)
        robot.wait_for(lambda s: s.oi_mode == OIMode.SAFE, timeout=5)
        robot.power_off()
        scripted.wait_sent(bytes([133]))
        scripted.clear()
        time.sleep(0.8)  # four silence periods: a non-dormant Robot would have sent Start by now
        assert scripted.sent() == b""
        assert robot.state.hold_mode is None
        robot.set_mode(OIMode.FULL, wait=None)
        scripted.wait_sent(bytes([128, 132, 148, 1, 100]))


def test_a_link_that_hangs_up_at_once_is_retried_with_backoff() -> None:
    """A server that accepts and closes straight away must not make the reader spin."""
    import socket

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    accepts = 0
    robot = Robot(f"socket://127.0.0.1:{server.getsockname()[1]}", hold_mode=None).start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepts += 1
            conn.close()
    finally:
        robot.close()
        server.close()
    assert 2 <= accepts <= 30  # backoff 0.05 s doubling to 2 s: a handful, not thousands
    assert robot.state.link.reconnects >= accepts - 1


def test_an_impossible_mode_warns_once_with_the_fix(scripted: ScriptedRobot) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs, Robot(scripted.path, hold_mode=None) as robot:
        scripted.wait_sent(bytes([148, 1, 100]))
        for _ in range(5):
            scripted.frame(oi_mode=4)
        state = robot.wait_for(lambda s: s.link.frames_ok >= 5, timeout=5)
        assert state.oi_mode is None and state.sensors["oi_mode"] == 4
    warnings = [entry for entry in logs if entry["event"] == "oi.mode.unknown"]
    assert len(warnings) == 1 and "mode_plus_one" in warnings[0]["hint"]


def test_a_phantom_encoder_jump_does_not_move_the_pose(scripted: ScriptedRobot) -> None:
    """An 8-bit checksum passes 1 corrupted frame in 256: its encoder counts must not teleport the robot."""
    with Robot(scripted.path, hold_mode=None) as robot:
        scripted.wait_sent(bytes([148, 1, 100]))
        counts = [0, 5, 10, 15, 20, 25]
        for c in counts[:3]:
            scripted.frame(oi_mode=1, left_encoder_counts=c, right_encoder_counts=c, distance=2)
            time.sleep(0.015)
        scripted.frame(oi_mode=1, left_encoder_counts=-30_000, right_encoder_counts=12, distance=-31_000)
        time.sleep(0.015)
        for c in counts[3:]:
            scripted.frame(oi_mode=1, left_encoder_counts=c, right_encoder_counts=c, distance=2)
            time.sleep(0.015)
        state = robot.wait_for(lambda s: s.link.frames_ok >= 7, timeout=5)
    mm_per_count = robot.model.mm_per_count
    assert state.pose.distance_mm == pytest.approx(25 * mm_per_count)
    assert state.pose.x_mm == pytest.approx(25 * mm_per_count) and state.pose.y_mm == pytest.approx(
        0, abs=1e-6
    )
    assert state.reported_distance_mm == pytest.approx(12)
