"""Agent configuration: TOML file, then ``ROOMBA_AGENT_*`` environment, then the command line.

The layers are merged into one plain dict first and validated as a whole by a pure function, so an operator
sees every problem at once, one readable line each, instead of fixing them one restart at a time.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal.models import MODELS
from shadow.names import is_thing_name

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_STATE_DIR = "/var/lib/roomba-agent"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one readable line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Pkcs11Key:
    module: str
    token_label: str
    key_label: str
    pin_file: str


@dataclass(frozen=True)
class Intervals:
    """Seconds. ``report_min_s`` rate-limits state reports; ``heartbeat_s`` bounds their staleness."""

    report_min_s: float = 1.0
    heartbeat_s: float = 300.0
    telemetry_s: float = 10.0
    metrics_s: float = 60.0
    status_s: float = 2.0
    health_probe_s: float = 300.0


@dataclass(frozen=True)
class AgentConfig:
    thing_name: str
    endpoint: str
    port: int
    root_ca: str
    cert: str
    key: str | None
    pkcs11: Pkcs11Key | None
    serial_port: str
    state_dir: str = DEFAULT_STATE_DIR
    local: bool = False
    model: str = "create2"
    keep_alive_s: int = 60
    session_expiry_s: int = 3600
    log_level: str = "info"
    outbox_max_events: int = 10000
    shadow_rate_per_s: float = 10.0
    intervals: Intervals = field(default_factory=Intervals)

    @property
    def alpn(self) -> bool:
        """Port 443 needs ALPN ``x-amzn-mqtt-ca`` for mutual-TLS MQTT (networks that only allow HTTPS)."""
        return self.port == 443

    @property
    def is_china(self) -> bool:
        return self.endpoint.endswith(".amazonaws.com.cn")


ENV_PREFIX = "ROOMBA_AGENT_"
# environment / command-line name -> dotted path in the merged dict
OVERRIDES: dict[str, str] = {
    "thing_name": "thing_name",
    "state_dir": "state_dir",
    "endpoint": "connection.endpoint",
    "port": "connection.port",
    "root_ca": "connection.root_ca",
    "cert": "connection.cert",
    "key": "connection.key",
    "local": "connection.local",
    "serial_port": "robot.serial_port",
    "model": "robot.model",
    "log_level": "log_level",
}


def _set_path(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    node[leaf] = value


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read the file; a missing or unparsable file is a ConfigError with the reason."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"file {path} does not exist"]) from None
    except PermissionError:
        raise ConfigError([f"file {path} is not readable by this user"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path} is not valid TOML: {exc}"]) from None


def merge_layers(
    file_doc: Mapping[str, Any], env: Mapping[str, str], cli: Mapping[str, Any | None]
) -> dict[str, Any]:
    """File < environment < command line. Values from env/CLI stay strings; validation converts them."""
    doc: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in file_doc.items()}
    for name, dotted in OVERRIDES.items():
        env_value = env.get(ENV_PREFIX + name.upper())
        if env_value is not None and env_value != "":
            _set_path(doc, dotted, env_value)
    for name, value in cli.items():
        if value is not None and name in OVERRIDES:
            _set_path(doc, OVERRIDES[name], value)
    return doc


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    return None


def _as_number(value: Any, kind: type[int] | type[float]) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return kind(value) if kind is float or float(value).is_integer() else None
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            return None
    return None


def validate(doc: Mapping[str, Any]) -> tuple[AgentConfig | None, list[str]]:
    """Check the merged configuration as a whole. Pure: it reads no file and no environment."""
    problems: list[str] = []
    conn = doc.get("connection", {})
    robot = doc.get("robot", {})
    ivals = doc.get("intervals", {})
    for name, section in (("connection", conn), ("robot", robot), ("intervals", ivals)):
        if not isinstance(section, dict):
            problems.append(f"{name}: must be a table ([{name}])")
    if problems:
        return None, problems

    def text(where: str, value: Any, required: bool = True) -> str:
        if value is None or value == "":
            if required:
                problems.append(f"{where}: missing (set it in the file, or with the matching option)")
            return ""
        if not isinstance(value, str):
            problems.append(f"{where}: must be a string, got {type(value).__name__}")
            return ""
        return value

    def number(where: str, value: Any, default: float, lo: float, hi: float, kind: type = float) -> Any:
        if value is None:
            return kind(default)
        parsed = _as_number(value, kind)
        if parsed is None:
            problems.append(f"{where}: must be a {'whole ' if kind is int else ''}number, got {value!r}")
            return kind(default)
        if not lo <= parsed <= hi:
            problems.append(f"{where}: {parsed} is out of range {lo:g}..{hi:g}")
        return parsed

    thing = text("thing_name", doc.get("thing_name"))
    if thing and not is_thing_name(thing):
        problems.append(
            f"thing_name: {thing!r} is not a valid AWS IoT thing name (1-128 of letters, digits, ':', '_', '-')"
        )
    endpoint = text("connection.endpoint", conn.get("endpoint"))
    if endpoint and ("/" in endpoint or " " in endpoint or endpoint.count(":") == 1):
        problems.append(
            f"connection.endpoint: {endpoint!r} must be a bare host name or IP (no scheme, path or port)"
        )
    port = number("connection.port", conn.get("port"), 8883, 1, 65535, int)
    local = _as_bool(conn.get("local", False))
    if local is None:
        problems.append(f"connection.local: must be true or false, got {conn.get('local')!r}")
        local = False
    if endpoint.endswith("amazonaws.com") or endpoint.endswith("amazonaws.com.cn"):
        if port not in (8883, 443):
            problems.append(f"connection.port: AWS IoT Core takes mutual-TLS MQTT on 8883 or 443, not {port}")
        if local:
            problems.append("connection.local: is true but the endpoint is AWS IoT Core; set local = false")
    root_ca = text("connection.root_ca", conn.get("root_ca"))
    cert = text("connection.cert", conn.get("cert"))
    key = conn.get("key")
    pkcs11_raw = conn.get("pkcs11")
    pkcs11: Pkcs11Key | None = None
    if pkcs11_raw is not None:
        if not isinstance(pkcs11_raw, dict):
            problems.append(
                "connection.pkcs11: must be a table with module, token_label, key_label, pin_file"
            )
        else:
            parts = {
                k: text(f"connection.pkcs11.{k}", pkcs11_raw.get(k))
                for k in ("module", "token_label", "key_label", "pin_file")
            }
            pkcs11 = Pkcs11Key(**parts)
        if key:
            problems.append("connection: set either key or [connection.pkcs11], not both")
    key_path: str | None = None
    if pkcs11_raw is None:
        key_path = text("connection.key", key) or None
    keep_alive = number("connection.keep_alive_s", conn.get("keep_alive_s"), 60, 30, 1200, int)
    session_expiry = number("connection.session_expiry_s", conn.get("session_expiry_s"), 3600, 0, 604800, int)

    serial = text("robot.serial_port", robot.get("serial_port"))
    model = text("robot.model", robot.get("model", "create2"))
    if model and model.lower() not in MODELS:
        problems.append(f"robot.model: {model!r} is not one of {', '.join(MODELS)}")

    state_dir = text("state_dir", doc.get("state_dir", DEFAULT_STATE_DIR))
    if state_dir and not os.path.isabs(state_dir):
        problems.append(f"state_dir: {state_dir!r} must be an absolute path")
    log_level = text("log_level", doc.get("log_level", "info")).lower() or "info"
    if log_level not in LOG_LEVELS:
        problems.append(f"log_level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    outbox_max = number("outbox_max_events", doc.get("outbox_max_events"), 10000, 100, 10_000_000, int)
    # AWS IoT allows 20 shadow requests/s per thing; keep headroom for the fleet side
    shadow_rate = number("shadow_rate_per_s", doc.get("shadow_rate_per_s"), 10.0, 0.1, 20.0)

    intervals = Intervals(
        report_min_s=number("intervals.report_min_s", ivals.get("report_min_s"), 1.0, 0.05, 3600),
        heartbeat_s=number("intervals.heartbeat_s", ivals.get("heartbeat_s"), 300, 5, 86400),
        telemetry_s=number("intervals.telemetry_s", ivals.get("telemetry_s"), 10, 0.5, 86400),
        metrics_s=number("intervals.metrics_s", ivals.get("metrics_s"), 60, 1, 86400),
        status_s=number("intervals.status_s", ivals.get("status_s"), 2, 0.2, 60),
        health_probe_s=number("intervals.health_probe_s", ivals.get("health_probe_s"), 300, 5, 86400),
    )
    if intervals.heartbeat_s < intervals.report_min_s:
        problems.append("intervals.heartbeat_s: must not be shorter than intervals.report_min_s")

    known_top = {
        "thing_name",
        "state_dir",
        "connection",
        "robot",
        "intervals",
        "log_level",
        "outbox_max_events",
        "shadow_rate_per_s",
    }
    for unknown in sorted(set(doc) - known_top):
        problems.append(f"{unknown}: unknown setting (typo?)")
    if problems:
        return None, problems
    return (
        AgentConfig(
            thing_name=thing,
            endpoint=endpoint,
            port=port,
            root_ca=root_ca,
            cert=cert,
            key=key_path,
            pkcs11=pkcs11,
            serial_port=serial,
            state_dir=state_dir,
            local=bool(local),
            model=model,
            keep_alive_s=keep_alive,
            session_expiry_s=session_expiry,
            log_level=log_level,
            outbox_max_events=outbox_max,
            shadow_rate_per_s=shadow_rate,
            intervals=intervals,
        ),
        [],
    )


def load(
    path: str | Path | None, env: Mapping[str, str] | None = None, cli: Mapping[str, Any | None] | None = None
) -> AgentConfig:
    """The I/O wrapper: read the file (if any), layer env and CLI, validate. Raises ConfigError."""
    file_doc = load_toml(path) if path else {}
    merged = merge_layers(file_doc, os.environ if env is None else env, cli or {})
    config, problems = validate(merged)
    if config is None:
        raise ConfigError(problems)
    return config


def add_override_arguments(parser: Any) -> None:
    """The command-line overrides shared by ``run`` and ``doctor``."""
    parser.add_argument("--config", "-c", help="agent TOML file")
    for name in (
        "thing_name",
        "endpoint",
        "port",
        "cert",
        "key",
        "root_ca",
        "serial_port",
        "state_dir",
        "model",
    ):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None)


def cli_overrides(ns: Any) -> dict[str, Any | None]:
    return {name: getattr(ns, name, None) for name in OVERRIDES}
