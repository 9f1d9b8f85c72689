"""Shadow persistence in SQLite: all shadows load at start; changed ones are written in one transaction.

SQLite in WAL mode gives atomic, crash-consistent commits without a file per shadow. The service commits
each batch of requests before it answers them. By default ``synchronous=NORMAL``: a crash of the service
process loses nothing it answered; an OS crash or power loss may lose the last commits but never corrupts
the database. ``durable=True`` uses ``synchronous=FULL`` (an fsync per commit), as close to AWS's
durability as a single file gets, at a cost in throughput.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from agent.shadowdoc import Shadow
from fleet.shadow_engine import ShadowKey, StoredShadow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS shadows (
    thing TEXT NOT NULL,
    name TEXT NOT NULL,
    doc TEXT,
    deleted_version INTEGER NOT NULL DEFAULT 0,
    deleted_at INTEGER,
    PRIMARY KEY (thing, name)
)
"""


class ShadowStore:
    def __init__(self, path: Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute(_SCHEMA)

    def load_all(self) -> dict[ShadowKey, StoredShadow]:
        out: dict[ShadowKey, StoredShadow] = {}
        for thing, name, doc, deleted_version, deleted_at in self._db.execute(
            "SELECT thing, name, doc, deleted_version, deleted_at FROM shadows"
        ):
            shadow = Shadow.from_json(json.loads(doc)) if doc else None
            out[(thing, name)] = StoredShadow(shadow, deleted_version, deleted_at, doc_json=doc or None)
        return out

    def save(self, changed: dict[ShadowKey, StoredShadow]) -> None:
        if not changed:
            return
        rows = [
            (
                thing,
                name,
                s.document_json() if s.shadow is not None else None,
                s.deleted_version,
                s.deleted_at,
            )
            for (thing, name), s in changed.items()
        ]
        self._db.execute("BEGIN")
        try:
            self._db.executemany(
                "INSERT INTO shadows (thing, name, doc, deleted_version, deleted_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(thing, name) DO UPDATE SET doc=excluded.doc, "
                "deleted_version=excluded.deleted_version, deleted_at=excluded.deleted_at",
                rows,
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()
