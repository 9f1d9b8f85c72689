"""Agent footprint: RSS and CPU (of one core) while connected to the local cloud with the simulator
streaming sensors every 15 ms, and the time from start to READY=1 on a notify socket this script opens.

Prints ONE JSON line. Usage: ``.venv/bin/python bench/agent_footprint.py [--seconds 60]``
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent

from base.process import cpu_seconds, rss_mb  # noqa: E402  (after the sys.path line: run as a script)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    from base.logs import configure

    configure("error")
    from localcloud.testing import LocalCloud

    tmp = Path(tempfile.mkdtemp(prefix="bench-footprint-"))
    notify_path = str(tmp / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    with LocalCloud.start() as cloud:
        link = tmp / "robot.tty"
        with open(tmp / "sim.log", "wb") as log:
            sim = subprocess.Popen(
                [str(BIN / "roomba-sim"), "robot", "--link", str(link)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        try:
            while not link.exists():
                time.sleep(0.02)
            cfg = Path(cloud.add_robot("bench-footprint", str(link)))
            env = {**os.environ, "NOTIFY_SOCKET": notify_path, "ROOMBA_LOG_LEVEL": "warning"}
            with open(tmp / "agent.log", "wb") as log:
                t0 = time.monotonic()
                agent = subprocess.Popen(
                    [str(BIN / "roomba-agent"), "run", "--config", str(cfg)],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
            ready_s = None
            sock.settimeout(30)
            while ready_s is None:
                msg = sock.recv(4096).decode()
                if "READY=1" in msg.splitlines():
                    ready_s = time.monotonic() - t0
            time.sleep(2.0)  # first reports and subscriptions out of the way
            c0, w0 = cpu_seconds(agent.pid), time.monotonic()
            peak = 0.0
            while time.monotonic() - w0 < args.seconds:
                time.sleep(1.0)
                peak = max(peak, rss_mb(agent.pid))
            c1, w1 = cpu_seconds(agent.pid), time.monotonic()
            status = json.loads((Path(_state_dir(cfg)) / "status.json").read_text())
            frames = status["metrics"]["gauges"].get("serial_frames")
            agent.terminate()
            agent.wait(15)
        finally:
            sim.terminate()
            sim.wait(10)
            sock.close()
    print(
        json.dumps(
            {
                "seconds": args.seconds,
                "rss_mb": round(peak, 1),
                "cpu_pct": round(100 * (c1 - c0) / (w1 - w0), 2),
                "ready_s": round(ready_s, 3),
                "sensor_frames": frames,
            }
        )
    )
    return 0


def _state_dir(cfg: Path) -> str:
    import tomllib

    return str(tomllib.loads(cfg.read_text())["state_dir"])


if __name__ == "__main__":
    sys.exit(main())
