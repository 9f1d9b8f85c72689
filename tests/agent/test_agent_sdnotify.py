"""sd_notify against a datagram socket the test opens (filesystem and abstract addresses)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from agent.sdnotify import Notifier


def receive(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def test_filesystem_socket(tmp_path: Path) -> None:
    """READY/STATUS/WATCHDOG/STOPPING reach a filesystem notify socket, one datagram each."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())})
        assert n.enabled and n.watchdog_s == 4.0
        assert n.ready("connected")
        assert receive(sock) == {"READY": "1", "STATUS": "connected"}
        assert n.watchdog()
        assert receive(sock) == {"WATCHDOG": "1"}
        assert n.stopping()
        assert receive(sock)["STOPPING"] == "1"
        n.close()


def test_abstract_socket() -> None:
    """An abstract notify socket (@name) works like a filesystem one."""
    name = f"roomba-agent-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert n.status("waiting for the serial link")
        assert receive(sock) == {"STATUS": "waiting for the serial link"}
        n.close()


def test_disabled_and_foreign_watchdog() -> None:
    """Without a socket every call is a no-op; a WATCHDOG_PID of another process disables the watchdog."""
    n = Notifier({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"})
    assert not n.enabled and not n.ready("x") and n.watchdog_s is None


def test_dead_socket_is_not_fatal(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and n.ready("x") is False


def test_full_socket_never_blocks(tmp_path: Path) -> None:
    """A manager that stops reading must not stall the agent: messages are dropped, not waited on."""
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        n = Notifier({"NOTIFY_SOCKET": path})
        results = [n.status("x" * 512) for _ in range(5000)]
        assert results[0] is True and results[-1] is False
        n.close()
