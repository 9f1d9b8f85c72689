"""The agent's own job operations (``schemas/job-robot.schema.json``), each one step.

``mission`` sends the mission's OI command once and is done when the robot's sensors confirm it (the
main brush runs or the robot leaves its dock; docked; motors off) within ``timeout_s``. ``doctor`` runs
``roomba-agent doctor``'s stages beside the running agent and puts a summary into statusDetails.
``collect-logs`` PUTs a JSON bundle (status document, recent jobs, the journal's log lines when systemd
runs the agent) to a presigned URL. ``set-settings`` applies agent settings as the ``config`` shadow does.
``restart-agent`` is the feature's (it needs the journal around it).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

from agent.commands import Command
from agent.config import AgentConfig
from agent.jobs.document import RobotView, mission_confirmed
from agent.jobs.protocol import tail
from agent.jobs.runner import StepResult
from agent.parts import RobotSide

LOG_LINES = 2000
UPLOAD_TIMEOUT_S = 60.0


async def on_worker(robot: RobotSide, fn: Callable[[], None]) -> BaseException | None:
    """Run a blocking robot call on the robot worker; its exception (None when it worked)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[BaseException | None] = loop.create_future()

    def done(exc: BaseException | None) -> None:
        def settle() -> None:
            if not fut.done():
                fut.set_result(exc)

        loop.call_soon_threadsafe(settle)

    robot.worker.submit(fn, done)
    return await fut


async def mission(
    robot: RobotSide,
    view: Callable[[], RobotView | None],
    action: str,
    timeout_s: float,
    command_id: str,
    on_sent: Callable[[str], None],
    poll_s: float = 0.2,
) -> tuple[StepResult, dict[str, str]]:
    before = view()
    if before is None or not before.link_up:
        return StepResult(False, "the serial link to the robot is down"), {}
    cmd = Command(command_id, action)
    error = await on_worker(robot, lambda: robot.link.run(cmd))
    if error is not None:
        return StepResult(False, f"the robot did not take {action}: {error}"), {}
    on_sent(action)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        now = view()
        if now is not None:
            why = mission_confirmed(action, before, now)
            if why is not None:
                return StepResult(True, None), {"confirmed": why}
        if loop.time() >= deadline:
            return StepResult(
                False, f"the robot's sensors did not confirm {action} within {timeout_s:g} s"
            ), {}
        await asyncio.sleep(poll_s)


def run_doctor(config: AgentConfig, timeout: float = 10.0) -> dict[str, Any]:
    """``roomba-agent doctor``'s stages with this agent's configuration (blocking: run it in a thread).
    Beside the running agent the MQTT and robot stages are judged from its status file."""
    from dataclasses import asdict

    from agent import doctor

    d = doctor.Doctor(None, {}, timeout)
    d.config = config
    d.add("config", "passed", f"the running agent's configuration (thing {config.thing_name})")
    d.running = d.read_running()
    for stage in (
        d.check_file_modes,
        d.check_certificates,
        d.check_clock,
        d.check_dns,
        d.check_tcp,
        d.check_tls,
        d.check_mqtt,
        d.check_jobs,
        d.check_robot,
    ):
        stage()
    code = doctor.exit_code(d.results)
    return {"ok": code == 0, "exit_code": code, "checks": [asdict(c) for c in d.results]}


def doctor_details(report: Mapping[str, Any]) -> dict[str, str]:
    """The report in at most 10 statusDetails pairs: the verdict, names per outcome, each failure's detail."""
    checks = list(report.get("checks", []))
    by: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}
    for c in checks:
        by.setdefault(str(c["status"]), []).append(str(c["name"]))
    out = {
        "doctor_ok": "true" if report.get("ok") else "false",
        "passed": ", ".join(by["passed"]),
        "failed": ", ".join(by["failed"]),
        "skipped": ", ".join(by["skipped"]),
    }
    for c in checks:
        if c["status"] == "failed" and len(out) < 10:
            key = "fail:" + "".join(ch if ch.isalnum() else "_" for ch in str(c["name"]))
            out[key] = tail(f"{c['detail']}" + (f" (fix: {c['fix']})" if c.get("fix") else ""))
    return {k: v for k, v in out.items() if v}


def journal_lines(lines: int = LOG_LINES) -> str:
    """The agent's recent log lines from journald when systemd runs it, else why there are none."""
    from agent.doctor import unit_of

    unit = unit_of(os.getpid())
    if unit is None or shutil.which("journalctl") is None:
        return "the agent's logs go to its stderr (it does not run under systemd): not collected"
    try:
        done = subprocess.run(
            ["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"journalctl failed: {exc}"
    return done.stdout or done.stderr


def put(url: str, body: bytes, content_type: str = "application/json") -> int:
    """HTTP PUT (blocking); the status code, or raises OSError with a readable message."""
    import urllib.error  # here, not at the top: urllib pulls in http and email (2 MB the agent needs
    import urllib.request  # only for a collect-logs job)

    req = urllib.request.Request(url, data=body, method="PUT", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=UPLOAD_TIMEOUT_S) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        text = exc.read()[:300].decode(errors="replace")
        raise OSError(f"the upload was refused: HTTP {exc.code} {text}".strip()) from None
    except urllib.error.URLError as exc:
        raise OSError(f"the upload failed: {exc.reason}") from None


def collect(url: str, bundle: Mapping[str, Any]) -> tuple[StepResult, dict[str, str]]:
    """Blocking: PUT the bundle (plus the journal's lines) to ``url``."""
    body = json.dumps({**bundle, "log": journal_lines(), "collected_at": round(time.time(), 3)}).encode()
    try:
        status = put(url, body)
    except OSError as exc:
        return StepResult(False, str(exc)), {}
    return StepResult(True, None), {"uploaded_bytes": str(len(body)), "http_status": str(status)}
