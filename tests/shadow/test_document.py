"""Table tests of the pure shadow rules, against AWS's worked examples and real AWS responses.

The vectors live in ``vectors/*.json``, each naming its public source (an AWS IoT Core Developer Guide
page, or a recorded session against AWS IoT Core). A trace file is a list of steps on one shadow:
``update`` / ``get`` / ``delete`` with the payload sent, ``now``, and either ``rejected`` (the error
document) or ``expect`` (dotted paths into the outcome: ``shadow``, ``accepted``, ``documents``, ``delta``,
``accepted_json``, ``get``, ``delete``) and ``absent`` (paths that must not exist).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow import document as sd
from shadow.document import Shadow, ShadowError


def _update(
    shadow: Shadow | None, payload: dict[str, Any], now: int, base_version: int = 0
) -> sd.UpdateResult:
    return sd.apply_update(shadow, sd.parse_update(json.dumps(payload).encode()), now, base_version)


VECTORS = Path(__file__).parent / "vectors"


def _vector(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((VECTORS / name).read_text(encoding="utf-8"))
    assert doc.get("source"), f"{name} does not say where its vectors come from"
    return doc


def _cases(name: str, table: str, *fields: str) -> list[Any]:
    """A table of a vector file as pytest params (ids from the file)."""
    return [pytest.param(*(case[f] for f in fields), id=case["id"]) for case in _vector(name)[table]]


def _at(doc: Any, path: str, where: str) -> Any:
    try:
        for key in path.split("."):
            doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    except (KeyError, IndexError, TypeError):
        raise AssertionError(f"{where}: the outcome has no {path}") from None
    return doc


def _run_trace(trace: dict[str, Any]) -> None:
    """Play a trace's steps on one shadow through the pure rules and check every expectation."""
    shadow = Shadow.from_json(trace["initial"]) if "initial" in trace else None
    for number, step in enumerate(trace["steps"], 1):
        where = f"{trace['source']}, step {number}"
        now = step["now"]
        outcome: dict[str, Any]
        if "update" in step:
            try:
                result = _update(shadow, step["update"], now, step.get("base_version", 0))
            except ShadowError as err:
                assert "rejected" in step, f"{where}: rejected with {err}"
                assert sd.error_document(err, now) == step["rejected"], where
                continue
            assert "rejected" not in step, f"{where}: accepted"
            shadow = result.shadow
            outcome = {
                "shadow": shadow.to_json(),
                "accepted": result.accepted,
                "documents": result.documents,
                "delta": result.delta,
                "accepted_json": json.dumps(result.accepted, separators=(",", ":")),
            }
        else:
            op = "get" if "get" in step else "delete"
            token = step[op].get("clientToken")
            if shadow is None:
                missing = sd.not_found_error(trace["shadow_name"], token)
                assert sd.error_document(missing, now) == step["rejected"], where
                continue
            render = sd.get_document if op == "get" else sd.delete_document
            outcome = {op: render(shadow, now, token)}
            if op == "delete":
                shadow = None
        for path, expected in step.get("expect", {}).items():
            assert _at(outcome, path, where) == expected, f"{where}: {path}"
        for path in step.get("absent", []):
            parent, _, key = path.rpartition(".")
            assert key not in _at(outcome, parent, where), f"{where}: {path} should not exist"


def test_named_shadow_lifecycle_matches_using_device_shadows_example() -> None:
    """AWS's named-shadow walk-through, message for message (it starts at version 3)."""
    _run_trace(_vector("aws_simulating_shadow_communications.json"))


def test_delete_accepted_keeps_the_version() -> None:
    """``delete/accepted`` carries the last version, not an incremented one, and echoes the token."""
    vector = _vector("aws_interacting_delete.json")
    _run_trace(vector)
    shadow = Shadow.from_json(vector["initial"])
    assert sd.delete_document(shadow, 5, "tok") == {"version": 4, "timestamp": 5, "clientToken": "tok"}


def test_optimistic_locking_example() -> None:
    """Version 9 against stored 10 is a 409 with the token; 10 is accepted and gives 11."""
    _run_trace(_vector("aws_interacting_optimistic_locking.json"))


