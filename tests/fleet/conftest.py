"""Fixtures for the local cloud: one shared real cloud per session, fresh ones on demand, and clients.

Other packages' tests can copy these few lines; the machinery is in ``fleet.testing``.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from fleet.testing import LocalCloud


@pytest.fixture(autouse=True)
def _keep_logging_config() -> Iterator[None]:
    """CLI ``main()`` calls configure logging onto capsys's stream; put the previous set-up back so later
    tests (any package's) never log to a closed capture."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def local_cloud() -> Iterator[LocalCloud]:
    """A running local cloud shared by the session's tests (use distinct thing names per test)."""
    with LocalCloud.start() as cloud:
        yield cloud


@pytest.fixture
def new_cloud(tmp_path: Path) -> Iterator[Callable[..., LocalCloud]]:
    """Factory for a private cloud in ``tmp_path`` (kept after stop, so it can be started again)."""
    started: list[LocalCloud] = []

    def start(**settings: Any) -> LocalCloud:
        cloud = LocalCloud.start(tmp_path / "cloud", **settings)
        started.append(cloud)
        return cloud

    yield start
    for cloud in started:
        cloud.stop()


class PahoRobot:
    """A paho-mqtt (MQTT 5) client connected with a robot's certificate; messages land in a queue."""

    def __init__(
        self, cloud: LocalCloud, thing: str, *, will: bytes | None = None, client_id: str | None = None
    ):
        ident = cloud.identity(thing)
        self.thing = thing
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id or thing, protocol=paho.MQTTv5
        )
        self.client.tls_set(ca_certs=str(ident.ca), certfile=str(ident.cert), keyfile=str(ident.key))
        if will is not None:
            self.client.will_set(f"roomba/{thing}/presence", will, qos=1, retain=True)
        self.connected = threading.Event()
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, m.payload, bool(m.retain)))
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


@pytest.fixture
def paho_robot() -> Iterator[Callable[..., PahoRobot]]:
    made: list[PahoRobot] = []

    def make(cloud: LocalCloud, thing: str, **kwargs: Any) -> PahoRobot:
        robot = PahoRobot(cloud, thing, **kwargs)
        made.append(robot)
        return robot

    yield make
    for robot in made:
        robot.close()


@pytest.fixture
def tls_refused() -> Callable[[LocalCloud, Path, Path], str | None]:
    """``tls_refused(cloud, cert, key)``: why an MQTT/TLS connection with this certificate failed, or None."""
    return _tls_refused


def _tls_refused(cloud: LocalCloud, cert: Path, key: Path) -> str | None:
    """Try a TLS+MQTT connection with this certificate; return why it failed (None if it connected)."""
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
