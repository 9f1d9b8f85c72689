"""A minimal MQTT 3.1.1 client codec, sans-I/O, for the shadow service's hot loop.

Why not paho: paho reads one packet per ``select()`` and writes one TLS record per packet; the shadow
service answers every request with two or three publications, so those syscalls dominate. With this codec
the service reads everything the socket has, answers it all, and writes the answers in one ``sendall``.
Only what a subscriber-and-publisher client needs is here: CONNECT/CONNACK, SUBSCRIBE/SUBACK,
PUBLISH (QoS 0/1, both ways), PUBACK, PINGREQ/PINGRESP, DISCONNECT. Malformed input from the broker raises
``ProtocolError`` (the connection is then dropped and re-made); the parser's buffer is bounded by the
broker's maximum packet size.
"""

from __future__ import annotations

import struct
from collections.abc import Collection
from typing import NamedTuple

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
MAX_PACKET = 256 * 1024 * 1024 - 1


class ProtocolError(Exception):
    """The broker sent bytes that are not MQTT 3.1.1; drop the connection."""


class Packet(NamedTuple):
    """One received packet. For PUBLISH: ``topic``, ``payload``, ``qos``, ``packet_id``, ``retain``.

    A named tuple: the service builds one per request, and a tuple is several times cheaper to make than a
    frozen dataclass."""

    type: int
    flags: int
    body: bytes
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    packet_id: int = 0
    retain: bool = False


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + _remaining_length(len(body)) + body


def connect(client_id: str, *, keepalive: int = 30, clean_session: bool = True) -> bytes:
    flags = 0x02 if clean_session else 0x00
    return _packet(
        CONNECT << 4, _str("MQTT") + bytes((4, flags)) + struct.pack("!H", keepalive) + _str(client_id)
    )


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_str(f) + bytes((q,)) for f, q in filters)
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False) -> bytes:
    t = topic.encode("utf-8")
    head = _PACK_H(len(t)) + t + _PACK_H(packet_id) if qos else _PACK_H(len(t)) + t
    n = len(head) + len(payload)
    first = 0x30 | (qos << 1) | (1 if retain else 0)
    if n < 128:
        prefix = bytes((first, n))
    elif n < 16384:
        prefix = bytes((first, (n & 0x7F) | 0x80, n >> 7))
    else:
        prefix = bytes((first,)) + _remaining_length(n)
    return b"".join((prefix, head, payload))


_PACK_H = struct.Struct("!H").pack


_PUBACK_HEAD = struct.Struct("!BBH").pack


def puback(packet_id: int) -> bytes:
    return _PUBACK_HEAD(PUBACK << 4, 2, packet_id)


PINGREQ_BYTES = bytes((PINGREQ << 4, 0))
DISCONNECT_BYTES = bytes((DISCONNECT << 4, 0))


class PacketParser:
    """Incremental parser: ``feed(data)`` then iterate ``packets()`` until it stops yielding.

    Packet types in ``ignore`` are consumed without being decoded (the shadow service ignores the broker's
    PUBACKs for its answers: two per update).
    """

    def __init__(self, max_packet: int = MAX_PACKET, *, ignore: Collection[int] = ()) -> None:
        self._buf = bytearray()
        self._max = max_packet
        self._ignore = frozenset(ignore)

    def feed(self, data: bytes) -> None:
        self._buf += data

    def packets(self) -> list[Packet]:
        out: list[Packet] = []
        buf = self._buf
        ignore = self._ignore
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first = buf[pos]
            mult, length, i = 1, 0, pos + 1
            while True:
                if i >= end:
                    self._compact(pos)
                    return out
                byte = buf[i]
                length += (byte & 0x7F) * mult
                i += 1
                if not byte & 0x80:
                    break
                mult *= 128
                if mult > 128**3:
                    raise ProtocolError("remaining length longer than 4 bytes")
            if length > self._max:
                raise ProtocolError(f"packet of {length} bytes exceeds the {self._max}-byte limit")
            if end - i < length:
                break
            if first >> 4 not in ignore:
                out.append(_decode(first, bytes(buf[i : i + length])))
            pos = i + length
        self._compact(pos)
        return out

    def _compact(self, pos: int) -> None:
        if pos:
            del self._buf[:pos]


def _decode(first: int, body: bytes) -> Packet:
    ptype, flags = first >> 4, first & 0x0F
    if ptype != PUBLISH:
        return Packet(ptype, flags, body)
    if len(body) < 2:
        raise ProtocolError("PUBLISH without a topic")
    (tlen,) = struct.unpack_from("!H", body)
    qos = (flags >> 1) & 0x03
    pos = 2 + tlen
    packet_id = 0
    if qos:
        if len(body) < pos + 2:
            raise ProtocolError("PUBLISH without a packet id")
        (packet_id,) = struct.unpack_from("!H", body, pos)
        pos += 2
    try:
        topic = body[2 : 2 + tlen].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("PUBLISH topic is not UTF-8") from None
    return Packet(PUBLISH, flags, b"", topic, body[pos:], qos, packet_id, bool(flags & 0x01))
