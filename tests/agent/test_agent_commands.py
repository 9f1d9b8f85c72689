"""The command contract and the published JSON Schemas."""

from __future__ import annotations

import pytest

from agent.commands import (
    Command,
    Rejected,
    desired_command_patch,
    load_schema,
    parse_command,
    validate_sections,
)


def test_schemas_are_valid_draft_2020_12() -> None:
    """The shipped schemas load and carry the keys the agent relies on (command id/action, log_level)."""
    assert load_schema("desired")["$defs"]["command"]["required"] == ["id", "action"]
    assert "log_level" in load_schema("config")["properties"]


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "c1", "action": "clean"},
        {"id": "c2", "action": "locate"},
        {"id": "c3", "action": "drive", "velocity_mm_s": -200, "radius_mm": 500, "duration_ms": 1500},
        {"id": "c4", "action": "set_clock"},
        {"id": "c5", "action": "set_clock", "day": 3, "hour": 15, "minute": 0},
    ],
    ids=lambda r: r["action"],
)
def test_valid_commands(raw: dict) -> None:
    """Every action the contract lists parses, and its answer echoes the request with a status."""
    cmd = parse_command(raw)
    assert isinstance(cmd, Command) and cmd.document == raw
    assert cmd.answer("done") == {**raw, "status": "done", "reason": None}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"id": "c1", "action": "fly"}, "is not one of"),
        ({"id": "c1", "action": "drive", "velocity_mm_s": 900, "duration_ms": 100}, "maximum of 500"),
        ({"id": "c1", "action": "drive", "velocity_mm_s": 100}, "duration_ms"),
        ({"id": "c1", "action": "clean", "velocity_mm_s": 100}, "velocity_mm_s not allowed"),
        ({"id": "c1", "action": "set_clock", "day": 1}, "hour"),
        ({"action": "clean"}, "'id' is a required property"),
        ({"id": "x" * 65, "action": "clean"}, "does not match"),
        ("clean", "must be an object"),
    ],
    ids=[
        "unknown_action",
        "velocity_range",
        "deadman_missing",
        "stray_argument",
        "partial_clock",
        "no_id",
        "long_id",
        "not_object",
    ],
)
def test_rejected_commands(raw: object, needle: str) -> None:
    """A malformed command is rejected with a reason naming the problem, never run."""
    result = parse_command(raw)
    assert isinstance(result, Rejected)
    assert needle in result.reason
    answer = result.answer()
    assert answer["status"] == "rejected" and answer["reason"] == result.reason


def test_sections_validated_independently() -> None:
    """One bad desired key is rejected alone; the valid keys beside it still apply."""
    problems = validate_sections(
        "desired", {"schedule": {"mon": {"hour": 25, "minute": 0}}, "leds": {"dock": True}, "lasers": 1}
    )
    assert set(problems) == {"schedule", "lasers"}
    assert "schedule.mon.hour" in problems["schedule"]
    assert validate_sections("config", {"log_level": "debug", "report_min_s": 0.5}) == {}
    assert "report_min_s" in validate_sections("config", {"report_min_s": 0})


def test_command_patch_nulls_old_arguments() -> None:
    """A new command deletes the previous command's arguments, so stale ones never mix in."""
    old = {"id": "c1", "action": "drive", "velocity_mm_s": 100, "duration_ms": 500}
    assert desired_command_patch(old, {"id": "c2", "action": "clean"}) == {
        "velocity_mm_s": None,
        "duration_ms": None,
        "id": "c2",
        "action": "clean",
    }
    assert desired_command_patch(None, {"id": "c1", "action": "stop"}) == {"id": "c1", "action": "stop"}


def test_docs_embed_the_published_schemas() -> None:
    """docs/agent.md is what the fleet side reads: its copy of each schema must be the shipped file."""
    import json
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "agent.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(\{\n.*?\n\})\n```", text, re.S)]
    embedded = {b.get("$id"): b for b in blocks if "$id" in b}
    for name in ("desired", "config"):
        schema = load_schema(name)
        assert embedded[schema["$id"]] == schema


def test_verdicts_per_command_shape_match_a_full_validation() -> None:
    """The verdict is remembered per command without its id; it must equal a fresh schema walk every time,
    whatever the id, and an invalid id is never hidden by a remembered verdict."""
    from agent.commands import _SHAPES, _command_problems, validate_sections

    shapes = [
        {"action": "clean"},
        {"action": "drive", "velocity_mm_s": 900, "duration_ms": 100},
        {"action": "drive", "velocity_mm_s": 100, "duration_ms": 500},
        {"action": "set_clock", "day": 1},
        {"action": "locate", "hour": 3},
    ]
    _SHAPES.clear()
    for shape in shapes:
        for cid in ("c1", "c2", "bad id!", "x" * 65, 7):
            raw = {"id": cid, **shape}
            assert _command_problems(raw) == validate_sections("desired", {"command": raw}), raw
    assert 0 < len(_SHAPES) <= len(shapes)
    rejected = parse_command({"id": "bad id!", "action": "clean"})
    assert isinstance(rejected, Rejected) and "command.id" in rejected.reason
