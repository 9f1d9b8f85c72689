"""Command latency: desired update -> OI bytes at the simulator -> reported answer, for our agent and for a
handler written the way the SDK's shadow sample does it (V2 client, default builder settings, futures).

Both run in the same local cloud (``roomba-fleet up``), each with its own simulator on a pty. Our agent is
also commanded the way an operator does it, ``roomba-fleet command THING clean --wait`` (``cli_p50_ms``: the
CLI's ``main()`` from start to return, so its TLS connection, the shadow get that finds the previous command,
the update and the wait for ``done``; ``cli_process_p50_ms``: the same as a new process, interpreter start
included). Prints ONE JSON line. Usage:
``.venv/bin/python bench/agent_latency.py [--commands 200] [--cli-commands 50] [--gap-ms 250]``
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
CLEAN = 135


def pct(values: list[float], p: float) -> float:
    data = sorted(values)
    return round(data[min(len(data) - 1, int(p * len(data)))], 3)


def wait_until(pred: Any, timeout: float, what: str) -> Any:
    """The shared poller, at the bench's 20 ms pace; a timeout ends the bench with its message."""
    from base import testing

    try:
        return testing.wait_until(pred, timeout, what, interval=0.02)
    except AssertionError as exc:
        raise SystemExit(f"bench: {exc}") from None


class Sim:
    def __init__(self, tmp: Path, name: str) -> None:
        self.link, self.record = tmp / f"{name}.tty", tmp / f"{name}.jsonl"
        with open(tmp / f"{name}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "roomba-sim"), "robot", "--link", str(self.link), "--record", str(self.record)],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        wait_until(self.link.exists, 20, "simulator")

    def clean_times(self) -> list[float]:
        if not self.record.exists():
            return []
        out = []
        for line in self.record.read_text().splitlines():
            rec = json.loads(line)
            if rec["opcode"] == CLEAN:
                out.append(float(rec["t"]))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class Operator:
    """The fleet side: writes desired.command, timestamps the robot's reported answer.

    It uses the local cloud's own lean operator client in this thread (TCP_NODELAY, no network thread), so
    the figure is the agent's and the cloud's, not a client library's loop (paho's costs about 0.5 ms a
    message here).
    """

    def __init__(self, cloud: Any, thing: str) -> None:
        from localcloud.opclient import OperatorClient

        self.thing = thing
        self.base = f"$aws/things/{thing}/shadow"
        self.rejected: list[dict[str, Any]] = []
        self.c = OperatorClient(cloud.dir)
        self.c.subscribe([f"{self.base}/update/accepted", f"{self.base}/update/rejected"], qos=0)

    def send(self, cmd_id: str) -> float:
        body = json.dumps({"state": {"desired": {"command": {"id": cmd_id, "action": "clean"}}}}).encode()
        t0 = time.time()
        self.c.publish(f"{self.base}/update", body, qos=0)
        return t0

    def wait_answer(self, cmd_id: str, timeout: float) -> float | None:
        """When the first reported answer (accepted or done) for ``cmd_id`` arrived."""
        for pkt in self.c.messages(timeout):
            now = time.time()
            doc = json.loads(pkt.payload)
            if pkt.topic.endswith("/rejected"):
                self.rejected.append(doc)
                continue
            cmd = ((doc.get("state") or {}).get("reported") or {}).get("command") or {}
            if cmd.get("id") == cmd_id and cmd.get("status") in ("accepted", "done"):
                return now
        return None

    def drain(self, seconds: float) -> None:
        for _ in self.c.messages(seconds):
            pass

    def close(self) -> None:
        self.c.close()


def sample_style_handler(
    cloud: Any, thing: str, port: str, stop: threading.Event, started: threading.Event
) -> None:
    """The baseline, shaped like samples/service_clients/shadow.py: default builder settings (only the
    endpoint, port, credentials and client id), IotShadowClientV2 with (2, 2, 30 s), a delta stream whose
    events are handled on the main thread, and update_shadow(...).result() for the answer."""
    from awscrt import mqtt_request_response
    from awsiot import ServiceStreamOptions, iotshadow, mqtt5_client_builder

    from hal.robot import Robot

    ident = cloud.identity(thing)
    connected = threading.Event()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint="127.0.0.1",
        port=cloud.port,
        cert_filepath=str(ident.cert),
        pri_key_filepath=str(ident.key),
        ca_filepath=str(ident.ca),
        client_id=thing,
        on_lifecycle_connection_success=lambda d: connected.set(),
    )
    client.start()
    connected.wait(20)
    shadow = iotshadow.IotShadowClientV2(
        client,
        mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=2,
            max_streaming_subscriptions=2,
            operation_timeout_in_seconds=30,
        ),
    )
    deltas: queue.Queue[Any] = queue.Queue()
    stream = shadow.create_shadow_delta_updated_stream(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing),
        ServiceStreamOptions(incoming_event_listener=deltas.put),
    )
    stream.open()
    robot = Robot(port, hold_mode=None).start(wait=10)
    desired: dict[str, Any] = {}
    time.sleep(1.0)  # stream subscription settles
    started.set()
    while not stop.is_set():
        try:
            event = deltas.get(timeout=0.2)
        except queue.Empty:
            continue
        command = dict((event.state or {}).get("command") or {})
        desired.update(command)
        if desired.get("action") == "clean":
            robot.clean()
        answer = {**desired, "status": "done"}
        shadow.update_shadow(
            iotshadow.UpdateShadowRequest(
                thing_name=thing, state=iotshadow.ShadowState(reported={"command": answer})
            )
        ).result()
    robot.close()
    client.stop()


