"""A local-cloud service's connection to its broker: mutual TLS with the service's identity, a persistent
session, QoS 1 subscriptions. Shared by the shadow service and the iot service, which differ only in their
identity and their topic filters.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from localcloud import mqtt_lite as mq
from localcloud.tlsio import TlsConnection

KEEPALIVE_S = 30
HANDSHAKE_TIMEOUT_S = 10.0


class ConnectionLost(Exception):
    pass


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def connect(
    endpoint: str,
    port: int,
    tls: ssl.SSLContext,
    client_id: str,
    filters: Sequence[str],
    packet_id: Callable[[], int],
    *,
    who: str,
) -> tuple[TlsConnection, mq.PacketParser, list[mq.Packet]]:
    """CONNECT (persistent session) and SUBSCRIBE ``filters`` at QoS 1. Returns the connection, its parser
    and the packets that came before the acks (requests queued in the session, which the broker sends right
    after CONNACK): the caller handles those first. ``who`` names the service in errors."""
    early: list[mq.Packet] = []
    conn = TlsConnection.connect(endpoint, port, tls)
    try:
        conn.send(mq.connect(client_id, keepalive=KEEPALIVE_S, clean_session=False))
        parser = mq.PacketParser(ignore=(mq.PUBACK,))  # the broker acks our answers: nothing to do
        connack = expect(conn, parser, mq.CONNACK, early)
        if len(connack.body) < 2 or connack.body[1] != 0:
            raise ConnectionLost(f"broker refused {who} (CONNACK {connack.body.hex()})")
        conn.send(mq.subscribe(packet_id(), [(f, 1) for f in filters]))
        suback = expect(conn, parser, mq.SUBACK, early)
        if any(code == 0x80 for code in suback.body[2:]):
            raise ConnectionLost(f"broker refused {who}'s subscriptions (check the ACL)")
    except BaseException:
        conn.close()
        raise
    return conn, parser, early


def expect(conn: TlsConnection, parser: mq.PacketParser, ptype: int, early: list[mq.Packet]) -> mq.Packet:
    """Wait for one packet type; anything else that arrives meanwhile is appended to ``early``."""
    deadline = time.monotonic() + HANDSHAKE_TIMEOUT_S
    found: mq.Packet | None = None
    while found is None and time.monotonic() < deadline:
        if not conn.wait_readable(0.5):
            continue
        parser.feed(conn.recv())
        for pkt in parser.packets():
            if found is None and pkt.type == ptype:
                found = pkt
            else:
                early.append(pkt)
    if found is None:
        raise ConnectionLost(f"no packet type {ptype} from the broker within {HANDSHAKE_TIMEOUT_S:.0f} s")
    return found
