"""``roomba-agent status``: what the running agent is doing, read from the status file it writes.

It never talks to the daemon or the network, so it works when both are broken; a stale file is reported
as such (the daemon rewrites it every ``intervals.status_s``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import config as cfg
from base.cli import Parser, add_json
from base.process import pid_alive

STALE_AFTER_S = 15.0
EXIT_NOT_WORKING = 1
EXIT_NOT_RUNNING = 3
EXIT_CODES = {
    0: "running: MQTT connected and the serial link to the robot up",
    EXIT_NOT_WORKING: "running but not working fully: MQTT (re)connecting, the serial link down, or starting",
    EXIT_NOT_RUNNING: "not running (no status file, a stale one, or its process is gone)",
}


def _state_dir(args: argparse.Namespace) -> str:
    if args.state_dir:
        return str(args.state_dir)
    return cfg.state_dir_for(args.config)


def _schedule(reconnect: dict[str, Any], now: float) -> str:
    """ "attempt 3, next in 4.2 s" from the status file's ``mqtt.reconnect`` ("" when it says nothing)."""
    parts = []
    attempt = reconnect.get("attempt") or 0
    if attempt:
        parts.append(f"attempt {attempt}")
    next_at = reconnect.get("next_retry_at")
    if isinstance(next_at, int | float):
        left = next_at - now
        parts.append(f"next in {left:.1f} s" if left > 0 else "connecting now")
    return ", ".join(parts)


def _retrying(reconnect: dict[str, Any], now: float) -> str:
    """ " (attempt 3, next in 4.2 s): <last error>" """
    schedule = _schedule(reconnect, now)
    text = f" ({schedule})" if schedule else ""
    error = reconnect.get("last_error")
    return f"{text}: {error}" if error else text


def assess(doc: dict[str, Any], now: float) -> tuple[str, int]:
    """Pure: (one-line verdict, exit code). 0 running, connected and the robot linked; 1 running but MQTT is
    not connected (reconnecting, or not yet) or the serial link is down; 3 not running.

    ``ready`` latches once the agent first had both; what counts here is the connection *now*.
    """
    age = now - float(doc.get("written_at", 0))
    if age > STALE_AFTER_S or not pid_alive(doc.get("pid")):
        return f"not running (status file is {age:.0f} s old)", EXIT_NOT_RUNNING
    mqtt = doc.get("mqtt") or {}
    reconnect = mqtt.get("reconnect") or {}
    link_up = bool((doc.get("robot") or {}).get("link_up"))
    serial = "" if link_up else "; the serial link to the robot is down"
    connections = ((doc.get("metrics") or {}).get("counters") or {}).get("connections", 0)
    if not mqtt.get("connected"):
        if doc.get("ready") or connections:
            return "running, reconnecting" + _retrying(reconnect, now) + serial, EXIT_NOT_WORKING
        if reconnect.get("attempt"):
            return "running, connecting to MQTT" + _retrying(reconnect, now) + serial, EXIT_NOT_WORKING
        waiting = ["MQTT"] + ([] if link_up else ["the serial link"])
        return "running, waiting for " + " and ".join(waiting), EXIT_NOT_WORKING
    if not link_up:
        return "running and connected, but the serial link to the robot is down", EXIT_NOT_WORKING
    return "running and connected", 0


def render(doc: dict[str, Any], verdict: str) -> str:
    m = doc.get("metrics", {})
    c, g = m.get("counters", {}), m.get("gauges", {})
    rtt = m.get("shadow_rtt", {})
    robot = doc.get("robot", {})
    rep = robot.get("reported") or {}
    battery = rep.get("battery") or {}
    cmd = doc.get("last_command") or {}
    lines = [
        f"roomba-agent {doc.get('agent_version')} for {doc.get('thing_name')}: {verdict}",
        f"  uptime      {doc.get('uptime_s')} s, pid {doc.get('pid')}",
        f"  mqtt        {doc.get('mqtt', {}).get('endpoint')} "
        f"{'connected' if doc.get('mqtt', {}).get('connected') else 'DISCONNECTED'}; "
        f"attempts {c.get('connection_attempts', 0)}, "
        f"connects {c.get('connections', 0)}, failures {c.get('connection_failures', 0)}, "
        f"disconnects {c.get('disconnects', 0)}",
        f"  robot       {robot.get('port')} link {'up' if robot.get('link_up') else 'DOWN'}; "
        f"mission {robot.get('mission')}, battery {battery.get('percent')}% {battery.get('charging') or ''}, "
        f"oi mode {rep.get('oi_mode')}",
        f"  serial      frames {g.get('serial_frames')}, checksum errors {g.get('serial_checksum_errors')}",
        f"  shadow      updates {c.get('shadow_update_sent', 0)} sent / {c.get('shadow_update_accepted', 0)} "
        f"accepted, throttled {c.get('throttled', 0)}, rtt p50 {rtt.get('p50_ms')} ms p99 {rtt.get('p99_ms')} ms",
        f"  events      outbox depth {g.get('outbox_depth', 0)}, delivered {c.get('events_delivered', 0)}, "
        f"dropped {g.get('outbox_dropped', 0)}",
        f"  commands    accepted {c.get('commands_accepted', 0)}, done {c.get('commands_done', 0)}, "
        f"rejected {c.get('commands_rejected', 0)}, failed {c.get('commands_failed', 0)}, "
        f"duplicates ignored {c.get('commands_duplicate', 0)}",
    ]
    reconnect = doc.get("mqtt", {}).get("reconnect") or {}
    if not doc.get("mqtt", {}).get("connected") and reconnect.get("last_error"):
        since = reconnect.get("down_since")
        down = f"down for {time.time() - since:.0f} s, " if isinstance(since, int | float) else ""
        schedule = _schedule(reconnect, time.time())
        lines.append(
            f"  reconnect   {down}{schedule or 'no attempt planned'}; last error {reconnect['last_error']}"
        )
    if cmd:
        reason = f" ({cmd.get('reason')})" if cmd.get("reason") else ""
        lines.append(f"  last cmd    {cmd.get('id')} {cmd.get('action')}: {cmd.get('status')}{reason}")
    lines += job_lines(doc.get("jobs") or {}, c)
    lines += update_lines(doc.get("update") or {})
    for key, why in (doc.get("errors") or {}).items():
        lines.append(f"  rejected    {key}: {why}")
    return "\n".join(lines)


