"""The one module that imports awscrt: an MQTT5 mutual-TLS client whose callbacks land on an asyncio loop.

CRT callbacks run on the CRT's event-loop threads, and blocking there (waiting on a future, taking a lock
the loop holds) deadlocks the client; each one here only copies its data and hands it to
``loop.call_soon_threadsafe``. Futures from publish/subscribe are wrapped into asyncio futures the same way.
The client owns its reconnect schedule (:class:`agent.reconnect.ReconnectSchedule`: capped, jittered
exponential backoff) instead of the CRT's, whose delays it cannot see: after a failed attempt or a lost
connection it stops the CRT client and starts it again when the delay is over, and every
:class:`ConnectFailed` / :class:`Disconnected` it posts says which attempt failed and when the next one is.
The agent resubscribes when a connection comes back without a session.

The agent's features see only :class:`MqttConnection`; :class:`MqttClient` is the awscrt implementation.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Protocol

from awscrt import io, mqtt5
from awsiot import mqtt5_client_builder

from agent.config import AgentConfig
from agent.reconnect import ReconnectSchedule
from shadow.topics import presence_topic, shadow_topic


@dataclass(frozen=True)
class Connected:
    session_present: bool


@dataclass(frozen=True)
class Disconnected:
    reason: str
    fatal: bool  # e.g. session taken over (duplicate client id): do not reconnect hot
    retry_in_s: float | None = None  # when the next attempt is (None: none planned, e.g. a requested stop)


@dataclass(frozen=True)
class ConnectFailed:
    reason: str
    fatal: bool  # e.g. not authorized: retrying at full speed will not help
    attempt: int = 0  # failed attempts since the connection was last up, this one included
    retry_in_s: float | None = None


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes


@dataclass(frozen=True)
class Stopped:
    pass


MqttEvent = Connected | Disconnected | ConnectFailed | Message | Stopped
FATAL_CONNACK = {"NOT_AUTHORIZED", "BAD_USERNAME_OR_PASSWORD", "CLIENT_IDENTIFIER_NOT_VALID", "BANNED"}
FATAL_DISCONNECT = {"SESSION_TAKEN_OVER", "NOT_AUTHORIZED"}
CRT_OWN_RETRY_MS = 3_600_000  # the CRT's own reconnect delay: never reached, since we stop it first
DEFAULT_RECONNECT_MAX_MS = 60_000


def user_requested(reason: str) -> bool:
    """A disconnect or failure caused by our own stop (``drop``, ``stop``, or a planned restart)."""
    return reason.endswith("user_requested_stop")


class MqttConnection(Protocol):
    """What the agent's features need of an MQTT connection; call every method from the loop's thread.

    ``publish`` and ``subscribe`` return futures settled on the loop with the broker's answer (for QoS 1, a
    result :func:`puback_ok` reads). ``drop``/``resume`` are for fault injection: the link dies without a
    DISCONNECT, as when a cable is pulled, so the broker publishes the will.
    """

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    async def stop(self, goodbye: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None: ...

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[object]: ...

    def subscribe(self, topics: Sequence[str], qos: int) -> list[asyncio.Future[object]]: ...

    def pending_operations(self) -> int: ...

    def drop(self) -> None: ...

    def resume(self) -> None: ...


class MqttFactory(Protocol):
    """Builds the connection an agent uses (``MqttClient`` itself; a fake in tests)."""

    def __call__(
        self,
        config: AgentConfig,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[MqttEvent], None],
        *,
        reconnect_max_ms: int,
    ) -> MqttConnection: ...


def set_tcp_nodelay(peer_port: int) -> int:
    """Turn Nagle off on this process's TCP connections to ``peer_port``; returns how many were changed.

    awscrt has no TCP_NODELAY option, and small MQTT packets sent back to back (an answer right after a
    PUBACK) otherwise wait for the peer's delayed ACK (Nagle's algorithm; up to 40 ms on Linux, whose
    minimum delayed-ACK timeout is 40 ms). The option is set on
    a duplicate of the CRT's descriptor, which shares the socket; a descriptor reused meanwhile by another
    TCP socket only gets a harmless option.
    """
    import os
    import socket

    changed = 0
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    for fd in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(fd))
        except OSError:
            continue
        try:
            tcp = sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6)
            if tcp and sock.getpeername()[1] == peer_port:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                changed += 1
        except OSError:
            pass
        finally:
            sock.close()
    return changed


def _error_name(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown"
    return str(getattr(exc, "name", None) or type(exc).__name__)


class MqttClient:
    """The awscrt MQTT5 client behind :class:`MqttConnection`.

    The CRT client is built on the first :meth:`start` (it reads the key, or opens the PKCS#11 token), so
    an agent can be wired before its credentials are checked. A stopped client can be started again: the
    CRT's own retries are pushed out of reach (``CRT_OWN_RETRY_MS``, no jitter) and this class restarts it
    on its :class:`~agent.reconnect.ReconnectSchedule` (``reconnect_min_ms`` doubling up to
    ``reconnect_max_ms``, full jitter). A CRT stop fails the QoS 1 publishes still queued; the agent's
    senders (the outbox, the shadow requests) retry theirs.
    """

    def __init__(
        self,
        config: AgentConfig,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[MqttEvent], None],
        *,
        reconnect_min_ms: int = 1000,
        reconnect_max_ms: int = DEFAULT_RECONNECT_MAX_MS,
    ) -> None:
        self.config = config
        self.loop = loop
        self._on_event = on_event
        self._connected = False
        self._stopped = asyncio.Event()
        self.schedule = ReconnectSchedule(
            base_s=reconnect_min_ms / 1000, cap_s=max(reconnect_min_ms, reconnect_max_ms) / 1000
        )
        self._client: mqtt5.Client | None = None
        self._wanted = False  # start() was called and neither stop() nor drop() since
        self._running = False  # the CRT client is started and has not reported Stopped yet
        self._stopping = False  # we asked the CRT client to stop and wait for its Stopped
        self._retry_at: float | None = None  # loop time of the planned restart
        self._timer: asyncio.TimerHandle | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    def _post(self, event: MqttEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self._dispatch, event)
        except RuntimeError:
            pass  # loop already closed during shutdown

    def _dispatch(self, event: MqttEvent) -> None:
        now = self.loop.time()
        if isinstance(event, Connected):
            self._connected = True
            self.schedule.connected(now)
        elif isinstance(event, ConnectFailed):
            event = self._plan_failed(event, now)
        elif isinstance(event, Disconnected):
            self._connected = False
            event = self._plan_lost(event, now)
        elif isinstance(event, Stopped):
            self._connected = False
            self._running = self._stopping = False
            self._stopped.set()
            self._arm()
        self._on_event(event)

    # the reconnect schedule (loop thread) ---------------------------------------------------------------
    def _retry_planned(self) -> bool:
        return not self._wanted or self._retry_at is not None

    def _plan_failed(self, event: ConnectFailed, now: float) -> ConnectFailed:
        if user_requested(event.reason):
            return event
        if self._retry_planned():  # a late report of an outage already planned for, or not wanted
            left = None if self._retry_at is None else max(0.0, self._retry_at - now)
            return replace(event, attempt=self.schedule.failures, retry_in_s=left)
        delay = self.schedule.failed(fatal=event.fatal)
        self._restart_in(delay, now)
        return replace(event, attempt=self.schedule.failures, retry_in_s=delay)

    def _plan_lost(self, event: Disconnected, now: float) -> Disconnected:
        if user_requested(event.reason) or self._retry_planned():
            return event
        delay = self.schedule.lost(now, fatal=event.fatal)
        self._restart_in(delay, now)
        return replace(event, retry_in_s=delay)

    def _restart_in(self, delay: float, now: float) -> None:
        """Stop the CRT client (its Stopped arms the timer) and start it again ``delay`` s from ``now``."""
        self._retry_at = now + delay
        if self._running:
            self._stopping = True
            self._crt().stop()
        else:
            self._arm()

    def _arm(self) -> None:
        if self._retry_at is None or not self._wanted or self._running or self._timer is not None:
            return
        self._timer = self.loop.call_later(max(0.0, self._retry_at - self.loop.time()), self._retry)

    def _retry(self) -> None:
        self._timer = None
        self._retry_at = None
        if self._wanted and not self._running:
            self._start_crt()

    def _cancel_retry(self) -> None:
        self._retry_at = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _start_crt(self) -> None:
        self._stopped.clear()
        self._running = True
        self._crt().start()

    # CRT-thread callbacks: copy, hand off, return ---------------------------------------------------------
    def _on_success(self, data: mqtt5.LifecycleConnectSuccessData) -> None:
        settings = data.negotiated_settings
        self._post(Connected(bool(settings and settings.rejoined_session)))

    def _on_failure(self, data: mqtt5.LifecycleConnectFailureData) -> None:
        connack = data.connack_packet
        if connack is not None and connack.reason_code is not None:
            name = getattr(connack.reason_code, "name", str(connack.reason_code))
            self._post(ConnectFailed(f"connack_{name.lower()}", name in FATAL_CONNACK))
        else:
            self._post(ConnectFailed(_error_name(data.exception).lower(), False))

    def _on_disconnect(self, data: mqtt5.LifecycleDisconnectData) -> None:
        packet = data.disconnect_packet
        if packet is not None and packet.reason_code is not None:
            name = getattr(packet.reason_code, "name", str(packet.reason_code))
            self._post(Disconnected(f"server_{name.lower()}", name in FATAL_DISCONNECT))
        else:
            self._post(Disconnected(_error_name(data.exception).lower(), False))

    def _on_stopped(self, _data: mqtt5.LifecycleStoppedData) -> None:
        self._post(Stopped())

    def _on_publish(self, data: mqtt5.PublishReceivedData) -> None:
        packet = data.publish_packet
        payload = packet.payload
        self._post(Message(packet.topic, bytes(payload) if payload is not None else b""))

    # construction ---------------------------------------------------------------------------------------
    def _build(self) -> mqtt5.Client:
        c = self.config
        will = mqtt5.PublishPacket(
            topic=presence_topic(c.thing_name),
            payload=json.dumps({"state": "offline", "reason": "connection lost"}).encode(),
            qos=mqtt5.QoS.AT_LEAST_ONCE,
            retain=True,
        )
        common: dict[str, Any] = dict(
            endpoint=c.endpoint,
            port=c.port,
            ca_filepath=c.root_ca,
            client_id=c.thing_name,
            session_behavior=mqtt5.ClientSessionBehaviorType.REJOIN_POST_SUCCESS,
            session_expiry_interval_sec=c.session_expiry_s,
            offline_queue_behavior=mqtt5.ClientOperationQueueBehaviorType.FAIL_NON_QOS1_PUBLISH_ON_DISCONNECT,
            # the CRT's own retries never come: after a failure we stop it and restart it on our schedule
            retry_jitter_mode=mqtt5.ExponentialBackoffJitterMode.NONE,
            min_reconnect_delay_ms=CRT_OWN_RETRY_MS,
            max_reconnect_delay_ms=CRT_OWN_RETRY_MS,
            min_connected_time_to_reset_reconnect_delay_ms=30000,
            keep_alive_interval_sec=c.keep_alive_s,
            ping_timeout_ms=min(30000, (c.keep_alive_s - 1) * 1000),
            connack_timeout_ms=20000,
            ack_timeout_sec=30,
            will=will,
            enable_metrics_collection=not c.local,
            on_publish_received=self._on_publish,
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_disconnection=self._on_disconnect,
            on_lifecycle_stopped=self._on_stopped,
        )
        if c.local:
            common["extended_validation_and_flow_control_options"] = (
                mqtt5.ExtendedValidationAndFlowControlOptions.NONE
            )
        if c.pkcs11 is not None:
            with open(c.pkcs11.pin_file) as fh:
                pin = fh.read().strip()
            return mqtt5_client_builder.mtls_with_pkcs11(
                pkcs11_lib=io.Pkcs11Lib(file=c.pkcs11.module),
                user_pin=pin,
                token_label=c.pkcs11.token_label,
                private_key_label=c.pkcs11.key_label,
                cert_filepath=c.cert,
                **common,
            )
        return mqtt5_client_builder.mtls_from_path(cert_filepath=c.cert, pri_key_filepath=c.key, **common)

    # operations (call from the loop thread) -------------------------------------------------------------
    def _crt(self) -> mqtt5.Client:
        if self._client is None:
            self._client = self._build()
        return self._client

    def start(self) -> None:
        """Connect, and keep reconnecting until :meth:`stop` or :meth:`drop`."""
        self._wanted = True
        self._cancel_retry()
        if not self._running:
            self._start_crt()
        elif self._stopping:
            self._retry_at = self.loop.time()  # started again while a stop is under way: once it is done

    def drop(self) -> None:
        """Stop without a DISCONNECT packet: the broker sees the link die and publishes the will. No
        reconnect until :meth:`resume`."""
        self._wanted = False
        self._cancel_retry()
        if self._client is not None and self._running:
            self._stopping = True
            self._client.stop()

    def resume(self) -> None:
        """Reconnect after :meth:`drop`, at once; the schedule applies if that attempt fails."""
        self.start()

    def _wrap(self, crt_future: Future[Any]) -> asyncio.Future[object]:
        fut: asyncio.Future[object] = self.loop.create_future()

        def done(f: Future[Any]) -> None:
            def settle() -> None:
                if fut.done():
                    return
                exc = f.exception()
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(f.result())

            try:
                self.loop.call_soon_threadsafe(settle)
            except RuntimeError:
                pass

        crt_future.add_done_callback(done)
        return fut

    def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[object]:
        packet = mqtt5.PublishPacket(topic=topic, payload=payload, qos=mqtt5.QoS(qos), retain=retain)
        return self._wrap(self._crt().publish(packet))

    def subscribe(self, topics: Sequence[str], qos: int) -> list[asyncio.Future[object]]:
        """One SUBSCRIBE per 8 filters (AWS IoT's per-packet limit)."""
        futures = []
        for i in range(0, len(topics), 8):
            subs = [mqtt5.Subscription(topic_filter=t, qos=mqtt5.QoS(qos)) for t in topics[i : i + 8]]
            futures.append(self._wrap(self._crt().subscribe(mqtt5.SubscribePacket(subscriptions=subs))))
        return futures

    def pending_operations(self) -> int:
        if self._client is None:
            return 0
        return int(self._client.get_stats().incomplete_operation_count)

    async def stop(self, goodbye: tuple[str, bytes] | None = None, timeout: float = 5.0) -> None:
        """Graceful: publish the retained goodbye (a clean DISCONNECT suppresses the will), then stop."""
        self._wanted = False
        self._cancel_retry()
        if self._client is None or not self._running:
            return
        if goodbye is not None and self.connected:
            try:
                await asyncio.wait_for(self.publish(goodbye[0], goodbye[1], 1, retain=True), timeout / 2)
            except Exception:
                pass
        self._stopping = True
        self._client.stop(mqtt5.DisconnectPacket(reason_code=mqtt5.DisconnectReasonCode.NORMAL_DISCONNECTION))
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except TimeoutError:
            pass


def puback_ok(result: object) -> tuple[bool, str]:
    """Whether a QoS 1 publish was accepted (PUBACK reason code below 0x80), and the reason's name.

    A PUBACK may carry no reason code at all: MQTT 5 (section 3.4.2.1) lets the broker omit it when it is
    0x00 (Success), and the CRT then reports None.
    """
    puback = getattr(result, "puback", None)
    if puback is None:
        return True, "success"
    code = getattr(puback, "reason_code", None)
    if code is None:
        return True, "success"
    name = str(getattr(code, "name", code)).lower()
    return int(code) < 0x80, name


def probe(config: AgentConfig, timeout: float = 15.0) -> tuple[str, str, float | None]:
    """One connect + classic-shadow get round trip, for ``doctor``: (stage that failed or "ok", detail, rtt_s).

    A one-shot command: it runs its own event loop for the round trip. It uses the thing name as client id,
    so it must not run while the agent is connected.
    """
    return asyncio.run(_probe(config, timeout))


@dataclass(frozen=True)
class RoundTrip:
    """What :func:`round_trip` saw: ``failed`` is ``"mqtt"`` (no connection), ``"subscribe"``, ``"answer"``
    (none within the timeout) or ``None``; then ``topic``/``payload`` are the answer and ``rtt_s`` its time."""

    failed: str | None
    detail: str = ""
    topic: str = ""
    payload: bytes = b""
    rtt_s: float | None = None


async def round_trip(
    config: AgentConfig, topic: str, answers: Sequence[str], payload: bytes, token: str, timeout: float
) -> RoundTrip:
    """Connect as the thing, subscribe to ``answers``, publish ``payload`` (which carries ``token``) on
    ``topic`` and wait for the message that carries ``token`` back: doctor's probes of the shadow and the
    Jobs service. It uses the thing name as client id, so it must not run while the agent is connected."""
    connected = asyncio.Event()
    answered = asyncio.Event()
    outcome: dict[str, Any] = {}

    def on_event(event: MqttEvent) -> None:
        if isinstance(event, Connected):
            connected.set()
        elif isinstance(event, ConnectFailed):
            outcome.setdefault("connect_error", event.reason)
            if event.fatal:
                connected.set()
        elif isinstance(event, Message) and token.encode() in event.payload:
            outcome["topic"], outcome["payload"] = event.topic, event.payload
            outcome["t"] = time.monotonic()
            answered.set()

    async def wait(event: asyncio.Event) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    client = MqttClient(config, asyncio.get_running_loop(), on_event, reconnect_max_ms=5000)
    client.start()
    try:
        if not await wait(connected) or ("connect_error" in outcome and not client.connected):
            return RoundTrip("mqtt", outcome.get("connect_error", f"no CONNACK within {timeout:.0f} s"))
        (subscribed,) = client.subscribe(answers, 1)
        try:
            await asyncio.wait_for(subscribed, timeout)
        except Exception as exc:
            return RoundTrip("subscribe", f"subscribing to {', '.join(answers)} failed: {exc}")
        sent = time.monotonic()
        client.publish(topic, payload, 1)
        if not await wait(answered):
            return RoundTrip("answer", f"no answer within {timeout:.0f} s")
        return RoundTrip(None, "", str(outcome["topic"]), outcome["payload"], float(outcome["t"]) - sent)
    finally:
        client.drop()
        await asyncio.sleep(0.1)


async def _probe(config: AgentConfig, timeout: float) -> tuple[str, str, float | None]:
    import uuid

    token = f"doctor-{uuid.uuid4().hex[:12]}"
    get = shadow_topic(config.thing_name, "get")
    body = json.dumps({"clientToken": token}).encode()
    trip = await round_trip(config, get, [f"{get}/accepted", f"{get}/rejected"], body, token, timeout)
    if trip.failed == "mqtt":
        return "mqtt", trip.detail, None
    if trip.failed == "answer":
        return "shadow", f"no answer to a shadow get within {timeout:.0f} s", None
    if trip.failed is not None:
        return "shadow", trip.detail, None
    if trip.topic.endswith("/rejected"):
        doc = json.loads(trip.payload)
        if doc.get("code") != 404:
            return "shadow", f"get rejected: {doc.get('code')} {doc.get('message')}", trip.rtt_s
    return "ok", "connected and the shadow service answered", trip.rtt_s
