"""AWS's own SDK as the device side of the Jobs stand-in, driven by boto3 through the ``local`` profile.

Mirrors the flow of AWS's SDK integration test (aws-iot-device-sdk-python-v2 ``test/test_jobs.py``,
``_do_job_processing_test``): a CONTINUOUS job on a thing group, both notification streams open, nothing
pending, the thing added to the group, notify + notify-next (QUEUED), start-next, describe (IN_PROGRESS),
update to SUCCEEDED, the final empty notifications, nothing pending, ``delete_job(force=True)``. Run with
``IotJobsClientV2`` over MQTT 5 and over MQTT 3.1.1 (as AWS's test does), and with the V1 ``IotJobsClient``.

One difference from AWS's test: its thing name is random and any certificate may use it; here a robot's
certificate CN is its thing name (the broker's per-robot ACL), so the thing is a robot of the cloud.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from awscrt import mqtt, mqtt5, mqtt_request_response
from awscrt.mqtt_request_response import SubscriptionStatusEventType
from awsiot import ServiceStreamOptions, iotjobs, mqtt5_client_builder, mqtt_connection_builder

from localcloud.testing import LocalCloud

pytestmark = pytest.mark.slow

TIMEOUT = 30.0


class Events:
    """Stream events with a condition to wait on (AWS's TestContext)."""

    def __init__(self) -> None:
        self.signal = threading.Condition()
        self.changed: list[Any] = []  # jobs/notify
        self.next: list[Any] = []  # jobs/notify-next

    def add(self, into: list[Any], event: Any) -> None:
        with self.signal:
            into.append(event)
            self.signal.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self.signal:
            assert self.signal.wait_for(predicate, TIMEOUT), f"no {what} within {TIMEOUT} s"


class Context:
    """AWS's test set-up and tear-down, on the local cloud's control plane."""

    def __init__(self, cloud: LocalCloud) -> None:
        self.iot = cloud.boto3_client("iot")
        self.thing = f"jobs-sdk-{uuid.uuid4().hex[:12]}"
        cloud.add_robot(self.thing)
        self.group = f"tgn-{uuid.uuid4().hex}"
        self.group_arn = self.iot.create_thing_group(thingGroupName=self.group)["thingGroupArn"]
        self.iot.create_thing(thingName=self.thing)
        self.job_id = f"job-{uuid.uuid4().hex}"
        self.iot.create_job(
            jobId=self.job_id,
            document='{"test":"do-something"}',
            targets=[self.group_arn],
            targetSelection="CONTINUOUS",
        )
        self.events = Events()

    def tear_down(self) -> None:
        self.iot.delete_job(jobId=self.job_id, force=True)
        with pytest.raises(self.iot.exceptions.ResourceNotFoundException):
            self.iot.describe_job(jobId=self.job_id)
        self.iot.delete_thing(thingName=self.thing)
        self.iot.delete_thing_group(thingGroupName=self.group)


def _mqtt5_client(cloud: LocalCloud, thing: str) -> Iterator[mqtt5.Client]:
    ident = cloud.identity(thing)
    connected: Future[None] = Future()
    stopped: Future[None] = Future()
    client = mqtt5_client_builder.mtls_from_path(
        endpoint=cloud.endpoint,
        port=cloud.port,
        cert_filepath=str(ident.cert),
        pri_key_filepath=str(ident.key),
        ca_filepath=str(ident.ca),
        client_id=f"test-{uuid.uuid4().hex}",
        enable_metrics_collection=False,
        on_lifecycle_connection_success=lambda _d: connected.done() or connected.set_result(None),
        on_lifecycle_stopped=lambda _d: stopped.done() or stopped.set_result(None),
    )
    client.start()
    connected.result(TIMEOUT)
    yield client
    client.stop()
    stopped.result(TIMEOUT)


def _mqtt311_connection(cloud: LocalCloud, thing: str) -> Iterator[mqtt.Connection]:
    ident = cloud.identity(thing)
    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=cloud.endpoint,
        port=cloud.port,
        cert_filepath=str(ident.cert),
        pri_key_filepath=str(ident.key),
        ca_filepath=str(ident.ca),
        client_id=f"test-{uuid.uuid4().hex}",
        clean_session=True,
        keep_alive_secs=30,
        enable_metrics_collection=False,
    )
    connection.connect().result(TIMEOUT)
    yield connection
    connection.disconnect().result(TIMEOUT)


def _open_stream(factory: Callable[..., Any], request: Any, on_event: Callable[[Any], None]) -> Any:
    subscribed: Future[Any] = Future()

    def on_status(event: Any) -> None:
        if event.type == SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED and not subscribed.done():
            subscribed.set_result(event)

    stream = factory(
        request,
        ServiceStreamOptions(incoming_event_listener=on_event, subscription_status_listener=on_status),
    )
    stream.open()
    assert subscribed.result(TIMEOUT).type == SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED
    return stream


