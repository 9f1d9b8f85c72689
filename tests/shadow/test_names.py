"""The one thing-name rule (AWS IoT's), the shadow-name rule, and provisioning's stricter CN rule on top."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.errors import ThingNameNotAllowed
from provisioning.names import CN_MAX, check_thing_name
from provisioning.names import thing_name_problem as certificate_name_problem
from shadow.names import (
    SHADOW_NAME_MAX,
    THING_NAME_MAX,
    is_shadow_name,
    is_thing_name,
    thing_name_problem,
)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("robot-001", True, id="usual"),
        pytest.param("a:b_c-D9", True, id="every_allowed_class"),
        pytest.param("x", True, id="one_char"),
        pytest.param("x" * THING_NAME_MAX, True, id="128"),
        pytest.param("x" * (THING_NAME_MAX + 1), False, id="129"),
        pytest.param("", False, id="empty"),
        pytest.param("a.b", False, id="dot"),
        pytest.param("a b", False, id="space"),
        pytest.param("a/b", False, id="slash_would_split_topics"),
        pytest.param("robot-é", False, id="non_ascii"),
        pytest.param("$cfg", False, id="dollar_is_for_shadow_names_only"),
        pytest.param("robot\n", False, id="trailing_newline"),
    ],
)
def test_thing_name_rule(name: str, ok: bool) -> None:
    """AWS's thing-name pattern: 1-128 of [a-zA-Z0-9:_-]; a slash or a newline would break topics and logs."""
    assert is_thing_name(name) is ok
    assert (thing_name_problem(name) is None) is ok


@pytest.mark.parametrize(
    "placeholder",
    [
        pytest.param("+", id="mqtt_single_level"),
        pytest.param("#", id="mqtt_multi_level"),
        pytest.param("%u", id="mosquitto_username"),
        pytest.param("${iot:Connection.Thing.ThingName}", id="policy_variable"),
        pytest.param("*", id="policy_wildcard"),
    ],
)
def test_topic_placeholders_are_never_thing_names(placeholder: str) -> None:
    """Builders accept wildcards and placeholders; no robot may be called one (it would match others)."""
    assert not is_thing_name(placeholder)
    assert thing_name_problem(placeholder) is not None


@pytest.mark.parametrize("value", [None, 5, b"robot-1", ["robot-1"]], ids=["none", "int", "bytes", "list"])
def test_only_strings_are_names(value: object) -> None:
    """A config value of the wrong type (TOML int, bytes) is not a name rather than an exception."""
    assert not is_thing_name(value)
    assert not is_shadow_name(value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "", "thing name is empty (AWS IoT needs 1-128 characters of [a-zA-Z0-9:_-])", id="empty"
        ),
        pytest.param(
            "x" * 129, "thing name is 129 characters long; AWS IoT allows at most 128", id="too_long"
        ),
        pytest.param(
            "a.b c.d",
            "thing name 'a.b c.d' contains ' .'; AWS IoT allows only [a-zA-Z0-9:_-]",
            id="bad_chars",
        ),
    ],
)
def test_thing_name_problem_says_why(name: str, expected: str) -> None:
    """The reason names the rule broken, and each bad character once (sorted)."""
    assert thing_name_problem(name) == expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("config", True, id="usual"),
        pytest.param("$cfg", True, id="dollar_allowed"),
        pytest.param("x" * SHADOW_NAME_MAX, True, id="64"),
        pytest.param("x" * (SHADOW_NAME_MAX + 1), False, id="65"),
        pytest.param("", False, id="empty"),
        pytest.param("a/b", False, id="slash"),
        pytest.param("+", False, id="wildcard"),
    ],
)
def test_shadow_name_rule(name: str, ok: bool) -> None:
    """AWS's shadow-name pattern: 1-64 of [$a-zA-Z0-9:_-]; no slash, no wildcard."""
    assert is_shadow_name(name) is ok


@pytest.mark.parametrize(
    ("length", "rule"),
    [
        pytest.param(CN_MAX, None, id="64_fits_a_cn"),
        pytest.param(CN_MAX + 1, "cn", id="65_too_long_for_a_cn"),
        pytest.param(THING_NAME_MAX, "cn", id="128_aws_ok_cn_not"),
        pytest.param(THING_NAME_MAX + 1, "aws", id="129_aws_refuses"),
    ],
)
def test_certificate_rule_adds_the_cn_limit_to_the_aws_rule(length: int, rule: str | None) -> None:
    """65-128 characters: a legal thing but not a CN (X.509 limit); past 128, AWS's own reason wins."""
    name = "x" * length
    problem = certificate_name_problem(name)
    if rule is None:
        assert problem is None and check_thing_name(name) == name
        return
    assert problem is not None
    if rule == "cn":
        assert "certificate CN" in problem and f"limits to {CN_MAX}" in problem
    else:
        assert problem == thing_name_problem(name)
    with pytest.raises(ThingNameNotAllowed, match="thing name"):
        check_thing_name(name)


def test_certificate_rule_reports_bad_characters_as_aws_does() -> None:
    """A short name with a bad character gets exactly AWS's reason, not a CN one."""
    assert certificate_name_problem("robot.1") == thing_name_problem("robot.1")


@given(st.text(alphabet="ab:_-.$ /é", max_size=140))
def test_certificate_rule_is_the_aws_rule_plus_the_cn_limit(name: str) -> None:
    """Property: a name is a legal certificate thing name iff AWS accepts it and it fits in a CN."""
    assert (certificate_name_problem(name) is None) == (is_thing_name(name) and len(name) <= CN_MAX)
