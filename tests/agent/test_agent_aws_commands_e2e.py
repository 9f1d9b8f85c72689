"""AWS IoT Commands end to end: boto3 through the local cloud's ``local`` profile (the control plane of
``roomba-fleet up``), Mosquitto over mutual TLS, the agent as a subprocess and the simulator on a pty.

A command execution reaches the robot as its OI opcode exactly once and ends ``SUCCEEDED``, also when the
request is delivered a second time; an execution the robot never answers times out as AWS reports it
(``TIMED_OUT``, ``$NO_RESPONSE_FROM_DEVICE``, with the timeout it was given, and the event)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from base.testing import wait_until
from localcloud.layout import IOT_SERVICE_IDENTITY
from localcloud.testing import PahoRobot

CLEAN, SEEK_DOCK = 135, 143
ARN = "arn:aws:iot:us-east-1:000000000000"


def create_command(iot: Any, command_id: str, doc: dict[str, Any]) -> str:
    answer = iot.create_command(
        commandId=command_id,
        payload={"content": json.dumps(doc).encode(), "contentType": "application/json"},
    )
    return str(answer["commandArn"])


def start_execution(data: Any, thing: str, command_arn: str, timeout_s: int) -> str:
    """StartCommandExecution, once the cloud knows the thing (it picks up `robot add` within seconds)."""

    def started() -> str | None:
        try:
            answer = data.start_command_execution(
                targetArn=f"{ARN}:thing/{thing}", commandArn=command_arn, executionTimeoutSeconds=timeout_s
            )
        except data.exceptions.ResourceNotFoundException:
            return None
        return str(answer["executionId"])

    return str(wait_until(started, 20, f"the cloud to know thing {thing}"))


def execution(iot: Any, thing: str, execution_id: str) -> dict[str, Any]:
    return dict(iot.get_command_execution(executionId=execution_id, targetArn=f"{ARN}:thing/{thing}"))


def reported_at(cloud: Any, thing: str) -> int:
    """When the robot last reported its serial link (the shadow's metadata timestamp, whole seconds)."""
    accepted, doc = cloud.get_shadow(thing)
    stamp = doc.get("metadata", {}).get("reported", {}).get("link", {}).get("serial", {}) if accepted else {}
    return int(stamp.get("timestamp", 0))


@pytest.mark.slow
def test_boto3_command_execution_runs_once_on_the_robot_and_ends_succeeded(rig: dict[str, Any]) -> None:
    cloud, thing, op, sim, agent = rig["cloud"], rig["thing"], rig["operator"], rig["sim"], rig["agent"]
    iot, data = cloud.boto3_client("iot"), cloud.boto3_client("iot-jobs-data")
    agent.start()
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 20, "first report")
    watcher = PahoRobot(cloud, IOT_SERVICE_IDENTITY, client_id=f"{thing}-watcher")
    watcher.subscribe(
        f"$aws/commands/things/{thing}/executions/+/response/json",
        f"$aws/events/commandExecution/dock-{thing}/+",
    )
    try:
        command_arn = create_command(iot, f"dock-{thing}", {"action": "dock"})
        execution_id = start_execution(data, thing, command_arn, 30)
        got = wait_until(
            lambda: (e := execution(iot, thing, execution_id))["status"] == "SUCCEEDED" and e, 20, "SUCCEEDED"
        )
        assert got["executionTimeoutSeconds"] == 30 and got["startedAt"] <= got["completedAt"]
        wait_until(lambda: SEEK_DOCK in sim.opcodes(), 10, "Seek Dock on the robot")
        assert sim.opcodes().count(SEEK_DOCK) == 1
        seen = watcher.collect(5, timeout=10)
        updates = [p["status"] for t, p in seen if t.endswith("/response/json")]
        events = [(t.rsplit("/", 1)[1], p["executionId"]) for t, p in seen if t.startswith("$aws/events/")]
        assert updates == ["IN_PROGRESS", "SUCCEEDED"]
        assert events == [(s, execution_id) for s in ("CREATED", "IN_PROGRESS", "SUCCEEDED")]

        # the broker delivers the request a second time (as QoS 1 may): answered from the ledger, not rerun
        request = f"$aws/commands/things/{thing}/executions/{execution_id}/request/json"
        watcher.publish(request, {"action": "dock"})
        again = watcher.collect(1, timeout=10)
        assert [(t.endswith(f"{execution_id}/response/json"), p["status"]) for t, p in again] == [
            (True, "SUCCEEDED")
        ]
        time.sleep(0.5)  # a second run would have reached the robot by now
        assert sim.opcodes().count(SEEK_DOCK) == 1
        assert execution(iot, thing, execution_id)["status"] == "SUCCEEDED"
        counters = wait_until(
            lambda: (
                (c := agent.status().get("metrics", {}).get("counters", {})).get("aws_commands_duplicate")
                and c
            ),
            10,
            "the duplicate in the agent's status file",
        )
        assert counters["aws_commands_duplicate"] == 1 and counters["aws_commands_accepted"] == 1
    finally:
        watcher.close()
    assert agent.stop() == 0
    assert agent.tracebacks() == []


