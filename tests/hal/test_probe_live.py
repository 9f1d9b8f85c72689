"""``roomba-agent probe`` as an operator meets it: beside a running reader of the same port (refused, or
``--force``), its live view on a small real pty, and ``| head -1``. Real simulator on a real pty, the real
console script, a real HAL ``Robot`` holding the port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from base.ptyterm import PtyProcess
from base.testing import wait_until
from hal.errors import NoResponseError
from hal.robot import Robot
from hal.sim.server import SimServer
from hal.transport import PortInUseError, SerialTransport, lockable

AGENT = str(Path(sys.executable).with_name("roomba-agent"))
ENV = {**os.environ, "ROOMBA_LOG_LEVEL": "warning"}


def test_a_second_open_of_a_local_port_is_refused_and_names_the_holder(sim_pty: SimServer) -> None:
    first = SerialTransport(sim_pty.url)
    first.open()
    try:
        second = SerialTransport(sim_pty.url)
        with pytest.raises(PortInUseError, match=f"in use by pid {os.getpid()} \\(this process\\)"):
            second.open()
        assert not second.is_open
        beside = SerialTransport(sim_pty.url, exclusive=False)  # what --force does
        beside.open()
        beside.close()
    finally:
        first.close()
    again = SerialTransport(sim_pty.url)
    again.open()  # closing released the lock
    again.close()


def test_sockets_are_not_locked() -> None:
    """socket:// and rfc2217:// cannot be locked from the client: no exclusive option is passed."""
    seen: dict[str, Any] = {}

    class Port:
        def close(self) -> None:
            pass

    def open_fn(url: str, **options: Any) -> Port:
        seen[url] = options
        return Port()

    for url in ("socket://127.0.0.1:7000", "rfc2217://127.0.0.1:7001", "/dev/ttyUSB0"):
        SerialTransport(url, open_fn=open_fn).open()
    assert "exclusive" not in seen["socket://127.0.0.1:7000"]
    assert "exclusive" not in seen["rfc2217://127.0.0.1:7001"]
    assert seen["/dev/ttyUSB0"]["exclusive"] is True
    assert lockable("/dev/pts/3") and not lockable("socket://h:1")


def test_probe_beside_a_running_robot_refuses_and_the_robot_sees_no_corrupt_frame(sim_pty: SimServer) -> None:
    """The agent's HAL Robot holds the pty: probe exits 3 naming it, and the Robot's link stays clean;
    with --force the probe warns and reads anyway."""
    with Robot(sim_pty.url, hold_mode=None) as robot:
        robot.wait_for(lambda s: s.link.frames_ok > 5, timeout=10)
        probe = subprocess.run(
            [AGENT, "probe", "--port", sim_pty.url, "--once"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert probe.returncode == 3, probe.stderr
        assert f"in use by pid {os.getpid()}" in probe.stderr and "--force" in probe.stderr
        assert probe.stdout == ""
        before = robot.state.link.frames_ok
        robot.wait_for(lambda s: s.link.frames_ok > before + 20, timeout=10)
        assert robot.state.link.frames_corrupt == 0 and robot.state.link.bytes_discarded == 0
        forced = subprocess.run(
            [AGENT, "probe", "--port", sim_pty.url, "--once", "--force"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ENV,
        )
        assert "warning" in forced.stderr and f"in use by pid {os.getpid()}" in forced.stderr
        assert "roomba-agent probe" in forced.stdout


def test_an_agent_started_beside_a_probe_says_who_holds_the_port(sim_pty: SimServer) -> None:
    """The other way round: a probe runs, the agent's Robot cannot open the port, and its error says why."""
    with PtyProcess([AGENT, "probe", "--port", sim_pty.url], rows=20, cols=100, env=ENV) as probe:
        probe.wait_screen(lambda ls: "roomba-agent probe" in ls[0], 30, "the probe's view")
        robot = Robot(sim_pty.url, hold_mode=None)
        try:
            with pytest.raises(
                NoResponseError, match=f"in use by pid {probe.proc.pid} \\(roomba-agent probe"
            ):
                robot.start(wait=1.0)
        finally:
            robot.close()
        assert probe.interrupt() == 0


def test_probe_live_view_fits_a_small_terminal(sim_pty: SimServer) -> None:
    """On a 14-row pty: the pinned header (port, time, data age), link health, the sensors that fit and
    "… N more sensors"; redrawn in place, nothing scrolls."""
    rows = 14
    with PtyProcess(
        [AGENT, "probe", "--port", sim_pty.url, "--interval", "0.05"], rows=rows, cols=100, env=ENV
    ) as probe:
        lines = probe.wait_screen(
            lambda ls: (
                any(line.startswith("…") and "more sensors" in line for line in ls) and "frames/s" in ls[1]
            ),
            30,
            "the live view",
        )
        assert lines[0].lstrip().startswith(f"roomba-agent probe  {sim_pty.url}") and "ms old" in lines[0]
        assert "corrupt 0" in lines[1]
        assert lines[3].split()[:2] == ["id", "sensor"]
        assert lines[-1] == "" and sum(1 for line in lines if line) == rows - 1
        frames = bytes(probe.raw).count(b"roomba-agent probe")
        wait_until(lambda: bytes(probe.raw).count(b"roomba-agent probe") > frames + 3, 30, "a few redraws")
        assert probe.scrolled() == 0, "the view outgrew the terminal"
        assert probe.interrupt() == 0


def test_probe_piped_into_head_ends_quietly(sim_pty: SimServer) -> None:
    """``roomba-agent probe --json | head -1``: one sample, exit 0, no BrokenPipeError traceback."""
    shell = subprocess.run(
        [
            "bash",
            "-c",
            f'"{AGENT}" probe --port "$1" --json --interval 0.05 | head -1; echo "rc=${{PIPESTATUS[0]}}"',
            "sh",
            sim_pty.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    sample, rc = shell.stdout.splitlines()
    assert '"oi_mode"' in sample and rc == "rc=0", shell.stderr
    assert "Traceback" not in shell.stderr and "BrokenPipeError" not in shell.stderr, shell.stderr


def test_probe_help_lists_exit_codes_and_force() -> None:
    text = subprocess.run([AGENT, "probe", "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "--force" in text and "exit codes:" in text
    assert "3  the port is in use by another process" in text
