"""Test helpers shipped with the package (in the spirit of ``structlog.testing``), usable by any test or bench.

Nothing here is imported by production code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["tracebacks", "wait_until"]

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str = "the condition",
    interval: float = 0.05,
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that; :class:`AssertionError`
    naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def tracebacks(log_text: str) -> list[str]:
    """The lines of a log that carry a traceback: Python's ``Traceback (most recent call last)`` header (an
    uncaught exception, asyncio's "Exception in callback"), or a JSON log line with an ``exception`` field
    (where :mod:`base.logs` puts a logged exception). A fault test asserts this is empty."""
    found = []
    for line in log_text.splitlines():
        text = line.strip()
        if "Traceback (most recent call last)" in text:
            found.append(line)
        elif text.startswith("{") and '"exception"' in text:
            try:
                doc = json.loads(text)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("exception"):
                found.append(line)
    return found
