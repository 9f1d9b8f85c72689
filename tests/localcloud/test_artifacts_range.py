"""HTTP Range on presigned artifact downloads, as S3 answers it: ``bytes=N-``, ``bytes=N-M`` and ``bytes=-N``
give 206 with Content-Range and exactly those bytes; a range past the end is 416 InvalidRange with
``Content-Range: bytes */SIZE``; anything else is ignored (the whole object, 200). In a running cloud a
download cut half-way resumes where it stopped (urllib, and curl's ``-C -``)."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from localcloud.artifacts import SLICE_CHUNK, ArtifactStore, FileSlice, byte_range
from localcloud.awsapi import sigv4
from localcloud.testing import LocalCloud

NOW = 1_796_666_000.0
CREDS = ("AKIAARTIFACTS0000001", "artifact-secret-0123456789abcdefghijklmno")
DATA = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", base_url="http://127.0.0.1:8444", credentials=CREDS)


@pytest.fixture
def url(store: ArtifactStore, tmp_path: Path) -> str:
    source = tmp_path / "bundle.bin"
    source.write_bytes(DATA)
    return store.presign(store.put(source, "releases/b.bundle"), 300, NOW)


def get(
    store: ArtifactStore, url: str, range_header: str | None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(url)
    headers = {"Host": parts.netloc}
    if range_header is not None:
        headers["Range"] = range_header
    status, out, body = store.serve(method, f"{parts.path}?{parts.query}", headers, NOW)
    return status, out, body.read_bytes() if isinstance(body, Path | FileSlice) else body


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-", 0, 10239),
        ("bytes=4096-", 4096, 10239),
        ("bytes=10-19", 10, 19),
        ("bytes=10000-99999", 10000, 10239),
        ("bytes=10239-", 10239, 10239),
        ("bytes=-100", 10140, 10239),
        ("bytes=-99999", 0, 10239),
    ],
    ids=["all", "open_end", "closed", "past_end_clamped", "last_byte", "suffix", "suffix_longer"],
)
def test_a_range_gets_206_and_exactly_those_bytes(
    store: ArtifactStore, url: str, header: str, first: int, last: int
) -> None:
    status, headers, body = get(store, url, header)
    assert status == 206
    assert body == DATA[first : last + 1]
    assert headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert headers["Content-Length"] == str(last - first + 1)
    assert headers["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize(
    "header", ["bytes=10240-", "bytes=20000-20010", "bytes=-0"], ids=["at_end", "past", "empty_suffix"]
)
def test_an_unsatisfiable_range_is_416_invalid_range(store: ArtifactStore, url: str, header: str) -> None:
    status, headers, body = get(store, url, header)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(DATA)}"
    assert b"<Code>InvalidRange</Code>" in body


@pytest.mark.parametrize(
    "header",
    ["items=0-5", "bytes=5-3", "bytes=0-1,5-6", "bytes=abc", ""],
    ids=["unit", "reversed", "multi", "junk", "empty"],
)
def test_a_header_that_is_not_one_range_is_ignored(store: ArtifactStore, url: str, header: str) -> None:
    status, headers, body = get(store, url, header)
    assert (status, body, headers["Content-Length"]) == (200, DATA, str(len(DATA)))
    assert "Content-Range" not in headers


def test_without_range_nothing_changes_and_head_ignores_range(store: ArtifactStore, url: str) -> None:
    status, headers, body = get(store, url, None)
    assert (status, body, headers["Accept-Ranges"]) == (200, DATA, "bytes")
    head = sigv4.presign(
        "HEAD", store.local_url("local-artifacts", "releases/b.bundle"), access_key=CREDS[0], secret_key=CREDS[1],
        region="us-east-1", service="s3", now=NOW, expires=60,
    )  # fmt: skip
    status, headers, body = get(store, head, "bytes=0-9", "HEAD")
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(DATA)))
    assert "Content-Range" not in headers


def test_a_range_is_streamed_in_chunks_not_read_whole(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * SLICE_CHUNK + 123)
    source = tmp_path / "big.bundle"
    source.write_bytes(data)
    url = store.presign(store.put(source, "releases/big.bundle"), 300, NOW)
    parts = urlsplit(url)
    status, headers, body = store.serve(
        "GET", f"{parts.path}?{parts.query}", {"Host": parts.netloc, "Range": "bytes=100-"}, NOW
    )
    assert status == 206 and isinstance(body, FileSlice)  # the file's part, to stream: no bytes in memory
    assert (body.offset, body.length, headers["Content-Length"]) == (
        100,
        len(data) - 100,
        str(len(data) - 100),
    )
    chunks = list(body.chunks())
    assert len(chunks) == 4 and max(map(len, chunks)) == SLICE_CHUNK
    assert b"".join(chunks) == data[100:]


def test_a_range_on_a_refused_request_is_still_refused(store: ArtifactStore, url: str) -> None:
    assert get(store, url.replace("b.bundle", "c.bundle"), "bytes=0-")[0] == 403
    missing = store.presign("https://s3.us-east-1.amazonaws.com/local-artifacts/none.bin", 60, NOW)
    assert get(store, missing, "bytes=0-")[0] == 404


def test_an_empty_object_has_no_satisfiable_range(store: ArtifactStore, tmp_path: Path) -> None:
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    url = store.presign(store.put(empty, "empty.bin"), 60, NOW)
    assert get(store, url, "bytes=0-")[0] == 416
    assert get(store, url, None)[:1] == (200,)


def test_byte_range_is_pure() -> None:
    assert byte_range("bytes=0-0", 1) == (0, 0)
    assert byte_range(" bytes=2- ", 5) == (2, 4)
    assert byte_range("bytes=5-", 5) is False
    assert byte_range("bytes=3-1", 5) is None


# -- in a running cloud ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_cut_download_resumes_over_http(local_cloud: LocalCloud, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    source = tmp_path / "r.bundle"
    source.write_bytes(payload)
    store = ArtifactStore.for_cloud(local_cloud.dir)
    key = f"roomba-agent/test-{uuid.uuid4().hex[:6]}/r.bundle"
    url = store.presign(store.put(source, key, bucket="roomba-releases"), 300, time.time())
    with urllib.request.urlopen(url, timeout=10) as response:
        first = response.read(123_457)  # the connection "drops" here
    request = urllib.request.Request(url, headers={"Range": f"bytes={len(first)}-"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == "bytes 123457-299999/300000"
        rest = response.read()
    assert first + rest == payload
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=300000-"}), timeout=10)
    assert refused.value.code == 416 and b"InvalidRange" in refused.value.read()
    partial = tmp_path / "partial.bundle"
    partial.write_bytes(payload[:200_000])
    curl = subprocess.run(
        ["curl", "-sS", "--fail", "-C", "-", "-o", str(partial), url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert curl.returncode == 0, curl.stderr
    assert partial.read_bytes() == payload


def test_a_client_that_goes_away_mid_download_is_logged_not_a_traceback(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A robot's download cut by its network closes the socket half-way: the server says so in one log
    line and serves the next request (the resume), with no traceback from the server thread."""
    import socket

    import structlog

    from localcloud.awsapi import http as api_http

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(8 * 1024 * 1024))

    class Front:
        def handle(
            self, method: str, path: str, headers: object, body: bytes
        ) -> tuple[int, dict[str, str], Path]:
            return 200, {"Content-Type": "application/octet-stream"}, big

    server = api_http.serve(Front(), "127.0.0.1", 0)  # type: ignore[arg-type]
    port = server.server_address[1]
    try:
        with structlog.testing.capture_logs() as logs:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()  # RST: the rest of the answer has nowhere to go
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any(e["event"] == "api.client_gone" for e in logs):
                time.sleep(0.05)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/x", timeout=10) as response:
                assert len(response.read()) == 8 * 1024 * 1024
        gone = [e for e in logs if e["event"] == "api.client_gone"]
        assert gone and gone[0]["error"] in ("BrokenPipeError", "ConnectionResetError")
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in capfd.readouterr().err
