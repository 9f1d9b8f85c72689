"""The control plane's HTTP front end with botocore as the client: the route table follows the installed botocore,
requests parse into botocore member names, answers and errors come back as botocore reads them.

The front end runs on a real ``ThreadingHTTPServer`` on a free port, in front of a real (pure) ``JobsEngine``;
the whole process (MQTT and all) is tested in test_iot_service.py."""

from __future__ import annotations

import http.client
import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from localcloud.awsapi import routes, sigv4
from localcloud.awsapi.errors import ApiError
from localcloud.awsapi.http import ApiFrontEnd, serve
from localcloud.jobs.engine import JobsEngine
from localcloud.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY, SECRET = "AKIAHTTPTEST00000001", "http-test-secret-0123456789abcdefghijklmn"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("gen_routes", ROOT / "scripts" / "gen_routes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_route_table_is_what_the_installed_botocore_generates() -> None:
    generated = _generator().generate()
    assert generated["services"] == routes.table()["services"], "run .venv/bin/python scripts/gen_routes.py"


def test_every_engine_operation_has_a_route() -> None:
    from localcloud.commands.engine import CommandsEngine

    assert routes.operations("iot") >= JobsEngine.OPERATIONS
    for operation, service in CommandsEngine.SERVICES.items():
        assert operation in routes.operations(service)


@pytest.mark.parametrize(
    ("service", "method", "path", "operation", "labels"),
    [
        ("iot", "GET", "/jobs", "ListJobs", {}),
        ("iot", "PUT", "/jobs/job%201", "CreateJob", {"jobId": "job 1"}),
        ("iot", "GET", "/things/t/jobs/j", "DescribeJobExecution", {"thingName": "t", "jobId": "j"}),
        ("iot", "PUT", "/thing-groups/addThingToThingGroup", "AddThingToThingGroup", {}),
        ("iot", "POST", "/command-executions", "ListCommandExecutions", {}),
        ("iot-jobs-data", "POST", "/command-executions", "StartCommandExecution", {}),
        ("iot-jobs-data", "PUT", "/things/t/jobs/$next", "StartNextPendingJobExecution", {"thingName": "t"}),
        (
            "iot-jobs-data",
            "GET",
            "/things/t/jobs/%24next",
            "DescribeJobExecution",
            {"thingName": "t", "jobId": "$next"},
        ),
    ],
)
def test_match(service: str, method: str, path: str, operation: str, labels: dict[str, str]) -> None:
    route, got = routes.match(service, method, path)
    assert (route.operation, got) == (operation, labels)


def test_an_unknown_route_is_unknown_operation() -> None:
    with pytest.raises(ApiError) as info:
        routes.match("iot", "GET", "/no/such/thing/here")
    assert (info.value.status, info.value.code) == (404, "UnknownOperationException")


def test_build_request_is_what_botocore_sends() -> None:
    sent: list[Any] = []

    def grab(request: Any, **_: Any) -> None:
        sent.append(request)
        raise _Stop

    client = boto3.client(
        "iot",
        region_name="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        endpoint_url="http://h:1",
    )
    client.meta.events.register("before-send", grab)
    params = {"status": "IN_PROGRESS", "maxResults": 5, "nextToken": "a+b/c d", "thingGroupName": "g"}
    with pytest.raises(_Stop):
        client.list_jobs(**params)
    method, path, _headers, body = routes.build_request(routes.route("iot", "ListJobs"), params)
    assert (method, "http://h:1" + path, body) == (sent[0].method, sent[0].url, b"")


class _Stop(Exception):
    pass


# -- the front end on a real HTTP server, botocore as the client ---------------------------------------------


class _Backend:
    def __init__(self) -> None:
        self.engine = JobsEngine()
        self.lock = threading.Lock()
        self.now = 1_796_666_000.0

    def invoke(self, service: str, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        if service != "iot" or operation not in self.engine.OPERATIONS:
            raise ApiError(404, "UnknownOperationException", f"not served: {operation}")
        with self.lock:
            result, _outs = self.engine.call(operation, params, self.now)
        return result


@pytest.fixture
def api() -> Iterator[tuple[str, _Backend]]:
    backend = _Backend()
    front = ApiFrontEnd(credentials=lambda: {KEY: SECRET}, invoke=backend.invoke)
    port = free_port()
    server = serve(front, "127.0.0.1", port)
    try:
        yield f"http://127.0.0.1:{port}", backend
    finally:
        server.shutdown()
        server.server_close()


def _client(url: str, service: str = "iot", key: str = KEY, secret: str = SECRET) -> Any:
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1}),
    )


