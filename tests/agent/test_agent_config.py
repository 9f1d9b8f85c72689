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


# the published schema: unknown keys at any depth, wrong types, the one source of keys and defaults ---------
def problems_of_file(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(write(tmp_path, text), env={})
    return err.value.problems


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('model = "create2"', 'modle = "create2"'), "robot.modle: unknown key (did you mean model?)"),
        (("port = 8883", 'port = "28892"'), 'connection.port: must be an integer, not a string ("28892")'),
        (("[robot]", "[robott]"), "robott: unknown section (did you mean robot?)"),
        (("[connection]", "[conection]"), "conection: unknown section (did you mean connection?)"),
        (("local = true", "local = true\nkeepalive_s = 30"), "connection.keepalive_s: unknown key"),
        (("local = true", 'local = "yes"'), "connection.local: must be true or false, not a string"),
        (
            ('state_dir = "/var/lib/roomba-agent"', "state_dir = 5"),
            "state_dir: must be a string, not an integer",
        ),
        (
            ('thing_name = "robot-001"', 'thing_name = "robot-001"\nport = 8883'),
            "port: unknown key (did you mean connection.port?)",
        ),
    ],
    ids=[
        "typo_at_depth",
        "string_port",
        "unknown_section",
        "unknown_section_typo",
        "unknown_key_in_table",
        "string_bool",
        "int_for_string",
        "key_in_wrong_table",
    ],
)
def test_config_traps_rejected_with_their_path(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    """Each trap passed the old hand-written checks silently (or with no path); now each is one line
    naming the dotted path, with a "did you mean" where a known key is close."""
    old, new = edit
    assert old in GOOD
    problems = problems_of_file(tmp_path, GOOD.replace(old, new, 1))
    assert any(p.startswith(expected) for p in problems), problems
    assert all("\n" not in p for p in problems)


def test_string_port_says_how_to_fix_it(tmp_path: Path) -> None:
    problems = problems_of_file(tmp_path, GOOD.replace("port = 8883", 'port = "28892"'))
    assert problems == [
        'connection.port: must be an integer, not a string ("28892"); write 28892 without quotes'
    ]


def test_typo_in_pkcs11_table_and_intervals(tmp_path: Path) -> None:
    """Depth 3 (connection.pkcs11) and the intervals table are closed too."""
    text = GOOD.replace('key = "/etc/roomba-agent/device.key"\n', "") + (
        '\n[connection.pkcs11]\nmodule = "/m.so"\ntoken_label = "t"\nkey_lable = "k"\npin_file = "/p"\n'
        "\n[intervals]\nheartbeat = 60\n"
    )
    problems = problems_of_file(tmp_path, text)
    assert "connection.pkcs11.key_lable: unknown key (did you mean key_label?)" in problems
    assert any(p.startswith("connection.pkcs11.key_label: missing") for p in problems)
    assert "intervals.heartbeat: unknown key (did you mean heartbeat_s?)" in problems


def test_environment_text_is_converted_and_bad_text_names_its_variable(tmp_path: Path) -> None:
    """Environment values are text: converted to the schema's type, and a bad one names its variable."""
    path = write(tmp_path, GOOD)
    c = cfg.load(
        path, env={"ROOMBA_AGENT_PORT": "443", "ROOMBA_AGENT_LOCAL": "off", "ROOMBA_AGENT_LOG_LEVEL": "DEBUG"}
    )
    assert (c.port, c.local, c.log_level) == (443, False, "debug")
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, env={"ROOMBA_AGENT_PORT": "88x3"})
    assert err.value.problems == [
        'connection.port: must be an integer, not a string ("88x3") (from $ROOMBA_AGENT_PORT)'
    ]
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(path, env={}, cli={"port": "70000"})
    assert err.value.problems == ["connection.port: 70000 is out of range 1..65535 (from --port)"]


def _schema_defaults(node: dict, prefix: str = "") -> dict[str, object]:
    return {p: sub["default"] for p, sub in cfg.walk(node) if "default" in sub}


