"""``roomba-fleet simulate``'s command line (the fleet itself runs in tests/fleetsim), and the mapping of every
sub-command to its module."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from base.testing import wait_until
from fleet import simulate
from fleet.cli import TOOL
from fleetsim.runner import status_path
from localcloud.testing import LocalCloud


def test_simulate_refuses_bad_input_before_provisioning_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert simulate.main(["--robots", "0", "--dir", d]) == 2
    assert simulate.main(["--robots", "3", "--dir", d, "--faults", "link_drop=5,wat=1"]) == 2
    assert simulate.main(["--robots", "3", "--dir", d]) == 2  # no local cloud running there
    bad_config = tmp_path / "agent.toml"
    bad_config.write_text('thing_name = "x"\n')
    assert simulate.main(["--robots", "3", "--dir", d, "--config", str(bad_config)]) == 2
    err = capsys.readouterr().err
    assert "--robots must be at least 1" in err
    assert "--faults: link_drop=5: must be between 0 and 1 per second" in err
    assert "--faults: 'wat': unknown fault" in err
    assert "is not running; start it with `roomba-fleet up --dir" in err
    assert "has no [connection] endpoint" in err
    assert not (tmp_path / "identities").exists()  # nothing provisioned for a refused run


def test_every_sub_command_lives_in_the_fleet_module_of_its_name() -> None:
    assert {name: sub.module for name, sub in TOOL.subs.items()} == {
        name: f"fleet.{name}"
        for name in (
            "up",
            "robot",
            "command",
            "shadow",
            "watch",
            "simulate",
            "jobs",
            "artifact",
            "release",
            "rollout",
        )
    }
    for sub in TOOL.subs.values():
        module = importlib.import_module(sub.module)
        assert callable(module.main) and callable(module.build_parser)


def test_simulate_runs_as_a_module_for_tests_and_benches() -> None:
    """``python -m fleet.simulate`` is how tests and ``bench/fleet.py`` start a fleet."""
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.simulate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: roomba-fleet simulate")


@pytest.mark.slow
def test_simulate_json_prints_the_final_status_document_and_nothing_else(
    new_cloud: Callable[..., LocalCloud],
) -> None:
    """With ``--json`` stdout is one JSON document (the final status) printed when the fleet stops; the
    ready line and the progress go to stderr."""
    cloud = new_cloud()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet.simulate",
            "--robots",
            "2",
            "--prefix",
            "js-",
            "--json",
            *cloud.cli_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def all_connected() -> bool:
        try:
            doc = json.loads(status_path(str(cloud.dir.root)).read_text())
        except (OSError, ValueError):
            return False
        assert proc.poll() is None, "simulate exited early"
        return bool(doc.get("connected") == 2)

    try:
        wait_until(all_connected, 120, "both simulated robots to connect", interval=0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    doc = json.loads(out)
    assert doc["final"] is True and doc["robots"] == 2 and doc["started"] == 2
    assert set(doc["per_robot"]) == {"js-0001", "js-0002"}
    assert isinstance(doc["all_connected_s"], float) and doc["broker_restarts"] == []
    assert "simulate ready robots=2 connected=2" in err and "stopping every robot" in err
