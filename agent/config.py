"""Agent configuration: TOML file, then ``ROOMBA_AGENT_*`` environment, then the command line.

The layers are merged into one plain dict first and validated as a whole against the published JSON Schema
(``agent/schemas/agent-config.schema.json``), so an operator sees every problem at once, one readable line
each with its dotted path, instead of fixing them one restart at a time. The schema is the one list of keys,
types, ranges and defaults: the overrides (``x-env``, ``x-option``), ``roomba-agent config init``'s template
and the dataclass defaults are all read from it (a test checks the dataclass agrees). What a schema cannot
say well (rules across keys, such as AWS's ports) is checked here after it.
"""

from __future__ import annotations

import difflib
import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema

SCHEMA_FILE = "agent-config.schema.json"
DEFAULT_CONFIG_PATH = "/etc/roomba-agent/agent.toml"  # the systemd unit's --config
CONFIG_ENV = "ROOMBA_AGENT_CONFIG"
ENV_PREFIX = "ROOMBA_AGENT_"
DEFAULT_STATE_DIR = "/var/lib/roomba-agent"
LOG_LEVELS = ("debug", "info", "warning", "error")


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
class JobsConfig:
    """``[jobs]``: AWS IoT Jobs on the robot (``agent.features.jobs``)."""

    enabled: bool = True
    allow_commands: bool = False
    handler_dir: str = ""
    step_timeout_s: float = 600.0
    request_timeout_s: float = 15.0
    wait_step_timeout_min: int = 10
    wait_refresh_s: float = 60.0


@dataclass(frozen=True)
class UpdateConfig:
    """``[update]``: over-the-air updates of the agent (``agent.features.update``, ``docs/updates.md``)."""

    enabled: bool = True
    root: str = "/opt/roomba-agent"
    trust: str = "/etc/roomba-agent/release-trust.pem"
    bake_s: float = 60.0
    commit_timeout_s: float = 300.0
    min_free_mb: int = 64
    download_timeout_s: float = 60.0
    download_limit_kbps: int = 0


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
    jobs: JobsConfig = field(default_factory=JobsConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)

    @property
    def alpn(self) -> bool:
        """Port 443 needs ALPN ``x-amzn-mqtt-ca`` for mutual-TLS MQTT (networks that only allow HTTPS)."""
        return self.port == 443

    @property
    def is_china(self) -> bool:
        return self.endpoint.endswith(".amazonaws.com.cn")

    @property
    def is_local_endpoint(self) -> bool:
        """A local cloud (``roomba-fleet up``) rather than AWS: ``local`` set, or a loopback endpoint."""
        return self.local or self.endpoint in ("127.0.0.1", "localhost", "::1")


# AgentConfig field -> dotted path in the file (Intervals fields sit under ``intervals.``)
FIELDS: dict[str, str] = {
    "thing_name": "thing_name",
    "endpoint": "connection.endpoint",
    "port": "connection.port",
    "root_ca": "connection.root_ca",
    "cert": "connection.cert",
    "key": "connection.key",
    "pkcs11": "connection.pkcs11",
    "serial_port": "robot.serial_port",
    "state_dir": "state_dir",
    "local": "connection.local",
    "model": "robot.model",
    "keep_alive_s": "connection.keep_alive_s",
    "session_expiry_s": "connection.session_expiry_s",
    "log_level": "log_level",
    "outbox_max_events": "outbox_max_events",
    "shadow_rate_per_s": "shadow_rate_per_s",
    "intervals": "intervals",
    "jobs": "jobs",
    "update": "update",
}


# the schema ------------------------------------------------------------------------------------------------
@cache
def schema() -> dict[str, Any]:
    """The published schema (plain JSON; reading it does not import jsonschema)."""
    text = resources.files("agent").joinpath("schemas", SCHEMA_FILE).read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