@pytest.mark.parametrize(
    ("desired", "reported", "expected"),
    [
        *_cases("aws_shadow_documents.json", "delta", "desired", "reported", "delta"),
        *_cases("moto_7695_delta.json", "delta", "desired", "reported", "delta"),
        pytest.param(None, {"a": 1}, None, id="no_desired_no_delta"),
        pytest.param({"a": 1}, None, {"a": 1}, id="no_reported_whole_desired"),
        pytest.param({"a": [1, 2]}, {"a": [1, 2]}, None, id="equal_arrays"),
        pytest.param({"a": [1, 2]}, {"a": [2, 1]}, {"a": [1, 2]}, id="array_order_matters"),
        pytest.param({"a": [1]}, {"a": [1, 2]}, {"a": [1]}, id="array_whole_value"),
        pytest.param({"a": 1}, {"a": 1.0}, None, id="numbers_numeric"),
        pytest.param({"a": True}, {"a": 1}, {"a": True}, id="bool_is_not_number"),
        pytest.param({"a": {"b": 1}}, {"a": 5}, {"a": {"b": 1}}, id="type_change"),
        pytest.param({"a": 1}, {"a": 1, "extra": 2}, None, id="reported_only_keys_ignored"),
        pytest.param({"a": {"b": 1}}, {"a": {"b": 1}}, None, id="nested_in_sync"),
    ],
)
def test_delta_table(desired: Any, reported: Any, expected: Any) -> None:
    """Which desired keys the delta holds: objects recurse, arrays and scalars compare whole, True != 1."""
    assert sd.delta(desired, reported) == expected


