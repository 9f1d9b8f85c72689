"""AWS IoT Device Shadow document rules, pure: no I/O, no clock, no MQTT.

One implementation of the rules serves both sides of the wire: the local cloud's shadow service
(``shadow.engine``) answers requests with it, and the agent uses it to compute deltas and to keep a
local copy of its shadow consistent with what the cloud would hold. The rules are AWS's, from the AWS IoT
Core Developer Guide ("Device Shadow service documents", "Interacting with shadows", "Device Shadow error
messages") and the AWS IoT API Reference (``UpdateThingShadow``); where AWS is undocumented, the behaviour
follows responses observed from AWS IoT Core and the choice is noted.

Public API (small on purpose):

- ``Shadow(state, metadata, version)``: a stored document. ``state`` holds ``desired`` / ``reported`` only
  when non-empty; ``metadata`` mirrors it with ``{"timestamp": T}`` leaves. Treat both as read-only.
- ``ShadowError(code, message, client_token)``: a request AWS would reject; ``error_document()`` renders it.
- ``parse_update(payload) -> UpdateRequest`` validates an ``/update`` payload (bytes, str or already
  decoded JSON, i.e. dicts and lists) in AWS's order: encoding, JSON (strict: no NaN/Infinity),
  ``state`` node, section types, ``clientToken``, ``version``, depth.
- ``client_token_of(payload)`` for ``/get`` and ``/delete`` (their content is otherwise ignored).
- ``apply_update(shadow, request, now, base_version=0) -> UpdateResult`` merges (null deletes, arrays are
  values, empty objects pruned), checks optimistic locking (409) and the 8 KB limit (413), and returns the
  new ``Shadow`` with the ``update/accepted``, ``update/documents`` and (if any) ``update/delta`` payloads.
  Untouched sub-objects are shared between the old and the new ``Shadow`` (never mutate them).
- ``get_document``, ``delete_document``: the ``get/accepted`` and ``delete/accepted`` payloads.
- ``delta(desired, reported)`` and ``delta_metadata(delta, desired_metadata)``: the delta rules alone.
- ``merge_state(current, patch)``: the merge rules alone (for an agent's local reported copy).
- ``validate_thing_name``, ``validate_shadow_name``: the AWS name rules (raise ``ShadowError`` 400).
- ``compact_json(value)`` and ``document_json(shadow)``: the compact JSON AWS sends (and the 8 KB rule
  counts); a ``Shadow`` made by ``apply_update`` carries its sections' JSON, so an update re-serializes only
  the sections it touched.

Payloads are plain ``dict`` objects ready for ``json.dumps``; timestamps are integer epoch seconds passed in
by the caller, so the rules are deterministic and table-testable.
"""

from __future__ import annotations

import json
import json.encoder
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shadow.names import is_shadow_name, is_thing_name

MAX_DOCUMENT_BYTES = 8192
MAX_DEPTH = 6
MAX_CLIENT_TOKEN_BYTES = 64
DELETED_VERSION_MEMORY_S = 48 * 3600
SECTIONS = ("desired", "reported")

MSG_INVALID_JSON = "Invalid JSON"
MSG_MISSING_STATE = "Missing required node: state"
MSG_STATE_NOT_OBJECT = "State node must be an object"
MSG_DESIRED_NOT_OBJECT = "Desired node must be an object"
MSG_REPORTED_NOT_OBJECT = "Reported node must be an object"
MSG_INVALID_VERSION = "Invalid version"
MSG_INVALID_TOKEN = "Invalid clientToken"
MSG_TOO_DEEP = f"JSON contains too many levels of nesting; maximum is {MAX_DEPTH}"
MSG_VERSION_CONFLICT = "Version conflict"
MSG_TOO_LARGE = "The payload exceeds the maximum size allowed"
MSG_BAD_ENCODING = "Unsupported documented encoding; supported encoding is UTF-8"
MSG_TOO_MANY_REQUESTS = "Too Many Requests"
MSG_INTERNAL = "Internal service failure"
MSG_INVALID_THING_NAME = "Invalid thing name"
MSG_INVALID_SHADOW_NAME = "Invalid shadow name"


