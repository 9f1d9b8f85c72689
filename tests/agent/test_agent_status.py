"""`roomba-agent status`: the verdict from a status document, and the command on a real file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from agent import status


def doc(**changes: object) -> dict:
    base = {
        "pid": os.getpid(),
        "written_at": time.time(),
        "ready": True,
        "thing_name": "r1",
        "mqtt": {"connected": True, "endpoint": "127.0.0.1:8883"},
        "robot": {"link_up": True, "port": "/dev/ttyUSB0", "mission": "idle", "reported": {}},
        "metrics": {"counters": {"commands_done": 2}, "gauges": {"outbox_depth": 0}, "shadow_rtt": {}},
    }
    base.update(changes)
    return base


def test_assess() -> None:
    """The verdict: running and ready, waiting (naming what), or not running (stale file or dead pid)."""
    now = time.time()
    assert status.assess(doc(), now) == ("running and connected", 0)
    verdict, code = status.assess(doc(ready=False, mqtt={"connected": False}), now)
    assert code == 1 and "MQTT" in verdict
    assert status.assess(doc(written_at=now - 600), now)[1] == 3
    assert status.assess(doc(pid=2**22 + 12345), now)[1] == 3


def test_assess_while_reconnecting() -> None:
    """`ready` latches; the verdict follows the connection now: reconnecting (attempt, next delay, last
    error) with exit 1 while MQTT is down, connecting before the first connection, link down named too."""
    now = time.time()
    reconnect = {"attempt": 3, "next_retry_at": now + 4.2, "last_error": "aws_io_socket_connection_refused"}
    down = doc(mqtt={"connected": False, "reconnect": reconnect})
    assert status.assess(down, now) == (
        "running, reconnecting (attempt 3, next in 4.2 s): aws_io_socket_connection_refused",
        1,
    )
    late = doc(mqtt={"connected": False, "reconnect": {**reconnect, "next_retry_at": now - 1}})
    assert status.assess(late, now)[0].startswith("running, reconnecting (attempt 3, connecting now)")
    lost = doc(
        mqtt={"connected": False, "reconnect": {"attempt": 0, "next_retry_at": now + 0.5, "last_error": "x"}}
    )
    assert status.assess(lost, now) == ("running, reconnecting (next in 0.5 s): x", 1)
    first = doc(ready=False, mqtt={"connected": False, "reconnect": reconnect})
    assert status.assess(first, now)[0].startswith("running, connecting to MQTT (attempt 3")
    unlinked = doc(robot={"link_up": False})
    assert status.assess(unlinked, now) == (
        "running and connected, but the serial link to the robot is down",
        1,
    )
    both = doc(mqtt={"connected": False, "reconnect": reconnect}, robot={"link_up": False})
    assert status.assess(both, now)[0].endswith("; the serial link to the robot is down")


def test_render_shows_the_reconnect_line() -> None:
    now = time.time()
    reconnect = {"attempt": 2, "next_retry_at": now + 9, "last_error": "refused", "down_since": now - 30}
    d = doc(mqtt={"connected": False, "endpoint": "e:8883", "reconnect": reconnect})
    text = status.render(d, status.assess(d, now)[0])
    assert (
        "DISCONNECTED" in text
        and "reconnect   down for 30 s, attempt 2, next in" in text
        and "refused" in text
    )


def test_command_on_a_file(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """`roomba-agent status` renders a status file, as JSON too, and says when there is none."""
    (tmp_path / "status.json").write_text(
        json.dumps(doc(last_command={"id": "c1", "action": "clean", "status": "done"}))
    )
    assert status.main(["--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "running and connected" in out and "c1 clean: done" in out
    assert status.main(["--state-dir", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "running and connected"
    assert status.main(["--state-dir", str(tmp_path / "missing")]) == 3
    assert "no status file" in capsys.readouterr().err
