"""The real launcher process (the file copied alone, run by the system python3) with fake releases.

Each release's ``venv/bin/roomba-agent`` is a small script written here that behaves as its control file
says: run until stopped, exit with a code, crash at start, never commit, commit after N s (through the
launcher file's own ``Layout.commit``), or fail its trial and exit EXIT_ROLLBACK. Power cuts are kill -9 of
the launcher and the agent. After every step: the ``current`` link points at an installed release, never
both slots are broken, and a version runs (or the launcher says why not).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import launcher as L
from base.testing import tracebacks, wait_until

LAUNCHER = Path(L.__file__)
PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
A, B, C = "1.0.0", "2.0.0", "3.0.0"

FAKE_AGENT = """\
#!{python}
import json, os, signal, socket, sys, time
ctl = os.environ["FAKE_CTL"]
version = os.environ["ROOMBA_RELEASE"]
root = os.environ["ROOMBA_RELEASE_ROOT"]
sys.path.insert(0, {lib!r})
import launcher

def emit(**kw):
    with open(os.path.join(ctl, "events.jsonl"), "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "version": version, **kw}}) + "\\n")

try:
    with open(os.path.join(ctl, version + ".json")) as f:
        behavior = json.load(f)
except FileNotFoundError:
    behavior = {{"mode": "forever"}}
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
signal.signal(signal.SIGINT, lambda *a: stop.append(1))
emit(event="start", args=sys.argv[1:], watchdog_pid=os.environ.get("WATCHDOG_PID"),
     notify=os.environ.get("NOTIFY_SOCKET"), watchdog_usec=os.environ.get("WATCHDOG_USEC"))
mode = behavior.get("mode", "forever")
if mode == "crash":
    sys.exit(behavior.get("code", 1))
if mode == "fail":
    launcher.Layout(root).fail_trial(behavior["reason"])
    emit(event="failed")
    sys.exit(launcher.EXIT_ROLLBACK)
if mode == "notify":
    address = os.environ["NOTIFY_SOCKET"]
    address = "\\0" + address[1:] if address.startswith("@") else address
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for message in ("READY=1\\nSTATUS=connected", "WATCHDOG=1", "STOPPING=1", "MAINPID=1\\nSTATUS=x"):
        s.sendto(message.encode(), address)
    emit(event="notified")
commit_at = time.monotonic() + behavior["commit_after_s"] if mode == "commit" else None
cmd = os.path.join(ctl, "cmd-%d" % os.getpid())
while not stop:
    if commit_at is not None and time.monotonic() >= commit_at:
        commit_at = None
        try:
            launcher.Layout(root).commit(version)
            emit(event="committed")
        except launcher.LayoutError as exc:
            emit(event="commit_refused", error=str(exc))
    if os.path.exists(cmd):
        with open(cmd) as f:
            code = int(f.read())
        emit(event="exit", code=code)
        sys.exit(code)
    time.sleep(0.02)
emit(event="stopped")
sys.exit(0)
"""


class Robot:
    """A release root with fake releases, and the launcher run on it as systemd would."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "opt"
        self.ctl = tmp / "ctl"
        self.lib = tmp / "lib"
        for d in (self.ctl, self.lib):
            d.mkdir()
        shutil.copy(LAUNCHER, self.lib / "launcher.py")
        self.layout = L.Layout(self.root)
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def release(self, version: str, **behavior: Any) -> None:
        exe = self.layout.agent_exe(version)
        exe.parent.mkdir(parents=True)
        exe.write_text(FAKE_AGENT.format(python=PYTHON, lib=str(self.lib)))
        exe.chmod(0o755)
        self.layout.mark_installed(version, json.dumps({"version": version}).encode())
        self.behave(version, **behavior)

    def behave(self, version: str, **behavior: Any) -> None:
        (self.ctl / f"{version}.json").write_text(json.dumps(behavior or {"mode": "forever"}))

    def start(self, *, commit_timeout: float = 30, env: dict[str, str] | None = None) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.runs += 1
        self.log_path = self.tmp / f"launcher-{self.runs}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    PYTHON,
                    str(self.lib / "launcher.py"),
                    "--root",
                    str(self.root),
                    "--pause",
                    "0.05",
                    "--stop-timeout",
                    "2",
                    "--commit-timeout",
                    str(commit_timeout),
                    "--",
                    "run",
                    "--config",
                    "/etc/roomba-agent/agent.toml",
                ],
                env={**os.environ, "FAKE_CTL": str(self.ctl), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    # observing
    def events(self, event: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
        path = self.ctl / "events.jsonl"
        if not path.exists():
            return []
        out = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [
            e
            for e in out
            if (event is None or e["event"] == event) and (version is None or e["version"] == version)
        ]

    def starts(self, version: str) -> int:
        return len(self.events("start", version))

    def wait_start(self, version: str, n: int) -> int:
        """Wait for the n-th start of ``version`` (counted since the robot was made); its pid."""
        wait_until(lambda: self.starts(version) >= n, 30, f"start #{n} of {version}")
        pid = int(self.events("start", version)[n - 1]["pid"])
        return pid

    def wait_event(self, event: str, version: str, n: int = 1) -> dict[str, Any]:
        wait_until(lambda: len(self.events(event, version)) >= n, 30, f"{event} of {version}:\n{self.log()}")
        return self.events(event, version)[n - 1]

    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.tmp.glob("launcher-*.log")))

    def log_events(self) -> list[dict[str, Any]]:
        lines = [line for line in self.log().splitlines() if line.startswith("{")]
        return [json.loads(line) for line in lines]

    def state(self) -> L.Slots:
        return self.layout.read()

    def running_pid(self) -> int | None:
        """The pid of the agent the launcher runs now (started and not yet ended)."""
        for e in reversed(self.events("start")):
            if alive(int(e["pid"])):
                return int(e["pid"])
        return None

    # acting
    def tell(self, pid: int, code: int) -> None:
        (self.ctl / f"cmd-{pid}").write_text(str(code))

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def power_cut(self) -> None:
        """kill -9 of the launcher and of every agent it started: what pulling the plug does."""
        assert self.proc is not None
        agents = [int(e["pid"]) for e in self.events("start") if alive(int(e["pid"]))]
        self.proc.kill()
        for pid in agents:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(10)
        wait_until(lambda: not any(alive(pid) for pid in agents), 10, f"agents {agents} gone")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for e in self.events("start"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(e["pid"]), signal.SIGKILL)

    def check(self) -> L.Slots:
        """What must hold at any time: current -> an installed release; never both slots broken."""
        s = self.state()
        assert s.current is not None and s.current in s.installed, s
        assert os.path.realpath(self.root / "current") == str(self.layout.release_dir(s.current).resolve())
        assert not (s.current in s.broken and s.previous in s.broken), s
        return s


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its parent) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture
def robot(tmp_path: Path) -> Iterator[Robot]:
    r = Robot(tmp_path)
    r.release(A)
    r.layout.activate(A)
    yield r
    r.stop()
    assert tracebacks(r.log()) == [], r.log()


