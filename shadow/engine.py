"""The shadow service's protocol core: topic in, payload in, publications out. No sockets, no clock.

It routes ``$aws/things/<thing>/shadow[/name/<shadow>]/{update,get,delete}`` requests (parsed, and answered
on the topics built, by ``shadow.topics``) to the pure document rules in ``shadow.document``, applies the
per-thing request rate limit (429), remembers deleted versions for 48 hours, and keeps the set of changed
shadows so the I/O shell can persist them in batches. Bad input of any kind produces the rejection AWS
would publish; nothing here raises on a peer's mistake.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from base.logs import get_logger
from shadow import document as sd
from shadow.document import Shadow, ShadowError
from shadow.topics import SHADOW_OPERATIONS as OPERATIONS
from shadow.topics import ShadowTopic
from shadow.topics import parse_shadow_request as parse_topic

__all__ = ["OPERATIONS", "ShadowEngine", "ShadowKey", "ShadowTopic", "StoredShadow", "parse_topic"]

log = get_logger("shadow.engine")

_ENCODE = sd.compact_json

ShadowKey = tuple[str, str]  # (thing, shadow name; "" for the classic shadow)
TOPIC_CACHE_SIZE = 100_000


@dataclass(frozen=True)
class StoredShadow:
    """What persists for one shadow: the document, or a tombstone remembering the deleted version.

    ``doc_json`` caches the compact JSON of ``shadow.to_json()``: each update serializes the new document
    once and reuses it as ``documents.current``, as the next update's ``documents.previous`` and as the
    stored row.
    """

    shadow: Shadow | None
    deleted_version: int = 0
    deleted_at: int | None = None
    doc_json: str | None = field(default=None, compare=False, repr=False)

    def document_json(self) -> str:
        if self.doc_json is not None:
            return self.doc_json
        return sd.document_json(self.shadow) if self.shadow is not None else "null"


@dataclass
class _Bucket:
    tokens: float
    last: float


class ShadowEngine:
    """All shadows of one local cloud, in memory; ``handle()`` answers one request.

    ``rate_per_thing`` is AWS's per-thing request limit (20/s, burst 20); 0 disables it (bench runs).
    ``take_dirty()`` hands the changed shadows to the persistence layer.
    """

    def __init__(
        self,
        shadows: dict[ShadowKey, StoredShadow] | None = None,
        *,
        rate_per_thing: float = 20.0,
        burst: float | None = None,
        remember_deleted_s: int = sd.DELETED_VERSION_MEMORY_S,
    ) -> None:
        self.shadows: dict[ShadowKey, StoredShadow] = dict(shadows or {})
        self.rate = rate_per_thing
        self.burst = burst if burst is not None else max(rate_per_thing, 1.0)
        self.remember_deleted_s = remember_deleted_s
        self._buckets: dict[str, _Bucket] = {}
        self._dirty: dict[ShadowKey, StoredShadow] = {}
        self._valid_things: set[str] = set()
        self._valid_names: set[str] = set()
        self._topics: dict[str, ShadowTopic | None] = {}  # parsed request topics: robots repeat theirs
        self.counters: dict[str, int] = {"accepted": 0, "rejected": 0, "throttled": 0, "ignored": 0}

    def take_dirty(self) -> dict[ShadowKey, StoredShadow]:
        dirty, self._dirty = self._dirty, {}
        return dirty

    def requeue_dirty(self, changed: dict[ShadowKey, StoredShadow]) -> None:
        """Give back changes that could not be persisted (newer changes to the same shadow win)."""
        for key, stored in changed.items():
            self._dirty.setdefault(key, stored)

    def _allow(self, thing: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(thing)
        if bucket is None:
            bucket = self._buckets[thing] = _Bucket(self.burst, now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.last) * self.rate)
            bucket.last = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def _store(self, key: ShadowKey, stored: StoredShadow) -> None:
        self.shadows[key] = stored
        self._dirty[key] = stored

    def handle(self, topic: str, payload: bytes, now: float) -> list[tuple[str, bytes]]:
        """Answer one publication; returns ``(topic, payload)`` pairs to publish (empty if not a request)."""
        req = self._topics.get(topic)
        if req is None:
            req = parse_topic(topic)
            if len(self._topics) >= TOPIC_CACHE_SIZE:
                self._topics.clear()
            self._topics[topic] = req
        if req is None:
            self.counters["ignored"] += 1
            return []
        ts = int(now)
        try:
            return self._dispatch(req, payload, now, ts)
        except ShadowError as err:
            rejected = req.reply("rejected")
            self.counters["rejected"] += 1
            if err.code == 429:
                self.counters["throttled"] += 1
            log.debug(
                "shadow.request.rejected", thing=req.thing, op=req.operation, code=err.code, why=err.message
            )
            return [(rejected, _dumps(sd.error_document(err, ts)))]
        except Exception:
            rejected = req.reply("rejected")
            self.counters["rejected"] += 1
            log.exception("shadow.request.failed", thing=req.thing, op=req.operation)
            failure = ShadowError(500, sd.MSG_INTERNAL, _best_effort_token(payload))
            return [(rejected, _dumps(sd.error_document(failure, ts)))]

    def _dispatch(self, req: ShadowTopic, payload: bytes, now: float, ts: int) -> list[tuple[str, bytes]]:
        if req.thing not in self._valid_things or (
            req.shadow_name and req.shadow_name not in self._valid_names
        ):
            try:
                sd.validate_thing_name(req.thing)
                if req.shadow_name:
                    sd.validate_shadow_name(req.shadow_name)
            except ShadowError as err:
                err.client_token = _best_effort_token(payload)
                raise
            if len(self._valid_things) > 100_000:
                self._valid_things.clear()
                self._valid_names.clear()
            self._valid_things.add(req.thing)
            if req.shadow_name:
                self._valid_names.add(req.shadow_name)
        if not self._allow(req.thing, now):
            raise ShadowError(429, sd.MSG_TOO_MANY_REQUESTS, _best_effort_token(payload))
        key = (req.thing, req.shadow_name)
        stored = self.shadows.get(key)
        current = stored.shadow if stored is not None else None
        if req.operation == "update":
            request = sd.parse_update(payload)
            base = 0
            if (
                stored is not None
                and current is None
                and stored.deleted_at is not None
                and ts - stored.deleted_at <= self.remember_deleted_s
            ):
                base = stored.deleted_version
            result = sd.apply_update(current, request, ts, base)
            current_json = sd.document_json(result.shadow)
            previous_json = stored.document_json() if current is not None and stored is not None else "null"
            self._store(key, StoredShadow(result.shadow, doc_json=current_json))
            self.counters["accepted"] += 1
            token = request.client_token
            documents = f'{{"previous":{previous_json},"current":{current_json},"timestamp":{ts}'
            documents += f',"clientToken":{_ENCODE(token)}}}' if token is not None else "}"
            out = [
                (req.reply("accepted"), _dumps(result.accepted)),
                (req.reply("documents"), documents.encode("utf-8")),
            ]
            if result.delta is not None:
                out.append((req.reply("delta"), _dumps(result.delta)))
            return out
        token = sd.client_token_of(payload)
        if current is None:
            raise sd.not_found_error(req.shadow_name or req.thing, token)
        self.counters["accepted"] += 1
        if req.operation == "get":
            return [(req.reply("accepted"), _dumps(sd.get_document(current, ts, token)))]
        assert stored is not None
        self._store(key, replace(stored, shadow=None, deleted_version=current.version, deleted_at=ts))
        return [(req.reply("accepted"), _dumps(sd.delete_document(current, ts, token)))]


def _dumps(doc: Any) -> bytes:
    return _ENCODE(doc).encode("utf-8")


def _best_effort_token(payload: bytes) -> str | None:
    try:
        return sd.client_token_of(payload)
    except ShadowError:
        return None
