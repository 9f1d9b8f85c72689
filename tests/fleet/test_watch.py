"""The watch view without a cloud: ``FleetView`` fed publications by hand, its table, the pure fleet
summary of ``watch --fleet`` (:mod:`fleet.fleetview`), the problems-first triage, and the live views drawn
at a fixed terminal size. The live views in a real pty against a real cloud: ``test_watch_live.py``."""

from __future__ import annotations

import io
import json
import time

from rich.console import Console

from fleet.fleetview import RANK_NEVER, RANK_OK, render, summarize, triage
from fleet.watch import DOCUMENTS, GET_RESPONSES, PRESENCE, FleetView, Link, fleet_view, table_view


def test_watch_table_shows_the_agent_state_as_columns_and_survives_odd_documents() -> None:
    view = FleetView(["r1", "r2", "r3"])
    doc = {
        "state": {
            "reported": {
                "mission": "cleaning",
                "battery": {"percent": 42, "charging": "trickle"},
                "oi_mode": "passive",
                "hazards": {"bump": False, "cliff": True},
                "command": {"id": "m-1", "status": "failed", "reason": "serial link down"},
            }
        },
        "version": 7,
    }
    assert view.apply("$aws/things/r1/shadow/get/accepted", json.dumps(doc).encode(), 0.0) == "r1"
    odd = {"state": {"reported": {"battery": "full", "hazards": [1], "command": "x"}}, "version": 2}
    assert view.apply("$aws/things/r2/shadow/get/accepted", json.dumps(odd).encode(), 0.0) == "r2"
    assert view.apply("roomba/r1/presence", b'{"state": "online"}', 0.0) == "r1"
    rows = {line.split()[0]: line for line in view.table().splitlines()[1:]}
    assert rows["r1"].split()[:7] == ["r1", "online", "7", "cleaning", "42%", "trickle", "passive"]
    assert "cliff" in rows["r1"] and "bump" not in rows["r1"]
    assert rows["r1"].endswith("m-1: failed (serial link down)")
    assert rows["r2"].split()[:5] == ["r2", "never", "2", "?", "?"]
    assert rows["r3"].split() == ["r3", "never", "-", "-"]


def test_watch_follows_presence_and_the_classic_shadow_only() -> None:
    """Named shadows, other agent topics and responses other than get/accepted leave the rows alone."""
    assert (PRESENCE, DOCUMENTS, GET_RESPONSES) == (
        "roomba/+/presence",
        "$aws/things/+/shadow/update/documents",
        "$aws/things/+/shadow/get/+",
    )
    view = FleetView(["r1"])
    doc = json.dumps({"state": {"reported": {"mission": "cleaning"}}, "version": 4}).encode()
    documents = json.dumps({"current": {"state": {"reported": {"mission": "docked"}}, "version": 5}}).encode()
    for topic in (
        "$aws/things/r1/shadow/name/cfg/get/accepted",
        "$aws/things/r1/shadow/get/rejected",
        "$aws/things/r1/shadow/update/accepted",
        "roomba/r1/telemetry",
        "roomba/r1/presence/extra",
    ):
        assert view.apply(topic, doc, 1.0) is None, topic
    assert view.rows["r1"].version is None and view.rows["r1"].connection == "never"
    assert view.apply("$aws/things/r1/shadow/get/accepted", doc, 1.0) == "r1"
    assert view.apply("$aws/things/r1/shadow/update/documents", documents, 2.0) == "r1"
    assert (view.rows["r1"].version, view.rows["r1"].reported) == (5, {"mission": "docked"})
    assert view.apply("$aws/things/r1/shadow/get/accepted", doc, 3.0) is None, "an older get overwrote v5"
    assert view.apply("roomba/r2/presence", b"not json", 1.0) is None
    assert view.apply("roomba/r2/presence", b'{"state": 3}', 1.0) == "r2"
    assert view.rows["r2"].connection == "unknown"


# --- the fleet summary (watch --fleet) ------------------------------------------------------------------------


def _row(thing: str, connection: str = "online", **reported: object) -> dict[str, object]:
    return {"thing": thing, "connection": connection, "reported": reported or None, "desired": None}


