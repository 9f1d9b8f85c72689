"""``roomba-fleet watch``: robots, their connection state and latest reported state, live.

Connection state comes from the retained ``roomba/<thing>/presence`` topic (the agent's will sets it to
``{"state": "offline"}``); reported state from a shadow ``get`` per robot, then live from
``update/documents``. Robots added with ``robot add`` that never connected are listed as ``never``.
``--fleet`` shows the summary of :mod:`fleet.fleetview` instead of one row per robot; ``--prefix`` keeps the
robots whose name starts with it.

On a terminal the view is drawn in place (``rich``): a pinned title with the time, the data's age and the
connection, then as many robots as the terminal has rows, problems first (offline, errors, failed or
rejected commands, low battery) and "… N more" for the rest, redrawn at most :data:`REDRAWS_PER_S` times
a second whatever the message rate. Through a pipe, or with ``--json``, it prints lines as they change;
``--once`` prints the current view (a table, or one JSON document) and exits (for scripts and tests).

A live view survives the cloud going away: it says "reconnecting to HOST:PORT (attempt N)…", retries with
capped, jittered backoff (:data:`RECONNECT_BASE_S` doubling up to :data:`RECONNECT_CAP_S`), and once back it
takes the snapshot again (retained presence, one shadow get per robot), so the rows recover.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from base import logs
from base.backoff import Backoff
from base.cli import Parser, add_json
from fleet.fleetview import RANK_NEVER, RANK_OK, render, summarize, triage
from localcloud.layout import DIR_HELP, CloudDir, SettingsError
from localcloud.opclient import CloudNotRunning, OperatorClient, marker_topic
from shadow.topics import ANY, parse_agent_topic, parse_shadow_topic, presence_topic, shadow_topic

if TYPE_CHECKING:
    from rich.console import RenderableType

PRESENCE = presence_topic(ANY)
DOCUMENTS = shadow_topic(ANY, "update", "documents")
GET_RESPONSES = shadow_topic(ANY, "get", ANY)

EXIT_NOT_RUNNING = 2
REDRAWS_PER_S = 4
RECONNECT_BASE_S = 0.5
RECONNECT_CAP_S = 5.0


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
    """State of the watch view: feed it publications, read the rows. Thread-safe: the live view draws it
    from another thread while the connection feeds it."""

    def __init__(self, known: list[str], prefix: str = "") -> None:
        self.prefix = prefix
        self.rows: dict[str, RobotRow] = {t: RobotRow(t) for t in known if t.startswith(prefix)}
        self.lock = threading.Lock()

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
        with self.lock:
            return self._apply(topic, doc, now)

    def _apply(self, topic: str, doc: Any, now: float) -> str | None:
        agent = parse_agent_topic(topic)
        if agent is not None and agent[1] == "presence":
            if not agent[0].startswith(self.prefix):
                return None
            row = self.row(agent[0])
            row.presence = doc if isinstance(doc, dict) else None
            state = row.presence.get("state") if row.presence else None
            row.connection = state if isinstance(state, str) else "unknown"
            row.updated = now
            return row.thing
        shadow = parse_shadow_topic(topic)
        if shadow is not None and not shadow.shadow_name and isinstance(doc, dict):
            if not shadow.thing.startswith(self.prefix):
                return None
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

    def things(self) -> list[str]:
        with self.lock:
            return sorted(self.rows)

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            rows = sorted(self.rows.values(), key=lambda r: r.thing)
            robots = []
            for row in rows:
                item = asdict(row)
                item.pop("extra")
                robots.append(item)
        return {"robots": robots}

    def ranked(self) -> list[tuple[int, list[str], RobotRow]]:
        """Every row with its :func:`fleet.fleetview.triage`, problems first, then by name."""
        with self.lock:
            out = [
                (*triage({"connection": r.connection, "reported": r.reported, "desired": r.desired}), r)
                for r in self.rows.values()
            ]
        out.sort(key=lambda r: (r[0], r[2].thing))
        return out

    def table(self) -> str:
        lines = [
            f"{'THING':<20} {'CONNECTION':<10} {'VERSION':>7}  {'MISSION':<10} {'BATTERY':<16} "
            f"{'OI MODE':<8} {'HAZARDS':<12} COMMAND"
        ]
        with self.lock:
            rows = sorted(self.rows.values(), key=lambda r: r.thing)
            for row in rows:
                version = str(row.version) if row.version is not None else "-"
                lines.append(
                    f"{row.thing:<20} {row.connection:<10} {version:>7}  {_reported_columns(row.reported)}"
                )
        return "\n".join(lines)


def _cells(reported: dict[str, Any] | None) -> tuple[str, str, str, str, str]:
    """(mission, battery, OI mode, hazards, command) of the agent's reported state; anything unexpected shows
    as '?' rather than failing."""
    if not isinstance(reported, dict):
        return "-", "", "", "", ""
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
        mission if isinstance(mission, str) else "?",
        batt,
        mode if isinstance(mode, str) else "?",
        hz,
        cmd,
    )


def _reported_columns(reported: dict[str, Any] | None) -> str:
    """The agent's reported state as plain table cells (``--once`` and pipes)."""
    if not isinstance(reported, dict):
        return "-"
    mission, batt, mode, hz, cmd = _cells(reported)
    return f"{mission:<10} {batt:<16} {mode:<8} {hz[:12]:<12} {cmd}"


