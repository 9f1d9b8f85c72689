"""The control-plane client of our own CLIs: requests laid out exactly as botocore lays them out (checked
against botocore's own serializer), signed so that the local cloud's verifier accepts them, AWS's error codes
raised, throttling retried, a cloud that is not running said plainly; then real calls against ``up``."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from localcloud.apiclient import ApiClient, ApiNotRunning, Credentials, error_from, read_credentials
from localcloud.awsapi.errors import ApiError
from localcloud.awsapi.routes import build_request, route
from localcloud.layout import CloudDir
from localcloud.testing import LocalCloud, free_port

ACCESS, SECRET = "AKIDLOCALTEST0000001", "local-secret-key-for-tests-only-0000000"

CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "iot",
        "CreateJob",
        {
            "jobId": "fw-2",
            "targets": ["arn:aws:iot:us-east-1:000000000000:thing/robot-1"],
            "document": '{"operation":"mission","action":"dock"}',
            "targetSelection": "CONTINUOUS",
            "jobExecutionsRolloutConfig": {
                "maximumPerMinute": 50,
                "exponentialRate": {
                    "baseRatePerMinute": 10,
                    "incrementFactor": 1.5,
                    "rateIncreaseCriteria": {"numberOfNotifiedThings": 5},
                },
            },
            "abortConfig": {
                "criteriaList": [
                    {
                        "failureType": "FAILED",
                        "action": "CANCEL",
                        "thresholdPercentage": 12.5,
                        "minNumberOfExecutedThings": 3,
                    }
                ]
            },
            "timeoutConfig": {"inProgressTimeoutInMinutes": 5},
        },
    ),
    ("iot", "ListJobs", {"status": "IN_PROGRESS", "maxResults": 25, "nextToken": "a b/c+d"}),
    ("iot", "CancelJob", {"jobId": "j1", "force": True, "comment": "bad build"}),
    ("iot", "DeleteJob", {"jobId": "j1", "force": False}),
    ("iot", "DescribeJobExecution", {"jobId": "j-1", "thingName": "robot:1", "executionNumber": 3}),
    ("iot", "ListThings", {"maxResults": 250}),
    ("iot", "DescribeJob", {"jobId": "j_1"}),
    ("iot-jobs-data", "UpdateJobExecution", {"jobId": "j1", "thingName": "r1", "status": "SUCCEEDED"}),
]


def botocore_request(service: str, operation: str, params: dict[str, Any]) -> tuple[str, str, Any]:
    """(method, path?query, body) as botocore itself serializes the request."""
    import botocore.session
    from botocore.serialize import create_serializer

    model = botocore.session.get_session().get_service_model(service)
    op = model.operation_model(operation)
    from botocore.awsrequest import prepare_request_dict

    request = create_serializer("rest-json").serialize_to_request(params, op)
    prepare_request_dict(request, endpoint_url="http://127.0.0.1")
    body = request["body"]
    url = urlsplit(request["url"])
    return (
        request["method"],
        url.path + (f"?{url.query}" if url.query else ""),
        json.loads(body) if body else None,
    )


@pytest.mark.parametrize(("service", "operation", "params"), CASES, ids=[c[1] for c in CASES])
def test_requests_are_laid_out_as_botocore_lays_them_out(
    service: str, operation: str, params: dict[str, Any]
) -> None:
    method, path, _headers, body = build_request(route(service, operation), params)
    b_method, b_path, b_body = botocore_request(service, operation, params)
    ours, theirs = urlsplit(path), urlsplit(b_path)
    assert method == b_method
    assert ours.path == theirs.path
    assert sorted(parse_qsl(ours.query)) == sorted(parse_qsl(theirs.query))
    assert (json.loads(body) if body else None) == (b_body or None)


def test_a_uri_member_is_escaped_and_unknown_or_missing_members_are_errors() -> None:
    _m, path, _h, _b = build_request(route("iot", "DescribeJob"), {"jobId": "a/b c"})
    assert path == "/jobs/a%2Fb%20c"
    with pytest.raises(ValueError, match="has no parameter"):
        build_request(route("iot", "DescribeJob"), {"jobId": "a", "jobID": "typo"})
    with pytest.raises(ValueError, match="needs jobId"):
        build_request(route("iot", "DescribeJob"), {})
    with pytest.raises(KeyError):
        route("iot", "NoSuchOperation")


def test_aws_errors_keep_their_code_and_message() -> None:
    err = error_from(
        404, {"x-amzn-ErrorType": "ResourceNotFoundException:http://internal"}, b'{"message":"no job"}'
    )
    assert (err.status, err.code, err.message) == (404, "ResourceNotFoundException", "no job")
    err = error_from(400, {}, b'{"__type":"com.amazonaws#InvalidRequestException","Message":"bad"}')
    assert (err.code, err.message) == ("InvalidRequestException", "bad")
    err = error_from(502, {}, b"<html>gateway</html>")
    assert (err.code, err.message) == ("Http502", "<html>gateway</html>")


# a signature-checking HTTP peer, for what the real service never does on demand (throttle, drop keep-alive)
def write_credentials(root: Path) -> CloudDir:
    cloud = CloudDir.at(root)
    (root / "aws").mkdir(parents=True, exist_ok=True)
    (root / "aws" / "credentials").write_text(
        f"[local]\naws_access_key_id = {ACCESS}\naws_secret_access_key = {SECRET}\n"
    )
    return cloud


class Peer:
    """Answers each request with the next scripted (status, headers, body) after verifying its SigV4
    signature with the local cloud's own verifier; records what it saw."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]], *, close_after: bool = False) -> None:
        self.script = script
        self.seen: list[dict[str, Any]] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: object) -> None:
                pass

            def _any(self) -> None:
                from localcloud.awsapi import sigv4

                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    verified = sigv4.verify(
                        self.command,
                        self.path,
                        list(self.headers.items()),
                        body,
                        credentials={ACCESS: SECRET},
                        now=time.time(),
                    )
                    peer.seen.append(
                        {"method": self.command, "path": self.path, "body": body, "service": verified.service}
                    )
                    status, headers, data = peer.script.pop(0) if peer.script else (200, {}, b"{}")
                except ApiError as exc:
                    status, headers, data = (
                        exc.status,
                        {"x-amzn-ErrorType": exc.code},
                        json.dumps({"message": exc.message}).encode(),
                    )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                if close_after:
                    self.send_header("connection", "close")
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peer_cloud(tmp_path: Path) -> Iterator[tuple[CloudDir, list[Peer]]]:
    cloud = write_credentials(tmp_path)
    peers: list[Peer] = []
    yield cloud, peers
    for p in peers:
        p.close()