@cache
def _validator() -> jsonschema.Draft202012Validator:
    import jsonschema  # on first use: the agent's other schemas load it only once READY

    jsonschema.Draft202012Validator.check_schema(schema())
    return jsonschema.Draft202012Validator(schema())


def walk(node: Mapping[str, Any] | None = None, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, sub-schema) of every key the file may hold, tables before their keys, in schema order."""
    node = schema() if node is None else node
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}{name}"
        yield path, sub
        if sub.get("type") == "object":
            yield from walk(sub, path + ".")


def schema_at(dotted: str) -> dict[str, Any] | None:
    node: Mapping[str, Any] = schema()
    for name in dotted.split("."):
        sub = node.get("properties", {}).get(name)
        if sub is None:
            return None
        node = sub
    return dict(node)


def options_of(sub: Mapping[str, Any]) -> list[str]:
    """The command-line spellings of a key (``x-option``: one string or a list)."""
    opt = sub.get("x-option")
    return [] if opt is None else [opt] if isinstance(opt, str) else list(opt)


def _overrides() -> dict[str, str]:
    """Override name (``port``: env ``ROOMBA_AGENT_PORT``, option dest ``port``) -> dotted path."""
    return {
        str(sub["x-env"]).removeprefix(ENV_PREFIX).lower(): path for path, sub in walk() if sub.get("x-env")
    }


OVERRIDES: dict[str, str] = _overrides()


def default_of(dotted: str) -> Any:
    sub = schema_at(dotted)
    return None if sub is None else sub.get("default")


# the config file's path ------------------------------------------------------------------------------------
def resolve_path(
    path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """(path, where it came from): ``--config``, else ``$ROOMBA_AGENT_CONFIG``, else the unit's path."""
    if path is not None and str(path) != "":
        return str(path), "--config"
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return env[CONFIG_ENV], f"${CONFIG_ENV}"
    return DEFAULT_CONFIG_PATH, "default"


def _origin_note(origin: str) -> str:
    if origin == "default":
        return f" (the default path: pass --config FILE or set ${CONFIG_ENV})"
    if origin.startswith("$"):
        return f" (from {origin})"
    return ""


# layers ----------------------------------------------------------------------------------------------------
class Layered(dict[str, Any]):
    """The merged document; ``sources`` maps a dotted path set by an override to ``$ENV`` or ``--option``."""

    sources: dict[str, str]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sources = {}


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


def get_path(doc: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) of ``a.b.c`` in a nested document."""
    node: Any = doc
    for name in dotted.split("."):
        if not isinstance(node, Mapping) or name not in node:
            return False, None
        node = node[name]
    return True, node


def _as_bool(value: str) -> bool | None:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    return None


def coerce(dotted: str, value: Any) -> Any:
    """An override's text as the schema's type (``"443"`` -> 443); unconvertible text stays text, so the
    schema reports it. Only environment and command-line values come here: a file's types are its own."""
    sub = schema_at(dotted)
    if sub is None or not isinstance(value, str):
        return value
    kind = sub.get("type")
    try:
        if kind == "integer":
            return int(value.strip())
        if kind == "number":
            return float(value.strip())
    except ValueError:
        return value
    if kind == "boolean":
        parsed = _as_bool(value)
        return value if parsed is None else parsed
    if "enum" in sub and value not in sub["enum"] and value.lower() in sub["enum"]:
        return value.lower()
    return value


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the file; a missing or unparsable file is a ConfigError with the reason."""
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError([f"file {path} does not exist"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{path} is a directory, not a TOML file"]) from None
    except PermissionError:
        raise ConfigError([f"file {path} is not readable by this user"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path} is not valid TOML: {exc}"]) from None


def merge_layers(
    file_doc: Mapping[str, Any], env: Mapping[str, str], cli: Mapping[str, Any | None]
) -> Layered:
    """File < environment < command line. Override text is converted to the schema's type for its key."""
    doc = Layered({k: (_copy(v) if isinstance(v, dict) else v) for k, v in file_doc.items()})
    for name, dotted in OVERRIDES.items():
        env_name = ENV_PREFIX + name.upper()
        env_value = env.get(env_name)
        if env_value is not None and env_value != "":
            _set_path(doc, dotted, coerce(dotted, env_value))
            doc.sources[dotted] = f"${env_name}"
    for name, value in cli.items():
        if value is not None and name in OVERRIDES:
            dotted = OVERRIDES[name]
            _set_path(doc, dotted, coerce(dotted, value))
            sub = schema_at(dotted) or {}
            doc.sources[dotted] = (options_of(sub) or ["--" + name.replace("_", "-")])[0]
    return doc


