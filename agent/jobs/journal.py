"""The jobs journal: what the robot did with each job execution, durable in the agent's SQLite db.

One row per (job id, execution number). It is written *before* a step runs (``step_started``: the step's
index, ``running``) and after it ends (``step_finished``), and when the execution's outcome is decided
(``finished``) and acknowledged by the cloud (``reported``). Each write is its own transaction on the
agent's connection, which fsyncs (WAL, ``synchronous=FULL``) unless the agent is a simulated one. So after
a crash or a power cut :func:`recovery` can say, from the row alone, what happens next: re-send a result
the cloud has not acknowledged, fail a step that was cut short (never run it again), count a resumable
step as done, or carry on with the next step.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS job_runs (
    job_id TEXT NOT NULL, execution_number INTEGER NOT NULL, document TEXT NOT NULL,
    steps TEXT NOT NULL, step INTEGER NOT NULL, step_state TEXT NOT NULL, progress TEXT NOT NULL,
    final_status TEXT, details TEXT, reported INTEGER NOT NULL, version INTEGER,
    created REAL NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (job_id, execution_number));
"""

Key = tuple[str, int]


@dataclass(frozen=True)
class Entry:
    job_id: str
    execution_number: int
    document: Any
    steps: list[dict[str, Any]]  # [{"name", "resumable"}]
    step: int  # the step running or last run (-1: none started)
    step_state: str  # none | running | done
    progress: dict[str, Any]  # accumulated outputs and the failure so far (runner-defined)
    final_status: str | None
    details: dict[str, str] = field(default_factory=dict)
    reported: bool = False
    version: int | None = None
    updated: float = 0.0

    @property
    def key(self) -> Key:
        return (self.job_id, self.execution_number)


@dataclass(frozen=True)
class Recovery:
    """What to do with a journalled execution the cloud hands back (or that this process finds at start).

    ``resend``: the outcome is decided, send it again (never re-run). ``fail``: a step was cut short by a
    restart and is not resumable. ``resume``: the step cut short was resumable (restart-agent): count it as
    succeeded, then go on from ``next_step``. ``continue``: no step was running; go on from ``next_step``.
    """

    action: str
    next_step: int = 0
    reason: str | None = None


def recovery(entry: Entry) -> Recovery:
    """Pure: the decision for an execution after a restart (or on a redelivery nobody here is running)."""
    if entry.final_status is not None:
        return Recovery("resend")
    if entry.step_state == "running":
        info = entry.steps[entry.step] if 0 <= entry.step < len(entry.steps) else {}
        if info.get("resumable"):
            return Recovery("resume", entry.step + 1)
        name = info.get("name", f"#{entry.step + 1}")
        return Recovery(
            "fail",
            reason=f"interrupted by restart: step {entry.step + 1} ({name}) was running and is not re-run",
        )
    return Recovery("continue", entry.step + 1 if entry.step_state == "done" else max(entry.step, 0))


class Journal:
    """Rows in ``job_runs``; every method is one committed (fsynced) transaction."""

    def __init__(self, db: sqlite3.Connection, keep: int = 1000) -> None:
        self._db = db
        self._keep = keep
        db.executescript(SCHEMA)

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(sql, args)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def get(self, key: Key) -> Entry | None:
        row = self._db.execute(
            "SELECT job_id, execution_number, document, steps, step, step_state, progress, final_status,"
            " details, reported, version, updated FROM job_runs WHERE job_id = ? AND execution_number = ?",
            key,
        ).fetchone()
        return None if row is None else _entry(row)

    def open(self) -> list[Entry]:
        """Executions whose outcome the cloud has not acknowledged, oldest first."""
        rows = self._db.execute(
            "SELECT job_id, execution_number, document, steps, step, step_state, progress, final_status,"
            " details, reported, version, updated FROM job_runs WHERE reported = 0 ORDER BY created"
        ).fetchall()
        return [_entry(r) for r in rows]

    def last(self) -> Entry | None:
        row = self._db.execute(
            "SELECT job_id, execution_number, document, steps, step, step_state, progress, final_status,"
            " details, reported, version, updated FROM job_runs WHERE final_status IS NOT NULL"
            " ORDER BY updated DESC LIMIT 1"
        ).fetchone()
        return None if row is None else _entry(row)

    def accept(self, key: Key, document: Any, steps: list[dict[str, Any]], version: int | None) -> bool:
        """The execution is taken (nothing has run yet). False if it was already journalled."""
        now = time.time()
        before = self._db.total_changes
        self._write(
            "INSERT OR IGNORE INTO job_runs VALUES (?, ?, ?, ?, -1, 'none', '{}', NULL, NULL, 0, ?, ?, ?)",
            (*key, json.dumps(document), json.dumps(steps), version, now, now),
        )
        inserted = self._db.total_changes > before
        if inserted:
            self._prune()
        return inserted

    def step_started(self, key: Key, step: int, progress: dict[str, Any]) -> None:
        """Durable before the step runs: after a crash this step is never silently run again."""
        self._write(
            "UPDATE job_runs SET step = ?, step_state = 'running', progress = ?, updated = ?"
            " WHERE job_id = ? AND execution_number = ?",
            (step, json.dumps(progress), time.time(), *key),
        )

    def step_finished(self, key: Key, step: int, progress: dict[str, Any]) -> None:
        self._write(
            "UPDATE job_runs SET step = ?, step_state = 'done', progress = ?, updated = ?"
            " WHERE job_id = ? AND execution_number = ?",
            (step, json.dumps(progress), time.time(), *key),
        )

    def finished(self, key: Key, status: str, details: dict[str, str], *, reported: bool = False) -> None:
        """The outcome, decided; the update that tells the cloud follows (re-sent until acknowledged)."""
        self._write(
            "UPDATE job_runs SET final_status = ?, details = ?, reported = ?, updated = ?"
            " WHERE job_id = ? AND execution_number = ?",
            (status, json.dumps(details), int(reported), time.time(), *key),
        )

    def reported(self, key: Key) -> None:
        self._write(
            "UPDATE job_runs SET reported = 1, updated = ? WHERE job_id = ? AND execution_number = ?",
            (time.time(), *key),
        )

    def set_version(self, key: Key, version: int) -> None:
        """The last versionNumber seen (not fsync-critical: a stale one costs one VersionMismatch)."""
        self._db.execute(
            "UPDATE job_runs SET version = ? WHERE job_id = ? AND execution_number = ?", (version, *key)
        )

    def counts(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT COALESCE(final_status, 'open'), COUNT(*) FROM job_runs GROUP BY 1"
        ).fetchall()
        return {str(k): int(v) for k, v in rows}

    def _prune(self) -> None:
        self._db.execute(
            "DELETE FROM job_runs WHERE reported = 1 AND rowid NOT IN "
            "(SELECT rowid FROM job_runs ORDER BY created DESC LIMIT ?)",
            (self._keep,),
        )


def _entry(row: tuple[Any, ...]) -> Entry:
    return Entry(
        job_id=row[0],
        execution_number=int(row[1]),
        document=json.loads(row[2]),
        steps=json.loads(row[3]),
        step=int(row[4]),
        step_state=row[5],
        progress=json.loads(row[6]),
        final_status=row[7],
        details=json.loads(row[8]) if row[8] else {},
        reported=bool(row[9]),
        version=None if row[10] is None else int(row[10]),
        updated=float(row[11]),
    )