class ShadowError(Exception):
    """A request the shadow service rejects, with AWS's HTTP-style code and message text."""

    def __init__(self, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.client_token = client_token


@dataclass(frozen=True)
class Shadow:
    """A stored shadow document; ``state``/``metadata`` hold only the non-empty sections."""

    state: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    version: int = 0
    encoded: tuple[Mapping[str, Any], Mapping[str, Any], Mapping[str, str]] | None = field(
        default=None, compare=False, repr=False
    )
    """``(state, metadata, json)``: the compact JSON of each section of ``state`` and (keyed
    ``"metadata.<section>"``) of ``metadata``, valid only while those very objects are this Shadow's (so a
    ``dataclasses.replace`` with new state never reuses stale JSON)."""

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state, "metadata": self.metadata, "version": self.version}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Shadow:
        return cls(dict(doc.get("state") or {}), dict(doc.get("metadata") or {}), int(doc.get("version", 0)))


@dataclass(frozen=True)
class UpdateRequest:
    """A validated ``/update`` request. ``state`` is None for ``{"state": null}`` (clear everything)."""

    state: Mapping[str, Any] | None
    client_token: str | None = None
    version: int | None = None


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of an accepted update: the new document and the payloads AWS would publish."""

    shadow: Shadow
    accepted: dict[str, Any]
    documents: dict[str, Any]
    delta: dict[str, Any] | None


def validate_thing_name(name: str) -> None:
    if not is_thing_name(name):
        raise ShadowError(400, MSG_INVALID_THING_NAME)


def validate_shadow_name(name: str) -> None:
    if not is_shadow_name(name):
        raise ShadowError(400, MSG_INVALID_SHADOW_NAME)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise ValueError(f"{text} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_SCAN: Callable[[str, int], tuple[Any, int]] = getattr(_DECODER, "scan_once")  # noqa: B009 (untyped)
_JSON_WHITESPACE = " \t\n\r"


def _decode(payload: bytes | str | Mapping[str, Any]) -> Any:
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ShadowError(415, MSG_BAD_ENCODING) from None
    elif isinstance(payload, bytearray | memoryview):
        return _decode(bytes(payload))
    elif not isinstance(payload, str):
        return payload
    text = payload.strip(_JSON_WHITESPACE)
    try:
        value, end = _SCAN(text, 0)
    except RecursionError:
        raise ShadowError(400, MSG_TOO_DEEP) from None
    except (StopIteration, ValueError):
        raise ShadowError(400, MSG_INVALID_JSON) from None
    if end != len(text):
        raise ShadowError(400, MSG_INVALID_JSON)
    return value


def _check_token(token: Any) -> str | None:
    if token is None:
        return None
    if not isinstance(token, str) or len(token.encode("utf-8")) > MAX_CLIENT_TOKEN_BYTES:
        raise ShadowError(400, MSG_INVALID_TOKEN)
    return token


def client_token_of(payload: bytes | str | Mapping[str, Any]) -> str | None:
    """The clientToken of a ``/get`` or ``/delete`` request; other content (even invalid JSON) is ignored.

    A token that is present but not a string of at most 64 bytes is rejected (400), as for ``/update``.
    """
    if not payload:
        return None
    try:
        doc = _decode(payload)
    except ShadowError:
        return None
    if not isinstance(doc, dict):
        return None
    return _check_token(doc.get("clientToken"))


def _too_deep_or_null_in_array(value: Any, levels_left: int) -> str | None:
    """One walk for two rules: at most ``MAX_DEPTH`` levels (objects and arrays both count, conservatively)
    and no null inside an array. Returns the rejection message, or None."""
    if isinstance(value, dict):
        if levels_left == 0:
            return MSG_TOO_DEEP
        for v in value.values():
            if isinstance(v, dict | list):
                problem = _too_deep_or_null_in_array(v, levels_left - 1)
                if problem:
                    return problem
        return None
    if isinstance(value, list):
        if levels_left == 0:
            return MSG_TOO_DEEP
        for v in value:
            if v is None:
                return MSG_INVALID_JSON
            if isinstance(v, dict | list):
                problem = _too_deep_or_null_in_array(v, levels_left - 1)
                if problem:
                    return problem
    return None


def parse_update(payload: bytes | str | Mapping[str, Any]) -> UpdateRequest:
    """Validate an ``/update`` payload; raise ``ShadowError`` (carrying the token when readable)."""
    doc = _decode(payload)
    if not isinstance(doc, dict):
        raise ShadowError(400, MSG_INVALID_JSON)
    raw_token = doc.get("clientToken")
    token = raw_token if isinstance(raw_token, str) else None
    try:
        if "state" not in doc:
            raise ShadowError(400, MSG_MISSING_STATE)
        state = doc["state"]
        if state is not None:
            if not isinstance(state, dict):
                raise ShadowError(400, MSG_STATE_NOT_OBJECT)
            for key in state:
                if key not in SECTIONS:
                    raise ShadowError(400, f"State contains an invalid node: '{key}'")
            if not isinstance(state.get("desired", {}), dict | None):
                raise ShadowError(400, MSG_DESIRED_NOT_OBJECT)
            if not isinstance(state.get("reported", {}), dict | None):
                raise ShadowError(400, MSG_REPORTED_NOT_OBJECT)
        token = _check_token(raw_token)
        version = doc.get("version")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
            raise ShadowError(400, MSG_INVALID_VERSION)
        if state is not None:
            for section in SECTIONS:
                value = state.get(section)
                if value is not None:
                    problem = _too_deep_or_null_in_array(value, MAX_DEPTH)
                    if problem:
                        raise ShadowError(400, problem)
    except ShadowError as err:
        err.client_token = token
        raise
    return UpdateRequest(state=state, client_token=token, version=version)


def json_equal(a: Any, b: Any) -> bool:
    """JSON value equality: numbers compare numerically (1 == 1.0) but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def delta(desired: Any, reported: Any) -> Any:
    """The part of ``desired`` that ``reported`` does not match (None when in sync).

    Keys only in ``reported`` never appear; objects recurse and keep the path to the root; arrays and
    scalars are compared as whole values and the desired value is copied in.
    """
    if desired is None:
        return None
    if reported is None:
        return desired
    if isinstance(desired, dict) and isinstance(reported, dict):
        out: dict[str, Any] = {}
        for key, dv in desired.items():
            rv = reported.get(key)
            if rv is None:
                out[key] = dv
            else:
                d = delta(dv, rv)
                if d is not None:
                    out[key] = d
        return out or None
    return None if json_equal(desired, reported) else desired


