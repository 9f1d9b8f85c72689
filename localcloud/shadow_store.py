"""Shadow persistence in SQLite: all shadows load at start; changed ones are written in one transaction.

SQLite in WAL mode gives atomic, crash-consistent commits without a file per shadow. The service commits
each batch of requests before it answers them. By default ``synchronous=NORMAL``: a crash of the service
process loses nothing it answered; an OS crash or power loss may lose the last commits but never corrupts
the database. ``durable=True`` uses ``synchronous=FULL`` (an fsync per commit), as close to AWS's
durability as a single file gets, at a cost in throughput.

Checkpoints (copying the WAL into the database, with an fsync) take 10-20 ms. SQLite would run one inside
every thousandth commit, i.e. while requests wait for their answers; here the service runs them when it is
idle (``checkpoint_due``/``checkpoint``), and inline only if it is never idle for long
(``CHECKPOINT_FORCED_AFTER`` commits), which bounds the WAL.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from shadow.document import Shadow
from shadow.engine import ShadowKey, StoredShadow

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


CHECKPOINT_WHEN_IDLE_AFTER = 200
CHECKPOINT_FORCED_AFTER = 20_000


class ShadowStore:
    def __init__(self, path: Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.execute(_SCHEMA)
        self.commits_since_checkpoint = 0

    @property
    def checkpoint_due(self) -> bool:
        """Enough commits since the last checkpoint that an idle moment should be spent on one."""
        return self.commits_since_checkpoint >= CHECKPOINT_WHEN_IDLE_AFTER

    def checkpoint(self) -> int:
        """Copy the WAL into the database (PASSIVE: never waits for readers); returns the frames copied."""
        busy, _log, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if not busy:
            self.commits_since_checkpoint = 0
        return int(copied)

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
        self.commits_since_checkpoint += 1
        if self.commits_since_checkpoint >= CHECKPOINT_FORCED_AFTER:
            with contextlib.suppress(sqlite3.Error):  # the commit stands; the next idle moment retries
                self.checkpoint()

    def close(self) -> None:
        self._db.close()
