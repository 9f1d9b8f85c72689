"""Downloading a release bundle from its (presigned) URL: resumable, checked, bounded.

The bundle goes to ``downloads/<sha256>.part`` and, once its size and SHA-256 are the job's, is fsynced and
renamed to ``downloads/<sha256>.bundle``. A cut connection, a timeout or a 5xx is retried with the
project's backoff (:class:`base.backoff.Backoff`), each retry asking for the rest only (``Range: bytes=N-``;
a server that ignores it answers 200 and the file starts again). What is on disk survives a restart: the
next attempt re-hashes the part and goes on from its end. ``limit_kbps`` (kilobits per second, 0:
unlimited) paces the reads so an update does not starve the robot's MQTT link. A 403 (a presigned URL that
expired or was tampered with) or a 404 is not retried: the job fails with S3's code and message.

The HTTP side is blocking (``urllib``) and runs in a thread (:func:`download`); cancelling the task stops it
at the next chunk.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from base.backoff import Backoff
from provisioning.fsio import fsync_dir, sha256_file

CHUNK = 64 * 1024
DEFAULT_RETRIES = 5
Progress = Callable[[int, int], None]


class DownloadError(Exception):
    """``kind``: ``hash`` (the bytes are not the job's: size or SHA-256), ``http`` (a refusal that retrying
    does not change: 403, 404, 4xx), ``network`` (still failing after the retries), ``io`` (the disk)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Retry(Exception):
    pass


class Cancelled(Exception):
    pass


@dataclass(frozen=True)
class Target:
    url: str
    sha256: str
    size: int


def paths(directory: Path, sha256: str) -> tuple[Path, Path]:
    """(the partial file, the complete bundle) for ``sha256`` in ``directory``."""
    return directory / f"{sha256}.part", directory / f"{sha256}.bundle"


def partial_bytes(directory: Path, sha256: str) -> int:
    """Bytes already on disk for this bundle (complete or partial)."""
    part, done = paths(directory, sha256)
    for p in (done, part):
        try:
            return p.stat().st_size
        except FileNotFoundError:
            continue
    return 0