# the connection ---------------------------------------------------------------------------------------------
@dataclass
class Link:
    """What the watch connection is doing, for the view's title and status line."""

    address: str = ""
    state: str = "connecting"  # connecting | connected | reconnecting
    attempt: int = 0
    reason: str = ""
    retry_at: float | None = None  # time.time() of the next attempt while reconnecting
    data_at: float | None = None  # time.time() of the last publication applied
    connected_once: bool = False

    def status(self, now: float) -> str | None:
        """The line a person needs while not connected, else None."""
        if self.state != "reconnecting":
            return None
        wait = "" if self.retry_at is None else f", next try in {max(0.0, self.retry_at - now):.0f} s"
        return f"reconnecting to {self.address} (attempt {self.attempt}{wait})… {self.reason}".rstrip()

    def data_age(self, now: float) -> str:
        if self.data_at is None:
            return "no data yet"
        age = max(0.0, now - self.data_at)
        return f"data {age:.1f} s old" if age < 60 else f"data {age / 60:.0f} min old"


def _address(cloud: CloudDir) -> str:
    try:
        settings = cloud.load_settings()
    except SettingsError:
        return "?"
    return f"{settings.endpoint}:{settings.port}"


def _drain(
    client: OperatorClient, timeout: float, done: Callable[[], bool], handle: Callable[[Any], None]
) -> None:
    """Hand every publication to ``handle`` until ``done()`` or ``timeout`` seconds pass; what arrived
    beside the last one handled stays queued in the client for the next read."""
    if done():
        return
    for pkt in client.messages(timeout):
        handle(pkt)
        if done():
            return


def snapshot(client: OperatorClient, view: FleetView, settle: float) -> None:
    """Retained presence (until our own marker echoes back), then one shadow get per robot."""
    marker = marker_topic()
    client.subscribe([PRESENCE, GET_RESPONSES, marker], qos=1)
    # the flood (every shadow document of the fleet) at QoS 0: no PUBACK per document, for the broker nor for
    # us; a document lost to a restart is caught up by the snapshot taken again after the reconnect
    client.subscribe([DOCUMENTS], qos=0)
    client.publish(marker, b"{}", qos=1)
    seen: list[bool] = []

    def retained(pkt: Any) -> None:
        if pkt.topic == marker:
            seen.append(True)
        else:
            view.apply(pkt.topic, pkt.payload, time.time())

    _drain(client, settle, lambda: bool(seen), retained)
    pending: dict[str, str] = {}
    for thing in view.things():
        token = uuid.uuid4().hex[:16]
        pending[token] = thing
        client.publish(shadow_topic(thing, "get"), json.dumps({"clientToken": token}).encode())

    def answer(pkt: Any) -> None:
        view.apply(pkt.topic, pkt.payload, time.time())
        if pkt.topic.endswith(("/get/accepted", "/get/rejected")):
            try:
                pending.pop(json.loads(pkt.payload).get("clientToken"), None)
            except (ValueError, AttributeError):
                pass

    _drain(client, settle, lambda: not pending, answer)


def follow(
    cloud: CloudDir,
    view: FleetView,
    timeout: float,
    *,
    live: bool,
    link: Link | None = None,
    on_lost: Callable[[Link], None] | None = None,
    backoff: Backoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str | None]:
    """Fill ``view`` from the cloud: yields None once a snapshot is in, then (``live``) the thing each
    publication changed, until interrupted.

    The first connection failing raises :class:`CloudNotRunning`. Live, a connection lost afterwards is
    retried with ``backoff`` (``on_lost(link)`` before each wait), and each new connection yields None again
    after its snapshot.
    """
    link = link if link is not None else Link()
    backoff = backoff or Backoff(base_s=RECONNECT_BASE_S, cap_s=RECONNECT_CAP_S)
    while True:
        link.address = _address(cloud)
        try:
            with OperatorClient(cloud, timeout=timeout) as client:
                link.address = f"{client.endpoint}:{client.port}"
                snapshot(client, view, timeout)
                link.state, link.reason, link.retry_at = "connected", "", None
                link.attempt = 0
                link.connected_once = True
                link.data_at = time.time()
                backoff.reset()
                yield None
                if not live:
                    return
                for pkt in client.messages(None):
                    thing = view.apply(pkt.topic, pkt.payload, time.time())
                    if thing:
                        link.data_at = time.time()
                        yield thing
        except (CloudNotRunning, SettingsError) as exc:  # settings.json half-written by a restarting `up`
            if not live or not link.connected_once:
                raise
            delay = backoff.next_delay()
            link.state, link.reason = "reconnecting", str(exc)
            link.attempt += 1
            link.retry_at = time.time() + delay
            if on_lost is not None:
                on_lost(link)
            sleep(delay)


