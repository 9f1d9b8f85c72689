"""The watch view without a cloud: ``FleetView`` fed publications by hand, its table, and the pure fleet
summary of ``watch --fleet`` (:mod:`fleet.fleetview`)."""

from __future__ import annotations

import json

from fleet.fleetview import render, summarize
from fleet.watch import DOCUMENTS, GET_RESPONSES, PRESENCE, FleetView


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
