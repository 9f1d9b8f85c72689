"""``roomba-fleet watch [--once] [--json]``: robots, their connection state and latest reported state.

Connection state comes from the retained ``roomba/<thing>/presence`` topic (the agent's will sets it to
``{"state": "offline"}``); reported state from a shadow ``get`` per robot, then live from
``update/documents``. Robots added with ``robot add`` that never connected are listed as ``never``.
``--once --json`` prints one JSON document and exits (for scripts and tests).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from base import logs
from localcloud.layout import CloudDir, SettingsError
from localcloud.opclient import CloudNotRunning, OperatorClient

PRESENCE = "roomba/+/presence"
DOCUMENTS = "$aws/things/+/shadow/update/documents"
GET_RESPONSES = "$aws/things/+/shadow/get/+"


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
        parts = topic.split("/")
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            return None
        if len(parts) == 3 and parts[0] == "roomba" and parts[2] == "presence":
            row = self.row(parts[1])
            row.presence = doc if isinstance(doc, dict) else None
            state = row.presence.get("state") if row.presence else None
            row.connection = state if isinstance(state, str) else "unknown"
            row.updated = now
            return row.thing
        if len(parts) >= 6 and parts[:2] == ["$aws", "things"] and isinstance(doc, dict):
            if topic.endswith("/update/documents") and len(parts) == 6:
                current = doc.get("current") or {}
            elif topic.endswith("/get/accepted") and len(parts) == 6:
                current = doc
            else:
                return None
            state = current.get("state") or {}
            row = self.row(parts[2])
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
    marker = f"local-cloud/operator/{uuid.uuid4().hex}"
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
        client.publish(f"$aws/things/{thing}/shadow/get", json.dumps({"clientToken": token}).encode())
    for pkt in client.messages(settle if pending else 0):
        view.apply(pkt.topic, pkt.payload, time.time())
        if pkt.topic.endswith(("/get/accepted", "/get/rejected")):
            try:
                pending.pop(json.loads(pkt.payload).get("clientToken"), None)
            except (ValueError, AttributeError):
                pass
        if not pending:
            break


def main(argv: list[str] | None = None) -> int:
    if argv and "--fleet" in argv:
        from fleet import fleetview

        return fleetview.main(argv)
    p = argparse.ArgumentParser(prog="roomba-fleet watch", description=__doc__.splitlines()[0])
    p.add_argument("--dir", help="local cloud directory (default: $ROOMBA_FLEET_DIR or ./var/local-cloud)")
    p.add_argument("--once", action="store_true", help="print the current view and exit")
    p.add_argument("--json", action="store_true", help="JSON output (one document with --once, else lines)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the initial view")
    p.add_argument("--fleet", action="store_true", help="the fleet summary instead of one line per robot")
    args = p.parse_args(argv)
    logs.configure("warning")
    cloud = CloudDir.at(args.dir)
    try:
        return _run(cloud, args)
    except KeyboardInterrupt:
        return 0


def _run(cloud: CloudDir, args: argparse.Namespace) -> int:
    try:
        view = FleetView(cloud.known_robots())
        with OperatorClient(cloud, timeout=args.timeout) as client:
            snapshot(client, view, args.timeout)
            if args.once:
                print(
                    json.dumps(view.to_json(), indent=None if args.json else 2) if args.json else view.table()
                )
                return 0
            tty = sys.stdout.isatty()
            _render(view, tty, args.json, None)
            for pkt in client.messages(None):
                thing = view.apply(pkt.topic, pkt.payload, time.time())
                if thing:
                    _render(view, tty, args.json, thing)
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
