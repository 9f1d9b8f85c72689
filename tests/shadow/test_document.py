"""Table tests of the pure shadow rules against the vectors in shadow_protocol.md (§3-§12)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shadow import document as sd
from shadow.document import Shadow, ShadowError


def _ts(t: int, n: int) -> list[dict[str, int]]:
    return [{"timestamp": t}] * n


def _update(
    shadow: Shadow | None, payload: dict[str, Any], now: int, base_version: int = 0
) -> sd.UpdateResult:
    return sd.apply_update(shadow, sd.parse_update(json.dumps(payload).encode()), now, base_version)


def test_named_shadow_lifecycle_matches_using_device_shadows_example() -> None:
    """§11.1, message for message (the document starts at version 3 in AWS's walk-through)."""
    created = _update(
        None,
        {
            "state": {"reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]}},
            "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6",
        },
        1591140517,
        base_version=2,
    )
    assert created.shadow.to_json() == {
        "state": {"reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]}},
        "metadata": {"reported": {"ID": {"timestamp": 1591140517}, "ColorRGB": _ts(1591140517, 3)}},
        "version": 3,
    }
    assert created.delta is None
    assert created.documents["previous"] is None

    desired = _update(
        created.shadow,
        {
            "state": {"desired": {"ColorRGB": [255, 255, 0]}},
            "clientToken": "21b21b21-bfd2-4279-8c65-e2f697ff4fab",
        },
        1591141596,
    )
    assert desired.accepted == {
        "state": {"desired": {"ColorRGB": [255, 255, 0]}},
        "metadata": {"desired": {"ColorRGB": _ts(1591141596, 3)}},
        "version": 4,
        "timestamp": 1591141596,
        "clientToken": "21b21b21-bfd2-4279-8c65-e2f697ff4fab",
    }
    assert desired.delta == {
        "version": 4,
        "timestamp": 1591141596,
        "state": {"ColorRGB": [255, 255, 0]},
        "metadata": {"ColorRGB": _ts(1591141596, 3)},
        "clientToken": "21b21b21-bfd2-4279-8c65-e2f697ff4fab",
    }

    reported = _update(
        desired.shadow,
        {
            "state": {"reported": {"ColorRGB": [255, 255, 0]}},
            "clientToken": "a4dc2227-9213-4c6a-a6a5-053304f60258",
        },
        1591142747,
    )
    assert reported.accepted == {
        "state": {"reported": {"ColorRGB": [255, 255, 0]}},
        "metadata": {"reported": {"ColorRGB": _ts(1591142747, 3)}},
        "version": 5,
        "timestamp": 1591142747,
        "clientToken": "a4dc2227-9213-4c6a-a6a5-053304f60258",
    }
    desired_meta = {"ColorRGB": _ts(1591141596, 3)}
    assert reported.documents == {
        "previous": {
            "state": {
                "desired": {"ColorRGB": [255, 255, 0]},
                "reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]},
            },
            "metadata": {
                "desired": desired_meta,
                "reported": {"ID": {"timestamp": 1591140517}, "ColorRGB": _ts(1591140517, 3)},
            },
            "version": 4,
        },
        "current": {
            "state": {
                "desired": {"ColorRGB": [255, 255, 0]},
                "reported": {"ID": "SmartLamp21", "ColorRGB": [255, 255, 0]},
            },
            "metadata": {
                "desired": desired_meta,
                "reported": {"ID": {"timestamp": 1591140517}, "ColorRGB": _ts(1591142747, 3)},
            },
            "version": 5,
        },
        "timestamp": 1591142747,
        "clientToken": "a4dc2227-9213-4c6a-a6a5-053304f60258",
    }
    assert reported.delta is None
    assert sd.get_document(reported.shadow, 1591143269) == {
        "state": {
            "desired": {"ColorRGB": [255, 255, 0]},
            "reported": {"ID": "SmartLamp21", "ColorRGB": [255, 255, 0]},
        },
        "metadata": {
            "desired": desired_meta,
            "reported": {"ID": {"timestamp": 1591140517}, "ColorRGB": _ts(1591142747, 3)},
        },
        "version": 5,
        "timestamp": 1591143269,
    }
    assert sd.error_document(sd.not_found_error("simShadow1"), 1591140000) == {
        "code": 404,
        "message": "No shadow exists with name: 'simShadow1'",
    }


def test_delete_accepted_keeps_the_version() -> None:
    shadow = Shadow({"reported": {"a": 1}}, {"reported": {"a": {"timestamp": 1}}}, 4)
    assert sd.delete_document(shadow, 1591057529) == {"version": 4, "timestamp": 1591057529}
    assert sd.delete_document(shadow, 5, "tok") == {"version": 4, "timestamp": 5, "clientToken": "tok"}


def test_optimistic_locking_example() -> None:
    """§11.3: version 9 against stored 10 is a 409 with the token; 10 is accepted and gives 11."""
    initial = Shadow(
        {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}, {"desired": {"colors": _ts(1, 3)}}, 10
    )
    token = "426bfd96-e720-46d3-95cd-014e3ef12bb6"
    with pytest.raises(ShadowError) as info:
        _update(initial, {"state": {"desired": {"colors": ["BLUE"]}}, "version": 9, "clientToken": token}, 2)
    assert sd.error_document(info.value, 2) == {
        "code": 409,
        "message": "Version conflict",
        "clientToken": token,
    }
    ok = _update(initial, {"state": {"desired": {"colors": ["BLUE"]}}, "version": 10}, 2)
    assert ok.shadow.state == {"desired": {"colors": ["BLUE"]}}
    assert ok.shadow.version == 11


@pytest.mark.parametrize(
    ("desired", "reported", "expected"),
    [
        pytest.param(
            {"color": "RED", "state": "STOP"},
            {"color": "GREEN", "engine": "ON"},
            {"color": "RED", "state": "STOP"},
            id="flat_doc_example",
        ),
        pytest.param(
            {"lights": {"color": {"r": 255, "g": 255, "b": 255}}},
            {"lights": {"color": {"r": 255, "g": 0, "b": 255}}},
            {"lights": {"color": {"g": 255}}},
            id="nested_doc_example",
        ),
        pytest.param({"online": True}, {"online": False}, {"online": True}, id="moto_7695_bool"),
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
    assert sd.delta(desired, reported) == expected


@pytest.mark.parametrize(
    ("current", "patch", "expected"),
    [
        pytest.param(
            {"colors": ["RED", "GREEN", "BLUE"]},
            {"colors": ["RED"]},
            {"colors": ["RED"]},
            id="arrays_replace",
        ),
        pytest.param({"engine": "ON", "x": 1}, {"engine": None}, {"x": 1}, id="null_deletes"),
        pytest.param({"a": {"b": 1}}, {"a": {"b": None}}, {}, id="empty_parent_pruned"),
        pytest.param({"a": {"b": 1, "c": 2}}, {"a": {"b": None}}, {"a": {"c": 2}}, id="deep_delete"),
        pytest.param({}, {"ghost": None}, {}, id="null_for_missing_not_stored"),
        pytest.param({"a": {"b": 1}}, {"a": {"c": 2}}, {"a": {"b": 1, "c": 2}}, id="deep_merge"),
        pytest.param({"a": 5}, {"a": {"b": 1}}, {"a": {"b": 1}}, id="scalar_to_object"),
        pytest.param({"a": {"b": 1}}, {"a": 5}, {"a": 5}, id="object_to_scalar"),
        pytest.param({"a": 1}, {"b": {}}, {"a": 1}, id="empty_object_leaf_pruned"),
        pytest.param({"a": 1}, None, {}, id="section_null_clears"),
    ],
)
def test_merge_table(current: dict[str, Any], patch: dict[str, Any] | None, expected: dict[str, Any]) -> None:
    before = json.dumps(current)
    assert sd.merge_state(current, patch) == expected
    assert json.dumps(current) == before


def test_sdk_trace_hello_world() -> None:
    """§11.7: versions, which updates raise a delta, and delta metadata from the desired timestamp."""
    r = _update(None, {"state": {"reported": {"Color": "green"}}}, 1747329779)
    assert (r.shadow.version, r.delta, r.documents["previous"]) == (1, None, None)
    assert r.accepted["metadata"] == {"reported": {"Color": {"timestamp": 1747329779}}}
    r = _update(r.shadow, {"state": {"desired": {"Color": "green"}}}, 1747329882)
    assert (r.shadow.version, r.delta) == (2, None)
    r = _update(r.shadow, {"state": {"desired": {"Color": "red"}}, "clientToken": "7ebae3ac"}, 1747329945)
    assert r.delta == {
        "version": 3,
        "timestamp": 1747329945,
        "state": {"Color": "red"},
        "metadata": {"Color": {"timestamp": 1747329945}},
        "clientToken": "7ebae3ac",
    }
    assert (r.documents["previous"]["version"], r.documents["current"]["version"]) == (2, 3)
    r = _update(r.shadow, {"state": {"reported": {"Color": "red"}}}, 1747330109)
    assert (r.shadow.version, r.delta) == (4, None)
    r = _update(r.shadow, {"state": {"reported": {"Status": "Great"}}}, 1747330176)
    r = _update(r.shadow, {"state": {"desired": {"Status": "Great"}}}, 1747330183)
    get = sd.get_document(r.shadow, 1747330200, "t")
    assert "delta" not in get["state"]
    assert get["metadata"] == {
        "desired": {"Color": {"timestamp": 1747329945}, "Status": {"timestamp": 1747330183}},
        "reported": {"Color": {"timestamp": 1747330109}, "Status": {"timestamp": 1747330176}},
    }
    assert get["version"] == 6
    r = _update(r.shadow, {"state": {"reported": {"Status": "Awful"}}, "clientToken": "17c3e551"}, 1747330244)
    assert r.accepted["metadata"] == {"reported": {"Status": {"timestamp": 1747330244}}}
    assert r.delta == {
        "version": 7,
        "timestamp": 1747330244,
        "state": {"Status": "Great"},
        "metadata": {"Status": {"timestamp": 1747330183}},
        "clientToken": "17c3e551",
    }
    r = _update(r.shadow, {"state": {"reported": {"Status": None}}}, 1747330300)
    r = _update(r.shadow, {"state": {"desired": {"Status": None}}}, 1747330301)
    assert r.shadow.version == 9
    assert r.shadow.state == {"desired": {"Color": "red"}, "reported": {"Color": "red"}}
    assert "Status" not in r.shadow.metadata["desired"] and "Status" not in r.shadow.metadata["reported"]
    assert sd.delete_document(r.shadow, 1747330400)["version"] == 9


def test_awscrt_jl_trace() -> None:
    """§11.8: desired foo=null removes the desired section but keeps reported."""
    r = _update(None, {"state": {"reported": {"foo": 1}}}, 1)
    assert r.delta is None
    r = _update(r.shadow, {"state": {"desired": {"foo": 2}}}, 2)
    assert r.delta is not None and r.delta["state"] == {"foo": 2}
    r = _update(r.shadow, {"state": {"reported": {"foo": 2}}}, 3)
    assert r.delta is None
    r = _update(r.shadow, {"state": {"desired": {"foo": None}}}, 4)
    assert "desired" not in r.documents["current"]["state"]
    assert r.documents["current"]["state"]["reported"] == {"foo": 2}


def test_state_null_matches_real_response_bytes() -> None:
    """§11.9: byte-exact, including AWS's key order."""
    shadow = Shadow({"desired": {"a": 1}}, {"desired": {"a": {"timestamp": 1}}}, 17)
    r = _update(shadow, {"state": None}, 1756452769)
    wire = json.dumps(r.accepted, separators=(",", ":"))
    assert wire == '{"state":null,"metadata":{"timestamp":1756452769},"version":18,"timestamp":1756452769}'
    assert r.shadow.to_json() == {"state": {}, "metadata": {}, "version": 18}
    assert sd.get_document(r.shadow, 5) == {"state": {}, "metadata": {}, "version": 18, "timestamp": 5}


def test_desired_null_clears_section_and_reported_still_applies() -> None:
    shadow = Shadow({"desired": {"a": 1}}, {"desired": {"a": {"timestamp": 1}}}, 1)
    r = _update(shadow, {"state": {"reported": {"color": "red"}, "desired": None}}, 9)
    assert r.shadow.state == {"reported": {"color": "red"}}
    assert r.accepted["state"] == {"reported": {"color": "red"}, "desired": None}
    assert r.accepted["metadata"] == {"reported": {"color": {"timestamp": 9}}, "desired": {"timestamp": 9}}


def test_empty_state_accepted_and_version_bumps() -> None:
    shadow = Shadow({"reported": {"a": 1}}, {"reported": {"a": {"timestamp": 1}}}, 3)
    r = _update(shadow, {"state": {}}, 9)
    assert r.shadow.state == shadow.state and r.shadow.version == 4


def test_moto_delta_vector() -> None:
    """§11.10, AWS's GET for a first update setting both sections."""
    r = _update(None, {"state": {"reported": {"online": False}, "desired": {"online": True}}}, 1)
    assert sd.get_document(r.shadow, 2)["state"] == {
        "desired": {"online": True},
        "reported": {"online": False},
        "delta": {"online": True},
    }
    assert r.delta is not None  # a first update can raise a delta


def test_only_stored_sections_are_kept_outside_content_ignored() -> None:
    r = _update(None, {"state": {"reported": {"a": 1}}, "other": {"x": 1}, "metadata": {"y": 2}}, 1)
    assert r.shadow.state == {"reported": {"a": 1}}


def test_recreated_shadow_continues_version() -> None:
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
        pytest.param(
            b'{"state":{"desired":{"colors":[null,"RED","GREEN"]}}}', 400, "Invalid JSON", id="null_in_array"
        ),
    ],
)
def test_update_rejections(payload: bytes, code: int, message: str) -> None:
    with pytest.raises(ShadowError) as info:
        sd.parse_update(payload)
    assert (info.value.code, info.value.message) == (code, message)


def test_rejection_carries_token_and_timestamp() -> None:
    with pytest.raises(ShadowError) as info:
        sd.parse_update(b'{"state":{"desired":1},"clientToken":"abc"}')
    assert sd.error_document(info.value, 7) == {
        "code": 400,
        "message": "Desired node must be an object",
        "timestamp": 7,
        "clientToken": "abc",
    }


def test_depth_six_and_token_64_accepted() -> None:
    req = sd.parse_update(json.dumps({"state": {"desired": _nest(6)}, "clientToken": "é" * 32}).encode())
    assert req.client_token == "é" * 32


def test_size_limit_is_on_the_merged_document() -> None:
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
    assert sd.client_token_of(payload) == token


def test_client_token_of_rejects_long_token() -> None:
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
    if ok:
        sd.validate_thing_name(name)
    else:
        with pytest.raises(ShadowError):
            sd.validate_thing_name(name)


@pytest.mark.parametrize(
    ("name", "ok"), [("$cfg", True), ("x" * 64, True), ("x" * 65, False), ("a/b", False)]
)
def test_shadow_names(name: str, ok: bool) -> None:
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
    with pytest.raises(ShadowError) as info:
        sd.parse_update(payload)
    assert (info.value.code, info.value.message) == (400, "Invalid JSON")


def test_document_json_matches_a_fresh_encoding_and_never_goes_stale() -> None:
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