def switch(robot: Robot, to: str, *, commit_timeout_s: float | None = 30) -> None:
    """What the update job does: ask for the switch, then the running agent exits EXIT_SWITCH."""
    pid = robot.running_pid()
    assert pid is not None
    robot.layout.request_switch(to, 1, commit_timeout_s, {"job_id": "job-1", "execution_number": 1})
    robot.tell(pid, L.EXIT_SWITCH)


# --- the runs ----------------------------------------------------------------------------------------------
def test_runs_current_with_the_agents_arguments_and_environment(robot: Robot) -> None:
    robot.start()
    robot.wait_start(A, 1)
    start = robot.events("start", A)[0]
    assert start["args"] == ["run", "--config", "/etc/roomba-agent/agent.toml"]
    assert robot.log_events()[0]["event"] == "launcher.start"
    assert {"timestamp", "level", "event"} <= set(robot.log_events()[0])
    robot.check()


def test_a_switch_then_a_commit(robot: Robot) -> None:
    robot.release(B, mode="commit", commit_after_s=0.3)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    robot.wait_start(B, 1)
    robot.wait_event("committed", B)
    s = robot.check()
    assert (s.current, s.previous, s.trial) == (B, A, None)
    assert s.last is not None and (s.last["result"], s.last["from"], s.last["to"]) == ("committed", A, B)
    assert s.last["job"] == {"job_id": "job-1", "execution_number": 1}
    wait_until(lambda: "launcher.committed" in [e["event"] for e in robot.log_events()], 10, "committed log")
    names = [e["event"] for e in robot.log_events()]
    assert (
        names.index("launcher.switch")
        < names.index("launcher.trial_start")
        < names.index("launcher.committed")
    )
    assert robot.proc is not None and robot.proc.poll() is None and robot.starts(B) == 1


