"""Simulator cost figures, printed as one JSON line.

Why: the fleet simulator runs hundreds of ``SimRobot`` cores in one process, and a single ``roomba-sim`` must
stay cheap beside the agent it feeds. Measures the sans-I/O core per 15 ms tick (idle, and moving while
streaming group 100) and the CPU of a real ``roomba-sim robot --link`` process, idle and streaming group 100
to a pyserial reader. The HAL side too: the CPU of ``hal.robot.Robot``'s reader thread on that pty
(``reader_stream100_cpu_pct``, this process, which only sleeps otherwise), and the cost of one fleet-simulator
turn ``SimLink.step`` (the simulator and a thread-less Robot over the in-memory transport).

    .venv/bin/python bench/sim.py [--seconds 5] [--ticks 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import serial

from base import logs
from fleetsim.link import SimLink
from hal.robot import Robot
from hal.sim.robot import TICK_S, SimRobot


def core_us_per_tick(script: bytes, ticks: int = 20_000) -> float:
    robot = SimRobot(seed=0, pace=False)
    robot.feed(script, 0.0)
    now = 0.0
    started = time.perf_counter()
    for _ in range(ticks):
        now += TICK_S
        robot.poll(now)
    return (time.perf_counter() - started) / ticks * 1e6


def link_us_per_step(steps: int = 20_000) -> float:
    """One fleet-simulator turn while the robot streams group 100: sim tick, bytes both ways, Robot.step."""
    link = SimLink("bench", seed=0, stream_period_s=TICK_S, now=0.0)
    link.robot.start()
    now = 0.0
    for _ in range(200):  # handshake and the stream under way
        now += TICK_S
        link.step(now)
    started = time.perf_counter()
    for _ in range(steps):
        now += TICK_S
        link.step(now)
    elapsed = time.perf_counter() - started
    if link.robot.state.link.frames_ok < steps // 2:
        raise RuntimeError(f"the link streamed only {link.robot.state.link.frames_ok} frames")
    link.robot.close()
    return elapsed / steps * 1e6


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(seconds: float = 5.0) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="rsim-bench-") as tmp:
        link = Path(tmp) / "tty"
        proc = subprocess.Popen(
            [sys.executable, "-m", "hal.sim.cli", "--log-level", "warning", "robot", "--link", str(link)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready = proc.stdout.readline()
            if not ready.startswith("roomba-sim ready"):
                raise RuntimeError(f"roomba-sim did not start (it printed {ready!r})")
            before = _cpu_seconds(proc.pid)
            time.sleep(seconds)
            idle = (_cpu_seconds(proc.pid) - before) / seconds
            with serial.Serial(str(link), 115200, timeout=1) as port:
                port.write(bytes([128, 132, 137, 0, 100, 0, 1, 148, 1, 100]))
                time.sleep(0.3)
                port.reset_input_buffer()
                before, started, received = _cpu_seconds(proc.pid), time.monotonic(), 0
                while time.monotonic() - started < seconds:
                    received += len(port.read(4096))
                elapsed = time.monotonic() - started
                streaming = (_cpu_seconds(proc.pid) - before) / elapsed
                port.write(bytes([150, 0]))
            with Robot(str(link), hold_mode=None) as robot:
                robot.wait_for(lambda s: s.link.frames_ok > 10, timeout=10, what="the stream")
                frames, before, started = robot.state.link.frames_ok, time.process_time(), time.monotonic()
                time.sleep(seconds)
                reader = (time.process_time() - before) / (time.monotonic() - started)
                reader_frames = (robot.state.link.frames_ok - frames) / (time.monotonic() - started)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    return {
        "process_idle_cpu_pct": round(100 * idle, 2),
        "process_stream100_cpu_pct": round(100 * streaming, 2),
        "stream100_frames_per_s": round(received / elapsed / 84, 1),
        "reader_stream100_cpu_pct": round(100 * reader, 2),
        "reader_frames_per_s": round(reader_frames, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per process measurement (default 5)")
    parser.add_argument(
        "--ticks", type=int, default=20_000, help="core ticks per measurement (default 20000)"
    )
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.ticks <= 0:
        parser.error("--seconds and --ticks must be positive")
    logs.configure("warning")
    result: dict[str, object] = {
        "bench": "sim",
        "core_idle_us_per_tick": round(core_us_per_tick(bytes([128]), args.ticks), 1),
        "core_stream100_moving_us_per_tick": round(
            core_us_per_tick(bytes([128, 132, 137, 0, 100, 0, 1, 148, 1, 100]), args.ticks), 1
        ),
        "link_us_per_step": round(link_us_per_step(args.ticks), 1),
        **process_cpu(args.seconds),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
