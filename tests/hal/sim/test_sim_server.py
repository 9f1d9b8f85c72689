"""The simulator served on a real pty and real TCP, driven by a plain pyserial client; control socket; CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import serial

from base.testing import wait_until
from hal.opcodes import OIMode, Op
from hal.sim.cli import main as cli_main
from hal.sim.server import SimServer, send_control


def read_frames(port: serial.Serial, count: int) -> list[bytes]:
    """Read ``count`` stream frames, syncing on the header and checking each checksum.

    Joining a stream mid-frame can sync on a data byte that happens to be 19 once; more than two bad
    frames means the stream itself is broken.
    """
    frames: list[bytes] = []
    bad = 0
    while len(frames) < count:
        head = port.read(1)
        assert head, "stream stopped"
        if head != b"\x13":
            continue
        n = port.read(1)
        body = port.read(n[0] + 1)
        frame = head + n + body
        if sum(frame) & 0xFF:
            bad += 1
            assert bad <= 2, frame.hex()
            continue
        frames.append(frame)
    return frames


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    wait_until(predicate, timeout, "the condition", interval=0.02)


def test_pty_link_with_a_plain_pyserial_client(sim_pty: SimServer) -> None:
    """A plain pyserial client drives the simulator through its pty symlink and reads sensors back."""
    link = Path(sim_pty.url)
    assert link.is_symlink() and os.readlink(link).startswith("/dev/pts/")
    with serial.Serial(sim_pty.url, 115200, timeout=1) as port:
        port.write(bytes([Op.START, Op.SAFE, Op.SENSORS, 35]))
        assert port.read(1) == bytes([OIMode.SAFE])
        port.write(bytes([Op.DRIVE, 0, 200, 0x80, 0x00]))
        time.sleep(0.5)
        port.write(bytes([Op.DRIVE, 0, 0, 0x80, 0x00, Op.QUERY_LIST, 2, 19, 43]))
        distance, left = struct.unpack(">hh", port.read(4))
        assert 60 < distance < 200 and left > 100
        port.write(bytes([Op.STREAM, 2, 100, 35]))
        port.reset_input_buffer()
        started = time.monotonic()
        frames = read_frames(port, 20)
        elapsed = time.monotonic() - started
        port.write(bytes([Op.PAUSE_RESUME_STREAM, 0]))
    assert all(len(f) == 86 and f[2] == 100 and f[-2] == OIMode.SAFE for f in frames)
    # Paced like a real 115200-baud line and a 15 ms stream: 20 frames cannot arrive faster than 19 periods.
    assert elapsed >= 19 * 0.015 - 0.01
    assert sim_pty.world.y > 750


def test_pty_bytes_are_paced_no_faster_than_the_line(sim_pty: SimServer) -> None:
    with serial.Serial(sim_pty.url, 115200, timeout=2) as port:
        port.write(bytes([Op.START]) + bytes([Op.SENSORS, 100]) * 40)
        started = time.monotonic()
        data = port.read(3200)
        elapsed = time.monotonic() - started
    assert len(data) == 3200
    assert elapsed >= 3200 / 11520 - 0.01


def test_tcp_link_with_pyserial_and_a_new_client_replaces_the_old(sim_tcp: SimServer) -> None:
    assert sim_tcp.url.startswith("socket://127.0.0.1:")
    first = serial.serial_for_url(sim_tcp.url, timeout=1)
    first.write(bytes([Op.START, Op.FULL, Op.SENSORS, 35]))
    assert first.read(1) == bytes([OIMode.FULL])
    second = serial.serial_for_url(sim_tcp.url, timeout=1)
    second.write(bytes([Op.SENSORS, 35]))
    assert second.read(1) == bytes([OIMode.FULL])
    with pytest.raises(serial.SerialException):
        for _ in range(50):
            first.write(b"\x8e\x23")
            first.read(1)
            time.sleep(0.01)
    _close(first)
    second.write(bytes([Op.STREAM, 1, 7]))
    assert len(read_frames(second, 5)) == 5
    _close(second)


def test_control_socket_answers_one_json_line_per_request(sim_pty: SimServer) -> None:
    """The control socket answers each JSON request with one JSON line, errors included."""
    path = sim_pty.control_path
    assert path is not None
    state = send_control(path, {"op": "state"})
    assert state["ok"] and state["oi_mode"] == "off" and state["link"]["url"] == sim_pty.url
    assert send_control(path, {"op": "battery", "percent": 5}) == {"ok": True, "percent": 5.0, "fault": False}
    bad = send_control(path, {"op": "teleport"})
    assert not bad["ok"] and "unknown op" in bad["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        sock.sendall(b'not json\n{"op": "dock"}\n["op"]\n')
        answers = []
        buf = b""
        while buf.count(b"\n") < 3:
            buf += sock.recv(4096)
        answers = [json.loads(line) for line in buf.splitlines()]
    assert not answers[0]["ok"] and "JSON" in answers[0]["error"]
    assert answers[1] == {"ok": True, "docked": True}
    assert not answers[2]["ok"]
    assert sim_pty.world.docked


def test_control_faults_reach_the_client(sim_pty: SimServer) -> None:
    """A cliff set through the control socket drops the client's robot to Passive."""
    with serial.Serial(sim_pty.url, 115200, timeout=1) as port:
        port.write(bytes([Op.START, Op.SAFE]))
        port.write(bytes([Op.DRIVE_DIRECT, 0, 100, 0, 100]))
        time.sleep(0.1)
        assert sim_pty.control({"op": "cliff", "on": True})["ok"]
        port.write(bytes([Op.QUERY_LIST, 2, 35, 10]))
        assert port.read(2) == bytes([OIMode.PASSIVE, 1])
        sim_pty.control({"op": "cliff", "on": False})
        sim_pty.control({"op": "bump", "side": "left", "seconds": 1})
        port.write(bytes([Op.SENSORS, 7]))
        assert port.read(1) == b"\x02"
        sim_pty.control({"op": "button", "name": "clean"})
        port.write(bytes([Op.SENSORS, 18]))
        assert port.read(1) == b"\x01"
        assert sim_pty.control({"op": "state"})["mission"] == "clean"