# the live views on a terminal -------------------------------------------------------------------------------
def _title(kind: str, prefix: str, view: FleetView, link: Link, now: float) -> RenderableType:
    from rich.text import Text

    counts: dict[str, int] = {}
    with view.lock:
        for row in view.rows.values():
            counts[row.connection] = counts.get(row.connection, 0) + 1
    total = sum(counts.values())
    conn = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none yet"
    where = link.address if link.state == "connected" else "not connected"
    scope = f"  --prefix {prefix}" if prefix else ""
    return Text(
        f" roomba-fleet {kind}{scope}  {time.strftime('%H:%M:%S', time.localtime(now))}  "
        f"{total} robots: {conn}  {link.data_age(now)}  {where} ",
        style="bold reverse",
        no_wrap=True,
        overflow="ellipsis",
    )


def _status(link: Link, now: float) -> list[RenderableType]:
    from rich.text import Text

    status = link.status(now)
    return [] if status is None else [Text(status, style="bold yellow", no_wrap=True, overflow="ellipsis")]


def table_view(view: FleetView, link: Link, height: int, *, prefix: str = "") -> RenderableType:
    """One row per robot, problems first, never taller than ``height`` (the last row stays free)."""
    from rich.console import Group
    from rich.text import Text

    now = time.time()
    head = [_title("watch", prefix, view, link, now), *_status(link, now)]
    ranked = view.ranked()
    room = max(0, height - 1 - len(head) - 1)  # the table's header row
    shown = ranked if len(ranked) <= room else ranked[: max(0, room - 1)]
    # fixed-width lines of Text rather than a rich Table: the same columns at a fraction of the cost (a
    # Table measures and wraps every cell, ~40 ms a frame for 40 rows on this machine; bench/watch.py)
    header = ("THING", "CONNECTION", "VERSION", "MISSION", "BATTERY", "OI MODE", "PROBLEMS", "COMMAND")
    cells: list[tuple[tuple[str, ...], str]] = []
    for rank, problems, row in shown:
        mission, batt, mode, _hz, cmd = _cells(row.reported)
        style = (
            "red"
            if rank < RANK_OK - 1
            else "yellow"
            if rank < RANK_OK
            else "dim"
            if rank == RANK_NEVER
            else ""
        )
        version = str(row.version) if row.version is not None else "-"
        values = (row.thing, row.connection, version, mission, batt, mode, ", ".join(problems) or "-", cmd)
        cells.append((values, style))
    widths = [max([len(h)] + [len(v[i]) for v, _s in cells]) for i, h in enumerate(header)]

    def line(values: tuple[str, ...]) -> str:
        out = [
            v.rjust(w) if i == 2 else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    table = Group(
        Text(line(header), style="bold", no_wrap=True, overflow="ellipsis"),
        *(Text(line(v), style=st, no_wrap=True, overflow="ellipsis") for v, st in cells),
    )
    parts: list[RenderableType] = [*head, table]
    if len(shown) < len(ranked):
        rest = ranked[len(shown) :]
        troubled = sum(1 for rank, _p, _r in rest if rank < RANK_OK)
        more = f"… {len(rest)} more"
        more += f" ({troubled} with problems)" if troubled else " (no problems)"
        parts.append(Text(more + "; a taller terminal or --prefix shows them", style="bold", no_wrap=True))
    return Group(*parts)


def fleet_view(view: FleetView, link: Link, height: int, width: int, *, prefix: str = "") -> RenderableType:
    """The fleet summary under the same pinned title, cut to ``height``."""
    from rich.console import Group
    from rich.text import Text

    now = time.time()
    head = [_title("watch --fleet", prefix, view, link, now), *_status(link, now)]
    lines = render(summarize(view.to_json()["robots"]), width=width).splitlines()
    room = max(0, height - 1 - len(head))
    if len(lines) > room:
        lines = [*lines[: max(0, room - 1)], f"… {len(lines) - max(0, room - 1)} more lines"]
    return Group(*head, *(Text(line, no_wrap=True, overflow="ellipsis") for line in lines))


def _live(feed: Iterator[str | None], draw: Callable[[int, int], RenderableType]) -> None:
    """Consume ``feed`` while ``rich`` redraws ``draw(height, width)`` in place from its own thread."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    _leave_on_sigterm()

    def frame() -> RenderableType:
        try:
            size = console.size
            return draw(size.height, size.width)
        except Exception as exc:  # a bad frame must not stop the redraw thread; say what broke
            return Text(f"roomba-fleet watch: cannot draw the view: {exc!r}", style="bold red")

    with Live(
        get_renderable=frame,
        console=console,
        auto_refresh=True,
        refresh_per_second=REDRAWS_PER_S,
        redirect_stdout=False,
        redirect_stderr=False,
    ):
        for _ in feed:
            pass


# the command ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="roomba-fleet watch",
        description="Live view of the robots: connection, reported state and problems (--fleet: a summary).",
        epilog="On a terminal the view redraws in place, problems first, and reconnects when the cloud\n"
        "restarts; through a pipe it prints a line per change; --once prints the current view and exits.",
        exit_codes={EXIT_NOT_RUNNING: "usage error, or the local cloud is not running (nothing to watch)"},
    )
    p.add_argument("--dir", help=DIR_HELP)
    p.add_argument("--fleet", action="store_true", help="the fleet summary instead of one row per robot")
    p.add_argument("--prefix", default="", help="only robots whose name starts with this")
    p.add_argument("--once", action="store_true", help="print the current view and exit")
    add_json(p, "the view (one document with --once, else one line per change)")
    p.add_argument(
        "--timeout", type=float, help="seconds to wait for the initial view (default 3, --fleet 5)"
    )
    p.add_argument(
        "--every", type=float, default=1.0, help="with --fleet through a pipe: seconds between summaries"
    )
    return p


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _leave_on_sigterm() -> None:
    """``kill`` leaves the live view like Ctrl-C does: the terminal gets its cursor back."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _ignore_sigpipe() -> None:
    """A write to the broker's dead socket during a restart must raise (and reconnect), not kill us
    silently; a closed stdout (``| head``) still ends quietly: the BrokenPipeError reaches base.cli.entry."""
    if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def _lost_line(link: Link) -> None:
    print(
        f"roomba-fleet watch: lost the local cloud ({link.reason}); reconnecting to {link.address} "
        f"(attempt {link.attempt}, next in {max(0.0, (link.retry_at or 0) - time.time()):.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure("warning")
    _ignore_sigpipe()
    timeout = args.timeout if args.timeout is not None else (5.0 if args.fleet else 3.0)
    cloud = CloudDir.at(args.dir)
    try:
        view = FleetView(cloud.known_robots(), args.prefix)
        link = Link()
        live = not args.once
        terminal = live and not args.json and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"
        feed = follow(cloud, view, timeout, live=live, link=link, on_lost=None if terminal else _lost_line)
        if terminal:
            next(feed)  # the first snapshot: a cloud that is not running is an error, not a wait
            if args.fleet:
                _live(feed, lambda h, w: fleet_view(view, link, h, w, prefix=args.prefix))
            else:
                _live(feed, lambda h, _w: table_view(view, link, h, prefix=args.prefix))
        elif args.fleet:
            _print_fleet(feed, view, args.json, args.once, args.every)
        else:
            for changed in feed:
                if args.once:
                    print(json.dumps(view.to_json()) if args.json else view.table())
                else:
                    _print_change(view, args.json, changed)
    except KeyboardInterrupt:
        return 0
    except (CloudNotRunning, SettingsError) as exc:
        print(f"roomba-fleet watch: {exc}", file=sys.stderr)
        return EXIT_NOT_RUNNING
    return 0


def _print_change(view: FleetView, as_json: bool, changed: str | None) -> None:
    if as_json:
        for row in view.to_json()["robots"]:
            if changed is None or row["thing"] == changed:
                print(json.dumps(row), flush=True)
    elif changed is None:
        print(view.table(), flush=True)
    else:
        row = view.rows[changed]
        print(f"{row.thing} {row.connection} v{row.version} {json.dumps(row.reported)}", flush=True)


def _print_fleet(
    feed: Iterator[str | None], view: FleetView, as_json: bool, once: bool, every: float
) -> None:
    last = 0.0
    for changed in feed:
        if changed is None or time.monotonic() - last >= every:
            last = time.monotonic()
            summary = summarize(view.to_json()["robots"])
            print(json.dumps(summary) if as_json else render(summary), flush=True)
        if once:
            return
