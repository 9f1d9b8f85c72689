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
import weakref
import zlib
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


class IntentJournal:
    """``state_dir/ledger.journal``: the durable "this command id was taken" record, written before an action.

    One line per command (``<crc32> <json>``) written into space that was zero-filled ahead of time, then one
    ``fdatasync``: no file-size or extent change to journal, so it costs a fraction of a SQLite commit. The
    SQLite row is written in the same step without its own fsync and made durable by the ledger's next
    synced commit; at start-up any journal line whose row a power cut lost is put back (as ``accepted``,
    which start-up then reports as interrupted). Lines are read until the first one that does not check out,
    so the journal restarts at offset 0 once everything in it is known to be durable in SQLite; each restart
    starts a new generation ``g``, so an older line that happens to follow the new ones is not read back.
    """

    CHUNK = 64 * 1024
    LIMIT = 1024 * 1024

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._closer = weakref.finalize(self, os.close, self._fd)
        self._offset = 0
        self._size = os.fstat(self._fd).st_size
        self._gen = time.time_ns()

    def records(self) -> list[dict[str, Any]]:
        """Every intact line from the start (a torn or stale tail ends the list)."""
        data = os.pread(self._fd, self._size, 0) if self._size else b""
        out: list[dict[str, Any]] = []
        for line in data.split(b"\n"):
            crc, _, body = line.partition(b" ")
            if len(crc) != 8 or not body or format(zlib.crc32(body), "08x").encode() != crc:
                break
            try:
                record = json.loads(body)
            except ValueError:
                break
            if not isinstance(record, dict) or (out and record.get("g") != out[0].get("g")):
                break
            out.append(record)
        return out

    def _reserve(self, need: int) -> None:
        while self._offset + need > self._size:
            # real zeros, not a hole: later writes then change no extent and no size
            os.pwrite(self._fd, bytes(self.CHUNK), self._size)
            self._size += self.CHUNK
            os.fsync(self._fd)

    def append(self, record: dict[str, Any]) -> None:
        body = json.dumps({"g": self._gen, **record}, separators=(",", ":")).encode()
        line = format(zlib.crc32(body), "08x").encode() + b" " + body + b"\n"
        self._reserve(len(line))
        os.pwrite(self._fd, line, self._offset)
        os.fdatasync(self._fd)
        self._offset += len(line)

    def restart_if_full(self) -> None:
        """Call only when every record is durable elsewhere: invalidate the first line, write from 0 again."""
        if self._offset >= self.LIMIT:
            self.reset()

    def reset(self) -> None:
        os.pwrite(self._fd, bytes(16), 0)
        os.fdatasync(self._fd)
        self._offset = 0
        self._gen = time.time_ns()

    def close(self) -> None:
        self._closer()


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
        self._unsynced = False  # rows written since the last synced commit
        path = db.execute("PRAGMA database_list").fetchone()[2]
        self._journal = IntentJournal(Path(path).with_name("ledger.journal")) if path else None
        if self._journal is not None:
            self._replay(self._journal)

    def _replay(self, journal: IntentJournal) -> None:
        """Put back the rows of journalled commands that a power cut took from SQLite, then start over."""
        rows = [
            (r["id"], r["action"], r["status"], r.get("reason"), json.dumps(r["document"]), r["at"], r["at"])
            for r in journal.records()
        ]
        if rows:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("INSERT OR IGNORE INTO commands VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")  # the connection's own synchronous=FULL: durable before the reset
        journal.reset()

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    def _synchronous(self) -> int:
        return int(self._db.execute("PRAGMA synchronous").fetchone()[0])

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

    def _transaction(self, body: Callable[[], Any], *, synced: bool = True) -> Any:
        """One transaction; ``synced=False`` skips its fsync (only when the journal holds the record)."""
        restore = None
        if not synced:
            restore = self._synchronous()
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = body()
                self._write_pending()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        finally:
            if restore is not None:
                self._db.execute(f"PRAGMA synchronous={restore}")
        self._pending.clear()
        if synced and self._synchronous() >= 2:
            self._unsynced = False
            if self._journal is not None:
                self._journal.restart_if_full()
        elif not synced:
            self._unsynced = True
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

        journal = self._journal if self._synchronous() >= 2 else None  # synchronous=OFF: no fsync asked
        cur = self._transaction(insert, synced=journal is None)
        if cur.rowcount and journal is not None:
            record = {"id": command_id, "action": action, "status": status, "reason": reason}
            journal.append({**record, "document": document, "at": now})  # the fsync that makes it durable
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
        if not self._pending and prune <= 0 and not self._unsynced:
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
