"""``roomba-fleet watch [--once] [--json]``: robots, their connection state and latest reported state.

Connection state comes from the retained ``roomba/<thing>/presence`` topic (the agent's will sets it to
``{"state": "offline"}``); reported state from a shadow ``get`` per robot, then live from
``update/documents``. Robots added with ``robot add`` that never connected are listed as ``never``.
``--once --json`` prints one JSON document and exits (for scripts and tests). ``--fleet`` shows the
summary of :mod:`fleet.fleetview` instead of one row per robot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from base import logs
from fleet.fleetview import render, summarize
from localcloud.layout import CloudDir, SettingsError
from localcloud.opclient import CloudNotRunning, OperatorClient, marker_topic
from shadow.topics import ANY, parse_agent_topic, parse_shadow_topic, presence_topic, shadow_topic

PRESENCE = presence_topic(ANY)
DOCUMENTS = shadow_topic(ANY, "update", "documents")
GET_RESPONSES = shadow_topic(ANY, "get", ANY)


@dataclass
class RobotRow:
    thing: str
    connection: str = "never"  # online | offline | never (no presence seen)
    presence: dict[str, Any] | None = None
    reported: dict[str, Any] | None = None
    desired: dict[str, Any] | None = None
    version: int | None = None
    updated: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FleetView:
    """Pure state of the watch view: feed it publications, read the rows."""

    def __init__(self, known: list[str]) -> None:
        self.rows: dict[str, RobotRow] = {t: RobotRow(t) for t in known}

    def row(self, thing: str) -> RobotRow:
        if thing not in self.rows:
            self.rows[thing] = RobotRow(thing)
        return self.rows[thing]

    def apply(self, topic: str, payload: bytes, now: float) -> str | None:
        """Update from one publication; returns the thing it concerned (None if irrelevant)."""
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            return None
        agent = parse_agent_topic(topic)
        if agent is not None and agent[1] == "presence":
            row = self.row(agent[0])
            row.presence = doc if isinstance(doc, dict) else None
            state = row.presence.get("state") if row.presence else None
            row.connection = state if isinstance(state, str) else "unknown"
            row.updated = now
            return row.thing
        shadow = parse_shadow_topic(topic)
        if shadow is not None and not shadow.shadow_name and isinstance(doc, dict):
            if (shadow.operation, shadow.response) == ("update", "documents"):
                current = doc.get("current") or {}
            elif (shadow.operation, shadow.response) == ("get", "accepted"):
                current = doc
            else:
                return None
            state = current.get("state") or {}
            row = self.row(shadow.thing)
            version = current.get("version")
            if row.version is not None and isinstance(version, int) and version < row.version:
                return None
            row.reported = state.get("reported")
            row.desired = state.get("desired")
            row.version = version if isinstance(version, int) else None
            row.updated = now
            return row.thing
        return None

    def to_json(self) -> dict[str, Any]:
        robots = []
        for row in sorted(self.rows.values(), key=lambda r: r.thing):
            item = asdict(row)
            item.pop("extra")
            robots.append(item)
        return {"robots": robots}

    def table(self) -> str:
        lines = [
            f"{'THING':<20} {'CONNECTION':<10} {'VERSION':>7}  {'MISSION':<10} {'BATTERY':<16} "
            f"{'OI MODE':<8} {'HAZARDS':<12} COMMAND"
        ]
        for row in sorted(self.rows.values(), key=lambda r: r.thing):
            version = str(row.version) if row.version is not None else "-"
            lines.append(
                f"{row.thing:<20} {row.connection:<10} {version:>7}  {_reported_columns(row.reported)}"
            )
        return "\n".join(lines)


def _reported_columns(reported: dict[str, Any] | None) -> str:
    """The agent's reported state as table cells; anything unexpected shows as '?' rather than failing."""
    if not isinstance(reported, dict):
        return "-"
    mission = reported.get("mission")
    raw_battery = reported.get("battery")
    battery: dict[str, Any] = raw_battery if isinstance(raw_battery, dict) else {}
    pct = battery.get("percent")
    charging = battery.get("charging")
    batt = f"{pct}%" if isinstance(pct, int | float) else "?"
    if isinstance(charging, str) and charging != "not_charging":
        batt += f" {charging}"
    mode = reported.get("oi_mode")
    hazards = reported.get("hazards")
    active = [k for k, v in hazards.items() if v] if isinstance(hazards, dict) else []
    hz = ",".join(sorted(active)) or "-"
    command = reported.get("command")
    cmd = "-"
    if isinstance(command, dict) and command.get("id") is not None:
        cmd = f"{command.get('id')}: {command.get('status', '?')}"
        if command.get("reason"):
            cmd += f" ({command['reason']})"
    return (
        f"{mission if isinstance(mission, str) else '?':<10} {batt:<16} "
        f"{mode if isinstance(mode, str) else '?':<8} {hz[:12]:<12} {cmd}"
    )


