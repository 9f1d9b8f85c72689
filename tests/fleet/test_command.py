"""``roomba-fleet command``: the command built from options and checked against the robot's own schema, the
usage errors found before anything is sent, and, against a real local cloud with real agents, the second
command that used to be rejected, fleet-wide commands, a robot that fails or never answers, and ``--json``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from base.testing import tracebacks, wait_until
from fleet import cli as fleet_cli
from fleet import command
from localcloud.testing import LocalCloud

BIN = Path(sys.executable).parent
DRIVE, CLEAN, PLAY = 137, 135, 141
LINE = re.compile(r"^(\S+)\s+(cli-\S+|\S+)\s+(\S+)\s+(\S+)(?:\s+([\d.]+) s)?(?:\s+(.*))?$")


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``roomba-fleet command ...`` through the tool's entry point, as a user types it."""
    capsys.readouterr()
    try:
        code = fleet_cli.main(["command", *argv])
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> dict[str, tuple[str, ...]]:
    """The per-robot lines: {thing: (id, action, status, seconds, reason)}."""
    found: dict[str, tuple[str, ...]] = {}
    for text in out.splitlines():
        m = LINE.match(text)
        assert m, f"not a result line: {text!r}"
        found[m[1]] = (m[2], m[3], m[4], m[5] or "", m[6] or "")
    return found


