"""Unit tests of the shadow service's sans-I/O core (the store, codec and broker config: tests/localcloud)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import structlog.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow.engine import ShadowEngine, StoredShadow, parse_topic
from shadow.topics import shadow_topic

T0 = 1_700_000_000.0


def _answers(engine: ShadowEngine, topic: str, payload: Any, now: float = T0) -> dict[str, Any]:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return {t: json.loads(p) for t, p in engine.handle(topic, data, now)}


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        pytest.param("$aws/things/r1/shadow/update", ("r1", "", "update"), id="classic_update"),
        pytest.param("$aws/things/r1/shadow/name/cfg/get", ("r1", "cfg", "get"), id="named_get"),
        pytest.param("$aws/things/r1/shadow/update/accepted", None, id="response_ignored"),
        pytest.param("$aws/things/r1/shadow/name/cfg/update/delta", None, id="named_response_ignored"),
        pytest.param("$aws/things/r1/shadow/list", None, id="unknown_op"),
        pytest.param("$aws/things/r1/jobs/get", None, id="jobs"),
        pytest.param("roomba/r1/telemetry", None, id="not_aws"),
    ],
)
def test_parse_topic(topic: str, expected: tuple[str, str, str] | None) -> None:
    """Only request topics are requests: the service must never answer its own responses or jobs topics."""
    parsed = parse_topic(topic)
    assert (None if parsed is None else (parsed.thing, parsed.shadow_name, parsed.operation)) == expected


def test_update_publishes_accepted_documents_and_delta_on_the_right_topics() -> None:
    """A named-shadow update answers under the named prefix, echoes the token, is stored once."""
    engine = ShadowEngine()
    out = _answers(
        engine, "$aws/things/r1/shadow/name/cfg/update", {"state": {"desired": {"a": 1}}, "clientToken": "t"}
    )
    prefix = "$aws/things/r1/shadow/name/cfg/update"
    assert set(out) == {f"{prefix}/accepted", f"{prefix}/documents", f"{prefix}/delta"}
    assert all(doc["clientToken"] == "t" for doc in out.values())
    assert engine.take_dirty().keys() == {("r1", "cfg")}
    assert engine.take_dirty() == {}


def test_get_and_delete_of_missing_shadow_are_404_with_token() -> None:
    """AWS's 404 text names the thing for the classic shadow, in quotes, with the token and no timestamp."""
    engine = ShadowEngine()
    for op in ("get", "delete"):
        out = _answers(engine, f"$aws/things/r9/shadow/{op}", {"clientToken": "tok"})
        assert out == {
            f"$aws/things/r9/shadow/{op}/rejected": {
                "code": 404,
                "message": "No shadow exists with name: 'r9'",
                "clientToken": "tok",
            }
        }


def test_delete_then_recreate_continues_version_and_forgets_after_48h() -> None:
    """The version survives a delete for 48 hours (the tombstone), then a new shadow starts at 1."""
    engine = ShadowEngine()
    for i in range(3):
        _answers(engine, "$aws/things/r1/shadow/update", {"state": {"reported": {"i": i}}})
    out = _answers(engine, "$aws/things/r1/shadow/delete", b"")
    assert out["$aws/things/r1/shadow/delete/accepted"]["version"] == 3
    assert "$aws/things/r1/shadow/get/rejected" in _answers(engine, "$aws/things/r1/shadow/get", b"")
    out = _answers(engine, "$aws/things/r1/shadow/update", {"state": {"reported": {"x": 1}}}, T0 + 10)
    assert out["$aws/things/r1/shadow/update/accepted"]["version"] == 4
    assert out["$aws/things/r1/shadow/update/documents"]["previous"] is None
    _answers(engine, "$aws/things/r1/shadow/delete", b"", T0 + 20)
    later = T0 + 20 + 48 * 3600 + 1
    out = _answers(engine, "$aws/things/r1/shadow/update", {"state": {"reported": {"x": 1}}}, later)
    assert out["$aws/things/r1/shadow/update/accepted"]["version"] == 1


def test_rate_limit_is_per_thing_and_refills() -> None:
    """AWS's 20 requests/s per thing: the 21st is a 429, other things are unaffected, tokens refill."""
    engine = ShadowEngine(rate_per_thing=20)
    codes = []
    for _ in range(25):
        out = _answers(engine, "$aws/things/flood/shadow/get", {"clientToken": "f"})
        codes.append(next(iter(out.values())).get("code", 200))
    assert codes[:20] == [404] * 20
    assert codes[20:] == [429] * 5
    assert (
        next(iter(_answers(engine, "$aws/things/flood/shadow/get", {"clientToken": "f"}).values()))["message"]
        == "Too Many Requests"
    )
    calm = _answers(engine, "$aws/things/calm/shadow/update", {"state": {"reported": {"ok": True}}})
    assert "$aws/things/calm/shadow/update/accepted" in calm
    refilled = _answers(engine, "$aws/things/flood/shadow/update", {"state": {}}, T0 + 1.0)
    assert "$aws/things/flood/shadow/update/accepted" in refilled


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        pytest.param("$aws/things/bad.name/shadow/get", "Invalid thing name", id="thing_dot"),
        pytest.param("$aws/things/" + "x" * 129 + "/shadow/get", "Invalid thing name", id="thing_129"),
        pytest.param(
            "$aws/things/r1/shadow/name/" + "s" * 65 + "/get", "Invalid shadow name", id="shadow_65"
        ),
        pytest.param("$aws/things/r1/shadow/name/bad.name/update", "Invalid shadow name", id="shadow_dot"),
    ],
)
def test_bad_names_get_400(topic: str, message: str) -> None:
    """An invalid thing or shadow name in the topic is a 400 rejection carrying the token, not a crash."""
    out = _answers(ShadowEngine(), topic, {"clientToken": "n", "state": {}})
    ((rtopic, doc),) = out.items()
    assert rtopic.endswith("/rejected")
    assert (doc["code"], doc["message"], doc["clientToken"]) == (400, message, "n")


