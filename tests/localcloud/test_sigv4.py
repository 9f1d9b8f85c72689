"""SigV4 as botocore signs it: our verify accepts exactly what botocore's SigV4Auth / S3SigV4QueryAuth sign, our
sign produces the same Authorization header byte for byte, and every tampered part is refused with AWS's code."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4QueryAuth, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from localcloud.awsapi import sigv4
from localcloud.awsapi.errors import ApiError

KEY, SECRET = "AKIALOCALTEST0000001", "s3cr3t/with+slash=and/plus0123456789abcd"
CREDS = {KEY: SECRET}
NOW = 1_796_666_328.0

CASES = [
    pytest.param("GET", "http://127.0.0.1:8444/jobs", b"", id="plain"),
    pytest.param("GET", "http://127.0.0.1:8444/things/robot-1/jobs/%24next", b"", id="dollar_next_encoded"),
    pytest.param("PUT", "http://127.0.0.1:8444/things/robot-1/jobs/$next", b"{}", id="dollar_next_literal"),
    pytest.param("GET", "http://127.0.0.1:8444/things/a%20b/jobs/x%25y", b"", id="space_and_percent"),
    pytest.param(
        "GET",
        "http://127.0.0.1:8444/jobs?status=IN_PROGRESS&maxResults=5&nextToken=a%2Bb%2F%3D",
        b"",
        id="query_unsorted_encoded",
    ),
    pytest.param("GET", "http://127.0.0.1:8444/jobs?b=2&a=1&a=0&empty=", b"", id="repeated_and_empty_keys"),
    pytest.param("POST", "http://localhost/a//b/../c/", b'{"x": 1}', id="dot_segments_default_port"),
    pytest.param(
        "PUT",
        "http://127.0.0.1:8444/jobs/j%C3%A9",
        '{"document": "é ünïcode"}'.encode(),
        id="utf8_path_and_body",
    ),
]


def botocore_signed(method: str, url: str, body: bytes, service: str = "iot") -> tuple[str, dict[str, str]]:
    """(path with query, headers) of a request signed by botocore itself, as the server receives it."""
    req = AWSRequest(
        method=method,
        url=url,
        data=body,
        headers={"Content-Type": "application/json", "User-Agent": "Boto3/x  multiple   spaces"},
    )
    SigV4Auth(Credentials(KEY, SECRET), service, "us-east-1").add_auth(req)
    prepared = req.prepare()
    parts = urlsplit(prepared.url)
    headers = dict(prepared.headers)
    headers["Host"] = parts.netloc if parts.port not in (None, 80) else parts.hostname or ""
    return parts.path + (f"?{parts.query}" if parts.query else ""), headers


@pytest.fixture(autouse=True)
def _frozen_botocore_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    import datetime

    import botocore.auth

    monkeypatch.setattr(
        botocore.auth,
        "get_current_datetime",
        lambda: datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None),
    )


@pytest.mark.parametrize(("method", "url", "body"), CASES)
def test_verify_accepts_what_botocore_signs(method: str, url: str, body: bytes) -> None:
    path, headers = botocore_signed(method, url, body)
    verified = sigv4.verify(method, path, headers, body, credentials=CREDS, now=NOW)
    assert verified == sigv4.Verified(KEY, "20261207", "us-east-1", "iot")


@pytest.mark.parametrize(("method", "url", "body"), CASES)
def test_sign_matches_botocore_byte_for_byte(method: str, url: str, body: bytes) -> None:
    _path, theirs = botocore_signed(method, url, body)
    ours = sigv4.sign(
        method,
        url,
        {"Content-Type": "application/json", "User-Agent": "Boto3/x  multiple   spaces"},
        body,
        access_key=KEY,
        secret_key=SECRET,
        region="us-east-1",
        service="iot",
        now=NOW,
    )
    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Date"] == theirs["X-Amz-Date"]


def _refused(method: str, path: str, headers: dict[str, str], body: bytes, **kw: object) -> ApiError:
    with pytest.raises(ApiError) as info:
        sigv4.verify(method, path, headers, body, **{"credentials": CREDS, "now": NOW, **kw})  # type: ignore[arg-type]
    assert info.value.status == 403
    return info.value


def _tampered(part: str) -> tuple[str, str, dict[str, str], bytes]:
    method, url, body = "PUT", "http://127.0.0.1:8444/jobs/job-1?force=true", b'{"document": "{}"}'
    path, headers = botocore_signed(method, url, body)
    if part == "method":
        method = "POST"
    elif part == "path":
        path = path.replace("job-1", "job-2")
    elif part == "query":
        path = path.replace("force=true", "force=false")
    elif part == "body":
        body = body.replace(b"{}", b"[]")
    elif part == "signed_header":
        headers["Content-Type"] = "text/plain"
    elif part == "host":
        headers["Host"] = "127.0.0.1:9999"
    elif part == "signature":
        auth = headers["Authorization"]
        headers["Authorization"] = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    elif part == "secret":
        return method, path, headers, body
    return method, path, headers, body


@pytest.mark.parametrize(
    "part",
    ["method", "path", "query", "body", "signed_header", "host", "signature"],
    ids=lambda p: f"tampered_{p}",
)
def test_a_tampered_request_is_an_invalid_signature(part: str) -> None:
    method, path, headers, body = _tampered(part)
    error = _refused(method, path, headers, body)
    assert error.code == "InvalidSignatureException"
    assert "does not match" in error.message


def test_a_wrong_secret_is_an_invalid_signature() -> None:
    method, path, headers, body = _tampered("secret")
    assert (
        _refused(method, path, headers, body, credentials={KEY: "other"}).code == "InvalidSignatureException"
    )


def test_an_unknown_access_key_is_an_unrecognized_client() -> None:
    method, path, headers, body = _tampered("secret")
    error = _refused(method, path, headers, body, credentials={"AKIAOTHER": SECRET})
    assert error.code == "UnrecognizedClientException"
    assert error.message == "The security token included in the request is invalid."


def test_no_authorization_is_a_missing_authentication_token() -> None:
    error = _refused("GET", "/jobs", {"Host": "127.0.0.1:8444"}, b"")
    assert (error.code, error.message) == (
        "MissingAuthenticationTokenException",
        "Missing Authentication Token",
    )


@pytest.mark.parametrize(
    "authorization",
    ["AWS4-HMAC-SHA256 Credential=x", "Bearer abc", "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00"],
    ids=["no_signature", "other_scheme", "no_credential"],
)
def test_a_malformed_authorization_is_an_incomplete_signature(authorization: str) -> None:
    headers = {"Host": "127.0.0.1:8444", "Authorization": authorization, "X-Amz-Date": sigv4.amz_date(NOW)}
    assert _refused("GET", "/jobs", headers, b"").code == "IncompleteSignatureException"


@pytest.mark.parametrize(("skew", "word"), [(16 * 60, "expired"), (-16 * 60, "not yet current")])
def test_clock_skew_over_15_minutes_is_refused(skew: float, word: str) -> None:
    path, headers = botocore_signed("GET", "http://127.0.0.1:8444/jobs", b"")
    error = _refused("GET", path, headers, b"", now=NOW + skew)
    assert error.code == "InvalidSignatureException"
    assert f"Signature {word}" in error.message


def test_clock_skew_within_15_minutes_is_accepted() -> None:
    path, headers = botocore_signed("GET", "http://127.0.0.1:8444/jobs", b"")
    for skew in (-14 * 60, 14 * 60):
        sigv4.verify("GET", path, headers, b"", credentials=CREDS, now=NOW + skew)


def test_the_credential_scope_must_name_our_region_and_a_served_service() -> None:
    path, headers = botocore_signed("GET", "http://127.0.0.1:8444/jobs", b"", service="s3")
    error = _refused("GET", path, headers, b"", services=("iot", "iot-jobs-data"))
    assert error.code == "InvalidSignatureException"
    assert "correct service" in error.message
    path, headers = botocore_signed("GET", "http://127.0.0.1:8444/jobs", b"")
    assert "valid region" in _refused("GET", path, headers, b"", region="eu-west-1").message


def test_the_data_plane_signing_name_is_reported() -> None:
    path, headers = botocore_signed(
        "GET", "http://127.0.0.1:8444/things/r/jobs", b"", service="iot-jobs-data"
    )
    verified = sigv4.verify(
        "GET", path, headers, b"", credentials=CREDS, now=NOW, services=("iot", "iot-jobs-data")
    )
    assert verified.service == "iot-jobs-data"


# -- query-string authentication (presigned URLs, S3's form) -------------------------------------------------


def botocore_presigned(url: str, expires: int) -> str:
    req = AWSRequest(method="GET", url=url, headers={})
    S3SigV4QueryAuth(Credentials(KEY, SECRET), "s3", "us-east-1", expires=expires).add_auth(req)
    return str(req.prepare().url)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8444/artifacts/local-artifacts/fw/robot.bin",
        "http://127.0.0.1:8444/artifacts/local-artifacts/with%20space/and%25percent%2Bplus.tar.gz",
    ],
    ids=["simple", "encoded_key"],
)
def test_presign_matches_botocore_and_verifies(url: str) -> None:
    ours = sigv4.presign(
        "GET", url, access_key=KEY, secret_key=SECRET, region="us-east-1", service="s3", now=NOW, expires=300
    )
    assert ours == botocore_presigned(url, 300)
    parts = urlsplit(ours)
    verified = sigv4.verify(
        "GET", f"{parts.path}?{parts.query}", {"Host": parts.netloc}, b"", credentials=CREDS, now=NOW + 299
    )
    assert verified.service == "s3"


def _presigned_path(expires: int = 300) -> tuple[str, dict[str, str]]:
    url = botocore_presigned("http://127.0.0.1:8444/artifacts/local-artifacts/fw.bin", expires)
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}", {"Host": parts.netloc}


def test_an_expired_presigned_url_is_access_denied() -> None:
    path, headers = _presigned_path(300)
    error = _refused("GET", path, headers, b"", now=NOW + 301)
    assert (error.code, error.message) == ("AccessDenied", "Request has expired")


@pytest.mark.parametrize("change", ["key", "expires", "signature"])
def test_a_tampered_presigned_url_is_refused(change: str) -> None:
    path, headers = _presigned_path(300)
    if change == "key":
        path = path.replace("fw.bin", "other.bin")
    elif change == "expires":
        path = path.replace("X-Amz-Expires=300", "X-Amz-Expires=3000")
    else:
        path = path[:-1] + ("0" if path[-1] != "0" else "1")
    assert _refused("GET", path, headers, b"").code == "SignatureDoesNotMatch"


def test_presign_refuses_expiry_out_of_range() -> None:
    for expires in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="expires"):
            sigv4.presign(
                "GET",
                "http://h/x",
                access_key=KEY,
                secret_key=SECRET,
                region="us-east-1",
                service="s3",
                now=time.time(),
                expires=expires,
            )


def _signed_with_content_header(service: str, content_sha256: str, body: bytes) -> dict[str, str]:
    """Headers of a PUT signed (by hand, as the SigV4 spec says) with ``x-amz-content-sha256`` as given."""
    headers = {
        "Host": "127.0.0.1:8444",
        "X-Amz-Date": sigv4.amz_date(NOW),
        "X-Amz-Content-SHA256": content_sha256,
    }
    lists = {k.lower(): [v] for k, v in headers.items()}
    signed = sorted(lists)
    canonical = sigv4.canonical_request("PUT", "/jobs/j", "", lists, signed, content_sha256, service)
    date = sigv4.amz_date(NOW)[:8]
    scope = f"{date}/us-east-1/{service}/aws4_request"
    to_sign = sigv4.string_to_sign(sigv4.amz_date(NOW), scope, canonical)
    signature = hmac.new(
        sigv4.signing_key(SECRET, date, "us-east-1", service), to_sign.encode(), hashlib.sha256
    ).hexdigest()
    headers["Authorization"] = (
        f"{sigv4.ALGORITHM} Credential={KEY}/{scope}, SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    return headers


@pytest.mark.parametrize("service", ["iot", "iot-jobs-data"])
def test_an_unsigned_payload_is_refused_outside_s3(service: str) -> None:
    body = b'{"document": "{}"}'
    headers = _signed_with_content_header(service, sigv4.UNSIGNED_PAYLOAD, body)
    error = _refused("PUT", "/jobs/j", headers, body, services=("iot", "iot-jobs-data"))
    assert error.code == "InvalidSignatureException"
    assert "only accepted for service s3" in error.message
    hashed = _signed_with_content_header(service, hashlib.sha256(body).hexdigest(), body)
    sigv4.verify(
        "PUT", "/jobs/j", hashed, body, credentials=CREDS, now=NOW, services=("iot", "iot-jobs-data")
    )


def test_an_unsigned_payload_is_accepted_for_s3() -> None:
    body = b"artifact bytes"
    headers = _signed_with_content_header("s3", sigv4.UNSIGNED_PAYLOAD, body)
    assert (
        sigv4.verify("PUT", "/jobs/j", headers, body, credentials=CREDS, now=NOW, services=("s3",)).service
        == "s3"
    )
