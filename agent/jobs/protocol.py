"""AWS IoT Jobs' device MQTT API as the robot uses it: topics, requests, and what to do with an answer. Pure.

Requests go to ``$aws/things/{thing}/jobs/...`` and are answered on ``.../accepted`` or ``.../rejected``
with the request's ``clientToken``. Every update carries ``expectedVersion`` (the execution's
``versionNumber`` as last seen) and asks for the execution state back, so the next update knows the new
version. ``statusDetails`` follows AWS's limits: at most 10 pairs, keys ``[a-zA-Z0-9:_-]+`` up to 128
characters, values up to 1,024 (the *last* 1,024 of an output, as the Device Client keeps them) and
without control characters (``[^\\p{C}]+``: a newline, a tab or a carriage return is written as the two
characters ``\\n``, ``\\t``, ``\\r``, any other control or format character as ``\\uXXXX``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED")
TERMINAL = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"})
MAX_DETAILS = 10
MAX_KEY = 128
MAX_VALUE = 1024
KEY_RULE = re.compile(r"[a-zA-Z0-9:_-]+")
RETRYABLE = frozenset({"RequestThrottled", "InternalError", "Throttling", "ServiceUnavailable"})
RECONCILE = frozenset({"VersionMismatch", "InvalidStateTransition", "TerminalStateReached"})
# a describe refused with one of these: the execution is in a terminal state (AWS adds ``executionState``)
TERMINAL_CODES = frozenset({"TerminalStateReached", "InvalidStateTransition"})
ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def base(thing: str) -> str:
    return f"$aws/things/{thing}/jobs"


def subscriptions(thing: str) -> list[str]:
    b = base(thing)
    return [
        f"{b}/notify-next",
        f"{b}/notify",
        f"{b}/start-next/+",
        f"{b}/get/+",
        f"{b}/+/get/+",
        f"{b}/+/update/+",
    ]


def get_topic(thing: str) -> str:
    return f"{base(thing)}/get"


def start_next_topic(thing: str) -> str:
    return f"{base(thing)}/start-next"


def describe_topic(thing: str, job_id: str) -> str:
    return f"{base(thing)}/{job_id}/get"


def update_topic(thing: str, job_id: str) -> str:
    return f"{base(thing)}/{job_id}/update"


def tail(text: str, limit: int = MAX_VALUE) -> str:
    return text[-limit:] if len(text) > limit else text


def printable(text: str) -> str:
    """``text`` without the characters AWS refuses in a ``statusDetails`` value (Unicode category C):
    newlines, tabs and carriage returns as ``\\n``, ``\\t``, ``\\r``, the others as ``\\uXXXX``."""
    if text.isprintable():  # the common case (isprintable is False for spaces other than " " too)
        return text
    return "".join(
        (ESCAPES.get(ch) or f"\\u{ord(ch):04x}") if unicodedata.category(ch)[0] == "C" else ch for ch in text
    )


def details(values: Mapping[str, Any]) -> dict[str, str]:
    """``statusDetails`` within AWS's limits: string values (last 1,024 characters) without control
    characters (:func:`printable`), valid keys, empty values dropped (AWS takes 1..1,024), at most 10
    pairs in the given order."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None or len(out) >= MAX_DETAILS:
            continue
        name = re.sub(r"[^a-zA-Z0-9:_-]", "_", str(key))[:MAX_KEY]
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        text = tail(printable(text))
        if name and text:
            out[name] = text
    return out


def request(token: str, **fields: Any) -> bytes:
    body = {k: v for k, v in fields.items() if v is not None}
    body["clientToken"] = token
    return json.dumps(body, separators=(",", ":")).encode()


def update_request(
    token: str,
    status: str,
    status_details: Mapping[str, str],
    expected_version: int | None,
    execution_number: int | None,
    step_timeout_min: int | None = None,
) -> bytes:
    return request(
        token,
        status=status,
        statusDetails=dict(status_details) or None,
        expectedVersion=expected_version,
        executionNumber=execution_number,
        includeJobExecutionState=True,
        stepTimeoutInMinutes=step_timeout_min,
    )


def parse_answer(
    topic: str, thing: str, payload: bytes
) -> tuple[str, str | None, str, dict[str, Any]] | None:
    """(kind, job id, "accepted"/"rejected"/"event", body) of a message on this thing's jobs topics;
    kind is get, start-next, describe, update, notify or notify-next. None: not ours or not JSON."""
    prefix = base(thing) + "/"
    if not topic.startswith(prefix):
        return None
    rest = topic[len(prefix) :].split("/")
    try:
        body = json.loads(payload) if payload else {}
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    if rest in (["notify"], ["notify-next"]):
        return rest[0], None, "event", body
    if len(rest) == 2 and rest[0] in ("get", "start-next") and rest[1] in ("accepted", "rejected"):
        return rest[0], None, rest[1], body
    if len(rest) == 3 and rest[1] in ("get", "update") and rest[2] in ("accepted", "rejected"):
        return ("describe" if rest[1] == "get" else "update"), rest[0], rest[2], body
    return None


def version_of(value: Any) -> int | None:
    """``versionNumber`` as AWS sends it (a number; a numeric string is taken too)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def on_rejected(code: str, kind: str = "update") -> str:
    """What a rejected request (of ``kind``: update, describe ...) calls for: ``retry`` (with backoff),
    ``reconcile`` (describe the execution and decide), ``terminal`` (a describe: the execution has ended,
    ``executionState`` says how), ``gone`` (it does not exist) or ``give_up`` (our request was wrong)."""
    if code in RETRYABLE:
        return "retry"
    if kind == "describe" and code in TERMINAL_CODES:
        return "terminal"
    if code in RECONCILE:
        return "reconcile"
    if code == "ResourceNotFound":
        return "gone"
    return "give_up"


def terminal_status(body: Mapping[str, Any]) -> str | None:
    """The terminal status in a rejection's ``executionState`` (None: absent or not terminal)."""
    state = body.get("executionState")
    status = state.get("status") if isinstance(state, Mapping) else None
    return status if isinstance(status, str) and status in TERMINAL else None


def refused_details(code: str) -> dict[str, str]:
    """The last resort for a final update whose details the cloud refuses: a fixed ASCII reason."""
    name = re.sub(r"[^A-Za-z0-9_]", "", code)[:64] or "unknown"
    return {"reason": f"details refused by the cloud: {name}"}


def backoff_s(attempt: int, cap: float = 60.0) -> float:
    """1, 2, 4 ... seconds, capped: a request without an answer or a throttled one is sent again."""
    return float(min(cap, 2 ** max(0, attempt - 1)))
