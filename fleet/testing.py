"""A real local cloud for tests: ``roomba-fleet up`` in a temp dir on a free port, torn down afterwards.

Usage (any test, any package)::

    from fleet.testing import LocalCloud

    with LocalCloud.start() as cloud:              # or LocalCloud.start(directory, rate_limit_per_thing=0)
        config = cloud.add_robot("robot-001")      # agent TOML path (CONTRACTS.md format)
        ident = cloud.identity("robot-001")        # .cert / .key / .ca paths for an MQTT client
        cloud.endpoint, cloud.port, cloud.ca_path
        cloud.update_shadow("robot-001", {"state": {"desired": {"power": "on"}}})   # as the operator
        accepted, doc = cloud.get_shadow("robot-001")

It runs the real command in a subprocess (Mosquitto with mutual TLS and the shadow service, supervised),
so what a test sees is what a developer gets. ``stop()`` (or leaving the ``with``) terminates it and
removes the temp dir it created; a directory you pass in is kept, so a second ``start`` on it tests
persistence.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from fleet import cloud as fleet_cloud
from fleet import operator as fleet_operator
from fleet.layout import OPERATOR_IDENTITY, SERVICE_IDENTITY, CloudDir


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the caller retries if it is taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class IdentityPaths:
    thing: str
    cert: Path
    key: Path
    ca: Path


class LocalCloudError(RuntimeError):
    """The local cloud did not start; the message includes the end of its output."""


class LocalCloud:
    def __init__(self, directory: Path, port: int, proc: subprocess.Popen[bytes], owns_dir: bool) -> None:
        self.dir = CloudDir.at(directory)
        self.port = port
        self.endpoint = "127.0.0.1"
        self.proc = proc
        self._owns_dir = owns_dir
        self.output: list[str] = []
        """What ``up`` printed on stdout (its ready banner: endpoint, port, CA path)."""

    @property
    def ca_path(self) -> Path:
        return self.dir.ca_cert

    @property
    def cli_args(self) -> list[str]:
        """``["--dir", DIR]`` for ``fleet.cli.main([...])`` calls against this cloud."""
        return ["--dir", str(self.dir.root)]

    @classmethod
    def start(
        cls, directory: str | os.PathLike[str] | None = None, *, timeout: float = 60.0, **settings: Any
    ) -> LocalCloud:
        """Start ``roomba-fleet up``; ``settings`` override ``fleet.layout.Settings`` fields (not the port)."""
        owns = directory is None
        root = Path(tempfile.mkdtemp(prefix="local-cloud-")) if directory is None else Path(directory)
        cloud_dir = CloudDir.at(root)
        if settings:
            cloud_dir.update_settings(**settings)
        last_error = ""
        for _attempt in range(3):
            port = free_port()
            output: list[str] = []
            proc, error = cls._launch(cloud_dir, port, timeout, output)
            if proc is not None:
                cloud = cls(root, port, proc, owns)
                cloud.output = output
                return cloud
            last_error = error
            if "already in use" not in error and "Address already in use" not in error:
                break
        if owns:
            shutil.rmtree(root, ignore_errors=True)
        raise LocalCloudError(f"roomba-fleet up failed: {last_error}")

    @staticmethod
    def _launch(
        cloud_dir: CloudDir, port: int, timeout: float, output: list[str]
    ) -> tuple[subprocess.Popen[bytes] | None, str]:
        cloud_dir.root.mkdir(parents=True, exist_ok=True)
        err_path = cloud_dir.root / "up.stderr"
        with open(err_path, "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleet.cli", "up", "--dir", str(cloud_dir.root), "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                start_new_session=True,
            )
        ready = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                output.append(line.decode(errors="replace").rstrip("\n"))
                if line.strip() == b"ready":
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready.wait(0.05):
                return proc, ""
            if proc.poll() is not None:
                break
        _terminate(proc)
        tail = err_path.read_text(errors="replace")[-2000:]
        return None, tail

    def add_robot(self, name: str, serial_port: str = fleet_cloud.DEFAULT_SERIAL_PORT) -> Path:
        """Issue a robot identity and write its agent configuration; returns the TOML path."""
        return fleet_cloud.add_robot(self.dir, name, serial_port)

    def identity(self, name: str) -> IdentityPaths:
        """Certificate paths of a robot (added on first use) or of the service/operator identities."""
        d = self.dir.identity_dir(name)
        if name not in (SERVICE_IDENTITY, OPERATOR_IDENTITY) and not (d / "device.key").exists():
            self.add_robot(name)
        return IdentityPaths(name, d / "device.crt", d / "device.key", d / "root-ca.crt")

    def get_shadow(self, thing: str, name: str | None = None) -> tuple[bool, dict[str, Any]]:
        """(accepted, document) of a shadow ``get`` as the operator (a 404 is ``(False, {...})``)."""
        return fleet_operator.request(self.dir, thing, "get", name=name)

    def update_shadow(
        self, thing: str, document: dict[str, Any], name: str | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """Publish an update as the operator (e.g. ``{"state": {"desired": {...}}}``); (accepted, response)."""
        return fleet_operator.request(self.dir, thing, "update", document, name=name)

    def operator(self) -> IdentityPaths:
        return self.identity(OPERATOR_IDENTITY)

    def run_info(self) -> dict[str, Any]:
        """``run/up.json``: the supervisor's pid and each child's pid and restart count."""
        data: dict[str, Any] = json.loads(self.dir.run_file.read_text())
        return data

    def child_pid(self, name: str) -> int:
        return int(self.run_info()["children"][name])

    def stop(self) -> None:
        """Stop ``up`` (which stops its children); if it had to be killed, kill the children it left."""
        try:
            children = [int(p) for p in self.run_info()["children"].values() if p]
        except (OSError, ValueError, KeyError, TypeError):
            children = []
        _terminate(self.proc)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self._owns_dir:
            shutil.rmtree(self.dir.root, ignore_errors=True)

    def __enter__(self) -> LocalCloud:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
