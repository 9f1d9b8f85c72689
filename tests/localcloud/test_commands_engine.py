"""The Commands engine against AWS's documented behaviour and payloads (docs/commands.md lists the sources).

Device updates are written the way AWS's device SDKs serialise ``UpdateCommandExecutionRequest``
(``status``, ``statusReason {reasonCode, reasonDescription}``, ``result`` with lower-case ``s``/``b``/``bin``).
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import pytest

from localcloud.awsapi.errors import ApiError
from localcloud.commands.engine import CommandsEngine

THING = "robot-1"
ARN = "arn:aws:iot:us-east-1:000000000000"
TARGET = f"{ARN}:thing/{THING}"
T0 = 1_760_000_000.0


def engine(things: tuple[str, ...] = (THING,), **kw: Any) -> CommandsEngine:
    ids = (f"exec-{n}" for n in itertools.count(1))
    return CommandsEngine(things=lambda name: name in things, new_id=lambda: next(ids), **kw)


def create(eng: CommandsEngine, command_id: str = "clean", doc: Any = None, **extra: Any) -> dict[str, Any]:
    content = json.dumps(doc if doc is not None else {"action": "clean"}).encode()
    params = {
        "commandId": command_id,
        "payload": {"content": base64.b64encode(content).decode(), "contentType": "application/json"},
        **extra,
    }
    result, out = eng.call("CreateCommand", params, T0)
    assert out == []
    return result


def start(
    eng: CommandsEngine, command_id: str = "clean", now: float = T0, **extra: Any
) -> tuple[str, list[tuple[str, bytes]]]:
    params = {"targetArn": TARGET, "commandArn": f"{ARN}:command/{command_id}", **extra}
    result, out = eng.call("StartCommandExecution", params, now)
    return result["executionId"], out


def get(eng: CommandsEngine, execution_id: str, **extra: Any) -> dict[str, Any]:
    return eng.call("GetCommandExecution", {"executionId": execution_id, "targetArn": TARGET, **extra}, T0)[0]


def respond(eng: CommandsEngine, execution_id: str, body: Any, now: float) -> list[tuple[str, Any]]:
    topic = f"$aws/commands/things/{THING}/executions/{execution_id}/response/json"
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return [(t, json.loads(p)) for t, p in eng.handle(topic, raw, now)]


def api_error(fn: Any, *args: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        fn(*args)
    return info.value


def test_create_and_get_command_as_aws_returns_it() -> None:
    eng = engine()
    assert create(eng, displayName="Clean", description="start a mission") == {
        "commandId": "clean",
        "commandArn": f"{ARN}:command/clean",
    }
    got = eng.call("GetCommand", {"commandId": "clean"}, T0 + 1)[0]
    assert got["namespace"] == "AWS-IoT"
    assert got["displayName"] == "Clean"
    assert json.loads(base64.b64decode(got["payload"]["content"])) == {"action": "clean"}
    assert got["payload"]["contentType"] == "application/json"
    assert got["createdAt"] == got["lastUpdatedAt"] == T0
    assert got["deprecated"] is False and got["pendingDeletion"] is False
    err = api_error(create, eng)
    assert (err.status, err.code) == (409, "ConflictException")
    err = api_error(eng.call, "GetCommand", {"commandId": "nope"}, T0)
    assert (err.status, err.code) == (404, "ResourceNotFoundException")
    err = api_error(eng.call, "CreateCommand", {"commandId": "bad id!", "payload": {"content": ""}}, T0)
    assert (err.status, err.code) == (400, "ValidationException")


def test_start_publishes_the_payload_on_the_json_request_topic_and_the_created_event() -> None:
    eng = engine()
    create(eng)
    execution_id, out = start(eng, executionTimeoutSeconds=30)
    assert execution_id == "exec-1"
    (request_topic, request), (event_topic, event) = out
    assert request_topic == f"$aws/commands/things/{THING}/executions/exec-1/request/json"
    assert json.loads(request) == {"action": "clean"}
    assert event_topic == "$aws/events/commandExecution/clean/CREATED"
    assert json.loads(event) == {
        "executionId": "exec-1",
        "status": "CREATED",
        "eventType": "COMMAND_EXECUTION",
        "commandArn": f"{ARN}:command/clean",
        "targetArn": TARGET,
        "timestamp": int(T0 * 1000),
    }
    got = get(eng, execution_id)
    assert got["status"] == "CREATED"
    assert got["executionTimeoutSeconds"] == 30
    assert got["createdAt"] == T0 and "startedAt" not in got and "completedAt" not in got


@pytest.mark.parametrize(
    ("content_type", "content", "suffix"),
    [
        ("application/cbor", b"\xa1\x61a\x01", "/cbor"),
        ("text/plain", b"clean", ""),
        (None, b'{"action":"dock"}', "/json"),
        (None, b"not json", ""),
    ],
    ids=["cbor", "generic", "json_without_type", "opaque_without_type"],
)
def test_the_request_topic_follows_the_payload_format(
    content_type: str | None, content: bytes, suffix: str
) -> None:
    eng = engine()
    payload: dict[str, Any] = {"content": base64.b64encode(content).decode()}
    if content_type:
        payload["contentType"] = content_type
    eng.call("CreateCommand", {"commandId": "c", "payload": payload}, T0)
    _, out = start(eng, "c")
    assert out[0] == (f"$aws/commands/things/{THING}/executions/exec-1/request{suffix}", content)


def test_a_device_run_in_progress_then_succeeded_with_a_result() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng)
    out = respond(eng, execution_id, {"status": "IN_PROGRESS"}, T0 + 1)
    accepted = f"$aws/commands/things/{THING}/executions/{execution_id}/response/accepted/json"
    assert out[0] == (accepted, {"executionId": execution_id})
    assert out[1][0] == "$aws/events/commandExecution/clean/IN_PROGRESS"
    final = {
        "status": "SUCCEEDED",
        "statusReason": {"reasonCode": "DONE", "reasonDescription": "mission started"},
        "result": {"mode": {"s": "cleaning"}, "docked": {"b": False}, "raw": {"bin": "AQI="}},
    }
    out = respond(eng, execution_id, final, T0 + 2)
    assert out[0] == (accepted, {"executionId": execution_id})
    topic, event = out[1]
    assert topic == "$aws/events/commandExecution/clean/SUCCEEDED"
    assert event["statusReason"] == {"reasonCode": "DONE", "reasonDescription": "mission started"}
    got = get(eng, execution_id, includeResult=True)
    assert got["status"] == "SUCCEEDED"
    assert got["result"] == {"mode": {"S": "cleaning"}, "docked": {"B": False}, "raw": {"BIN": "AQI="}}
    assert (got["startedAt"], got["completedAt"], got["lastUpdatedAt"]) == (T0 + 1, T0 + 2, T0 + 2)
    assert "result" not in get(eng, execution_id, includeResult=False)


def test_terminal_executions_take_no_more_updates() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng)
    respond(eng, execution_id, {"status": "FAILED", "statusReason": {"reasonCode": "LINK_DOWN"}}, T0 + 1)
    rejected = f"$aws/commands/things/{THING}/executions/{execution_id}/response/rejected/json"
    ((topic, body),) = respond(eng, execution_id, {"status": "SUCCEEDED"}, T0 + 2)
    assert topic == rejected
    assert body["error"] == "TerminalStateReached" and body["executionId"] == execution_id
    ((_, body),) = respond(eng, execution_id, {"status": "IN_PROGRESS"}, T0 + 3)
    assert body["error"] == "InvalidStateTransition"
    assert get(eng, execution_id)["status"] == "FAILED"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", "InvalidJson"),
        ([1, 2], "InvalidRequest"),
        ({"status": "CREATED"}, "InvalidRequest"),
        ({"status": "DONE"}, "InvalidRequest"),
        ({"status": "FAILED", "statusReason": {"reasonCode": "lower case"}}, "InvalidRequest"),
        (
            {"status": "FAILED", "statusReason": {"reasonCode": "X", "reasonDescription": "d" * 1025}},
            "InvalidRequest",
        ),
        ({"status": "SUCCEEDED", "result": {"x": {"i": 3}}}, "InvalidRequest"),
    ],
    ids=[
        "bad_json",
        "not_object",
        "created_not_settable",
        "unknown_status",
        "bad_code",
        "long_reason",
        "bad_result",
    ],
)
def test_invalid_updates_are_rejected_with_aws_error_codes(body: Any, code: str) -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng)
    ((topic, answer),) = respond(eng, execution_id, body, T0 + 1)
    assert topic.endswith("/response/rejected/json")
    assert answer["error"] == code
    assert get(eng, execution_id)["status"] == "CREATED"


def test_an_update_for_an_unknown_execution_or_another_thing_is_resource_not_found() -> None:
    eng = engine(things=(THING, "robot-2"))
    create(eng)
    execution_id, _ = start(eng)
    ((_, answer),) = respond(eng, "no-such", {"status": "SUCCEEDED"}, T0)
    assert answer["error"] == "ResourceNotFound"
    other = f"$aws/commands/things/robot-2/executions/{execution_id}/response/json"
    ((topic, raw),) = eng.handle(other, b'{"status":"SUCCEEDED"}', T0)
    assert topic == f"$aws/commands/things/robot-2/executions/{execution_id}/response/rejected/json"
    assert json.loads(raw)["error"] == "ResourceNotFound"


def test_the_engines_own_topics_are_ignored() -> None:
    eng = engine()
    create(eng)
    execution_id, out = start(eng)
    for topic, payload in out:
        assert eng.handle(topic, payload, T0) == []
    assert (
        eng.handle(
            f"$aws/commands/things/{THING}/executions/{execution_id}/response/accepted/json", b"{}", T0
        )
        == []
    )


def test_an_execution_nobody_answers_times_out_as_aws_reports_it() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng, executionTimeoutSeconds=5)
    assert eng.next_deadline() == T0 + 5
    assert eng.tick(T0 + 4.9) == []
    ((topic, raw),) = eng.tick(T0 + 5)
    assert topic == "$aws/events/commandExecution/clean/TIMED_OUT"
    event = json.loads(raw)
    assert event["status"] == "TIMED_OUT"
    assert event["statusReason"] == {"reasonCode": "$NO_RESPONSE_FROM_DEVICE", "reasonDescription": ""}
    got = get(eng, execution_id)
    assert got["status"] == "TIMED_OUT"
    assert got["statusReason"] == {"reasonCode": "$NO_RESPONSE_FROM_DEVICE"}
    assert got["executionTimeoutSeconds"] == 5
    assert "startedAt" not in got
    assert eng.next_deadline() is None
    assert eng.tick(T0 + 100) == []


def test_the_default_timeout_is_ten_seconds_and_at_most_twelve_hours() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng)
    assert get(eng, execution_id)["executionTimeoutSeconds"] == 10
    assert eng.next_deadline() == T0 + 10
    for bad in (0, 12 * 3600 + 1):
        with pytest.raises(ApiError) as info:
            start(eng, executionTimeoutSeconds=bad)
        assert info.value.code == "ValidationException"


def test_a_cloud_timeout_is_not_terminal_but_a_device_timeout_is() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng, executionTimeoutSeconds=1)
    eng.tick(T0 + 1)
    ((_, answer),) = respond(eng, execution_id, {"status": "IN_PROGRESS"}, T0 + 2)
    assert answer["error"] == "InvalidStateTransition"
    out = respond(eng, execution_id, {"status": "SUCCEEDED"}, T0 + 3)
    assert out[0][1] == {"executionId": execution_id}
    assert out[1][0] == "$aws/events/commandExecution/clean/SUCCEEDED"
    assert get(eng, execution_id)["status"] == "SUCCEEDED"

    second, _ = start(eng, now=T0 + 10)
    respond(eng, second, {"status": "TIMED_OUT", "statusReason": {"reasonCode": "TOO_SLOW"}}, T0 + 11)
    ((_, answer),) = respond(eng, second, {"status": "SUCCEEDED"}, T0 + 12)
    assert answer["error"] == "InvalidStateTransition"  # AWS: "updating a device-initiated TIMED_OUT"


def test_an_answered_execution_does_not_time_out() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng, executionTimeoutSeconds=5)
    respond(eng, execution_id, {"status": "SUCCEEDED"}, T0 + 1)
    assert eng.next_deadline() is None
    assert eng.tick(T0 + 10) == []
    assert get(eng, execution_id)["status"] == "SUCCEEDED"


def test_an_in_progress_execution_still_times_out() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng, executionTimeoutSeconds=5)
    respond(eng, execution_id, {"status": "IN_PROGRESS"}, T0 + 1)
    ((topic, _),) = eng.tick(T0 + 5)
    assert topic.endswith("/TIMED_OUT")
    assert get(eng, execution_id)["startedAt"] == T0 + 1


def test_start_checks_command_and_target() -> None:
    eng = engine()
    create(eng)
    cases = [
        (
            {"targetArn": f"{ARN}:thing/ghost", "commandArn": f"{ARN}:command/clean"},
            404,
            "ResourceNotFoundException",
        ),
        ({"targetArn": TARGET, "commandArn": f"{ARN}:command/ghost"}, 404, "ResourceNotFoundException"),
        ({"targetArn": "robot-1", "commandArn": f"{ARN}:command/clean"}, 400, "ValidationException"),
        ({"commandArn": f"{ARN}:command/clean"}, 400, "ValidationException"),
    ]
    for params, status, code in cases:
        err = api_error(eng.call, "StartCommandExecution", params, T0)
        assert (err.status, err.code) == (status, code), params
    eng.call("UpdateCommand", {"commandId": "clean", "deprecated": True}, T0)
    err = api_error(start, eng)
    assert err.code == "ConflictException"


def test_client_token_makes_start_idempotent() -> None:
    eng = engine()
    create(eng)
    first, out = start(eng, clientToken="tok-1")
    assert len(out) == 2
    again, out = start(eng, clientToken="tok-1")
    assert (again, out) == (first, [])
    with pytest.raises(ApiError) as info:
        start(eng, clientToken="tok-1", executionTimeoutSeconds=99)
    assert info.value.code == "ConflictException"
    other, _ = start(eng, clientToken="tok-2")
    assert other != first


def test_list_command_executions_filters_sorts_and_pages() -> None:
    eng = engine()
    create(eng)
    create(eng, "dock", {"action": "dock"})
    ids = [start(eng, "clean" if i % 2 else "dock", now=T0 + i)[0] for i in range(5)]
    respond(eng, ids[0], {"status": "SUCCEEDED"}, T0 + 10)
    listed = eng.call("ListCommandExecutions", {"targetArn": TARGET}, T0 + 20)[0]["commandExecutions"]
    assert [e["executionId"] for e in listed] == ids[::-1]
    assert set(listed[0]) >= {"commandArn", "executionId", "targetArn", "status", "createdAt"}
    clean = eng.call(
        "ListCommandExecutions", {"commandArn": f"{ARN}:command/clean", "sortOrder": "ASCENDING"}, T0
    )
    assert [e["executionId"] for e in clean[0]["commandExecutions"]] == [ids[1], ids[3]]
    done = eng.call("ListCommandExecutions", {"status": "SUCCEEDED"}, T0)[0]["commandExecutions"]
    assert [e["executionId"] for e in done] == [ids[0]]
    page1 = eng.call("ListCommandExecutions", {"maxResults": 2}, T0)[0]
    page2 = eng.call("ListCommandExecutions", {"maxResults": 2, "nextToken": page1["nextToken"]}, T0)[0]
    page3 = eng.call("ListCommandExecutions", {"maxResults": 2, "nextToken": page2["nextToken"]}, T0)[0]
    seen = [e["executionId"] for p in (page1, page2, page3) for e in p["commandExecutions"]]
    assert seen == ids[::-1] and "nextToken" not in page3
    completed = eng.call("ListCommandExecutions", {"completedTimeFilter": {"after": str(T0 + 5)}}, T0)[0][
        "commandExecutions"
    ]
    assert [e["executionId"] for e in completed] == [ids[0]]


def test_delete_execution_only_when_terminal() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng)
    err = api_error(
        eng.call, "DeleteCommandExecution", {"executionId": execution_id, "targetArn": TARGET}, T0
    )
    assert err.code == "ConflictException"
    respond(eng, execution_id, {"status": "SUCCEEDED"}, T0 + 1)
    eng.take_dirty()
    assert eng.call("DeleteCommandExecution", {"executionId": execution_id, "targetArn": TARGET}, T0)[0] == {}
    assert eng.take_dirty() == {("execution", execution_id): None}
    err = api_error(get, eng, execution_id)
    assert err.code == "ResourceNotFoundException"


def test_delete_command_is_pending_for_twelve_hours_unless_long_deprecated() -> None:
    eng = engine()
    create(eng)
    assert eng.call("DeleteCommand", {"commandId": "clean"}, T0)[0] == {"statusCode": 202}
    assert eng.call("GetCommand", {"commandId": "clean"}, T0)[0]["pendingDeletion"] is True
    assert api_error(start, eng).code == "ConflictException"
    assert eng.next_deadline() == T0 + 12 * 3600
    eng.take_dirty()
    assert eng.tick(T0 + 12 * 3600) == []
    assert eng.take_dirty() == {("command", "clean"): None}
    assert api_error(eng.call, "GetCommand", {"commandId": "clean"}, T0).code == "ResourceNotFoundException"

    create(eng, "old")
    eng.call("UpdateCommand", {"commandId": "old", "deprecated": True}, T0)
    assert eng.call("DeleteCommand", {"commandId": "old"}, T0 + 12 * 3600)[0] == {"statusCode": 204}
    assert "old" not in eng.commands


def test_update_and_list_commands() -> None:
    eng = engine()
    create(eng, "a", mandatoryParameters=[{"name": "speed", "type": "INTEGER", "defaultValue": {"I": 1}}])
    create(eng, "b")
    updated = eng.call("UpdateCommand", {"commandId": "a", "displayName": "A", "deprecated": True}, T0 + 5)[0]
    assert updated == {"commandId": "a", "displayName": "A", "deprecated": True, "lastUpdatedAt": T0 + 5}
    listed = eng.call("ListCommands", {"sortOrder": "ASCENDING"}, T0)[0]["commands"]
    assert [c["commandId"] for c in listed] == ["a", "b"]
    assert listed[0]["deprecated"] is True
    with_param = eng.call("ListCommands", {"commandParameterName": "speed"}, T0)[0]["commands"]
    assert [c["commandId"] for c in with_param] == ["a"]


def test_state_survives_a_restart_through_the_dirty_records() -> None:
    eng = engine()
    create(eng)
    execution_id, _ = start(eng, executionTimeoutSeconds=5, clientToken="tok")
    respond(eng, execution_id, {"status": "IN_PROGRESS"}, T0 + 1)
    records = {k: v for k, v in eng.take_dirty().items() if v is not None}
    assert set(records) == {("command", "clean"), ("execution", execution_id)}
    json.dumps(list(records.values()))  # JSON-able, as the service stores them
    again = engine(records=records)
    assert get(again, execution_id)["status"] == "IN_PROGRESS"
    assert again.next_deadline() == T0 + 5
    assert start(again, clientToken="tok", executionTimeoutSeconds=5)[0] == execution_id
    ((topic, _),) = again.tick(T0 + 5)
    assert topic.endswith("/TIMED_OUT")


def test_requeue_dirty_keeps_what_a_failed_commit_lost() -> None:
    eng = engine()
    create(eng)
    lost = eng.take_dirty()
    assert eng.take_dirty() == {}
    eng.requeue_dirty(lost)
    assert set(eng.take_dirty()) == {("command", "clean")}


def test_operations_and_their_services_match_botocore() -> None:
    import botocore.session

    session = botocore.session.get_session()
    for op in CommandsEngine.OPERATIONS:
        service = CommandsEngine.SERVICES[op]
        assert op in session.get_service_model(service).operation_names, (service, op)
