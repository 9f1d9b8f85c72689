"""Benchmark of the simulated fleet on this machine; prints ONE JSON line per fleet size.

For each N (default 100, 500 and 1,000; ``--robots`` to choose) against a fresh local cloud:

- ``connect_s``: from launching ``roomba-fleet simulate --robots N`` until every robot's retained presence
  says ``online`` (identities are provisioned beforehand, so this is start-up + ramp + TLS + CONNECT);
  ``sim_connect_s`` is the simulator's own view (every agent's MQTT client connected).
- ``cmd_p50_s`` / ``cmd_p99_s`` / ``cmd_max_s``: one fleet-wide ``desired.command`` (a pipelined update of
  every shadow, as ``roomba-fleet shadow update --all`` does) until each robot's ``reported.command`` carries
  its id, as seen on ``update/accepted`` by an observer; ``cmd_done_max_s`` until the last one is ``done``.
- ``rss_mb``: resident memory of the simulator processes plus Mosquitto plus the shadow service, sampled
  after the command; ``rss_breakdown_mb`` splits it. ``cpu_pct``: CPU time of those processes over the run
  (start to end of the command), in percent of one core (this machine has ``os.cpu_count()`` cores);
  ``steady_cpu_pct`` / ``steady_rss_mb``: the same over ``--steady-s`` seconds after it, the fleet cleaning.

    .venv/bin/python bench/fleet.py [--robots 100 500 1000] [--per-process 250] [--ramp 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from base import logs
from base.process import cpu_seconds, raise_nofile_limit, rss_mb
from base.testing import wait_until
from fleet.shadow import fleet_request
from fleetsim.runner import auto_stream_period, provision, robot_names, status_path
from localcloud import mqtt_lite as mq
from localcloud.opclient import OperatorClient
from localcloud.testing import LocalCloud
from shadow.topics import ANY, parse_agent_topic, parse_shadow_topic, presence_topic, shadow_topic


def children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            out += [int(c) for c in text]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids = [pid]
    for child in children(pid):
        pids += tree(child)
    return pids


class Observer:
    """The operator's view: presence (connect time) and update/accepted (when each robot reported)."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.client = OperatorClient(cloud.dir, timeout=10)
        self.client.subscribe([presence_topic(ANY), shadow_topic(ANY, "update", "accepted")], qos=0)
        self.since = time.time()
        self.online: dict[str, float] = {}
        self.command_id: str | None = None
        self.reported: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last_ping = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() - last_ping > 20:  # messages() pings only within one long call
                self.client.conn.send(mq.PINGREQ_BYTES)
                last_ping = time.monotonic()
            for pkt in self.client.messages(0.5):
                now = time.monotonic()
                try:
                    doc = json.loads(pkt.payload)
                except ValueError:
                    continue
                presence = parse_agent_topic(pkt.topic)
                shadow = parse_shadow_topic(pkt.topic)
                if presence is not None and isinstance(doc, dict):
                    at = doc.get("at")
                    if doc.get("state") == "online" and isinstance(at, int | float) and at >= self.since:
                        self.online.setdefault(presence[0], now)
                elif shadow is not None and self.command_id is not None and isinstance(doc, dict):
                    cmd = ((doc.get("state") or {}).get("reported") or {}).get("command") or {}
                    if isinstance(cmd, dict) and cmd.get("id") == self.command_id:
                        self.reported.setdefault(shadow.thing, now)
                        if cmd.get("status") == "done":
                            self.done.setdefault(shadow.thing, now)
                if self._stop.is_set():
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def quantile(data: list[float], q: float) -> float | None:
    if not data:
        return None
    data = sorted(data)
    return round(data[min(len(data) - 1, int(q * len(data)))], 3)


