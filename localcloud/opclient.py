"""A small blocking MQTT client for operator commands (``shadow``, ``watch``), on the same codec as the
shadow service, so ``roomba-fleet`` needs no MQTT library at run time.

It connects with the operator identity (privileged ACL) and a unique client id, so several operator
commands can run at once. When nothing listens on the cloud's port it raises ``CloudNotRunning`` whose
message says how to start the cloud.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Callable, Iterator

from localcloud import mqtt_lite as mq
from localcloud.layout import OPERATOR_IDENTITY, CloudDir
from localcloud.tlsio import TlsClosed, TlsConnection


class CloudNotRunning(Exception):
    """The local cloud in DIR is not reachable; the message says what to do."""


class OperatorClient:
    def __init__(self, cloud: CloudDir, *, timeout: float = 5.0) -> None:
        self.cloud = cloud
        self.timeout = timeout
        self._parser = mq.PacketParser()
        self._backlog: list[mq.Packet] = []
        self._next_id = 0
        ident = cloud.identity_dir(OPERATOR_IDENTITY)
        if not (ident / "device.key").exists():
            raise CloudNotRunning(
                f"{cloud.root} is not a local cloud directory (no operator identity); "
                f"start one with `roomba-fleet up --dir {cloud.root}`"
            )
        settings = cloud.load_settings()
        self.endpoint, self.port = settings.endpoint, settings.port
        ctx = ssl.create_default_context(cafile=str(ident / "root-ca.crt"))
        ctx.load_cert_chain(str(ident / "device.crt"), str(ident / "device.key"))
        try:
            self.conn = TlsConnection.connect(self.endpoint, self.port, ctx, timeout=timeout)
        except ConnectionRefusedError:
            raise CloudNotRunning(
                f"the local cloud in {cloud.root} is not running (nothing listens on "
                f"{self.endpoint}:{self.port}); start it with `roomba-fleet up --dir {cloud.root}`"
            ) from None
        except (OSError, ssl.SSLError, TlsClosed) as exc:
            raise CloudNotRunning(
                f"cannot connect to the local cloud at {self.endpoint}:{self.port} ({exc}); "
                f"is `roomba-fleet up --dir {cloud.root}` running?"
            ) from None
        client_id = f"{OPERATOR_IDENTITY}-{uuid.uuid4().hex[:12]}"
        self._send(mq.connect(client_id, keepalive=60))
        try:
            connack = self._wait_for(lambda p: p.type == mq.CONNACK)
        except CloudNotRunning:
            self.conn.close()
            raise
        if connack is None or len(connack.body) < 2 or connack.body[1] != 0:
            self.conn.close()
            raise CloudNotRunning(f"the broker at {self.endpoint}:{self.port} refused the operator identity")

    def _send(self, data: bytes) -> None:
        try:
            self.conn.send(data)
        except OSError as exc:
            raise CloudNotRunning(f"lost the connection to the local cloud ({exc})") from None

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _read(self, timeout: float) -> list[mq.Packet]:
        if not self.conn.wait_readable(max(timeout, 0.0)):
            return []
        try:
            self._parser.feed(self.conn.recv())
            return self._parser.packets()
        except (TlsClosed, OSError, mq.ProtocolError) as exc:  # ssl.SSLError is an OSError
            raise CloudNotRunning(f"lost the connection to the local cloud ({exc})") from None

    def _wait_for(self, match: Callable[[mq.Packet], bool]) -> mq.Packet | None:
        deadline = time.monotonic() + self.timeout
        found: mq.Packet | None = None
        while found is None and time.monotonic() < deadline:
            for pkt in self._read(deadline - time.monotonic()):
                if found is None and match(pkt):
                    found = pkt
                elif pkt.type == mq.PUBLISH:
                    self._backlog.append(pkt)
        return found

    def subscribe(self, filters: list[str], qos: int = 1) -> None:
        pid = self._packet_id()
        self._send(mq.subscribe(pid, [(f, qos) for f in filters]))
        suback = self._wait_for(lambda p: p.type == mq.SUBACK and p.body[:2] == pid.to_bytes(2, "big"))
        if suback is None:
            raise CloudNotRunning("the broker did not acknowledge the subscription")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        self._send(mq.publish(topic, payload, qos, self._packet_id() if qos else 0))

    def messages(self, timeout: float | None) -> Iterator[mq.Packet]:
        """Publications as they arrive, until ``timeout`` seconds pass (None: forever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._backlog:
            pkt = self._backlog.pop(0)
            if pkt.qos:
                self._send(mq.puback(pkt.packet_id))
            yield pkt
        last_ping = time.monotonic()
        while deadline is None or time.monotonic() < deadline:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            for pkt in self._read(wait):
                if pkt.type == mq.PUBLISH:
                    if pkt.qos:
                        self._send(mq.puback(pkt.packet_id))
                    yield pkt
            if time.monotonic() - last_ping > 30:
                self._send(mq.PINGREQ_BYTES)
                last_ping = time.monotonic()

    def close(self) -> None:
        try:
            self.conn.send(mq.DISCONNECT_BYTES)
        except (OSError, ssl.SSLError):
            pass
        self.conn.close()

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