def job_lines(jobs: dict[str, Any], counters: dict[str, Any]) -> list[str]:
    """The jobs feature's lines: counts, the job running now (phase, step, what it waits for), the last."""
    if not jobs.get("enabled"):
        return []
    pending = jobs.get("pending")
    lines = [
        f"  jobs        {'subscribed' if jobs.get('subscribed') else 'NOT subscribed'}; "
        f"succeeded {counters.get('jobs_succeeded', 0)}, failed {counters.get('jobs_failed', 0)}, "
        f"rejected {counters.get('jobs_rejected', 0)}, ended by the cloud {counters.get('jobs_ended_by_cloud', 0)}"
        + ("" if pending is None else f"; pending {pending}")
    ]
    cur = jobs.get("current")
    if cur:
        step = f", step {cur['step']}" if cur.get("step") else ""
        waiting = f", waiting for {cur['waiting_for']}" if cur.get("waiting_for") else ""
        lines.append(
            f"  job now     {cur.get('job_id')} (execution {cur.get('execution_number')}): "
            f"{cur.get('phase')}{step}{waiting}"
        )
    last = jobs.get("last")
    if last:
        reason = f" ({last['reason']})" if last.get("reason") else ""
        unsent = "" if last.get("reported") else ", not yet reported"
        lines.append(f"  last job    {last.get('job_id')}: {last.get('status')}{reason}{unsent}")
    return lines


def update_lines(update: dict[str, Any]) -> list[str]:
    """The update feature's lines: running and previous version, a pending switch or trial, the last result."""
    if not update or not update.get("enabled") or not (update.get("current") or update.get("last")):
        return []
    previous = update.get("previous")
    line = f"  release     running {update.get('running')}" + (f", previous {previous}" if previous else "")
    trial = update.get("trial")
    if trial:
        line += f"; TRIAL of {trial.get('version')} (from {trial.get('from')}): self-test {trial.get('self_test')}"
    pending = update.get("pending")
    if pending:
        line += f"; switch to {pending.get('to')} pending"
    job = update.get("job")
    if job:
        line += f"; updating to {job.get('to')}: {job.get('phase')}"
    lines = [line]
    last = update.get("last")
    if last:
        reason = f": {last['reason']}" if last.get("reason") else ""
        lines.append(
            f"  last update {str(last.get('result')).replace('_', ' ')} {last.get('from')} -> {last.get('to')} "
            f"at {last.get('at')}{reason}"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="roomba-agent status",
        description="What the running agent is doing, read from the status file it rewrites "
        "(state_dir/status.json): it works when the daemon or the network is broken.",
        exit_codes=EXIT_CODES,
    )
    p.add_argument(
        "--config",
        "-c",
        help="agent TOML file, to find state_dir (default: $ROOMBA_AGENT_CONFIG, else /etc/roomba-agent/agent.toml)",
    )
    p.add_argument("--state-dir", help=f"the agent's state directory (default {cfg.DEFAULT_STATE_DIR})")
    add_json(p, "the verdict and the status document")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    path = Path(_state_dir(args)) / "status.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        print(
            f"roomba-agent status: no status file at {path}: the agent has not run with this state_dir "
            "(is it running? under systemd: systemctl status roomba-agent; else start it: roomba-agent run --config FILE)",
            file=sys.stderr,
        )
        return EXIT_NOT_RUNNING
    except (OSError, ValueError) as exc:
        print(f"roomba-agent status: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    verdict, code = assess(doc, time.time())
    if args.json:
        print(json.dumps({"verdict": verdict, **doc}, indent=2))
    else:
        print(render(doc, verdict))
    return code
