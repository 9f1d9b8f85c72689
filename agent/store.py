"""Durable state in ``state_dir/agent.db`` (SQLite, WAL, synchronous=FULL): the command ledger and the outbox.

The ledger is what makes a command run at most once: its row is committed (fsynced) *before* the action
starts, so no redelivery, reconnect or restart can start it again. The outbox makes events survive outages
and restarts: rows leave only when the broker acknowledged them, strictly in sequence order.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY, action TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    document TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, payload TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

TERMINAL = ("done", "rejected", "failed")


@dataclass(frozen=True)
class LedgerEntry:
    id: str
    action: str
    status: str
    reason: str | None
    document: dict[str, Any]


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    event_id: str
    kind: str
    payload: dict[str, Any]

    def to_json(self) -> bytes:
        return json.dumps(
            {"event_id": self.event_id, "seq": self.seq, "type": self.kind, **self.payload},
            separators=(",", ":"),
        ).encode()


def open_db(state_dir: str | Path) -> sqlite3.Connection:
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = sqlite3.connect(path / "agent.db", isolation_level=None, timeout=5.0)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    os.chmod(path / "agent.db", 0o600)
    return db


class Ledger:
    """Every command id ever handled (the newest ``keep`` of them), with its final status.

    Only :meth:`begin` is on a command's critical path: one small transaction, fsynced (WAL,
    ``synchronous=FULL``) before the action runs. Outcomes from :meth:`finish` are kept in memory until
    :meth:`commit` (the daemon calls it right after the answer has gone to MQTT) or the next ``begin``, so
    the answer does not wait for a second fsync. A power cut in that gap turns an answered ``done`` into
    ``failed`` at restart (see ``recover_ledger``); the command still never runs twice.
    """

    def __init__(self, db: sqlite3.Connection, keep: int = 10000) -> None:
        self._db = db
        self._keep = keep
        self._pending: dict[str, tuple[str, str | None, float]] = {}
        self._prune_after = 0  # rowid from which the next commit() trims old rows

    def get(self, command_id: str) -> LedgerEntry | None:
        row = self._db.execute(
            "SELECT id, action, status, reason, document FROM commands WHERE id = ?", (command_id,)
        ).fetchone()
        if row is None:
            return None
        status, reason = self._pending.get(command_id, (row[2], row[3], 0.0))[:2]
        return LedgerEntry(row[0], row[1], status, reason, json.loads(row[4]))

    def _write_pending(self) -> None:
        if self._pending:
            self._db.executemany(
                "UPDATE commands SET status = ?, reason = ?, updated = ? WHERE id = ?",
                [(st, why, at, cid) for cid, (st, why, at) in self._pending.items()],
            )

    def _transaction(self, body: Callable[[], Any]) -> Any:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            result = body()
            self._write_pending()
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._pending.clear()
        return result

    def begin(
        self,
        command_id: str,
        action: str,
        document: dict[str, Any],
        status: str = "accepted",
        reason: str | None = None,
    ) -> bool:
        """Record the id durably; False if it was already there (then the caller must not run it)."""
        now = time.time()

        def insert() -> sqlite3.Cursor:
            return self._db.execute(
                "INSERT OR IGNORE INTO commands VALUES (?, ?, ?, ?, ?, ?, ?)",
                (command_id, action, status, reason, json.dumps(document), now, now),
            )

        cur = self._transaction(insert)
        rowid = cur.lastrowid or 0
        if cur.rowcount and self._keep and rowid % 64 == 0:
            self._prune_after = rowid - self._keep
        return bool(cur.rowcount)

    def finish(self, command_id: str, status: str, reason: str | None = None) -> None:
        """Record an outcome; durable at the next :meth:`commit` or :meth:`begin`."""
        self._pending[command_id] = (status, reason, time.time())

    def commit(self) -> None:
        """Make recorded outcomes durable, and trim the oldest rows (off the critical path)."""
        prune, self._prune_after = self._prune_after, 0
        if not self._pending and prune <= 0:
            return

        def trim() -> None:
            if prune > 0:
                self._db.execute("DELETE FROM commands WHERE rowid <= ?", (prune,))

        self._transaction(trim)

    def unfinished(self) -> list[LedgerEntry]:
        self.commit()
        rows = self._db.execute(
            "SELECT id, action, status, reason, document FROM commands WHERE status NOT IN (?, ?, ?)",
            TERMINAL,
        ).fetchall()
        return [LedgerEntry(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def counts(self) -> dict[str, int]:
        self.commit()
        return dict(self._db.execute("SELECT status, COUNT(*) FROM commands GROUP BY status").fetchall())


class Outbox:
    """An ordered, bounded queue of events. When full, the oldest row is dropped and counted."""

    def __init__(self, db: sqlite3.Connection, thing_name: str, max_events: int = 10000) -> None:
        self._db = db
        self._thing = thing_name
        self._max = max_events

    def _event(self, row: tuple[int, str, str]) -> OutboxEvent:
        return OutboxEvent(row[0], f"{self._thing}:{row[0]}", row[1], json.loads(row[2]))

    def put(self, kind: str, payload: dict[str, Any]) -> OutboxEvent:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            cur = self._db.execute(
                "INSERT INTO outbox (kind, payload, created) VALUES (?, ?, ?)",
                (kind, json.dumps(payload, separators=(",", ":")), time.time()),
            )
            seq = int(cur.lastrowid or 0)
            depth = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            if depth > self._max:
                excess = depth - self._max
                self._db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,)
                )
                self._db.execute(
                    "INSERT INTO meta VALUES ('outbox_dropped', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                    (excess,),
                )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return OutboxEvent(seq, f"{self._thing}:{seq}", kind, payload)

    def head(self) -> OutboxEvent | None:
        row = self._db.execute("SELECT seq, kind, payload FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else self._event(row)

    def ack(self, seq: int) -> None:
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,))

    def depth(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def dropped(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'outbox_dropped'").fetchone()
        return int(row[0]) if row else 0
