"""The local cloud's control plane for our own command-line tools: AWS's REST/JSON API over HTTP on
127.0.0.1, signed with the cloud's operator credentials, without boto3.

``roomba-fleet jobs`` and the benches call the same operations the AWS CLI and boto3 do (``CreateJob``,
``ListThings``, ...), by their botocore names and with botocore's parameter names, so what a script
learns here works against AWS unchanged. The request is laid out from the checked-in route table
(:func:`localcloud.awsapi.routes.route` and :func:`~localcloud.awsapi.routes.build_request`, generated from
botocore's models: method, URI template and where each member goes) and signed with
:func:`localcloud.awsapi.sigv4.sign`; the answer is the operation's JSON output as a dict (timestamps as
epoch seconds, as AWS's REST/JSON protocol sends them).

Where to call and as whom comes from the cloud's directory alone: the API port from ``run/up.json`` (what
a running ``up`` uses), else ``settings.json``'s ``api_port``, else :data:`DEFAULT_API_PORT`; the keys from
``DIR/aws/credentials`` (profile ``local``), written by ``up``. An error answer raises
:class:`localcloud.awsapi.errors.ApiError` with AWS's code (``ResourceNotFoundException``, ...); a
throttled one (``ThrottlingException``, HTTP 429/503) is sent again after a capped, jittered backoff;
nothing listening raises :class:`ApiNotRunning`, whose message says how to start the cloud.
"""

from __future__ import annotations

import configparser
import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from base.backoff import Backoff
from localcloud.awsapi.errors import ApiError
from localcloud.awsapi.routes import build_request, route
from localcloud.layout import AWS_PROFILE, AWS_REGION, DEFAULT_API_PORT, CloudDir, SettingsError

REGION = AWS_REGION
PROFILE = AWS_PROFILE
THROTTLED_CODES = frozenset(
    {"ThrottlingException", "TooManyRequestsException", "ServiceUnavailableException", "Throttling"}
)
MAX_ATTEMPTS = 6
RETRY_BASE_S, RETRY_CAP_S = 0.2, 3.0


class ApiNotRunning(Exception):
    """The control plane in DIR cannot be reached, or DIR is not a running local cloud; the message says
    what to do."""


def error_from(status: int, headers: Mapping[str, str], body: bytes) -> ApiError:
    """AWS's REST/JSON error: the code from ``x-amzn-ErrorType`` (or the body's ``__type``/``code``), the
    message from the body."""
    lowered = {k.lower(): v for k, v in headers.items()}
    doc: dict[str, Any] = {}
    try:
        parsed = json.loads(body) if body else {}
        doc = parsed if isinstance(parsed, dict) else {}
    except ValueError:
        pass
    code = str(lowered.get("x-amzn-errortype") or doc.get("__type") or doc.get("code") or "")
    code = code.split(":", 1)[0].rsplit("#", 1)[-1] or f"Http{status}"
    message = (
        doc.get("message") or doc.get("Message") or body.decode(errors="replace")[:200] or f"HTTP {status}"
    )
    return ApiError(status, code, str(message))


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


def read_credentials(cloud: CloudDir, profile: str = PROFILE) -> Credentials:
    """Profile ``local`` of ``DIR/aws/credentials``; :class:`ApiNotRunning` when the file or the profile is
    missing (``up`` writes it the first time it runs)."""
    path = cloud.aws_credentials
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except FileNotFoundError:
        raise ApiNotRunning(
            f"{path} does not exist: {cloud.root} has no control-plane credentials yet; start the local cloud "
            f"with `roomba-fleet up --dir {cloud.root}` (it writes them)"
        ) from None
    except (OSError, configparser.Error) as exc:
        raise ApiNotRunning(f"{path} is unreadable ({exc})") from None
    if not parser.has_section(profile):
        raise ApiNotRunning(
            f"{path} has no [{profile}] profile; restart `roomba-fleet up --dir {cloud.root}`"
        )
    section = parser[profile]
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        raise ApiNotRunning(f"{path} [{profile}] lacks aws_access_key_id / aws_secret_access_key")
    return Credentials(key.strip(), secret.strip())


def api_address(cloud: CloudDir) -> tuple[str, int]:
    """(host, port) of the control plane: ``run/up.json``'s ``api_port`` while ``up`` runs, else
    ``settings.json``'s, else :data:`DEFAULT_API_PORT`."""
    try:
        info = json.loads(cloud.run_file.read_text())
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict):
        info = {}
    try:
        settings = cloud.load_settings()
    except SettingsError as exc:
        raise ApiNotRunning(str(exc)) from None
    port = info.get("api_port")
    if not isinstance(port, int):
        port = settings.api_port if isinstance(settings.api_port, int) else DEFAULT_API_PORT
    return settings.endpoint, port