def run_series(op: Operator, sim: Sim, n: int, gap_s: float, prefix: str) -> dict[str, list[float]]:
    totals, to_oi = [], []
    base = len(sim.clean_times())
    for i in range(n):
        cid = f"{prefix}-{uuid.uuid4().hex[:8]}-{i}"
        t0 = op.send(cid)
        t2 = op.wait_answer(cid, 10)
        if t2 is None:
            raise SystemExit(f"bench: no answer to {cid}; rejected updates seen: {op.rejected[-3:]}")
        times = wait_until(
            lambda k=base + i + 1: (lambda t: t if len(t) >= k else None)(sim.clean_times()), 5, "record"
        )
        totals.append((t2 - t0) * 1000)
        to_oi.append((times[base + i] - t0) * 1000)
        op.drain(gap_s)
    return {"total": totals, "oi": to_oi}


def run_cli_series(cloud: Any, thing: str, n: int, gap_s: float, processes: int) -> dict[str, list[float]]:
    """``roomba-fleet command THING clean --wait``: ``n`` times through ``main()`` in this process, then
    ``processes`` times as a new process; wall time of each, in ms."""
    import contextlib
    import io

    from fleet import command

    argv = [thing, "clean", "--wait", "--timeout", "10", "--json", "--dir", str(cloud.dir.root)]
    in_process: list[float] = []
    for _ in range(n):
        out = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(out):
            code = command.main(argv)
        in_process.append((time.perf_counter() - t0) * 1000)
        if code != 0:
            raise SystemExit(f"bench: roomba-fleet command exited {code}: {out.getvalue()[-500:]}")
        time.sleep(gap_s)
    as_process: list[float] = []
    for _ in range(processes):
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "fleet", "command", *argv], capture_output=True, text=True, timeout=60
        )
        as_process.append((time.perf_counter() - t0) * 1000)
        if proc.returncode != 0:
            raise SystemExit(f"bench: roomba-fleet command exited {proc.returncode}: {proc.stderr[-500:]}")
        time.sleep(gap_s)
    return {"main": in_process, "process": as_process}


