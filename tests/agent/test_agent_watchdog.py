"""Watchdog pings follow real health: against a notify socket the test opens, with the daemon's Agent."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

from agent import config as cfg
from agent.daemon import Agent
from agent.sdnotify import Notifier


def make_config(tmp: Path) -> cfg.AgentConfig:
    config, problems = cfg.validate(
        {
            "thing_name": "wd-robot",
            "state_dir": str(tmp / "state"),
            "connection": {
                "endpoint": "127.0.0.1",
                "root_ca": "/r",
                "cert": "/c",
                "key": "/k",
                "local": True,
            },
            "robot": {"serial_port": "/dev/null"},
        }
    )
    assert config is not None, problems
    return config


def received(sock: socket.socket) -> list[dict[str, str]]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(4096).decode()
        except BlockingIOError:
            return out
        out.append(dict(line.split("=", 1) for line in data.splitlines()))


def test_watchdog_pings_only_while_healthy(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})

        async def scenario() -> tuple[list[dict[str, str]], list[dict[str, str]], str]:
            agent = Agent(make_config(tmp_path), notifier)
            reader = threading.Thread(target=threading.Event().wait, args=(30,), daemon=True)
            reader.start()
            agent.robot_link = SimpleNamespace(robot=SimpleNamespace(_thread=reader))
            agent.worker = SimpleNamespace(alive=True)
            agent.mqtt = SimpleNamespace(connected=True)
            task = asyncio.get_running_loop().create_task(agent.watchdog_task())
            await asyncio.sleep(0.35)
            healthy = received(sock)
            agent.sync.get_timeouts = 3  # connected, but shadow requests vanish: a wedged client
            await asyncio.sleep(0.35)
            wedged = received(sock)
            why = agent.healthy()[1]
            agent.stopping.set()
            await task
            agent.db.close()
            return healthy, wedged, why

        healthy, wedged, why = asyncio.run(scenario())
    assert sum("WATCHDOG" in m for m in healthy) >= 2
    assert not any("WATCHDOG" in m for m in wedged)
    assert any(m.get("STATUS", "").startswith("unhealthy") for m in wedged)
    assert "time out" in why


def test_dead_reader_thread_is_unhealthy(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, str]:
        agent = Agent(make_config(tmp_path), Notifier({}))
        dead = threading.Thread(target=lambda: None)
        dead.start()
        dead.join()
        agent.robot_link = SimpleNamespace(robot=SimpleNamespace(_thread=dead))
        agent.worker = SimpleNamespace(alive=True)
        result = agent.healthy()
        agent.db.close()
        return result

    ok, why = asyncio.run(scenario())
    assert not ok and "HAL reader" in why
