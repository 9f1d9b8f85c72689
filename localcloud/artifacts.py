"""The local cloud's artifact store: S3 as far as a job document needs it.

A file put here gets an S3-style URL (``https://s3.us-east-1.amazonaws.com/local-artifacts/<key>``) that a job
document names in AWS's placeholder ``${aws:iot:s3-presigned-url:<that URL>}``. When a device fetches the
document, the Jobs engine replaces the placeholder with :meth:`ArtifactStore.presign`'s URL: a
time-limited, SigV4 query-signed (S3's presigned form) HTTP URL on the control plane's port, which the iot
service serves (:meth:`ArtifactStore.serve`): GET or HEAD, the signature verified, expired or tampered → 403
with S3's XML error, as S3 answers. A GET with ``Range: bytes=N-``, ``bytes=N-M`` or ``bytes=-N`` gets 206 and
that part (how a robot resumes a download); a range past the end is 416 ``InvalidRange``; a header that is
not one such range is ignored (the whole file, 200), as S3 does.

Files live under ``DIR/artifacts/<bucket>/<key>``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit
from xml.sax.saxutils import escape

from localcloud.awsapi import sigv4
from localcloud.awsapi.errors import ApiError
from localcloud.layout import AWS_REGION, CloudDir

DEFAULT_BUCKET = "local-artifacts"
URL_PREFIX = "/artifacts/"  # where presigned URLs point on the api port (no AWS IoT route starts so)
MIN_EXPIRES_S = 1
MAX_EXPIRES_S = 7 * 24 * 3600
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_VIRTUAL_HOST = re.compile(
    r"(?P<bucket>[a-z0-9][a-z0-9.-]*)\.s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com"
)
_PATH_HOST = re.compile(r"s3(?:[.-](?P<region>[a-z0-9-]+))?\.amazonaws\.com")
_RANGE = re.compile(r"bytes=(?:(?P<first>[0-9]+)-(?P<last>[0-9]*)|-(?P<suffix>[0-9]+))")


SLICE_CHUNK = 1 << 20  # a Range answer goes out this many bytes at a time


@dataclass(frozen=True)
class FileSlice:
    """``length`` bytes of ``path`` from ``offset``: the body of a Range answer, streamed in chunks (as a
    whole file is), never read into memory at once."""

    path: Path
    offset: int
    length: int

    def chunks(self, size: int = SLICE_CHUNK) -> Iterator[bytes]:
        left = self.length
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            while left > 0:
                chunk = f.read(min(size, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def read_bytes(self) -> bytes:
        return b"".join(self.chunks())


Body = bytes | Path | FileSlice  # what serve answers: the bytes, a whole file or a part of one to stream


class ArtifactError(ValueError):
    """A key, bucket or S3 URL the store cannot take; the message says why."""


@dataclass(frozen=True)
class Artifact:
    key: str
    size: int
    s3_url: str
    bucket: str = DEFAULT_BUCKET


def s3_url(bucket: str, key: str, region: str = AWS_REGION) -> str:
    return f"https://s3.{region}.amazonaws.com/{bucket}/{quote(key, safe='/~')}"


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, key) of an S3 URL in path style (``https://s3[.region].amazonaws.com/bucket/key``) or
    virtual-hosted style (``https://bucket.s3[.region].amazonaws.com/key``), or ``s3://bucket/key``."""
    parts = urlsplit(url.strip())
    host = (parts.hostname or "").lower()
    path = unquote(parts.path).lstrip("/")
    if parts.scheme == "s3":
        bucket, key = host, path
    elif parts.scheme in ("https", "http") and (m := _VIRTUAL_HOST.fullmatch(host)):
        bucket, key = m.group("bucket"), path
    elif parts.scheme in ("https", "http") and _PATH_HOST.fullmatch(host):
        bucket, _, key = path.partition("/")
    else:
        raise ArtifactError(f"not an S3 URL: {url!r}")
    check_key(key)
    if not _BUCKET.fullmatch(bucket):
        raise ArtifactError(f"not an S3 bucket name: {bucket!r}")
    return bucket, key


def check_key(key: str) -> None:
    if not key or len(key.encode()) > 1024:
        raise ArtifactError("an artifact key must be 1 to 1024 bytes")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise ArtifactError(f"artifact key {key!r} must be a relative path without empty, '.' or '..' parts")


