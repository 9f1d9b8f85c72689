"""Test helpers shipped with the package (in the spirit of ``structlog.testing``), usable by any test or bench.

Nothing here is imported by production code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

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