def test_three_crashes_roll_back_and_record_the_broken_version(robot: Robot) -> None:
    robot.release(B, mode="crash", code=3)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    robot.wait_start(A, 2)
    assert robot.starts(B) == L.MAX_FAILED_STARTS
    s = robot.check()
    assert (s.current, s.previous, s.trial) == (A, None, None)
    assert s.last is not None and s.last["result"] == "rolled_back"
    assert s.last["reason"] == "3 failed starts; last: exited with 3"
    assert json.loads((robot.root / "state" / "broken" / B).read_text())["reason"] == s.last["reason"]
    names = [e["event"] for e in robot.log_events()]
    assert names.count("launcher.trial_failed") == 2 and "launcher.rollback" in names


def test_a_trial_agent_that_exits_0_on_its_own_is_a_failed_start(robot: Robot) -> None:
    robot.release(B, mode="crash", code=0)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    robot.wait_start(A, 2)
    s = robot.check()
    assert robot.starts(B) == 3
    assert s.last is not None and s.last["reason"] == "3 failed starts; last: exited with 0 on its own"


def test_a_missed_commit_deadline_rolls_back(robot: Robot) -> None:
    robot.release(B, mode="forever")
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B, commit_timeout_s=1.0)
    robot.wait_start(B, 1)
    robot.wait_start(A, 2)
    assert robot.starts(B) == 1
    assert robot.events("stopped", B), "the trial agent was stopped with SIGTERM"
    s = robot.check()
    assert s.current == A and s.last is not None
    assert s.last["reason"] == "not committed within 1 s of its start"
    assert "launcher.commit_timeout" in [e["event"] for e in robot.log_events()]


def test_the_launchers_commit_timeout_applies_when_the_switch_sets_none(robot: Robot) -> None:
    robot.release(B, mode="forever")
    robot.start(commit_timeout=1.0)
    robot.wait_start(A, 1)
    switch(robot, B, commit_timeout_s=None)
    robot.wait_start(A, 2)
    assert robot.check().last is not None


def test_exit_rollback_reverts_with_the_agents_reason(robot: Robot) -> None:
    robot.release(B, mode="fail", reason="self-test: shadow not in sync for 30 s")
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    robot.wait_start(A, 2)
    assert robot.starts(B) == 1
    s = robot.check()
    assert s.last is not None
    assert (s.last["result"], s.last["reason"]) == ("rolled_back", "self-test: shadow not in sync for 30 s")
    last = json.loads((robot.root / "state" / "last.json").read_text())
    assert last["reason"] == "self-test: shadow not in sync for 30 s"
    assert B in s.broken


