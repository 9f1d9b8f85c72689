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