def _job_processing_v2(cloud: LocalCloud, protocol_client: Callable[[str], Iterator[Any]]) -> None:
    ctx = Context(cloud)
    events = ctx.events
    client_gen = protocol_client(ctx.thing)
    client = next(client_gen)
    try:
        jobs = iotjobs.IotJobsClientV2(client, mqtt_request_response.ClientOptions(2, 2, 30))
        changed = _open_stream(
            jobs.create_job_executions_changed_stream,
            iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=ctx.thing),
            lambda e: events.add(events.changed, e),
        )
        next_changed = _open_stream(
            jobs.create_next_job_execution_changed_stream,
            iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=ctx.thing),
            lambda e: events.add(events.next, e),
        )

        def nothing_pending() -> None:
            pending = jobs.get_pending_job_executions(
                iotjobs.GetPendingJobExecutionsRequest(thing_name=ctx.thing)
            ).result(TIMEOUT)
            assert (len(pending.queued_jobs), len(pending.in_progress_jobs)) == (0, 0)

        nothing_pending()
        ctx.iot.add_thing_to_thing_group(thingName=ctx.thing, thingGroupName=ctx.group)

        events.wait(lambda: len(events.next) >= 1 and len(events.changed) >= 1, "initial notifications")
        assert events.next[0].execution.job_id == ctx.job_id
        assert events.next[0].execution.status == iotjobs.JobStatus.QUEUED
        queued = events.changed[0].jobs[iotjobs.JobStatus.QUEUED]
        assert queued and queued[0].job_id == ctx.job_id

        started = jobs.start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=ctx.thing)
        ).result(TIMEOUT)
        assert started.execution.job_id == ctx.job_id
        assert started.execution.job_document == {"test": "do-something"}

        described = jobs.describe_job_execution(
            iotjobs.DescribeJobExecutionRequest(job_id=ctx.job_id, thing_name=ctx.thing)
        ).result(TIMEOUT)
        assert described.execution.job_id == ctx.job_id
        assert described.execution.status == iotjobs.JobStatus.IN_PROGRESS

        jobs.update_job_execution(
            iotjobs.UpdateJobExecutionRequest(
                job_id=ctx.job_id, thing_name=ctx.thing, status=iotjobs.JobStatus.SUCCEEDED
            )
        ).result(TIMEOUT)

        events.wait(lambda: len(events.next) >= 2 and len(events.changed) >= 2, "final notifications")
        assert events.next[1].timestamp is not None
        assert events.next[1].execution is None
        assert not events.changed[1].jobs
        nothing_pending()

        execution = ctx.iot.describe_job_execution(jobId=ctx.job_id, thingName=ctx.thing)["execution"]
        assert execution["status"] == "SUCCEEDED"  # what AWS's CI checks after its device loop
        assert (
            ctx.iot.describe_job(jobId=ctx.job_id)["job"]["jobProcessDetails"]["numberOfSucceededThings"] == 1
        )
        del changed, next_changed  # open until here: AWS's test never closes them either
    finally:
        ctx.tear_down()
        next(client_gen, None)


def test_v2_client_over_mqtt5_processes_a_continuous_group_job(local_cloud: LocalCloud) -> None:
    _job_processing_v2(local_cloud, lambda thing: _mqtt5_client(local_cloud, thing))


def test_v2_client_over_mqtt311_processes_a_continuous_group_job(local_cloud: LocalCloud) -> None:
    _job_processing_v2(local_cloud, lambda thing: _mqtt311_connection(local_cloud, thing))


