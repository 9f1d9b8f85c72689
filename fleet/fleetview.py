"""The fleet at a glance for ``roomba-fleet watch --fleet``: one summary over every robot, not one row each.

:func:`summarize` is pure: it takes the rows ``fleet.watch.FleetView.to_json()`` produces (thing,
connection, reported, desired) and returns counts an engineer trying a fleet feature wants to see move:
connected robots, missions by state, the battery distribution, commands pending/applied/failed, and errors.
:func:`render` turns that into a few terminal lines. :func:`triage` ranks one robot's row for the live
``watch`` table, problems first: offline, errors (settings, hazards, a dead serial link), failed or rejected
commands, low battery; then the healthy; robots that never connected last. All are pure; ``fleet.watch``
runs them live on the watch connection.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

BATTERY_BUCKETS = ((0, 10), (10, 20), (20, 50), (50, 80), (80, 101))
LOW_BATTERY_PCT = 15


def _bucket(percent: Any) -> str:
    if isinstance(percent, bool) or not isinstance(percent, int | float):
        return "unknown"
    for lo, hi in BATTERY_BUCKETS:
        if lo <= percent < hi:
            return f"{lo}-{min(hi, 100) - (0 if hi > 100 else 1)}"
    return "unknown"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _command_state(desired: Mapping[str, Any], reported: Mapping[str, Any]) -> str | None:
    """pending (desired id not answered yet, or accepted and running), applied (done), failed, rejected.

    The robot clears ``desired.command`` once it has recorded the command (docs/CONTRACTS.md), so a
    command that is no longer desired is judged from ``reported.command`` alone.
    """
    want = desired.get("command")
    have = reported.get("command")
    if isinstance(want, Mapping) and want.get("id"):
        if not isinstance(have, Mapping) or have.get("id") != want.get("id"):
            return "pending"
    elif not isinstance(have, Mapping) or not have.get("id"):
        return None
    status = have.get("status")
    if status == "done":
        return "applied"
    if status in ("failed", "rejected"):
        return str(status)
    return "pending"


RANK_OFFLINE, RANK_ERROR, RANK_COMMAND, RANK_BATTERY, RANK_OK, RANK_NEVER = range(6)


def triage(row: Mapping[str, Any]) -> tuple[int, list[str]]:
    """(rank, problems) of one robot's row: the lowest rank is shown first; problems as short labels.

    Rank: 0 offline (or an unknown presence), 1 errors (``reported.errors``, hazards, the serial link
    down), 2 a failed or rejected command, 3 low battery, 4 healthy, 5 never connected. Never raises.
    """
    problems: list[str] = []
    ranks = [RANK_OK]
    conn = row.get("connection")
    if conn == "never":
        ranks.append(RANK_NEVER)
    elif conn != "online":
        ranks.append(RANK_OFFLINE)
        problems.append("offline" if conn == "offline" else f"presence {conn}")
    reported = _mapping(row.get("reported"))
    errs = reported.get("errors")
    errors = [f"error {k}" for k in errs] if isinstance(errs, Mapping) else []
    hazards = reported.get("hazards")
    errors += [k for k, v in hazards.items() if v is True] if isinstance(hazards, Mapping) else []
    link = reported.get("link")
    if isinstance(link, Mapping) and link.get("serial") == "down":
        errors.append("serial down")
    if errors:
        ranks.append(RANK_ERROR)
        problems += errors
    state = _command_state(_mapping(row.get("desired")), reported)
    have = reported.get("command")
    status = have.get("status") if isinstance(have, Mapping) else None
    if state in ("failed", "rejected") or status in ("failed", "rejected"):
        ranks.append(RANK_COMMAND)
        problems.append(f"command {state if state in ('failed', 'rejected') else status}")
    percent = _mapping(reported.get("battery")).get("percent")
    if isinstance(percent, int | float) and not isinstance(percent, bool) and percent < LOW_BATTERY_PCT:
        ranks.append(RANK_BATTERY)
        problems.append(f"battery {percent:g}%")
    rank = min(r for r in ranks if r != RANK_NEVER) if problems else max(ranks)
    return rank, problems


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Fleet counts from per-robot rows (``thing``, ``connection``, ``reported``, ``desired``). Pure.

    Bad or missing fields count as ``unknown``; they never raise, since a robot half-way through its first
    report is normal.
    """
    total = 0
    connection: Counter[str] = Counter()
    missions: Counter[str] = Counter()
    battery: Counter[str] = Counter()
    commands: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    low: list[str] = []
    failing: dict[str, list[str]] = {}
    for row in rows:
        total += 1
        thing = str(row.get("thing", "?"))
        conn = row.get("connection")
        connection[conn if conn in ("online", "offline", "never") else "unknown"] += 1
        reported = _mapping(row.get("reported"))
        desired = _mapping(row.get("desired"))
        mission = reported.get("mission")
        missions[mission if isinstance(mission, str) else "unknown"] += 1
        percent = _mapping(reported.get("battery")).get("percent")
        battery[_bucket(percent)] += 1
        if isinstance(percent, int | float) and not isinstance(percent, bool) and percent < LOW_BATTERY_PCT:
            low.append(thing)
        state = _command_state(desired, reported)
        if state is not None:
            commands[state] += 1
        problems: list[str] = []
        errs = reported.get("errors")
        if isinstance(errs, Mapping):
            problems += [f"desired.{k}" for k in errs]
        hazards = reported.get("hazards")
        if isinstance(hazards, Mapping):
            problems += [k for k, v in hazards.items() if v is True]
        link = reported.get("link")
        if isinstance(link, Mapping) and link.get("serial") == "down":
            problems.append("serial_down")
        if state in ("failed", "rejected"):
            problems.append(f"command_{state}")
        for p in problems:
            errors[p] += 1
        if problems:
            failing[thing] = problems
    return {
        "robots": total,
        "connected": connection["online"],
        "connection": dict(sorted(connection.items())),
        "missions": dict(sorted(missions.items())),
        "battery": {
            b: battery[b] for b in [_bucket(lo) for lo, _ in BATTERY_BUCKETS] + ["unknown"] if battery[b]
        },
        "battery_low": sorted(low),
        "commands": {k: commands[k] for k in ("pending", "applied", "failed", "rejected") if commands[k]},
        "errors": dict(sorted(errors.items())),
        "robots_with_errors": dict(sorted(failing.items())),
    }


def _counts(counts: Mapping[str, int]) -> str:
    return "  ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def render(summary: Mapping[str, Any], *, width: int = 100, max_names: int = 8) -> str:
    """A few lines for a terminal; long robot lists are cut with a count of the rest."""

    def names(items: list[str]) -> str:
        shown = ", ".join(items[:max_names])
        return shown + (f" (+{len(items) - max_names} more)" if len(items) > max_names else "")

    lines = [
        f"robots     {summary['robots']}   connected {summary['connected']}   "
        + _counts({k: v for k, v in summary["connection"].items() if k != "online"}),
        f"missions   {_counts(summary['missions'])}",
        f"battery %  {_counts(summary['battery'])}",
        f"commands   {_counts(summary['commands'])}",
        f"errors     {_counts(summary['errors'])}",
    ]
    if summary["battery_low"]:
        lines.append(f"low battery ({len(summary['battery_low'])}): {names(summary['battery_low'])}")
    failing = summary["robots_with_errors"]
    if failing:
        lines.append(f"with errors ({len(failing)}): {names(sorted(failing))}")
    return "\n".join(line[:width] for line in lines)