@pytest.mark.slow
def test_an_execution_the_robot_never_answers_times_out_as_aws_reports_it(rig: dict[str, Any]) -> None:
    """No agent runs for this robot: the cloud ends the execution TIMED_OUT with AWS's reason code after the
    timeout it was given, and says so on the commandExecution event topic."""
    cloud, thing = rig["cloud"], rig["thing"]
    iot, data = cloud.boto3_client("iot"), cloud.boto3_client("iot-jobs-data")
    watcher = PahoRobot(cloud, IOT_SERVICE_IDENTITY, client_id=f"{thing}-watcher")
    watcher.subscribe(f"$aws/events/commandExecution/clean-{thing}/+")
    try:
        command_arn = create_command(iot, f"clean-{thing}", {"action": "clean"})
        started = time.time()
        execution_id = start_execution(data, thing, command_arn, 2)
        assert execution(iot, thing, execution_id)["status"] == "CREATED"
        got = wait_until(
            lambda: (e := execution(iot, thing, execution_id))["status"] == "TIMED_OUT" and e, 15, "TIMED_OUT"
        )
        assert got["statusReason"] == {"reasonCode": "$NO_RESPONSE_FROM_DEVICE"}
        assert got["executionTimeoutSeconds"] == 2
        assert (got["lastUpdatedAt"] - got["createdAt"]).total_seconds() >= 2
        assert got["createdAt"].timestamp() >= started - 1
        seen = dict(watcher.collect(2, timeout=10))
        timed_out = seen[f"$aws/events/commandExecution/clean-{thing}/TIMED_OUT"]
        assert timed_out["executionId"] == execution_id and timed_out["eventType"] == "COMMAND_EXECUTION"
        assert timed_out["statusReason"]["reasonCode"] == "$NO_RESPONSE_FROM_DEVICE"
        listed = iot.list_command_executions(targetArn=f"{ARN}:thing/{thing}", status="TIMED_OUT")
        assert [e["executionId"] for e in listed["commandExecutions"]] == [execution_id]
    finally:
        watcher.close()


@pytest.mark.slow
def test_a_request_sent_while_the_agent_is_down_times_out_and_never_runs_late(rig: dict[str, Any]) -> None:
    """The agent starts each process with a clean MQTT session, and AWS IoT Commands has no "pending
    executions" request for a device: a request sent while the agent is down is never delivered, so it
    times out in the cloud and does not run when the agent is back; the next one runs."""
    cloud, thing, op, sim, agent = rig["cloud"], rig["thing"], rig["operator"], rig["sim"], rig["agent"]
    iot, data = cloud.boto3_client("iot"), cloud.boto3_client("iot-jobs-data")
    agent.start()
    op.wait_reported(lambda r: r.get("link", {}).get("serial") == "up", 20, "first report")
    assert agent.stop() == 0
    command_arn = create_command(iot, f"clean-{thing}", {"action": "clean"})
    missed = start_execution(data, thing, command_arn, 2)
    wait_until(lambda: execution(iot, thing, missed)["status"] == "TIMED_OUT", 15, "TIMED_OUT")
    back = int(time.time())
    agent.start()
    # its full report after the reconnect comes after its subscriptions (one connection, in order)
    wait_until(lambda: reported_at(cloud, thing) >= back, 20, "the agent's report after its restart")
    second = start_execution(data, thing, command_arn, 30)
    wait_until(lambda: execution(iot, thing, second)["status"] == "SUCCEEDED", 20, "the next one SUCCEEDED")
    wait_until(lambda: CLEAN in sim.opcodes(), 10, "Clean on the robot")
    assert sim.opcodes().count(CLEAN) == 1
    assert execution(iot, thing, missed)["status"] == "TIMED_OUT"
    assert agent.stop() == 0
    assert agent.tracebacks() == []
