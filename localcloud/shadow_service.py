"""The shadow service process: a thin MQTT shell around ``ShadowEngine`` and ``ShadowStore``.

Designed for throughput: one process, one thread, no per-message thread hop or lock. Each turn of the loop
reads everything the socket has (``localcloud.tlsio``: TLS through memory BIOs, one syscall for many records),
lets the engine answer every request in it, commits the changed shadows to SQLite in one transaction, and
only then writes all answers (and PUBACKs) with one ``sendall``. So a client that saw ``accepted`` finds
its update after a crash of this process, and under load one commit covers many updates. The MQTT codec is
``localcloud.mqtt_lite``: paho's loop costs a ``select()`` per packet read and a TLS record per packet written,
which dominated the cost per update on this project's VM.

It connects with the service identity (privileged ACL), a persistent session and QoS 1 subscriptions, so
requests published while it restarts are queued by the broker and answered when it is back.

Run by ``roomba-fleet up`` as ``python -m localcloud.shadow_service --dir DIR``: prints ``READY`` on stdout
once subscribed and logs (JSON) to stderr.
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import sys
import time
from types import FrameType

from base import logs
from localcloud import mqtt_lite as mq
from localcloud import service_link as link
from localcloud.layout import SERVICE_IDENTITY, CloudDir, Settings
from localcloud.service_link import ConnectionLost, tls_context
from localcloud.shadow_store import ShadowStore
from localcloud.tlsio import TlsClosed, TlsConnection
from shadow.engine import ShadowEngine
from shadow.topics import ANY, shadow_topic

log = logs.get_logger("localcloud.shadow_service")

REQUEST_FILTERS = (shadow_topic(ANY, ANY), shadow_topic(ANY, ANY, name=ANY))
KEEPALIVE_S = link.KEEPALIVE_S


class ShadowService:
    def __init__(self, cloud: CloudDir, settings: Settings) -> None:
        self.cloud = cloud
        self.settings = settings
        self.store = ShadowStore(cloud.shadows_db, durable=settings.durable)
        self.engine = ShadowEngine(self.store.load_all(), rate_per_thing=settings.rate_limit_per_thing)
        self.stopping = False
        self.announced = False
        ident = cloud.identity_dir(SERVICE_IDENTITY)
        self.tls = tls_context(ident / "root-ca.crt", ident / "device.crt", ident / "device.key")
        self._qos = settings.response_qos
        self._next_id = 0
        self._early: list[mq.Packet] = []

    def _packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _connect(self) -> tuple[TlsConnection, mq.PacketParser]:
        conn, parser, self._early = link.connect(
            self.settings.endpoint,
            self.settings.port,
            self.tls,
            SERVICE_IDENTITY,
            REQUEST_FILTERS,
            self._packet_id,
            who="the service",
        )
        return conn, parser

    def _handle(self, packets: list[mq.Packet], out: bytearray) -> None:
        now = time.time()
        handle = self.engine.handle
        qos = self._qos
        for pkt in packets:
            if pkt.type != mq.PUBLISH:
                continue
            if pkt.qos:
                out += mq.puback(pkt.packet_id)
            if pkt.retain:
                continue  # AWS refuses retained publishes on reserved topics; never answer a stale one
            for topic, payload in handle(pkt.topic, pkt.payload, now):
                out += mq.publish(topic, payload, qos, self._packet_id() if qos else 0)

    def _serve(self, conn: TlsConnection, parser: mq.PacketParser) -> None:
        last_sent = time.monotonic()
        out = bytearray()
        self._handle(self._early, out)
        self._early = []
        parent = os.getppid()
        while not self.stopping:
            if os.getppid() != parent:
                log.warning("shadow.service.orphaned", parent=parent)
                self.stopping = True
                break
            if conn.wait_readable(0.05 if self.store.checkpoint_due else 1.0):
                parser.feed(conn.recv())
                self._handle(parser.packets(), out)
            elif self.store.checkpoint_due:
                self._checkpoint()  # 50 ms without a request: a good moment for the 10-20 ms it takes
            now = time.monotonic()
            if now - last_sent > KEEPALIVE_S / 2:
                out += mq.PINGREQ_BYTES
            if out:
                self.flush()  # commit before answering: an accepted update survives a crash of this process
                conn.send(out)
                out.clear()
                last_sent = now

    def _checkpoint(self) -> None:
        try:
            self.store.checkpoint()
        except sqlite3.Error as exc:
            log.warning("shadow.store.checkpoint_failed", error=str(exc), db=str(self.store.path))

    def flush(self) -> None:
        """Commit the changed shadows. A failing disk is logged and retried on the next turn; the service
        keeps answering from memory rather than going down."""
        changed = self.engine.take_dirty()
        try:
            self.store.save(changed)
        except sqlite3.Error as exc:
            self.engine.requeue_dirty(changed)
            log.error("shadow.store.failed", error=str(exc), pending=len(changed), db=str(self.store.path))

    def run(self) -> int:
        failures = 0
        while not self.stopping:
            try:
                conn, parser = self._connect()
            except (OSError, ConnectionLost, TlsClosed, mq.ProtocolError) as exc:
                failures += 1
                (log.warning if failures == 1 else log.debug)(
                    "shadow.service.connect_failed", error=str(exc), port=self.settings.port
                )
                time.sleep(min(0.2 * failures, 2.0))
                continue
            failures = 0
            log.info("shadow.service.ready", shadows=len(self.engine.shadows), port=self.settings.port)
            if not self.announced:
                self.announced = True
                sys.stdout.write("READY\n")
                sys.stdout.flush()
            try:
                self._serve(conn, parser)
                conn.send(mq.DISCONNECT_BYTES)
            except (OSError, ConnectionLost, TlsClosed, mq.ProtocolError) as exc:
                if not self.stopping:
                    log.warning("shadow.service.disconnected", error=str(exc))
            finally:
                conn.close()
        self.flush()
        self.store.close()
        log.info("shadow.service.stopped", **self.engine.counters)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud.shadow_service")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("ROOMBA_LOG_LEVEL", "info"), json=True)
    cloud = CloudDir.at(args.dir)
    service = ShadowService(cloud, cloud.load_settings())

    def stop(_sig: int, _frame: FrameType | None) -> None:
        service.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    profile = os.environ.get("ROOMBA_SHADOW_PROFILE")
    if profile:
        import cProfile

        with cProfile.Profile() as prof:
            code = service.run()
        prof.dump_stats(profile)
        return code
    return service.run()


if __name__ == "__main__":
    sys.exit(main())