def _s3_error(body: bytes) -> str:
    text = body[:2000].decode("utf-8", errors="replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    if code:
        return code.group(1) + (f": {message.group(1)}" if message else "")
    return " ".join(text.split())[:200]


def _total(content_range: str) -> int | None:
    """The whole size in ``Content-Range: bytes a-b/N`` or ``bytes */N`` (None: not said)."""
    m = re.search(r"/(\d+)\s*$", content_range or "")
    return int(m.group(1)) if m else None


def _size_mismatch(total: int, size: int) -> str:
    return f"the server's bundle is {total} bytes, the job says {size}"


def fetch(
    target: Target,
    directory: Path,
    *,
    limit_kbps: int = 0,
    timeout_s: float = 60.0,
    retries: int = DEFAULT_RETRIES,
    backoff: Backoff | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Path:
    """Download ``target`` into ``directory``; the complete bundle's path. Blocking. Raises DownloadError
    (or Cancelled when ``cancel`` is set)."""
    directory.mkdir(parents=True, exist_ok=True)
    part, done = paths(directory, target.sha256)
    if done.exists():
        if done.stat().st_size == target.size and sha256_file(done) == target.sha256:
            return done
        done.unlink()
    backoff = backoff or Backoff(base_s=1.0, cap_s=30.0)
    while True:
        resumed = False  # some bytes of the part file came before this download's last request
        attempt = 0
        while True:
            resumed = resumed or (part.exists() and part.stat().st_size > 0)
            try:
                _attempt(target, part, limit_kbps, timeout_s, progress, cancel, sleep, clock)
                break
            except _Retry as exc:
                attempt += 1
                if attempt > retries:
                    raise DownloadError(
                        "network", f"download failed after {retries + 1} attempts: {exc}"
                    ) from None
                delay = backoff.next_delay()
                if cancel is not None:
                    if cancel.wait(delay):
                        raise Cancelled() from None
                else:
                    sleep(delay)
        size = part.stat().st_size
        wrong = None
        if size != target.size:
            wrong = f"the download is {size} bytes, the job says {target.size}"
        else:
            digest = sha256_file(part)
            if digest != target.sha256:
                wrong = f"the download's SHA-256 is {digest}, the job says {target.sha256}"
        if wrong is None:
            break
        part.unlink(missing_ok=True)
        if not resumed:  # a whole download from byte 0 that is not the job's bundle
            raise DownloadError("hash", wrong)
        # a resumed one may hold a torn tail (a power cut) or another object's prefix: once more from byte 0
    os.replace(part, done)
    fsync_dir(directory)
    return done


def _attempt(
    target: Target,
    part: Path,
    limit_kbps: int,
    timeout_s: float,
    progress: Progress | None,
    cancel: threading.Event | None,
    sleep: Callable[[float], None],
    clock: Callable[[], float],
) -> None:
    offset = part.stat().st_size if part.exists() else 0
    if offset > target.size:
        part.unlink()
        offset = 0
    if offset == target.size and offset > 0:
        return  # complete on disk; the caller checks the hash
    headers = {"User-Agent": "roomba-agent-update"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(target.url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        if exc.code == 416 and offset:
            total = _total(exc.headers.get("Content-Range", ""))
            part.unlink()  # our part is not a prefix of what the server has: start again
            if total is not None and total != target.size:
                raise DownloadError("hash", _size_mismatch(total, target.size)) from None
            raise _Retry("the server refused the range; starting again") from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise _Retry(f"HTTP {exc.code} {_s3_error(body)}") from None
        hint = " (the presigned URL expired or is not valid)" if exc.code == 403 else ""
        raise DownloadError(
            "http", f"the download was refused: HTTP {exc.code} {_s3_error(body)}{hint}"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _Retry(f"cannot connect: {reason}") from None
    with response:
        status = response.status
        if status == 206:
            content_range = response.headers.get("Content-Range", "")
            m = re.match(r"bytes (\d+)-", content_range)
            if m is None or int(m.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Retry("the server answered another range; starting again")
            total = _total(content_range)
            mode = "ab"
        elif status == 200:
            offset, mode = 0, "wb"  # the whole file again (the server ignored the range)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        else:
            raise _Retry(f"unexpected HTTP {status}")
        if total is not None and total != target.size:
            part.unlink(missing_ok=True)
            raise DownloadError("hash", _size_mismatch(total, target.size))
        rate = limit_kbps * 1000 / 8  # bytes per second
        started, got = clock(), 0
        try:
            with open(part, mode) as f:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled()
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    if offset + got > target.size:
                        break
                    if progress is not None:
                        progress(offset + got, target.size)
                    if rate > 0:
                        ahead = got / rate - (clock() - started)
                        if ahead > 0:
                            sleep(ahead)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, http.client.HTTPException) as exc:
            if (
                isinstance(exc, OSError) and exc.errno is not None and exc.errno in (28, 122)
            ):  # ENOSPC, EDQUOT
                raise DownloadError("io", f"the disk is full: {exc.strerror}") from None
            raise _Retry(f"the connection broke after {offset + got} of {target.size} bytes: {exc}") from None
    if offset + got < target.size:
        raise _Retry(f"the connection closed after {offset + got} of {target.size} bytes")


async def download(
    target: Target,
    directory: Path,
    *,
    limit_kbps: int = 0,
    timeout_s: float = 60.0,
    retries: int = DEFAULT_RETRIES,
    progress: Progress | None = None,
) -> Path:
    """:func:`fetch` in a thread; ``progress`` is called on the caller's loop. Cancelling stops the
    download at its next chunk (the part stays for a resume)."""
    loop = asyncio.get_running_loop()
    cancel = threading.Event()

    def on_progress(n: int, total: int) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, n, total)

    task = asyncio.ensure_future(
        asyncio.to_thread(
            fetch,
            target,
            directory,
            limit_kbps=limit_kbps,
            timeout_s=timeout_s,
            retries=retries,
            progress=on_progress,
            cancel=cancel,
        )
    )
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        cancel.set()
        await asyncio.gather(task, return_exceptions=True)
        raise
