"""The iot service process: AWS IoT Jobs and Commands for the local cloud, over MQTT and HTTP.

A thin shell around two sans-I/O engines (:mod:`localcloud.jobs.engine`, :mod:`localcloud.commands.engine`),
modelled on :mod:`localcloud.shadow_service`: ``mqtt_lite`` over ``tlsio`` as the identity
``local-cloud-iot-service``, a persistent session and QoS 1 subscriptions (requests published while it
restarts are queued by the broker), everything the socket has read handled in one batch, the engines'
changed records committed to SQLite (``DIR/iot.db``) before any answer is written.

The control plane (AWS's REST/JSON API for ``iot`` and ``iot-jobs-data``, SigV4-verified) and presigned
artifact downloads are served by a ``ThreadingHTTPServer`` on ``127.0.0.1:api_port``. Every operation runs
under the one lock the MQTT loop holds while it touches the engines, commits before it answers, and hands
what the engines want published to the loop through a queue, waking it with a socketpair. Timers: the loop
sleeps until the engines' ``next_deadline()`` and calls ``tick``.

Run by ``roomba-fleet up`` as ``python -m localcloud.iot_service --dir DIR``: prints ``READY`` on stdout once
listening and subscribed, logs (JSON) to stderr, exits with status 2 (the reason on stderr) if the api port
is taken.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import select
import signal
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from http.server import ThreadingHTTPServer
from types import FrameType
from typing import Any, Protocol

from base import logs
from localcloud import cloud as cloud_files
from localcloud import mqtt_lite as mq
from localcloud import service_link as link
from localcloud.artifacts import ArtifactError, ArtifactStore
from localcloud.awsapi.errors import ApiError
from localcloud.awsapi.http import ApiFrontEnd, serve
from localcloud.jobs.engine import JobsEngine
from localcloud.jobs.store import IotStore
from localcloud.layout import AWS_ACCOUNT, AWS_REGION, IOT_SERVICE_IDENTITY, CloudDir, Settings
from localcloud.service_link import ConnectionLost, tls_context
from localcloud.tlsio import TlsClosed, TlsConnection
from shadow.topics import ANY, jobs_topic

log = logs.get_logger("localcloud.iot_service")

Out = tuple[str, bytes]
Key = tuple[str, str]
KEEPALIVE_S = link.KEEPALIVE_S
COMMANDS_PREFIX = "$aws/commands/"
JOBS_FILTERS = tuple(jobs_topic(ANY, *r.split("/")) for r in ("get", "start-next", "+/get", "+/update"))
COMMANDS_FILTERS = ("$aws/commands/+/+/executions/+/response/json",)
ROBOT_SCAN_S = 2.0
EXIT_PORT_IN_USE = 2
TICK_PAUSE_S = 1.0  # an engine whose tick raised is not ticked again for this long (no hot loop)


class Engine(Protocol):
    @property
    def OPERATIONS(self) -> frozenset[str]: ...

    def handle(self, topic: str, payload: bytes, now: float) -> list[Out]: ...
    def call(
        self, operation: str, params: dict[str, Any], now: float
    ) -> tuple[dict[str, Any], list[Out]]: ...
    def tick(self, now: float) -> list[Out]: ...
    def next_deadline(self) -> float | None: ...
    def take_dirty(self) -> Mapping[Key, Any]: ...
    def requeue_dirty(self, dirty: Any) -> None: ...


def _commands_engine_class() -> Any:
    try:
        from localcloud.commands.engine import CommandsEngine
    except ImportError:  # the Commands engine is optional for Jobs
        return None
    return CommandsEngine


def split_records(records: Mapping[Key, Any], names: Iterable[str]) -> dict[str, dict[Key, Any]]:
    """Records of one store, by engine: kinds are stored as ``<engine>/<kind>``."""
    out: dict[str, dict[Key, Any]] = {name: {} for name in names}
    for (kind, key), doc in records.items():
        engine, sep, inner = kind.partition("/")
        if sep and engine in out:
            out[engine][(inner, key)] = doc
    return out


# the Jobs data plane over HTTP, answered through the device API (MQTT requests of the thing itself)
_DATA_PLANE_ERRORS = {
    "InvalidRequest": (400, "InvalidRequestException"),
    "InvalidJson": (400, "InvalidRequestException"),
    "InvalidTopic": (400, "InvalidRequestException"),
    "ResourceNotFound": (404, "ResourceNotFoundException"),
    "InvalidStateTransition": (409, "InvalidStateTransitionException"),
    "VersionMismatch": (409, "ConflictException"),
    "TerminalStateReached": (410, "TerminalStateException"),
    "Throttled": (429, "ThrottlingException"),
}


def data_plane_request(operation: str, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(topic, request) of the device API request that answers a Jobs data-plane HTTP operation."""
    thing = params.get("thingName", "")
    body: dict[str, Any] = {}
    if operation == "GetPendingJobExecutions":
        return jobs_topic(thing, "get"), body
    if operation == "StartNextPendingJobExecution":
        body = {k: params[k] for k in ("statusDetails", "stepTimeoutInMinutes") if k in params}
        return jobs_topic(thing, "start-next"), body
    if operation == "DescribeJobExecution":
        body = {k: params[k] for k in ("executionNumber", "includeJobDocument") if k in params}
        return jobs_topic(thing, params.get("jobId", ""), "get"), body
    if operation == "UpdateJobExecution":
        names = (
            "status",
            "statusDetails",
            "stepTimeoutInMinutes",
            "expectedVersion",
            "includeJobExecutionState",
            "includeJobDocument",
            "executionNumber",
        )
        body = {k: params[k] for k in names if k in params}
        return jobs_topic(thing, params.get("jobId", ""), "update"), body
    return None


