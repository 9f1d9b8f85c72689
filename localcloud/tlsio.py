"""TLS over a plain socket through memory BIOs, so one syscall moves many TLS records.

``ssl.SSLSocket.recv`` returns at most one TLS record per call, and the broker writes one record per MQTT
packet, so a busy reader pays two or three syscalls per packet. Here the socket is read in big chunks and
decrypted in memory (``ssl.MemoryBIO``); everything written in one turn leaves in one ``sendall``. On this
project's 2-core VM a syscall costs tens of microseconds, which made this the shadow service's biggest win.
"""

from __future__ import annotations

import select
import socket
import ssl

CHUNK = 1 << 18


class TlsClosed(Exception):
    """The peer closed the connection (or the TLS session ended)."""


class TlsConnection:
    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str) -> None:
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._in, self._out, server_hostname=server_hostname)

    @classmethod
    def connect(cls, host: str, port: int, ctx: ssl.SSLContext, timeout: float = 10.0) -> TlsConnection:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(sock, ctx, host)
        try:
            conn._handshake()
        except BaseException:
            sock.close()
            raise
        sock.settimeout(None)
        return conn

    def _handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        if not data:
            raise TlsClosed("connection closed by the peer")
        self._in.write(data)

    def _flush(self) -> None:
        pending = self._out.read()
        if pending:
            self.sock.sendall(pending)

    def wait_readable(self, timeout: float | None) -> bool:
        if self._tls.pending():
            return True
        readable, _, _ = select.select([self.sock], [], [], timeout)
        return bool(readable)

    def recv(self) -> bytes:
        """Everything decryptable now; reads the socket once (blocking) if nothing is buffered.

        May return b"" when only part of a TLS record has arrived; the rest follows.
        """
        chunks: list[bytes] = []
        filled = False
        while True:
            try:
                data = self._tls.read(CHUNK)
            except ssl.SSLWantReadError:
                if chunks or filled:
                    break
                self._fill()
                filled = True
                continue
            except ssl.SSLZeroReturnError:
                raise TlsClosed("TLS session closed by the peer") from None
            if not data:
                raise TlsClosed("TLS session closed by the peer")
            chunks.append(data)
        self._flush()
        return b"".join(chunks)

    def send(self, data: bytes | bytearray) -> None:
        self._tls.write(data)
        self._flush()

    def close(self) -> None:
        try:
            self._tls.unwrap()
            self._flush()
        except (ssl.SSLError, OSError):
            pass
        self.sock.close()