def test_a_commit_refused_after_the_deadline(robot: Robot) -> None:
    """The agent's commit comes after the launcher rolled it back: Layout.commit reads back and raises."""
    robot.release(B, mode="forever")
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B, commit_timeout_s=0.5)
    robot.wait_start(A, 2)
    with pytest.raises(L.LayoutError, match=r"2\.0\.0 is not committed|no trial of 2\.0\.0"):
        robot.layout.commit(B)


# --- power cuts and kills ----------------------------------------------------------------------------------
def test_power_cuts_during_a_trial_do_not_count_as_failed_starts(robot: Robot) -> None:
    robot.release(B, mode="commit", commit_after_s=60)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    for cut in range(1, 5):
        robot.wait_start(B, cut)
        robot.power_cut()
        s = robot.check()
        assert s.trial is not None and s.trial["in_flight"] is True
        assert s.trial["failed_starts"] == 0
        robot.start()
    robot.behave(B, mode="commit", commit_after_s=0.1)
    robot.wait_event("committed", B)
    s = robot.check()
    assert (s.current, s.trial) == (B, None) and s.last is not None and s.last["result"] == "committed"
    interrupted = [e for e in robot.log_events() if e["event"] == "launcher.trial_interrupted"]
    assert [e["interrupted"] for e in interrupted] == [1, 2, 3, 4]


def test_kill_9_of_the_agent_alone_is_a_failed_start(robot: Robot) -> None:
    robot.release(B, mode="commit", commit_after_s=60)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    pid = robot.wait_start(B, 1)
    os.kill(pid, signal.SIGKILL)
    robot.wait_start(B, 2)
    s = robot.check()
    assert s.trial is not None and s.trial["failed_starts"] == 1
    assert s.trial["failures"] == ["killed by SIGKILL"]


def test_kill_9_of_the_launcher_alone_takes_the_agent_with_it(robot: Robot) -> None:
    robot.start()
    pid = robot.wait_start(A, 1)
    assert robot.proc is not None
    robot.proc.kill()
    robot.proc.wait(10)
    wait_until(lambda: not alive(pid), 10, "the orphaned agent to stop")
    assert robot.events("stopped", A), "the agent got SIGTERM (PR_SET_PDEATHSIG) and stopped cleanly"
    robot.start()
    robot.wait_start(A, 2)
    robot.check()


@pytest.mark.parametrize(
    "phase",
    ["pending_written", "agent_exiting_for_the_switch", "trial_running", "committed", "rolling_back"],
)
def test_a_power_cut_at_each_phase_leaves_a_working_version(robot: Robot, phase: str) -> None:
    """kill -9 of everything at a phase of an update; the next start runs a version, and the update ends
    committed (B good) or rolled back (B bad), exactly once."""
    bad = phase == "rolling_back"
    robot.release(B, **({"mode": "crash"} if bad else {"mode": "commit", "commit_after_s": 0.5}))
    robot.start()
    pid = robot.wait_start(A, 1)
    if phase == "pending_written":
        robot.layout.request_switch(B, 1, 30, {"job_id": "j"})
    else:
        switch(robot, B)
    if phase == "agent_exiting_for_the_switch":
        wait_until(lambda: not alive(pid), 10, "A to exit")
    elif phase in ("trial_running", "rolling_back"):
        robot.wait_start(B, 1)
    elif phase == "committed":
        robot.wait_event("committed", B)
    robot.power_cut()
    robot.check()
    robot.start()  # a pending switch is performed by the boot, whether or not the agent got to exit
    if bad:
        wait_until(lambda: robot.state().last is not None, 30, "the rollback")
        robot.wait_start(A, 2)
        s = robot.check()
        assert (s.current, s.last and s.last["result"]) == (A, "rolled_back")
    else:
        wait_until(lambda: robot.state().last is not None, 30, "the commit")
        s = robot.check()
        assert (s.current, s.previous, s.last and s.last["result"]) == (B, A, "committed")
        wait_until(lambda: robot.starts(B) >= (2 if phase == "committed" else 1), 30, "B running")


