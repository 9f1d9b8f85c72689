"""A small blocking MQTT client for operator commands (``shadow``, ``watch``), on the same codec as the
shadow service, so ``roomba-fleet`` needs no MQTT library at run time.

It connects with the operator identity (privileged ACL) and a unique client id, so several operator
commands can run at once. When nothing listens on the cloud's port it raises ``CloudNotRunning`` whose
message says how to start the cloud.

Shadow requests speak the same MQTT protocol a robot does (publish to ``.../get`` etc., wait for the answer
carrying our ``clientToken``): :func:`shadow_request` for one thing, :meth:`OperatorClient.shadow_requests`
for many at once.
"""

from __future__ import annotations

import json
import ssl
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from localcloud import mqtt_lite as mq
from localcloud.layout import LOCAL_TOPIC_ROOT, OPERATOR_IDENTITY, CloudDir
from localcloud.tlsio import TlsClosed, TlsConnection
from shadow.topics import ANY, SHADOW_RESPONSES, parse_shadow_topic, shadow_topic


class CloudNotRunning(Exception):
    """The local cloud in DIR is not reachable; the message says what to do."""


@dataclass(frozen=True)
class ShadowAnswer:
    """The shadow service's answer to one request: on ``.../accepted`` or not, and the response document."""

    accepted: bool
    document: dict[str, Any]


def marker_topic() -> str:
    """A fresh topic only this operator uses: publishing to it and seeing it come back proves every retained
    message sent before has arrived."""
    return f"{LOCAL_TOPIC_ROOT}/operator/{uuid.uuid4().hex}"


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
            # queued first: a caller that stops iterating mid-batch finds the rest on its next call
            self._backlog += [pkt for pkt in self._read(wait) if pkt.type == mq.PUBLISH]
            while self._backlog:
                pkt = self._backlog.pop(0)
                if pkt.qos:
                    self._send(mq.puback(pkt.packet_id))
                yield pkt
            if time.monotonic() - last_ping > 30:
                self._send(mq.PINGREQ_BYTES)
                last_ping = time.monotonic()

    def shadow_requests(
        self,
        op: str,
        payloads: Mapping[str, Mapping[str, Any]],
        *,
        name: str | None = None,
        timeout: float,
    ) -> dict[str, ShadowAnswer | None]:
        """One shadow ``op`` (get/update/delete) per thing, pipelined; None for a thing not answered in time.

        Every request is published before any answer is awaited, so a thousand robots take one round trip,
        not a thousand. Answers are matched by ``clientToken``: each payload must carry its own.
        """
        if not payloads:
            return {}
        tokens: dict[str, str] = {}
        for thing, payload in payloads.items():
            token = payload.get("clientToken")
            if isinstance(token, str):
                tokens[token] = thing
        which = next(iter(payloads)) if len(payloads) == 1 else ANY
        self.subscribe([shadow_topic(which, op, response, name=name) for response in SHADOW_RESPONSES], qos=1)
        for thing, payload in payloads.items():
            self.publish(shadow_topic(thing, op, name=name), json.dumps(payload).encode(), qos=1)
        results: dict[str, ShadowAnswer | None] = dict.fromkeys(payloads)
        for pkt in self.messages(timeout):
            try:
                doc = json.loads(pkt.payload)
            except ValueError:
                continue
            got = doc.get("clientToken") if isinstance(doc, dict) else None
            answered = tokens.pop(got, None) if isinstance(got, str) else None
            if answered is None:
                continue
            results[answered] = ShadowAnswer(pkt.topic.endswith("/accepted"), doc)
            if not tokens:
                break
        return results

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


def shadow_request(
    cloud: CloudDir,
    thing: str,
    op: str,
    body: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    timeout: float = 5.0,
) -> tuple[bool, dict[str, Any]]:
    """One shadow request as the operator, on a connection of its own; returns (accepted, response document).

    A ``clientToken`` in ``body`` is kept (the answer echoes it). ``CloudNotRunning`` when the cloud is down
    or the shadow service does not answer within ``timeout``.
    """
    payload = dict(body or {})
    if payload.get("clientToken") is None:
        payload["clientToken"] = uuid.uuid4().hex
    with OperatorClient(cloud, timeout=timeout) as client:
        answer = client.shadow_requests(op, {thing: payload}, name=name, timeout=timeout)[thing]
    if answer is None:
        raise CloudNotRunning(
            f"no answer from the shadow service within {timeout:g} s (the broker is up); "
            f"check {cloud.service_log} and the `roomba-fleet up` terminal"
        )
    return answer.accepted, answer.document


# following shadows: send now, read the answers and events as they arrive ------------------------------------
@dataclass(frozen=True)
class ShadowMessage:
    """One shadow response or event the operator received: ``response`` is ``accepted``, ``rejected``,
    ``delta`` or ``documents``; ``shadow_name`` is "" for the classic shadow."""

    thing: str
    shadow_name: str
    operation: str
    response: str
    document: dict[str, Any]


WILDCARD_ABOVE = 200
"""Above this many things, :func:`shadow_filters` subscribes with one wildcard filter, not one per thing."""


def shadow_filters(
    things: Sequence[str], responses: Sequence[str], *, op: str = "update", name: str | None = None
) -> list[str]:
    """Subscription filters for ``op``'s ``responses`` (e.g. ``accepted``, ``documents``) of ``things``:
    one per thing, or ``+`` for the thing when there are more than :data:`WILDCARD_ABOVE` (a SUBSCRIBE
    packet stays small; the caller drops the other things' messages)."""
    which: Sequence[str] = (ANY,) if len(things) > WILDCARD_ABOVE else things
    return [shadow_topic(thing, op, response, name=name) for thing in which for response in responses]


def publish_shadow_requests(
    client: OperatorClient, op: str, payloads: Mapping[str, Mapping[str, Any]], *, name: str | None = None
) -> dict[str, str]:
    """Publish one shadow ``op`` per thing without waiting; returns ``{clientToken: thing}`` to match the
    answers (read them from :meth:`OperatorClient.messages` with :func:`shadow_message`, after subscribing
    to :func:`shadow_filters`; each payload must carry its own string ``clientToken``)."""
    tokens: dict[str, str] = {}
    for thing, payload in payloads.items():
        token = payload.get("clientToken")
        if isinstance(token, str):
            tokens[token] = thing
        client.publish(shadow_topic(thing, op, name=name), json.dumps(payload).encode(), qos=1)
    return tokens


def shadow_message(pkt: mq.Packet) -> ShadowMessage | None:
    """A received publication as a shadow response or event, or None (another topic, or a payload that is
    not a JSON object)."""
    parsed = parse_shadow_topic(pkt.topic)
    if parsed is None or not parsed.response:
        return None
    try:
        doc = json.loads(pkt.payload)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    return ShadowMessage(parsed.thing, parsed.shadow_name, parsed.operation, parsed.response, doc)
