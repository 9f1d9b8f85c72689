"""Structured logging shared by every command of the project.

JSON lines when stderr is not a terminal (systemd's journal, CI, pipes), a readable console renderer on a
terminal. Event names are dotted (``oi.frame.corrupt``). A redaction processor makes sure that nothing that
looks like a private key, a PIN or a whole certificate ever reaches a log line, whoever logged it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(pin|password|passphrase|secret|private_?key|token_pin|so_pin)$", re.I)
_PEM = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?(-----END [A-Z0-9 ]+-----|$)", re.S)
REDACTED = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, str) and "-----BEGIN" in value:
        return _PEM.sub(REDACTED, value)
    if isinstance(value, bytes) and b"-----BEGIN" in value:
        return REDACTED
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: blank secret-named fields and PEM blocks anywhere in the event."""
    for key in list(event_dict):
        if _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _scrub(event_dict[key])
    return event_dict


def configure(level: str | int = "info", *, json: bool | None = None, stream: Any = None) -> None:
    """Configure structlog (and stdlib logging) once per process.

    ``json=None`` picks JSON unless the stream is a terminal. ``ROOMBA_LOG_FORMAT=json|console`` and
    ``ROOMBA_LOG_LEVEL`` override, so a unit file or a test can force either.
    """
    stream = stream or sys.stderr
    env_level = os.environ.get("ROOMBA_LOG_LEVEL")
    if env_level:
        level = env_level
    if isinstance(level, str):
        level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    fmt = os.environ.get("ROOMBA_LOG_FORMAT")
    if fmt in ("json", "console"):
        json = fmt == "json"
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty() if hasattr(stream, "isatty") else False)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info if json else structlog.dev.set_exc_info,
        renderer,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level, stream=stream, format="%(message)s")


def get_logger(name: str | None = None, **bound: Any) -> Any:
    """A structlog logger, optionally with fields bound (e.g. ``thing=...``)."""
    log = structlog.get_logger(name) if name else structlog.get_logger()
    return log.bind(**bound) if bound else log