def _serve(cloud: CloudDir, peers: list[Peer], peer: Peer) -> None:
    peers.append(peer)
    cloud.run_file.parent.mkdir(parents=True, exist_ok=True)
    cloud.run_file.write_text(json.dumps({"pid": 1, "api_port": peer.port}))


def test_signed_requests_pass_the_local_clouds_verifier(peer_cloud: tuple[CloudDir, list[Peer]]) -> None:
    cloud, peers = peer_cloud
    peer = Peer([(200, {}, b'{"jobs":[],"nextToken":null}'), (200, {}, b'{"jobArn":"arn:x","jobId":"j 1"}')])
    _serve(cloud, peers, peer)
    with ApiClient(cloud) as client:
        assert client.call("ListJobs", {"status": "IN_PROGRESS"}) == {"jobs": [], "nextToken": None}
        assert (
            client.call("CreateJob", {"jobId": "j 1", "targets": ["arn:t"], "document": "{}"})["jobId"]
            == "j 1"
        )
        client.call("DescribeJobExecution", {"jobId": "j", "thingName": "r"}, service="iot-jobs-data")
    assert [(s["method"], s["path"], s["service"]) for s in peer.seen] == [
        ("GET", "/jobs?status=IN_PROGRESS", "iot"),
        ("PUT", "/jobs/j%201", "iot"),
        ("GET", "/things/r/jobs/j", "iot-jobs-data"),
    ]
    assert json.loads(peer.seen[1]["body"]) == {"targets": ["arn:t"], "document": "{}"}


def test_throttling_is_retried_with_backoff_then_the_answer_returned(
    peer_cloud: tuple[CloudDir, list[Peer]],
) -> None:
    cloud, peers = peer_cloud
    throttled = (429, {"x-amzn-ErrorType": "ThrottlingException"}, b'{"message":"Rate exceeded"}')
    _serve(cloud, peers, Peer([throttled, throttled, (200, {}, b'{"things":[]}')]))
    slept: list[float] = []
    with ApiClient(cloud, sleep=slept.append) as client:
        assert client.call("ListThings", {}) == {"things": []}
        assert client.throttled == 2 and len(slept) == 2 and all(s > 0 for s in slept)


