"""``roomba-fleet shadow`` without a cloud: which robots ``--all``/``--prefix`` select, the ``{thing}``
placeholder, the JSON printed for many answers, and the usage errors found before connecting."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet import shadow as fleet_shadow
from localcloud.opclient import ShadowAnswer


def test_fleet_selection_and_personalised_documents() -> None:
    """``--all`` is every robot once, sorted; ``{thing}`` is replaced in values, never in keys."""
    known = ["b-2", "a-1", "b-1", "a-1"]
    assert fleet_shadow.select(known, all_robots=True, prefix=None) == ["a-1", "b-1", "b-2"]
    assert fleet_shadow.select(known, all_robots=False, prefix="b-") == ["b-1", "b-2"]
    assert fleet_shadow.select(known, all_robots=False, prefix="zz") == []
    doc = {
        "state": {"desired": {"command": {"id": "m-{thing}", "action": "clean", "n": 3}, "l": ["{thing}"]}}
    }
    assert fleet_shadow.personalise(doc, "r7") == {
        "state": {"desired": {"command": {"id": "m-r7", "action": "clean", "n": 3}, "l": ["r7"]}}
    }


def test_fleet_render_keys_by_thing_and_explains_failures() -> None:
    results = {
        "r2": ShadowAnswer(True, {"state": {"reported": {"x": 1}}, "version": 3, "clientToken": "t"}),
        "r1": ShadowAnswer(False, {"code": 404, "message": "No shadow exists", "clientToken": "u"}),
        "r3": None,
    }
    out = fleet_shadow.render(results)
    assert list(out) == ["r1", "r2", "r3"]
    assert out["r2"] == {"state": {"reported": {"x": 1}}, "version": 3}
    assert out["r1"] == {"error": {"code": 404, "message": "No shadow exists"}}
    assert out["r3"]["error"]["message"].startswith("no answer")


def test_fleet_shadow_refuses_bad_documents_and_empty_selections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert fleet_shadow.main(["update", "--all", "--dir", d, "{not json"]) == 2
    assert fleet_shadow.main(["update", "--all", "--dir", d, "[1]"]) == 2
    assert fleet_shadow.main(["get", "--prefix", "nobody-", "--dir", d]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "must be a JSON object" in err and "no robot name starts with" in err


def test_one_robot_usage_errors_are_found_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    assert fleet_shadow.main(["update", "r1", "{not json", "--dir", d]) == 2
    assert fleet_shadow.main(["update", "r1", "[1]", "--dir", d]) == 2
    assert fleet_shadow.main(["get", "r1", "--name", "a+b", "--dir", d]) == 2
    err = capsys.readouterr().err
    assert "roomba-fleet shadow update: the document is not valid JSON" in err
    assert "roomba-fleet shadow update: the document must be a JSON object" in err
    assert "shadow name 'a+b' cannot be part of an MQTT topic" in err


def test_one_parser_shows_both_forms_and_takes_positionals_in_any_order(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``shadow get --help`` shows THING, --all and --prefix (once two parsers, the help hid the fleet one)."""
    with pytest.raises(SystemExit) as exc:
        fleet_shadow.main(["get", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "[--all | --prefix P]" in out and "THING" in out and "exit codes:" in out
    args = fleet_shadow.parse(["update", "r1", "--name", "cfg", "{}", "--dir", "D"])
    assert (args.thing, args.document, args.name, args.many) == ("r1", "{}", "cfg", False)
    args = fleet_shadow.parse(["update", "--prefix", "m-", "{}"])
    assert (args.thing, args.prefix, args.document, args.many) == (None, "m-", "{}", True)
    for argv, message in (
        (["get"], "give THING, --all or --prefix P"),
        (["get", "r1", "--all"], "give THING or --all/--prefix, not both"),
        (["get", "--all", "--prefix", "x"], "not allowed with argument"),
        (["delete", "--all"], "the following arguments are required: THING"),
    ):
        with pytest.raises(SystemExit) as exc:
            fleet_shadow.parse(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
