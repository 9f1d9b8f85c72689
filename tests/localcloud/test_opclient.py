"""The operator client's shadow requests against a running local cloud: one request keeps the caller's
token, many are answered in one pipelined round, and a request nobody answers is reported, not waited on
forever."""

from __future__ import annotations

import time

import pytest

from localcloud.opclient import CloudNotRunning, OperatorClient, ShadowAnswer, shadow_request
from localcloud.testing import LocalCloud

pytestmark = pytest.mark.slow


def test_one_request_keeps_the_callers_client_token(local_cloud: LocalCloud) -> None:
    accepted, doc = shadow_request(
        local_cloud.dir, "op-one", "update", {"state": {"reported": {"a": 1}}, "clientToken": "mine-1"}
    )
    assert accepted and doc["clientToken"] == "mine-1" and doc["version"] == 1
    accepted, doc = shadow_request(local_cloud.dir, "op-one", "get", name="absent")
    assert not accepted and doc["code"] == 404 and isinstance(doc["clientToken"], str)


def test_many_requests_are_answered_in_one_round_each_by_its_token(local_cloud: LocalCloud) -> None:
    things = [f"op-many-{i}" for i in range(20)]
    with OperatorClient(local_cloud.dir) as client:
        updates = {t: {"state": {"desired": {"n": i}}, "clientToken": f"t-{i}"} for i, t in enumerate(things)}
        answers = client.shadow_requests("update", updates, timeout=10)
        assert all(isinstance(a, ShadowAnswer) and a.accepted for a in answers.values())
        gets = {t: {"clientToken": f"g-{i}"} for i, t in enumerate(things)}
        answers = client.shadow_requests("get", gets, timeout=10)
    assert list(answers) == things
    assert [a.document["state"]["desired"]["n"] for a in answers.values() if a] == list(range(20))


@pytest.mark.parametrize("token", [7, None])
def test_a_request_without_a_string_token_gets_no_answer_in_time(
    local_cloud: LocalCloud, token: object
) -> None:
    """Answers are matched by token only: without a string one, the request is reported as unanswered."""
    with OperatorClient(local_cloud.dir) as client:
        started = time.monotonic()
        answers = client.shadow_requests("get", {"op-untokened": {"clientToken": token}}, timeout=1.0)
    assert answers == {"op-untokened": None}
    assert 0.9 <= time.monotonic() - started < 5


def test_one_request_nobody_answers_says_so(local_cloud: LocalCloud) -> None:
    """A token the service cannot echo (not a string) is never matched: the cloud is up but silent."""
    with pytest.raises(CloudNotRunning, match="no answer from the shadow service within 1 s"):
        shadow_request(local_cloud.dir, "op-untokened", "get", {"clientToken": 7}, timeout=1.0)
    accepted, doc = shadow_request(local_cloud.dir, "op-untokened", "get", {"clientToken": None})
    assert not accepted and isinstance(doc["clientToken"], str), "a null token is replaced by our own"


def test_a_caller_that_stops_mid_batch_loses_nothing(local_cloud: LocalCloud) -> None:
    """Publications read in one batch and not yet handed out stay queued when the caller stops iterating
    (``watch`` takes its snapshot in slices; the live update right after a broker restart was lost)."""
    topic = "$aws/things/op-batch/shadow/update"
    with OperatorClient(local_cloud.dir) as client:
        client.subscribe(["$aws/things/op-batch/shadow/update/accepted"])
        for i in range(5):
            client.publish(topic, f'{{"state":{{"reported":{{"n":{i}}}}},"clientToken":"b-{i}"}}'.encode())
        time.sleep(0.5)  # let all five answers arrive, so one read returns several
        got: list[bytes] = []
        for pkt in client.messages(timeout=5):
            got.append(pkt.payload)
            break
        for pkt in client.messages(timeout=5):
            got.append(pkt.payload)
            if len(got) == 5:
                break
    assert [int(p.split(b'"clientToken":"b-')[1][:1]) for p in got] == [0, 1, 2, 3, 4]
