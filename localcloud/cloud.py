"""Creating a local cloud directory and adding robots to it (files only; no processes).

Everything is idempotent: the CA, the broker's server certificate and the service/operator identities are
made with the provisioning API the first time and reused afterwards, so ``up`` and ``robot add`` can run in
any order and a directory survives restarts with its identities intact. A new cloud is never made silently:
whoever creates the CA says so on stderr ("creating a new local cloud in DIR"), so a ``robot add`` aimed at
the wrong directory is seen at once instead of leaving a robot whose CA the running broker does not know.
Every path written to a robot's configuration is absolute, so the agent may start from any directory.
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

from base.logs import get_logger
from localcloud import broker
from localcloud.layout import OPERATOR_IDENTITY, RESERVED_NAMES, SERVICE_IDENTITY, CloudDir, Settings
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


def prepare(cloud: CloudDir, port: int | None = None) -> Settings:
    """Make ``cloud`` ready for ``up``: CA, server cert, service and operator identities, broker files.

    A new ``port`` is saved, and the robots' agent configurations are rewritten to use it.
    """
    cloud.root.mkdir(parents=True, exist_ok=True)
    settings = cloud.load_settings()
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
        for name in (SERVICE_IDENTITY, OPERATOR_IDENTITY):
            ensure_identity(cloud, ca, name)
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
