"""The control plane's HTTP front end: SigV4 verified, routed by botocore's models, answered as AWS answers.

:class:`ApiFrontEnd` is the whole request → response mapping without sockets (tests drive it directly): a
presigned artifact URL goes to the artifact store; anything else must carry a valid SigV4 signature (403 with
AWS's error code otherwise), whose credential scope names the service (``iot`` or ``iot-jobs-data``: the two
share one port, and ``POST /command-executions`` is a different operation in each), then the route table
gives the operation and its parameters, and ``invoke(service, operation, params)`` runs it. Errors are
``x-amzn-ErrorType`` + ``{"message": ...}``, which botocore turns into ``ClientError`` with that code.

:func:`serve` puts it on a ``ThreadingHTTPServer`` (HTTP/1.1 keep-alive, as botocore's connection pool
expects) in a daemon thread.
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from base import logs
from localcloud.artifacts import URL_PREFIX, ArtifactStore, Body, FileSlice
from localcloud.awsapi import routes, sigv4
from localcloud.awsapi.errors import ApiError

log = logs.get_logger("localcloud.awsapi.http")

Invoke = Callable[[str, str, dict[str, Any]], dict[str, Any]]
Response = tuple[int, dict[str, str], Body]


class ApiFrontEnd:
    def __init__(
        self,
        *,
        credentials: Callable[[], Mapping[str, str]],
        invoke: Invoke,
        artifacts: ArtifactStore | None = None,
        region: str = "us-east-1",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.credentials = credentials
        self.invoke = invoke
        self.artifacts = artifacts
        self.region = region
        self.clock = clock

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> Response:
        """One request: (status, headers, body or a file to stream)."""
        request_id = str(uuid.uuid4())
        if raw_path.startswith(URL_PREFIX) and self.artifacts is not None:
            status, out_headers, payload = self.artifacts.serve(method, raw_path, headers, self.clock())
            return status, {**out_headers, "x-amz-request-id": request_id}, payload
        try:
            status, payload = self._api(method, raw_path, headers, body)
            out = {"Content-Type": "application/json", "x-amzn-RequestId": request_id}
            return status, out, payload
        except ApiError as exc:
            status, out, payload = routes.render_error(exc)
            log.info("api.request.error", method=method, path=raw_path.partition("?")[0], code=exc.code)
            return status, {**out, "x-amzn-RequestId": request_id}, payload

    def _api(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        if len(body) > routes.MAX_BODY_BYTES:
            raise ApiError(413, "RequestEntityTooLargeException", "Request body is too large")
        verified = sigv4.verify(
            method,
            raw_path,
            headers,
            body,
            credentials=self.credentials(),
            now=self.clock(),
            region=self.region,
            services=[routes.signing_name(s) for s in routes.SERVICES],
        )
        service = routes.service_for_signing_name(verified.service)
        assert service is not None  # verify() checked the scope against the signing names
        route, labels = routes.match(service, method, raw_path)
        params = routes.parse_request(route, labels, raw_path.partition("?")[2], headers, body)
        result = self.invoke(service, route.operation, params)
        log.debug("api.request", service=service, operation=route.operation)
        return routes.render_result(route, result)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "roomba-local-cloud"
    front: ApiFrontEnd  # set on the subclass made by serve()

    def setup(self) -> None:
        super().setup()
        # headers and body go out as two writes: without this, Nagle + delayed ACK cost 40 ms a request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length_text = self.headers.get("Content-Length") or "0"
        try:
            length = int(length_text)
        except ValueError:
            length = -1
        if length < 0 or self.headers.get("Transfer-Encoding"):
            self._reply(
                *routes.render_error(ApiError(400, "BadRequestException", "Content-Length is required"))
            )
            self.close_connection = True
            return
        if length > routes.MAX_BODY_BYTES:
            self._reply(
                *routes.render_error(ApiError(413, "RequestEntityTooLargeException", "Request too large"))
            )
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        headers = list(self.headers.items())
        merged: dict[str, str] = {}
        for name, value in headers:
            merged[name] = f"{merged[name]},{value}" if name in merged else value
        try:
            status, out_headers, payload = self.front.handle(self.command, self.path, merged, body)
        except Exception:
            log.exception("api.request.crashed", method=self.command, path=self.path.partition("?")[0])
            status, out_headers, payload = routes.render_error(
                ApiError(
                    500, "InternalFailureException", "The local cloud failed on this request; see its log"
                )
            )
        try:
            self._reply(status, out_headers, payload)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # the client went away mid-answer (a robot's download cut by its network, or a client that timed
            # out): its next request resumes; nothing here is broken
            self.close_connection = True
            log.info(
                "api.client_gone",
                method=self.command,
                path=self.path.partition("?")[0],
                error=type(exc).__name__,
            )

    def _reply(self, status: int, headers: Mapping[str, str], payload: Body) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if isinstance(payload, Path):
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(payload.stat().st_size))
            self.end_headers()
            with open(payload, "rb") as f:
                shutil.copyfileobj(f, self.wfile)
            return
        if isinstance(payload, FileSlice):
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(payload.length))
            self.end_headers()
            for chunk in payload.chunks():
                self.wfile.write(chunk)
            return
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("api.http", line=format % args)


def serve(front: ApiFrontEnd, host: str, port: int) -> ThreadingHTTPServer:
    """Bind ``host:port`` (``OSError`` if taken) and serve in a daemon thread; ``shutdown()`` stops it."""
    handler = type("ApiHandler", (_Handler,), {"front": front})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="api-http", daemon=True).start()
    return server


def json_body(payload: Body) -> Any:
    """The decoded JSON of a response body (tests)."""
    return json.loads(payload.read_bytes() if isinstance(payload, Path | FileSlice) else payload)