def delta_metadata(delta_state: Any, desired_metadata: Any) -> Any:
    """Metadata shaped like the delta, each leaf's timestamp taken from ``metadata.desired``."""
    if isinstance(delta_state, dict) and isinstance(desired_metadata, dict):
        return {k: delta_metadata(v, desired_metadata.get(k)) for k, v in delta_state.items()}
    return desired_metadata


def metadata_for(value: Any, timestamp: int, _leaf: dict[str, int] | None = None) -> Any:
    """Per-leaf metadata for a value: objects recurse, arrays give one entry per element.

    All leaves share one ``{"timestamp": T}`` object (metadata is read-only, like the rest of a Shadow).
    """
    leaf = _leaf if _leaf is not None else {"timestamp": timestamp}
    if isinstance(value, dict):
        return {k: metadata_for(v, timestamp, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [metadata_for(v, timestamp, leaf) for v in value]
    return leaf


def _merge(
    current: dict[str, Any] | None,
    meta: dict[str, Any] | None,
    patch: Mapping[str, Any],
    patch_meta: Mapping[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge ``patch`` into ``current``; ``patch_meta`` is ``metadata_for(patch)`` (its leaves are reused)."""
    state_out = dict(current) if current else {}
    meta_out = dict(meta) if meta else {}
    for key, value in patch.items():
        if value is None:
            state_out.pop(key, None)
            meta_out.pop(key, None)
            continue
        if isinstance(value, dict):
            old = state_out.get(key)
            old_meta = meta_out.get(key)
            sub_state, sub_meta = _merge(
                old if isinstance(old, dict) else None,
                old_meta if isinstance(old, dict) and isinstance(old_meta, dict) else None,
                value,
                patch_meta[key],
            )
            if sub_state:
                state_out[key] = sub_state
                meta_out[key] = sub_meta
            else:
                state_out.pop(key, None)
                meta_out.pop(key, None)
            continue
        state_out[key] = value
        meta_out[key] = patch_meta[key]
    return state_out, meta_out


def merge_state(current: Mapping[str, Any] | None, patch: Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply a section patch: objects merge, arrays/scalars replace, null deletes, empty objects vanish.

    ``patch=None`` clears the section. Inputs are not modified (changed paths are copied).
    """
    if patch is None:
        return {}
    return _merge(dict(current) if current else None, None, patch, metadata_for(patch, 0))[0]


def replacing_patch(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """The update value that *replaces* the object ``previous`` with ``new`` rather than merging into it.

    Shadow updates deep-merge, so writing ``new`` over ``previous`` would keep the keys ``new`` lacks; a
    null deletes a key, so each of those is set to null (AWS IoT Core Developer Guide, "Device Shadow
    service documents": deleting properties).
    """
    patch: dict[str, Any] = {k: None for k in (previous or {}) if k not in new}
    patch.update(new)
    return patch


def _no_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _make_compact_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``, minus the
    per-call set-up of ``JSONEncoder`` (a third of the cost for a small document): the C encoder is made
    once and called directly."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    try:
        iterencode = make(
            None, _no_default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
    except TypeError:  # another interpreter's C encoder signature
        return json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
    join = "".join

    def encode(value: Any) -> str:
        if isinstance(value, str):
            return str(json.encoder.encode_basestring(value))
        return join(iterencode(value, 0))

    return encode


compact_json: Callable[[Any], str] = _make_compact_encoder()
"""Compact JSON text (no spaces, UTF-8 characters as they are; NaN and Infinity refused)."""


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _encoded_sections(shadow: Shadow) -> Mapping[str, str]:
    cached = shadow.encoded
    if cached is not None and cached[0] is shadow.state and cached[1] is shadow.metadata:
        return cached[2]
    out = {s: compact_json(v) for s, v in shadow.state.items()}
    out.update({f"metadata.{s}": compact_json(v) for s, v in shadow.metadata.items()})
    return out


def document_json(shadow: Shadow) -> str:
    """``compact_json(shadow.to_json())``, assembled from the sections' cached JSON when available."""
    enc = _encoded_sections(shadow)
    state = ",".join(f'"{s}":{enc[s]}' for s in shadow.state)
    meta = ",".join(f'"{s}":{enc["metadata." + s]}' for s in shadow.metadata)
    return f'{{"state":{{{state}}},"metadata":{{{meta}}},"version":{shadow.version}}}'


def apply_update(
    shadow: Shadow | None, request: UpdateRequest, now: int, base_version: int = 0
) -> UpdateResult:
    """Apply an accepted-so-far update to ``shadow`` (None: does not exist).

    ``base_version`` is the version a deleted shadow had, so a re-created one continues from it (AWS keeps
    it for 48 hours); the caller decides whether it is still remembered. A request ``version`` must equal
    the stored version (0 or ``base_version`` for a shadow that does not exist) or it gets 409.
    """
    token = request.client_token
    current_version = shadow.version if shadow is not None else base_version
    if request.version is not None and request.version != current_version:
        raise ShadowError(409, MSG_VERSION_CONFLICT, token)
    old_state = shadow.state if shadow is not None else {}
    old_meta = shadow.metadata if shadow is not None else {}
    new_state: dict[str, Any] = {}
    new_meta: dict[str, Any] = {}
    encoded: dict[str, str] = {}
    if request.state is None:
        accepted_meta: Any = {"timestamp": now}
    else:
        new_state, new_meta = dict(old_state), dict(old_meta)
        old_encoded = _encoded_sections(shadow) if shadow is not None else {}
        leaf = {"timestamp": now}
        accepted_meta = {}
        for section in SECTIONS:
            if section not in request.state:
                if section in new_state:
                    encoded[section] = old_encoded[section]
                    encoded[f"metadata.{section}"] = old_encoded[f"metadata.{section}"]
                continue
            patch = request.state[section]
            accepted_meta[section] = metadata_for(patch, now, leaf)
            if patch is None:
                new_state.pop(section, None)
                new_meta.pop(section, None)
                continue
            merged, merged_meta = _merge(
                old_state.get(section), old_meta.get(section), patch, accepted_meta[section]
            )
            if merged:
                new_state[section] = merged
                new_meta[section] = merged_meta
                encoded[section] = compact_json(merged)
                encoded[f"metadata.{section}"] = compact_json(merged_meta)
            else:
                new_state.pop(section, None)
                new_meta.pop(section, None)
        if sum(_utf8_size(encoded[s]) for s in SECTIONS if s in new_state) > MAX_DOCUMENT_BYTES:
            raise ShadowError(413, MSG_TOO_LARGE, token)
    new_shadow = Shadow(new_state, new_meta, current_version + 1, (new_state, new_meta, encoded))
    accepted: dict[str, Any] = {
        "state": request.state,
        "metadata": accepted_meta,
        "version": new_shadow.version,
        "timestamp": now,
    }
    documents: dict[str, Any] = {
        "previous": shadow.to_json() if shadow is not None else None,
        "current": new_shadow.to_json(),
        "timestamp": now,
    }
    d = delta(new_state.get("desired"), new_state.get("reported"))
    delta_doc: dict[str, Any] | None = None
    if d is not None:
        delta_doc = {
            "version": new_shadow.version,
            "timestamp": now,
            "state": d,
            "metadata": delta_metadata(d, new_meta.get("desired")),
        }
    if token is not None:
        accepted["clientToken"] = token
        documents["clientToken"] = token
        if delta_doc is not None:
            delta_doc["clientToken"] = token
    return UpdateResult(new_shadow, accepted, documents, delta_doc)


def get_document(shadow: Shadow, now: int, client_token: str | None = None) -> dict[str, Any]:
    """The ``get/accepted`` payload: state with ``delta`` when out of sync; ``timestamp`` is now."""
    state = dict(shadow.state)
    d = delta(state.get("desired"), state.get("reported"))
    if d is not None:
        state["delta"] = d
    doc: dict[str, Any] = {
        "state": state,
        "metadata": shadow.metadata,
        "version": shadow.version,
        "timestamp": now,
    }
    if client_token is not None:
        doc["clientToken"] = client_token
    return doc


def delete_document(shadow: Shadow, now: int, client_token: str | None = None) -> dict[str, Any]:
    """The ``delete/accepted`` payload: the last version (not incremented) and now."""
    doc: dict[str, Any] = {"version": shadow.version, "timestamp": now}
    if client_token is not None:
        doc["clientToken"] = client_token
    return doc


def not_found_error(shadow_name: str, client_token: str | None = None) -> ShadowError:
    """404 for a missing shadow; AWS names the thing for the classic shadow, in single quotes."""
    return ShadowError(404, f"No shadow exists with name: '{shadow_name}'", client_token)


def error_document(err: ShadowError, now: int | None = None) -> dict[str, Any]:
    """The ``*/rejected`` payload. AWS omits ``timestamp`` on 404 and 409 (observed); pass None to omit."""
    doc: dict[str, Any] = {"code": err.code, "message": err.message}
    if now is not None and err.code not in (404, 409):
        doc["timestamp"] = now
    if err.client_token is not None:
        doc["clientToken"] = err.client_token
    return doc