def test_schema_and_dataclasses_agree() -> None:
    """Every key of the schema is a field of AgentConfig (or Intervals / Pkcs11Key) and back, with the same
    default, so the dataclass cannot drift from the published schema."""
    from dataclasses import MISSING, fields

    leaves = {p for p, sub in cfg.walk() if sub.get("type") != "object" or p == "connection.pkcs11"}
    mapped = {dotted for name, dotted in cfg.FIELDS.items() if name not in ("intervals", "jobs", "update")}
    mapped |= {f"intervals.{f.name}" for f in fields(cfg.Intervals)}
    mapped |= {f"jobs.{f.name}" for f in fields(cfg.JobsConfig)}
    mapped |= {f"update.{f.name}" for f in fields(cfg.UpdateConfig)}
    mapped |= {f"connection.pkcs11.{f.name}" for f in fields(cfg.Pkcs11Key)}
    leaves |= {p for p, _ in cfg.walk() if p.startswith("connection.pkcs11.")}
    assert leaves == mapped
    assert set(cfg.FIELDS) == {f.name for f in fields(cfg.AgentConfig)}
    defaults = _schema_defaults(cfg.schema())
    for f in fields(cfg.AgentConfig):
        if f.name in ("intervals", "jobs", "update"):
            continue
        dotted = cfg.FIELDS[f.name]
        if f.default is not MISSING and f.default is not None:  # a required field may have a schema default
            assert defaults[dotted] == f.default, dotted
    for f in fields(cfg.Intervals):
        assert defaults[f"intervals.{f.name}"] == f.default, f.name
    for f in fields(cfg.JobsConfig):
        assert defaults[f"jobs.{f.name}"] == f.default, f.name
    for f in fields(cfg.UpdateConfig):
        assert defaults[f"update.{f.name}"] == f.default, f.name
    assert defaults["state_dir"] == cfg.DEFAULT_STATE_DIR
    assert tuple(cfg.schema()["properties"]["log_level"]["enum"]) == cfg.LOG_LEVELS


def test_schema_rules_match_the_libraries() -> None:
    """The schema's model list is hal.models', its thing-name pattern is shadow.names' rule."""
    import re

    from hal.models import MODELS
    from shadow.names import is_thing_name

    assert cfg.schema_at("robot.model")["enum"] == list(MODELS)  # type: ignore[index]
    pattern = re.compile(cfg.schema_at("thing_name")["pattern"])  # type: ignore[index]
    for name in ["robot-001", "a", "x" * 128, "x" * 129, "bad name!", "a:b_c-d", "", "é", "a/b"]:
        assert bool(pattern.search(name)) == is_thing_name(name), name


def test_overrides_come_from_the_schema() -> None:
    """Each environment variable and option the schema names is an override, and reaches its key."""
    assert cfg.OVERRIDES["port"] == "connection.port"
    assert cfg.OVERRIDES["serial_port"] == "robot.serial_port"
    assert cfg.OVERRIDES["local"] == "connection.local"
    for name, dotted in cfg.OVERRIDES.items():
        assert cfg.schema_at(dotted) is not None, name


def test_default_config_path(tmp_path: Path) -> None:
    """Without --config: $ROOMBA_AGENT_CONFIG, else the systemd unit's path; errors name the path tried."""
    unit = (Path(__file__).parents[2] / "systemd" / "roomba-agent.service").read_text()
    assert f"--config {cfg.DEFAULT_CONFIG_PATH}" in unit
    assert cfg.resolve_path(None, {}) == (cfg.DEFAULT_CONFIG_PATH, "default")
    path = write(tmp_path, GOOD)
    assert cfg.load(None, env={"ROOMBA_AGENT_CONFIG": str(path)}).thing_name == "robot-001"
    with pytest.raises(cfg.ConfigError) as err:
        cfg.load(None, env={"ROOMBA_AGENT_CONFIG": str(tmp_path / "nope.toml")})
    assert err.value.problems == [f"file {tmp_path / 'nope.toml'} does not exist (from $ROOMBA_AGENT_CONFIG)"]
    if not Path(cfg.DEFAULT_CONFIG_PATH).exists():
        with pytest.raises(cfg.ConfigError) as err:
            cfg.load(None, env={})
        assert err.value.problems[0].startswith(
            f"file {cfg.DEFAULT_CONFIG_PATH} does not exist (the default path"
        )
    # the environment and options alone, with an empty file
    env = {
        "ROOMBA_AGENT_THING_NAME": "t",
        "ROOMBA_AGENT_ENDPOINT": "127.0.0.1",
        "ROOMBA_AGENT_ROOT_CA": "/r",
        "ROOMBA_AGENT_CERT": "/c",
        "ROOMBA_AGENT_KEY": "/k",
        "ROOMBA_AGENT_SERIAL_PORT": "/dev/ttyUSB0",
    }
    assert cfg.load("/dev/null", env=env).endpoint == "127.0.0.1"


def test_state_dir_for_a_broken_config(tmp_path: Path) -> None:
    """status needs the state directory even when the file has other problems."""
    path = write(tmp_path, 'state_dir = "/srv/agent"\n[robot]\nmodle = 1\n')
    assert cfg.state_dir_for(str(path), env={}) == "/srv/agent"
    assert cfg.state_dir_for(None, env={"ROOMBA_AGENT_CONFIG": str(path)}) == "/srv/agent"
    assert cfg.state_dir_for(str(tmp_path / "missing.toml"), env={"STATE_DIRECTORY": "/x"}) == "/x"
