"""A real local cloud for tests: ``roomba-fleet up`` in a temp dir on a free port, torn down afterwards.

Also the paho-mqtt test clients every package's tests share: :class:`PahoRobot` (a robot's certificate),
:class:`PahoOperator` (the fleet side of one thing) and :func:`tls_refused`. paho-mqtt is a development
dependency: it is imported only when one of them is used.

Usage (any test, any package)::

    from localcloud.testing import LocalCloud

    with LocalCloud.start() as cloud:              # or LocalCloud.start(directory, rate_limit_per_thing=0)
        config = cloud.add_robot("robot-001")      # agent TOML path (CONTRACTS.md format)
        ident = cloud.identity("robot-001")        # .cert / .key / .ca paths for an MQTT client
        cloud.endpoint, cloud.port, cloud.ca_path
        cloud.update_shadow("robot-001", {"state": {"desired": {"power": "on"}}})   # as the operator
        accepted, doc = cloud.get_shadow("robot-001")
        iot = cloud.boto3_client("iot")            # the control plane through the `local` profile
        subprocess.run(["aws", "iot", "list-jobs"], env={**os.environ, **cloud.aws_env()})

It runs the real command in a subprocess (Mosquitto with mutual TLS, the shadow and iot services, supervised),
so what a test sees is what a developer gets. ``stop()`` (or leaving the ``with``) terminates it and
removes the temp dir it created; a directory you pass in is kept, so a second ``start`` on it tests
persistence.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from base.testing import wait_until
from localcloud import cloud as fleet_cloud
from localcloud.layout import OPERATOR_IDENTITY, SERVICE_IDENTITY, CloudDir
from localcloud.opclient import shadow_request
from shadow.document import replacing_patch
from shadow.topics import events_topic, presence_topic, shadow_topic


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
    def __init__(
        self,
        directory: Path,
        port: int,
        proc: subprocess.Popen[bytes],
        owns_dir: bool,
        api_port: int | None = None,
    ) -> None:
        self.dir = CloudDir.at(directory)
        self.port = port
        self.api_port = api_port if api_port is not None else self.dir.load_settings().api_port
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
        """Start ``roomba-fleet up``; ``settings`` override ``localcloud.layout.Settings`` fields (not the port)."""
        owns = directory is None
        root = Path(tempfile.mkdtemp(prefix="local-cloud-")) if directory is None else Path(directory)
        cloud_dir = CloudDir.at(root)
        if settings:
            cloud_dir.update_settings(**settings)
        last_error = ""
        for _attempt in range(3):
            port = free_port()
            api_port = free_port()
            while api_port == port:
                api_port = free_port()
            output: list[str] = []
            proc, error = cls._launch(cloud_dir, port, timeout, output, api_port)
            if proc is not None:
                cloud = cls(root, port, proc, owns, api_port)
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
        cloud_dir: CloudDir, port: int, timeout: float, output: list[str], api_port: int
    ) -> tuple[subprocess.Popen[bytes] | None, str]:
        cloud_dir.root.mkdir(parents=True, exist_ok=True)
        err_path = cloud_dir.root / "up.stderr"
        with open(err_path, "ab") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fleet.cli",
                    "up",
                    "--dir",
                    str(cloud_dir.root),
                    "--port",
                    str(port),
                    "--api-port",
                    str(api_port),
                ],
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
        return shadow_request(self.dir, thing, "get", name=name)

    def update_shadow(
        self, thing: str, document: dict[str, Any], name: str | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """Publish an update as the operator (e.g. ``{"state": {"desired": {...}}}``); (accepted, response)."""
        return shadow_request(self.dir, thing, "update", document, name=name)

    @property
    def api_url(self) -> str:
        return f"http://{self.endpoint}:{self.api_port}"

    def aws_env(self) -> dict[str, str]:
        """Environment variables that point the AWS CLI / boto3 at this cloud's ``local`` profile."""
        return {
            "AWS_CONFIG_FILE": str(self.dir.aws_config),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.dir.aws_credentials),
            "AWS_PROFILE": "local",
        }

    def boto3_session(self) -> Any:
        """A boto3 session on the ``local`` profile of DIR/aws (boto3 is a development dependency)."""
        import botocore.session
        from boto3 import Session

        core = botocore.session.Session(profile="local")
        core.set_config_variable("config_file", str(self.dir.aws_config))
        core.set_config_variable("credentials_file", str(self.dir.aws_credentials))
        return Session(botocore_session=core)

    def boto3_client(self, service: str = "iot", **kwargs: Any) -> Any:
        """``boto3`` client for ``iot`` / ``iot-jobs-data`` through the profile (endpoint from DIR/aws/config)."""
        return self.boto3_session().client(service, **kwargs)

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


