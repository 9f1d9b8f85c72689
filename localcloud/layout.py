"""Where a local cloud keeps its files, and its saved settings.

Every ``roomba-fleet`` command takes ``--dir``; everything a local cloud needs (CA, broker files, identities,
shadows, logs, settings) lives under that one directory, so several clouds can run side by side and a
command finds the right port from the directory alone. Without ``--dir`` every command, run from any
directory, uses the same per-user cloud (:func:`default_dir`): a default relative to the working directory
made ``robot add`` run elsewhere create a second cloud with a CA the broker does not trust.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_PORT = 8883
DEFAULT_API_PORT = 8444
DEFAULT_ENDPOINT = "127.0.0.1"
ENV_DIR = "ROOMBA_FLEET_DIR"
DEFAULT_SUBDIR = Path("roomba-fleet") / "local-cloud"
DIR_HELP = (
    "local cloud directory (default: $ROOMBA_FLEET_DIR, else "
    "${XDG_STATE_HOME:-~/.local/state}/roomba-fleet/local-cloud)"
)

SERVICE_IDENTITY = "local-cloud-shadow-service"
OPERATOR_IDENTITY = "local-cloud-operator"
IOT_SERVICE_IDENTITY = "local-cloud-iot-service"
RESERVED_NAMES = frozenset({SERVICE_IDENTITY, OPERATOR_IDENTITY, IOT_SERVICE_IDENTITY})
AWS_PROFILE = "local"  # the profile of DIR/aws/config and DIR/aws/credentials
AWS_REGION = "us-east-1"
AWS_ACCOUNT = "000000000000"
LOCAL_TOPIC_ROOT = "local-cloud"  # topics of the local cloud itself (the operator's markers), not AWS's


def default_dir() -> Path:
    """``$ROOMBA_FLEET_DIR``, else ``${XDG_STATE_HOME:-~/.local/state}/roomba-fleet/local-cloud``: one
    default per user, shared by every command wherever it runs (absolute, like every path written to a
    robot's configuration). A relative ``$XDG_STATE_HOME`` is ignored, as the XDG specification says."""
    explicit = os.environ.get(ENV_DIR)
    if explicit:
        return Path(explicit).expanduser().absolute()
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if state and Path(state).is_absolute() else Path.home() / ".local" / "state"
    return base / DEFAULT_SUBDIR


@dataclass(frozen=True)
class Settings:
    """Saved in ``settings.json``; ``up --port`` updates the port, the other commands read it."""

    port: int = DEFAULT_PORT
    endpoint: str = DEFAULT_ENDPOINT
    rate_limit_per_thing: float = 20.0
    response_qos: int = 1
    durable: bool = False
    api_port: int = DEFAULT_API_PORT

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Settings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


@dataclass(frozen=True)
class CloudDir:
    """Paths of one local cloud directory."""

    root: Path

    def __post_init__(self) -> None:
        # every path below ends up in agent configs and broker files read from other working directories
        object.__setattr__(self, "root", Path(self.root).expanduser().absolute())

    @classmethod
    def at(cls, path: str | os.PathLike[str] | None) -> CloudDir:
        """``path`` (``None``: :func:`default_dir`), made absolute."""
        return cls(Path(path) if path is not None else default_dir())

    def exists(self) -> bool:
        """A cloud lives here once its CA does (settings alone may have been written ahead of ``up``)."""
        return self.ca_cert.exists()

    @property
    def settings_path(self) -> Path:
        return self.root / "settings.json"

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_cert(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def broker_dir(self) -> Path:
        return self.root / "broker"

    @property
    def broker_conf(self) -> Path:
        return self.broker_dir / "mosquitto.conf"

    @property
    def broker_acl(self) -> Path:
        return self.broker_dir / "acl"

    @property
    def server_cert(self) -> Path:
        return self.broker_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.broker_dir / "server.key"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def broker_log(self) -> Path:
        return self.logs_dir / "mosquitto.log"

    @property
    def service_log(self) -> Path:
        return self.logs_dir / "shadow-service.log"

    @property
    def shadows_db(self) -> Path:
        return self.root / "shadows.sqlite3"

    @property
    def iot_db(self) -> Path:
        """Things, groups, jobs, executions and commands of the iot service."""
        return self.root / "iot.db"

    @property
    def iot_service_log(self) -> Path:
        return self.logs_dir / "iot-service.log"

    @property
    def aws_dir(self) -> Path:
        return self.root / "aws"

    @property
    def aws_config(self) -> Path:
        """AWS CLI / botocore config (profile ``local``, the control plane's endpoint_url), written by ``up``."""
        return self.aws_dir / "config"

    @property
    def aws_credentials(self) -> Path:
        """The operator's control-plane keys (profile ``local``, 0600), made once and kept."""
        return self.aws_dir / "credentials"

    @property
    def artifacts_dir(self) -> Path:
        """The artifact store: ``<bucket>/<key>`` files served by presigned URLs on the api port."""
        return self.root / "artifacts"

    @property
    def run_file(self) -> Path:
        return self.root / "run" / "up.json"

    @property
    def robots_dir(self) -> Path:
        return self.root / "robots"

    def identity_dir(self, name: str) -> Path:
        return self.root / "identities" / name

    def robot_config(self, name: str) -> Path:
        return self.robots_dir / f"{name}.toml"

    def robot_state_dir(self, name: str) -> Path:
        return self.root / "state" / name

    def load_settings(self) -> Settings:
        try:
            raw = json.loads(self.settings_path.read_text())
        except FileNotFoundError:
            return Settings()
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{self.settings_path} is unreadable ({exc}); fix or delete it") from None
        if not isinstance(raw, dict):
            raise SettingsError(f"{self.settings_path} must hold a JSON object; fix or delete it")
        try:
            return Settings.from_json(raw)
        except TypeError as exc:
            raise SettingsError(f"{self.settings_path}: {exc}") from None

    def save_settings(self, settings: Settings) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.settings_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(settings), indent=2) + "\n")
        os.replace(tmp, self.settings_path)

    def update_settings(self, **changes: Any) -> Settings:
        settings = replace(self.load_settings(), **changes)
        self.save_settings(settings)
        return settings

    def known_robots(self) -> list[str]:
        """Robots added with ``robot add`` (their agent configuration files)."""
        with contextlib.suppress(FileNotFoundError):
            return sorted(p.stem for p in self.robots_dir.glob("*.toml"))
        return []


class SettingsError(Exception):
    """``settings.json`` is unreadable; the message says which file and how to recover."""
