"""The release download against the local cloud's real artifact HTTP server (``ArtifactStore`` behind the
control plane's front end, a presigned URL): a cut connection resumes with ``Range`` from where it stopped,
a restart goes on from the partial file, a wrong SHA-256 is refused and removed, an expired URL is a 403
that is not retried, and the bandwidth limit paces the reads (with an injected clock: no timing here)."""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.update.download import DownloadError, Target, fetch, partial_bytes, paths
from base.backoff import Backoff
from localcloud.artifacts import ArtifactStore
from localcloud.awsapi.http import ApiFrontEnd, serve

CREDS = ("AKIAUPDATEDOWNLOAD01", "update-download-secret-0123456789abcdefgh")
SIZE = 700_000


class Cloud:
    def __init__(self, tmp: Path) -> None:
        self.front = ApiFrontEnd(credentials=lambda: {}, invoke=lambda *a: {})
        self.server = serve(self.front, "127.0.0.1", 0)
        port = self.server.server_address[1]
        self.store = ArtifactStore(tmp / "artifacts", base_url=f"http://127.0.0.1:{port}", credentials=CREDS)
        self.front.artifacts = self.store
        self.port = port

    def publish(self, data: bytes, key: str = "roomba-agent/0.2.0/roomba-agent-0.2.0.bundle") -> str:
        src = self.store.root.parent / "src.bin"
        src.write_bytes(data)
        return self.store.put(src, key)

    def url(self, s3_url: str, *, expires_s: int = 600, now: float | None = None) -> str:
        return self.store.presign(s3_url, expires_s, time.time() if now is None else now)


class CuttingProxy:
    """A TCP proxy in front of the server that closes each of the first ``cuts`` connections after
    ``after`` bytes of the answer (a robot's link dropping mid-download)."""

    def __init__(self, port: int, after: int, cuts: int = 1) -> None:
        self.target = port
        self.after = after
        self.cuts = cuts
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            cut = self.connections <= self.cuts
            threading.Thread(target=self._pipe, args=(client, cut), daemon=True).start()

    def _pipe(self, client: socket.socket, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))

        def up() -> None:
            try:
                while data := client.recv(65536):
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=up, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if cut and sent + len(data) > self.after:
                    client.sendall(data[: self.after - sent])
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            client.shutdown(socket.SHUT_RDWR)
            client.close()
            upstream.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Cloud]:
    c = Cloud(tmp_path)
    yield c
    c.server.shutdown()
    c.server.server_close()


def bundle_bytes() -> bytes:
    return os.urandom(SIZE)


def no_wait() -> Backoff:
    return Backoff(base_s=0.0, cap_s=0.0)


def test_downloads_checks_and_renames(cloud: Cloud, tmp_path: Path) -> None:
    data = bundle_bytes()
    sha = hashlib.sha256(data).hexdigest()
    seen: list[tuple[int, int]] = []
    out = fetch(
        Target(cloud.url(cloud.publish(data)), sha, SIZE),
        tmp_path / "downloads",
        progress=lambda n, t: seen.append((n, t)),
    )
    assert out == tmp_path / "downloads" / f"{sha}.bundle"
    assert out.read_bytes() == data
    assert not paths(tmp_path / "downloads", sha)[0].exists()
    assert seen[-1] == (SIZE, SIZE) and all(t == SIZE for _, t in seen)
    # a second call finds the bundle complete and checked: nothing is fetched
    assert fetch(Target("http://127.0.0.1:1/nothing", sha, SIZE), tmp_path / "downloads") == out


def test_a_cut_connection_resumes_with_a_range(cloud: Cloud, tmp_path: Path) -> None:
    data = bundle_bytes()
    sha = hashlib.sha256(data).hexdigest()
    proxy = CuttingProxy(cloud.port, after=200_000, cuts=2)
    try:
        # presigned for the proxy's address (the signature covers the Host the robot sends)
        via = ArtifactStore(cloud.store.root, base_url=f"http://127.0.0.1:{proxy.port}", credentials=CREDS)
        url = via.presign(cloud.publish(data), 600, time.time())
        seen: list[int] = []
        out = fetch(
            Target(url, sha, SIZE), tmp_path / "dl", backoff=no_wait(), progress=lambda n, t: seen.append(n)
        )
    finally:
        proxy.close()
    assert out.read_bytes() == data
    assert proxy.connections == 3  # two cut, the third finished the rest
    # progress never went back to 0: each retry asked for the rest only
    assert seen == sorted(seen) and seen[-1] == SIZE


def test_a_restart_goes_on_from_the_partial_file(cloud: Cloud, tmp_path: Path) -> None:
    data = bundle_bytes()
    sha = hashlib.sha256(data).hexdigest()
    part, _ = paths(tmp_path / "dl", sha)
    part.parent.mkdir()
    part.write_bytes(data[:300_000])  # what the agent had before it was killed
    assert partial_bytes(tmp_path / "dl", sha) == 300_000
    seen: list[int] = []
    out = fetch(
        Target(cloud.url(cloud.publish(data)), sha, SIZE),
        tmp_path / "dl",
        progress=lambda n, t: seen.append(n),
    )
    assert out.read_bytes() == data
    assert seen[0] > 300_000  # the first progress already counts the bytes on disk