class ApiClient:
    """One keep-alive HTTP connection to the control plane. Not thread-safe: one per thread."""

    def __init__(
        self,
        cloud: CloudDir,
        *,
        timeout: float = 10.0,
        max_attempts: int = MAX_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cloud = cloud
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.sleep = sleep
        self.clock = clock
        self.credentials = read_credentials(cloud)
        self.host, self.port = api_address(cloud)
        self._conn: http.client.HTTPConnection | None = None
        self.throttled = 0
        """Answers that were throttled and sent again (for benches and tests)."""

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _not_running(self, exc: BaseException) -> ApiNotRunning:
        where = f"{self.host}:{self.port}"
        if isinstance(exc, ConnectionRefusedError):
            return ApiNotRunning(
                f"the local cloud's control plane is not running (nothing listens on {where}); start it with "
                f"`roomba-fleet up --dir {self.cloud.root}`"
            )
        return ApiNotRunning(
            f"cannot reach the local cloud's control plane at {where} ({exc or type(exc).__name__}); is "
            f"`roomba-fleet up --dir {self.cloud.root}` running?"
        )

    def _send_once(
        self, method: str, path: str, headers: dict[str, str], body: bytes, signing: str
    ) -> tuple[int, dict[str, str], bytes]:
        from localcloud.awsapi import sigv4

        url = f"http://{self.host}:{self.port}{path}"
        for fresh in (False, True):
            if fresh:
                self.close()
            reused = self._conn is not None
            signed = sigv4.sign(
                method,
                url,
                {"host": f"{self.host}:{self.port}", **headers},
                body,
                access_key=self.credentials.access_key,
                secret_key=self.credentials.secret_key,
                region=REGION,
                service=signing,
                now=self.clock(),
            )
            conn = self._connection()
            try:
                conn.request(method, path, body=body or None, headers=dict(signed))
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and not fresh:  # an idle keep-alive connection the server had closed
                    continue
                raise self._not_running(exc) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._not_running(exc) from None
            if response.getheader("connection", "").lower() == "close":
                self.close()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        raise AssertionError("unreachable")  # pragma: no cover

    def call(
        self, operation: str, params: Mapping[str, Any] | None = None, *, service: str = "iot"
    ) -> dict[str, Any]:
        """Run ``operation`` (botocore's name, e.g. ``CreateJob``) of ``service`` with ``params`` (botocore's
        member names); its output as a dict. Raises :class:`ApiError` (AWS's code) or :class:`ApiNotRunning`."""
        r = route(service, operation)
        method, path, headers, body = build_request(r, params or {})
        backoff = Backoff(base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S)
        for attempt in range(1, self.max_attempts + 1):
            status, response_headers, data = self._send_once(method, path, headers, body, r.signing_name)
            if 200 <= status < 300:
                if not data:
                    return {}
                try:
                    doc = json.loads(data)
                except ValueError:
                    raise ApiError(
                        status, "InvalidResponse", f"{operation}: the answer is not JSON"
                    ) from None
                return doc if isinstance(doc, dict) else {"result": doc}
            error = error_from(status, response_headers, data)
            if (error.code in THROTTLED_CODES or status in (429, 503)) and attempt < self.max_attempts:
                self.throttled += 1
                self.sleep(RETRY_BASE_S + backoff.next_delay())
                continue
            raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def pages(
        self, operation: str, params: Mapping[str, Any] | None, key: str, *, service: str = "iot"
    ) -> Iterator[Any]:
        """Every item of the list ``key`` of a paginated ``List...`` operation, following ``nextToken``."""
        request = dict(params or {})
        while True:
            page = self.call(operation, request, service=service)
            yield from page.get(key) or []
            token = page.get("nextToken")
            if not token:
                return
            request["nextToken"] = token


def wait_reachable(cloud: CloudDir, timeout: float) -> None:
    """Until the control plane accepts a TCP connection (``up`` restarting), at most ``timeout`` seconds;
    :class:`ApiNotRunning` after that."""
    deadline = time.monotonic() + timeout
    while True:
        host, port = api_address(cloud)
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise ApiNotRunning(f"the control plane at {host}:{port} is not reachable ({exc})") from None
        time.sleep(0.2)