def _copy(value: dict[str, Any]) -> dict[str, Any]:
    return {k: (_copy(v) if isinstance(v, dict) else v) for k, v in value.items()}


# validation ------------------------------------------------------------------------------------------------
_TOML_TYPES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "object": "a table",
    "array": "an array",
}


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _show(value: Any) -> str:
    """A value as TOML spells it (double-quoted strings), for messages."""
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _order(line: str) -> tuple[int, int, str]:
    """Problems in the schema's order of keys (an unknown key after its table's known keys)."""
    path = line.split(":", 1)[0]
    known = [p for p, _ in walk()]
    parts = path.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        if prefix in known:
            return known.index(prefix), depth != len(parts), path
    return -1, 1, path


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _did_you_mean(key: str, here: list[str], path: str) -> str:
    close = difflib.get_close_matches(key, here, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    elsewhere = [p for p, _ in walk() if p.rsplit(".", 1)[-1] == key and p != _join(path, key)]
    if elsewhere:
        return f" (did you mean {elsewhere[0]}?)"
    return ""


def _how_to_set(dotted: str) -> str:
    sub = schema_at(dotted) or {}
    ways = ["set it in the file"]
    if sub.get("x-env"):
        ways.append(f"${sub['x-env']}")
    ways += options_of(sub)[:1]
    return ", or ".join(ways) if len(ways) < 3 else f"{ways[0]}, ${sub['x-env']} or {ways[2]}"


def _describe(error: jsonschema.ValidationError) -> list[str]:
    path = ".".join(str(p) for p in error.absolute_path)
    where = path or "config"
    kind, instance, rule = error.validator, error.instance, error.schema
    if kind == "additionalProperties" and isinstance(instance, dict):
        known = list(rule.get("properties", {}))
        return [
            f"{_join(path, key)}: unknown {'section' if isinstance(instance[key], dict) else 'key'}"
            + _did_you_mean(key, known, path)
            for key in instance
            if key not in known
        ]
    if kind == "required" and isinstance(instance, dict):
        return [
            f"{_join(path, key)}: missing ({_how_to_set(_join(path, key))})"
            for key in error.validator_value
            if key not in instance
        ]
    if kind == "minLength" and instance == "":
        return [f"{where}: missing ({_how_to_set(path)})"]
    if kind == "type":
        expected = error.validator_value
        if expected == "object":
            return [f"{where}: must be a table ([{where}]), not {_toml_type(instance)}"]
        wanted = _TOML_TYPES.get(expected, expected)
        line = f"{where}: must be {wanted}, not {_toml_type(instance)} ({_show(instance)})"
        if isinstance(instance, str) and coerce(path, instance) is not instance:
            line += f"; write {instance.strip()} without quotes"
        return [line]
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        lo = rule.get("minimum", rule.get("exclusiveMinimum", "-inf"))
        hi = rule.get("maximum", rule.get("exclusiveMaximum", "inf"))
        return [f"{where}: {instance} is out of range {lo:g}..{hi:g}"]
    if kind == "enum":
        choices = [str(c) for c in error.validator_value]
        line = f"{where}: {_show(instance)} is not one of {', '.join(choices)}"
        if isinstance(instance, str):
            close = difflib.get_close_matches(instance.lower(), choices, n=1, cutoff=0.6)
            line += f" (did you mean {close[0]}?)" if close else ""
        return [line]
    if rule.get("x-message"):
        if kind == "pattern":
            return [f"{where}: {_show(instance)} {rule['x-message']}"]
        return [f"{where}: {rule['x-message']}"]
    return [f"{where}: {error.message}"]


def _cross_key_problems(doc: Mapping[str, Any]) -> list[str]:
    """Rules across keys, which read better here than as schema conditionals."""
    problems: list[str] = []
    conn = doc.get("connection")
    if isinstance(conn, Mapping):
        endpoint, port, local = (
            conn.get("endpoint"),
            conn.get("port", default_of("connection.port")),
            conn.get("local"),
        )
        if isinstance(endpoint, str) and endpoint.endswith(("amazonaws.com", "amazonaws.com.cn")):
            if isinstance(port, int) and port not in (8883, 443):
                problems.append(
                    f"connection.port: AWS IoT Core takes mutual-TLS MQTT on 8883 or 443, not {port}"
                )
            if local is True:
                problems.append(
                    "connection.local: is true but the endpoint is AWS IoT Core; set local = false"
                )
    ivals = doc.get("intervals")
    if isinstance(ivals, Mapping):
        heartbeat = ivals.get("heartbeat_s", default_of("intervals.heartbeat_s"))
        report_min = ivals.get("report_min_s", default_of("intervals.report_min_s"))
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (heartbeat, report_min))
        if numbers and heartbeat < report_min:
            problems.append("intervals.heartbeat_s: must not be shorter than intervals.report_min_s")
    return problems


