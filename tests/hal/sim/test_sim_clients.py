"""Third-party OI clients from PyPI, unchanged, drive the simulator over a real pty.

If these work against the simulator's port, the simulator speaks the Open Interface the way real Create 2
clients expect (timing of replies, the reset banner, stream framing, raw pty). They are dev-only
dependencies (pyproject ``dev`` extra).
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path

import pycreate2
import pytest
import yarc
from pyroombaadapter import PyRoombaAdapter

from hal.opcodes import OIMode
from hal.sim.server import SimServer


def recorded(short_tmp: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (short_tmp / "record.jsonl").read_text().splitlines()]


def test_pycreate2_starts_drives_and_reads_all_sensors(
    sim_pty: SimServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pycreate2, unchanged, drives the simulator and decodes every sensor it asks for."""
    bot = pycreate2.Create2(sim_pty.url)
    bot.sleep_timer = 0.05
    bot.start()
    bot.full()
    bot.drive_direct(200, 200)
    time.sleep(1.0)
    bot.drive_direct(0, 0)
    sensors = bot.get_sensors()  # Sensors (142) of group 100: exactly 80 bytes
    assert sensors.open_interface_mode == OIMode.FULL
    assert 150 < sensors.distance < 300
    assert sensors.encoder_counts_left == sensors.encoder_counts_right
    assert 150 < sensors.encoder_counts_left * math.pi * 72.0 / 508.8 < 300
    assert sensors.battery_capacity == 2696 and 13000 < sensors.voltage < 17500
    assert 850 < sim_pty.world.y < 1000
    original_del = pycreate2.Create2.__del__
    original_del(bot)  # pycreate2's own shutdown: stop the wheels, clear LEDs, Stop (173)
    monkeypatch.setattr(pycreate2.Create2, "__del__", lambda self: None)
    del bot
    gc.collect()
    assert sim_pty.robot.mode is OIMode.OFF
    names = [e["name"] for e in recorded(short_tmp)]
    assert names[:2] == ["Start", "Full"] and names[-1] == "Stop"
    assert "Song" in names and "Play" in names


def test_pyroombaadapter_safe_mode_sensors_and_stream(
    sim_pty: SimServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyRoombaAdapter, unchanged, enters Safe, drives, and reads sensors and a stream."""
    monkeypatch.setattr(PyRoombaAdapter, "__del__", lambda self: self.serial_con.close())
    adapter = PyRoombaAdapter(sim_pty.url)  # sends Start + Safe, then waits 1 s
    assert adapter.request_oi_mode() == OIMode.SAFE
    adapter.send_drive_direct(100, 100)
    time.sleep(0.5)
    adapter.send_drive_direct(0, 0)
    left, right = adapter.request_encoder_counts()
    assert left == right and 30 < left * math.pi * 72.0 / 508.8 < 100
    adapter.data_stream_start(["OI Mode", "Voltage", "Left Encoder Counts"])
    frames = [adapter.data_stream_read() for _ in range(5)]
    adapter.data_stream_stop()
    assert all(f[0] == OIMode.SAFE and f[2] == left for f in frames)
    assert sim_pty.world.y > 740
    del adapter
    gc.collect()


def test_pyroombaadapter_straight_move_is_a_client_bug_the_sim_exposes(
    sim_pty: SimServer, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PyRoombaAdapter 0.3.0 clamps its "straight" radius 32768 to +2000 before encoding it.

    So ``move(0.2, 0)`` sends ``137 0 200 7 208`` (a 2 m left arc) instead of ``137 0 200 128 0``: the robot
    veers left. The simulator follows the spec, so the heading changes.
    """
    monkeypatch.setattr(PyRoombaAdapter, "__del__", lambda self: self.serial_con.close())
    adapter = PyRoombaAdapter(sim_pty.url)
    adapter.move(0.2, 0.0)
    time.sleep(1.0)
    adapter.move(0.0, 0.0)
    drives = [e for e in recorded(short_tmp) if e["name"] == "Drive"]
    assert drives[0]["args"] == [0, 200, 7, 208]
    assert math.degrees(sim_pty.world.theta) > 92.0
    del adapter
    gc.collect()


def test_yarc_reset_banner_sensors_query_and_stream(sim_pty: SimServer) -> None:
    """YARC requires the real banner timeline: ``Soft reset!\\n`` within 30 ms, then ``0xFE`` within 1.5 s."""
    roomba = yarc.Roomba(sim_pty.url, brc=lambda state: None)  # no modem lines on a pty
    banner = roomba.reset(160)
    assert banner.startswith(b"Roomba by iRobot!\r\nstm32\r\n")
    assert b"r3-robot/tags/release-stm32-3.7.1" in banner
    roomba.start()
    roomba.safe()
    time.sleep(0.05)
    assert roomba.oi_mode == OIMode.SAFE
    assert 13000 < roomba.voltage < 17500
    frames: list[object] = []

    def keep_going(values: object) -> bool:
        frames.append(values)
        return len(frames) < 10

    roomba.stream(keep_going, "OI_MODE", "GROUP_43_58")
    assert len(frames) == 10
    roomba.drive_direct(100, 100)
    time.sleep(0.3)
    roomba.drive_stop()
    result = roomba.query_list("DISTANCE", "LEFT_ENCODER_COUNTS")
    assert 15 < result.DISTANCE < 80 and result.LEFT_ENCODER_COUNTS > 30
    roomba.close()  # Power (133) then Stop: the robot powers down
    time.sleep(0.05)
    assert sim_pty.robot.asleep