def test_kill_9_at_arbitrary_moments_of_a_crash_looping_trial(robot: Robot) -> None:
    """The launcher is killed (with its agent) at spread-out moments while it switches, counts and rolls
    back a version that crashes at start; every time the state is sound, no start is counted twice, and
    the robot ends on A with B rolled back after exactly three failed starts."""
    robot.release(B, mode="crash", code=5)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    for i in range(12):
        time.sleep(0.013 * (i * 7 % 11))
        robot.power_cut()
        s = robot.check()
        if s.trial is not None:
            assert s.trial["failed_starts"] < 3
            assert len(s.trial["failures"]) == s.trial["failed_starts"]
        robot.start()
    wait_until(lambda: robot.state().last is not None, 30, "the rollback")
    s = robot.check()
    assert (s.current, s.trial) == (A, None)
    assert s.last is not None and s.last["result"] == "rolled_back"
    failed = [e for e in robot.log_events() if e["event"] == "launcher.trial_failed"]
    assert len(failed) <= 2 and robot.starts(B) >= 3


# --- stops, exits, the lock, nothing to run ----------------------------------------------------------------
def test_sigterm_is_forwarded_and_a_stop_during_a_trial_counts_nothing(robot: Robot) -> None:
    robot.release(B, mode="commit", commit_after_s=60)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    robot.wait_start(B, 1)
    assert robot.proc is not None
    robot.proc.send_signal(signal.SIGTERM)
    assert robot.wait_exit() == 0
    assert robot.events("stopped", B)
    s = robot.check()
    assert s.trial is not None
    assert (s.trial["in_flight"], s.trial["failed_starts"], s.trial["interrupted_starts"]) == (False, 0, 0)
    robot.start()
    robot.wait_start(B, 2)


def test_the_watchdogs_sigabrt_kills_the_agent_and_counts_a_failed_start(robot: Robot) -> None:
    """systemd's watchdog sends SIGABRT to the main process (the launcher) when the agent stops pinging."""
    robot.release(B, mode="commit", commit_after_s=60)
    robot.start()
    robot.wait_start(A, 1)
    switch(robot, B)
    pid = robot.wait_start(B, 1)
    assert robot.proc is not None
    robot.proc.send_signal(signal.SIGABRT)
    assert robot.wait_exit() == 128 + signal.SIGABRT
    assert not alive(pid)
    s = robot.check()
    assert s.trial is not None and s.trial["failed_starts"] == 1 and s.trial["in_flight"] is False


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (3, 3), (L.EX_CONFIG, L.EX_CONFIG)])
def test_outside_a_trial_the_agents_exit_ends_the_launcher(robot: Robot, code: int, expected: int) -> None:
    robot.start()
    robot.tell(robot.wait_start(A, 1), code)
    assert robot.wait_exit() == expected


def test_a_signal_death_outside_a_trial_is_128_plus_n(robot: Robot) -> None:
    robot.start()
    os.kill(robot.wait_start(A, 1), signal.SIGKILL)
    assert robot.wait_exit() == 128 + signal.SIGKILL


def test_exit_switch_without_a_pending_switch_restarts_the_agent(robot: Robot) -> None:
    robot.start()
    robot.tell(robot.wait_start(A, 1), L.EXIT_SWITCH)
    robot.wait_start(A, 2)
    assert robot.check().last is None


