"""The links the Robot talks over: the :class:`Transport` protocol, pyserial's ports, and a cable in memory.

:class:`SerialTransport` opens anything pyserial opens: a device, a pty, ``socket://``, ``rfc2217://``. Thin
on purpose: open, read what is there, write, pulse BRC, close. Every failure surfaces as one
:class:`~hal.errors.TransportError` with the port in the message, so the Robot has one thing to catch before
it reopens with backoff. Ports without modem lines (a pty raises ENOTTY, a socket has none) still work:
waking is then simply not possible and :meth:`SerialTransport.wake` says so.

A local port (a device or a pty path) is opened exclusively (pyserial's ``exclusive=True``: ``flock`` on
POSIX), so a second reader of the same port, say ``roomba-agent probe`` beside a running agent, is refused
with :class:`PortInUseError`, which names the process holding the port, instead of both readers silently
losing bytes to each other (each then sees corrupt frames). The lock is advisory: it stops our own tools,
not ``screen`` or ``cat``. ``socket://`` and ``rfc2217://`` cannot be locked from the client side; the
server decides whether a second client may connect.

:class:`MemoryTransport` is a serial cable in memory, for the fleet simulator and tests: its host side is a
:class:`Transport`, its robot side is a handful of methods a simulator calls. It lives here, beside the
protocol and the serial port it stands in for, so its errors read like theirs and a change to the protocol
meets every implementation in one file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import serial

from base.logs import get_logger
from hal.errors import TransportError

__all__ = ["MemoryTransport", "PortInUseError", "SerialTransport", "Transport", "port_holder"]


class PortInUseError(TransportError):
    """Another process holds the port's exclusive lock (a running agent, another probe)."""

    def __init__(self, url: str, holder: str | None) -> None:
        self.url = url
        self.holder = holder
        super().__init__(f"cannot open {url}: it is in use by {holder or 'another process'}")


def lockable(url: str) -> bool:
    """A local port (device or pty path), which can be locked; not a pyserial URL such as socket://."""
    return "://" not in url


def port_holder(path: str) -> str | None:
    """Who holds ``path``'s flock, as "pid N (command line)", from ``/proc/locks``; None if unknown."""
    try:
        st = os.stat(path)
        locks = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks:
        fields = line.split()
        if "FLOCK" in fields and "->" not in fields and key in fields:
            pid = fields[fields.index(key) - 1]
            return describe_pid(int(pid)) if pid.isdigit() else None
    return None


def describe_pid(pid: int) -> str:
    """ "pid N (its command line)", the command line cut to 80 characters; "pid N (this process)" for us."""
    if pid == os.getpid():
        return f"pid {pid} (this process)"
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"pid {pid}"
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    if words and Path(words[0]).name.startswith("python") and len(words) > 1:
        words = words[1:]  # "python -m fleet.cli ..." or a console script's interpreter line
    if words:
        words[0] = Path(words[0]).name
    command = " ".join(words)
    return (
        f"pid {pid} ({command[:77] + '...' if len(command) > 80 else command})" if command else f"pid {pid}"
    )


@runtime_checkable
class Transport(Protocol):
    """What :class:`~hal.robot.Robot` needs of a link. Thread-safe for one reader and any number of writers.

    Every failure is a :class:`~hal.errors.TransportError`; after one from :meth:`read` or :meth:`write` the
    transport is closed and the Robot reopens it.
    """

    url: str
    #: True: :meth:`wake` pulses a real BRC line; False: it cannot; None: not known until the first wake.
    has_modem_lines: bool | None

    @property
    def is_open(self) -> bool: ...

    def open(self) -> None:
        """One attempt to open; :class:`~hal.errors.TransportError` says why it failed."""

    def close(self) -> None:
        """Close (idempotent); a later :meth:`open` may reconnect."""

    def read(self, size: int = 4096) -> bytes:
        """Whatever arrived within the transport's read timeout, at most ``size`` bytes (possibly ``b""``)."""

    def write(self, data: bytes) -> None:
        """Send ``data`` whole, or raise :class:`~hal.errors.TransportError`."""

    def reset_input(self) -> None:
        """Drop bytes received but not read yet."""

    def wake(self, pulse_s: float = 0.1) -> bool:
        """Pulse BRC to wake a sleeping robot; False where there is no line to pulse."""


OpenFn = Callable[..., Any]


def _nonblocking_fd(port: Any) -> int | None:
    """The descriptor of a plain posix port opened non-blocking (pyserial's default), else None."""
    if type(port).__module__ != "serial.serialposix" or type(port).__name__ != "Serial":
        return None
    fd = getattr(port, "fd", None)
    try:
        return fd if isinstance(fd, int) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK else None
    except OSError:
        return None