def run(n: int, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"robots": n}
    with LocalCloud.start() as cloud:
        names = robot_names("bench-", n)
        provision(cloud.dir, names)
        info = cloud.run_info()["children"]
        service_pids = [int(info["mosquitto"]), int(info["shadow-service"])]
        observer = Observer(cloud)
        cpu0 = {p: cpu_seconds(p) for p in service_pids}
        t0 = time.monotonic()
        stderr = open(cloud.dir.root / "simulate.stderr", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleet.simulate",
                "--robots",
                str(n),
                "--dir",
                str(cloud.dir.root),
                "--prefix",
                "bench-",
                "--per-process",
                str(args.per_process),
                "--ramp",
                str(args.ramp),
                "--report-min-s",
                str(args.report_min_s),
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        sim_cpu: dict[int, float] = {}
        try:
            try:
                wait_until(lambda: len(observer.online) >= n, args.timeout, "every robot online", 0.1)
                connected = True
            except AssertionError:
                connected = False
            result["connect_s"] = round(max(observer.online.values()) - t0, 3) if connected else None
            result["connected"] = len(observer.online)
            time.sleep(args.settle)
            try:
                result["sim_connect_s"] = json.loads(status_path(cloud.dir.root).read_text()).get(
                    "all_connected_s"
                )
            except (OSError, ValueError):
                result["sim_connect_s"] = None
            observer.command_id = f"bench-{uuid.uuid4().hex[:8]}"
            doc = {"state": {"desired": {"command": {"id": observer.command_id, "action": "clean"}}}}
            t_cmd = time.monotonic()
            answers = fleet_request(cloud.dir, names, "update", doc, timeout=args.timeout)
            result["update_accepted"] = sum(1 for o in answers.values() if o is not None and o.accepted)
            with contextlib.suppress(AssertionError):  # a robot that never finishes shows in cmd_done_max_s
                wait_until(lambda: len(observer.done) >= n, args.timeout, "every command done", 0.1)
            lat = [t - t_cmd for t in observer.reported.values()]
            result["cmd_reported"] = len(lat)
            result["cmd_p50_s"] = quantile(lat, 0.5)
            result["cmd_p99_s"] = quantile(lat, 0.99)
            result["cmd_max_s"] = round(max(lat), 3) if lat else None
            done = [t - t_cmd for t in observer.done.values()]
            result["cmd_done_max_s"] = round(max(done), 3) if done else None
            sim_pids = tree(proc.pid)
            breakdown = {
                "simulator": round(sum(rss_mb(p) for p in sim_pids), 1),
                "mosquitto": round(rss_mb(service_pids[0]), 1),
                "shadow_service": round(rss_mb(service_pids[1]), 1),
            }
            result["rss_mb"] = round(sum(breakdown.values()), 1)
            result["rss_breakdown_mb"] = breakdown
            sim_cpu = {p: cpu_seconds(p) for p in sim_pids}
            wall = time.monotonic() - t0
            used = sum(sim_cpu.values()) + sum(cpu_seconds(p) - cpu0[p] for p in service_pids)
            result["cpu_pct"] = round(100 * used / wall, 1)
            result["wall_s"] = round(wall, 1)
            result["sim_processes"] = len(sim_pids)
            # steady state: the whole fleet cleaning, each agent reporting its pose about once a second
            all_pids = sim_pids + service_pids
            before = {p: cpu_seconds(p) for p in all_pids}
            t_steady = time.monotonic()
            time.sleep(args.steady_s)
            spent = sum(cpu_seconds(p) - before[p] for p in all_pids)
            result["steady_cpu_pct"] = round(100 * spent / (time.monotonic() - t_steady), 1)
            result["steady_rss_mb"] = round(sum(rss_mb(p) for p in all_pids), 1)
            result["stream_ms"] = round(1000 * auto_stream_period(n), 1)
            result["cores"] = os.cpu_count()
        finally:
            observer.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            stderr.close()
        result["stop_exit"] = proc.returncode
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--robots", type=int, nargs="+", default=[100, 500, 1000])
    p.add_argument("--per-process", type=int, default=500)
    p.add_argument("--ramp", type=float, default=200.0)
    p.add_argument("--report-min-s", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=3.0, help="seconds between all connected and the command")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--steady-s", type=float, default=10.0, help="seconds of steady state measured after")
    args = p.parse_args()
    logs.configure("warning")
    raise_nofile_limit()
    for n in args.robots:
        print(json.dumps(run(n, args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
