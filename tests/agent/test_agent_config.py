"""Config layering and whole-document validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config as cfg

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


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_contract_example_loads(tmp_path: Path) -> None:
    """The configuration example of the contract loads as is."""
    c = cfg.load(write(tmp_path, GOOD), env={})
    assert c.thing_name == "robot-001"
    assert c.port == 8883 and not c.alpn and c.local
    assert c.key == "/etc/roomba-agent/device.key" and c.pkcs11 is None
    assert c.intervals.heartbeat_s == 300


def test_env_overrides_file_and_cli_overrides_env(tmp_path: Path) -> None:
    """Layering: the environment beats the file, the command line beats both."""
    env = {"ROOMBA_AGENT_THING_NAME": "from-env", "ROOMBA_AGENT_PORT": "443", "ROOMBA_AGENT_LOCAL": "false"}
    c = cfg.load(write(tmp_path, GOOD), env=env, cli={"thing_name": "from-cli", "port": None})
    assert c.thing_name == "from-cli"
    assert c.port == 443 and c.alpn and not c.local


def test_all_problems_reported_at_once() -> None:
    doc = {
        "thing_name": "bad name!",
        "connection": {"endpoint": "mqtts://x:8883", "port": "eighty", "cert": "/c"},
        "robot": {"model": "dalek"},
        "state_dir": "relative",
        "typo_key": 1,
    }
    config, problems = cfg.validate(doc)
    assert config is None
    text = "\n".join(problems)
    for needle in (
        "thing_name:",
        "connection.endpoint:",
        "connection.port:",
        "connection.root_ca: missing",
        "connection.key: missing",
        "robot.serial_port: missing",
        "robot.model:",
        "state_dir:",
        "typo_key: unknown",
    ):
        assert needle in text, needle
    assert all("\n" not in p for p in problems)


def test_aws_endpoint_rules() -> None:
    """An AWS IoT endpoint is refused on a port other than 8883/443."""
    base = {
        "thing_name": "t",
        "connection": {
            "endpoint": "abc-ats.iot.eu-west-1.amazonaws.com",
            "port": 1883,
            "root_ca": "/r",
            "cert": "/c",
            "key": "/k",
            "local": True,
        },
        "robot": {"serial_port": "/dev/ttyUSB0"},
    }
    _, problems = cfg.validate(base)
    assert any("8883 or 443" in p for p in problems)
    assert any("local" in p for p in problems)
    base["connection"].update(port=443, local=False, endpoint="abc.ats.iot.cn-north-1.amazonaws.com.cn")
    config, problems = cfg.validate(base)
    assert problems == [] and config is not None and config.is_china and config.alpn


def test_pkcs11_key() -> None:
    """A PKCS#11 key replaces the key file; giving both is a problem."""
    doc = {
        "thing_name": "t",
        "connection": {
            "endpoint": "h",
            "root_ca": "/r",
            "cert": "/c",
            "pkcs11": {
                "module": "/usr/lib/softhsm/libsofthsm2.so",
                "token_label": "tok",
                "key_label": "k",
                "pin_file": "/etc/pin",
            },
        },
        "robot": {"serial_port": "/dev/ttyUSB0"},
    }
    config, problems = cfg.validate(doc)
    assert problems == [] and config is not None
    assert config.key is None and config.pkcs11 is not None and config.pkcs11.token_label == "tok"
    doc["connection"]["key"] = "/k"
    assert any("not both" in p for p in cfg.validate(doc)[1])


@pytest.mark.parametrize(
    ("text", "needle"),
    [("thing_name = ", "not valid TOML"), ("[connection]\nport = 70000\n", "out of range")],
    ids=["toml_syntax", "port_range"],
)
def test_file_level_errors(tmp_path: Path, text: str, needle: str) -> None:
    """Bad TOML or an out-of-range value in the file is a config problem with a readable reason."""
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(write(tmp_path, text), env={})
    assert any(needle in p for p in err.value.problems)


def test_missing_file() -> None:
    """A missing configuration file is reported as such."""
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load("/nonexistent/agent.toml", env={})


def test_intervals_validated() -> None:
    """Out-of-range or non-numeric intervals are config problems."""
    doc = {
        "thing_name": "t",
        "connection": {"endpoint": "h", "root_ca": "/r", "cert": "/c", "key": "/k"},
        "robot": {"serial_port": "/dev/x"},
        "intervals": {"report_min_s": 0, "heartbeat_s": "x"},
    }
    _, problems = cfg.validate(doc)
    assert any(p.startswith("intervals.report_min_s") for p in problems)
    assert any(p.startswith("intervals.heartbeat_s") for p in problems)
