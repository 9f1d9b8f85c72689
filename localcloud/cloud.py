"""Creating a local cloud directory and adding robots to it (files only; no processes).

Everything is idempotent: the CA, the broker's server certificate and the service/operator identities are
made with the provisioning API the first time and reused afterwards, so ``up`` and ``robot add`` can run in
any order and a directory survives restarts with its identities intact. A new cloud is never made silently:
whoever creates the CA says so on stderr ("creating a new local cloud in DIR"), so a ``robot add`` aimed at
the wrong directory is seen at once instead of leaving a robot whose CA the running broker does not know.
Every path written to a robot's configuration is absolute, so the agent may start from any directory.
"""

from __future__ import annotations

import configparser
import os
import secrets
import string
import sys
import tomllib
from pathlib import Path

from base.logs import get_logger
from localcloud import broker
from localcloud.layout import (
    AWS_PROFILE,
    AWS_REGION,
    IOT_SERVICE_IDENTITY,
    OPERATOR_IDENTITY,
    RESERVED_NAMES,
    SERVICE_IDENTITY,
    CloudDir,
    Settings,
)
from provisioning import ca as pca
from provisioning import device as pdevice
from provisioning.names import thing_name_problem

log = get_logger("localcloud.cloud")

DEFAULT_SERIAL_PORT = "socket://127.0.0.1:7000"


class RobotNameError(ValueError):
    """A robot name that cannot be a thing name, or is reserved for the local cloud itself."""


def announce_new_cloud(cloud: CloudDir) -> None:
    """The one line a user sees when a command creates a cloud (its CA) instead of using an existing one."""
    print(f"roomba-fleet: creating a new local cloud in {cloud.root}", file=sys.stderr, flush=True)


def ensure_ca(cloud: CloudDir) -> pca.CertificateAuthority:
    if cloud.exists():
        return pca.load_ca(cloud.ca_dir)
    announce_new_cloud(cloud)
    log.info("fleet.ca.created", dir=str(cloud.ca_dir))
    return pca.init_ca(cloud.ca_dir, common_name="Roomba Local Cloud CA")


def absolute_serial_port(port: str) -> str:
    """A device path made absolute against the current directory (a pty's symlink is kept, not resolved:
    the simulator re-points it at each start); pyserial URLs (``socket://``, ``rfc2217://``, ...) as given."""
    if "://" in port or not port:
        return port
    return str(Path(port).expanduser().absolute())


def ensure_identity(cloud: CloudDir, ca: pca.CertificateAuthority, name: str) -> Path:
    """The identity directory for ``name`` (created on first use)."""
    directory = cloud.identity_dir(name)
    if not (directory / pdevice.DEVICE_KEY).exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        pdevice.create_identity(ca, name, directory)
        log.info("fleet.identity.created", thing=name)
    return directory


def prepare(cloud: CloudDir, port: int | None = None, api_port: int | None = None) -> Settings:
    """Make ``cloud`` ready for ``up``: CA, server cert, service and operator identities, broker files,
    the AWS config and credentials of the control plane.

    A new ``port`` is saved, and the robots' agent configurations are rewritten to use it; a new
    ``api_port`` is saved and written into ``DIR/aws/config``.
    """
    cloud.root.mkdir(parents=True, exist_ok=True)
    settings = cloud.load_settings()
    if api_port is not None and api_port != settings.api_port:
        settings = cloud.update_settings(api_port=api_port)
    port_changed = port is not None and port != settings.port
    if port_changed or not cloud.settings_path.exists():
        settings = cloud.update_settings(port=port if port is not None else settings.port)
    if port_changed:
        for name in cloud.known_robots():
            add_robot(cloud, name, _serial_port_of(cloud, name))
    with ensure_ca(cloud) as ca:
        if not cloud.server_cert.exists() or not cloud.server_key.exists():
            pca.issue_server_cert(
                ca, cloud.broker_dir, ["localhost"], [settings.endpoint, "::1"], name="server", replace=True
            )
        for name in (SERVICE_IDENTITY, OPERATOR_IDENTITY, IOT_SERVICE_IDENTITY):
            ensure_identity(cloud, ca, name)
    write_aws_files(cloud, settings)
    cloud.logs_dir.mkdir(parents=True, exist_ok=True)
    persistence = cloud.broker_dir / "data"
    persistence.mkdir(parents=True, exist_ok=True)
    cloud.broker_acl.write_text(broker.acl_text())
    cloud.broker_conf.write_text(
        broker.broker_config(
            port=settings.port,
            ca_cert=cloud.ca_cert,
            server_cert=cloud.server_cert,
            server_key=cloud.server_key,
            acl_file=cloud.broker_acl,
            log_file=cloud.broker_log,
            persistence_dir=persistence,
            bind=settings.endpoint,
        )
    )
    return settings


def api_url(settings: Settings) -> str:
    """The control plane's base URL (``iot`` and ``iot-jobs-data`` share it)."""
    return f"http://{settings.endpoint}:{settings.api_port}"