def test_summary_counts_connection_missions_battery_commands_errors() -> None:
    rows = [
        _row("r1", mission="cleaning", battery={"percent": 95}),
        _row("r2", mission="docked", battery={"percent": 12}, hazards={"cliff": True, "bump": False}),
        _row("r3", "offline", mission="cleaning", battery={"percent": 55}, link={"serial": "down"}),
        _row("r4", "never"),
        {
            "thing": "r5",
            "connection": "online",
            "reported": {
                "mission": "cleaning",
                "command": {"id": "c1", "status": "done"},
                "battery": {"percent": 5},
            },
            "desired": {"command": {"id": "c1", "action": "clean"}},
        },
        {
            "thing": "r6",
            "connection": "online",
            "reported": {"command": {"id": "c0", "status": "done"}},
            "desired": {"command": {"id": "c1", "action": "clean"}},
        },
        {
            "thing": "r7",
            "connection": "online",
            "reported": {"command": {"id": "c1", "status": "failed"}, "errors": {"schedule": "bad hour"}},
            "desired": {"command": {"id": "c1"}},
        },
    ]
    s = summarize(rows)
    assert s["robots"] == 7 and s["connected"] == 5
    assert s["connection"] == {"never": 1, "offline": 1, "online": 5}
    assert s["missions"] == {"cleaning": 3, "docked": 1, "unknown": 3}
    assert s["battery"] == {"0-9": 1, "10-19": 1, "50-79": 1, "80-100": 1, "unknown": 3}
    assert s["battery_low"] == ["r2", "r5"]
    assert s["commands"] == {"pending": 1, "applied": 1, "failed": 1}
    assert s["errors"] == {"cliff": 1, "command_failed": 1, "desired.schedule": 1, "serial_down": 1}
    assert sorted(s["robots_with_errors"]) == ["r2", "r3", "r7"]
    text = render(s)
    assert "connected 5" in text and "cleaning 3" in text and "low battery (2): r2, r5" in text


def test_summary_never_raises_on_junk() -> None:
    junk = [{}, {"thing": 3, "reported": "x", "desired": [1]}, {"reported": {"battery": {"percent": True}}}]
    s = summarize(junk)
    assert s["robots"] == 3 and s["battery"] == {"unknown": 3} and s["connection"] == {"unknown": 3}
    render(s)
    many = summarize([_row(f"r{i}", battery={"percent": 1}) for i in range(20)])
    assert "(+12 more)" in render(many)


# --- the live table: problems first, never taller than the terminal ---------------------------------------


def test_triage_ranks_offline_errors_commands_battery_then_healthy_then_never() -> None:
    rows = {
        "ok": _row("ok", battery={"percent": 80}),
        "never": _row("never", "never"),
        "offline": _row("offline", "offline"),
        "error": _row("error", errors={"mode": "unknown setting"}),
        "serial": _row("serial", link={"serial": "down"}),
        "rejected": _row("rejected", command={"id": "c2", "status": "rejected"}),
        "low": _row("low", battery={"percent": 9}),
    }
    ranks = {name: triage(row) for name, row in rows.items()}
    order = sorted(rows, key=lambda n: (ranks[n][0], n))
    assert order == ["offline", "error", "serial", "rejected", "low", "ok", "never"]
    assert ranks["offline"][1] == ["offline"] and ranks["error"][1] == ["error mode"]
    assert ranks["serial"][1] == ["serial down"] and ranks["rejected"][1] == ["command rejected"]
    assert (
        ranks["low"][1] == ["battery 9%"] and ranks["ok"] == (RANK_OK, []) and ranks["never"][0] == RANK_NEVER
    )
    assert triage({}) == (0, ["presence None"]) and triage({"connection": "online", "reported": "x"}) == (
        RANK_OK,
        [],
    )


def _draw(renderable: object, height: int, width: int = 120) -> list[str]:
    console = Console(file=io.StringIO(), width=width, height=height, color_system=None)
    console.print(renderable)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out).rstrip("\n").split("\n")


def test_table_view_fits_the_height_and_counts_the_rest() -> None:
    view = FleetView([f"r{i:02d}" for i in range(30)])
    view.apply("roomba/r17/presence", b'{"state": "offline"}', 0.0)
    for i in range(30):
        if i != 17:
            view.apply(f"roomba/r{i:02d}/presence", b'{"state": "online"}', 0.0)
    link = Link(address="127.0.0.1:8883", state="connected", data_at=time.time())
    lines = _draw(table_view(view, link, 10), 10)
    assert len(lines) == 9, lines  # the terminal's last row stays free
    assert "roomba-fleet watch" in lines[0] and "30 robots" in lines[0] and "127.0.0.1:8883" in lines[0]
    assert lines[1].split()[0] == "THING" and lines[2].startswith("r17")
    assert lines[-1].startswith("… 24 more (no problems)")
    assert len(_draw(table_view(view, link, 40), 40)) == 1 + 1 + 30  # everything fits: no "more" line
    link.state, link.attempt, link.reason, link.retry_at = "reconnecting", 3, "refused", time.time() + 2
    lines = _draw(table_view(view, link, 10), 10)
    assert len(lines) == 9 and "not connected" in lines[0]
    assert lines[1].startswith("reconnecting to 127.0.0.1:8883 (attempt 3, next try in ")
    assert lines[-1].startswith("… 25 more")


def test_fleet_view_fits_the_height() -> None:
    view = FleetView([f"r{i}" for i in range(5)])
    link = Link(address="127.0.0.1:8883", state="connected")
    lines = _draw(fleet_view(view, link, 6, 100), 6)
    assert len(lines) == 5 and "watch --fleet" in lines[0] and "no data yet" in lines[0]
    assert lines[-1].startswith("… ") and lines[-1].endswith("more lines")