# --- without a cloud ----------------------------------------------------------------------------------------
def test_command_ids_are_readable_unique_and_valid_for_the_robot() -> None:
    import datetime as dt

    from agent.commands import validate_sections

    at = dt.datetime(2026, 12, 7, 14, 35, 12, 123456, tzinfo=dt.UTC)
    cid = command.new_command_id(at)
    assert re.fullmatch(r"cli-20261207T143512\.123Z-[0-9a-f]{6}", cid), cid
    ids = {command.new_command_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(not validate_sections("desired", {"command": {"id": i, "action": "stop"}}) for i in ids)


def test_options_map_to_the_command_fields_in_the_robots_units() -> None:
    drive = command.build_command("drive", {"--velocity": "-200", "--radius": "0", "--duration": "1.5"}, "c1")
    assert drive == {
        "id": "c1",
        "action": "drive",
        "velocity_mm_s": -200,
        "radius_mm": 0,
        "duration_ms": 1500,
    }
    straight = command.build_command("drive", {"--velocity": "100", "--duration": "0.3"}, "c2")
    assert straight == {"id": "c2", "action": "drive", "velocity_mm_s": 100, "duration_ms": 300}
    clock = command.build_command("set_clock", {"--day": "Mon", "--hour": "9", "--minute": "0"}, "c3")
    assert clock == {"id": "c3", "action": "set_clock", "day": 1, "hour": 9, "minute": 0}
    assert (
        command.build_command("set_clock", {"--day": "0", "--hour": "23", "--minute": "59"}, "c")["day"] == 0
    )
    assert command.build_command("set_clock", {}, "c4") == {"id": "c4", "action": "set_clock"}
    assert command.build_command("clean", {}, "c5") == {"id": "c5", "action": "clean"}


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        pytest.param(
            ["r1", "drive", "--velocity", "900", "--duration", "1"],
            "--velocity 900: out of range, must be -500..500 mm/s",
            id="velocity_out_of_range",
        ),
        pytest.param(
            ["r1", "drive", "--velocity", "100", "--duration", "6"],
            "--duration 6: out of range, must be 0.1..5 s",
            id="duration_out_of_range",
        ),
        pytest.param(
            ["r1", "drive", "--velocity", "100", "--duration", "1", "--radius", "2001"],
            "--radius 2001: out of range, must be -2000..2000 mm",
            id="radius_out_of_range",
        ),
        pytest.param(
            ["r1", "drive", "--velocity", "fast", "--duration", "1"],
            "--velocity fast: not a number",
            id="nan",
        ),
        pytest.param(
            ["r1", "set_clock", "--day", "mon", "--hour", "9"],
            "set_clock: give --day, --hour and --minute together",
            id="clock_partial",
        ),
        pytest.param(
            ["r1", "set_clock", "--day", "someday", "--hour", "9", "--minute", "0"],
            "--day someday: not a day (use sun..sat or 0..6",
            id="clock_bad_day",
        ),
        pytest.param(
            ["r1", "set_clock", "--day", "1", "--hour", "24", "--minute", "0"],
            "--hour 24: out of range, must be 0..23",
            id="clock_hour",
        ),
        pytest.param(["clean"], "give exactly one of THING, --all or --prefix P", id="no_target"),
        pytest.param(["--all", "--prefix", "x", "clean"], "not allowed with argument", id="all_and_prefix"),
        pytest.param(["--all", "r1", "clean"], "give exactly one of THING, --all or --prefix P", id="both"),
        pytest.param(["r1", "r2", "clean"], "one THING only", id="two_things"),
        pytest.param(["r1"], "required: ACTION", id="no_action"),
        pytest.param(["r1", "vacuum"], "invalid choice: 'vacuum'", id="unknown_action"),
        pytest.param(["r1", "drive", "--duration", "1"], "required: --velocity", id="drive_needs_velocity"),
        pytest.param(["r1", "clean", "--velocity", "1"], "unrecognized option(s): --velocity", id="no_args"),
        pytest.param(["r/1", "clean"], "thing name 'r/1' contains '/'", id="bad_thing"),
        pytest.param(["r1", "clean", "--id", "a b"], "--id a b: 1-64 characters", id="bad_id"),
        pytest.param(["r1", "clean", "--timeout", "5"], "--timeout is for --wait", id="timeout_alone"),
        pytest.param(["r1", "clean", "--wait", "--timeout", "0"], "--timeout 0: must be above 0", id="t0"),
        pytest.param(["--prefix", "nobody-", "clean"], "no robot name starts with 'nobody-'", id="no_match"),
        pytest.param(["r1", "clean"], "is not a local cloud directory", id="no_cloud"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2_before_anything_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    code, out, err = run_cli(capsys, *argv, "--dir", str(tmp_path))
    assert code == 2
    assert out == ""
    assert says in err and len(err.strip().splitlines()) == 1, err


def test_options_are_accepted_before_and_after_the_action(tmp_path: Path) -> None:
    for argv in (
        ["r1", "--wait", "--timeout", "4", "clean"],
        ["r1", "clean", "--wait", "--timeout", "4"],
        ["--wait", "r1", "clean", "--timeout", "4"],
    ):
        args = command.parse([*argv, "--dir", str(tmp_path)])
        assert (args.thing, args.action, args.wait, args.timeout) == ("r1", "clean", True, 4.0), argv


def test_help_lists_the_exit_codes_and_every_action() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "command", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    assert "exit codes:" in proc.stdout and "3  with --wait: a robot did not answer" in proc.stdout
    for action in ("clean", "spot", "max", "dock", "stop", "locate", "drive", "set_clock"):
        assert f"    {action}" in proc.stdout
    drive = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "command", "drive", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert drive.returncode == 0 and "--velocity MM_S" in drive.stdout and "--duration S" in drive.stdout


def test_exit_code_failures_come_before_timeouts() -> None:
    def outcomes(*statuses: str) -> dict[str, command.Outcome]:
        return {f"r{i}": command.Outcome(f"r{i}", status=s) for i, s in enumerate(statuses)}

    assert command.exit_code(outcomes("done", "done")) == 0
    assert command.exit_code(outcomes("sent")) == 0
    assert command.exit_code(outcomes("done", "timeout")) == 3
    assert command.exit_code(outcomes("timeout", "rejected")) == 1
    assert command.exit_code(outcomes("failed")) == 1
    assert command.exit_code(outcomes("not-sent", "done")) == 1


def test_followed_topics_are_one_filter_per_thing_or_one_wildcard_for_many() -> None:
    from localcloud.opclient import WILDCARD_ABOVE, shadow_filters

    assert shadow_filters(["r1", "r2"], ("accepted", "documents")) == [
        "$aws/things/r1/shadow/update/accepted",
        "$aws/things/r1/shadow/update/documents",
        "$aws/things/r2/shadow/update/accepted",
        "$aws/things/r2/shadow/update/documents",
    ]
    many = [f"r{i}" for i in range(WILDCARD_ABOVE + 1)]
    assert shadow_filters(many, ("documents",)) == ["$aws/things/+/shadow/update/documents"]


# --- real cloud, real agents --------------------------------------------------------------------------------
class Robot:
    """``roomba-sim`` on a pty and ``roomba-agent run`` for one thing of the cloud."""

    def __init__(self, cloud: LocalCloud, thing: str, tmp: Path) -> None:
        self.cloud = cloud
        self.thing = thing
        self.tmp = tmp
        self.record = tmp / "record.jsonl"
        link = tmp / "robot.tty"
        with open(tmp / "sim.log", "wb") as log:
            self.sim = subprocess.Popen(
                [str(BIN / "roomba-sim"), "robot", "--link", str(link), "--record", str(self.record)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.agent: subprocess.Popen[bytes] | None = None
        try:
            self._start_agent(link)
        except BaseException:
            self.stop()
            raise

    def _start_agent(self, link: Path) -> None:
        cloud, thing, tmp = self.cloud, self.thing, self.tmp
        wait_until(link.exists, 20, "simulator pty")
        config = Path(cloud.add_robot(thing, str(link)))
        config.write_text(config.read_text() + "\n[intervals]\nstatus_s = 0.5\nreport_min_s = 0.2\n")
        env = {**os.environ, "ROOMBA_AGENT_RECONNECT_MAX_MS": "1500", "ROOMBA_LOG_FORMAT": "json"}
        with open(tmp / "agent.log", "wb") as log:
            self.agent = subprocess.Popen(
                [str(BIN / "roomba-agent"), "run", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        wait_until(lambda: self.reported().get("link", {}).get("serial") == "up", 30, f"{thing} reporting")

    def shadow(self) -> dict[str, Any]:
        accepted, doc = self.cloud.get_shadow(self.thing)
        state = doc.get("state") if accepted else None
        return dict(state) if isinstance(state, dict) else {}

    def reported(self) -> dict[str, Any]:
        return dict(self.shadow().get("reported") or {})

    def opcodes(self) -> list[int]:
        if not self.record.exists():
            return []
        return [int(json.loads(x)["opcode"]) for x in self.record.read_text().splitlines() if x.strip()]

    def stop_sim(self) -> None:
        if self.sim.poll() is None:
            self.sim.terminate()
            self.sim.wait(10)

    def stop(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(15)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        self.stop_sim()

    def tracebacks(self) -> list[str]:
        return tracebacks((self.tmp / "agent.log").read_text(errors="replace"))


@pytest.fixture
def robot(local_cloud: LocalCloud, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Robot]:
    thing = "cmd-" + request.node.name.removeprefix("test_")[:40].replace("_", "-")
    r = Robot(local_cloud, thing, tmp_path)
    try:
        yield r
    finally:
        r.stop()


@pytest.mark.slow
def test_a_second_command_after_a_drive_is_done_not_rejected(
    robot: Robot, local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trap of issue 10: a ``clean`` written over a ``drive`` kept ``velocity_mm_s`` and was rejected."""
    d = local_cloud.cli_args
    code, out, err = run_cli(
        capsys,
        robot.thing,
        "drive",
        "--velocity",
        "100",
        "--duration",
        "0.3",
        "--wait",
        "--timeout",
        "20",
        *d,
    )
    assert code == 0, (out, err)
    drive_id, action, status, seconds, _reason = rows(out)[robot.thing]
    assert (action, status) == ("drive", "done") and float(seconds) > 0 and drive_id.startswith("cli-")
    # at once, in the same second: the robot cannot tell leftovers by their timestamps, the nulls must do it
    code, out, err = run_cli(capsys, robot.thing, "clean", "--wait", "--timeout", "20", *d)
    assert code == 0, (out, err)
    clean_id, action, status, _s, reason = rows(out)[robot.thing]
    assert (action, status, reason) == ("clean", "done", "") and clean_id != drive_id
    state = robot.shadow()
    assert state["reported"]["command"]["id"] == clean_id
    assert "velocity_mm_s" not in state["reported"]["command"]
    assert not {"velocity_mm_s", "duration_ms"} & set((state.get("desired") or {}).get("command") or {})
    codes = robot.opcodes()
    assert codes.count(DRIVE) == 1 and codes.count(CLEAN) == 1
    # and a third, with --json: one document, keyed by thing
    code, out, err = run_cli(capsys, robot.thing, "locate", "--wait", "--json", *d)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["action"] == "locate" and doc["wait"] is True and doc["exit_code"] == 0
    assert doc["counts"] == {"done": 1}
    result = doc["robots"][robot.thing]
    assert result["status"] == "done" and result["reason"] is None and result["seconds"] > 0
    assert result["reported"]["id"] == doc["id"] == doc["command"]["id"]
    assert wait_until(lambda: PLAY in robot.opcodes(), 5, "the locate song")
    assert robot.tracebacks() == []


@pytest.mark.slow
def test_the_previous_commands_other_fields_are_nulled(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --wait (and with no agent): the update replaces desired.command instead of merging into it."""
    thing = "cmd-nulled"
    local_cloud.add_robot(thing)
    leftover = {
        "id": "old-drive",
        "action": "drive",
        "velocity_mm_s": 200,
        "radius_mm": 5,
        "duration_ms": 900,
    }
    accepted, _ = local_cloud.update_shadow(thing, {"state": {"desired": {"command": leftover}}})
    assert accepted
    code, out, err = run_cli(capsys, thing, "dock", "--id", "new-dock", *local_cloud.cli_args)
    assert code == 0, err
    assert rows(out)[thing][:3] == ("new-dock", "dock", "sent")
    accepted, doc = local_cloud.get_shadow(thing)
    assert accepted and doc["state"]["desired"]["command"] == {"id": "new-dock", "action": "dock"}


@pytest.mark.slow
def test_a_robot_that_never_answers_times_out_with_exit_3(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    thing = "cmd-offline"
    local_cloud.add_robot(thing)
    code, out, err = run_cli(capsys, thing, "clean", "--wait", "--timeout", "1", *local_cloud.cli_args)
    assert code == 3
    _id, action, status, _s, reason = rows(out)[thing]
    assert (action, status) == ("clean", "timeout") and "no final answer within 1 s" in reason
    assert "the robot has never connected (no presence): is its agent running?" in reason
    assert "1 of 1 robots not done" in err
    code, out, _err = run_cli(
        capsys, thing, "clean", "--wait", "--timeout", "0.5", "--json", *local_cloud.cli_args
    )
    doc = json.loads(out)
    assert code == 3 and doc["exit_code"] == 3 and doc["counts"] == {"timeout": 1}
    assert doc["robots"][thing]["status"] == "timeout" and doc["robots"][thing]["reported"] is None


@pytest.mark.slow
def test_a_command_the_robot_fails_exits_1_with_its_reason(
    robot: Robot, local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    robot.stop_sim()
    wait_until(lambda: robot.reported().get("link", {}).get("serial") == "down", 20, "link down reported")
    code, out, err = run_cli(capsys, robot.thing, "clean", "--wait", "--timeout", "20", *local_cloud.cli_args)
    assert code == 1, (out, err)
    _id, action, status, _s, reason = rows(out)[robot.thing]
    assert (action, status) == ("clean", "failed") and "serial link to the robot is down" in reason
    assert robot.tracebacks() == []
    # once the agent has stopped, a command times out and the line says what the robot's presence says
    robot.stop()
    code, out, err = run_cli(capsys, robot.thing, "dock", "--wait", "--timeout", "1", *local_cloud.cli_args)
    assert code == 3, (out, err)
    _id, action, status, _s, reason = rows(out)[robot.thing]
    assert (action, status) == ("dock", "timeout")
    assert re.search(
        r"the robot is offline since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(agent stopped\)", reason
    )


class Fleet:
    """``roomba-fleet simulate`` (real agents on simulated robots, one process) against ``cloud``."""

    def __init__(self, cloud: LocalCloud, robots: int, prefix: str) -> None:
        self.ready = threading.Event()
        self.err = cloud.dir.root / "simulate.stderr"
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "fleet.simulate", "--dir", str(cloud.dir.root)),
                *("--robots", str(robots), "--prefix", prefix, "--report-min-s", "0.2"),
            ],
            stdout=subprocess.PIPE,
            stderr=open(self.err, "ab"),  # noqa: SIM115
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 90
        while not self.ready.wait(0.2):
            assert self.proc.poll() is None, self.err.read_text()[-2000:]
            assert time.monotonic() < deadline, self.err.read_text()[-2000:]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for text in self.proc.stdout:
            if text.startswith("simulate ready"):
                self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.mark.slow
def test_all_and_prefix_send_to_every_robot_selected_and_wait_for_each(
    new_cloud: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    cloud: LocalCloud = new_cloud()
    fleet = Fleet(cloud, 3, "flt-")
    try:
        cloud.add_robot("idle-1")  # known to DIR, but no agent: --all reaches it and it never answers
        things = ["flt-0001", "flt-0002", "flt-0003"]
        code, out, err = run_cli(capsys, "--prefix", "flt-", "clean", "--wait", *cloud.cli_args)
        assert code == 0, (out, err)
        got = rows(out)
        assert sorted(got) == things
        assert {r[1:3] for r in got.values()} == {("clean", "done")}
        assert len({r[0] for r in got.values()}) == 1, "one id for the whole invocation"
        # a second command over the same robots, then --all with the idle robot: 3 done, 1 timeout
        code, out, err = run_cli(
            capsys, "--all", "dock", "--wait", "--timeout", "5", "--json", *cloud.cli_args
        )
        doc = json.loads(out)
        assert code == 3, err
        assert doc["counts"] == {"done": 3, "timeout": 1} and doc["exit_code"] == 3
        assert sorted(doc["robots"]) == sorted([*things, "idle-1"])
        assert all(doc["robots"][t]["reported"]["action"] == "dock" for t in things)
        assert err == ""  # --json: the document says it all
        # without --wait: one "sent" line per robot, exit 0 (the idle robot's shadow took the update too)
        code, out, err = run_cli(capsys, "--all", "stop", *cloud.cli_args)
        assert code == 0, (out, err)
        assert {r[2] for r in rows(out).values()} == {"sent"} and len(rows(out)) == 4
    finally:
        fleet.stop()


@pytest.mark.slow
def test_a_throttled_request_is_sent_again_not_reported_as_a_failure(
    new_cloud: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """AWS allows 20 requests/s per thing and answers 429 beyond; a script sending commands back to back hits
    it (here 3/s). Each command is a get and an update: the throttled ones are asked again after a short
    jittered wait, so every command goes out."""
    cloud: LocalCloud = new_cloud(rate_limit_per_thing=3)
    thing = "cmd-throttled"
    cloud.add_robot(thing)
    ids = [f"burst-{i}" for i in range(5)]
    for cid in ids:
        code, out, err = run_cli(capsys, thing, "clean", "--id", cid, *cloud.cli_args)
        assert code == 0, (out, err)
        assert rows(out)[thing][:3] == (cid, "clean", "sent")

    def desired_command() -> dict[str, Any] | None:
        accepted, doc = cloud.get_shadow(thing)  # the test's own get may be throttled too
        return dict(doc["state"]["desired"]["command"]) if accepted else None

    assert wait_until(desired_command, 10, "a shadow get") == {"id": ids[-1], "action": "clean"}
