"""``roomba-fleet`` commands end to end: robot add, shadow get/update/delete, watch, up's supervision,
persistence across restarts, and the clear errors when the cloud is not running or mosquitto is missing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from base.process import pid_alive
from fleet.cli import main
from localcloud.testing import LocalCloud

pytestmark = pytest.mark.slow


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_robot_add_writes_contract_config_and_prints_its_path_last(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _err = run_cli(
        capsys, "robot", "add", "cli-robot", *local_cloud.cli_args, "--serial-port", "socket://127.0.0.1:7123"
    )
    assert code == 0
    path = Path(out.strip().splitlines()[-1])
    config = tomllib.loads(path.read_text())
    assert config["thing_name"] == "cli-robot"
    assert Path(config["state_dir"]).is_relative_to(local_cloud.dir.root)
    conn = config["connection"]
    assert (conn["endpoint"], conn["port"], conn["local"]) == ("127.0.0.1", local_cloud.port, True)
    for key in ("root_ca", "cert", "key"):
        assert Path(conn[key]).is_file()
    assert config["robot"] == {"serial_port": "socket://127.0.0.1:7123", "model": "create2"}
    assert os.stat(conn["key"]).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["bad name", "local-cloud-operator", "x" * 129])
def test_robot_add_refuses_bad_names(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, _out, err = run_cli(capsys, "robot", "add", name, *local_cloud.cli_args)
    assert code == 1 and "roomba-fleet robot add:" in err


def test_shadow_commands_print_json(local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]) -> None:
    d = local_cloud.cli_args
    code, out, err = run_cli(capsys, "shadow", "get", "op-robot", *d)
    assert code == 1 and json.loads(out)["code"] == 404 and "404" in err
    code, out, _ = run_cli(capsys, "shadow", "update", "op-robot", '{"state":{"desired":{"power":"on"}}}', *d)
    assert code == 0 and json.loads(out)["version"] == 1
    code, out, _ = run_cli(capsys, "shadow", "get", "op-robot", *d)
    doc = json.loads(out)
    assert code == 0 and doc["state"] == {"desired": {"power": "on"}, "delta": {"power": "on"}}
    code, out, _ = run_cli(
        capsys, "shadow", "update", "op-robot", '{"state":{"desired":{"v":1}}}', "--name", "cfg", *d
    )
    assert code == 0 and json.loads(out)["version"] == 1
    code, out, _ = run_cli(capsys, "shadow", "update", "op-robot", '{"state":{"bogus":{}}}', *d)
    assert code == 1 and json.loads(out)["message"] == "State contains an invalid node: 'bogus'"
    code, _out, err = run_cli(capsys, "shadow", "update", "op-robot", "{oops", *d)
    assert code == 2 and "not valid JSON" in err
    code, out, _ = run_cli(capsys, "shadow", "delete", "op-robot", *d)
    assert code == 0 and json.loads(out)["version"] == 1
    code, out, _ = run_cli(capsys, "shadow", "get", "bad.name", *d)
    assert code == 1 and (json.loads(out)["code"], json.loads(out)["message"]) == (400, "Invalid thing name")
    code, out, _ = run_cli(capsys, "shadow", "get", "op-robot", "--name", "x" * 65, *d)
    assert code == 1 and json.loads(out)["message"] == "Invalid shadow name"
    code, _out, err = run_cli(capsys, "shadow", "get", "a/b", *d)
    assert code == 2 and "cannot be part of an MQTT topic" in err


def test_commands_say_clearly_when_the_cloud_is_not_running(
    new_cloud: Callable[..., LocalCloud], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cloud = new_cloud()
    cloud.stop()
    for argv in (["shadow", "get", "r1"], ["watch", "--once", "--json"]):
        code, _out, err = run_cli(capsys, *argv, *cloud.cli_args)
        assert code == 2
        assert "is not running" in err and "roomba-fleet up --dir" in err
    code, _out, err = run_cli(capsys, "shadow", "get", "r1", "--dir", str(tmp_path / "nothing-here"))
    assert code == 2 and "not a local cloud directory" in err


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


def test_watch_shows_presence_and_reported_state(
    local_cloud: LocalCloud, paho_robot: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    local_cloud.add_robot("watch-never")
    robot = paho_robot(local_cloud, "watch-robot", will=json.dumps({"state": "offline"}).encode())
    robot.subscribe("$aws/things/watch-robot/shadow/update/accepted")
    robot.publish("roomba/watch-robot/presence", {"state": "online"}, retain=True)
    robot.publish("$aws/things/watch-robot/shadow/update", {"state": {"reported": {"battery": 77}}})
    assert robot.collect(1)
    code, out, _ = run_cli(capsys, "watch", "--once", "--json", *local_cloud.cli_args)
    assert code == 0
    rows = {r["thing"]: r for r in json.loads(out)["robots"]}
    assert rows["watch-robot"]["connection"] == "online"
    assert rows["watch-robot"]["reported"] == {"battery": 77}
    assert rows["watch-robot"]["version"] == 1
    assert rows["watch-never"]["connection"] == "never"

    robot.client.loop_stop()
    sock = robot.client.socket()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        code, out, _ = run_cli(capsys, "watch", "--once", "--json", *local_cloud.cli_args)
        rows = {r["thing"]: r for r in json.loads(out)["robots"]}
        if rows["watch-robot"]["connection"] == "offline":
            break
        time.sleep(0.2)
    assert rows["watch-robot"]["connection"] == "offline"


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_up_restarts_crashed_children_and_shadows_persist_across_restarts(
    new_cloud: Callable[..., LocalCloud], capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = new_cloud()
    d = cloud.cli_args
    assert run_cli(capsys, "shadow", "update", "keeper", '{"state":{"reported":{"n":1}}}', *d)[0] == 0
    assert run_cli(capsys, "shadow", "update", "keeper", '{"state":{"desired":{"n":2}}}', *d)[0] == 0

    old_service = cloud.child_pid("shadow-service")
    os.kill(old_service, signal.SIGKILL)
    assert _wait_for(lambda: cloud.run_info()["restarts"]["shadow-service"] == 1)
    code, out, _ = run_cli(capsys, "shadow", "get", "keeper", "--timeout", "15", *d)
    assert code == 0 and json.loads(out)["version"] == 2, "shadow lost or service not back after a crash"

    old_broker = cloud.child_pid("mosquitto")
    os.kill(old_broker, signal.SIGKILL)
    assert _wait_for(lambda: cloud.run_info()["restarts"]["mosquitto"] == 1)
    code = 2
    deadline = time.monotonic() + 20
    while code != 0 and time.monotonic() < deadline:
        code, out, _ = run_cli(capsys, "shadow", "get", "keeper", *d)
        time.sleep(0.2)
    assert code == 0 and json.loads(out)["state"]["delta"] == {"n": 2}
    stderr = (cloud.dir.root / "up.stderr").read_text()
    assert "shadow-service exited" in stderr and "restarting in" in stderr

    children = cloud.run_info()["children"].values()
    cloud.stop()
    assert not any(pid_alive(pid) for pid in children), "up left a child running after SIGTERM"

    again = new_cloud()
    code, out, _ = run_cli(capsys, "shadow", "get", "keeper", *again.cli_args)
    doc = json.loads(out)
    assert code == 0
    assert doc["version"] == 2
    assert doc["state"] == {"reported": {"n": 1}, "desired": {"n": 2}, "delta": {"n": 2}}


def test_a_new_port_is_saved_and_robot_configs_follow(tmp_path: Path) -> None:
    from localcloud.cloud import add_robot, prepare
    from localcloud.layout import CloudDir

    cloud = CloudDir.at(tmp_path / "c")
    assert prepare(cloud, 18001).port == 18001
    config = add_robot(cloud, "porter", "socket://127.0.0.1:7555")
    assert "listener 18001 127.0.0.1" in cloud.broker_conf.read_text()
    assert prepare(cloud, 18002).port == 18002
    assert CloudDir.at(tmp_path / "c").load_settings().port == 18002
    data = tomllib.loads(config.read_text())
    assert (data["connection"]["port"], data["robot"]["serial_port"]) == (18002, "socket://127.0.0.1:7555")
    assert prepare(cloud).port == 18002


def test_broker_runs_with_a_raised_open_file_limit_and_logs_to_a_file(local_cloud: LocalCloud) -> None:
    pid = local_cloud.child_pid("mosquitto")
    limits = Path(f"/proc/{pid}/limits").read_text().splitlines()
    (line,) = [x for x in limits if x.startswith("Max open files")]
    assert int(line.split()[3]) > 1024
    assert "mosquitto version" in local_cloud.dir.broker_log.read_text()


def test_live_watch_prints_a_line_per_change(local_cloud: LocalCloud) -> None:
    import queue
    import threading

    local_cloud.add_robot("live-robot")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.cli", "watch", "--json", *local_cloud.cli_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stdout = proc.stdout
    assert stdout is not None
    threading.Thread(target=lambda: [lines.put(line) for line in stdout], daemon=True).start()
    try:
        first = json.loads(lines.get(timeout=15))
        assert "thing" in first and "connection" in first
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 15
        sent = False
        while time.monotonic() < deadline:
            if not sent:
                time.sleep(0.5)  # let the snapshot finish before the change
                accepted, _doc = local_cloud.update_shadow(
                    "live-robot", {"state": {"reported": {"speed": 3}}}
                )
                assert accepted
                sent = True
            try:
                row = json.loads(lines.get(timeout=1))
            except queue.Empty:
                continue
            if row["thing"] == "live-robot" and row["reported"] == {"speed": 3}:
                seen = row
                break
        assert seen.get("version", 0) >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def test_up_prints_endpoint_port_and_ca_when_ready(local_cloud: LocalCloud) -> None:
    banner = "\n".join(local_cloud.output)
    assert "endpoint: 127.0.0.1" in banner
    assert f"port:     {local_cloud.port}" in banner
    assert f"ca:       {local_cloud.ca_path}" in banner
    assert local_cloud.output[-1] == "ready"
    assert local_cloud.ca_path.is_file()


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
    new_cloud: Callable[..., LocalCloud], capsys: pytest.CaptureFixture[str]
) -> None:
    cloud = new_cloud()
    assert (
        run_cli(capsys, "shadow", "update", "orphan", '{"state":{"reported":{"n":1}}}', *cloud.cli_args)[0]
        == 0
    )
    children = [cloud.child_pid("mosquitto"), cloud.child_pid("shadow-service")]
    os.kill(cloud.proc.pid, signal.SIGKILL)
    cloud.proc.wait()
    assert _wait_for(lambda: not any(pid_alive(pid) for pid in children)), "a child outlived a SIGKILLed up"
    again = new_cloud()
    code, out, _ = run_cli(capsys, "shadow", "get", "orphan", *again.cli_args)
    assert code == 0 and json.loads(out)["state"]["reported"] == {"n": 1}


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


def test_watch_table_shows_the_agent_state_as_columns_and_survives_odd_documents() -> None:
    from fleet.watch import FleetView

    view = FleetView(["r1", "r2", "r3"])
    doc = {
        "state": {
            "reported": {
                "mission": "cleaning",
                "battery": {"percent": 42, "charging": "trickle"},
                "oi_mode": "passive",
                "hazards": {"bump": False, "cliff": True},
                "command": {"id": "m-1", "status": "failed", "reason": "serial link down"},
            }
        },
        "version": 7,
    }
    assert view.apply("$aws/things/r1/shadow/get/accepted", json.dumps(doc).encode(), 0.0) == "r1"
    odd = {"state": {"reported": {"battery": "full", "hazards": [1], "command": "x"}}, "version": 2}
    assert view.apply("$aws/things/r2/shadow/get/accepted", json.dumps(odd).encode(), 0.0) == "r2"
    assert view.apply("roomba/r1/presence", b'{"state": "online"}', 0.0) == "r1"
    rows = {line.split()[0]: line for line in view.table().splitlines()[1:]}
    assert rows["r1"].split()[:7] == ["r1", "online", "7", "cleaning", "42%", "trickle", "passive"]
    assert "cliff" in rows["r1"] and "bump" not in rows["r1"]
    assert rows["r1"].endswith("m-1: failed (serial link down)")
    assert rows["r2"].split()[:5] == ["r2", "never", "2", "?", "?"]
    assert rows["r3"].split() == ["r3", "never", "-", "-"]
