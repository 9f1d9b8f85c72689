"""The jobs feature end to end: the real agent process, ``roomba-sim`` on a pty and the real local cloud
(Mosquitto over mutual TLS + the iot service's Jobs), jobs created with boto3 through the ``local`` profile.

A Device Client schema 1.0 runCommand document succeeds with its output; a mission job reaches the robot
as the right OI opcode exactly once; the agent SIGKILLed during a job and restarted never reruns the step;
a broker restart in the middle of a job loses nothing; an invalid document is REJECTED with a reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from base.testing import wait_until

CLEAN = 135
BIN = Path(sys.executable).parent


def allow_commands(rig: dict[str, Any]) -> None:
    config: Path = rig["config"]
    config.write_text(config.read_text() + "\n[jobs]\nallow_commands = true\nrequest_timeout_s = 3\n")


def iot(rig: dict[str, Any]) -> Any:
    client = rig["cloud"].boto3_client("iot")
    try:
        client.create_thing(thingName=rig["thing"])
    except client.exceptions.ResourceAlreadyExistsException:
        pass
    return client


def create_job(client: Any, rig: dict[str, Any], job_id: str, document: Any) -> None:
    arn = client.describe_thing(thingName=rig["thing"])["thingArn"]
    client.create_job(jobId=job_id, targets=[arn], document=json.dumps(document), targetSelection="SNAPSHOT")


def execution(client: Any, rig: dict[str, Any], job_id: str) -> dict[str, Any]:
    return dict(client.describe_job_execution(jobId=job_id, thingName=rig["thing"])["execution"])


def wait_status(
    client: Any, rig: dict[str, Any], job_id: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        e = execution(client, rig, job_id)
        return e if e["status"] == status else None

    try:
        return wait_until(done, timeout, f"{job_id} {status}", interval=0.2)
    except AssertionError:
        raise AssertionError(
            f"{job_id}: {execution(client, rig, job_id)}\nagent log:\n{rig['agent'].logs()}"
        ) from None


def processes_mentioning(text: str) -> list[int]:
    """Pids of this user's processes whose command line holds ``text`` (the step a test started)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def details(e: dict[str, Any]) -> dict[str, str]:
    return dict(e.get("statusDetails", {}).get("detailsMap", {}))


def started(rig: dict[str, Any]) -> Any:
    agent = rig["agent"].start()
    wait_until(lambda: (agent.status().get("jobs") or {}).get("subscribed"), 30, "jobs subscribed")
    return agent


