"""Running a simulated fleet: identities provisioned once, robots split into spawned shard processes
(:mod:`fleetsim.shard`), their status gathered into ``DIR/run/simulate.json``, broker-restart faults, and a
clean stop of every robot.

Each robot is a ``SimRobot`` wired in memory to ``hal.robot.Robot`` and the unmodified agent, with its own
certificate, shadow, ledger and outbox. Connections ramp up at ``ramp_per_s``; faults add seeded weather
(link drops, broker restarts, serial noise, stuck and flat robots). The status document has, per robot:
connected, ready, mission, events queued/delivered, outbox depth, OI opcodes the simulated robot received,
faults applied. SIGINT / SIGTERM stop every robot cleanly (retained ``offline`` presence, outbox kept on
disk). ``roomba-fleet simulate`` (:mod:`fleet.simulate`) is the command line.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import FrameType
from typing import Any

from base.process import raise_nofile_limit
from fleetsim.faults import FaultSpec
from fleetsim.shard import ConnectionOverride, ShardSpec, shard_main
from localcloud.layout import CloudDir

STATUS_FILE = "simulate.json"


@dataclass(frozen=True)
class RunOptions:
    """How to run the fleet (``roomba-fleet simulate``'s options, defaults included)."""

    seed: int = 0
    per_process: int = 500
    ramp_per_s: float = 200.0
    stream_period_s: float | None = None  # None: by fleet size (auto_stream_period)
    report_min_s: float = 1.0
    telemetry_s: float = 10.0
    reconnect_max_ms: int = 10000
    duration_s: float | None = None
    durable: bool = False
    log_level: str = "warning"
    faults_text: str | None = None  # the spec as given, for the start-up line
    release_trust: str | None = None  # PEM of the release-signing certificates the robots trust
    version: str | None = None  # the release every robot starts on (None: agent.__version__)
    commit_timeout_s: float | None = None  # the robots' [update] commit_timeout_s (None: their config's)


def robot_names(prefix: str, count: int) -> list[str]:
    width = max(4, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def auto_stream_period(robots: int) -> float:
    """The sensor stream period per robot: the real 15 ms for a handful, slower at fleet scale. The shadow
    only changes on quantised values and the agent samples the stream once a second, so a 500 ms stream
    shows the cloud the same thing, while building a frame costs about 0.2 ms of CPU per robot."""
    if robots <= 5:
        return 0.015
    if robots <= 50:
        return 0.1
    if robots <= 200:
        return 0.25
    return 0.5


def split(things: Sequence[str], per_process: int) -> list[tuple[str, ...]]:
    shards = max(1, math.ceil(len(things) / per_process))
    return [tuple(things[i::shards]) for i in range(shards)]


def provision(
    cloud: CloudDir, names: Sequence[str], *, say: Callable[[str], None] | None = None
) -> tuple[int, int]:
    """Identities once (kept in DIR), agent configurations every run (the port may have changed); returns
    (created, reused)."""
    from localcloud import cloud as fleet_cloud
    from provisioning import device as pdevice

    settings = cloud.load_settings()
    if not cloud.settings_path.exists():
        cloud.save_settings(settings)
    missing = [n for n in names if not (cloud.identity_dir(n) / pdevice.DEVICE_KEY).exists()]
    if missing:
        with fleet_cloud.ensure_ca(cloud) as ca:
            for i, name in enumerate(missing, 1):
                fleet_cloud.ensure_identity(cloud, ca, name)
                if say and i % 200 == 0:
                    say(f"provisioned {i}/{len(missing)} identities")
    cloud.robots_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        state_dir = cloud.robot_state_dir(name)
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = fleet_cloud.agent_config_text(
            thing=name,
            state_dir=state_dir,
            endpoint=settings.endpoint,
            port=settings.port,
            identity_dir=cloud.identity_dir(name),
            serial_port=f"sim://{name}",
        )
        path = cloud.robot_config(name)
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
    prepare_state(cloud, names)
    return len(missing), len(names) - len(missing)


def prepare_state(cloud: CloudDir, names: Sequence[str]) -> None:
    """Create each robot's agent database now, in parallel: creating one costs a few fsyncs (~25 ms here),
    which would otherwise serialise on the shard's loop during the ramp; reopening one costs under 1 ms."""
    from concurrent.futures import ThreadPoolExecutor

    from agent.store import open_db

    fresh = [cloud.robot_state_dir(n) for n in names if not (cloud.robot_state_dir(n) / "agent.db").exists()]
    if fresh:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda d: open_db(d).close(), fresh))