def _new_access_key() -> tuple[str, str]:
    alphabet = string.ascii_uppercase + string.digits
    key_id = "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret = "".join(secrets.choice(string.ascii_letters + string.digits + "+/") for _ in range(40))
    return key_id, secret


def read_aws_credentials(cloud: CloudDir, profile: str = AWS_PROFILE) -> tuple[str, str] | None:
    """(access key id, secret) of ``profile`` in ``DIR/aws/credentials``; None if there is none."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(cloud.aws_credentials.read_text())
    except (OSError, configparser.Error):
        return None
    if not parser.has_section(profile):
        return None
    key_id = parser.get(profile, "aws_access_key_id", fallback="").strip()
    secret = parser.get(profile, "aws_secret_access_key", fallback="").strip()
    return (key_id, secret) if key_id and secret else None


def aws_config_text(settings: Settings, profile: str = AWS_PROFILE) -> str:
    """``DIR/aws/config``: region and output of the profile, and the endpoint of both services through a
    ``services`` section (botocore's keys: the service id lower-cased, spaces as underscores)."""
    url = api_url(settings)
    return "\n".join(
        [
            "# Written by `roomba-fleet up`: the local cloud's control plane (AWS IoT and the Jobs data plane).",
            f"[profile {profile}]",
            f"region = {AWS_REGION}",
            "output = json",
            "services = local-cloud",
            "",
            "[services local-cloud]",
            "iot =",
            f"  endpoint_url = {url}",
            "iot_jobs_data_plane =",
            f"  endpoint_url = {url}",
            "",
        ]
    )


def write_aws_files(cloud: CloudDir, settings: Settings) -> None:
    """The AWS CLI / boto3 profile ``local``: credentials made once (0600) and kept across runs, the config
    rewritten with the current api port."""
    cloud.aws_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(cloud.aws_dir, 0o700)  # mkdir's mode does not tighten a directory that already exists
    if read_aws_credentials(cloud) is None:
        key_id, secret = _new_access_key()
        text = (
            "# Written by `roomba-fleet up`: the local cloud's operator keys (made once; keep them private).\n"
            f"[{AWS_PROFILE}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n"
        )
        tmp = cloud.aws_credentials.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, cloud.aws_credentials)
        log.info("fleet.aws.credentials_created", path=str(cloud.aws_credentials))
    os.chmod(cloud.aws_credentials, 0o600)
    tmp = cloud.aws_config.with_suffix(".tmp")
    tmp.write_text(aws_config_text(settings))
    os.replace(tmp, cloud.aws_config)


def agent_config_text(
    *, thing: str, state_dir: Path, endpoint: str, port: int, identity_dir: Path, serial_port: str
) -> str:
    """The agent configuration (TOML, CONTRACTS.md) for a robot of this local cloud."""

    def q(value: str | Path) -> str:
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    return "\n".join(
        [
            f"# Written by `roomba-fleet robot add {thing}`; run with `roomba-agent run --config <this file>`.",
            f"thing_name = {q(thing)}",
            f"state_dir = {q(state_dir)}",
            "",
            "[connection]",
            f"endpoint = {q(endpoint)}",
            f"port = {port}",
            f"root_ca = {q(identity_dir / pdevice.ROOT_CA)}",
            f"cert = {q(identity_dir / pdevice.DEVICE_CERT)}",
            f"key = {q(identity_dir / pdevice.DEVICE_KEY)}",
            "local = true",
            "",
            "[robot]",
            f"serial_port = {q(serial_port)}",
            'model = "create2"',
            "",
        ]
    )


def _serial_port_of(cloud: CloudDir, name: str) -> str:
    try:
        config = tomllib.loads(cloud.robot_config(name).read_text())
        return str(config["robot"]["serial_port"])
    except (OSError, ValueError, KeyError, TypeError):
        return DEFAULT_SERIAL_PORT


def add_robot(cloud: CloudDir, name: str, serial_port: str = DEFAULT_SERIAL_PORT) -> Path:
    """Issue ``name``'s identity (once) and (re)write its agent configuration; return the config path."""
    problem = thing_name_problem(name)
    if problem:
        raise RobotNameError(problem)
    if name in RESERVED_NAMES:
        raise RobotNameError(f"{name!r} is reserved for the local cloud itself; choose another robot name")
    cloud.root.mkdir(parents=True, exist_ok=True)
    settings = cloud.load_settings()
    if not cloud.settings_path.exists():
        cloud.save_settings(settings)
    with ensure_ca(cloud) as ca:
        identity = ensure_identity(cloud, ca, name)
    serial_port = absolute_serial_port(serial_port)
    state_dir = cloud.robot_state_dir(name)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cloud.robots_dir.mkdir(parents=True, exist_ok=True)
    path = cloud.robot_config(name)
    text = agent_config_text(
        thing=name,
        state_dir=state_dir,
        endpoint=settings.endpoint,
        port=settings.port,
        identity_dir=identity,
        serial_port=serial_port,
    )
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    log.info("fleet.robot.added", thing=name, config=str(path))
    return path