def test_a_second_launcher_exits_75(robot: Robot) -> None:
    robot.start()
    robot.wait_start(A, 1)
    second = subprocess.run(
        [PYTHON, str(robot.lib / "launcher.py"), "--root", str(robot.root), "--", "run"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode == L.EX_TEMPFAIL
    assert f"another launcher (pid {robot.proc.pid if robot.proc else '?'})" in second.stderr


def test_nothing_runnable_exits_78_with_how_to_fix_it(tmp_path: Path) -> None:
    robot = Robot(tmp_path)
    robot.start()
    assert robot.wait_exit() == L.EX_CONFIG
    assert "no runnable release under" in robot.log()
    assert "roomba-agent update install BUNDLE" in robot.log()


def test_current_incomplete_falls_back_to_previous(robot: Robot) -> None:
    robot.release(B)
    robot.layout.activate(B)
    (robot.layout.release_dir(B) / ".installed").unlink()
    robot.start()
    robot.wait_start(A, 1)
    s = robot.check()
    assert (s.current, s.previous) == (A, None) and B in s.broken
    assert "launcher.fallback" in [e["event"] for e in robot.log_events()]


def test_the_notify_proxy_filters_stopping_and_strips_watchdog_pid(robot: Robot, tmp_path: Path) -> None:
    """Under systemd the agent's notifications reach systemd from the launcher's pid, minus STOPPING=1
    (an agent exiting for a switch is not the service stopping) and MAINPID=."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.settimeout(10)
    robot.behave(A, mode="notify")
    robot.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    robot.wait_event("notified", A)
    start = robot.events("start", A)[0]
    assert start["watchdog_pid"] is None and start["watchdog_usec"] == "30000000"
    assert start["notify"].startswith("@roomba-launcher-")
    got: list[tuple[str, int]] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(got) < 4:
        data, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = next(int.from_bytes(d[:4], "little") for lvl, typ, d in anc if typ == socket.SCM_CREDENTIALS)
        got.append((data.decode(), pid))
        if "STATUS=x" in data.decode():
            break
    messages = [m for m, _ in got]
    assert "READY=1\nSTATUS=connected" in messages and "WATCHDOG=1" in messages
    assert "STATUS=x" in messages, "MAINPID= dropped, the rest kept"
    assert not any("STOPPING=1" in m or "MAINPID" in m for m in messages)
    assert robot.proc is not None and {pid for _, pid in got} == {robot.proc.pid}
    sock.close()


def test_the_notify_proxy_drops_datagrams_from_other_processes(robot: Robot, tmp_path: Path) -> None:
    """The proxy's abstract socket is open to any local process: a datagram not sent by the running agent
    (here: the test's own process) is dropped with a warning, never forwarded as the launcher's."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(10)
    robot.behave(A, mode="notify")
    robot.start(env={"NOTIFY_SOCKET": str(path)})
    robot.wait_event("notified", A)
    address = robot.events("start", A)[0]["notify"]
    intruder = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    intruder.sendto(b"WATCHDOG=trigger\nSTATUS=intruder", "\0" + address[1:])
    intruder.close()
    wait_until(lambda: "launcher.notify_dropped" in robot.log(), 30, f"the drop logged:\n{robot.log()}")
    robot.tell(robot.wait_start(A, 1), L.EXIT_SWITCH)  # the next agent's READY=1 comes after the intruder's
    robot.wait_event("notified", A, 2)
    messages: list[str] = []
    while messages.count("READY=1\nSTATUS=connected") < 2:
        messages.append(sock.recv(4096).decode())
    assert not any("intruder" in m or "WATCHDOG=trigger" in m for m in messages), messages
    dropped = [e for e in robot.log_events() if e["event"] == "launcher.notify_dropped"]
    assert len(dropped) == 1 and dropped[0]["level"] == "warning"
    assert dropped[0]["sender"] == os.getpid() and dropped[0]["agent"] == robot.events("start", A)[0]["pid"]
    sock.close()


def test_the_fake_agent_script_is_what_the_layout_calls_installed(tmp_path: Path) -> None:
    """The harness's fake release is a complete release by the layout's rules (venv/bin/roomba-agent and
    .installed), so these tests exercise the same checks a real release passes."""
    robot = Robot(tmp_path)
    robot.release(A)
    assert robot.layout.is_installed(A)
    assert textwrap.dedent(robot.layout.agent_exe(A).read_text()).startswith(f"#!{PYTHON}")