def connection_override(path: str) -> ConnectionOverride:
    """The endpoint, port, root CA and ``local`` flag of an agent configuration file (its [connection])."""
    from agent import config as cfg

    doc = cfg.load_toml(path)
    conn = doc.get("connection")
    if not isinstance(conn, dict) or not isinstance(conn.get("endpoint"), str):
        raise cfg.ConfigError([f"config: {path} has no [connection] endpoint"])
    port = conn.get("port", 8883)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise cfg.ConfigError([f"config: {path}: connection.port must be 1-65535"])
    root_ca = conn.get("root_ca")
    return ConnectionOverride(
        endpoint=conn["endpoint"],
        port=port,
        root_ca=str(root_ca) if isinstance(root_ca, str) else None,
        local=bool(conn.get("local", False)),
    )


def restart_broker(cloud: CloudDir) -> str:
    """SIGTERM the local cloud's Mosquitto; ``roomba-fleet up`` restarts it (its supervisor). Returns what
    happened, for the log."""
    from localcloud.up import run_info

    info = run_info(cloud)
    children = info.get("children") if info else None
    pid = children.get("mosquitto") if isinstance(children, dict) else None
    if not isinstance(pid, int):
        return f"no broker pid in {cloud.run_file}; is `roomba-fleet up --dir {cloud.root}` running?"
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"broker pid {pid} is gone (already restarting?)"
    return f"broker pid {pid} terminated; the local cloud's supervisor restarts it"


def summarize(statuses: dict[int, dict[str, Any]], total: int) -> dict[str, Any]:
    robots: dict[str, Any] = {}
    for message in statuses.values():
        robots.update(message.get("robots", {}))
    connected = sum(1 for r in robots.values() if r.get("connected"))
    ready = sum(1 for r in robots.values() if r.get("ready"))
    return {
        "robots": total,
        "started": len(robots),
        "connected": connected,
        "ready": ready,
        "outbox_depth": sum(int(r.get("outbox_depth") or 0) for r in robots.values()),
        "versions": by_version(robots),
        "per_robot": dict(sorted(robots.items())),
    }


def by_version(robots: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per release the robots' launchers call current: how many, running it, in a trial of another,
    connected, working, and by their last update's result (committed, rolled_back, failed)."""
    out: dict[str, dict[str, int]] = {}
    for r in robots.values():
        version = r.get("version")
        if not isinstance(version, str):
            continue
        row = out.setdefault(
            version, {"robots": 0, "running": 0, "in_trial": 0, "connected": 0, "working": 0, "restarts": 0}
        )
        row["robots"] += 1
        row["running"] += 1 if r.get("running") == version and r.get("down") is None else 0
        row["in_trial"] += 1 if r.get("trial") else 0
        row["connected"] += 1 if r.get("connected") else 0
        row["working"] += 1 if r.get("working") else 0
        row["restarts"] += int(r.get("restarts") or 0)
        last = r.get("update")
        if isinstance(last, dict) and isinstance(last.get("result"), str):
            key = f"last_{last['result']}"
            row[key] = row.get(key, 0) + 1
    return dict(sorted(out.items()))


def write_status(cloud: CloudDir, doc: dict[str, Any]) -> None:
    path = status_path(cloud.root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, separators=(",", ":")))
    os.replace(tmp, path)


def status_path(cloud_dir: str | os.PathLike[str] | None) -> Path:
    return CloudDir.at(cloud_dir).root / "run" / STATUS_FILE


class _Stop:
    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _sig: int, _frame: FrameType | None) -> None:
        self.requested = True