def data_plane_result(answer_topic: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The HTTP result from the device API's answer: ``jobDocument`` as a string, no token or timestamp."""
    if answer_topic.endswith("/rejected"):
        status, code = _DATA_PLANE_ERRORS.get(str(answer.get("code")), (400, "InvalidRequestException"))
        raise ApiError(status, code, str(answer.get("message", "")))
    result = {k: v for k, v in answer.items() if k not in ("clientToken", "timestamp")}
    for holder in (result.get("execution"), result):
        if (
            isinstance(holder, dict)
            and "jobDocument" in holder
            and not isinstance(holder["jobDocument"], str)
        ):
            holder["jobDocument"] = json.dumps(holder["jobDocument"])
    return result


class IotService:
    def __init__(self, cloud: CloudDir, settings: Settings) -> None:
        self.cloud = cloud
        self.settings = settings
        self.store = IotStore(cloud.iot_db, durable=settings.durable)
        self.artifacts = ArtifactStore.for_cloud(cloud)
        commands_class = _commands_engine_class()
        names = ["jobs", *(["commands"] if commands_class is not None else [])]
        records = split_records(self.store.load_all(), names)
        self.jobs = JobsEngine(records["jobs"], account=AWS_ACCOUNT, region=AWS_REGION, presign=self.presign)
        self.engines: dict[str, Engine] = {"jobs": self.jobs}
        if commands_class is not None:
            self.engines["commands"] = commands_class(
                records["commands"],
                things=self.jobs.things.__contains__,
                account=AWS_ACCOUNT,
                region=AWS_REGION,
            )
        self.lock = threading.Lock()
        self.outbox: queue.SimpleQueue[list[Out]] = queue.SimpleQueue()
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        self.unsent: list[Out] = []
        self.stopping = False
        self.announced = False
        self._robots_seen: set[str] = set()
        self._robots_scanned = 0.0
        self._robots_mtime = 0
        self._tick_paused: dict[str, float] = {}  # engine -> epoch seconds before which it is not ticked
        self.store_error: str | None = None  # the last commit's error, None once a commit succeeds
        ident = cloud.identity_dir(IOT_SERVICE_IDENTITY)
        self.tls = tls_context(ident / "root-ca.crt", ident / "device.crt", ident / "device.key")
        self._next_id = 0
        self._early: list[mq.Packet] = []
        self.http: ThreadingHTTPServer | None = None
        self._credentials: dict[str, str] = {}
        self._credentials_stamp: tuple[int, int] | None = None
        with self.lock:
            self.unsent += self._scan_robots(time.time(), force=True)
            self.flush()

    # -- engines (always under self.lock) ---------------------------------------------------------------

    def presign(self, url: str, expires_s: int, now: float) -> str:
        """A placeholder's URL signed for the artifact store; one the store cannot take (not an S3 URL) is
        left as written, so the device still gets its document (and a download error it can report)."""
        try:
            return self.artifacts.presign(url, expires_s, now)
        except ArtifactError as exc:
            log.warning("iot.artifact.presign_refused", url=url, error=str(exc))
            return f"${{aws:iot:s3-presigned-url:{url}}}"

    def _scan_robots(self, now: float, *, force: bool = False) -> list[Out]:
        """Every robot added with ``robot add`` exists as a thing (picked up within a few seconds)."""
        if not force and time.monotonic() - self._robots_scanned < ROBOT_SCAN_S:
            return []
        self._robots_scanned = time.monotonic()
        self._robots_mtime = self._robots_dir_mtime()
        out: list[Out] = []
        for name in self.cloud.known_robots():
            if name not in self._robots_seen:
                out += self.jobs.ensure_thing(name, now)
                self._robots_seen.add(name)
        return out

    def _scan_robots_guarded(self, now: float) -> list[Out]:
        try:
            return self._scan_robots(now)
        except Exception:  # a robot that breaks the scan must not end the service; retried next scan
            log.exception("iot.robots.scan_failed")
            return []

    def _robots_dir_mtime(self) -> int:
        try:
            return self.cloud.robots_dir.stat().st_mtime_ns
        except OSError:
            return 0

    def handle_message(self, topic: str, payload: bytes, now: float) -> list[Out]:
        if topic.startswith(COMMANDS_PREFIX):
            engine = self.engines.get("commands")
            return engine.handle(topic, payload, now) if engine is not None else []
        parts = topic.split("/")
        out: list[Out] = []
        if len(parts) > 3 and parts[2] not in self.jobs.things:
            out += self.jobs.ensure_thing(parts[2], now)  # a robot of this cloud's CA, first request
        return out + self.jobs.handle(topic, payload, now)

    def _engine_for(self, service: str, operation: str) -> Engine | None:
        for engine in self.engines.values():
            services = getattr(engine, "SERVICES", None)
            expected = services.get(operation, "iot") if isinstance(services, Mapping) else "iot"
            if operation in engine.OPERATIONS and expected == service:
                return engine
        return None

    def invoke(self, service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """One control-plane operation (the HTTP thread): run, commit, hand the publications to the loop."""
        with self.lock:
            now = time.time()
            # a robot just added (`robot add r1 && roomba-fleet jobs create J --targets r1`) is a thing at once
            outs: list[Out] = self._scan_robots(now, force=self._robots_dir_mtime() != self._robots_mtime)
            try:
                engine = self._engine_for(service, operation)
                if engine is not None:
                    result, called = engine.call(operation, params, now)
                    outs += called
                elif service == "iot-jobs-data" and (request := data_plane_request(operation, params)):
                    result, called = self._data_plane(request, now)
                    outs += called
                else:
                    raise ApiError(
                        404,
                        "UnknownOperationException",
                        f"The local cloud does not serve {operation} ({service})",
                    )
            finally:
                saved = self.flush()
        if outs:  # the loop publishes them only after a commit succeeded
            self.outbox.put(outs)
            try:
                self.wake_w.send(b"\0")
            except BlockingIOError:
                pass  # already woken: the byte in the pipe is enough
        if not saved:
            raise ApiError(
                500,
                "InternalFailureException",
                f"{operation} could not be saved ({self.store_error}); the local cloud retries the write, "
                "so describe the resource before retrying",
            )
        return result

    def _data_plane(
        self, request: tuple[str, dict[str, Any]], now: float
    ) -> tuple[dict[str, Any], list[Out]]:
        topic, body = request
        token = uuid.uuid4().hex
        outs = self.handle_message(topic, json.dumps({**body, "clientToken": token}).encode(), now)
        answers = [(t, p) for t, p in outs if t in (topic + "/accepted", topic + "/rejected")]
        rest = [(t, p) for t, p in outs if (t, p) not in answers]
        if not answers:
            raise ApiError(500, "InternalFailureException", f"no answer to {topic}")
        answer_topic, payload = answers[0]
        return data_plane_result(answer_topic, json.loads(payload)), rest

    def tick(self, now: float) -> list[Out]:
        """Tick every engine that is due. One whose tick (or deadline) raises, a bug met on a persisted record,
        is logged and left alone for ``TICK_PAUSE_S``; the others, and the service, go on."""
        out: list[Out] = []
        for name, engine in self.engines.items():
            if self._tick_paused.get(name, 0.0) > now:
                continue
            try:
                deadline = engine.next_deadline()
                if deadline is not None and deadline <= now:
                    out += engine.tick(now)
            except Exception:
                log.exception("iot.engine.tick_failed", engine=name, retry_in_s=TICK_PAUSE_S)
                self._tick_paused[name] = now + TICK_PAUSE_S
        return out

    def next_deadline(self) -> float | None:
        deadlines: list[float] = []
        for name, engine in self.engines.items():
            paused = self._tick_paused.get(name)
            if paused is not None and paused > time.time():
                deadlines.append(paused)
                continue
            try:
                deadline = engine.next_deadline()
            except Exception:
                log.exception("iot.engine.tick_failed", engine=name, retry_in_s=TICK_PAUSE_S)
                self._tick_paused[name] = time.time() + TICK_PAUSE_S
                deadlines.append(self._tick_paused[name])
                continue
            if deadline is not None:
                deadlines.append(deadline)
        return min(deadlines) if deadlines else None

    def flush(self) -> bool:
        """Commit every engine's changed records; False if the disk refused (logged, the records kept for the
        next commit, the error in ``store_error``)."""
        taken: dict[str, Any] = {name: engine.take_dirty() for name, engine in self.engines.items()}
        merged = {
            (f"{name}/{kind}", key): doc
            for name, dirty in taken.items()
            for (kind, key), doc in dirty.items()
        }
        try:
            self.store.save(merged)
        except sqlite3.Error as exc:
            for name, dirty in taken.items():
                self.engines[name].requeue_dirty(dirty)
            log.error("iot.store.failed", error=str(exc), pending=len(merged), db=str(self.store.path))
            self.store_error = f"{type(exc).__name__}: {exc}"
            return False
        self.store_error = None
        return True

    # -- MQTT ------------------------------------------------------------------------------------------

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _connect(self) -> tuple[TlsConnection, mq.PacketParser]:
        filters = [*JOBS_FILTERS, *(COMMANDS_FILTERS if "commands" in self.engines else ())]
        conn, parser, self._early = link.connect(
            self.settings.endpoint,
            self.settings.port,
            self.tls,
            IOT_SERVICE_IDENTITY,
            filters,
            self._packet_id,
            who="the iot service",
        )
        return conn, parser

    def _handle_packets(self, packets: list[mq.Packet], acks: bytearray) -> None:
        now = time.time()
        for pkt in packets:
            if pkt.type != mq.PUBLISH:
                continue
            if pkt.qos:
                acks += mq.puback(pkt.packet_id)
            if pkt.retain:
                continue  # AWS refuses retained publishes on reserved topics; never answer a stale one
            try:
                self.unsent += self.handle_message(pkt.topic, pkt.payload, now)
            except Exception:
                log.exception("iot.request.crashed", topic=pkt.topic)

    def _turn(self, packets: list[mq.Packet], acks: bytearray) -> list[Out]:
        """One turn of the loop: handle the requests, tick, scan, commit; the publications that may go out now.

        Answers wait in ``unsent`` until a commit succeeded (an accepted answer survives a crash), so while
        the disk refuses, nothing but the PUBACKs (in ``acks``) is sent."""
        with self.lock:
            self._handle_packets(packets, acks)
            now = time.time()
            self.unsent += self.tick(now)
            self.unsent += self._scan_robots_guarded(now)
            while True:  # the HTTP thread's publications: committed by its flush, or by the one below
                try:
                    self.unsent += self.outbox.get_nowait()
                except queue.Empty:
                    break
            saved = self.flush()
        return list(self.unsent) if saved else []

    def _wait(self, conn: TlsConnection, timeout: float) -> bool:
        """Until the broker sent something (True) or the HTTP thread woke us / the timeout passed."""
        if conn.wait_readable(0):
            return True
        readable, _, _ = select.select([conn.sock, self.wake_r], [], [], max(0.0, timeout))
        if self.wake_r in readable:
            try:
                while self.wake_r.recv(4096):
                    pass
            except BlockingIOError:
                pass
        return conn.sock in readable

    def _serve(self, conn: TlsConnection, parser: mq.PacketParser) -> None:
        last_sent = time.monotonic()
        parent = os.getppid()
        acks = bytearray()
        with self.lock:
            self._handle_packets(self._early, acks)
            self._early = []
        while not self.stopping:
            if os.getppid() != parent:
                log.warning("iot.service.orphaned", parent=parent)
                self.stopping = True
                break
            with self.lock:
                deadline = self.next_deadline()
            # a deadline the engines keep due must not spin the loop: at least 5 ms between ticks
            timeout = 1.0 if deadline is None else max(0.005, min(1.0, deadline - time.time()))
            if self._wait(conn, timeout):
                parser.feed(conn.recv())
                packets = parser.packets()
            else:
                packets = []
            ready = self._turn(packets, acks)  # committed before answering: accepted survives a crash
            out = bytearray(acks)
            for topic, payload in ready:
                out += mq.publish(topic, payload, 1, self._packet_id())
            mono = time.monotonic()
            if mono - last_sent > KEEPALIVE_S / 2:
                out += mq.PINGREQ_BYTES
            if out:
                conn.send(out)
                acks.clear()
                del self.unsent[: len(ready)]
                last_sent = mono

    # -- process ---------------------------------------------------------------------------------------

    def credentials(self) -> dict[str, str]:
        """The keys of DIR/aws/credentials (profile ``local``), read again only when the file changes."""
        try:
            st = os.stat(self.cloud.aws_credentials)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if stamp is None or stamp != self._credentials_stamp:
            pair = cloud_files.read_aws_credentials(self.cloud)
            self._credentials = {pair[0]: pair[1]} if pair else {}
            self._credentials_stamp = stamp
        return self._credentials

    def start_http(self) -> None:
        front = ApiFrontEnd(
            credentials=self.credentials, invoke=self.invoke, artifacts=self.artifacts, region=AWS_REGION
        )
        self.http = serve(front, self.settings.endpoint, self.settings.api_port)
        log.info("iot.api.listening", endpoint=self.settings.endpoint, port=self.settings.api_port)

    def run(self) -> int:
        failures = 0
        while not self.stopping:
            try:
                conn, parser = self._connect()
            except (OSError, ConnectionLost, TlsClosed, mq.ProtocolError) as exc:
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "iot.service.connect_failed", error=str(exc), port=self.settings.port
                )
                time.sleep(min(0.2 * failures, 2.0))
                continue
            failures = 0
            log.info("iot.service.ready", things=len(self.jobs.things), jobs=len(self.jobs.jobs))
            if not self.announced:
                self.announced = True
                sys.stdout.write("READY\n")
                sys.stdout.flush()
            try:
                self._serve(conn, parser)
                conn.send(mq.DISCONNECT_BYTES)
            except (OSError, ConnectionLost, TlsClosed, mq.ProtocolError) as exc:
                if not self.stopping:
                    log.warning("iot.service.disconnected", error=str(exc), unsent=len(self.unsent))
            finally:
                conn.close()
        if self.http is not None:
            self.http.shutdown()
        with self.lock:
            self.flush()
        self.store.close()
        log.info("iot.service.stopped")
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud.iot_service")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("ROOMBA_LOG_LEVEL", "info"), json=True)
    cloud = CloudDir.at(args.dir)
    settings = cloud.load_settings()
    service = IotService(cloud, settings)
    try:
        service.start_http()
    except OSError as exc:
        print(
            f"iot service: {settings.endpoint}:{settings.api_port} cannot be served ({exc.strerror or exc}); "
            "stop what uses it or pass --api-port",
            file=sys.stderr,
        )
        return EXIT_PORT_IN_USE

    def stop(_sig: int, _frame: FrameType | None) -> None:
        service.stopping = True
        try:
            service.wake_w.send(b"\0")
        except OSError:
            pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
