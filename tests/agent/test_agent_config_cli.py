"""``roomba-agent config init|check`` through the real entry point: the template holds every key of the
schema, validates once its required values are filled, round-trips, and is never written over by mistake."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent import config as cfg
from agent.cli import main

BIN = Path(sys.executable).parent

GOOD = """
thing_name = "robot-001"
state_dir = "/var/lib/roomba-agent"

[connection]
endpoint = "127.0.0.1"
port = 8883
root_ca = "/etc/roomba-agent/root-ca.crt"
cert = "/etc/roomba-agent/device.crt"
key = "/etc/roomba-agent/device.key"
local = true

[robot]
serial_port = "socket://127.0.0.1:7000"
model = "create2"
"""

FILLED = [
    "--thing",
    "robot-007",
    "--endpoint",
    "127.0.0.1",
    "--local",
    "--identity",
    "identity",
    "--serial-port",
    "robot.tty",
]


def test_init_template_lists_every_key_with_its_default_and_a_comment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["config", "init"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    table = 0  # the line of the table the key is in (a key name, e.g. enabled, may be in several tables)
    for path, sub in cfg.walk():
        name = path.rsplit(".", 1)[-1]
        if sub.get("type") == "object":
            line = table = next(i for i, line in enumerate(lines) if line.lstrip("# ") == f"[{path}]")
        else:
            start = table if "." in path else 0
            line = next(
                i for i, line in enumerate(lines) if i >= start and re.match(rf"^(# )?{name} = ", line)
            )
            if "default" in sub:
                assert lines[line] == f"# {name} = {json.dumps(sub['default'])}", path
        assert lines[line - 1] == "# " + lines[line - 1].lstrip("# "), path  # a comment above each
        assert sub["description"] in lines[line - 1], path
    # as written, only the required values are missing
    problems = cfg.problems_of(tomllib.loads(text))
    assert problems and all(": missing" in p for p in problems), problems
    assert {p.split(":")[0] for p in problems} == {
        "thing_name",
        "connection.endpoint",
        "connection.root_ca",
        "connection.cert",
        "connection.key",
        "robot.serial_port",
    }


def test_init_filled_validates_and_round_trips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the required values given, the file loads; uncommenting every default changes nothing; config
    check prints back exactly what init wrote, each value marked with its source."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "agent.toml"
    assert main(["config", "init", *FILLED, "--out", str(out)]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    loaded = cfg.load(out, env={})
    assert loaded.thing_name == "robot-007" and loaded.local
    # paths are absolute: the agent may start in another directory
    assert loaded.cert == str(tmp_path / "identity" / "device.crt")
    assert loaded.serial_port == str(tmp_path / "robot.tty")
    text = out.read_text()
    uncommented = "\n".join(
        line[2:] if re.match(r"^# [a-z_]+ = ", line) and "pkcs11" not in line else line
        for line in text.splitlines()
        if not line.startswith("# [connection.pkcs11]")
    )
    # the pkcs11 block stays commented: it is the alternative to key
    body = uncommented.split("# instead of key")[0] + "\n[robot]" + uncommented.split("[robot]", 1)[1]
    assert cfg.load(write(tmp_path / "all.toml", body), env={}) == loaded

    check = subprocess.run(
        [str(BIN / "roomba-agent"), "config", "check", "--config", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ROOMBA_AGENT_")},
    )
    assert check.returncode == 0, check.stderr
    doc = json.loads(check.stdout)
    assert doc["ok"] and doc["problems"] == []
    assert doc["config"] == cfg.effective(loaded)
    assert doc["sources"]["thing_name"] == "file" and doc["sources"]["connection.port"] == "default"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_init_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = write(tmp_path / "agent.toml", "# mine\n")
    assert main(["config", "init", "--out", str(out)]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert out.read_text() == "# mine\n"
    assert main(["config", "init", "--out", str(out), "--force", "--thing", "r1"]) == 0
    assert 'thing_name = "r1"' in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]  # no temporary file left


@pytest.mark.parametrize(
    ("edit", "line"),
    [
        (('model = "create2"', 'modle = "create2"'), "robot.modle: unknown key (did you mean model?)"),
        (("port = 8883", 'port = "28892"'), 'connection.port: must be an integer, not a string ("28892")'),
        (("[robot]", "[robott]"), "robott: unknown section (did you mean robot?)"),
    ],
    ids=["typo_at_depth", "string_port", "unknown_section"],
)
def test_check_rejects_each_trap(tmp_path: Path, edit: tuple[str, str], line: str) -> None:
    """The same traps through the command an operator runs: exit 1, the problem on stderr with its path."""
    path = write(tmp_path / "agent.toml", GOOD.replace(*edit))
    out = subprocess.run(
        [str(BIN / "roomba-agent"), "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ROOMBA_AGENT_")},
    )
    assert out.returncode == 1
    assert f"{path}: {line}" in out.stderr.splitlines() or any(
        row.startswith(f"{path}: {line}") for row in out.stderr.splitlines()
    ), out.stderr


def test_check_missing_file_names_the_path_tried(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.toml"
    assert main(["config", "check", "--config", str(missing)]) == 3
    assert f"file {missing} does not exist" in capsys.readouterr().err


def test_check_default_path_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "agent.toml", GOOD)
    monkeypatch.setenv("ROOMBA_AGENT_CONFIG", str(path))
    monkeypatch.setenv("ROOMBA_AGENT_PORT", "443")
    assert main(["config", "check"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: valid")
    assert re.search(r"connection\.port = 443 +# \$ROOMBA_AGENT_PORT", out), out


def test_run_refuses_a_typo_before_starting(tmp_path: Path) -> None:
    """`roomba-agent run` on a file with a typo at depth: exit 78 (systemd does not restart), the path in
    the one-line reason."""
    path = write(tmp_path / "agent.toml", GOOD.replace('model = "create2"', 'modle = "create2"'))
    out = subprocess.run(
        [str(BIN / "roomba-agent"), "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ROOMBA_AGENT_")},
    )
    assert out.returncode == 78
    assert "robot.modle: unknown key (did you mean model?)" in out.stderr


def test_init_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "agent.toml"
    assert main(["config", "init", "--thing", "r2", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] == str(out)
    assert "thing_name" not in doc["missing"] and "connection.endpoint" in doc["missing"]
    assert main(["config", "init", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["path"] is None and tomllib.loads(doc["text"])["robot"]["serial_port"] == ""
