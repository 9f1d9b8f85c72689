"""The iot service as ``roomba-fleet up`` runs it (real Mosquitto over mutual TLS, real processes): the control
plane through the ``local`` profile, the Jobs data plane over HTTP, Commands dispatch, persistence across a
restart of ``up`` and of the service alone, the broker keeping robots to their own jobs topics, and a taken
api port refused with a clear error."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from base.testing import wait_until
from localcloud.cloud import read_aws_credentials
from localcloud.testing import LocalCloud, PahoRobot

pytestmark = pytest.mark.slow


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_up_runs_the_iot_service_and_says_where(local_cloud: LocalCloud) -> None:
    info = local_cloud.run_info()
    assert info["api_port"] == local_cloud.api_port
    assert info["children"]["iot-service"]
    assert info["aws_config"] == str(local_cloud.dir.aws_config)
    assert stat.S_IMODE(os.stat(local_cloud.dir.aws_credentials).st_mode) == 0o600
    config = local_cloud.dir.aws_config.read_text()
    assert f"endpoint_url = http://127.0.0.1:{local_cloud.api_port}" in config
    assert "iot_jobs_data_plane =" in config
    assert local_cloud.boto3_client("iot-jobs-data").meta.endpoint_url == local_cloud.api_url


def test_robots_of_the_cloud_are_things(local_cloud: LocalCloud) -> None:
    thing = _name("added-robot")
    local_cloud.add_robot(thing)
    iot = local_cloud.boto3_client("iot")
    described = wait_until(
        lambda: next((t for t in iot.list_things()["things"] if t["thingName"] == thing), None),
        20,
        "the added robot listed as a thing",
        interval=0.2,
    )
    assert described["thingArn"] == f"arn:aws:iot:us-east-1:000000000000:thing/{thing}"


def test_the_jobs_data_plane_over_http(local_cloud: LocalCloud) -> None:
    thing = _name("http-robot")
    local_cloud.add_robot(thing)
    iot = local_cloud.boto3_client("iot")
    data = local_cloud.boto3_client("iot-jobs-data")
    arn = iot.create_thing(thingName=thing)["thingArn"]
    iot.create_job(jobId=_name("http-job"), targets=[arn], document='{"step": "one"}')
    pending = data.get_pending_job_executions(thingName=thing)
    assert len(pending["queuedJobs"]) == 1 and pending["inProgressJobs"] == []
    started = data.start_next_pending_job_execution(thingName=thing, statusDetails={"phase": "begin"})[
        "execution"
    ]
    assert started["status"] == "IN_PROGRESS"
    assert json.loads(started["jobDocument"]) == {"step": "one"}  # a string over HTTP, as AWS documents
    described = data.describe_job_execution(thingName=thing, jobId=started["jobId"], includeJobDocument=True)
    assert described["execution"]["statusDetails"] == {"phase": "begin"}
    with pytest.raises(data.exceptions.ConflictException):
        data.update_job_execution(
            thingName=thing,
            jobId=started["jobId"],
            status="SUCCEEDED",
            expectedVersion=started["versionNumber"] + 7,
        )
    done = data.update_job_execution(
        thingName=thing,
        jobId=started["jobId"],
        status="SUCCEEDED",
        expectedVersion=started["versionNumber"],
        includeJobExecutionState=True,
    )
    assert done["executionState"]["status"] == "SUCCEEDED"
    with pytest.raises(data.exceptions.InvalidStateTransitionException):
        data.update_job_execution(thingName=thing, jobId=started["jobId"], status="FAILED")
    with pytest.raises(data.exceptions.ResourceNotFoundException):
        data.describe_job_execution(thingName=thing, jobId="no-such-job")


def test_commands_go_to_the_commands_engine(local_cloud: LocalCloud) -> None:
    thing = _name("cmd-robot")
    local_cloud.add_robot(thing)
    iot = local_cloud.boto3_client("iot")
    data = local_cloud.boto3_client("iot-jobs-data")
    thing_arn = iot.create_thing(thingName=thing)["thingArn"]
    command_arn = iot.create_command(
        commandId=_name("locate"),
        payload={"content": json.dumps({"command": "locate"}).encode(), "contentType": "application/json"},
    )["commandArn"]
    robot = PahoRobot(local_cloud, thing)
    try:
        robot.subscribe(f"$aws/commands/things/{thing}/executions/+/request/#")
        execution_id = data.start_command_execution(targetArn=thing_arn, commandArn=command_arn)[
            "executionId"
        ]
        [(topic, request)] = robot.collect(1, timeout=20)
        assert topic == f"$aws/commands/things/{thing}/executions/{execution_id}/request/json"
        assert request == {"command": "locate"}
        robot.publish(
            f"$aws/commands/things/{thing}/executions/{execution_id}/response/json", {"status": "SUCCEEDED"}
        )

        def finished() -> Any:
            got = iot.get_command_execution(executionId=execution_id, targetArn=thing_arn)
            return got if got["status"] == "SUCCEEDED" else None

        wait_until(finished, 20, "the command execution SUCCEEDED", interval=0.2)
        listed = iot.list_command_executions(commandArn=command_arn)["commandExecutions"]
        assert [e["executionId"] for e in listed] == [execution_id]
    finally:
        robot.close()


def test_a_robot_cannot_touch_another_robots_jobs(local_cloud: LocalCloud) -> None:
    alice, bob = _name("alice"), _name("bob")
    for robot_name in (alice, bob):
        local_cloud.add_robot(robot_name)
    iot = local_cloud.boto3_client("iot")
    bob_arn = iot.create_thing(thingName=bob)["thingArn"]
    iot.create_thing(thingName=alice)
    a, b = PahoRobot(local_cloud, alice), PahoRobot(local_cloud, bob)
    try:
        a.subscribe(f"$aws/things/{bob}/jobs/#")
        b.subscribe(f"$aws/things/{bob}/jobs/notify-next")
        job_id = _name("bobs-job")
        iot.create_job(jobId=job_id, targets=[bob_arn], document="{}")
        [(topic, event)] = b.collect(1, timeout=20)
        assert topic.endswith("/notify-next") and event["execution"]["jobId"] == job_id
        a.subscribe(f"$aws/things/{alice}/jobs/get/+")
        a.publish(f"$aws/things/{bob}/jobs/start-next", {"clientToken": "not-mine"})
        a.publish(
            f"$aws/things/{bob}/jobs/{job_id}/update", {"status": "SUCCEEDED", "clientToken": "not-mine"}
        )
        a.publish(f"$aws/things/{alice}/jobs/get", {"clientToken": "mine"})
        [(own_topic, own)] = a.collect(1, timeout=20)  # its own request is answered: the broker got them all
        assert own_topic == f"$aws/things/{alice}/jobs/get/accepted" and own["clientToken"] == "mine"
        assert a.quiet_for(0.5) == []  # nothing of bob's reached alice
        execution = iot.describe_job_execution(jobId=job_id, thingName=bob)["execution"]
        assert execution["status"] == "QUEUED"  # alice's start-next and update never reached the service
    finally:
        a.close()
        b.close()


def _job_state(cloud: LocalCloud, job_id: str, thing: str) -> tuple[str, str, int]:
    iot = cloud.boto3_client("iot")
    execution = iot.describe_job_execution(jobId=job_id, thingName=thing)["execution"]
    return iot.describe_job(jobId=job_id)["job"]["status"], execution["status"], execution["versionNumber"]


def test_state_survives_a_restart_of_up(new_cloud: Callable[..., LocalCloud]) -> None:
    cloud = new_cloud()
    keys = read_aws_credentials(cloud.dir)
    thing = "persist-robot"
    cloud.add_robot(thing)
    iot = cloud.boto3_client("iot")
    group_arn = iot.create_thing_group(thingGroupName="persist-group")["thingGroupArn"]
    iot.create_thing(thingName=thing)
    iot.create_job(jobId="persist-job", targets=[group_arn], document="{}", targetSelection="CONTINUOUS")
    iot.add_thing_to_thing_group(thingName=thing, thingGroupName="persist-group")
    cloud.boto3_client("iot-jobs-data").start_next_pending_job_execution(thingName=thing)
    before = _job_state(cloud, "persist-job", thing)
    assert before[:2] == ("IN_PROGRESS", "IN_PROGRESS")
    cloud.stop()

    again = new_cloud()
    assert read_aws_credentials(again.dir) == keys  # made once, kept
    assert _job_state(again, "persist-job", thing) == before
    iot = again.boto3_client("iot")
    assert [g["groupName"] for g in iot.list_thing_groups_for_thing(thingName=thing)["thingGroups"]] == [
        "persist-group"
    ]
    assert "persist-job" in [j["jobId"] for j in iot.list_jobs()["jobs"]]


def test_a_killed_service_is_restarted_and_answers_what_was_queued(
    new_cloud: Callable[..., LocalCloud],
) -> None:
    cloud = new_cloud()
    thing = "restart-robot"
    cloud.add_robot(thing)
    iot = cloud.boto3_client("iot")
    arn = iot.create_thing(thingName=thing)["thingArn"]
    iot.create_job(jobId="restart-job", targets=[arn], document='{"n": 1}')
    robot = PahoRobot(cloud, thing)
    try:
        robot.subscribe(f"$aws/things/{thing}/jobs/start-next/+")
        pid = cloud.child_pid("iot-service")
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not _alive(pid), 10, "the iot service gone")
        robot.publish(f"$aws/things/{thing}/jobs/start-next", {"clientToken": "while-down"})
        [(topic, answer)] = robot.collect(1, timeout=40)  # the broker queued it in the service's session
        assert topic.endswith("/start-next/accepted")
        assert (answer["clientToken"], answer["execution"]["jobId"]) == ("while-down", "restart-job")
    finally:
        robot.close()
    assert cloud.child_pid("iot-service") != pid
    assert _job_state(cloud, "restart-job", thing)[1] == "IN_PROGRESS"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_up_refuses_a_taken_api_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        api_port = taken.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            mqtt_port = probe.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleet.cli",
                "up",
                "--dir",
                str(tmp_path / "cloud"),
                "--port",
                str(mqtt_port),
                "--api-port",
                str(api_port),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert f"127.0.0.1:{api_port} is already in use" in done.stderr
    assert "--api-port" in done.stderr


def test_the_operator_reads_job_events(local_cloud: LocalCloud) -> None:
    import queue

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    op = local_cloud.operator()
    received: queue.Queue[tuple[str, Any]] = queue.Queue()
    subscribed = queue.Queue[None]()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=_name("events-op"), protocol=paho.MQTTv5)
    client.tls_set(ca_certs=str(op.ca), certfile=str(op.cert), keyfile=str(op.key))
    client.on_message = lambda _c, _u, m: received.put((m.topic, json.loads(m.payload)))
    client.on_subscribe = lambda *_a: subscribed.put(None)
    client.connect(local_cloud.endpoint, local_cloud.port)
    client.loop_start()
    try:
        client.subscribe("$aws/events/job/#", qos=1)
        subscribed.get(timeout=10)
        thing = _name("event-robot")
        local_cloud.add_robot(thing)
        iot = local_cloud.boto3_client("iot")
        arn = iot.create_thing(thingName=thing)["thingArn"]
        job_id = _name("event-job")
        iot.create_job(jobId=job_id, targets=[arn], document="{}")
        iot.cancel_job(jobId=job_id, comment="events test")
        topic, event = received.get(timeout=20)
        while not topic.endswith("/canceled"):
            topic, event = received.get(timeout=20)
        assert topic == f"$aws/events/job/{job_id}/canceled"
        assert (event["jobId"], event["status"]) == (job_id, "CANCELED")
    finally:
        client.loop_stop()
        client.disconnect()