def test_unplug_closes_the_pty_and_it_comes_back(sim_pty: SimServer) -> None:
    path = sim_pty.control_path
    assert path is not None
    port = serial.Serial(sim_pty.url, 115200, timeout=0.5)
    port.write(bytes([Op.START, Op.STREAM, 1, 35]))
    assert len(read_frames(port, 3)) == 3
    answer = send_control(path, {"op": "unplug", "seconds": 0.6})
    assert answer == {"ok": True, "unplugged": True, "seconds": 0.6}
    assert not Path(sim_pty.url).exists()
    with pytest.raises(serial.SerialException):
        for _ in range(20):
            port.read(100)
    port.close()
    assert send_control(path, {"op": "state"})["link"]["unplugged"]
    wait_for(lambda: Path(sim_pty.url).exists())
    with serial.Serial(sim_pty.url, 115200, timeout=1) as again:
        assert len(read_frames(again, 3)) == 3  # the robot kept streaming while unplugged


def test_unplug_drops_tcp_and_refuses_until_it_comes_back(sim_tcp: SimServer) -> None:
    client = serial.serial_for_url(sim_tcp.url, timeout=0.5)
    client.write(bytes([Op.START, Op.SENSORS, 35]))
    assert client.read(1) == b"\x01"
    sim_tcp.control({"op": "unplug", "seconds": 1.5})
    with pytest.raises(serial.SerialException, match="disconnected"):
        client.read(1)
    _close(client)
    with pytest.raises(serial.SerialException):
        serial.serial_for_url(sim_tcp.url, timeout=0.5)
    deadline = time.monotonic() + 5
    while True:
        try:
            again = serial.serial_for_url(sim_tcp.url, timeout=1)
            break
        except serial.SerialException:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    again.write(bytes([Op.SENSORS, 35]))
    assert again.read(1) == b"\x01"
    _close(again)


