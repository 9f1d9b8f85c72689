"""The Robot driving the real simulator over a real pty and over TCP: motion, docking, safety drops and mode
re-entry, unplug/replug recovery, line noise, and the probe command."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import serial
from serial import rfc2217

from hal.codec import ChargingSources, CorruptFrame
from hal.errors import CommandRangeError, ModeError, NoResponseError
from hal.opcodes import OIMode
from hal.probe import main as probe_main
from hal.robot import (
    LinkDown,
    LinkUp,
    ModeChanged,
    ModeReentry,
    Robot,
    RobotEvent,
    RobotState,
    StateUpdated,
)
from hal.sim.server import SimServer

pytestmark = pytest.mark.timeout(60)

E = TypeVar("E")


@pytest.fixture(params=["pty", "tcp"])
def hal_sim(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SimServer]:
    """A simulator served in-process on a fresh pty symlink or on a free TCP port on 127.0.0.1."""
    record = tmp_path / "record.jsonl"
    server = (
        SimServer(link=tmp_path / "robot", record=record)
        if request.param == "pty"
        else SimServer(tcp=("127.0.0.1", 0), record=record)
    )
    with server:
        yield server


class Recorder:
    def __init__(self) -> None:
        self.events: list[RobotEvent] = []
        self._lock = threading.Lock()

    def __call__(self, event: RobotEvent) -> None:
        if not isinstance(event, StateUpdated):
            with self._lock:
                self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        with self._lock:
            return [e for e in self.events if isinstance(e, kind)]

    def wait(self, kind: type[E], timeout: float = 5.0, count: int = 1) -> list[E]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.of(kind)
            if len(found) >= count:
                return found
            time.sleep(0.01)
        raise AssertionError(f"no {kind.__name__} event within {timeout} s; saw {self.events}")


def wait_until_still(robot: Robot, frames: int = 4, timeout: float = 5.0) -> RobotState:
    """The state once the wheels have stopped: ``frames`` frames in a row with the same encoder counts.

    (Drive sets packet 39, not 41/42, so the requested wheel velocities cannot tell that a stop arrived; at
    200 mm/s the encoders move about 6 counts per 15 ms frame.)
    """
    seen: list[tuple[int | None, int | None]] = []
    still: list[RobotState] = []
    done = threading.Event()

    def listener(event: RobotEvent) -> None:
        if isinstance(event, StateUpdated) and not done.is_set():
            sensors = event.state.sensors
            seen.append((sensors.get("left_encoder_counts"), sensors.get("right_encoder_counts")))
            if len(seen) >= frames and len(set(seen[-frames:])) == 1 and seen[-1][0] is not None:
                still.append(event.state)
                done.set()

    remove = robot.add_listener(listener)
    try:
        assert done.wait(timeout), f"the wheels did not stop within {timeout} s: {seen[-8:]}"
    finally:
        remove()
    return still[0]


def recorded(server: SimServer) -> list[dict[str, Any]]:
    """The commands the simulator received, as its --record file has them (read in the loop's thread)."""
    server.control({"op": "state"})  # flushes pending command events to the record file
    assert server.record_path is not None
    return [json.loads(line) for line in server.record_path.read_text().splitlines()]


def test_drive_one_second_at_200_mm_s(hal_sim: SimServer) -> None:
    """One second at 200 mm/s: encoder odometry and the robot's Distance both say about 200 mm."""
    with Robot(hal_sim.url, hold_mode=OIMode.SAFE) as robot:
        robot.wait_for(lambda s: s.oi_mode == OIMode.SAFE, timeout=5)
        start = robot.state
        robot.drive(200)
        time.sleep(1.0)
        robot.stop()
        end = wait_until_still(robot)
    encoder_mm = end.pose.distance_mm - start.pose.distance_mm
    reported_mm = end.reported_distance_mm - start.reported_distance_mm
    # How long the wheels really turned is when the robot got Drive and the stop, not how long this thread
    # slept (a loaded machine oversleeps): the simulator's record has both arrival times.
    commands = recorded(hal_sim)
    drive_at = next(float(c["t"]) for c in commands if c["name"] == "Drive")
    stop_at = next(
        float(c["t"])
        for c in commands
        if c["name"] == "Drive Direct" and c["args"] == [0, 0, 0, 0] and float(c["t"]) > drive_at
    )
    expected_mm = 200.0 * (stop_at - drive_at)
    assert 180 <= expected_mm <= 320, expected_mm  # about one second at 200 mm/s
    assert encoder_mm == pytest.approx(expected_mm, abs=10)
    assert reported_mm == pytest.approx(expected_mm, abs=10)
    assert abs(end.pose.x_mm - start.pose.x_mm - encoder_mm) < 5
    assert abs(end.pose.heading_deg) < 2
    assert end.link.frames_corrupt == 0 and end.link.frames_ok > 50
    assert end.link.frames_per_s > 30


def test_dock_changes_charging_state_and_sources(hal_sim: SimServer) -> None:
    """Docking shows in the sensors: the home base source and a charging state."""
    with Robot(hal_sim.url, hold_mode=OIMode.PASSIVE) as robot:
        robot.wait_for(lambda s: s.oi_mode == OIMode.PASSIVE, timeout=5)
        assert robot.state.sensors["charging_sources"] == 0
        hal_sim.control({"op": "dock"})
        state = robot.wait_for(
            lambda s: (
                bool(s.sensors["charging_sources"] & ChargingSources.HOME_BASE)
                and s.sensors["charging_state"] != 0
            ),
            timeout=5,
            what="docked and charging",
        )
    assert state.sensors["charging_state"] in (1, 2, 3, 4)
    assert state.sensors["current"] > 0


def test_cliff_in_safe_drops_to_passive_and_robot_restores_safe(hal_sim: SimServer) -> None:
    recorder = Recorder()
    with Robot(hal_sim.url, hold_mode=OIMode.SAFE) as robot:
        robot.add_listener(recorder)
        robot.wait_for(lambda s: s.oi_mode == OIMode.SAFE, timeout=5)
        robot.drive(100)
        time.sleep(0.1)
        hal_sim.control({"op": "cliff", "on": True})
        recorder.wait(ModeReentry)
        drops = [e for e in recorder.of(ModeChanged) if e.new == OIMode.PASSIVE]
        assert drops and drops[0].old == OIMode.SAFE
        restored = robot.wait_for(lambda s: s.oi_mode == OIMode.SAFE, timeout=5)
        assert restored.hold_mode == OIMode.SAFE
        hal_sim.control({"op": "cliff", "on": False})
        reentry = recorder.of(ModeReentry)[0]
        assert reentry.mode == OIMode.SAFE and reentry.observed == OIMode.PASSIVE


def test_unplug_and_replug_recovers_state_and_stream(hal_sim: SimServer) -> None:
    recorder = Recorder()
    with Robot(hal_sim.url, hold_mode=OIMode.FULL) as robot:
        robot.add_listener(recorder)
        robot.wait_for(lambda s: s.oi_mode == OIMode.FULL, timeout=5)
        robot.drive(200)
        time.sleep(0.3)
        robot.stop()
        before = wait_until_still(robot)
        assert before.pose.distance_mm > 20
        hal_sim.unplug(0.5)
        recorder.wait(LinkDown)
        assert not robot.state.link.connected
        robot.wait_for(lambda s: s.link.reconnects == 1 and s.link.connected, timeout=10, what="a reconnect")
        assert any(e.reconnects == 1 for e in recorder.of(LinkUp))
        ok_at_reconnect = robot.state.link.frames_ok
        after = robot.wait_for(
            lambda s: s.link.frames_ok > ok_at_reconnect + 5 and s.oi_mode == OIMode.FULL,
            timeout=5,
            what="the stream and FULL mode back after the replug",
        )
    assert after.link.reconnects == 1 and after.link.connected
    assert after.pose.distance_mm == pytest.approx(before.pose.distance_mm, abs=5)


def test_noisy_line_counts_corrupt_frames_and_keeps_going(hal_sim: SimServer) -> None:
    recorder = Recorder()
    with Robot(hal_sim.url, hold_mode=OIMode.PASSIVE) as robot:
        robot.add_listener(recorder)
        robot.wait_for(lambda s: s.link.frames_ok > 3, timeout=5)
        hal_sim.control({"op": "noise", "corrupt": 0.01, "drop": 0.0})
        state = robot.wait_for(lambda s: s.link.frames_corrupt >= 3, timeout=10, what="corrupt frames")
        good = state.link.frames_ok
        state = robot.wait_for(lambda s: s.link.frames_ok > good + 10, timeout=5)
        hal_sim.control({"op": "noise", "corrupt": 0.0, "drop": 0.0})
    assert recorder.of(CorruptFrame)
    assert state.link.frames_corrupt >= 3


def test_refused_commands_send_nothing(hal_sim: SimServer) -> None:
    """A command the mode would ignore, or out of range, raises and sends nothing; the link stays aligned."""
    with Robot(hal_sim.url, hold_mode=OIMode.PASSIVE) as robot:
        robot.wait_for(lambda s: s.oi_mode == OIMode.PASSIVE, timeout=5)
        with pytest.raises(ModeError, match="set_mode"):
            robot.drive(100)
        robot.set_mode(OIMode.SAFE)
        with pytest.raises(CommandRangeError, match="velocity"):
            robot.drive(900)
        robot.set_leds(dock=True, power_intensity=255)
        robot.set_digit_leds_ascii("OK")
        robot.define_song(0, [(60, 16), (64, 16)])
        robot.play_song(0)
        robot.set_schedule({"wed": (9, 30)})
        robot.set_clock(3, 12, 0)
        time.sleep(0.2)
        state = robot.state
        assert state.sensors["requested_velocity"] == 0
        assert state.oi_mode == OIMode.SAFE
        assert hal_sim.robot.state()["oi_mode"] == "safe"
    names = [c["name"] for c in recorded(hal_sim)]
    assert "Drive" not in names  # neither the Passive drive nor the 900 mm/s one reached the robot
    for sent in ("LEDs", "Digit LEDs ASCII", "Song", "Play", "Schedule", "Set Day/Time"):
        assert sent in names


def test_passive_actions_release_the_hold(hal_sim: SimServer) -> None:
    """Clean and Seek Dock hand the robot to its firmware: the Robot stops holding Safe."""
    with Robot(hal_sim.url, hold_mode=OIMode.SAFE) as robot:
        robot.wait_for(lambda s: s.oi_mode == OIMode.SAFE, timeout=5)
        robot.clean()
        state = robot.wait_for(lambda s: s.oi_mode == OIMode.PASSIVE, timeout=5)
        assert state.hold_mode is None
        time.sleep(0.5)
        assert robot.state.oi_mode == OIMode.PASSIVE
        robot.seek_dock()
        robot.set_mode(OIMode.FULL)
        assert robot.state.hold_mode == OIMode.FULL


def test_listener_errors_do_not_stop_the_reader(hal_sim: SimServer) -> None:
    def broken(event: RobotEvent) -> None:
        raise RuntimeError("listener bug")

    with Robot(hal_sim.url, hold_mode=None) as robot:
        robot.add_listener(broken)
        robot.wait_for(lambda s: s.link.frames_ok > 10, timeout=5)


def test_no_robot_is_a_clear_error(tmp_path: Path) -> None:
    """start(wait=...) on a port that does not exist fails with the reason, not a silent hang."""
    robot = Robot(str(tmp_path / "nothing-here"), hold_mode=None)
    with pytest.raises(NoResponseError, match="cannot open"):
        robot.start(wait=0.5)
    robot.close()


def test_probe_once_json_in_process(hal_sim: SimServer) -> None:
    """roomba-agent probe --once --json prints one sample with decoded sensors and link health."""
    out = io.StringIO()
    assert probe_main(["--port", hal_sim.url, "--once", "--json"], out=out) == 0
    (line,) = out.getvalue().splitlines()
    sample = json.loads(line)
    assert sample["oi_mode"] == "PASSIVE"
    assert sample["sensors"]["voltage"] > 10_000
    assert sample["link"]["frames_ok"] >= 1 and sample["link"]["frames_corrupt"] == 0
    assert sample["decoded"]["charging_state"] == "NOT_CHARGING"


def test_probe_text_view(hal_sim: SimServer) -> None:
    """The probe's text view repeats --count times with battery and frame rate."""
    out = io.StringIO()
    assert probe_main(["--port", hal_sim.url, "--count", "2", "--interval", "0.05"], out=out) == 0
    text = out.getvalue()
    assert text.count("roomba-agent probe") == 2 and "Battery Charge" in text and "frames/s" in text


def test_probe_bad_quirk_is_usage_error(hal_sim: SimServer) -> None:
    """An unknown --quirk is a usage error (exit 2), before any robot is driven."""
    assert probe_main(["--port", hal_sim.url, "--once", "--quirk", "nonsense=on"]) == 2


def _free_port_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("roomba-sim ready"):
            fields = dict(part.split("=", 1) for part in line.split()[2:])
            return fields["url"]
        if not line and proc.poll() is not None:
            break
    raise AssertionError("roomba-sim did not print its ready line")


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@pytest.mark.parametrize("where", ["tcp", "link"])
def test_probe_cli_against_sim_cli(where: str, tmp_path: Path) -> None:
    """The real commands end to end: `roomba-sim robot` in one process, `roomba-agent probe` in another."""
    where_args = ["--tcp", "127.0.0.1:0"] if where == "tcp" else ["--link", str(tmp_path / "robot")]
    env = {**os.environ, "ROOMBA_LOG_LEVEL": "warning"}
    sim = subprocess.Popen(
        [_bin("roomba-sim"), "robot", *where_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        url = _free_port_url(sim)
        probe = subprocess.run(
            [_bin("roomba-agent"), "probe", "--port", url, "--once", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert probe.returncode == 0, probe.stderr
        sample = json.loads(probe.stdout)
        assert sample["oi_mode"] == "PASSIVE" and sample["link"]["connected"] is True
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        if sim.stdout is not None:
            sim.stdout.close()


def test_probe_cli_no_robot(tmp_path: Path) -> None:
    """The probe command without a robot exits 1, saying it got no answer and why."""
    probe = subprocess.run(
        [_bin("roomba-agent"), "probe", "--port", str(tmp_path / "absent"), "--once", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "ROOMBA_LOG_LEVEL": "error"},
    )
    assert probe.returncode == 1
    assert "no answer from the robot" in probe.stderr and "cannot open" in probe.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["--interval", "-1"], "--interval", id="interval_negative"),
        pytest.param(["--interval", "nan"], "--interval", id="interval_nan"),
        pytest.param(["--count", "-3"], "--count", id="count_negative"),
        pytest.param(["--count", "2.5"], "whole number", id="count_fraction"),
        pytest.param(["--timeout", "0"], "--timeout", id="timeout_zero"),
        pytest.param(["--model", "dalek"], "--model", id="model"),
        pytest.param(["--mode", "turbo"], "--mode", id="mode"),
    ],
)
def test_probe_bad_arguments_are_usage_errors(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        probe_main(["--port", "/dev/null", *args])
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


class _PtyWithoutModemLines(serial.Serial):
    """The pty end of the bridge: a pty has no RTS/DTR (ENOTTY), so the bridge accepts and ignores them."""

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return False

    @property
    def dsr(self) -> bool:
        return False

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return False


class Rfc2217Bridge:
    """A minimal RFC 2217 server (like pyserial's rfc2217_server.py) in front of the simulator's pty."""

    def __init__(self, device: str) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.url = f"rfc2217://127.0.0.1:{self.listener.getsockname()[1]}"
        self.device = device
        self._alive = threading.Event()
        self._alive.set()
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        port = _PtyWithoutModemLines(self.device, 115200, timeout=0.05)
        manager = rfc2217.PortManager(port, _Sender(conn))
        reader = threading.Thread(target=self._to_client, args=(port, conn, manager), daemon=True)
        reader.start()
        self._threads.append(reader)
        try:
            conn.settimeout(0.1)
            while self._alive.is_set():
                try:
                    data = conn.recv(1024)
                except TimeoutError:
                    continue
                if not data:
                    break
                port.write(b"".join(manager.filter(data)))
        finally:
            self._alive.clear()
            reader.join(timeout=5)
            port.close()
            conn.close()

    def _to_client(self, port: serial.Serial, conn: socket.socket, manager: rfc2217.PortManager) -> None:
        while self._alive.is_set():
            data = port.read(port.in_waiting or 1)
            if data:
                with contextlib.suppress(OSError):
                    conn.sendall(b"".join(manager.escape(data)))

    def close(self) -> None:
        self._alive.clear()
        self.listener.close()
        for thread in self._threads:
            thread.join(timeout=5)


class _Sender:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)


@pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")
def test_robot_over_rfc2217(sim_pty: SimServer) -> None:
    """The transport opens rfc2217:// URLs (a serial port shared over the network) like any other."""
    bridge = Rfc2217Bridge(sim_pty.url)
    try:
        with Robot(bridge.url, hold_mode=OIMode.SAFE) as robot:
            state = robot.wait_for(
                lambda s: s.oi_mode == OIMode.SAFE and s.link.frames_ok > 5,
                timeout=10,
                what="SAFE over rfc2217",
            )
            assert state.link.frames_corrupt == 0 and state.sensors["voltage"] > 10_000
    finally:
        bridge.close()
    assert sim_pty.robot.mode is OIMode.PASSIVE  # close() handed the robot back