@pytest.mark.parametrize(
    ("current", "patch", "expected"),
    [
        *_cases("aws_shadow_documents.json", "merge", "current", "patch", "merged"),
        pytest.param({"engine": "ON", "x": 1}, {"engine": None}, {"x": 1}, id="null_deletes"),
        pytest.param({"a": {"b": 1}}, {"a": {"b": None}}, {}, id="empty_parent_pruned"),
        pytest.param({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}, {"a": {"c": 2}}, id="deep_delete"),
        *_cases("moto_7695_delta.json", "merge", "current", "patch", "merged"),
        pytest.param({"a": {"b": 1}}, {"a": {"c": 2}}, {"a": {"b": 1, "c": 2}}, id="deep_merge"),
        pytest.param({"a": 5}, {"a": {"b": 1}}, {"a": {"b": 1}}, id="scalar_to_object"),
        pytest.param({"a": {"b": 1}}, {"a": 5}, {"a": 5}, id="object_to_scalar"),
        pytest.param({"a": 1}, {"b": {}}, {"a": 1}, id="empty_object_leaf_pruned"),
        pytest.param({"a": 1}, None, {}, id="section_null_clears"),
    ],
)
def test_merge_table(current: dict[str, Any], patch: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    """Merge rules (null deletes, arrays replace, empty objects vanish) without modifying the input."""
    before = json.dumps(current)
    assert sd.merge_state(current, patch) == expected
    assert json.dumps(current) == before


def test_sdk_trace_hello_world() -> None:
    """Versions, which updates raise a delta, and delta metadata from the desired timestamp."""
    _run_trace(_vector("sdk_python_v2_hello_world_trace.json"))


def test_awscrt_jl_trace() -> None:
    """desired foo=null removes the desired section but keeps reported."""
    _run_trace(_vector("awscrt_jl_trace.json"))


def test_state_null_matches_real_response_bytes() -> None:
    """Byte-exact, including AWS's key order."""
    _run_trace(_vector("moto_9237_state_null.json"))


def test_desired_null_clears_section_and_reported_still_applies() -> None:
    """``desired: null`` beside a reported change: both apply, and the accepted metadata says so."""
    shadow = Shadow({"desired": {"a": 1}}, {"desired": {"a": {"timestamp": 1}}}, 1)
    r = _update(shadow, {"state": {"reported": {"color": "red"}, "desired": None}}, 9)
    assert r.shadow.state == {"reported": {"color": "red"}}
    assert r.accepted["state"] == {"reported": {"color": "red"}, "desired": None}
    assert r.accepted["metadata"] == {"reported": {"color": {"timestamp": 9}}, "desired": {"timestamp": 9}}


def test_empty_state_accepted_and_version_bumps() -> None:
    """``state: {}`` changes nothing but is still an accepted update with a new version."""
    shadow = Shadow({"reported": {"a": 1}}, {"reported": {"a": {"timestamp": 1}}}, 3)
    r = _update(shadow, {"state": {}}, 9)
    assert r.shadow.state == shadow.state and r.shadow.version == 4


def test_moto_delta_vector() -> None:
    """AWS's GET for a first update setting both sections (a first update can raise a delta)."""
    _run_trace(_vector("moto_7695_delta.json"))


def test_only_stored_sections_are_kept_outside_content_ignored() -> None:
    """Top-level keys other than ``state`` (even ``metadata``) never reach the stored document."""
    r = _update(None, {"state": {"reported": {"a": 1}}, "other": {"x": 1}, "metadata": {"y": 2}}, 1)
    assert r.shadow.state == {"reported": {"a": 1}}


def test_recreated_shadow_continues_version() -> None:
    """A shadow re-created within 48 h continues the deleted version; a stale request version is a 409."""
    r = _update(None, {"state": {"reported": {"a": 1}}}, 1, base_version=9)
    assert r.shadow.version == 10
    with pytest.raises(ShadowError):
        _update(None, {"state": {"reported": {"a": 1}}, "version": 1}, 1, base_version=9)
    assert _update(None, {"state": {"reported": {"a": 1}}, "version": 0}, 1).shadow.version == 1


def _nest(levels: int) -> dict[str, Any]:
    value: Any = "x"
    for i in range(levels, 0, -1):
        value = {str(i): value}
    return value


@pytest.mark.parametrize(
    ("payload", "code", "message"),
    [
        pytest.param(
            b"\xff\xfe", 415, "Unsupported documented encoding; supported encoding is UTF-8", id="not_utf8"
        ),
        pytest.param(b"{not json", 400, "Invalid JSON", id="malformed"),
        pytest.param(b"", 400, "Invalid JSON", id="empty"),
        pytest.param(b"[1,2]", 400, "Invalid JSON", id="not_an_object"),
        pytest.param(b'{"clientToken":"t"}', 400, "Missing required node: state", id="no_state"),
        pytest.param(b'{"state":5}', 400, "State node must be an object", id="state_scalar"),
        pytest.param(b'{"state":[]}', 400, "State node must be an object", id="state_array"),
        pytest.param(b'{"state":{"desired":1}}', 400, "Desired node must be an object", id="desired_scalar"),
        pytest.param(
            b'{"state":{"reported":"x"}}', 400, "Reported node must be an object", id="reported_scalar"
        ),
        pytest.param(
            b'{"state":{"delta":{}}}', 400, "State contains an invalid node: 'delta'", id="delta_node"
        ),
        pytest.param(b'{"state":{},"version":"3"}', 400, "Invalid version", id="version_string"),
        pytest.param(b'{"state":{},"version":-1}', 400, "Invalid version", id="version_negative"),
        pytest.param(b'{"state":{},"version":true}', 400, "Invalid version", id="version_bool"),
        pytest.param(b'{"state":{},"version":1.5}', 400, "Invalid version", id="version_float"),
        pytest.param(b'{"state":{},"clientToken":5}', 400, "Invalid clientToken", id="token_not_string"),
        pytest.param(
            json.dumps({"state": {}, "clientToken": "x" * 65}).encode(),
            400,
            "Invalid clientToken",
            id="token_65",
        ),
        pytest.param(
            json.dumps({"state": {"desired": _nest(7)}}).encode(),
            400,
            "JSON contains too many levels of nesting; maximum is 6",
            id="depth_7",
        ),
        pytest.param(
            b'{"state":{"desired":' + b'{"a":' * 100000 + b"1" + b"}" * 100001 + b"}",
            400,
            "JSON contains too many levels of nesting; maximum is 6",
            id="depth_100000",
        ),
        *(
            pytest.param(case["payload"].encode(), case["code"], case["message"], id=case["id"])
            for case in _vector("aws_shadow_documents.json")["rejected_updates"]
        ),
    ],
)
def test_update_rejections(payload: bytes, code: int, message: str) -> None:
    """Each malformed ``/update`` gets AWS's code and message text, in AWS's order of checks."""
    with pytest.raises(ShadowError) as info:
        sd.parse_update(payload)
    assert (info.value.code, info.value.message) == (code, message)


def test_rejection_carries_token_and_timestamp() -> None:
    """A 400 still echoes a readable clientToken (SDKs match answers by it) and carries the timestamp."""
    with pytest.raises(ShadowError) as info:
        sd.parse_update(b'{"state":{"desired":1},"clientToken":"abc"}')
    assert sd.error_document(info.value, 7) == {
        "code": 400,
        "message": "Desired node must be an object",
        "timestamp": 7,
        "clientToken": "abc",
    }


def test_depth_six_and_token_64_accepted() -> None:
    """The limits are inclusive: 6 levels of nesting and a 64-byte (not 64-character) token pass."""
    req = sd.parse_update(json.dumps({"state": {"desired": _nest(6)}, "clientToken": "é" * 32}).encode())
    assert req.client_token == "é" * 32


def test_size_limit_is_on_the_merged_document() -> None:
    """8 KB is checked on desired + reported after the merge (413), not on the request."""
    shadow = _update(None, {"state": {"desired": {"a": "x" * 4000}, "reported": {"a": "y" * 4000}}}, 1).shadow
    with pytest.raises(ShadowError) as info:
        _update(shadow, {"state": {"reported": {"b": "z" * 200}}, "clientToken": "t"}, 2)
    assert sd.error_document(info.value, 2) == {
        "code": 413,
        "message": "The payload exceeds the maximum size allowed",
        "timestamp": 2,
        "clientToken": "t",
    }
    exact = 8192 - len('{"a":""}')
    assert _update(None, {"state": {"reported": {"a": "x" * exact}}}, 1).shadow.version == 1
    with pytest.raises(ShadowError):
        _update(None, {"state": {"reported": {"a": "x" * (exact + 1)}}}, 1)


@pytest.mark.parametrize(
    ("payload", "token"),
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b"garbage", None, id="not_json_ignored"),
        pytest.param(b'{"clientToken":"abc"}', "abc", id="token"),
        pytest.param(b"[1]", None, id="array"),
    ],
)
def test_client_token_of(payload: bytes, token: str | None) -> None:
    """``/get`` and ``/delete`` content is ignored except the token; unreadable content is not an error."""
    assert sd.client_token_of(payload) == token


