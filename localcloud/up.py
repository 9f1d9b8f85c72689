"""What ``roomba-fleet up`` runs: the local AWS IoT stand-in in the foreground (Mosquitto, the shadow service
and the iot service: Jobs, Commands and the control plane's HTTP API).

:func:`run` prepares DIR (CA, certificates, broker configuration, the ``local`` AWS profile under DIR/aws) with
the provisioning API, starts Mosquitto with a raised open-file limit, the shadow service and the iot service,
prints where to connect, supervises them and stops them on Ctrl-C / SIGTERM. ``run/up.json`` in DIR tells other commands (and tests) the pids and port. The
ready banner ends with a paste-ready ``mosquitto_sub`` line (the operator identity, absolute paths) and the
line ``ready``; with ``as_json`` it is one JSON object instead. The command line is parsed by ``fleet.up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

from base import logs
from base.process import pid_alive, process_cmdline, raise_nofile_limit
from localcloud import broker, cloud
from localcloud.layout import AWS_PROFILE, OPERATOR_IDENTITY, CloudDir, SettingsError
from localcloud.supervisor import Child, Supervisor
from provisioning import device as pdevice
from provisioning.errors import ProvisioningError

log = logs.get_logger("localcloud.up")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerLogReady:
    """Mosquitto is ready once it logs "running" after this start. Reading its log, instead of probing
    the port, keeps a failed-TLS line per start out of that log. ``mark()`` runs just before each start."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.offset = 0

    def mark(self, _child: Child) -> None:
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def __call__(self, _child: Child) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                return b" running" in f.read()
        except FileNotFoundError:
            return False


def _write_run_file(cloud_dir: CloudDir, sup: Supervisor, port: int, api_port: int | None = None) -> None:
    path = cloud_dir.run_file
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": os.getpid(),
        "port": port,
        "api_port": api_port,
        "aws_config": str(cloud_dir.aws_config),
        "aws_credentials": str(cloud_dir.aws_credentials),
        "children": {c.name: c.proc.pid if c.proc else None for c in sup.children},
        "restarts": {c.name: c.restarts for c in sup.children},
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info) + "\n")
    os.replace(tmp, path)


def _belongs_to(pid: int, cloud_dir: CloudDir) -> bool:
    argv = process_cmdline(pid)
    return str(cloud_dir.broker_conf) in argv or str(cloud_dir.root) in argv


def _could_be_up(pid: int) -> bool:
    argv = process_cmdline(pid)
    return not argv or any("fleet" in part for part in argv)


def clean_up_after_predecessor(cloud_dir: CloudDir) -> str | None:
    """Deal with what a previous ``up`` on this DIR left: a problem if it still runs, else stop its
    children (only processes whose command line names this DIR) if any outlived it."""
    info = run_info(cloud_dir)
    if not info:
        return None
    pid = info.get("pid")
    if isinstance(pid, int) and pid != os.getpid() and pid_alive(pid) and _could_be_up(pid):
        return f"a local cloud is already running in {cloud_dir.root} (pid {pid}); stop it first"
    children = info.get("children")
    stale = [
        p
        for p in (children.values() if isinstance(children, dict) else [])
        if isinstance(p, int) and pid_alive(p) and _belongs_to(p, cloud_dir)
    ]
    for child in stale:
        log.warning("localcloud.up.stale_child", pid=child)
        print(f"roomba-fleet up: stopping pid {child} left running by a previous `up`", file=sys.stderr)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while any(pid_alive(p) for p in stale) and time.monotonic() < deadline:
        time.sleep(0.05)
    for child in stale:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    cloud_dir.run_file.unlink(missing_ok=True)
    return None


EXIT_CANNOT_START = 1
ALL_SHADOWS = "$aws/things/+/shadow/#"


def mosquitto_sub_argv(
    cloud_dir: CloudDir, endpoint: str, port: int, topics: tuple[str, ...] = (ALL_SHADOWS,)
) -> list[str]:
    """A ``mosquitto_sub`` (package mosquitto-clients) that watches ``topics`` as the operator: the broker
    wants a client certificate, and the operator's ACL reads every thing's topics."""
    ident = cloud_dir.identity_dir(OPERATOR_IDENTITY)
    argv = [
        "mosquitto_sub",
        "--cafile",
        str(cloud_dir.ca_cert),
        "--cert",
        str(ident / pdevice.DEVICE_CERT),
        "--key",
        str(ident / pdevice.DEVICE_KEY),
        "-h",
        endpoint,
        "-p",
        str(port),
        "-V",
        "mqttv5",
    ]
    for topic in topics:
        argv += ["-t", topic]
    return [*argv, "-v"]


def aws_cli_line(cloud_dir: CloudDir) -> str:
    """The paste-ready AWS CLI call through the ``local`` profile that ``up`` writes."""
    env = {
        "AWS_CONFIG_FILE": str(cloud_dir.aws_config),
        "AWS_SHARED_CREDENTIALS_FILE": str(cloud_dir.aws_credentials),
        "AWS_PROFILE": AWS_PROFILE,
    }
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " aws iot list-jobs"


