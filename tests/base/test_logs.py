"""Structured logs: JSON or console by stream and environment, levels, bound fields, and the redaction
that keeps keys, PINs and certificates out of every log line whoever logs them."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from base.logs import REDACTED, configure, get_logger, redact_secrets

PEM = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBx\n-----END EC PRIVATE KEY-----"


def _redact(**fields: Any) -> dict[str, Any]:
    return dict(redact_secrets(None, "info", dict(fields)))


@pytest.mark.parametrize(
    "key",
    ["pin", "PIN", "user_pin", "so_pin", "token_pin", "password", "passphrase", "secret", "private_key"],
)
def test_secret_named_fields_are_blanked(key: str) -> None:
    """Any field named like a PIN, password, secret or private key is blanked, whatever its value."""
    assert _redact(**{key: "246810", "thing": "robot-1"}) == {key: REDACTED, "thing": "robot-1"}


def test_pem_blocks_are_cut_out_of_any_string() -> None:
    """A PEM anywhere (even in the event text) goes; the words around it stay for the reader."""
    out = _redact(event=f"loaded {PEM} ok", detail=f"x {PEM}", count=3)
    assert out == {"event": f"loaded {REDACTED} ok", "detail": f"x {REDACTED}", "count": 3}


def test_an_unterminated_pem_is_cut_to_the_end() -> None:
    """A truncated key (a partial read) is still a key."""
    assert _redact(detail="key: -----BEGIN PRIVATE KEY-----\nMIGHAgEA") == {"detail": f"key: {REDACTED}"}


def test_pem_bytes_are_blanked_whole() -> None:
    """Bytes holding a PEM are blanked whole; other bytes are left alone."""
    assert _redact(blob=PEM.encode(), other=b"plain") == {"blob": REDACTED, "other": b"plain"}


@pytest.fixture
def no_log_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROOMBA_LOG_FORMAT", raising=False)
    monkeypatch.delenv("ROOMBA_LOG_LEVEL", raising=False)


def _json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.usefixtures("no_log_env")
def test_json_lines_carry_event_level_time_fields_and_no_secret() -> None:
    """One JSON object per line: event, level, UTC time, bound fields; secrets redacted in the output."""
    stream = io.StringIO()
    configure("info", json=True, stream=stream)
    get_logger("t", thing="robot-1").info("ca.key.loaded", pin="246810", pem=PEM)
    (line,) = _json_lines(stream)
    assert line["event"] == "ca.key.loaded" and line["level"] == "info" and line["thing"] == "robot-1"
    assert line["pin"] == REDACTED and line["pem"] == REDACTED
    assert line["timestamp"].endswith("Z")
    assert "246810" not in stream.getvalue() and "MHcCAQEEIBx" not in stream.getvalue()


@pytest.mark.usefixtures("no_log_env")
def test_a_pipe_gets_json_and_a_terminal_gets_the_console_renderer() -> None:
    """``json=None`` decides by the stream: systemd's journal and CI pipes get JSON, a person gets text."""
    pipe = io.StringIO()
    configure("info", stream=pipe)
    get_logger().info("agent.started", thing="robot-1")
    assert _json_lines(pipe)[0]["event"] == "agent.started"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    configure("info", stream=terminal)
    get_logger().info("agent.started", thing="robot-1")
    text = terminal.getvalue()
    assert "agent.started" in text and "robot-1" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


@pytest.mark.usefixtures("no_log_env")
def test_levels_filter_below_the_configured_one() -> None:
    """Below the configured level nothing is written."""
    stream = io.StringIO()
    configure("warning", json=True, stream=stream)
    log = get_logger()
    log.info("hidden")
    log.debug("hidden.too")
    log.warning("shown")
    assert [line["event"] for line in _json_lines(stream)] == ["shown"]


def test_environment_overrides_format_and_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit file or a test forces JSON and a level whatever the caller asked for."""
    monkeypatch.setenv("ROOMBA_LOG_FORMAT", "json")
    monkeypatch.setenv("ROOMBA_LOG_LEVEL", "debug")
    stream = io.StringIO()
    configure("error", json=False, stream=stream)
    get_logger().debug("oi.frame.corrupt", count=1)
    (line,) = _json_lines(stream)
    assert (line["event"], line["level"], line["count"]) == ("oi.frame.corrupt", "debug", 1)


@pytest.mark.usefixtures("no_log_env")
def test_json_exceptions_are_rendered_into_the_line() -> None:
    """One JSON line per failure, traceback included, so the journal keeps it together."""
    stream = io.StringIO()
    configure("info", json=True, stream=stream)
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        get_logger().exception("shadow.store.failed")
    (line,) = _json_lines(stream)
    assert line["event"] == "shadow.store.failed" and line["level"] == "error"
    assert "RuntimeError: disk on fire" in line["exception"]