def test_boto3_round_trip_with_members_in_path_query_and_body(api: tuple[str, _Backend]) -> None:
    url, _backend = api
    iot = _client(url)
    iot.create_thing_group(thingGroupName="g")
    iot.create_thing(thingName="robot-1")
    iot.add_thing_to_thing_group(thingName="robot-1", thingGroupName="g")
    created = iot.create_job(
        jobId="job-1", targets=[iot.describe_thing(thingName="robot-1")["thingArn"]], document='{"x": 1}'
    )
    assert created["jobId"] == "job-1"
    job = iot.describe_job(jobId="job-1")["job"]
    assert job["status"] == "IN_PROGRESS"
    assert job["createdAt"].timestamp() == pytest.approx(1_796_666_000.0)  # epoch seconds on the wire
    assert [j["jobId"] for j in iot.list_jobs(status="IN_PROGRESS", maxResults=5)["jobs"]] == ["job-1"]
    assert iot.list_jobs(status="COMPLETED")["jobs"] == []
    iot.delete_job(jobId="job-1", force=True)
    with pytest.raises(iot.exceptions.ResourceNotFoundException):
        iot.describe_job(jobId="job-1")


def _code(exc: ClientError) -> tuple[int, str]:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"], exc.response["Error"]["Code"]


def test_a_wrong_secret_is_403_invalid_signature_as_botocore_sees_it(api: tuple[str, _Backend]) -> None:
    url, _ = api
    with pytest.raises(ClientError) as info:
        _client(url, secret="wrong").list_jobs()
    assert _code(info.value) == (403, "InvalidSignatureException")


def test_an_unknown_key_is_403_unrecognized_client(api: tuple[str, _Backend]) -> None:
    url, _ = api
    with pytest.raises(ClientError) as info:
        _client(url, key="AKIANOBODY").list_jobs()
    assert _code(info.value) == (403, "UnrecognizedClientException")


def test_an_unsigned_request_is_403_missing_authentication_token(api: tuple[str, _Backend]) -> None:
    url, _ = api
    client = boto3.client(
        "iot", region_name="us-east-1", endpoint_url=url, config=Config(signature_version=botocore.UNSIGNED)
    )
    with pytest.raises(ClientError) as info:
        client.list_jobs()
    assert _code(info.value) == (403, "MissingAuthenticationTokenException")


def test_a_data_plane_operation_nobody_serves_is_unknown_operation(api: tuple[str, _Backend]) -> None:
    url, _ = api
    with pytest.raises(ClientError) as info:
        _client(url, "iot-jobs-data").get_pending_job_executions(thingName="robot-1")
    assert _code(info.value) == (404, "UnknownOperationException")


def _raw(url: str, method: str, path: str, body: bytes, *, content_type: str = "application/json") -> Any:
    host = url.removeprefix("http://")
    headers = sigv4.sign(
        method,
        url + path,
        {"Content-Type": content_type},
        body,
        access_key=KEY,
        secret_key=SECRET,
        region="us-east-1",
        service="iot",
        now=time.time(),
    )
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheader("x-amzn-ErrorType"), json.loads(data) if data else None


def test_bad_json_is_400(api: tuple[str, _Backend]) -> None:
    url, _ = api
    status, code, body = _raw(url, "PUT", "/jobs/job-x", b"{not json")
    assert (status, code) == (400, "SerializationException")
    assert "JSON" in body["message"]


def test_a_missing_required_member_is_400(api: tuple[str, _Backend]) -> None:
    url, _ = api
    status, code, _body = _raw(url, "PUT", "/thing-groups/addThingToThingGroup", b"{}")
    assert status == 400 and code == "InvalidRequestException"


def test_a_wrong_type_in_the_query_is_400(api: tuple[str, _Backend]) -> None:
    url, _ = api
    status, code, body = _raw(url, "GET", "/jobs?maxResults=many", b"")
    assert (status, code) == (400, "InvalidRequestException")
    assert "maxResults" in body["message"]


