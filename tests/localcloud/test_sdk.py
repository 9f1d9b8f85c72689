"""AWS's own SDK against the local cloud: awsiotsdk V2 request-response client and the original V1 client."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
from awscrt import mqtt, mqtt5, mqtt_request_response
from awsiot import ServiceStreamOptions, V2ServiceException, iotshadow, mqtt5_client_builder

from localcloud.layout import OPERATOR_IDENTITY
from localcloud.testing import LocalCloud

pytestmark = pytest.mark.slow


def _crt_client(
    cloud: LocalCloud, thing: str, client_id: str | None = None
) -> tuple[mqtt5.Client, Future[None], Future[None]]:
    ident = cloud.identity(thing)
    connected: Future[None] = Future()
    stopped: Future[None] = Future()

    def on_success(_d: mqtt5.LifecycleConnectSuccessData) -> None:
        if not connected.done():
            connected.set_result(None)

    def on_stopped(_d: mqtt5.LifecycleStoppedData) -> None:
        if not stopped.done():
            stopped.set_result(None)

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=cloud.endpoint,
        port=cloud.port,
        cert_filepath=str(ident.cert),
        pri_key_filepath=str(ident.key),
        ca_filepath=str(ident.ca),
        client_id=client_id or thing,
        enable_metrics_collection=False,
        on_lifecycle_connection_success=on_success,
        on_lifecycle_stopped=on_stopped,
    )
    client.start()
    connected.result(20)
    return client, connected, stopped


@pytest.fixture
def crt_robot(local_cloud: LocalCloud) -> Iterator[Any]:
    made: list[tuple[mqtt5.Client, Future[None]]] = []

    def make(thing: str, client_id: str | None = None) -> mqtt5.Client:
        client, _c, stopped = _crt_client(local_cloud, thing, client_id)
        made.append((client, stopped))
        return client

    yield make
    for client, stopped in made:
        client.stop()
        stopped.result(10)


def _rr_options() -> mqtt_request_response.ClientOptions:
    return mqtt_request_response.ClientOptions(
        max_request_response_subscriptions=2, max_streaming_subscriptions=2, operation_timeout_in_seconds=10
    )


def test_v2_client_full_cycle(local_cloud: LocalCloud, crt_robot: Any) -> None:
    """AWS's V2 client gets AWS's answers: 404 text, versions, deltas with desired metadata, 409, named
    shadows, a delete refused to the robot by the broker and allowed to the operator."""
    thing = "sdk-v2-robot"
    client = crt_robot(thing)
    shadow = iotshadow.IotShadowClientV2(client, _rr_options())
    deltas: queue.Queue[iotshadow.ShadowDeltaUpdatedEvent] = queue.Queue()
    established = threading.Event()

    def on_status(event: Any) -> None:
        if event.type == mqtt_request_response.SubscriptionStatusEventType.SUBSCRIPTION_ESTABLISHED:
            established.set()

    stream = shadow.create_shadow_delta_updated_stream(
        iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing),
        ServiceStreamOptions(incoming_event_listener=deltas.put, subscription_status_listener=on_status),
    )
    stream.open()
    assert established.wait(10)

    with pytest.raises(V2ServiceException) as info:
        shadow.get_shadow(iotshadow.GetShadowRequest(thing_name=thing)).result(15)
    err = info.value.modeled_error
    assert (err.code, err.message) == (404, f"No shadow exists with name: '{thing}'")

    reported = shadow.update_shadow(
        iotshadow.UpdateShadowRequest(
            thing_name=thing, state=iotshadow.ShadowState(reported={"mode": "idle"})
        )
    ).result(15)
    assert reported.version == 1 and reported.state.reported == {"mode": "idle"}

    desired = shadow.update_shadow(
        iotshadow.UpdateShadowRequest(
            thing_name=thing, state=iotshadow.ShadowState(desired={"mode": "clean"})
        )
    ).result(15)
    assert desired.version == 2
    delta = deltas.get(timeout=10)
    assert (delta.state, delta.version) == ({"mode": "clean"}, 2)
    assert delta.metadata == {"mode": {"timestamp": int(desired.timestamp.timestamp())}}

    got = shadow.get_shadow(iotshadow.GetShadowRequest(thing_name=thing)).result(15)
    assert got.state.desired == {"mode": "clean"}
    assert got.state.reported == {"mode": "idle"}
    assert got.state.delta == {"mode": "clean"}
    assert got.version == 2

    with pytest.raises(V2ServiceException) as conflict:
        shadow.update_shadow(
            iotshadow.UpdateShadowRequest(
                thing_name=thing, state=iotshadow.ShadowState(reported={"mode": "clean"}), version=1
            )
        ).result(15)
    assert (conflict.value.modeled_error.code, conflict.value.modeled_error.message) == (
        409,
        "Version conflict",
    )

    # A reported-only update that leaves desired != reported publishes the whole delta again, with the
    # metadata of the desired values (as AWS does: the V2 client's delta stream depends on it).
    docked = shadow.update_shadow(
        iotshadow.UpdateShadowRequest(
            thing_name=thing, state=iotshadow.ShadowState(reported={"mode": "docked"})
        )
    ).result(15)
    again = deltas.get(timeout=10)
    assert (again.state, again.version, docked.version) == ({"mode": "clean"}, 3, 3)
    assert again.metadata == delta.metadata, "delta metadata must keep the desired timestamp"

    named = shadow.update_named_shadow(
        iotshadow.UpdateNamedShadowRequest(
            thing_name=thing, shadow_name="config", state=iotshadow.ShadowState(desired={"volume": 3})
        )
    ).result(15)
    assert named.version == 1
    got_named = shadow.get_named_shadow(
        iotshadow.GetNamedShadowRequest(thing_name=thing, shadow_name="config")
    ).result(15)
    assert got_named.state.desired == {"volume": 3}

    with pytest.raises(V2ServiceException) as refused:  # the device policy gives a robot no delete
        shadow.delete_shadow(iotshadow.DeleteShadowRequest(thing_name=thing)).result(15)
    assert refused.value.modeled_error is None  # refused by the broker (PUBACK 0x87), never answered
    assert refused.value.inner_error.name == "AWS_ERROR_MQTT_REQUEST_RESPONSE_PUBLISH_FAILURE"

    operator = iotshadow.IotShadowClientV2(
        crt_robot(OPERATOR_IDENTITY, f"{OPERATOR_IDENTITY}-{uuid.uuid4().hex[:12]}"), _rr_options()
    )
    deleted = operator.delete_shadow(iotshadow.DeleteShadowRequest(thing_name=thing)).result(15)
    assert deleted.version == 3
    with pytest.raises(V2ServiceException) as gone:
        shadow.get_shadow(iotshadow.GetShadowRequest(thing_name=thing)).result(15)
    assert gone.value.modeled_error.code == 404


def test_v1_client_publish_and_subscribe(local_cloud: LocalCloud, crt_robot: Any) -> None:
    """The V1 client's subscribe-then-publish flow gets accepted, documents and get with its own tokens."""
    thing = "sdk-v1-robot"
    client = crt_robot(thing)
    conn = client.new_connection()
    shadow = iotshadow.IotShadowClient(conn)
    accepted: queue.Queue[iotshadow.UpdateShadowResponse] = queue.Queue()
    rejected: queue.Queue[iotshadow.ErrorResponse] = queue.Queue()
    documents: queue.Queue[iotshadow.ShadowUpdatedEvent] = queue.Queue()
    gets: queue.Queue[iotshadow.GetShadowResponse] = queue.Queue()
    qos = mqtt.QoS.AT_LEAST_ONCE
    subs = [
        shadow.subscribe_to_update_shadow_accepted(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), qos, accepted.put
        ),
        shadow.subscribe_to_update_shadow_rejected(
            iotshadow.UpdateShadowSubscriptionRequest(thing_name=thing), qos, rejected.put
        ),
        shadow.subscribe_to_shadow_updated_events(
            iotshadow.ShadowUpdatedSubscriptionRequest(thing_name=thing), qos, documents.put
        ),
        shadow.subscribe_to_get_shadow_accepted(
            iotshadow.GetShadowSubscriptionRequest(thing_name=thing), qos, gets.put
        ),
    ]
    for future, _topic in subs:
        future.result(10)

    shadow.publish_update_shadow(
        iotshadow.UpdateShadowRequest(
            thing_name=thing, client_token="v1-a", state=iotshadow.ShadowState(reported={"battery": 91})
        ),
        qos,
    ).result(10)
    ok = accepted.get(timeout=10)
    assert (ok.client_token, ok.version, ok.state.reported) == ("v1-a", 1, {"battery": 91})
    event = documents.get(timeout=10)
    assert event.previous is None
    assert event.current.version == 1 and event.current.state.reported == {"battery": 91}

    shadow.publish_update_shadow(
        iotshadow.UpdateShadowRequest(
            thing_name=thing,
            client_token="v1-b",
            state=iotshadow.ShadowState(desired=None, desired_is_nullable=True, reported={"battery": 90}),
        ),
        qos,
    ).result(10)
    assert accepted.get(timeout=10).version == 2

    shadow.publish_get_shadow(
        iotshadow.GetShadowRequest(thing_name=thing, client_token="v1-get"), qos
    ).result(10)
    got = gets.get(timeout=10)
    assert (got.client_token, got.version, got.state.reported) == ("v1-get", 2, {"battery": 90})
    assert rejected.empty()