def test_record_file_has_one_json_line_per_complete_command(sim_pty: SimServer, short_tmp: Path) -> None:
    with serial.Serial(sim_pty.url, 115200, timeout=1) as port:
        port.write(bytes([Op.START, Op.DRIVE, 0, 100]))
        time.sleep(0.05)
        port.write(bytes([0x80, 0x00, Op.SAFE, Op.SENSORS, 7]))
        port.read(1)
    sim_pty.control({"op": "state"})
    lines = [json.loads(line) for line in (short_tmp / "record.jsonl").read_text().splitlines()]
    assert [(e["opcode"], e["name"], e["args"]) for e in lines] == [
        (128, "Start", []),
        (137, "Drive", [0, 100, 128, 0]),
        (131, "Safe", []),
        (142, "Sensors", [7]),
    ]
    assert lines[1]["ignored"] == "not allowed in PASSIVE"
    assert all(abs(e["t"] - time.time()) < 60 for e in lines)


def test_link_path_that_is_a_regular_file_is_refused(short_tmp: Path) -> None:
    target = short_tmp / "not-a-link"
    target.write_text("keep me")
    server = SimServer(link=target)
    with pytest.raises(FileExistsError, match="not a symlink"):
        server.open()
    server.close()
    assert target.read_text() == "keep me"