def snapshot(client: OperatorClient, view: FleetView, settle: float) -> None:
    """Retained presence (until our own marker echoes back), then one shadow get per robot."""
    marker = marker_topic()
    client.subscribe([PRESENCE, DOCUMENTS, GET_RESPONSES, marker], qos=1)
    client.publish(marker, b"{}", qos=1)
    for pkt in client.messages(settle):
        if pkt.topic == marker:
            break
        view.apply(pkt.topic, pkt.payload, time.time())
    pending: dict[str, str] = {}
    for thing in sorted(view.rows):
        token = uuid.uuid4().hex[:16]
        pending[token] = thing
        client.publish(shadow_topic(thing, "get"), json.dumps({"clientToken": token}).encode())
    for pkt in client.messages(settle if pending else 0):
        view.apply(pkt.topic, pkt.payload, time.time())
        if pkt.topic.endswith(("/get/accepted", "/get/rejected")):
            try:
                pending.pop(json.loads(pkt.payload).get("clientToken"), None)
            except (ValueError, AttributeError):
                pass
        if not pending:
            break


def follow(cloud: CloudDir, view: FleetView, timeout: float, *, live: bool) -> Iterator[str | None]:
    """Fill ``view`` from the cloud: yields None once the snapshot is in, then (``live``) the thing each
    publication changed, until interrupted."""
    with OperatorClient(cloud, timeout=timeout) as client:
        snapshot(client, view, timeout)
        yield None
        if not live:
            return
        for pkt in client.messages(None):
            thing = view.apply(pkt.topic, pkt.payload, time.time())
            if thing:
                yield thing


def main(argv: list[str] | None = None) -> int:
    if argv and "--fleet" in argv:
        return fleet_main(argv)
    p = argparse.ArgumentParser(prog="roomba-fleet watch", description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="local cloud directory (default: $ROOMBA_FLEET_DIR or ./var/local-cloud)")
    p.add_argument("--once", action="store_true", help="print the current view and exit")
    p.add_argument("--json", action="store_true", help="JSON output (one document with --once, else lines)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the initial view")
    p.add_argument("--fleet", action="store_true", help="the fleet summary instead of one line per robot")
    args = p.parse_args(argv)
    logs.configure("warning")
    cloud = CloudDir.at(args.dir)
    tty = sys.stdout.isatty()
    try:
        view = FleetView(cloud.known_robots())
        for changed in follow(cloud, view, args.timeout, live=not args.once):
            if args.once:
                print(json.dumps(view.to_json()) if args.json else view.table())
            else:
                _render(view, tty, args.json, changed)
    except KeyboardInterrupt:
        return 0
    except (CloudNotRunning, SettingsError) as exc:
        print(f"roomba-fleet watch: {exc}", file=sys.stderr)
        return 2
    return 0


def _render(view: FleetView, tty: bool, as_json: bool, changed: str | None) -> None:
    if as_json:
        rows = view.to_json()["robots"]
        for row in rows:
            if changed is None or row["thing"] == changed:
                print(json.dumps(row), flush=True)
    elif tty:
        print("\x1b[H\x1b[2J" + view.table(), flush=True)
    else:
        if changed is None:
            print(view.table(), flush=True)
        else:
            row = view.rows[changed]
            print(f"{row.thing} {row.connection} v{row.version} {json.dumps(row.reported)}", flush=True)


def fleet_main(argv: list[str] | None = None) -> int:
    """``roomba-fleet watch --fleet [--once] [--json] [--prefix P]``: the summary, live or once."""
    p = argparse.ArgumentParser(
        prog="roomba-fleet watch --fleet",
        description="The fleet at a glance for ``roomba-fleet watch --fleet``: one summary over every robot, "
        "not one row each.",
    )
    p.add_argument("--dir", help="local cloud directory (default: $ROOMBA_FLEET_DIR or ./var/local-cloud)")
    p.add_argument("--once", action="store_true", help="print the summary once and exit")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--prefix", default="", help="only robots whose name starts with this")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the initial view")
    p.add_argument("--every", type=float, default=1.0, help="seconds between live refreshes")
    args = p.parse_args([a for a in (argv or []) if a != "--fleet"])
    logs.configure("warning")
    cloud = CloudDir.at(args.dir)

    def show(view: FleetView) -> None:
        summary = summarize(r for r in view.to_json()["robots"] if str(r["thing"]).startswith(args.prefix))
        if args.json:
            print(json.dumps(summary), flush=True)
        else:
            clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() and not args.once else ""
            print(clear + render(summary), flush=True)

    last = 0.0
    try:
        view = FleetView([t for t in cloud.known_robots() if t.startswith(args.prefix)])
        for changed in follow(cloud, view, args.timeout, live=not args.once):
            if changed is None or time.monotonic() - last >= args.every:
                last = time.monotonic()
                show(view)
    except KeyboardInterrupt:
        return 0
    except (CloudNotRunning, SettingsError) as exc:
        print(f"roomba-fleet watch: {exc}", file=sys.stderr)
        return 2
    return 0
