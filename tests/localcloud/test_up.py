"""``roomba-fleet up`` as a process: its ready banner (and its paste-ready ``mosquitto_sub`` line, run for real;
``--json``), supervision of the broker and the shadow service (restart after a crash, nothing left running
after a stop or a SIGKILL), shadows persisting across restarts, a predecessor's leftovers, and the clear error
when mosquitto is missing."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from base.process import pid_alive
from base.testing import wait_until
from localcloud.opclient import CloudNotRunning, shadow_request
from localcloud.testing import LocalCloud, free_port

pytestmark = pytest.mark.slow


def _answered_get(cloud: LocalCloud, thing: str) -> dict[str, Any] | None:
    """The accepted ``get`` document, or None while the cloud is (re)starting."""
    try:
        accepted, doc = shadow_request(cloud.dir, thing, "get")
    except CloudNotRunning:
        return None
    return doc if accepted else None


def test_up_prints_endpoint_port_and_ca_when_ready(local_cloud: LocalCloud) -> None:
    banner = "\n".join(local_cloud.output)
    assert "endpoint: 127.0.0.1" in banner
    assert f"port:     {local_cloud.port}" in banner
    assert f"ca:       {local_cloud.ca_path}" in banner
    assert local_cloud.output[-1] == "ready"
    assert local_cloud.ca_path.is_file()
    assert any(line.strip().startswith("mosquitto_sub ") for line in local_cloud.output), banner


def _printed_mosquitto_sub(cloud: LocalCloud) -> str:
    (line,) = [x.strip() for x in cloud.output if x.strip().startswith("mosquitto_sub ")]
    return line


def test_the_printed_mosquitto_sub_line_shows_what_a_robot_publishes(
    local_cloud: LocalCloud, paho_robot: Any
) -> None:
    """Pasted as printed into a shell (the real mosquitto_sub of mosquitto-clients), it connects as the
    operator and shows a robot's shadow update and the service's answer."""
    assert shutil.which("mosquitto_sub"), "mosquitto-clients is missing: run make setup"
    line = _printed_mosquitto_sub(local_cloud)
    argv = shlex.split(line)
    assert argv[argv.index("-p") + 1] == str(local_cloud.port) and argv[argv.index("-h") + 1] == "127.0.0.1"
    assert all(Path(argv[argv.index(o) + 1]).is_absolute() for o in ("--cafile", "--cert", "--key"))
    sub = subprocess.Popen(
        ["bash", "-c", line],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen: list[str] = []

    def read() -> None:
        assert sub.stdout is not None
        for out in sub.stdout:
            seen.append(out)

    threading.Thread(target=read, daemon=True).start()
    thing = f"subbed-{uuid.uuid4().hex[:6]}"
    token = uuid.uuid4().hex
    robot = paho_robot(local_cloud, thing)
    update = {"state": {"reported": {"watched": token}}, "clientToken": token}

    def seen_both() -> bool:
        assert sub.poll() is None, sub.stderr.read() if sub.stderr else ""
        topics = {x.split(" ", 1)[0] for x in seen if token in x}
        if f"$aws/things/{thing}/shadow/update" not in topics:
            robot.publish(f"$aws/things/{thing}/shadow/update", update)  # again: the subscription may be late
            return False
        return f"$aws/things/{thing}/shadow/update/accepted" in topics

    try:
        wait_until(seen_both, 20, "the robot's update and its acceptance in mosquitto_sub's output", 0.2)
    finally:
        os.killpg(sub.pid, signal.SIGTERM)
        sub.wait(10)


def test_up_json_prints_the_connection_details_once_ready(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.cli",
            "up",
            "--json",
            "--dir",
            str(tmp_path / "c"),
            "--port",
            f"{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    cloud = LocalCloud(tmp_path / "c", port, proc, owns_dir=False)  # type: ignore[arg-type]
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["ready"] is True and info["port"] == port and info["endpoint"] == "127.0.0.1"
        assert info["dir"] == str(tmp_path / "c") and info["pid"] == proc.pid
        assert Path(info["ca"]) == cloud.ca_path and cloud.ca_path.is_file()
        assert Path(info["operator"]["cert"]).is_file() and Path(info["operator"]["key"]).is_file()
        assert f"-p {port}" in info["mosquitto_sub"]
        assert cloud.get_shadow("nobody-yet")[1]["code"] == 404, "not ready when it said so"
    finally:
        cloud.stop()


def test_up_without_mosquitto_explains_how_to_install(tmp_path: Path) -> None:
    env = dict(os.environ, ROOMBA_MOSQUITTO=str(tmp_path / "no-such-mosquitto"))
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "up", "--dir", str(tmp_path / "c"), "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "apt-get install -y mosquitto" in proc.stderr and "make setup" in proc.stderr


@pytest.mark.parametrize("port", ["70000", "0", "mqtt"])
def test_up_refuses_a_port_that_is_not_one_before_touching_the_directory(tmp_path: Path, port: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "up", "--dir", str(tmp_path / "c"), "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert "not a port number" in line and "see roomba-fleet up --help" in line
    assert not (tmp_path / "c").exists()


def test_broker_runs_with_a_raised_open_file_limit_and_logs_to_a_file(local_cloud: LocalCloud) -> None:
    pid = local_cloud.child_pid("mosquitto")
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    (line,) = [x for x in limits if x.startswith("Max open files")]
    assert int(line.split()[3]) > 1024
    assert "mosquitto version" in local_cloud.dir.broker_log.read_text()


def test_up_restarts_crashed_children_and_shadows_persist_across_restarts(
    new_cloud: Callable[..., LocalCloud],
) -> None:
    cloud = new_cloud()
    assert cloud.update_shadow("keeper", {"state": {"reported": {"n": 1}}})[0]
    assert cloud.update_shadow("keeper", {"state": {"desired": {"n": 2}}})[0]

    old_service = cloud.child_pid("shadow-service")
    os.kill(old_service, signal.SIGKILL)
    wait_until(lambda: cloud.run_info()["restarts"]["shadow-service"] == 1, 20, "service restart", 0.1)
    accepted, doc = shadow_request(cloud.dir, "keeper", "get", timeout=15)
    assert accepted and doc["version"] == 2, "shadow lost or service not back after a crash"

    old_broker = cloud.child_pid("mosquitto")
    os.kill(old_broker, signal.SIGKILL)
    wait_until(lambda: cloud.run_info()["restarts"]["mosquitto"] == 1, 20, "broker restart", 0.1)
    doc = wait_until(lambda: _answered_get(cloud, "keeper"), 20, "a shadow get after the broker restart", 0.2)
    assert doc["state"]["delta"] == {"n": 2}
    stderr = (cloud.dir.root / "up.stderr").read_text()
    assert "shadow-service exited" in stderr and "restarting in" in stderr

    children = cloud.run_info()["children"].values()
    cloud.stop()
    assert not any(pid_alive(pid) for pid in children), "up left a child running after SIGTERM"

    again = new_cloud()
    accepted, doc = again.get_shadow("keeper")
    assert accepted
    assert doc["version"] == 2
    assert doc["state"] == {"reported": {"n": 1}, "desired": {"n": 2}, "delta": {"n": 2}}


def test_requests_sent_while_the_service_restarts_are_answered_when_it_is_back(
    new_cloud: Callable[..., LocalCloud], paho_robot: Any
) -> None:
    cloud = new_cloud()
    robot = paho_robot(cloud, "patient")
    robot.subscribe("$aws/things/patient/shadow/update/accepted")
    os.kill(cloud.child_pid("shadow-service"), signal.SIGKILL)
    robot.publish(
        "$aws/things/patient/shadow/update", {"state": {"reported": {"ok": 1}}, "clientToken": "queued"}
    )
    got = robot.collect(1, timeout=20)
    assert got and got[0][1]["clientToken"] == "queued"
    assert cloud.run_info()["restarts"]["shadow-service"] == 1


def test_children_die_with_a_sigkilled_up_and_the_next_up_starts(
    new_cloud: Callable[..., LocalCloud],
) -> None:
    cloud = new_cloud()
    assert cloud.update_shadow("orphan", {"state": {"reported": {"n": 1}}})[0]
    children = [cloud.child_pid("mosquitto"), cloud.child_pid("shadow-service")]
    os.kill(cloud.proc.pid, signal.SIGKILL)
    cloud.proc.wait()
    wait_until(lambda: not any(pid_alive(pid) for pid in children), 20, "the children of a SIGKILLed up", 0.1)
    again = new_cloud()
    accepted, doc = again.get_shadow("orphan")
    assert accepted and doc["state"]["reported"] == {"n": 1}


def test_up_stops_what_a_predecessor_left_and_refuses_a_second_up(
    new_cloud: Callable[..., LocalCloud], tmp_path: Path
) -> None:
    from localcloud.layout import CloudDir
    from localcloud.up import clean_up_after_predecessor

    cloud = new_cloud()
    cloud_dir = CloudDir.at(tmp_path / "cloud")
    problem = clean_up_after_predecessor(cloud_dir)
    assert problem is not None and "already running" in problem and str(cloud.proc.pid) in problem
    conf_before = cloud_dir.broker_conf.read_text()
    second = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "up", *cloud.cli_args, "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1 and "already running" in second.stderr
    assert cloud_dir.broker_conf.read_text() == conf_before, "a refused up rewrote the running cloud's files"
    # A child left behind (as if `up` had died where the kernel cannot signal its children).
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", str(cloud_dir.root)], stdin=subprocess.DEVNULL
    )
    cloud_dir.run_file.write_text(json.dumps({"pid": 2**22 + 1, "children": {"mosquitto": stray.pid}}))
    assert clean_up_after_predecessor(cloud_dir) is None
    assert stray.wait(10) == -signal.SIGTERM
    assert not cloud_dir.run_file.exists()