def cfg_state(path: Path) -> str:
    import tomllib

    return str(tomllib.loads(path.read_text())["state_dir"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument(
        "--gap-ms",
        type=float,
        default=250,
        help="pause between commands: each is 3 requests on the thing (the update, the robot's answer, its "
        "clearing of desired.command) besides the robot's own reports, under the shadow's 20 requests/s "
        "per thing (at 120 ms the robot's updates get 429s and the figure measures its backoff)",
    )
    ap.add_argument("--cli-commands", type=int, default=50, help="commands through roomba-fleet command")
    ap.add_argument("--cli-processes", type=int, default=10, help="of those, also run as a new process")
    args = ap.parse_args()
    os.environ.setdefault("ROOMBA_LOG_LEVEL", "error")
    from base.logs import configure

    configure("error")
    from localcloud.testing import LocalCloud

    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    with LocalCloud.start() as cloud:
        sim_a, sim_b = Sim(tmp, "agent"), Sim(tmp, "baseline")
        cfg = Path(cloud.add_robot("bench-agent", str(sim_a.link)))
        cloud.add_robot("bench-baseline", str(sim_b.link))
        env = {**os.environ, "ROOMBA_LOG_LEVEL": "warning"}
        with open(tmp / "agent.log", "wb") as log:
            agent = subprocess.Popen(
                [str(BIN / "roomba-agent"), "run", "--config", str(cfg)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        stop, started = threading.Event(), threading.Event()
        base_thread = threading.Thread(
            target=sample_style_handler,
            args=(cloud, "bench-baseline", str(sim_b.link), stop, started),
            daemon=True,
        )
        base_thread.start()
        try:
            op_a, op_b = Operator(cloud, "bench-agent"), Operator(cloud, "bench-baseline")
            time.sleep(3.0)  # agent connected, first reports done
            try:
                ours = run_series(op_a, sim_a, args.commands, args.gap_ms / 1000, "a")
            except SystemExit:
                st = json.loads((Path(cfg_state(cfg)) / "status.json").read_text())
                print(json.dumps(st["metrics"]), st["last_command"], file=sys.stderr)
                raise
            time.sleep(2.5)  # the status file is rewritten every 2 s
            status = json.loads((Path(cfg_state(cfg)) / "status.json").read_text())
            inside = status["metrics"].get("command_to_oi_latency", {})
            throttled = status["metrics"].get("counters", {}).get("throttled", 0)
            op_a.close()
            # each CLI command is 2 shadow requests of ours and 2 of the robot's (answer, clearing desired):
            # spaced 250 ms to stay under the 20 requests/s per thing (the CLI retries a 429, but slower)
            cli_gap_s = max(args.gap_ms, 250) / 1000
            cli = run_cli_series(cloud, "bench-agent", args.cli_commands, cli_gap_s, args.cli_processes)
            wait_until(started.is_set, 30, "baseline handler")
            base = run_series(op_b, sim_b, args.commands, args.gap_ms / 1000, "b")
        finally:
            stop.set()
            agent.terminate()
            agent.wait(15)
            base_thread.join(10)
            sim_a.stop()
            sim_b.stop()
    result = {
        "commands": args.commands,
        "p50_ms": pct(ours["total"], 0.5),
        "p99_ms": pct(ours["total"], 0.99),
        "oi_p50_ms": pct(ours["oi"], 0.5),
        "agent_internal_p50_ms": inside.get("p50_ms"),
        "agent_throttled": throttled,  # the robot's updates answered 429 during our series: should be 0
        "baseline_p50_ms": pct(base["total"], 0.5),
        "baseline_p99_ms": pct(base["total"], 0.99),
        "baseline_oi_p50_ms": pct(base["oi"], 0.5),
    }
    result["speedup_p50"] = round(result["baseline_p50_ms"] / max(result["p50_ms"], 1e-6), 1)
    result["cli_commands"] = args.cli_commands
    result["cli_p50_ms"] = pct(cli["main"], 0.5)
    result["cli_p99_ms"] = pct(cli["main"], 0.99)
    result["cli_process_p50_ms"] = pct(cli["process"], 0.5) if cli["process"] else None
    result["cli_speedup_p50"] = round(result["baseline_p50_ms"] / max(result["cli_p50_ms"], 1e-6), 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
