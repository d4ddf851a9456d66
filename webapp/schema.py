"""The review database's schema: its migrations, one per version, and the helpers they share.

Version 1 held finding verdicts only; version 2 added report-level verdicts, undo, append-only
triggers and the `latest` current-state table (see `webapp.reviews`); version 3 added the
`reports` table of the report store (see `webapp.report_store`). `webapp.database.Database`
applies the missing steps in one transaction when a file is opened.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

KIND_FINDING = "finding_verdict"
KIND_REPORT = "report_verdict"
KIND_UNDO = "undo"
CLEARED: dict[str, Any] = {"cleared": True}
REPORT_LEVEL = -1  # `latest.finding_key` for report-level verdicts (finding_index IS NULL in `events`)


def _migrate_to_v1(conn: sqlite3.Connection) -> None:
    """Version 1: finding verdicts only, no significance, no undo, no current-state table."""
    conn.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            dataset TEXT NOT NULL,
            study_id TEXT NOT NULL,
            report_id TEXT NOT NULL,
            finding_index INTEGER NOT NULL,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL
        )"""
    )


def _migrate_to_v2(conn: sqlite3.Connection) -> None:
    """Version 2: report-level verdicts (nullable finding_index), undo, append-only triggers, `latest`."""
    conn.execute(
        """CREATE TABLE events_v2 (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts TEXT NOT NULL,
            reviewer TEXT NOT NULL,
            dataset TEXT NOT NULL,
            study_id TEXT NOT NULL,
            report_id TEXT NOT NULL,
            finding_index INTEGER CHECK (finding_index IS NULL OR finding_index >= 0),
            kind TEXT NOT NULL CHECK (kind IN ('finding_verdict', 'report_verdict', 'undo')),
            payload TEXT NOT NULL CHECK (json_valid(payload))
        )"""
    )
    columns = "id, ts, reviewer, dataset, study_id, report_id, finding_index, kind, payload"
    conn.execute(f"INSERT INTO events_v2 ({columns}) SELECT {columns} FROM events")
    conn.execute("DROP TABLE events")
    conn.execute("ALTER TABLE events_v2 RENAME TO events")
    conn.execute("CREATE INDEX events_by_key ON events (dataset, study_id, report_id, finding_index, reviewer, id)")
    for action in ("UPDATE", "DELETE"):
        conn.execute(
            f"CREATE TRIGGER events_no_{action.lower()} BEFORE {action} ON events "
            "BEGIN SELECT RAISE(ABORT, 'review events are append-only'); END"
        )
    conn.execute(
        """CREATE TABLE latest (
            dataset TEXT NOT NULL,
            study_id TEXT NOT NULL,
            report_id TEXT NOT NULL,
            finding_key INTEGER NOT NULL,
            reviewer TEXT NOT NULL,
            first_event_id INTEGER NOT NULL REFERENCES events (id),
            event_id INTEGER NOT NULL REFERENCES events (id),
            cleared INTEGER NOT NULL CHECK (cleared IN (0, 1)),
            PRIMARY KEY (dataset, study_id, report_id, finding_key, reviewer)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX latest_by_reviewer ON latest (dataset, reviewer, study_id)")
    conn.execute(
        """CREATE VIEW current_verdicts AS
        SELECT l.dataset, l.study_id, l.report_id, NULLIF(l.finding_key, -1) AS finding_index, l.reviewer,
               f.ts AS first_ts, e.ts AS last_ts, e.id AS event_id, e.payload
        FROM latest AS l JOIN events AS e ON e.id = l.event_id JOIN events AS f ON f.id = l.first_event_id
        WHERE l.cleared = 0"""
    )
    rows = conn.execute(
        "SELECT id, dataset, study_id, report_id, finding_index, reviewer, kind FROM events ORDER BY id"
    )
    by_key: dict[tuple, list[tuple[int, str]]] = defaultdict(list)
    for event_id, *key, kind in rows:
        by_key[tuple(key)].append((event_id, kind))
    for key, events in by_key.items():
        stack = replay_stack(events)
        set_latest(conn, key, first_event_id=events[0][0], event_id=events[-1][0], cleared=not stack)


def _migrate_to_v3(conn: sqlite3.Connection) -> None:
    """Version 3: the report store. A report is immutable and keyed by its content hash (`Report.report_id`);
    `report` holds `Report.to_dict()` (boxes in the model frame, exactly as generated)."""
    conn.execute(
        """CREATE TABLE reports (
            report_id TEXT PRIMARY KEY,
            dataset TEXT NOT NULL,
            study_id TEXT NOT NULL,
            images_key TEXT NOT NULL,
            context_key TEXT NOT NULL,
            task TEXT NOT NULL,
            backend TEXT NOT NULL,
            model_id TEXT NOT NULL,
            weights_hash TEXT NOT NULL,
            settings TEXT NOT NULL CHECK (json_valid(settings)),
            report TEXT NOT NULL CHECK (json_valid(report)),
            source TEXT NOT NULL,
            created TEXT NOT NULL
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX reports_by_context ON reports (dataset, study_id, context_key, task, created)")
    for action in ("UPDATE", "DELETE"):
        conn.execute(
            f"CREATE TRIGGER reports_no_{action.lower()} BEFORE {action} ON reports "
            "BEGIN SELECT RAISE(ABORT, 'stored reports are immutable'); END"
        )


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_to_v1, _migrate_to_v2, _migrate_to_v3]
SCHEMA_VERSION = len(MIGRATIONS)


def replay_stack(events: Iterable[tuple[int, str]]) -> list[int]:
    """Ids of the verdict events still in effect for one key, oldest first (undo pops the newest)."""
    stack: list[int] = []
    for event_id, kind in events:
        if kind == KIND_UNDO:
            if stack:
                stack.pop()
        else:
            stack.append(event_id)
    return stack


def set_latest(conn: sqlite3.Connection, key: tuple, *, first_event_id: int, event_id: int, cleared: bool) -> None:
    dataset, study_id, report_id, finding_index, reviewer = key
    conn.execute(
        """INSERT INTO latest (dataset, study_id, report_id, finding_key, reviewer, first_event_id, event_id, cleared)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (dataset, study_id, report_id, finding_key, reviewer)
        DO UPDATE SET event_id = excluded.event_id, cleared = excluded.cleared""",
        (dataset, study_id, report_id, REPORT_LEVEL if finding_index is None else finding_index, reviewer,
         first_event_id, event_id, int(cleared)),
    )  # fmt: skip


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