def test_v1_client_processes_a_continuous_group_job(local_cloud: LocalCloud) -> None:
    """The V1 client: exact accepted/rejected subscriptions, publishes with its own client tokens."""
    ctx = Context(local_cloud)
    events = ctx.events
    conn_gen = _mqtt311_connection(local_cloud, ctx.thing)
    conn = next(conn_gen)
    qos = mqtt.QoS.AT_LEAST_ONCE
    answers: dict[str, list[Any]] = {}
    answered = threading.Condition()

    def collect(name: str) -> Callable[[Any], None]:
        def on(response: Any) -> None:
            with answered:
                answers.setdefault(name, []).append(response)
                answered.notify_all()

        return on

    def wait_answer(name: str, count: int = 1) -> Any:
        with answered:
            assert answered.wait_for(lambda: len(answers.get(name, [])) >= count, TIMEOUT), f"no {name}"
            return answers[name][count - 1]

    try:
        jobs = iotjobs.IotJobsClient(conn)
        thing = ctx.thing
        subscriptions = [
            jobs.subscribe_to_job_executions_changed_events(
                iotjobs.JobExecutionsChangedSubscriptionRequest(thing_name=thing),
                qos,
                lambda e: events.add(events.changed, e),
            ),
            jobs.subscribe_to_next_job_execution_changed_events(
                iotjobs.NextJobExecutionChangedSubscriptionRequest(thing_name=thing),
                qos,
                lambda e: events.add(events.next, e),
            ),
            jobs.subscribe_to_get_pending_job_executions_accepted(
                iotjobs.GetPendingJobExecutionsSubscriptionRequest(thing_name=thing), qos, collect("pending")
            ),
            jobs.subscribe_to_get_pending_job_executions_rejected(
                iotjobs.GetPendingJobExecutionsSubscriptionRequest(thing_name=thing), qos, collect("rejected")
            ),
            jobs.subscribe_to_start_next_pending_job_execution_accepted(
                iotjobs.StartNextPendingJobExecutionSubscriptionRequest(thing_name=thing),
                qos,
                collect("started"),
            ),
            jobs.subscribe_to_describe_job_execution_accepted(
                iotjobs.DescribeJobExecutionSubscriptionRequest(thing_name=thing, job_id=ctx.job_id),
                qos,
                collect("described"),
            ),
            jobs.subscribe_to_update_job_execution_accepted(
                iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id=ctx.job_id),
                qos,
                collect("updated"),
            ),
            jobs.subscribe_to_update_job_execution_rejected(
                iotjobs.UpdateJobExecutionSubscriptionRequest(thing_name=thing, job_id=ctx.job_id),
                qos,
                collect("update_rejected"),
            ),
        ]
        for future, _packet_id in subscriptions:
            future.result(TIMEOUT)

        jobs.publish_get_pending_job_executions(
            iotjobs.GetPendingJobExecutionsRequest(thing_name=thing, client_token="v1-get-1"), qos
        ).result(TIMEOUT)
        first = wait_answer("pending")
        assert (first.client_token, first.queued_jobs, first.in_progress_jobs) == ("v1-get-1", [], [])

        ctx.iot.add_thing_to_thing_group(thingName=thing, thingGroupName=ctx.group)
        events.wait(lambda: len(events.next) >= 1 and len(events.changed) >= 1, "initial notifications")
        assert events.next[0].execution.job_id == ctx.job_id
        assert events.changed[0].jobs[iotjobs.JobStatus.QUEUED][0].job_id == ctx.job_id

        jobs.publish_start_next_pending_job_execution(
            iotjobs.StartNextPendingJobExecutionRequest(thing_name=thing, client_token="v1-start"), qos
        ).result(TIMEOUT)
        started = wait_answer("started")
        assert (started.client_token, started.execution.job_id) == ("v1-start", ctx.job_id)
        version = started.execution.version_number

        jobs.publish_describe_job_execution(
            iotjobs.DescribeJobExecutionRequest(
                thing_name=thing, job_id=ctx.job_id, client_token="v1-describe"
            ),
            qos,
        ).result(TIMEOUT)
        described = wait_answer("described")
        assert described.execution.status == iotjobs.JobStatus.IN_PROGRESS

        jobs.publish_update_job_execution(
            iotjobs.UpdateJobExecutionRequest(
                thing_name=thing,
                job_id=ctx.job_id,
                status=iotjobs.JobStatus.SUCCEEDED,
                expected_version=version + 5,
                client_token="v1-stale",
            ),
            qos,
        ).result(TIMEOUT)
        stale = wait_answer("update_rejected")
        assert (stale.code, stale.client_token) == (iotjobs.RejectedErrorCode.VERSION_MISMATCH, "v1-stale")

        jobs.publish_update_job_execution(
            iotjobs.UpdateJobExecutionRequest(
                thing_name=thing,
                job_id=ctx.job_id,
                status=iotjobs.JobStatus.SUCCEEDED,
                expected_version=version,
                include_job_execution_state=True,
                client_token="v1-done",
            ),
            qos,
        ).result(TIMEOUT)
        done = wait_answer("updated")
        assert (done.client_token, done.execution_state.status) == ("v1-done", iotjobs.JobStatus.SUCCEEDED)

        events.wait(lambda: len(events.next) >= 2 and len(events.changed) >= 2, "final notifications")
        assert events.next[1].execution is None and events.next[1].timestamp is not None
        assert not events.changed[1].jobs

        jobs.publish_get_pending_job_executions(
            iotjobs.GetPendingJobExecutionsRequest(thing_name=thing, client_token="v1-get-2"), qos
        ).result(TIMEOUT)
        last = wait_answer("pending", 2)
        assert (last.queued_jobs, last.in_progress_jobs) == ([], [])
    finally:
        ctx.tear_down()
        next(conn_gen, None)