def test_throttling_that_never_ends_raises_aws_code(peer_cloud: tuple[CloudDir, list[Peer]]) -> None:
    cloud, peers = peer_cloud
    throttled = (429, {"x-amzn-ErrorType": "ThrottlingException"}, b'{"message":"Rate exceeded"}')
    _serve(cloud, peers, Peer([throttled] * 3))
    with ApiClient(cloud, sleep=lambda _s: None, max_attempts=3) as client, pytest.raises(ApiError) as exc:
        client.call("ListThings", {})
    assert (exc.value.status, exc.value.code) == (429, "ThrottlingException")


def test_an_error_answer_raises_with_aws_code(peer_cloud: tuple[CloudDir, list[Peer]]) -> None:
    cloud, peers = peer_cloud
    _serve(
        cloud,
        peers,
        Peer([(404, {"x-amzn-ErrorType": "ResourceNotFoundException"}, b'{"message":"Job j not found"}')]),
    )
    with (
        ApiClient(cloud) as client,
        pytest.raises(ApiError, match="ResourceNotFoundException: Job j not found"),
    ):
        client.call("DescribeJob", {"jobId": "j"})


def test_a_wrong_secret_is_refused_by_the_verifier_with_403(peer_cloud: tuple[CloudDir, list[Peer]]) -> None:
    cloud, peers = peer_cloud
    _serve(cloud, peers, Peer([]))
    (cloud.root / "aws" / "credentials").write_text(
        f"[local]\naws_access_key_id={ACCESS}\naws_secret_access_key=wrong\n"
    )
    with ApiClient(cloud) as client, pytest.raises(ApiError) as exc:
        client.call("ListJobs", {})
    assert exc.value.status == 403


def test_a_connection_the_server_closes_is_opened_again(peer_cloud: tuple[CloudDir, list[Peer]]) -> None:
    cloud, peers = peer_cloud
    _serve(cloud, peers, Peer([(200, {}, b"{}")] * 3, close_after=True))
    with ApiClient(cloud) as client:
        for _ in range(3):
            assert client.call("ListJobs", {}) == {}


def test_nothing_listening_says_how_to_start_the_cloud(tmp_path: Path) -> None:
    cloud = write_credentials(tmp_path)
    cloud.run_file.parent.mkdir(parents=True)
    cloud.run_file.write_text(json.dumps({"api_port": free_port()}))
    with (
        ApiClient(cloud) as client,
        pytest.raises(ApiNotRunning, match=r"not running .*roomba-fleet up --dir"),
    ):
        client.call("ListJobs", {})


def test_no_credentials_says_which_file_and_what_writes_it(tmp_path: Path) -> None:
    with pytest.raises(ApiNotRunning, match=r"aws/credentials does not exist.*roomba-fleet up --dir"):
        read_credentials(CloudDir.at(tmp_path))
    (tmp_path / "aws").mkdir()
    (tmp_path / "aws" / "credentials").write_text("[other]\naws_access_key_id=a\naws_secret_access_key=b\n")
    with pytest.raises(ApiNotRunning, match=r"no \[local\] profile"):
        read_credentials(CloudDir.at(tmp_path))


# against the real control plane ------------------------------------------------------------------------------
@pytest.mark.slow
def test_real_calls_against_up(local_cloud: LocalCloud) -> None:
    """Pagination, AWS's codes from the real service, and boto3 seeing what we made."""
    names = [f"api-{uuid.uuid4().hex[:6]}-{i}" for i in range(3)]
    with ApiClient(local_cloud.dir) as client:
        for name in names:
            made = client.call("CreateThing", {"thingName": name})
            assert made["thingArn"] == f"arn:aws:iot:us-east-1:000000000000:thing/{name}"
        listed = [t["thingName"] for t in client.pages("ListThings", {"maxResults": 1}, "things")]
        assert set(names) <= set(listed) and len(listed) == len(set(listed))
        with pytest.raises(ApiError) as exc:
            client.call("DescribeThing", {"thingName": f"{names[0]}-absent"})
        assert (exc.value.status, exc.value.code) == (404, "ResourceNotFoundException")
    seen = local_cloud.boto3_client("iot").describe_thing(thingName=names[1])
    assert seen["thingName"] == names[1]


@pytest.mark.slow
def test_the_real_service_refuses_a_wrong_secret_and_a_stopped_one_says_so(
    new_cloud: Callable[..., LocalCloud],
) -> None:
    cloud = new_cloud()
    with ApiClient(cloud.dir) as client:
        client.credentials = Credentials(client.credentials.access_key, "not-the-secret")
        with pytest.raises(ApiError) as exc:
            client.call("ListJobs", {})
    assert exc.value.status == 403
    cloud.stop()
    with ApiClient(cloud.dir) as client, pytest.raises(ApiNotRunning, match="roomba-fleet up --dir"):
        client.call("ListJobs", {})