def test_an_unknown_route_is_404(api: tuple[str, _Backend]) -> None:
    url, _ = api
    status, code, _body = _raw(url, "GET", "/nothing-here", b"")
    assert (status, code) == (404, "UnknownOperationException")


def test_a_body_over_the_limit_is_413(api: tuple[str, _Backend]) -> None:
    url, _ = api
    host = url.removeprefix("http://")
    conn = http.client.HTTPConnection(host, timeout=10)
    conn.putrequest("PUT", "/jobs/big")
    conn.putheader("Content-Length", str(routes.MAX_BODY_BYTES + 1))
    conn.endheaders()
    response = conn.getresponse()
    assert (response.status, response.getheader("x-amzn-ErrorType")) == (
        413,
        "RequestEntityTooLargeException",
    )
    conn.close()


def test_render_result_uses_a_status_code_member() -> None:
    route = routes.route("iot", "DeleteCommand")
    assert routes.render_result(route, {"statusCode": 204}) == (204, b"")


# -- the profile files and the data plane's mapping (no process) ------------------------------------------


def test_aws_files_keep_their_keys_and_follow_the_api_port(tmp_path: Path) -> None:
    import os
    import stat

    from localcloud import cloud
    from localcloud.layout import CloudDir, Settings

    d = CloudDir.at(tmp_path / "cloud")
    d.root.mkdir()
    cloud.write_aws_files(d, Settings(api_port=9001))
    keys = cloud.read_aws_credentials(d)
    assert keys is not None and keys[0].startswith("AKIA") and len(keys[1]) == 40
    assert stat.S_IMODE(os.stat(d.aws_credentials).st_mode) == 0o600
    cloud.write_aws_files(d, Settings(api_port=9002))
    assert cloud.read_aws_credentials(d) == keys
    config = d.aws_config.read_text()
    assert "endpoint_url = http://127.0.0.1:9002" in config and "9001" not in config


def test_an_existing_aws_dir_is_made_private(tmp_path: Path) -> None:
    import os
    import stat

    from localcloud import cloud
    from localcloud.layout import CloudDir, Settings

    d = CloudDir.at(tmp_path / "cloud")
    d.aws_dir.mkdir(parents=True)
    os.chmod(d.aws_dir, 0o755)
    cloud.write_aws_files(d, Settings(api_port=9001))
    assert stat.S_IMODE(os.stat(d.aws_dir).st_mode) == 0o700


def test_up_json_names_the_api_port_and_the_profile(tmp_path: Path) -> None:
    from localcloud import up
    from localcloud.layout import CloudDir

    d = CloudDir.at(tmp_path)
    info = up.connection_info(d, "127.0.0.1", 8883, 8444)
    assert info["api_port"] == 8444 and info["api_url"] == "http://127.0.0.1:8444"
    assert info["aws"] == {
        "config": str(d.aws_config),
        "credentials": str(d.aws_credentials),
        "profile": "local",
        "aws_cli": up.aws_cli_line(d),
    }


@pytest.mark.parametrize(
    ("code", "status", "error"),
    [
        ("VersionMismatch", 409, "ConflictException"),
        ("InvalidStateTransition", 409, "InvalidStateTransitionException"),
        ("TerminalStateReached", 410, "TerminalStateException"),
        ("ResourceNotFound", 404, "ResourceNotFoundException"),
        ("InvalidRequest", 400, "InvalidRequestException"),
    ],
)
def test_device_rejections_map_to_the_data_planes_errors(code: str, status: int, error: str) -> None:
    from localcloud.iot_service import data_plane_result

    with pytest.raises(ApiError) as info:
        data_plane_result("$aws/things/t/jobs/j/update/rejected", {"code": code, "message": "m"})
    assert (info.value.status, info.value.code) == (status, error)


def test_the_data_plane_returns_the_document_as_a_string() -> None:
    from localcloud.iot_service import data_plane_result

    answer = {"clientToken": "x", "timestamp": 1, "execution": {"jobId": "j", "jobDocument": {"a": 1}}}
    assert data_plane_result("$aws/things/t/jobs/start-next/accepted", answer) == {
        "execution": {"jobId": "j", "jobDocument": '{"a": 1}'}
    }