def _socket_of(port: Any) -> socket.socket | None:
    """The socket under a pyserial ``socket://`` port, else None.

    pyserial's socket ``in_waiting`` is 0 or 1 (readable or not), so its read loop hands over one or two
    bytes per call: a reader that pauses between reads (the Robot does) then falls behind a 15 ms stream.
    """
    if type(port).__module__ != "serial.urlhandler.protocol_socket":
        return None
    sock = getattr(port, "_socket", None)
    return sock if isinstance(sock, socket.socket) else None


WRITE_TIMEOUT_S = 1.0


class SerialTransport:
    """A :class:`Transport` over a pyserial port (a device, a pty, ``socket://``, ``rfc2217://``).

    ``exclusive`` (the default) locks a local port while it is open, so a second opener gets
    :class:`PortInUseError`; False opens it beside whoever holds it (``roomba-agent probe --force``).
    """

    def __init__(
        self,
        url: str,
        baud: int = 115200,
        *,
        read_timeout: float = 0.05,
        exclusive: bool = True,
        open_fn: OpenFn = serial.serial_for_url,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url
        self.baud = baud
        self.exclusive = exclusive
        self.read_timeout = read_timeout
        self._open_fn = open_fn
        self._sleep = sleep
        self._port: Any = None
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self._write_lock = threading.Lock()
        self.has_modem_lines: bool | None = None
        self.log = get_logger("hal.transport", port=url)

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """One attempt to open the port; :class:`TransportError` says why it failed."""
        if self._port is not None:
            return
        options: dict[str, Any] = {"baudrate": self.baud, "timeout": self.read_timeout}
        if not self.url.lower().startswith("rfc2217://"):
            # pyserial's rfc2217:// raises NotImplementedError for a write timeout, and only after it has
            # connected and negotiated (leaving that connection open): do not ask it for one.
            options["write_timeout"] = WRITE_TIMEOUT_S
        locking = self.exclusive and lockable(self.url)
        if locking:
            options["exclusive"] = True
        try:
            port = self._open_fn(self.url, **options)
        except Exception as exc:  # any failure to open is "cannot open", never a dead reader thread
            if locking and getattr(exc, "errno", None) in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise PortInUseError(self.url, port_holder(self.url)) from exc
            raise TransportError(f"cannot open {self.url}: {exc or type(exc).__name__}") from exc
        self._port = port
        self._fd = _nonblocking_fd(port)
        self._sock = _socket_of(port)

    def close(self) -> None:
        port, self._port = self._port, None
        self._fd = None
        self._sock = None
        if port is None:
            return
        # pyserial's socket:// close() calls shutdown() first and skips close() when the peer has already
        # hung up (ENOTCONN), leaking the descriptor on every reconnect: close the socket ourselves too.
        sock = getattr(port, "_socket", None)
        try:
            port.close()
        except (serial.SerialException, OSError):
            pass
        if sock is not None and hasattr(sock, "close"):
            with contextlib.suppress(OSError):
                sock.close()

    def _fail(self, action: str, exc: BaseException) -> TransportError:
        self.close()
        return TransportError(f"{action} {self.url} failed: {exc}")

    def read(self, size: int = 4096) -> bytes:
        """Whatever arrived within the read timeout (possibly ``b""``)."""
        port = self._port
        if port is None:
            raise TransportError(f"{self.url} is not open")
        try:
            sock = self._sock
            if sock is not None:  # socket://: everything that has arrived, in one recv
                ready, _, _ = select.select([sock], [], [], self.read_timeout)
                if not ready:
                    return b""
                try:
                    chunk = sock.recv(size)
                except BlockingIOError:
                    return b""
                if not chunk:
                    raise ConnectionResetError("socket disconnected")
                return chunk
            fd = self._fd
            if fd is not None:
                # bytes usually wait already (the Robot sleeps until a frame is complete): one read(2),
                # not pyserial's ioctl + select + read round
                with contextlib.suppress(BlockingIOError):
                    chunk = os.read(fd, size)
                    if chunk:
                        return chunk
            waiting = port.in_waiting
            data: bytes = port.read(min(size, waiting) if waiting else 1)
            if data and waiting == 0:
                more = port.in_waiting
                if more:
                    data += port.read(min(size - 1, more))
            return data
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            # TypeError/AttributeError: pyserial's socket handler after the socket was closed under it.
            raise self._fail("reading from", exc) from exc

    def write(self, data: bytes) -> None:
        with self._write_lock:
            port = self._port
            if port is None:
                raise TransportError(f"{self.url} is not open (the robot link is down; it is being reopened)")
            try:
                port.write(data)
                port.flush()
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                raise self._fail("writing to", exc) from exc

    def reset_input(self) -> None:
        port = self._port
        if port is not None:
            try:
                port.reset_input_buffer()
            except (serial.SerialException, OSError):
                pass

    def wake(self, pulse_s: float = 0.1) -> bool:
        """Pulse the BRC line (wired to RTS, sometimes DTR, on USB cables) to wake a sleeping robot.

        Returns False when the port has no modem lines (pty, socket), which is normal for a simulator or
        a network bridge; the robot must then be awake already.
        """
        port = self._port
        if port is None or self.has_modem_lines is False:
            return False
        try:
            port.rts = True
            port.dtr = True
            self._sleep(pulse_s)
            port.rts = False
            port.dtr = False
        except (serial.SerialException, OSError, ValueError, AttributeError) as exc:
            self.has_modem_lines = False
            self.log.debug("oi.wake.unsupported", reason=str(exc))
            return False
        if not self._has_real_modem_lines(port):
            self.has_modem_lines = False
            return False
        self.has_modem_lines = True
        return True

    @staticmethod
    def _has_real_modem_lines(port: Any) -> bool:
        """socket:// and loop:// accept RTS/DTR without a wire behind them (rfc2217:// forwards them to the
        remote port, so it counts as real)."""
        return not type(port).__module__.startswith("serial.urlhandler")


class MemoryTransport:
    """A serial cable in memory: the host side is a :class:`Transport`, the robot side is for a simulator.

    Host writes (from any thread) queue up until the robot side calls :meth:`take_for_robot`; the robot side's
    :meth:`deliver` makes bytes readable. :meth:`unplug` pulls the cable (the host's next read fails, opening
    fails until :meth:`plug`). The BRC line is wired: each :meth:`wake` is counted in ``wake_requests``, for
    the simulator to act on. ``read_timeout`` 0 (the default) never blocks, for a caller that steps the Robot
    itself; under the Robot's reader thread give it a timeout, as a serial port has.
    """

    def __init__(self, url: str = "memory://robot", *, read_timeout: float = 0.0) -> None:
        self.url = url
        self.read_timeout = read_timeout
        self.has_modem_lines: bool | None = True
        self.wake_requests = 0
        self._open = False
        self._plugged = True
        self._to_robot = bytearray()
        self._to_host = bytearray()
        self._lock = threading.Lock()
        self._arrived = threading.Event()

    # the host's side: the Transport protocol ---------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._open

    @property
    def plugged(self) -> bool:
        return self._plugged

    def open(self) -> None:
        if not self._plugged:
            raise TransportError(f"cannot open {self.url}: the simulated cable is unplugged")
        self._open = True

    def close(self) -> None:
        self._open = False

    def read(self, size: int = 4096) -> bytes:
        data = self._take_for_host(size)
        if data or self.read_timeout <= 0:
            return data
        self._arrived.wait(self.read_timeout)
        self._arrived.clear()
        return self._take_for_host(size)

    def _take_for_host(self, size: int) -> bytes:
        if not self._open:
            raise TransportError(f"{self.url} is not open")
        if not self._plugged:
            self._open = False
            raise TransportError(f"reading from {self.url} failed: the simulated cable was unplugged")
        with self._lock:
            if not self._to_host:
                return b""
            data = bytes(self._to_host[:size])
            del self._to_host[:size]
        return data

    def write(self, data: bytes) -> None:
        if not self._open or not self._plugged:
            raise TransportError(f"{self.url} is not open (the robot link is down; it is being reopened)")
        with self._lock:
            self._to_robot += data

    def reset_input(self) -> None:
        with self._lock:
            self._to_host.clear()

    def wake(self, pulse_s: float = 0.1) -> bool:
        if not self._open:
            return False
        self.wake_requests += 1
        return True

    # the robot's side -------------------------------------------------------------------------------------
    def take_for_robot(self) -> bytes:
        """Everything the host has written since the last call."""
        with self._lock:
            if not self._to_robot:
                return b""
            data = bytes(self._to_robot)
            self._to_robot.clear()
        return data

    def deliver(self, data: bytes) -> None:
        """Bytes from the robot, readable by the host; lost while the host side is closed or unplugged, as on
        a real line."""
        if self._open and self._plugged:
            with self._lock:
                self._to_host += data
            if self.read_timeout > 0:
                self._arrived.set()

    def unplug(self) -> None:
        """Pull the cable: bytes in flight either way are lost."""
        self._plugged = False
        with self._lock:
            self._to_robot.clear()
            self._to_host.clear()
        self._arrived.set()

    def plug(self) -> None:
        self._plugged = True