def _start_cli(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hal.sim.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "ROOMBA_LOG_FORMAT": "json"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _close(port: serial.SerialBase) -> None:
    """pyserial's socket:// close() skips closing the socket once the peer has hung up: close it too."""
    sock = getattr(port, "_socket", None)
    port.close()
    if sock is not None:
        sock.close()


def test_cli_serves_a_pty_answers_ctl_and_exits_cleanly_on_sigterm(short_tmp: Path) -> None:
    link, ctl, record = short_tmp / "tty", short_tmp / "ctl", short_tmp / "rec.jsonl"
    proc, ready = _start_cli(
        [
            "robot",
            "--link",
            str(link),
            "--control",
            str(ctl),
            "--record",
            str(record),
            "--seed",
            "3",
            "--speed",
            "5",
        ]
    )
    try:
        assert ready.startswith("roomba-sim ready url=" + str(link)), ready
        assert "pty=/dev/pts/" in ready and f"control={ctl}" in ready
        with serial.Serial(str(link), 115200, timeout=1) as port:
            port.write(bytes([Op.START, Op.SENSORS, 35]))
            assert port.read(1) == b"\x01"
        out = subprocess.run(
            [sys.executable, "-m", "hal.sim.cli", "ctl", str(ctl), '{"op": "state"}'],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        )
        assert json.loads(out.stdout)["oi_mode"] == "passive"
        bad = subprocess.run(
            [sys.executable, "-m", "hal.sim.cli", "ctl", str(ctl), '{"op": "nope"}'],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert bad.returncode == 1 and "unknown op" in bad.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        _stop(proc)
    assert not link.exists() and not link.is_symlink()
    assert not ctl.exists()
    assert json.loads(record.read_text().splitlines()[0])["name"] == "Start"


def test_cli_tcp_on_a_free_port_prints_the_url_and_stops_on_sigint(short_tmp: Path) -> None:
    proc, ready = _start_cli(["robot", "--tcp", "127.0.0.1:0"])
    try:
        url = dict(part.split("=", 1) for part in ready.split()[2:])["url"]
        with serial.serial_for_url(url, timeout=1) as port:
            port.write(bytes([Op.START, Op.SENSORS, 35]))
            assert port.read(1) == b"\x01"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        _stop(proc)


def test_cli_rejects_bad_arguments() -> None:
    """roomba-sim robot --tcp with no HOST:PORT is a usage error (exit 2)."""
    result = subprocess.run(
        [sys.executable, "-m", "hal.sim.cli", "robot", "--tcp", "nonsense"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


@pytest.mark.parametrize(
    ("request_line", "fragment"),
    [
        pytest.param(
            b'{"op": "bump", "seconds": "long"}', '"seconds" must be a number', id="bump_seconds_text"
        ),
        pytest.param(
            b'{"op": "bump", "seconds": null}', '"seconds" must be a number', id="bump_seconds_null"
        ),
        pytest.param(b'{"op": "bump", "side": "top"}', "left, right or both", id="bump_side"),
        pytest.param(
            b'{"op": "battery", "fault": "yes"}', '"fault" must be true or false', id="battery_fault"
        ),
        pytest.param(b'{"op": "pose", "x": 1e999}', '"x" must be between', id="pose_infinite"),
        pytest.param(b'{"op": "noise", "corrupt": -0.5}', '"corrupt" must be between', id="noise_negative"),
        pytest.param(b'{"op": "unplug", "seconds": -1}', '"seconds" must be a number', id="unplug_negative"),
        pytest.param(b'{"op": ["state"]}', "unknown op", id="op_not_a_string"),
        pytest.param(b"\xff\xfe", "not a JSON object", id="not_utf8"),
        pytest.param(b"42", "send a JSON object", id="not_an_object"),
    ],
)
def test_bad_control_requests_get_a_reason_and_the_loop_keeps_serving(
    sim_pty: SimServer, request_line: bytes, fragment: str
) -> None:
    path = sim_pty.control_path
    assert path is not None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(request_line + b'\n{"op": "state"}\n')
        buf = b""
        while buf.count(b"\n") < 2:
            chunk = sock.recv(65536)
            assert chunk, "the simulator hung up instead of answering"
            buf += chunk
    bad, state = (json.loads(line) for line in buf.splitlines())
    assert bad["ok"] is False and fragment in bad["error"], bad
    assert state["ok"] is True and state["oi_mode"] == "off"


def test_a_failing_control_op_is_answered_not_swallowed(
    sim_pty: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: object, now: float) -> dict[str, object]:
        raise RuntimeError("bug in an op")

    monkeypatch.setattr(sim_pty.robot, "control", broken)
    path = sim_pty.control_path
    assert path is not None
    answer = send_control(path, {"op": "dock"})
    assert answer["ok"] is False and "RuntimeError: bug in an op" in answer["error"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        pytest.param(["robot", "--link", "/tmp/x", "--speed", "nan"], "--speed", id="speed_nan"),
        pytest.param(["robot", "--link", "/tmp/x", "--speed", "0"], "--speed", id="speed_zero"),
        pytest.param(["robot", "--link", "/tmp/x", "--speed", "1e9"], "at most", id="speed_huge"),
        pytest.param(["robot", "--link", "/tmp/x", "--seed", "one"], "--seed", id="seed_text"),
        pytest.param(["robot", "--link", "/tmp/x", "--firmware", "latest"], "3.7.1", id="firmware"),
        pytest.param(["robot", "--link", "/tmp/x", "--quirk", "warp"], "--quirk", id="quirk"),
        pytest.param(["robot", "--link", "/tmp/x", "--tcp", "127.0.0.1:0"], "not allowed", id="both_links"),
        pytest.param(["robot"], "--link", id="no_link"),
        pytest.param(["ctl", "/tmp/x.ctl", "{}", "--timeout", "-1"], "--timeout", id="ctl_timeout"),
        pytest.param([], "COMMAND", id="no_command"),
    ],
)
def test_cli_bad_arguments_are_usage_errors(
    args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(args)  # argparse rejects these before anything is configured or opened
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.startswith("roomba-sim: error: ") and len(err.splitlines()) == 1, err


def test_cli_start_failure_leaves_no_link_behind(short_tmp: Path) -> None:
    link = short_tmp / "tty"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hal.sim.cli",
            "robot",
            "--link",
            str(link),
            "--control",
            str(short_tmp / "missing-dir" / "ctl"),
        ],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, "ROOMBA_LOG_LEVEL": "error"},
    )
    assert result.returncode == 2 and "cannot start" in result.stderr and "Traceback" not in result.stderr
    assert not link.exists() and not link.is_symlink()


def test_ctl_without_a_simulator_says_what_to_run(short_tmp: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hal.sim.cli", "ctl", str(short_tmp / "absent.ctl"), '{"op": "state"}'],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 1 and "roomba-sim robot --control" in result.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "hal.sim.cli", "ctl", str(short_tmp / "absent.ctl"), "{nope"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 2 and "not JSON" in bad.stderr
