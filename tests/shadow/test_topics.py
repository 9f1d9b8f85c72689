"""Every topic builder gives AWS's exact string, for real things, wildcards and placeholders; parsers
take back exactly what the builders make and nothing else."""

from __future__ import annotations

import pytest

from shadow import topics
from shadow.topics import (
    ANY,
    JOBS_NEXT,
    SHADOW_OPERATIONS,
    SHADOW_RESPONSES,
    SHADOW_UPDATE_EVENTS,
    ShadowTopic,
    parse_agent_topic,
    parse_shadow_request,
    parse_shadow_topic,
    shadow_topic,
)

POLICY_THING = "${iot:Connection.Thing.ThingName}"


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        pytest.param(topics.things_prefix("r1"), "$aws/things/r1", id="things_prefix"),
        pytest.param(topics.shadow_prefix("r1"), "$aws/things/r1/shadow", id="classic_prefix"),
        pytest.param(topics.shadow_prefix("r1", ""), "$aws/things/r1/shadow", id="empty_name_is_classic"),
        pytest.param(topics.shadow_prefix("r1", "cfg"), "$aws/things/r1/shadow/name/cfg", id="named_prefix"),
        pytest.param(shadow_topic("r1", "update"), "$aws/things/r1/shadow/update", id="classic_request"),
        pytest.param(
            shadow_topic("r1", "update", "accepted"),
            "$aws/things/r1/shadow/update/accepted",
            id="classic_reply",
        ),
        pytest.param(
            shadow_topic("r1", "get", "rejected", name="cfg"),
            "$aws/things/r1/shadow/name/cfg/get/rejected",
            id="named_reply",
        ),
        pytest.param(
            shadow_topic("r1", "update", "delta", name="$cfg"),
            "$aws/things/r1/shadow/name/$cfg/update/delta",
            id="dollar_shadow_name",
        ),
        pytest.param(shadow_topic(ANY, ANY), "$aws/things/+/shadow/+", id="service_filter_classic"),
        pytest.param(
            shadow_topic(ANY, ANY, name=ANY), "$aws/things/+/shadow/name/+/+", id="service_filter_named"
        ),
        pytest.param(
            shadow_topic(ANY, "update", "documents"), "$aws/things/+/shadow/update/documents", id="any_thing"
        ),
        pytest.param(shadow_topic("%u", "#"), "$aws/things/%u/shadow/#", id="mosquitto_username"),
        pytest.param(
            shadow_topic("%u", "update", name=ANY),
            "$aws/things/%u/shadow/name/+/update",
            id="mosquitto_named",
        ),
        pytest.param(
            shadow_topic(POLICY_THING, "*"),
            "$aws/things/${iot:Connection.Thing.ThingName}/shadow/*",
            id="policy_variable",
        ),
        pytest.param(topics.jobs_prefix("r1"), "$aws/things/r1/jobs", id="jobs_prefix"),
        pytest.param(
            topics.jobs_topic("r1", "start-next", "accepted"),
            "$aws/things/r1/jobs/start-next/accepted",
            id="jobs_reply",
        ),
        pytest.param(
            topics.jobs_topic("r1", JOBS_NEXT, "get"), "$aws/things/r1/jobs/$next/get", id="jobs_next"
        ),
        pytest.param(
            topics.jobs_topic("r1", "job-42", "update"), "$aws/things/r1/jobs/job-42/update", id="jobs_by_id"
        ),
        pytest.param(
            topics.jobs_topic("r1", "notify-next"), "$aws/things/r1/jobs/notify-next", id="jobs_notify"
        ),
        pytest.param(topics.jobs_topic("%u", "#"), "$aws/things/%u/jobs/#", id="jobs_mosquitto"),
        pytest.param(topics.agent_prefix("#"), "roomba/#", id="agent_everything"),
        pytest.param(topics.telemetry_topic("r1"), "roomba/r1/telemetry", id="telemetry"),
        pytest.param(topics.events_topic("r1"), "roomba/r1/events", id="events"),
        pytest.param(topics.metrics_topic("r1"), "roomba/r1/metrics", id="metrics"),
        pytest.param(topics.presence_topic("r1"), "roomba/r1/presence", id="presence"),
        pytest.param(topics.presence_topic(ANY), "roomba/+/presence", id="presence_of_every_robot"),
        pytest.param(
            topics.agent_topic(POLICY_THING, "events"),
            "roomba/${iot:Connection.Thing.ThingName}/events",
            id="agent_policy_variable",
        ),
    ],
)
def test_builders_give_the_exact_topic(built: str, expected: str) -> None:
    """Each builder's exact string, for a thing, a wildcard, Mosquitto's %u and the policy variable."""
    assert built == expected