def test_client_token_of_rejects_long_token() -> None:
    """A token longer than 64 bytes is a 400 even on ``/get``."""
    with pytest.raises(ShadowError):
        sd.client_token_of(json.dumps({"clientToken": "x" * 65}).encode())


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("robot-001", True),
        ("a:b_c-D", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a.b", False),
    ],
)
def test_thing_names(name: str, ok: bool) -> None:
    """A bad thing name is a ShadowError (400), not an exception of another kind."""
    if ok:
        sd.validate_thing_name(name)
    else:
        with pytest.raises(ShadowError):
            sd.validate_thing_name(name)


@pytest.mark.parametrize(
    ("name", "ok"), [("$cfg", True), ("x" * 64, True), ("x" * 65, False), ("a/b", False)]
)
def test_shadow_names(name: str, ok: bool) -> None:
    """Shadow names allow ``$`` and up to 64 characters; a slash is refused (it would change the topic)."""
    if ok:
        sd.validate_shadow_name(name)
    else:
        with pytest.raises(ShadowError):
            sd.validate_shadow_name(name)


scalar = st.booleans() | st.integers(-3, 3) | st.sampled_from(["", "x", "y"])
json_tree = st.recursive(
    st.none() | scalar | st.lists(scalar, max_size=3),
    lambda kids: st.dictionaries(st.sampled_from("abcd"), kids, max_size=3),
    max_leaves=8,
)
section = st.dictionaries(st.sampled_from("abcd"), json_tree, max_size=4)