def run_fleet(
    cloud: CloudDir,
    names: list[str],
    faults: FaultSpec,
    options: RunOptions,
    override: ConnectionOverride | None,
    say: Callable[[str], None],
) -> int:
    """Run ``names`` (provisioned) until SIGINT/SIGTERM, ``options.duration_s`` or a shard's crash; 0 after
    a clean stop, 1 when a simulator process died."""
    raise_nofile_limit()
    slices = split(names, options.per_process)
    period = options.stream_period_s or auto_stream_period(len(names))
    start_wall = time.time()
    specs = [
        ShardSpec(
            index=i,
            things=things,
            cloud_dir=str(cloud.root),
            seed=options.seed,
            faults=faults,
            stream_period_s=period,
            ramp_per_s=options.ramp_per_s / len(slices),
            report_min_s=options.report_min_s,
            telemetry_s=options.telemetry_s,
            status_s=max(2.0, len(names) / 50),
            reconnect_max_ms=options.reconnect_max_ms,
            durable=options.durable,
            log_level=options.log_level,
            log_file=str(cloud.logs_dir / f"simulate-{i}.log"),
            start_wall=start_wall,
            connection=override,
            release_trust=options.release_trust,
            version=options.version,
            commit_timeout_s=options.commit_timeout_s,
        )
        for i, things in enumerate(slices)
    ]
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ctx = multiprocessing.get_context("spawn")  # never fork: awscrt does not survive it
    procs: list[Any] = []
    conns: dict[int, Connection] = {}
    for spec in specs:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=shard_main, args=(spec, child), name=f"fleet-sim-{spec.index}")
        proc.start()
        child.close()
        procs.append(proc)
        conns[spec.index] = parent
    say(
        f"starting {len(names)} robots in {len(specs)} process(es), stream every {period * 1000:g} ms, "
        f"ramp {options.ramp_per_s:g}/s"
        + (f", faults {options.faults_text}" if faults.any or faults.any_update else "")
    )
    statuses: dict[int, dict[str, Any]] = {}
    finals: set[int] = set()
    all_connected_s: float | None = None
    restarts: list[dict[str, Any]] = []
    next_restart = faults.broker_restart or math.inf
    last_write = 0.0
    last_say = time.monotonic()
    failed = False

    def document(final: bool) -> dict[str, Any]:
        doc = summarize(statuses, len(names))
        doc.update(
            pid=os.getpid(),
            started_at=start_wall,
            elapsed_s=round(time.time() - start_wall, 2),
            all_connected_s=all_connected_s,
            stream_period_s=period,
            processes=[
                {"index": s.index, "pid": p.pid, "alive": p.is_alive()}
                for s, p in zip(specs, procs, strict=True)
            ],
            faults=faults.to_json() if faults.any or faults.any_update else None,
            broker_restarts=restarts,
            final=final,
        )
        return doc

    stopping_sent = False
    deadline = time.monotonic() + options.duration_s if options.duration_s else math.inf
    while True:
        if (stop.requested or time.monotonic() >= deadline or failed) and not stopping_sent:
            stopping_sent = True
            say("stopping every robot")
            for c in conns.values():
                try:
                    c.send("stop")
                except OSError:
                    pass
            stop_deadline = time.monotonic() + 60
        if stopping_sent and (len(finals) == len(specs) or time.monotonic() > stop_deadline):
            break
        ready = wait(list(conns.values()), timeout=0.2)
        for index in [i for i, c in conns.items() if c in ready]:
            c = conns[index]
            try:
                message = c.recv()
            except (EOFError, OSError):
                if index not in finals:
                    finals.add(index)
                    if not stopping_sent:
                        say(f"simulator process {index} exited unexpectedly; see {specs[index].log_file}")
                        failed = True
                del conns[index]
                continue
            statuses[index] = message
            if message.get("final"):
                finals.add(index)
        elapsed = time.time() - start_wall
        summary = summarize(statuses, len(names))
        if all_connected_s is None and summary["connected"] == len(names):
            all_connected_s = round(elapsed, 2)
            write_status(cloud, document(False))
            print(
                f"simulate ready robots={len(names)} connected={len(names)} seconds={all_connected_s}",
                flush=True,
            )
        if elapsed >= next_restart and not stopping_sent and not (faults.until and elapsed > faults.until):
            what = restart_broker(cloud)
            restarts.append({"at_s": round(elapsed, 2), "result": what})
            say(f"fault broker_restart: {what}")
            next_restart += faults.broker_restart
        now = time.monotonic()
        if now - last_write >= 1.0:
            last_write = now
            write_status(cloud, document(False))
        if now - last_say >= 10.0 and not stopping_sent:
            last_say = now
            say(
                f"{summary['connected']}/{len(names)} connected, {summary['ready']} ready, "
                f"outbox {summary['outbox_depth']}"
            )
    for proc in procs:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for c in conns.values():
        c.close()
    write_status(cloud, document(True))
    say(f"stopped; status in {status_path(str(cloud.root))}")
    return 1 if failed else 0
