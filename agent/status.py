"""``roomba-agent status``: what the running agent is doing, read from the status file it writes.

It never talks to the daemon or the network, so it works when both are broken; a stale file is reported
as such (the daemon rewrites it every ``intervals.status_s``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import config as cfg
from base.process import pid_alive

STALE_AFTER_S = 15.0


def _state_dir(args: argparse.Namespace) -> str:
    if args.state_dir:
        return str(args.state_dir)
    if args.config:
        try:
            return cfg.load(args.config).state_dir
        except cfg.ConfigError:
            merged = cfg.merge_layers(cfg.load_toml(args.config), os.environ, {})
            return str(merged.get("state_dir", cfg.DEFAULT_STATE_DIR))
    return (
        os.environ.get("ROOMBA_AGENT_STATE_DIR") or os.environ.get("STATE_DIRECTORY") or cfg.DEFAULT_STATE_DIR
    )


def assess(doc: dict[str, Any], now: float) -> tuple[str, int]:
    """Pure: (one-line verdict, exit code). 0 running and ready, 1 running but not ready, 3 not running."""
    age = now - float(doc.get("written_at", 0))
    if age > STALE_AFTER_S or not pid_alive(doc.get("pid")):
        return f"not running (status file is {age:.0f} s old)", 3
    if not doc.get("ready"):
        waiting = []
        if not doc.get("mqtt", {}).get("connected"):
            waiting.append("MQTT")
        if not doc.get("robot", {}).get("link_up"):
            waiting.append("the serial link")
        return "running, waiting for " + (" and ".join(waiting) or "start-up"), 1
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
    if cmd:
        reason = f" ({cmd.get('reason')})" if cmd.get("reason") else ""
        lines.append(f"  last cmd    {cmd.get('id')} {cmd.get('action')}: {cmd.get('status')}{reason}")
    for key, why in (doc.get("errors") or {}).items():
        lines.append(f"  rejected    {key}: {why}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="roomba-agent status", description=__doc__.splitlines()[0])
    p.add_argument("--config", "-c", help="agent TOML file (to find state_dir)")
    p.add_argument("--state-dir", help="the agent's state directory (default /var/lib/roomba-agent)")
    p.add_argument("--json", action="store_true", help="print the status document as JSON")
    args = p.parse_args(list(argv) if argv is not None else None)
    path = Path(_state_dir(args)) / "status.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        print(
            f"roomba-agent status: no status file at {path}: the agent has not run with this state_dir "
            "(check: systemctl status roomba-agent)",
            file=sys.stderr,
        )
        return 3
    except (OSError, ValueError) as exc:
        print(f"roomba-agent status: cannot read {path}: {exc}", file=sys.stderr)
        return 3
    verdict, code = assess(doc, time.time())
    if args.json:
        print(json.dumps({"verdict": verdict, **doc}, indent=2))
    else:
        print(render(doc, verdict))
    return code
