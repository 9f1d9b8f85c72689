"""``roomba-fleet`` commands end to end against a running local cloud: robot add, shadow get/update/delete
for one robot and for many, watch (once and live), and the clear errors when the cloud is not running.
``up`` itself is tested with the local cloud (tests/localcloud/test_up.py)."""

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

from base.testing import wait_until
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


def test_robot_add_json_names_the_identity_and_config(
    local_cloud: LocalCloud,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``--json`` prints one document; a relative serial path is stored absolute; the cloud is not new."""
    monkeypatch.chdir(tmp_path)
    code, out, _err = run_cli(
        capsys, "robot", "add", "json-robot", *local_cloud.cli_args, "--serial-port", "tty-json", "--json"
    )
    assert code == 0
    doc = json.loads(out)
    config = tomllib.loads(Path(doc["config"]).read_text())
    assert doc["thing"] == config["thing_name"] == "json-robot"
    assert doc["identity_dir"] == str(local_cloud.dir.identity_dir("json-robot"))
    assert doc["state_dir"] == config["state_dir"]
    assert (doc["endpoint"], doc["port"]) == ("127.0.0.1", local_cloud.port)
    assert doc["serial_port"] == config["robot"]["serial_port"] == str(tmp_path / "tty-json")
    assert (doc["cloud_dir"], doc["new_cloud"]) == (str(local_cloud.dir.root), False)


@pytest.mark.parametrize("name", ["bad name", "local-cloud-operator", "x" * 129])
def test_robot_add_refuses_bad_names(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    code, _out, err = run_cli(capsys, "robot", "add", name, *local_cloud.cli_args)
    assert code == 1 and "roomba-fleet robot add:" in err


def test_shadow_commands_print_json(local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]) -> None:
    """The service's answer is printed as is; exit 1 when it rejects, 2 for input that never reaches it."""
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


def test_shadow_over_many_robots_personalises_each_document_and_reports_each_answer(
    local_cloud: LocalCloud, capsys: pytest.CaptureFixture[str]
) -> None:
    d = local_cloud.cli_args
    for name in ("many-1", "many-2"):
        local_cloud.add_robot(name)
    doc = '{"state":{"desired":{"command":{"id":"m-{thing}","action":"clean"}}}}'
    code, out, _ = run_cli(capsys, "shadow", "update", "--prefix", "many-", doc, *d)
    answers = json.loads(out)
    assert code == 0 and list(answers) == ["many-1", "many-2"]
    assert answers["many-2"]["state"]["desired"]["command"]["id"] == "m-many-2"
    assert not any("clientToken" in a for a in answers.values())
    local_cloud.add_robot("many-3")  # no shadow yet: its get is rejected
    code, out, err = run_cli(capsys, "shadow", "get", "--prefix", "many-", *d)
    answers = json.loads(out)
    assert code == 1 and "1 of 3 not accepted (first: many-3)" in err
    assert answers["many-1"]["state"]["desired"]["command"] == {"id": "m-many-1", "action": "clean"}
    assert answers["many-3"]["error"]["code"] == 404


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


def test_watch_shows_presence_and_reported_state(
    local_cloud: LocalCloud, paho_robot: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retained presence and reported state appear; a robot never seen is ``never``; a dead link ``offline``."""
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

    def offline() -> bool:
        _code, out, _ = run_cli(capsys, "watch", "--once", "--json", *local_cloud.cli_args)
        rows = {r["thing"]: r for r in json.loads(out)["robots"]}
        return bool(rows["watch-robot"]["connection"] == "offline")

    wait_until(offline, 10, "watch to show watch-robot offline (its will)", interval=0.2)


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