# --- paho-mqtt test clients ----------------------------------------------------------------------


class PahoRobot:
    """A paho-mqtt (MQTT 5) client connected with a robot's certificate; messages land in a queue."""

    def __init__(
        self, cloud: LocalCloud, thing: str, *, will: bytes | None = None, client_id: str | None = None
    ) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        ident = cloud.identity(thing)
        self.thing = thing
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or thing, protocol=paho.MQTTv5
        )
        self.client.tls_set(ca_certs=str(ident.ca), certfile=str(ident.cert), keyfile=str(ident.key))
        if will is not None:
            self.client.will_set(presence_topic(thing), will, qos=1, retain=True)
        self.connected = threading.Event()
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put(
            (m.topic, bytes(m.payload), bool(m.retain))
        )
        self.acks: dict[int, Any] = {}
        self.client.on_publish = self._on_publish
        self.client.connect(cloud.endpoint, cloud.port)
        self.client.loop_start()
        assert self.connected.wait(15), f"{thing} did not connect"

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self.acks[mid] = reason

    def subscribe(self, *filters: str, qos: int = 1) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe([(f, qos) for f in filters])
        assert done.wait(10)

    def publish(self, topic: str, payload: Any, qos: int = 1, retain: bool = False) -> int:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        info = self.client.publish(topic, data, qos=qos, retain=retain)
        return int(info.mid)

    def collect(self, count: int, timeout: float = 5.0) -> list[tuple[str, Any]]:
        """``count`` messages (topic, decoded JSON), or fewer if the timeout passes."""
        out: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            try:
                topic, payload, _r = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            try:
                out.append((topic, json.loads(payload) if payload else None))
            except ValueError:
                out.append((topic, payload))
        return out

    def quiet_for(self, seconds: float) -> list[tuple[str, bytes]]:
        """Whatever arrives within ``seconds`` (expected: nothing)."""
        got = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                topic, payload, _r = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
                got.append((topic, payload))
            except queue.Empty:
                pass
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class PahoOperator:
    """The fleet side: writes desired, reads shadows, records events and presence."""

    def __init__(self, cloud: LocalCloud, thing: str) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        ident = cloud.operator()
        self.thing = thing
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.presence: list[dict[str, Any]] = []
        self.responses: dict[str, dict[str, Any]] = {}
        self.connects = 0
        self.subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"operator-{uuid.uuid4().hex[:8]}",
            protocol=paho.MQTTv5,
        )
        self.client.tls_set(ca_certs=str(ident.ca), certfile=str(ident.cert), keyfile=str(ident.key))
        self.client.reconnect_delay_set(0.05, 0.2)  # type: ignore[arg-type]  # paho accepts floats
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", cloud.port)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 20, "operator subscription")

    def _on_connect(self, client: Any, *_: Any) -> None:
        self.subscribed.clear()
        client.subscribe(
            [
                (shadow_topic(self.thing, "#"), 1),
                (events_topic(self.thing), 1),
                (presence_topic(self.thing), 1),
            ]
        )
        with self.lock:
            self.connects += 1

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self.lock:
            if msg.topic.endswith("/events"):
                self.events.append(doc)
            elif msg.topic.endswith("/presence"):
                self.presence.append(doc)
            elif (
                isinstance(doc, dict)
                and str(doc.get("clientToken", "")).startswith("op-")
                and msg.topic.endswith(("/accepted", "/rejected"))
            ):
                self.responses[doc["clientToken"]] = {"topic": msg.topic, **doc}

    def update_desired(self, desired: dict[str, Any], shadow: str | None = None) -> None:
        token = f"op-{uuid.uuid4().hex[:10]}"
        body = {"state": {"desired": desired}, "clientToken": token}
        self.client.publish(shadow_topic(self.thing, "update", name=shadow), json.dumps(body), qos=1)
        wait_until(lambda: token in self.responses, 20, "desired update accepted")
        assert self.responses[token]["topic"].endswith("/accepted"), self.responses[token]

    def command(self, cmd: dict[str, Any]) -> None:
        """Replace desired.command the way the fleet must (docs/agent.md): old arguments nulled."""
        previous = (self.get().get("desired") or {}).get("command")
        self.update_desired({"command": replacing_patch(previous, cmd)})

    def get(self, shadow: str | None = None, timeout: float = 30) -> dict[str, Any]:
        """Asked again every 2 s: after a broker restart the shadow service needs a moment to come back."""
        tokens: list[str] = []

        def answered() -> dict[str, Any] | None:
            for t in tokens:
                if t in self.responses:
                    return self.responses[t]
            if not tokens or time.monotonic() - sent[0] > 2:
                tokens.append(f"op-{uuid.uuid4().hex[:10]}")
                sent[0] = time.monotonic()
                self.client.publish(
                    shadow_topic(self.thing, "get", name=shadow),
                    json.dumps({"clientToken": tokens[-1]}),
                    qos=1,
                )
            return None

        sent = [0.0]
        resp = wait_until(answered, timeout, "shadow get")
        state = resp.get("state") or {}
        return state if isinstance(state, dict) else {}

    def reported(self, shadow: str | None = None) -> dict[str, Any]:
        return self.get(shadow).get("reported") or {}

    def wait_reported(
        self, predicate: Callable[[dict[str, Any]], Any], timeout: float, what: str, shadow: str | None = None
    ) -> dict[str, Any]:
        box: dict[str, Any] = {}

        def check() -> bool:
            box["r"] = self.reported(shadow)
            return bool(predicate(box["r"]))

        try:
            wait_until(check, timeout, what, interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last reported: {json.dumps(box.get('r'))[:1500]}") from None
        reported: dict[str, Any] = box["r"]
        return reported

    def wait_command(
        self, command_id: str, statuses: tuple[str, ...] = ("done",), timeout: float = 15
    ) -> dict[str, Any]:
        rep = self.wait_reported(
            lambda r: (
                (r.get("command") or {}).get("id") == command_id and r["command"].get("status") in statuses
            ),
            timeout,
            f"command {command_id}",
        )
        return dict(rep["command"])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def tls_refused(cloud: LocalCloud, cert: Path, key: Path) -> str | None:
    """Try a TLS+MQTT connection with this certificate; return why it failed (None if it connected)."""
    import ssl

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    ctx = ssl.create_default_context(cafile=str(cloud.ca_path))
    ctx.load_cert_chain(str(cert), str(key))
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="refused-check", protocol=paho.MQTTv311)
    client.tls_set_context(ctx)
    try:
        client.connect(cloud.endpoint, cloud.port)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            rc = client.loop(0.2)
            if rc != paho.MQTT_ERR_SUCCESS:
                return f"connection lost ({rc})"
            if client.is_connected():
                client.disconnect()
                return None
        return "no CONNACK"
    except (ssl.SSLError, OSError) as exc:
        return str(exc) or type(exc).__name__