@pytest.mark.slow
def test_run_command_succeeds_and_invalid_document_is_rejected(rig: dict[str, Any]) -> None:
    allow_commands(rig)
    client = iot(rig)
    agent = started(rig)
    create_job(
        client,
        rig,
        "echo-1",
        {
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
        },
    )
    done = wait_status(client, rig, "echo-1", "SUCCEEDED")
    assert details(done) == {"stdout": "Hello World!\\n"}

    create_job(client, rig, "bad-1", {"operation": "mission", "action": "fly"})
    rejected = wait_status(client, rig, "bad-1", "REJECTED")
    assert details(rejected)["reason"].startswith("invalid job document: action: 'fly' is not one of")

    def last_is_bad() -> dict[str, Any] | None:
        doc = agent.status()
        last = (doc.get("jobs") or {}).get("last") or {}
        return doc if last.get("job_id") == "bad-1" else None

    doc = wait_until(last_is_bad, 10, "the status file shows the last job")
    counters = doc["metrics"]["counters"]
    assert counters["jobs_succeeded"] == 1 and counters["jobs_rejected"] == 1
    shown = subprocess.run(
        [str(BIN / "roomba-agent"), "status", "--config", str(rig["config"])],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert (
        "succeeded 1, failed 0, rejected 1" in shown
        and "last job    bad-1: REJECTED (invalid job document" in shown
    )
    assert agent.stop() == 0
    assert agent.tracebacks() == []


@pytest.mark.slow
def test_mission_job_reaches_the_robot_once(rig: dict[str, Any]) -> None:
    client = iot(rig)
    agent = started(rig)
    sim = rig["sim"]
    create_job(
        client,
        rig,
        "clean-1",
        {"operation": "mission", "action": "clean", "requires": {"battery_min_pct": 10}},
    )
    done = wait_status(client, rig, "clean-1", "SUCCEEDED")
    assert details(done)["operation"] == "mission" and details(done)["action"] == "clean"
    assert details(done)["confirmed"]
    assert sim.opcodes().count(CLEAN) == 1
    assert agent.stop() == 0
    assert agent.tracebacks() == []


@pytest.mark.slow
def test_sigkill_during_a_step_never_reruns_it(rig: dict[str, Any]) -> None:
    allow_commands(rig)
    client = iot(rig)
    marker = rig["tmp"] / "runs.txt"
    agent = started(rig)
    create_job(
        client,
        rig,
        "long-1",
        {
            "version": "1.0",
            "steps": [
                {
                    "action": {
                        "name": "long",
                        "type": "runCommand",
                        "input": {"command": f"sh,-c,echo run >> {marker}; sleep 30"},
                    }
                }
            ],
        },
    )
    wait_until(lambda: marker.exists() and marker.read_text(), 30, "the step started")
    os.killpg(agent.proc.pid, signal.SIGKILL)  # the agent and (below) its step, as a power cut would
    agent.proc.wait()
    for pid in processes_mentioning(str(marker)):  # the step runs in a process group of its own
        os.killpg(os.getpgid(pid), signal.SIGKILL)
    assert execution(client, rig, "long-1")["status"] == "IN_PROGRESS"
    started(rig)
    failed = wait_status(client, rig, "long-1", "FAILED")
    assert details(failed)["reason"] == "interrupted by restart: step 1 (long) was running and is not re-run"
    assert marker.read_text() == "run\n"
    assert agent.stop() == 0


@pytest.mark.slow
def test_broker_restart_mid_job_loses_nothing(rig: dict[str, Any]) -> None:
    allow_commands(rig)
    client = iot(rig)
    cloud = rig["cloud"]
    marker = rig["tmp"] / "runs.txt"
    agent = started(rig)
    create_job(
        client,
        rig,
        "slow-1",
        {
            "version": "1.0",
            "includeStdOut": True,
            "steps": [
                {
                    "action": {
                        "name": "slow",
                        "type": "runCommand",
                        "input": {"command": f"sh,-c,echo run >> {marker}; sleep 4; echo done"},
                    }
                }
            ],
        },
    )
    wait_until(lambda: marker.exists() and marker.read_text(), 30, "the step started")
    old = cloud.child_pid("mosquitto")
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: cloud.child_pid("mosquitto") not in (None, old), 30, "mosquitto restarted")
    done = wait_status(client, rig, "slow-1", "SUCCEEDED", timeout=60)
    assert details(done) == {"stdout": "done\\n"}
    assert marker.read_text() == "run\n"
    assert agent.stop() == 0
    assert agent.tracebacks() == []


class PutSink:
    """An HTTP server that takes PUTs (a presigned upload URL's stand-in) and keeps what it got."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.bodies: list[tuple[str, bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                sink.bodies.append((self.path, self.rfile.read(length)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_built_in_operations(rig: dict[str, Any]) -> None:
    """set-settings, doctor, collect-logs and restart-agent (the agent execs itself; the job is resumed and
    reported SUCCEEDED by the agent that comes back)."""
    client = iot(rig)
    agent = started(rig)
    create_job(client, rig, "settings-1", {"operation": "set-settings", "settings": {"metrics_s": 30}})
    assert details(wait_status(client, rig, "settings-1", "SUCCEEDED")) == {
        "operation": "set-settings",
        "applied": "metrics_s",
    }
    wait_until(lambda: agent.status().get("settings", {}).get("metrics_s") == 30, 10, "the setting applied")

    create_job(client, rig, "doctor-1", {"operation": "doctor"})
    report = details(wait_status(client, rig, "doctor-1", "SUCCEEDED", timeout=60))
    assert report["doctor_ok"] == "true", report
    assert "jobs subscription" in report["passed"] and "mqtt connect" in report["passed"]

    sink = PutSink()
    try:
        create_job(client, rig, "logs-1", {"operation": "collect-logs", "url": sink.url + "/bundle?sig=1"})
        uploaded = details(wait_status(client, rig, "logs-1", "SUCCEEDED"))
        (path, body), *_ = sink.bodies
        bundle = json.loads(body)
        assert path == "/bundle?sig=1" and uploaded["http_status"] == "200"
        assert uploaded["uploaded_bytes"] == str(len(body))
        assert (
            bundle["thing_name"] == rig["thing"] and bundle["status"]["jobs"]["current"]["job_id"] == "logs-1"
        )
    finally:
        sink.close()

    pid = agent.proc.pid
    create_job(client, rig, "restart-1", {"operation": "restart-agent"})
    resumed = details(wait_status(client, rig, "restart-1", "SUCCEEDED", timeout=60))
    assert resumed["resumed"] == "agent restarted"
    assert agent.proc.poll() is None and agent.status()["pid"] == pid  # the same process, exec'd again
    wait_until(
        lambda: agent.status()["metrics"]["counters"].get("jobs_resumed") == 1, 10, "the new agent's status"
    )
    assert agent.stop() == 0
    assert agent.tracebacks() == []