@settings(max_examples=200, deadline=None)
@given(section, section, section)
def test_reporting_the_delta_brings_the_shadow_in_sync(
    first: dict[str, Any], desired: dict[str, Any], reported: dict[str, Any]
) -> None:
    """Property: applying the delta as a reported update always yields an empty delta."""
    try:
        r = _update(None, {"state": {"desired": first, "reported": reported}}, 1)
        r = _update(r.shadow, {"state": {"desired": desired}}, 2)
    except ShadowError:
        return
    if r.delta is None:
        return
    after = _update(r.shadow, {"state": {"reported": r.delta["state"]}}, 3)
    assert after.delta is None
    assert sd.delta(after.shadow.state.get("desired"), after.shadow.state.get("reported")) is None


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b'{"state":{"reported":{"a":NaN}}}', id="nan"),
        pytest.param(b'{"state":{"reported":{"a":Infinity}}}', id="infinity"),
        pytest.param(b'{"state":{"reported":{"a":1e400}}}', id="float_overflow"),
    ],
)
def test_non_standard_json_numbers_are_invalid_json(payload: bytes) -> None:
    """NaN, Infinity and overflowing floats are not JSON: 400 rather than a document no SDK can parse."""
    with pytest.raises(ShadowError) as info:
        sd.parse_update(payload)
    assert (info.value.code, info.value.message) == (400, "Invalid JSON")


def test_document_json_matches_a_fresh_encoding_and_never_goes_stale() -> None:
    """The cached section JSON always equals a fresh encoding, even for a Shadow edited with ``replace``."""
    import dataclasses

    steps: list[dict[str, Any]] = [
        {"state": {"reported": {"a": 1, "é": [1, {"b": 2.5}]}}},
        {"state": {"desired": {"a": 2, "n": {"x": True}}}},
        {"state": {"reported": {"a": 2}}},
        {"state": {"desired": None}},
        {"state": {"desired": {"z": "ü"}, "reported": {"é": None}}},
        {"state": None},
        {"state": {"reported": {"back": 1}}},
    ]
    shadow: Shadow | None = None
    for i, step in enumerate(steps):
        shadow = sd.apply_update(shadow, sd.parse_update(json.dumps(step)), 100 + i).shadow
        assert sd.document_json(shadow) == sd.compact_json(shadow.to_json()), step
    assert shadow is not None
    edited = dataclasses.replace(shadow, state={"reported": {"x": 1}})
    assert json.loads(sd.document_json(edited))["state"] == {"reported": {"x": 1}}


@pytest.mark.parametrize(("chars", "accepted"), [(4092, True), (4093, False)])
def test_size_limit_counts_utf8_bytes(chars: int, accepted: bool) -> None:
    """``{"s":"é…"}`` is 8 + 2·n bytes: 4092 characters make exactly 8192."""
    request = sd.parse_update(json.dumps({"state": {"reported": {"s": "é" * chars}}}, ensure_ascii=False))
    if accepted:
        assert sd.apply_update(None, request, 1).shadow.version == 1
    else:
        with pytest.raises(ShadowError) as err:
            sd.apply_update(None, request, 1)
        assert err.value.code == 413


def test_replacing_patch_nulls_what_the_new_value_lacks() -> None:
    """A deep-merging update would keep an old drive's velocity under a new clean: the patch nulls it."""
    old = {"id": "c1", "action": "drive", "velocity_mm_s": 200}
    assert sd.replacing_patch(old, {"id": "c2", "action": "clean"}) == {
        "velocity_mm_s": None,
        "id": "c2",
        "action": "clean",
    }
    assert sd.replacing_patch(None, {"id": "c1"}) == {"id": "c1"}
    merged = sd.merge_state({"command": old}, {"command": sd.replacing_patch(old, {"id": "c2"})})
    assert merged == {"command": {"id": "c2"}}
