"""``roomba-fleet simulate``'s command line (the fleet itself runs in tests/fleetsim), and the mapping of every
sub-command to its module."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from fleet import simulate
from fleet.cli import COMMANDS


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
    assert {name: module for name, (module, _help) in COMMANDS.items()} == {
        name: f"fleet.{name}" for name in ("up", "robot", "shadow", "watch", "simulate")
    }
    for module, _help in COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_simulate_runs_as_a_module_for_tests_and_benches() -> None:
    """``python -m fleet.simulate`` is how tests and ``bench/fleet.py`` start a fleet."""
    proc = subprocess.run(
        [sys.executable, "-m", "fleet.simulate", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.startswith("usage: roomba-fleet simulate")