class ArtifactStore:
    """Files under ``root/<bucket>/<key>``. ``base_url`` (``http://127.0.0.1:API_PORT``) and the keys are
    needed only to presign and serve; ``put`` and ``list`` work on the files alone."""

    def __init__(
        self,
        root: Path,
        *,
        base_url: str | None = None,
        credentials: tuple[str, str] | None = None,
        region: str = AWS_REGION,
    ) -> None:
        self.root = Path(root)
        self.base_url = base_url.rstrip("/") if base_url else None
        self.credentials = credentials
        self.region = region

    @classmethod
    def for_cloud(cls, cloud: CloudDir) -> ArtifactStore:
        from localcloud.cloud import api_url, read_aws_credentials

        return cls(
            cloud.artifacts_dir,
            base_url=api_url(cloud.load_settings()),
            credentials=read_aws_credentials(cloud),
        )

    def path_of(self, bucket: str, key: str) -> Path:
        check_key(key)
        if not _BUCKET.fullmatch(bucket):
            raise ArtifactError(f"not an S3 bucket name: {bucket!r}")
        return self.root / bucket / key

    def put(
        self, path: str | os.PathLike[str], key: str | None = None, *, bucket: str = DEFAULT_BUCKET
    ) -> str:
        """Copy a file in (atomically; an existing key is replaced); its S3 URL."""
        source = Path(path)
        key = key if key is not None else source.name
        target = self.path_of(bucket, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return s3_url(bucket, key, self.region)

    def list(self) -> list[Artifact]:
        out: list[Artifact] = []
        if not self.root.is_dir():
            return out
        for bucket_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for file in sorted(
                p for p in bucket_dir.rglob("*") if p.is_file() and not p.name.startswith(".put-")
            ):
                key = file.relative_to(bucket_dir).as_posix()
                out.append(
                    Artifact(
                        key, file.stat().st_size, s3_url(bucket_dir.name, key, self.region), bucket_dir.name
                    )
                )
        return out

    def local_url(self, bucket: str, key: str) -> str:
        if self.base_url is None:
            raise ArtifactError("this store has no base URL (the api port) to presign for")
        return f"{self.base_url}{URL_PREFIX}{bucket}/{quote(key, safe='/~')}"

    def presign(self, url: str, expires_s: int, now: float) -> str:
        """A GET URL for the S3 URL ``url`` on the api port, valid ``expires_s`` seconds from ``now``."""
        if self.credentials is None:
            raise ArtifactError("this store has no credentials to presign with")
        bucket, key = parse_s3_url(url)
        expires = max(MIN_EXPIRES_S, min(MAX_EXPIRES_S, int(expires_s)))
        access_key, secret_key = self.credentials
        return sigv4.presign(
            "GET",
            self.local_url(bucket, key),
            access_key=access_key,
            secret_key=secret_key,
            region=self.region,
            service="s3",
            now=now,
            expires=expires,
        )

    def serve(
        self, method: str, raw_path_with_query: str, headers: Mapping[str, str], now: float
    ) -> tuple[int, dict[str, str], Body]:
        """S3's answer to a presigned GET/HEAD: (status, headers, body bytes, the file or the part of it
        to stream)."""
        if method not in ("GET", "HEAD"):
            return _s3_error(
                405, "MethodNotAllowed", "The specified method is not allowed against this resource."
            )
        if self.credentials is None:
            return _s3_error(403, "AccessDenied", "Access Denied")
        access_key, secret_key = self.credentials
        try:
            sigv4.verify(
                method,
                raw_path_with_query,
                headers,
                b"",
                credentials={access_key: secret_key},
                now=now,
                region=self.region,
                services=("s3",),
            )
        except ApiError as exc:
            if "X-Amz-Signature" not in raw_path_with_query:
                return _s3_error(403, "AccessDenied", "Query-string authentication is required")
            return _s3_error(exc.status, exc.code, exc.message)
        raw_path = raw_path_with_query.partition("?")[0]
        bucket, _, key = unquote(raw_path[len(URL_PREFIX) :]).partition("/")
        try:
            path = self.path_of(bucket, key)
        except ArtifactError:
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if not path.is_file():
            return _s3_error(404, "NoSuchKey", "The specified key does not exist.")
        stat = path.stat()
        etag = hashlib.md5(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), usedforsecurity=False).hexdigest()
        out_headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(stat.st_size),
            "ETag": f'"{etag}"',
            "Accept-Ranges": "bytes",
        }
        wanted = _header(headers, "Range")
        if method == "GET" and wanted is not None:
            span = byte_range(wanted, stat.st_size)
            if span is False:
                status, err_headers, body = _s3_error(
                    416, "InvalidRange", "The requested range is not satisfiable"
                )
                return status, {**err_headers, "Content-Range": f"bytes */{stat.st_size}"}, body
            if span is not None:
                first, last = span
                part = FileSlice(path, first, last - first + 1)
                out_headers["Content-Length"] = str(part.length)
                out_headers["Content-Range"] = f"bytes {first}-{last}/{stat.st_size}"
                return 206, out_headers, part
        return 200, out_headers, (b"" if method == "HEAD" else path)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def byte_range(header: str, size: int) -> tuple[int, int] | Literal[False] | None:
    """The inclusive (first, last) byte of a single ``Range: bytes=...`` within ``size``; None when the header
    is not one range we serve (S3 then sends the whole object); False when it is unsatisfiable (416)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    if match.group("suffix") is not None:
        length = int(match.group("suffix"))
        if length == 0 or size == 0:
            return False
        return max(0, size - length), size - 1
    first = int(match.group("first"))
    if match.group("last") and int(match.group("last")) < first:
        return None  # syntactically invalid: ignored, as RFC 9110 says
    if first >= size:
        return False
    last = int(match.group("last")) if match.group("last") else size - 1
    return first, min(last, size - 1)


def _s3_error(status: int, code: str, message: str) -> tuple[int, dict[str, str], bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error>"
    ).encode()
    return status, {"Content-Type": "application/xml", "Content-Length": str(len(body))}, body