def problems_of(doc: Mapping[str, Any]) -> list[str]:
    """Every problem of a merged document, one line each (empty: valid). Pure."""
    full = dict(doc)
    for name, sub in schema().get("properties", {}).items():
        if sub.get("type") == "object" and name not in full and name in schema().get("required", []):
            full[name] = {}  # say which keys of the missing table are needed, not only that it is missing
    sources: Mapping[str, str] = getattr(doc, "sources", {})
    problems: list[str] = []
    errors = sorted(_validator().iter_errors(full), key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        origin = sources.get(".".join(str(p) for p in error.absolute_path))
        for line in _describe(error):
            line = f"{line} (from {origin})" if origin else line
            if line not in problems:
                problems.append(line)
    problems += _cross_key_problems(full)
    missing = {line.split(":", 1)[0] for line in problems if line.split(": ", 1)[1].startswith("missing")}
    problems = [
        line
        for line in problems
        if line.split(":", 1)[0] not in missing or line.split(": ", 1)[1].startswith("missing")
    ]
    return sorted(problems, key=_order)


def _value(doc: Mapping[str, Any], dotted: str) -> Any:
    found, value = get_path(doc, dotted)
    sub = schema_at(dotted) or {}
    if not found:
        value = sub.get("default")
    if value is None:
        return None
    if sub.get("type") == "integer":
        return int(value)
    if sub.get("type") == "number":
        return float(value)
    return value


def validate(doc: Mapping[str, Any]) -> tuple[AgentConfig | None, list[str]]:
    """Check the merged configuration as a whole. Pure: it reads no file and no environment."""
    problems = problems_of(doc)
    if problems:
        return None, problems
    raw_pkcs11 = _value(doc, "connection.pkcs11")
    values: dict[str, Any] = {}
    for name, dotted in FIELDS.items():
        if name == "intervals":
            values[name] = Intervals(
                **{f: _value(doc, f"intervals.{f}") for f in Intervals.__dataclass_fields__}
            )
        elif name == "jobs":
            values[name] = JobsConfig(
                **{f: _value(doc, f"jobs.{f}") for f in JobsConfig.__dataclass_fields__}
            )
        elif name == "update":
            values[name] = UpdateConfig(
                **{f: _value(doc, f"update.{f}") for f in UpdateConfig.__dataclass_fields__}
            )
        elif name == "pkcs11":
            values[name] = Pkcs11Key(**raw_pkcs11) if raw_pkcs11 is not None else None
        else:
            values[name] = _value(doc, dotted)
    return AgentConfig(**values), []


def effective(config: AgentConfig) -> dict[str, Any]:
    """The configuration as the file would spell it (nested tables, every key), e.g. for ``config check``.
    It holds paths only: the key and the PIN stay in their own files."""
    out: dict[str, Any] = {}
    order = {path: i for i, (path, _) in enumerate(walk())}
    for name, dotted in sorted(FIELDS.items(), key=lambda item: order[item[1]]):
        value = getattr(config, name)
        if name == "intervals":
            value = {f: getattr(config.intervals, f) for f in Intervals.__dataclass_fields__}
        elif name == "jobs":
            value = {
                f: getattr(config.jobs, f)
                for f in JobsConfig.__dataclass_fields__
                if getattr(config.jobs, f) is not None
            }
        elif name == "update":
            value = {f: getattr(config.update, f) for f in UpdateConfig.__dataclass_fields__}
        elif name == "pkcs11":
            value = None if config.pkcs11 is None else dict(config.pkcs11.__dict__)
        if value is not None:
            _set_path(out, dotted, value)
    return out


def load(
    path: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    cli: Mapping[str, Any | None] | None = None,
) -> AgentConfig:
    """Read the file (``path``, else ``$ROOMBA_AGENT_CONFIG``, else the default path), layer env and CLI,
    validate. Raises ConfigError, naming the file tried and how it was chosen. ``--config /dev/null`` runs on
    the environment and options alone."""
    env = os.environ if env is None else env
    where, origin = resolve_path(path, env)
    try:
        file_doc = load_toml(where)
    except ConfigError as exc:
        raise ConfigError([exc.problems[0] + _origin_note(origin), *exc.problems[1:]]) from None
    config, problems = validate(merge_layers(file_doc, env, cli or {}))
    if config is None:
        raise ConfigError(problems)
    return config


def state_dir_for(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> str:
    """The state directory an agent with this config file uses, even when the file has other problems
    (``status`` must work beside a broken config). Without ``--config``: the default file if it exists,
    else ``$ROOMBA_AGENT_STATE_DIR``, ``$STATE_DIRECTORY`` (systemd) or the default."""
    env = os.environ if env is None else env
    where, origin = resolve_path(path, env)
    if origin != "default" or os.path.exists(where):
        try:
            return load(where, env).state_dir
        except ConfigError:
            try:
                merged = merge_layers(load_toml(where), env, {})
            except ConfigError:
                merged = Layered()
            found = merged.get("state_dir")
            if isinstance(found, str) and found:
                return found
    return env.get(ENV_PREFIX + "STATE_DIR") or env.get("STATE_DIRECTORY") or DEFAULT_STATE_DIR


def add_override_arguments(parser: Any, config: bool = True, verb: str = "override") -> None:
    """``--config`` and the command-line overrides shared by ``run``, ``doctor`` and ``config``, from the
    schema's ``x-option`` annotations."""
    if config:
        parser.add_argument(
            "--config",
            "-c",
            metavar="FILE",
            help=f"agent TOML file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
        )
    for dotted, sub in walk():
        spellings = options_of(sub)
        name = next((n for n, p in OVERRIDES.items() if p == dotted), None)
        if not spellings or name is None:
            continue
        metavar = sub.get("x-metavar") or (
            "N"
            if sub.get("type") in ("integer", "number")
            else "PATH"
            if sub.get("x-path")
            else dotted.rsplit(".", 1)[-1].upper()
        )
        parser.add_argument(
            *spellings,
            dest=name,
            default=None,
            metavar=metavar,
            help=f"{verb} {dotted}: {sub.get('description', '')}".rstrip(": "),
        )


def cli_overrides(ns: Any) -> dict[str, Any | None]:
    return {name: getattr(ns, name, None) for name in OVERRIDES}