def test_a_wrong_sha256_is_refused_and_removed(cloud: Cloud, tmp_path: Path) -> None:
    data = bundle_bytes()
    wrong = hashlib.sha256(b"another bundle").hexdigest()
    with pytest.raises(DownloadError) as err:
        fetch(Target(cloud.url(cloud.publish(data)), wrong, SIZE), tmp_path / "dl")
    assert err.value.kind == "hash"
    assert str(err.value).startswith(f"the download's SHA-256 is {hashlib.sha256(data).hexdigest()}")
    assert list((tmp_path / "dl").iterdir()) == []


def test_a_wrong_size_is_refused_before_the_download(cloud: Cloud, tmp_path: Path) -> None:
    data = bundle_bytes()
    sha = hashlib.sha256(data).hexdigest()
    seen: list[int] = []
    with pytest.raises(DownloadError) as err:
        fetch(
            Target(cloud.url(cloud.publish(data)), sha, SIZE + 10),
            tmp_path / "dl",
            progress=lambda n, t: seen.append(n),
        )
    assert (err.value.kind, str(err.value)) == (
        "hash",
        "the server's bundle is 700000 bytes, the job says 700010",
    )
    assert seen == [] and list((tmp_path / "dl").iterdir()) == []


def test_an_expired_url_is_a_403_not_retried(cloud: Cloud, tmp_path: Path) -> None:
    data = bundle_bytes()
    url = cloud.url(cloud.publish(data), expires_s=60, now=time.time() - 3600)
    calls: list[float] = []

    def rand() -> float:
        calls.append(0.0)
        return 0.0

    backoff = Backoff(base_s=0.0, cap_s=0.0, rand=rand)
    with pytest.raises(DownloadError) as err:
        fetch(Target(url, hashlib.sha256(data).hexdigest(), SIZE), tmp_path / "dl", backoff=backoff)
    assert err.value.kind == "http"
    assert str(err.value).startswith("the download was refused: HTTP 403 AccessDenied")
    assert "the presigned URL expired or is not valid" in str(err.value)
    assert calls == []  # no retry


def test_a_missing_object_is_a_404(cloud: Cloud, tmp_path: Path) -> None:
    cloud.publish(b"x")
    url = cloud.url("https://s3.us-east-1.amazonaws.com/local-artifacts/roomba-agent/9.9.9/none.bundle")
    with pytest.raises(DownloadError) as err:
        fetch(Target(url, "0" * 64, 10), tmp_path / "dl")
    assert (err.value.kind, str(err.value)) == (
        "http",
        "the download was refused: HTTP 404 NoSuchKey: The specified key does not exist.",
    )


def test_no_server_fails_after_the_retries(tmp_path: Path) -> None:
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nobody listens there now
    with pytest.raises(DownloadError) as err:
        fetch(
            Target(f"http://127.0.0.1:{port}/x", "0" * 64, 10), tmp_path / "dl", backoff=no_wait(), retries=2
        )
    assert err.value.kind == "network"
    assert str(err.value).startswith("download failed after 3 attempts: cannot connect:")


def test_the_bandwidth_limit_paces_the_reads(cloud: Cloud, tmp_path: Path) -> None:
    """At 800 kbit/s (100,000 bytes/s) 700,000 bytes take 7 s of the (injected) clock."""
    data = bundle_bytes()
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    out = fetch(
        Target(cloud.url(cloud.publish(data)), hashlib.sha256(data).hexdigest(), SIZE),
        tmp_path / "dl",
        limit_kbps=800,
        sleep=sleep,
        clock=lambda: now[0],
    )
    assert out.read_bytes() == data
    assert sum(slept) == pytest.approx(SIZE / 100_000)
    assert len(slept) > 5  # paced chunk by chunk, not one wait at the end


def test_a_resumed_download_that_does_not_check_starts_again_from_byte_0(
    cloud: Cloud, tmp_path: Path
) -> None:
    """A partial file whose bytes are not the bundle's (a torn tail after a power cut): the resumed download
    fails its SHA-256, so it is removed and downloaded once more in full, not REJECTED."""
    data = bundle_bytes()
    sha = hashlib.sha256(data).hexdigest()
    part, _ = paths(tmp_path / "dl", sha)
    part.parent.mkdir()
    part.write_bytes(b"\0" * 300_000)
    seen: list[int] = []
    out = fetch(
        Target(cloud.url(cloud.publish(data)), sha, SIZE),
        tmp_path / "dl",
        progress=lambda n, t: seen.append(n),
    )
    assert out.read_bytes() == data
    assert seen[0] > 300_000 and min(seen) < 300_000  # resumed first, then from the start
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == [f"{sha}.bundle"]


def test_a_resumed_wrong_sha256_is_refused_after_one_full_download(cloud: Cloud, tmp_path: Path) -> None:
    data = bundle_bytes()
    wrong = hashlib.sha256(b"another bundle").hexdigest()
    part, _ = paths(tmp_path / "dl", wrong)
    part.parent.mkdir()
    part.write_bytes(data[:300_000])
    seen: list[int] = []
    with pytest.raises(DownloadError) as err:
        fetch(
            Target(cloud.url(cloud.publish(data)), wrong, SIZE),
            tmp_path / "dl",
            progress=lambda n, t: seen.append(n),
        )
    assert err.value.kind == "hash"
    assert min(seen) < 300_000  # the fresh download happened before the refusal
    assert list((tmp_path / "dl").iterdir()) == []
