"""The report store: every report generated in the app or imported from batch results, in the review database.

A stored report is immutable and keyed by `Report.report_id`, a content hash of the model (id and
weights hash), prompt context, images, task and output, so generating the same output again
stores nothing new, and a verdict that names a report id names exactly one list of findings.
Each row keeps the study (dataset, id, image content key), the full prompt context, the
generation settings, the raw output, the parsed findings with model-frame boxes, warnings,
timings, where it came from (`source`: "app", "pregenerate", "compare", "batch:<file>") and when.

`latest` answers "what does this study look like under this context": the newest report for
(dataset, study, context settings, task) whose images are the study's (or unknown: batch
results imported without image keys count as the study's own).
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_backend.backends.base import BackendError
from model_backend.backends.replay import read_results
from model_backend.types import BackendInfo, PromptContext, Report
from webapp.database import Database
from webapp.schema import now_utc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredReport:
    """A report as stored: the report itself and its provenance."""

    report: Report
    report_id: str
    dataset: str
    source: str
    created: str
    settings: dict[str, Any]


@dataclass(frozen=True)
class ImportSummary:
    """What `ReportStore.import_results` did with a results file."""

    imported: int
    already_stored: int
    skipped: int  # error lines, lines without the full context or the image size


class ReportStore:
    """Reports in the review database; thread-safe, shared with `webapp.reviews.ReviewStore`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def save(
        self, report: Report, dataset: str, *, source: str, settings: dict[str, Any] | None = None
    ) -> StoredReport:
        """Store `report` (once: the same content is the same report) and return it as stored."""
        with self.db.transaction() as conn:
            _insert(conn, [_row(report, dataset, source, settings)])
        stored = self.get(report.report_id)
        assert stored is not None
        return stored

    def get(self, report_id: str) -> StoredReport | None:
        rows = self.db.query(f"SELECT {_COLUMNS} FROM reports WHERE report_id = ?", (report_id,))
        return _stored(rows[0]) if rows else None

    def latest(
        self, dataset: str, study_id: str, context: PromptContext, images_key: str, task: str = "reporting"
    ) -> StoredReport | None:
        """The newest report of this study under these prompt settings (see the module docstring)."""
        rows = self.db.query(
            f"""SELECT {_COLUMNS} FROM reports WHERE dataset = ? AND study_id = ? AND context_key = ? AND task = ?
            AND images_key IN (?, '') ORDER BY created DESC LIMIT 1""",
            (dataset, study_id, context.key(), task, images_key),
        )
        return _stored(rows[0]) if rows else None

    def find_batch_report(
        self, dataset: str, study_id: str, context_name: str, task: str = "reporting"
    ) -> StoredReport | None:
        """The newest imported batch report of a study for a task under a context *name* (as the batch runner
        named it)."""
        rows = self.db.query(
            f"""SELECT {_COLUMNS} FROM reports WHERE dataset = ? AND study_id = ? AND source LIKE 'batch:%'
            AND json_extract(report, '$.context.name') = ? AND task = ? ORDER BY created DESC LIMIT 1""",
            (dataset, study_id, context_name, task),
        )
        return _stored(rows[0]) if rows else None

    def count(self) -> int:
        return int(self.db.query("SELECT count(*) FROM reports")[0][0])

    def import_results(self, path: Path, dataset: str) -> ImportSummary:
        """Store every usable line of a batch results / replay JSONL (idempotent: a second import adds nothing)."""
        try:
            results = read_results(path)
        except BackendError as exc:
            raise ValueError(str(exc)) from exc
        rows = []
        for result in results:
            if result.error is not None or result.context is None or result.image_size is None:
                continue
            report = Report(
                study_id=result.study_id,
                context=result.context,
                findings=result.findings,
                image_width=result.image_size[0],
                image_height=result.image_size[1],
                raw_text=result.raw_text,
                complete=result.complete,
                backend=BackendInfo(name=result.backend or "batch", model_id=result.model_id or path.name),
                warnings=result.warnings,
                timings=result.timings,
                task=result.task,
            )
            rows.append(_row(report, dataset, f"batch:{path.name}", None))
        with self.db.transaction() as conn:  # one commit for the whole file, not one per line
            imported = _insert(conn, rows)
        already, skipped = len(rows) - imported, len(results) - len(rows)
        log.info("imported %d reports from %s (%d already stored, %d lines skipped)", imported, path, already, skipped)
        return ImportSummary(imported, already, skipped)


_COLUMNS = "report_id, dataset, report, source, created, settings"


def _row(report: Report, dataset: str, source: str, settings: dict[str, Any] | None) -> tuple:
    """The `reports` table row of a report."""
    return (
        report.report_id, dataset, report.study_id, report.images_key, report.context.key(), report.task,
        report.backend.name, report.backend.model_id, report.backend.weights_hash,
        json.dumps(settings or {}, allow_nan=False), json.dumps(report.to_dict(), allow_nan=False), source, now_utc(),
    )  # fmt: skip


def _insert(conn: sqlite3.Connection, rows: list[tuple]) -> int:
    """Insert the rows not stored yet (a report is immutable: same id, same content); how many were new."""
    before = conn.total_changes
    conn.executemany(
        """INSERT OR IGNORE INTO reports (report_id, dataset, study_id, images_key, context_key, task, backend,
        model_id, weights_hash, settings, report, source, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        rows,
    )
    return conn.total_changes - before


def _stored(row: tuple) -> StoredReport:
    report_id, dataset, report, source, created, settings = row
    return StoredReport(Report.from_dict(json.loads(report)), report_id, dataset, source, created, json.loads(settings))
