"""``wait_until``, the one polling helper every test and bench uses, and ``tracebacks``, the check that a
log holds no traceback."""

from __future__ import annotations

import io
import time

import pytest

from base import logs
from base.testing import tracebacks, wait_until


def test_wait_until_returns_the_predicates_value() -> None:
    """The truthy value itself comes back (a message, a row), not just True."""
    calls: list[int] = []

    def third_time() -> dict[str, int] | None:
        calls.append(1)
        return {"calls": len(calls)} if len(calls) >= 3 else None

    assert wait_until(third_time, 5, interval=0.001) == {"calls": 3}
    assert len(calls) == 3


def test_wait_until_checks_once_even_with_no_time_left() -> None:
    """A zero timeout still evaluates the predicate once (no spurious failure)."""
    assert wait_until(lambda: "ready", 0) == "ready"


def test_wait_until_times_out_with_an_assertion_naming_what() -> None:
    """A timeout is a test failure (AssertionError), and the message says what never happened."""
    start = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.05 s waiting for the broker to listen"):
        wait_until(lambda: None, 0.05, "the broker to listen", interval=0.01)
    assert time.monotonic() - start < 2


@pytest.mark.parametrize("falsy", [None, False, 0, "", [], {}], ids=repr)
def test_falsy_values_keep_it_waiting(falsy: object) -> None:
    """An empty list or a zero is "not yet", like None."""
    with pytest.raises(AssertionError, match="the condition"):
        wait_until(lambda: falsy, 0.02, interval=0.005)


def test_tracebacks_finds_uncaught_and_logged_exceptions() -> None:
    """Both shapes a fault test must catch: a printed traceback (asyncio callback) and a JSON ``exception``."""
    log = "\n".join(
        [
            '{"event": "agent.started", "level": "info"}',
            "Exception in callback Agent._publish_done(<Future finished>)",
            "Traceback (most recent call last):",
            '  File "agent/mqtt.py", line 1, in puback_ok',
            '{"event": "shadow.store.failed", "level": "error", "exception": "Traceback ...\\nOSError: disk"}',
        ]
    )
    assert tracebacks(log) == [
        "Traceback (most recent call last):",
        '{"event": "shadow.store.failed", "level": "error", "exception": "Traceback ...\\nOSError: disk"}',
    ]


@pytest.mark.parametrize(
    "line",
    [
        pytest.param('{"event": "mqtt.reconnect", "why": "exception"}', id="word_as_a_value"),
        pytest.param('{"event": "x", "exception": null}', id="null_exception"),
        pytest.param('{"event": "x", "exception": ""}', id="empty_exception"),
        pytest.param('{not json "exception"', id="not_json"),
        pytest.param("mqtt.publish.failed reason=timeout", id="console_line"),
    ],
)
def test_tracebacks_ignores_lines_that_only_mention_exceptions(line: str) -> None:
    """No false alarm from a field value, an empty field or a line that is not JSON."""
    assert tracebacks(line) == []


def test_tracebacks_sees_what_base_logs_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end with the real JSON renderer: ``log.exception`` produces a line ``tracebacks`` reports."""
    monkeypatch.delenv("ROOMBA_LOG_FORMAT", raising=False)
    monkeypatch.delenv("ROOMBA_LOG_LEVEL", raising=False)
    stream = io.StringIO()
    logs.configure("info", json=True, stream=stream)
    log = logs.get_logger()
    log.info("fine")
    try:
        raise TypeError("int() argument must be a string, not 'NoneType'")
    except TypeError:
        log.exception("agent.publish.failed")
    (found,) = tracebacks(stream.getvalue())
    assert "agent.publish.failed" in found and "TypeError" in found
