"""Thin I/O around :class:`hal.sim.robot.SimRobot`: a pty or TCP link, a control socket, a record file.

One thread, one ``selectors`` loop, no busy waiting: the loop sleeps until the robot's next deadline (a 15 ms
stream tick, the next paced chunk of output, a banner line) or until a byte arrives. Tests use the context
manager in-process; ``roomba-sim robot`` runs the same loop in the main thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import socket
import stat
import threading
import time
import tty
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from base.logs import get_logger
from hal.sim.robot import CommandReceived, ControlError, ModeChanged, PowerEvent, SimEvent, SimRobot
from hal.sim.world import World

MAX_UNPLUG_S = 3600.0
CONTROL_LINE_MAX = 65536


class SimServer:
    """Serve one :class:`SimRobot` on a pty (``link``) or on TCP (``tcp=(host, port)``, port 0 = any free).

    ``url`` is what a client opens: the link path (a symlink to the pty slave) or ``socket://host:port``.
    """

    def __init__(
        self,
        robot: SimRobot | None = None,
        *,
        link: str | os.PathLike[str] | None = None,
        tcp: tuple[str, int] | None = None,
        control: str | os.PathLike[str] | None = None,
        record: str | os.PathLike[str] | None = None,
        seed: int = 0,
        speed: float = 1.0,
        docked: bool = False,
        firmware: str | None = None,
        quirks: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        if (link is None) == (tcp is None):
            raise ValueError("serve on exactly one of a pty link path or a TCP (host, port)")
        extra: dict[str, Any] = {"firmware": firmware} if firmware else {}
        self.robot = robot or SimRobot(
            seed=seed, speed=speed, now=time.monotonic(), docked=docked, quirks=quirks, **extra
        )
        self.link_path = Path(link) if link is not None else None
        self.tcp_addr = tcp
        self.control_path = Path(control) if control is not None else None
        self.record_path = Path(record) if record is not None else None
        self.log = get_logger("hal.sim", link=str(link) if link else f"tcp:{tcp[0]}:{tcp[1]}" if tcp else "")
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._master: int | None = None
        self._slave: int | None = None
        self.pty_name: str | None = None
        self._listener: socket.socket | None = None
        self._client: socket.socket | None = None
        self._control_sock: socket.socket | None = None
        self._control_clients: dict[socket.socket, bytearray] = {}
        self._record: TextIO | None = None
        self._requests: queue.Queue[tuple[dict[str, Any], threading.Event, list[dict[str, Any]]]] = (
            queue.Queue()
        )
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop_thread_id: int | None = None
        self._unplugged_until: float | None = None
        self._wall_offset = time.time() - time.monotonic()
        self.tx_dropped = 0
        self.port: int | None = None
        self._opened = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def world(self) -> World:
        return self.robot.world

    @property
    def url(self) -> str:
        if self.link_path is not None:
            return str(self.link_path)
        assert self.tcp_addr is not None
        return f"socket://{self.tcp_addr[0]}:{self.port}"

    def open(self) -> None:
        """Create the link, the control socket and the record file (idempotent)."""
        if self._opened:
            return
        try:
            if self.record_path is not None:
                self._record = open(self.record_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            self._plug()
            if self.control_path is not None:
                self._open_control(self.control_path)
        except BaseException:  # leave no pty symlink, listener or open file behind a failed start
            self._unplug_link()
            if self._record is not None:
                self._record.close()
                self._record = None
            raise
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._opened = True
        self.log.info("sim.ready", url=self.url, pty=self.pty_name, control=str(self.control_path or ""))

    def ready_line(self) -> str:
        parts = [f"url={self.url}"]
        if self.pty_name:
            parts.append(f"pty={self.pty_name}")
        if self.port is not None:
            parts.append(f"port={self.port}")
        if self.control_path is not None:
            parts.append(f"control={self.control_path}")
        return "roomba-sim ready " + " ".join(parts)

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Open everything and run the loop in a daemon thread."""
        self.open()
        self._thread = threading.Thread(target=self.serve_forever, name="roomba-sim", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Ask the loop to return (safe from a signal handler or another thread)."""
        self._stopping = True
        self._poke()

    def close(self) -> None:
        self.shutdown()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        self._unplug_link()
        for sock in list(self._control_clients):
            self._drop_control_client(sock)
        if self._control_sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._control_sock)
            self._control_sock.close()
            self._control_sock = None
            if self.control_path is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.control_path.unlink()
        if self._record is not None:
            self._record.close()
            self._record = None
        if self._wake_r >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._wake_r)
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
        self._sel.close()
        self.log.info("sim.stopped")

    def _poke(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    # ------------------------------------------------------------------ the loop

    def serve_forever(self) -> None:
        self.open()
        self._loop_thread_id = threading.get_ident()
        robot = self.robot
        errors = 0
        try:
            while not self._stopping:
                try:
                    self._loop_once(robot)
                    errors = 0
                except Exception:
                    errors += 1
                    self.log.exception("sim.loop.error", consecutive=errors)
                    if errors >= 100:
                        raise
                    time.sleep(0.01)
        finally:
            self._loop_thread_id = None

    def _loop_once(self, robot: SimRobot) -> None:
        now = time.monotonic()
        self._run_requests()
        if self._unplugged_until is not None and now >= self._unplugged_until:
            try:
                self._plug()
            except OSError as exc:
                self._unplugged_until = now + 1.0
                self.log.warning("sim.link.restore_failed", error=str(exc), retry_s=1.0)
            else:
                self._unplugged_until = None
                self.log.info("sim.link.restored", url=self.url, pty=self.pty_name)
        out = robot.poll(now)
        if out:
            self._write(out)
        self._handle_events()
        deadline = robot.next_deadline(now)
        if self._unplugged_until is not None:
            deadline = min(deadline, self._unplugged_until)
        timeout = max(0.0, deadline - time.monotonic())
        for key, _mask in self._sel.select(timeout):
            self._dispatch(key.data, key.fileobj)

    def _dispatch(self, kind: str, fileobj: Any) -> None:
        now = time.monotonic()
        if kind == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        elif kind == "pty":
            try:
                data = os.read(fileobj, 4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if data:
                self.robot.feed(data, now)
        elif kind == "listener":
            self._accept_tcp()
        elif kind == "client":
            try:
                data = fileobj.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if data:
                self.robot.feed(data, now)
            else:
                self.log.info("sim.tcp.client.disconnected")
                self._close_client()
        elif kind == "control":
            conn, _ = fileobj.accept()
            conn.setblocking(False)
            self._control_clients[conn] = bytearray()
            self._sel.register(conn, selectors.EVENT_READ, "control_client")
        elif kind == "control_client":
            self._read_control(fileobj)

    def _write(self, data: bytes) -> None:
        try:
            if self._master is not None:
                written = os.write(self._master, data)
            elif self._client is not None:
                written = self._client.send(data)
            else:
                written = 0
        except (BlockingIOError, InterruptedError):
            written = 0
        except OSError as exc:
            self.log.warning("sim.link.write_failed", error=str(exc))
            written = 0
            if self._client is not None:
                self._close_client()
        if written < len(data):
            self.tx_dropped += len(data) - written

    def _handle_events(self) -> None:
        events = self.robot.drain_events()
        if not events:
            return
        for event in events:
            self._log_event(event)
            if isinstance(event, CommandReceived) and self._record is not None:
                self._record.write(json.dumps(self._record_entry(event)) + "\n")

    def _record_entry(self, event: CommandReceived) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "t": round(event.t + self._wall_offset, 6),
            "opcode": event.opcode,
            "name": event.name,
            "args": list(event.args),
            "mode": event.mode.name.lower(),
        }
        if event.ignored:
            entry["ignored"] = event.ignored
        return entry

    def _log_event(self, event: SimEvent) -> None:
        if isinstance(event, CommandReceived):
            if event.ignored:
                self.log.info(
                    "sim.command.ignored",
                    opcode=event.opcode,
                    name=event.name,
                    mode=event.mode.name,
                    reason=event.ignored,
                )
            else:
                self.log.debug("sim.command", opcode=event.opcode, name=event.name, args=list(event.args))
        elif isinstance(event, ModeChanged):
            self.log.info("sim.mode.changed", old=event.old.name, new=event.new.name, reason=event.reason)
        elif isinstance(event, PowerEvent):
            self.log.info("sim.power", what=event.what)

    # ------------------------------------------------------------------ link: pty or TCP

    def _plug(self) -> None:
        if self.link_path is not None:
            self._open_pty(self.link_path)
        else:
            self._open_listener()

    def _open_pty(self, path: Path) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.pty_name = os.ttyname(slave)
        if path.is_symlink():
            path.unlink()
        elif path.exists():
            os.close(master)
            os.close(slave)
            self._master = self._slave = None
            raise FileExistsError(f"{path} exists and is not a symlink; pick another --link path")
        path.symlink_to(self.pty_name)
        self._sel.register(master, selectors.EVENT_READ, "pty")

    def _open_listener(self) -> None:
        assert self.tcp_addr is not None
        host, port = self.tcp_addr[0], self.port if self.port is not None else self.tcp_addr[1]
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(4)
        sock.setblocking(False)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._sel.register(sock, selectors.EVENT_READ, "listener")

    def _accept_tcp(self) -> None:
        assert self._listener is not None
        try:
            conn, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        if self._client is not None:
            self.log.info("sim.tcp.client.replaced")
            self._close_client()
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._client = conn
        self._sel.register(conn, selectors.EVENT_READ, "client")
        self.log.info("sim.tcp.client.connected", peer=f"{peer[0]}:{peer[1]}")

    def _close_client(self) -> None:
        if self._client is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._client)
        self._client.close()
        self._client = None

    def _unplug_link(self) -> None:
        if self._master is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self.link_path is not None and self.link_path.is_symlink():
            self.link_path.unlink()
        self._close_client()
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None

    def unplug(self, seconds: float) -> None:
        """Pull the cable: close the link now, bring it back (a new pty / listener) after ``seconds``."""
        self._unplug_link()
        self.robot.output.clear()
        self._unplugged_until = time.monotonic() + seconds
        self.log.warning("sim.link.unplugged", seconds=seconds)

    # ------------------------------------------------------------------ control socket

    def _open_control(self, path: Path) -> None:
        if path.exists() or path.is_symlink():
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
            else:
                raise FileExistsError(f"{path} exists and is not a socket; pick another --control path")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.listen(8)
        sock.setblocking(False)
        self._control_sock = sock
        self._sel.register(sock, selectors.EVENT_READ, "control")

    def _drop_control_client(self, sock: socket.socket) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(sock)
        self._control_clients.pop(sock, None)
        sock.close()

    def _read_control(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_control_client(sock)
            return
        buf = self._control_clients[sock]
        buf += data
        while b"\n" in buf:
            line, _, rest = bytes(buf).partition(b"\n")
            buf[:] = rest
            if not line.strip():
                continue
            answer = self._handle_control_line(line)
            sock.settimeout(2.0)
            try:
                sock.sendall(json.dumps(answer).encode() + b"\n")
            except OSError:
                self._drop_control_client(sock)
                return
            finally:
                if sock.fileno() >= 0:
                    sock.setblocking(False)
        if len(buf) > CONTROL_LINE_MAX:
            self._drop_control_client(sock)

    def _handle_control_line(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"ok": False, "error": f"not a JSON object: {exc}; send one JSON object per line"}
        if not isinstance(request, dict):
            return {"ok": False, "error": 'send a JSON object such as {"op": "state"}'}
        return self._control_now(request)

    def _control_now(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        self.log.info("sim.control.request", op=repr(op) if not isinstance(op, str) else op)
        try:
            if op == "unplug":
                seconds = request.get("seconds", 2.0)
                if (
                    isinstance(seconds, bool)
                    or not isinstance(seconds, int | float)
                    or not (0 <= seconds <= MAX_UNPLUG_S)
                ):
                    raise ControlError(f'"seconds" must be a number between 0 and {MAX_UNPLUG_S}')
                self.unplug(float(seconds))
                return {"ok": True, "unplugged": True, "seconds": seconds}
            result = self.robot.control(request, time.monotonic())
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a request must get an answer, never stall the client or the loop
            self.log.exception("sim.control.failed", op=repr(op))
            return {"ok": False, "error": f"request {request!r} failed: {type(exc).__name__}: {exc}"}
        if op == "state":
            result["link"] = {
                "url": self.url,
                "pty": self.pty_name,
                "unplugged": self._unplugged_until is not None,
                "tcp_client": self._client is not None,
                "tx_dropped": self.tx_dropped,
            }
        self._handle_events()
        return {"ok": True, **result}

    def control(self, request: Mapping[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Apply a control request from any thread (runs inside the loop when it is running)."""
        req = dict(request)
        if (
            self._thread is None
            or not self._thread.is_alive()
            or threading.get_ident() == self._loop_thread_id
        ):
            return self._control_now(req)
        done = threading.Event()
        box: list[dict[str, Any]] = []
        self._requests.put((req, done, box))
        self._poke()
        if not done.wait(timeout):
            raise TimeoutError(f"the simulator loop did not answer {req.get('op')!r} within {timeout} s")
        return box[0]

    def _run_requests(self) -> None:
        while True:
            try:
                req, done, box = self._requests.get_nowait()
            except queue.Empty:
                return
            box.append(self._control_now(req))
            done.set()


def send_control(
    path: str | os.PathLike[str], request: Mapping[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """Send one request to a running simulator's control socket and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(path))
        sock.sendall(json.dumps(dict(request)).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer = json.loads(buf)
    if not isinstance(answer, dict):
        raise ValueError(f"the simulator answered {answer!r}, not a JSON object")
    return answer
