"""Ledger and outbox on a real SQLite file, across reopen (an agent restart)."""

from __future__ import annotations

from pathlib import Path

from agent.store import Ledger, Outbox, open_db


def test_ledger_begin_once_and_survives_reopen(tmp_path: Path) -> None:
    db = open_db(tmp_path)
    ledger = Ledger(db)
    assert ledger.begin("c1", "clean", {"id": "c1", "action": "clean"})
    assert not ledger.begin("c1", "clean", {"id": "c1", "action": "clean"})
    assert [e.id for e in ledger.unfinished()] == ["c1"]
    db.close()
    ledger = Ledger(open_db(tmp_path))
    entry = ledger.get("c1")
    assert entry is not None and entry.status == "accepted"
    assert not ledger.begin("c1", "clean", {})
    ledger.finish("c1", "done")
    assert ledger.unfinished() == [] and ledger.counts() == {"done": 1}
    assert (tmp_path / "agent.db").stat().st_mode & 0o077 == 0


def test_ledger_is_bounded(tmp_path: Path) -> None:
    """Pruned every 64 commands to the newest ``keep`` (the current desired id is always among them), by the
    commit that follows an answer, not by the fsynced begin on the critical path."""
    ledger = Ledger(open_db(tmp_path), keep=5)
    for i in range(130):
        ledger.begin(f"c{i}", "stop", {})
        ledger.finish(f"c{i}", "done")
        ledger.commit()
    assert ledger.get("c0") is None and ledger.get("c129") is not None
    assert sum(ledger.counts().values()) <= 5 + 64


def test_outbox_order_ack_and_restart(tmp_path: Path) -> None:
    """Events leave in order, an ack removes one, and a restart keeps the rest and never reuses a seq."""
    outbox = Outbox(open_db(tmp_path), "robot-1")
    ids = [outbox.put("dock_reached", {"n": i}).event_id for i in range(3)]
    assert ids == ["robot-1:1", "robot-1:2", "robot-1:3"]
    head = outbox.head()
    assert head is not None and head.seq == 1 and b'"event_id":"robot-1:1"' in head.to_json()
    outbox.ack(1)
    outbox = Outbox(open_db(tmp_path), "robot-1")
    assert outbox.depth() == 2
    assert outbox.head() is not None and outbox.head().payload == {"n": 1}  # type: ignore[union-attr]
    assert outbox.put("x", {}).seq == 4  # never reuses a sequence number


def test_outbox_bounded_with_drop_counter(tmp_path: Path) -> None:
    outbox = Outbox(open_db(tmp_path), "r", max_events=3)
    for i in range(5):
        outbox.put("e", {"i": i})
    assert outbox.depth() == 3 and outbox.dropped() == 2
    assert outbox.head().payload == {"i": 2}  # type: ignore[union-attr]


def test_ledger_outcome_is_visible_at_once_and_durable_after_commit(tmp_path: Path) -> None:
    """``finish`` does not wait for the disk, yet ``get`` sees it at once, and ``commit`` (or the next
    ``begin``) makes it survive a restart."""
    ledger = Ledger(open_db(tmp_path))
    ledger.begin("c1", "clean", {"id": "c1", "action": "clean"})
    ledger.finish("c1", "done")
    entry = ledger.get("c1")
    assert entry is not None and (entry.status, entry.reason) == ("done", None)
    reopened = Ledger(open_db(tmp_path))
    assert reopened.get("c1").status == "accepted"  # type: ignore[union-attr]  # not committed yet
    ledger.commit()
    assert Ledger(open_db(tmp_path)).get("c1").status == "done"  # type: ignore[union-attr]
    ledger.finish("c1", "failed", "why")
    ledger.begin("c2", "stop", {})  # the next begin carries pending outcomes in its transaction
    assert Ledger(open_db(tmp_path)).get("c1").reason == "why"  # type: ignore[union-attr]


def test_begin_is_durable_through_the_journal_when_sqlite_loses_the_row(tmp_path: Path) -> None:
    """``begin`` fsyncs only the journal line; a power cut that takes the unsynced SQLite row away is
    repaired at start-up, so the id still can never run again."""
    ledger = Ledger(open_db(tmp_path))
    assert ledger.begin("c1", "clean", {"id": "c1", "action": "clean"})
    assert b'"id":"c1"' in (tmp_path / "ledger.journal").read_bytes()
    lost = open_db(tmp_path)  # what the disk holds after the power cut: no row for c1
    lost.execute("DELETE FROM commands WHERE id = 'c1'")
    lost.close()
    after = Ledger(open_db(tmp_path))
    entry = after.get("c1")
    assert entry is not None and entry.status == "accepted" and entry.document["action"] == "clean"
    assert not after.begin("c1", "clean", {})
    assert [e.id for e in after.unfinished()] == ["c1"]  # reported as interrupted, never rerun


def test_journal_reads_one_generation_only(tmp_path: Path) -> None:
    """After a restart at offset 0, an old line that lines up right after the new ones is not read back."""
    from agent.store import IntentJournal

    journal = IntentJournal(tmp_path / "j")
    journal.append({"id": "old-1"})
    journal.append({"id": "old-2"})
    assert [r["id"] for r in journal.records()] == ["old-1", "old-2"]
    journal.reset()
    assert journal.records() == []
    journal.append({"id": "new-1"})  # same length as old-1: old-2 now follows it exactly
    assert [r["id"] for r in journal.records()] == ["new-1"]
    journal.close()


def test_no_journal_fsync_when_the_owner_turned_sync_off(tmp_path: Path) -> None:
    """The fleet simulator runs hundreds of agents with ``synchronous=OFF``: then no journal line either."""
    db = open_db(tmp_path)
    ledger = Ledger(db)
    db.execute("PRAGMA synchronous=OFF")
    assert ledger.begin("c1", "stop", {})
    assert b"c1" not in (tmp_path / "ledger.journal").read_bytes()
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 0
