"""The artifact store: files in, S3 URLs out, presigned GETs verified as S3 verifies them (expired or tampered
→ 403 with S3's XML error), and, in a running cloud, a job document's ``${aws:iot:s3-presigned-url:...}``
turned into a URL the robot can download from."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from localcloud.artifacts import ArtifactError, ArtifactStore, parse_s3_url, s3_url
from localcloud.testing import LocalCloud, PahoRobot

NOW = 1_796_666_000.0
CREDS = ("AKIAARTIFACTS0000001", "artifact-secret-0123456789abcdefghijklmno")


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", base_url="http://127.0.0.1:8444", credentials=CREDS)


def _file(tmp_path: Path, content: bytes = b"firmware bytes\n") -> Path:
    path = tmp_path / f"src-{uuid.uuid4().hex[:6]}.bin"
    path.write_bytes(content)
    return path


def _get(
    store: ArtifactStore, url: str, now: float, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    status, headers, body = store.serve(method, f"{parts.path}?{parts.query}", {"Host": parts.netloc}, now)
    data = body.read_bytes() if isinstance(body, Path) else body
    return status, headers, data


def test_put_gives_an_s3_url_and_lists_the_file(store: ArtifactStore, tmp_path: Path) -> None:
    url = store.put(_file(tmp_path), "fw/robot 1.0.bin")
    assert url == "https://s3.us-east-1.amazonaws.com/local-artifacts/fw/robot%201.0.bin"
    assert parse_s3_url(url) == ("local-artifacts", "fw/robot 1.0.bin")
    [artifact] = store.list()
    assert (artifact.key, artifact.size, artifact.s3_url) == ("fw/robot 1.0.bin", 15, url)
    assert (store.root / "local-artifacts" / "fw" / "robot 1.0.bin").read_bytes() == b"firmware bytes\n"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://s3.amazonaws.com/bucket-1/a/b.bin", ("bucket-1", "a/b.bin")),
        ("https://s3.eu-west-1.amazonaws.com/bucket-1/k", ("bucket-1", "k")),
        ("https://bucket-1.s3.us-east-1.amazonaws.com/a/b.bin", ("bucket-1", "a/b.bin")),
        ("https://bucket-1.s3.amazonaws.com/k%20x", ("bucket-1", "k x")),
        ("s3://bucket-1/k", ("bucket-1", "k")),
    ],
    ids=["path_global", "path_regional", "virtual_regional", "virtual_global", "s3_scheme"],
)
def test_parse_s3_url(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "https://example.com/b/k",
        "https://s3.amazonaws.com/bucket-1/../etc/passwd",
        "https://s3.amazonaws.com/bucket-1/",
    ],
    ids=["not_s3", "dot_dot", "no_key"],
)
def test_parse_s3_url_refuses(bad: str) -> None:
    with pytest.raises(ArtifactError):
        parse_s3_url(bad)


def test_a_presigned_url_downloads_until_it_expires(store: ArtifactStore, tmp_path: Path) -> None:
    url = store.presign(store.put(_file(tmp_path), "fw.bin"), 300, NOW)
    assert url.startswith(
        "http://127.0.0.1:8444/artifacts/local-artifacts/fw.bin?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    )
    status, headers, body = _get(store, url, NOW + 299)
    assert (status, body, headers["Content-Length"]) == (200, b"firmware bytes\n", "15")
    assert _get(store, url, NOW, "HEAD")[0] == 403  # the method is signed: a GET URL is not a HEAD URL
    status, headers, body = _get(store, url, NOW + 301)
    assert (status, headers["Content-Type"]) == (403, "application/xml")
    assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in body


@pytest.mark.parametrize("change", ["key", "expiry", "signature", "unsigned"])
def test_a_tampered_presigned_url_is_403(store: ArtifactStore, tmp_path: Path, change: str) -> None:
    store.put(_file(tmp_path), "other.bin")
    url = store.presign(store.put(_file(tmp_path), "fw.bin"), 300, NOW)
    if change == "key":
        url = url.replace("fw.bin", "other.bin")
    elif change == "expiry":
        url = url.replace("X-Amz-Expires=300", "X-Amz-Expires=3600")
    elif change == "signature":
        url = url[:-1] + ("0" if url[-1] != "0" else "1")
    else:
        url = url.partition("?")[0] + "?x=1"
    status, _headers, body = _get(store, url, NOW)
    assert status == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in body or b"<Code>AccessDenied</Code>" in body


def test_a_missing_key_is_404_no_such_key(store: ArtifactStore) -> None:
    url = store.presign(s3_url("local-artifacts", "never-put.bin"), 60, NOW)
    status, _headers, body = _get(store, url, NOW)
    assert status == 404 and b"<Code>NoSuchKey</Code>" in body


def test_keys_cannot_escape_the_store(store: ArtifactStore, tmp_path: Path) -> None:
    for key in ("../x", "a//b", "/abs", "a/./b"):
        with pytest.raises(ArtifactError):
            store.put(_file(tmp_path), key)


def test_presign_clamps_the_expiry(store: ArtifactStore) -> None:
    url = store.presign(s3_url("local-artifacts", "k"), 10**9, NOW)
    assert "X-Amz-Expires=604800" in url


# -- in a running cloud ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_document_placeholder_becomes_a_download_url(local_cloud: LocalCloud, tmp_path: Path) -> None:
    thing = f"artifact-robot-{uuid.uuid4().hex[:6]}"
    local_cloud.add_robot(thing)
    store = ArtifactStore.for_cloud(local_cloud.dir)
    artifact = store.put(_file(tmp_path, b"\x00payload\xff" * 100), f"fw/{thing}.bin")
    iot = local_cloud.boto3_client("iot")
    arn = iot.create_thing(thingName=thing)["thingArn"]
    document = {"operation": "download", "url": f"${{aws:iot:s3-presigned-url:{artifact}}}"}
    iot.create_job(
        jobId=f"artifact-{thing}",
        targets=[arn],
        document=json.dumps(document),
        presignedUrlConfig={"expiresInSec": 120},
    )
    assert json.loads(iot.get_job_document(jobId=f"artifact-{thing}")["document"]) == document

    robot = PahoRobot(local_cloud, thing)
    try:
        robot.subscribe(f"$aws/things/{thing}/jobs/$next/get/+")
        robot.publish(f"$aws/things/{thing}/jobs/$next/get", {"clientToken": "t1"})
        [(topic, answer)] = robot.collect(1, timeout=20)
    finally:
        robot.close()
    assert topic.endswith("/accepted"), answer
    url = answer["execution"]["jobDocument"]["url"]
    assert url.startswith(f"{local_cloud.api_url}/artifacts/local-artifacts/fw/{thing}.bin?")
    assert "X-Amz-Expires=120" in url
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"\x00payload\xff" * 100
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace(f"{thing}.bin", "other.bin"), timeout=10)
    assert refused.value.code == 403
    assert b"SignatureDoesNotMatch" in refused.value.read()
