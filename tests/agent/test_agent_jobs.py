"""The jobs feature's pure parts: job documents (Device Client schema 1.0 and the robot's operations),
runCommand splitting, statusDetails limits, the device API's topics and answers, the journal and its
recovery decisions, and running a command or handler as a child process."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import unicodedata
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from agent import config as cfg
from agent.jobs import protocol
from agent.jobs.document import (
    NO_COMMANDS,
    DeviceClientPlan,
    Gates,
    Rejection,
    RobotPlan,
    RobotView,
    mission_confirmed,
    parse,
    split_command,
    unmet,
)
from agent.jobs.journal import Entry, Journal, recovery
from agent.jobs.runner import check_handler_dir, run_action

ECHO = {
    "version": "1.0",
    "includeStdOut": "true",
    "steps": [
        {
            "action": {
                "name": "Say hello",
                "type": "runCommand",
                "input": {"command": "echo,Hello World!"},
                "runAsUser": "",
            }
        }
    ],
}


def plan_of(doc: Any, allow: bool = True, handler_dir: str | None = None, model: str = "create2") -> Any:
    return parse(doc, model=model, allow_commands=allow, handler_dir=handler_dir)


# --- runCommand's argv ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "argv"),
    [
        pytest.param("echo,Hello World!", ["echo", "Hello World!"], id="device_client_readme"),
        pytest.param("echo", ["echo"], id="program_only"),
        pytest.param(r"echo,a\,b", ["echo", "a,b"], id="escaped_comma"),
        pytest.param(r"sh,-c,echo 1\, 2\, 3", ["sh", "-c", "echo 1, 2, 3"], id="several_escapes"),
        pytest.param("echo,,x", ["echo", "", "x"], id="empty_argument_kept"),
        pytest.param(r"printf,a\nb", ["printf", r"a\nb"], id="other_backslash_literal"),
        pytest.param("echo,x,", ["echo", "x", ""], id="trailing_comma"),
    ],
)
def test_split_command(command: str, argv: list[str]) -> None:
    assert split_command(command) == argv


# --- documents ------------------------------------------------------------------------------------------
def test_device_client_document_parses_as_the_device_client_reads_it() -> None:
    doc = {
        **ECHO,
        "steps": [
            *ECHO["steps"],
            {
                "action": {
                    "name": "may fail",
                    "type": "runHandler",
                    "input": {"handler": "check.sh", "args": ["a", "b"], "path": "default"},
                    "runAsUser": "root",
                    "ignoreStepFailure": "true",
                }
            },
        ],
        "finalStep": {"action": {"name": "bye", "type": "runCommand", "input": {"command": "true"}}},
    }
    plan = plan_of(doc, handler_dir="/srv/handlers")
    assert isinstance(plan, DeviceClientPlan)
    assert plan.include_stdout is True
    assert [(a.name, a.type, a.ignore_failure, a.final) for a in plan.steps] == [
        ("Say hello", "runCommand", False, False),
        ("may fail", "runHandler", True, False),
        ("bye", "runCommand", False, True),
    ]
    assert plan.steps[0].argv == ["echo", "Hello World!"] and plan.steps[0].run_as_user is None
    assert plan.steps[1].run_as_user == "root"
    assert not any(plan.resumable(i) for i in range(3))


def test_robot_operations_parse() -> None:
    plan = plan_of({"operation": "mission", "action": "dock", "requires": {"battery_min_pct": 20}})
    assert isinstance(plan, RobotPlan)
    assert plan.operation == "mission" and plan.args == {"action": "dock"} and plan.timeout_s == 900
    assert plan.requires == Gates(battery_min_pct=20)
    assert plan_of({"operation": "restart-agent"}).resumable(0) is True
    assert plan_of({"operation": "doctor", "models": ["create2", "roomba600"]}).resumable(0) is False
    put = plan_of({"operation": "collect-logs", "url": "http://127.0.0.1:8444/a?X-Amz-Signature=1"})
    assert isinstance(put, RobotPlan) and put.args["url"].startswith("http://")


@pytest.mark.parametrize(
    ("doc", "allow", "handler_dir", "reason"),
    [
        pytest.param(None, True, None, "the job has no document", id="no_document"),
        pytest.param("reboot", True, None, "must be a JSON object, not str", id="not_an_object"),
        pytest.param({"ToDo": "Reboot"}, True, None, "unknown job document type", id="unknown_type"),
        pytest.param({"operation": "reboot"}, True, None, "unknown operation 'reboot'", id="old_schema"),
        pytest.param(
            {**ECHO, "version": "2.0"}, True, None, "unsupported job document version", id="version"
        ),
        pytest.param({"version": "1.0"}, True, None, "steps", id="no_steps"),
        pytest.param({"version": "1.0", "steps": []}, True, None, "no steps and no finalStep", id="empty"),
        pytest.param(
            {"version": "1.0", "steps": [{"action": {"name": "x", "type": "runScript", "input": {}}}]},
            True,
            None,
            "steps.0.action.type",
            id="unknown_action_type",
        ),
        pytest.param(
            {"version": "1.0", "steps": [{"action": {"name": "x", "type": "runCommand", "input": {}}}]},
            True,
            None,
            "'command' is a required property",
            id="runcommand_without_command",
        ),
        pytest.param(
            {
                "version": "1.0",
                "steps": [
                    {"action": {"name": "x", "type": "runHandler", "input": {"handler": "../../bin/sh"}}}
                ],
            },
            True,
            "/srv/h",
            "must be a file name in the handler directory",
            id="handler_path_escape",
        ),
        pytest.param(ECHO, False, None, NO_COMMANDS, id="commands_not_allowed"),
        pytest.param(
            {
                "version": "1.0",
                "steps": [{"action": {"name": "h", "type": "runHandler", "input": {"handler": "x.sh"}}}],
            },
            True,
            None,
            "has no handler directory",
            id="no_handler_dir",
        ),
        pytest.param({"operation": "mission"}, True, None, "'action' is a required property", id="no_action"),
        pytest.param(
            {"operation": "mission", "action": "fly"},
            True,
            None,
            "action: 'fly' is not one of",
            id="bad_action",
        ),
        pytest.param(
            {"operation": "doctor", "action": "clean"},
            True,
            None,
            "not allowed for this operation",
            id="extra",
        ),
        pytest.param(
            {"operation": "collect-logs", "url": "ftp://x"}, True, None, "http(s) URL", id="bad_url"
        ),
        pytest.param(
            {"operation": "doctor", "models": ["roomba600"]},
            True,
            None,
            "this job is for robot models roomba600; this robot is a create2",
            id="wrong_model",
        ),
        pytest.param(
            {"operation": "doctor", "requires": {"battery_min_pct": 101}},
            True,
            None,
            "requires.battery_min_pct",
            id="bad_gate",
        ),
    ],
)
def test_documents_this_robot_rejects(doc: Any, allow: bool, handler_dir: str | None, reason: str) -> None:
    plan = plan_of(doc, allow, handler_dir)
    assert isinstance(plan, Rejection), plan
    assert reason in plan.reason


def test_set_settings_rejected_with_the_config_schemas_reason() -> None:
    from agent.commands import validate_sections

    settings = {"log_level": "loud"}
    plan = parse(
        {"operation": "set-settings", "settings": settings},
        model="create2",
        allow_commands=False,
        handler_dir=None,
        setting_problems=validate_sections("config", settings),
    )
    assert isinstance(plan, Rejection) and plan.reason.startswith("invalid settings: log_level")


def test_an_oversized_document_is_rejected() -> None:
    plan = plan_of({"operation": "doctor", "pad": "x" * 40000})
    assert isinstance(plan, Rejection) and "larger than 32768 bytes" in plan.reason


# --- gates and mission confirmation ---------------------------------------------------------------------
def view(**kw: Any) -> RobotView:
    base: dict[str, Any] = {
        "link_up": True,
        "docked": True,
        "charging": True,
        "battery_pct": 80,
        "mission": "docked",
        "oi_mode": "passive",
        "main_brush_ma": 0,
        "pose": (1000.0, 1000.0),
    }
    return RobotView(**{**base, **kw})


def test_gates() -> None:
    gates = Gates(docked=True, charging=True, battery_min_pct=50, idle=True)
    assert unmet(gates, view()) == []
    assert unmet(Gates(), None) == []
    assert unmet(gates, None) == ["the serial link to the robot"]
    assert unmet(gates, view(docked=False, charging=False, battery_pct=30, mission="cleaning")) == [
        "docked",
        "charging",
        "battery at least 50% (now 30%)",
        "idle (mission now cleaning)",
    ]
    assert unmet(Gates(idle=False), view()) == ["on a mission"]


def test_mission_confirmation_reads_the_sensors() -> None:
    before = view()
    assert mission_confirmed("clean", before, view()) is None
    assert mission_confirmed("clean", before, view(main_brush_ma=250)) == "main brush running (250 mA)"
    assert mission_confirmed("spot", before, view(docked=False)) == "the robot left its dock"
    undocked = view(docked=False)
    assert mission_confirmed("max", undocked, view(docked=False, pose=(1100.0, 1000.0))) == (
        "the robot moved 100 mm"
    )
    assert mission_confirmed("dock", undocked, view(docked=False)) is None
    assert mission_confirmed("dock", undocked, view()) == "docked and charging"
    assert mission_confirmed("stop", before, view(oi_mode="safe")) is None
    assert mission_confirmed("stop", before, view()) == "motors off, OI in passive mode"
    assert mission_confirmed("clean", before, view(link_up=False, main_brush_ma=250)) is None


# --- statusDetails and the device API --------------------------------------------------------------------
def test_status_details_follow_aws_limits() -> None:
    out = protocol.details(
        {
            "reason": "Exited with status: 1",
            "stdout": "x" * 2000 + "END",
            "bad key!": "v",
            "empty": "",
            "none": None,
            "number": 3,
            **{f"k{i}": "v" for i in range(20)},
        }
    )
    assert len(out) == 10
    assert out["stdout"] == ("x" * 2000 + "END")[-1024:] and len(out["stdout"]) == 1024
    assert out["bad_key_"] == "v" and out["number"] == "3"
    assert "empty" not in out and "none" not in out
    assert all(protocol.KEY_RULE.fullmatch(k) and len(v) <= 1024 for k, v in out.items())


def test_status_details_have_no_control_characters() -> None:
    """AWS's value pattern is ``[^\\p{C}]+``: newlines, tabs, carriage returns are escaped as two
    characters, other control and format characters as \\uXXXX, in every value (outputs, reasons)."""
    out = protocol.details(
        {
            "stdout": "line 1\nline 2\r\n\tend\n",
            "reason": "the agent failed running it: bad\x00byte\u200b\x1b[0m",
            "plain": "caf\u00e9 \u00a0 ok",
            "long": "\n" * 2000,
        }
    )
    assert out["stdout"] == "line 1\\nline 2\\r\\n\\tend\\n"
    assert out["reason"] == "the agent failed running it: bad\\u0000byte\\u200b\\u001b[0m"
    assert out["plain"] == "caf\u00e9 \u00a0 ok"
    assert out["long"] == "\\n" * 512
    for value in out.values():
        assert not any(unicodedata.category(ch).startswith("C") for ch in value) and len(value) <= 1024


def test_topics_and_answers() -> None:
    subs = protocol.subscriptions("r1")
    assert "$aws/things/r1/jobs/notify-next" in subs and "$aws/things/r1/jobs/+/update/+" in subs
    parse_answer = protocol.parse_answer
    assert parse_answer("$aws/things/r1/jobs/notify", "r1", b'{"jobs":{}}') == (
        "notify",
        None,
        "event",
        {"jobs": {}},
    )
    assert parse_answer("$aws/things/r1/jobs/start-next/accepted", "r1", b"{}") == (
        "start-next",
        None,
        "accepted",
        {},
    )
    assert parse_answer("$aws/things/r1/jobs/j-1/update/rejected", "r1", b'{"code":"VersionMismatch"}') == (
        "update",
        "j-1",
        "rejected",
        {"code": "VersionMismatch"},
    )
    assert (parse_answer("$aws/things/r1/jobs/j-1/get/accepted", "r1", b"{}") or ())[:3] == (
        "describe",
        "j-1",
        "accepted",
    )
    assert parse_answer("$aws/things/r2/jobs/notify", "r1", b"{}") is None
    assert parse_answer("$aws/things/r1/jobs/notify", "r1", b"not json") is None
    body = json.loads(protocol.update_request("t1", "SUCCEEDED", {"a": "b"}, 3, 1, -1))
    assert body == {
        "status": "SUCCEEDED",
        "statusDetails": {"a": "b"},
        "expectedVersion": 3,
        "executionNumber": 1,
        "includeJobExecutionState": True,
        "stepTimeoutInMinutes": -1,
        "clientToken": "t1",
    }
    assert protocol.version_of("7") == 7 and protocol.version_of(True) is None


@pytest.mark.parametrize(
    ("code", "what"),
    [
        ("RequestThrottled", "retry"),
        ("InternalError", "retry"),
        ("VersionMismatch", "reconcile"),
        ("InvalidStateTransition", "reconcile"),
        ("TerminalStateReached", "reconcile"),
        ("ResourceNotFound", "gone"),
        ("InvalidRequest", "give_up"),
    ],
)
def test_what_a_rejection_calls_for(code: str, what: str) -> None:
    assert protocol.on_rejected(code) == what


def test_a_refused_describe_of_an_ended_execution_says_how_it_ended() -> None:
    assert protocol.on_rejected("TerminalStateReached", "describe") == "terminal"
    assert protocol.on_rejected("InvalidStateTransition", "describe") == "terminal"
    assert protocol.on_rejected("ResourceNotFound", "describe") == "gone"
    state = {"code": "TerminalStateReached", "executionState": {"status": "CANCELED", "versionNumber": 3}}
    assert protocol.terminal_status(state) == "CANCELED"
    assert protocol.terminal_status({"executionState": {"status": "IN_PROGRESS"}}) is None
    assert protocol.terminal_status({"code": "TerminalStateReached"}) is None
    assert protocol.refused_details("Invalid\nRequest!") == {
        "reason": "details refused by the cloud: InvalidRequest"
    }


def test_backoff_doubles_to_a_cap() -> None:
    assert [protocol.backoff_s(n) for n in (1, 2, 3, 4, 7, 20)] == [1, 2, 4, 8, 60, 60]


# --- the journal ----------------------------------------------------------------------------------------
def entry(**kw: Any) -> Entry:
    base: dict[str, Any] = {
        "job_id": "j",
        "execution_number": 1,
        "document": {},
        "steps": [{"name": "a", "resumable": False}, {"name": "restart-agent", "resumable": True}],
        "step": -1,
        "step_state": "none",
        "progress": {},
        "final_status": None,
    }
    return Entry(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "action", "next_step", "reason"),
    [
        pytest.param({}, "continue", 0, None, id="accepted_nothing_ran"),
        pytest.param({"step": 0, "step_state": "done"}, "continue", 1, None, id="between_steps"),
        pytest.param(
            {"step": 0, "step_state": "running"},
            "fail",
            0,
            "interrupted by restart: step 1 (a) was running and is not re-run",
            id="step_cut_short",
        ),
        pytest.param({"step": 1, "step_state": "running"}, "resume", 2, None, id="resumable_step"),
        pytest.param(
            {"step": 0, "step_state": "running", "final_status": "SUCCEEDED"}, "resend", 0, None, id="decided"
        ),
        pytest.param({"final_status": "REJECTED"}, "resend", 0, None, id="rejected_unreported"),
    ],
)
def test_recovery_decisions(kw: dict[str, Any], action: str, next_step: int, reason: str | None) -> None:
    decision = recovery(entry(**kw))
    assert (decision.action, decision.next_step, decision.reason) == (action, next_step, reason)


def test_journal_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    db = sqlite3.connect(path, isolation_level=None)
    journal = Journal(db)
    key = ("job-1", 2)
    assert journal.accept(key, ECHO, [{"name": "Say hello", "resumable": False}], 2) is True
    assert journal.accept(key, ECHO, [], 2) is False  # a redelivery is not a new execution
    journal.step_started(key, 0, {"stdout": ""})
    db.close()

    db = sqlite3.connect(path, isolation_level=None)
    journal = Journal(db)
    (open_entry,) = journal.open()
    assert open_entry.key == key and open_entry.document == ECHO and open_entry.version == 2
    assert recovery(open_entry).action == "fail"
    journal.finished(key, "FAILED", {"reason": "interrupted by restart"})
    assert recovery(journal.get(key)).action == "resend"  # type: ignore[arg-type]
    assert journal.last().final_status == "FAILED"  # type: ignore[union-attr]
    journal.reported(key)
    assert journal.open() == [] and journal.counts() == {"FAILED": 1}


# --- config -----------------------------------------------------------------------------------------------
def test_jobs_config_defaults_are_the_schemas() -> None:
    for f in fields(cfg.JobsConfig):
        assert cfg.default_of(f"jobs.{f.name}") == f.default, f.name
    doc = {
        "thing_name": "r1",
        "connection": {"endpoint": "127.0.0.1", "root_ca": "/a", "cert": "/b", "key": "/c"},
        "robot": {"serial_port": "/dev/null"},
        "jobs": {"allow_commands": True, "handler_dir": "/srv/h", "step_timeout_s": 5},
    }
    config, problems = cfg.validate(doc)
    assert problems == [] and config is not None
    assert config.jobs == cfg.JobsConfig(allow_commands=True, handler_dir="/srv/h", step_timeout_s=5.0)
    assert cfg.effective(config)["jobs"]["allow_commands"] is True
    _, problems = cfg.validate({**doc, "jobs": {"allow_comands": True}})
    assert problems == ["jobs.allow_comands: unknown key (did you mean allow_commands?)"]


# --- running commands and handlers --------------------------------------------------------------------
def action_of(doc: dict[str, Any], handler_dir: str | None = None) -> Any:
    plan = plan_of(doc, handler_dir=handler_dir)
    assert isinstance(plan, DeviceClientPlan), plan
    return plan.steps[0]


def command(cmd: str, **extra: Any) -> dict[str, Any]:
    return {
        "version": "1.0",
        "steps": [{"action": {"name": "c", "type": "runCommand", "input": {"command": cmd}, **extra}}],
    }


def test_run_command_keeps_the_last_1024_characters() -> None:
    ok = asyncio.run(run_action(action_of(ECHO), None, 30))
    assert ok.ok and ok.stdout == "Hello World!\n" and ok.reason is None
    script = "import sys; sys.stdout.write('a' * 5000 + 'END'); sys.stderr.write('oops'); sys.exit(3)"
    failed = asyncio.run(run_action(action_of(command(f"{sys.executable},-c,{script}")), None, 30))
    assert failed.reason == "Exited with status: 3"
    assert len(failed.stdout) == 1024 and failed.stdout.endswith("aEND") and failed.stderr == "oops"


def test_run_command_timeout_kills_it() -> None:
    result = asyncio.run(run_action(action_of(command("sleep,30")), None, 0.3))
    assert result.ok is False and result.reason == "Timed out after 0.3 s"


def test_run_command_timeout_covers_a_step_that_closes_its_output(tmp_path: Path) -> None:
    """The timeout is one deadline for the output and the exit: a step that closes stdout and stderr and
    runs on is killed too (with its process group)."""
    pidfile = tmp_path / "pid"
    cmd = f"sh,-c,echo $$ > {pidfile}; exec >/dev/null 2>&1; exec sleep 100000"

    async def main() -> Any:
        return await asyncio.wait_for(run_action(action_of(command(cmd)), None, 0.3), 30)

    result = asyncio.run(main())
    assert result.ok is False and result.reason == "Timed out after 0.3 s"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


def test_run_command_not_found() -> None:
    result = asyncio.run(run_action(action_of(command("no-such-program-xyz")), None, 5))
    assert result.ok is False and result.reason == "command not found: no-such-program-xyz"


def test_handler_dir_must_be_0700_and_ours(tmp_path: Path) -> None:
    hdir = tmp_path / "handlers"
    hdir.mkdir(mode=0o755)
    os.chmod(hdir, 0o755)
    assert check_handler_dir(str(hdir)) == (
        f"the handler directory {hdir} must be mode 0700, not 0755 (chmod 700 {hdir})"
    )
    assert "must be owned by the agent's user" in (check_handler_dir(str(hdir), uid=os.getuid() + 1) or "")
    assert (
        check_handler_dir(str(tmp_path / "nope"))
        == f"the handler directory {tmp_path / 'nope'} does not exist"
    )
    os.chmod(hdir, 0o700)
    assert check_handler_dir(str(hdir)) is None
    handler = hdir / "hello.sh"
    handler.write_text('#!/bin/sh\necho "user=[$1] args=$2,$3"\n')
    os.chmod(handler, 0o700)
    doc = {
        "version": "1.0",
        "steps": [
            {
                "action": {
                    "name": "h",
                    "type": "runHandler",
                    "input": {"handler": "hello.sh", "args": ["a", "b"]},
                    "runAsUser": "nobody",
                }
            }
        ],
    }
    result = asyncio.run(run_action(action_of(doc, str(hdir)), str(hdir), 10))
    assert result.ok and result.stdout == "user=[nobody] args=a,b\n"
    os.chmod(handler, 0o722)
    refused = asyncio.run(run_action(action_of(doc, str(hdir)), str(hdir), 10))
    assert refused.ok is False and "writable by it alone" in (refused.reason or "")


# --- roomba-agent status ----------------------------------------------------------------------------------
def test_status_shows_the_current_job_and_the_last_result() -> None:
    from agent.status import job_lines

    jobs = {
        "enabled": True,
        "subscribed": True,
        "pending": 2,
        "current": {
            "job_id": "clean-7",
            "execution_number": 1,
            "phase": "waiting",
            "step": None,
            "waiting_for": "docked",
        },
        "last": {
            "job_id": "echo-1",
            "status": "FAILED",
            "reason": "Exited with status: 1",
            "reported": False,
        },
    }
    counters = {"jobs_succeeded": 3, "jobs_failed": 1}
    assert job_lines(jobs, counters) == [
        "  jobs        subscribed; succeeded 3, failed 1, rejected 0, ended by the cloud 0; pending 2",
        "  job now     clean-7 (execution 1): waiting, waiting for docked",
        "  last job    echo-1: FAILED (Exited with status: 1), not yet reported",
    ]
    assert job_lines({"enabled": False}, counters) == []