def connection_info(
    cloud_dir: CloudDir, endpoint: str, port: int, api_port: int | None = None
) -> dict[str, object]:
    """What ``up --json`` prints once ready: where to connect, and as whom."""
    ident = cloud_dir.identity_dir(OPERATOR_IDENTITY)
    return {
        "ready": True,
        "dir": str(cloud_dir.root),
        "endpoint": endpoint,
        "port": port,
        "api_port": api_port,
        "api_url": f"http://{endpoint}:{api_port}" if api_port is not None else None,
        "aws": {
            "config": str(cloud_dir.aws_config),
            "credentials": str(cloud_dir.aws_credentials),
            "profile": AWS_PROFILE,
            "aws_cli": aws_cli_line(cloud_dir),
        },
        "ca": str(cloud_dir.ca_cert),
        "operator": {
            "cert": str(ident / pdevice.DEVICE_CERT),
            "key": str(ident / pdevice.DEVICE_KEY),
        },
        "mosquitto_sub": shlex.join(mosquitto_sub_argv(cloud_dir, endpoint, port)),
        "pid": os.getpid(),
    }


def run(
    cloud_dir: CloudDir, port: int | None = None, *, as_json: bool = False, api_port: int | None = None
) -> int:
    """Serve the local cloud in ``cloud_dir`` until SIGTERM/SIGINT/SIGHUP; the exit status of ``up`` (1 when
    it cannot start, with the reason on stderr). ``port`` replaces the saved one. ``as_json``: the ready
    banner is one JSON line (:func:`connection_info`). ``api_port`` replaces the saved control-plane port."""
    try:
        mosquitto = broker.find_mosquitto()
    except broker.BrokerMissing as exc:
        print(f"roomba-fleet up: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    # before prepare(): a running cloud's broker files and robot configs must not change under it
    problem = clean_up_after_predecessor(cloud_dir)
    if problem:
        print(f"roomba-fleet up: {problem}", file=sys.stderr)
        return EXIT_CANNOT_START
    try:
        settings = cloud.prepare(cloud_dir, port, api_port)
    except (ProvisioningError, SettingsError) as exc:
        print(f"roomba-fleet up: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    if port_open(settings.endpoint, settings.port):
        print(
            f"roomba-fleet up: {settings.endpoint}:{settings.port} is already in use (another local cloud?); "
            f"stop it or pass --port",
            file=sys.stderr,
        )
        return EXIT_CANNOT_START
    if settings.api_port == settings.port or port_open(settings.endpoint, settings.api_port):
        print(
            f"roomba-fleet up: {settings.endpoint}:{settings.api_port} is already in use (another local cloud?); "
            f"stop it or pass --api-port",
            file=sys.stderr,
        )
        return EXIT_CANNOT_START
    raise_nofile_limit()
    broker_ready = BrokerLogReady(cloud_dir.broker_log)
    broker_child = Child(
        "mosquitto",
        [mosquitto, "-c", str(cloud_dir.broker_conf)],
        cloud_dir.logs_dir / "mosquitto.out",
        ready=broker_ready,
        before_start=broker_ready.mark,
    )
    service_child = Child(
        "shadow-service",
        [sys.executable, "-m", "localcloud.shadow_service", "--dir", str(cloud_dir.root)],
        cloud_dir.service_log,
        ready=lambda c: c.ready_event.is_set(),
        stdout_pipe=True,
    )
    iot_child = Child(
        "iot-service",
        [sys.executable, "-m", "localcloud.iot_service", "--dir", str(cloud_dir.root)],
        cloud_dir.iot_service_log,
        ready=lambda c: c.ready_event.is_set(),
        stdout_pipe=True,
    )
    sup = Supervisor([broker_child, service_child, iot_child])
    sup.on_change = lambda: _write_run_file(cloud_dir, sup, settings.port, settings.api_port)

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        sup.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    problem = sup.start_all()
    if problem:
        sup.stop_all()
        print(f"roomba-fleet up: {problem}", file=sys.stderr)
        for path in (broker_child.log_path, cloud_dir.broker_log):
            if path.exists():
                for line in path.read_text(errors="replace").strip().splitlines()[-5:]:
                    print(f"  {line}", file=sys.stderr)
        return EXIT_CANNOT_START
    _write_run_file(cloud_dir, sup, settings.port, settings.api_port)
    if as_json:
        info = connection_info(cloud_dir, settings.endpoint, settings.port, settings.api_port)
        print(json.dumps(info), flush=True)
    else:
        _print_ready(cloud_dir, settings.endpoint, settings.port, settings.api_port)
    try:
        sup.run()
    finally:
        print("roomba-fleet up: stopping", file=sys.stderr, flush=True)
        sup.stop_all()
        cloud_dir.run_file.unlink(missing_ok=True)
    return 0


def _print_ready(cloud_dir: CloudDir, endpoint: str, port: int, api_port: int | None = None) -> None:
    d = str(cloud_dir.root)
    lines = [
        f"local cloud ready in {d}",
        f"  endpoint: {endpoint}",
        f"  port:     {port}",
        f"  api:      http://{endpoint}:{api_port} (AWS IoT control plane, profile {AWS_PROFILE})",
        f"  ca:       {cloud_dir.ca_cert}",
        f"  add a robot:   roomba-fleet robot add NAME --dir {shlex.quote(d)}",
        f"  watch robots:  roomba-fleet watch --dir {shlex.quote(d)}",
        "  raw MQTT (every shadow topic, as the operator; package mosquitto-clients):",
        f"    {shlex.join(mosquitto_sub_argv(cloud_dir, endpoint, port))}",
        "  AWS CLI / boto3 (jobs, things, commands):",
        f"    {aws_cli_line(cloud_dir)}",
        "  stop:          Ctrl-C",
        "ready",
    ]
    print("\n".join(lines), flush=True)


def run_info(cloud_dir: CloudDir) -> dict[str, object] | None:
    """What ``up`` wrote to ``run/up.json`` (None if it is not running)."""
    try:
        data = json.loads(Path(cloud_dir.run_file).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