def test_internal_failure_is_500_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the rules becomes AWS's 500 document and one log line; the service keeps answering."""
    engine = ShadowEngine()

    def boom(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("shadow.document.apply_update", boom)
    with structlog.testing.capture_logs() as logs:
        out = _answers(engine, "$aws/things/r1/shadow/update", {"state": {}, "clientToken": "z"})
    assert [e["event"] for e in logs] == ["shadow.request.failed"]
    assert out["$aws/things/r1/shadow/update/rejected"] == {
        "code": 500,
        "message": "Internal service failure",
        "timestamp": int(T0),
        "clientToken": "z",
    }


def test_documents_payload_is_exactly_the_rules_output() -> None:
    """The engine builds update/documents from cached JSON; it must equal the pure rules' document."""
    from shadow import document as sd

    engine = ShadowEngine()
    shadow = None
    steps = [
        {"state": {"reported": {"a": 1, "é": [1, {"b": 2}]}}, "clientToken": "t1"},
        {"state": {"desired": {"a": 2}}},
        {"state": None, "clientToken": "t3"},
        {"state": {"desired": {"x": {"y": "z"}}}, "clientToken": "t4"},
    ]
    for i, step in enumerate(steps):
        payload = json.dumps(step).encode()
        expected = sd.apply_update(shadow, sd.parse_update(payload), int(T0) + i)
        shadow = expected.shadow
        out = dict(engine.handle("$aws/things/docs/shadow/update", payload, T0 + i))
        assert json.loads(out["$aws/things/docs/shadow/update/documents"]) == expected.documents


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(
        ["$aws/things/fz/shadow/update", "$aws/things/fz/shadow/name/n/update", "$aws/things/fz/shadow/get"]
    ),
    st.one_of(
        st.binary(max_size=200),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
            lambda kids: (
                st.lists(kids, max_size=3)
                | st.dictionaries(
                    st.sampled_from(["state", "desired", "reported", "version", "clientToken", "x"]),
                    kids,
                    max_size=4,
                )
            ),
            max_leaves=15,
        ).map(lambda v: json.dumps(v).encode()),
    ),
)
def test_any_payload_gets_exactly_one_answer_and_never_raises(topic: str, payload: bytes) -> None:
    """Fuzz: any payload gets exactly one accepted or rejected (plus documents/delta), all strict JSON."""
    engine = ShadowEngine(rate_per_thing=0)
    out = engine.handle(topic, payload, T0)
    suffixes = sorted(t.rsplit("/", 1)[1] for t, _p in out)
    assert suffixes in (
        ["rejected"],
        ["accepted"],
        ["accepted", "documents"],
        ["accepted", "delta", "documents"],
    )
    for _t, data in out:
        assert isinstance(json.loads(data, parse_constant=_refuse), dict)  # strict JSON: no NaN/Infinity


def _refuse(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name} in a response")


def _dig(doc: Any, path: str) -> Any:
    for key in path.split("."):
        doc = doc[key]
    return doc


def test_engine_publishes_aws_walk_through_message_for_message() -> None:
    """AWS's named-shadow walk-through through the service: every payload AWS shows, on the named topics."""
    trace = json.loads(
        (Path(__file__).parent / "vectors" / "aws_simulating_shadow_communications.json").read_text()
    )
    thing, name = trace["thing"], trace["shadow_name"]
    start = trace["steps"][0]["now"]
    # AWS's walk-through starts at version 3: a shadow deleted at version 2 continues from it
    engine = ShadowEngine({(thing, name): StoredShadow(None, 2, start)}, rate_per_thing=0)
    for step in trace["steps"]:
        op = "update" if "update" in step else "get"
        out = engine.handle(shadow_topic(thing, op, name=name), json.dumps(step[op]).encode(), step["now"])
        answers = {topic: json.loads(payload) for topic, payload in out}
        if "rejected" in step:
            assert answers == {shadow_topic(thing, op, "rejected", name=name): step["rejected"]}
            continue
        stored = engine.shadows[(thing, name)].shadow
        assert stored is not None
        published = {
            "shadow": stored.to_json(),
            "accepted": answers.get(shadow_topic(thing, op, "accepted", name=name)),
            "documents": answers.get(shadow_topic(thing, op, "documents", name=name)),
            "delta": answers.get(shadow_topic(thing, op, "delta", name=name)),
        }
        published["get"] = published["accepted"]
        for path, expected in step["expect"].items():
            assert _dig(published, path) == expected, (step["now"], path)