def test_jobs_and_agent_topic_lists_are_what_devices_publish() -> None:
    """The lists the broker ACL and the IoT policy are generated from: a change here changes both."""
    assert topics.JOBS_REQUESTS == ("get", "start-next", "+/get", "+/update")
    assert topics.JOBS_NOTIFICATIONS == ("notify", "notify-next")
    assert topics.AGENT_TOPICS == ("telemetry", "events", "metrics", "presence")
    assert topics.RETAINED_TOPICS == ("presence",)
    assert set(topics.RETAINED_TOPICS) <= set(topics.AGENT_TOPICS)


def test_unknown_agent_topic_is_refused() -> None:
    """A typo in an agent topic kind fails loudly instead of publishing where no one listens."""
    with pytest.raises(ValueError, match="unknown agent topic 'status'"):
        topics.agent_topic("r1", "status")


def _every_shadow_topic() -> list[tuple[str, str, str]]:
    out = [(op, "", "") for op in SHADOW_OPERATIONS]
    out += [(op, response, "") for op in SHADOW_OPERATIONS for response in SHADOW_RESPONSES]
    out += [("update", event, "") for event in SHADOW_UPDATE_EVENTS]
    return out + [(op, response, "cfg") for op, response, _ in out]


@pytest.mark.parametrize(("operation", "response", "name"), _every_shadow_topic())
def test_parse_takes_back_every_built_shadow_topic(operation: str, response: str, name: str) -> None:
    """Round trip, and a request's ``reply()`` is the builder's topic for that response."""
    topic = shadow_topic("robot-1", operation, *([response] if response else []), name=name or None)
    parsed = parse_shadow_topic(topic)
    prefix = topics.shadow_prefix("robot-1", name or None)
    assert parsed == ShadowTopic("robot-1", name, operation, prefix, response)
    assert (parse_shadow_request(topic) is not None) == (response == "")
    for reply in SHADOW_RESPONSES:
        assert parsed.reply(reply) == shadow_topic("robot-1", operation, reply, name=name or None)


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("$aws/things/r1/shadow", id="no_operation"),
        pytest.param("$aws/things/r1/shadow/name/cfg", id="named_no_operation"),
        pytest.param("$aws/things/r1/shadow/name", id="name_without_shadow"),
        pytest.param("$aws/things/r1/shadow/list", id="unknown_operation"),
        pytest.param("$aws/things/r1/shadow/get/delta", id="delta_is_update_only"),
        pytest.param("$aws/things/r1/shadow/delete/documents", id="documents_is_update_only"),
        pytest.param("$aws/things/r1/shadow/update/accepted/x", id="too_deep"),
        pytest.param("$aws/things/r1/shadow/name/cfg/get/accepted/x", id="named_too_deep"),
        pytest.param("$aws/things/r1/shadow/update/maybe", id="unknown_response"),
        pytest.param("$aws/things/r1/jobs/get", id="jobs"),
        pytest.param("$aws/r1/shadow/get/x", id="not_things"),
        pytest.param("aws/things/r1/shadow/get", id="no_dollar"),
        pytest.param("roomba/r1/telemetry", id="agent_topic"),
        pytest.param("", id="empty"),
    ],
)
def test_parse_refuses_what_is_not_a_shadow_topic(topic: str) -> None:
    """Anything but an exact shadow request or response topic is None, never an exception."""
    assert parse_shadow_topic(topic) is None
    assert parse_shadow_request(topic) is None


@pytest.mark.parametrize("kind", topics.AGENT_TOPICS)
def test_parse_agent_topic_round_trip(kind: str) -> None:
    """``roomba/<thing>/<kind>`` gives back the thing and the kind."""
    assert parse_agent_topic(topics.agent_topic("robot-7", kind)) == ("robot-7", kind)


@pytest.mark.parametrize(
    "topic",
    [
        pytest.param("roomba/r1/status", id="unknown_kind"),
        pytest.param("roomba//telemetry", id="no_thing"),
        pytest.param("roomba/r1/telemetry/x", id="too_deep"),
        pytest.param("roomba/r1", id="no_kind"),
        pytest.param("other/r1/telemetry", id="other_root"),
        pytest.param("$aws/things/r1/shadow/get", id="shadow_topic"),
    ],
)
def test_parse_agent_topic_refuses_others(topic: str) -> None:
    """Only ``roomba/<thing>/<known kind>``; deeper, shallower or unknown topics are None."""
    assert parse_agent_topic(topic) is None
