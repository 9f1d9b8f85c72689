"""SQLite persistence of the IoT service's engines: one row per record, written in one transaction per batch.

The engines (``JobsEngine``, ``CommandsEngine``) hand out their changed state as ``(kind, key) -> dict``
records (``None`` = deleted, see ``take_dirty``); a new engine built from ``load_all()`` continues where the
old one stopped. WAL mode and the durability switch follow ``localcloud.shadow_store``: ``synchronous=NORMAL``
by default (a crash of the process loses nothing committed), ``durable=True`` for an fsync per commit.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (kind, key)
)
"""

RecordKey = tuple[str, str]


class IotStore:
    def __init__(self, path: Path, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute(_SCHEMA)

    def load_all(self) -> dict[RecordKey, dict[str, Any]]:
        return {
            (kind, key): json.loads(doc)
            for kind, key, doc in self._db.execute("SELECT kind, key, doc FROM records")
        }

    def save(self, dirty: Mapping[RecordKey, dict[str, Any] | None]) -> None:
        if not dirty:
            return
        upserts = [
            (k, key, json.dumps(doc, separators=(",", ":")))
            for (k, key), doc in dirty.items()
            if doc is not None
        ]
        deletes = [(k, key) for (k, key), doc in dirty.items() if doc is None]
        self._db.execute("BEGIN")
        try:
            if upserts:
                self._db.executemany(
                    "INSERT INTO records (kind, key, doc) VALUES (?, ?, ?) "
                    "ON CONFLICT(kind, key) DO UPDATE SET doc=excluded.doc",
                    upserts,
                )
            if deletes:
                self._db.executemany("DELETE FROM records WHERE kind = ? AND key = ?", deletes)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self._db.close()
