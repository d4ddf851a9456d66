"""The report store on a real SQLite file: save/get/latest, immutability, batch import, the v2 -> v3
migration that keeps every verdict, and SIGKILLed writers that lose no acknowledged report."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from model_backend.types import BackendInfo, Box, Finding, PromptContext, Report
from tests.review_writer import report as writer_report
from webapp.database import Database
from webapp.report_store import ReportStore
from webapp.reviews import FindingVerdict, ReviewStore
from webapp.schema import MIGRATIONS, SCHEMA_VERSION

WRITER = Path(__file__).resolve().parent / "review_writer.py"


def make_report(text: str = "There is a small left pleural effusion.", **changes: object) -> Report:
    report = Report(
        study_id="s1",
        context=PromptContext(indication="Dyspnea."),
        findings=(Finding(text, (Box(0.105, 0.605, 0.305, 0.805),)), Finding("No pneumothorax.")),
        image_width=700,
        image_height=500,
        raw_text=f"<obj>{text}</obj>",
        complete=True,
        backend=BackendInfo(name="local", model_id="maira-2", weights_hash="0123abcd"),
        images_key="img-1",
        warnings=("a warning",),
        timings=(("seconds", 1.5),),
    )
    return replace(report, **changes)  # type: ignore[arg-type]


@pytest.fixture
def reports(tmp_path: Path) -> ReportStore:
    return ReportStore(Database(tmp_path / "r.sqlite"))


def test_a_stored_report_reads_back_exactly_once(reports: ReportStore) -> None:
    report = make_report()
    stored = reports.save(report, "ds", source="app", settings={"max_new_tokens_grounded": 450})
    assert stored.report == report and stored.report_id == report.report_id
    assert (stored.dataset, stored.source, stored.settings) == ("ds", "app", {"max_new_tokens_grounded": 450})
    again = reports.save(report, "ds", source="pregenerate")  # the same content is the same report
    assert again.source == "app" and again.created == stored.created and reports.count() == 1
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        reports.db.conn.execute("UPDATE reports SET source = 'x'")
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        reports.db.conn.execute("DELETE FROM reports")


def test_latest_is_per_study_context_task_and_images(reports: ReportStore) -> None:
    first = reports.save(make_report("First."), "ds", source="app")
    second = reports.save(make_report("Second."), "ds", source="app")
    context = make_report().context
    assert reports.latest("ds", "s1", context, "img-1").report_id == second.report_id != first.report_id
    assert reports.latest("ds", "s1", replace(context, name="B"), "img-1") is not None  # the name is a label
    assert reports.latest("ds", "s1", replace(context, use_prior=False), "img-1") is None
    assert reports.latest("ds", "s1", context, "img-2") is None  # other images: not this study's report
    assert reports.latest("other", "s1", context, "img-1") is None
    assert reports.latest("ds", "s1", context, "img-1", task="box_completion") is None
    assert reports.get("no such id") is None


def test_batch_results_are_imported_once_and_match_any_images(reports: ReportStore, tmp_path: Path) -> None:
    context = PromptContext(name="default", indication="Cough.", use_lateral=False)
    line = {
        "study_id": "s9", "context": {**context.__dict__}, "context_key": context.key(), "task": "reporting",
        "output": [["A nodule.", [[0.1, 0.1, 0.2, 0.2]]]], "raw_text": "", "complete": True, "warnings": [],
        "image_width": 800, "image_height": 600, "model_id": "m", "backend": "batch", "error": None,
        "timings": {},
    }  # fmt: skip
    failed = {**line, "study_id": "s10", "output": None, "error": "boom"}
    named_only = {**line, "study_id": "s11", "context": "default", "context_key": None}
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(x) + "\n" for x in (line, failed, named_only, {**line, "study_id": "s12"})))
    first = reports.import_results(results, "ds")
    assert (first.imported, first.already_stored, first.skipped) == (2, 0, 2)
    again = reports.import_results(results, "ds")
    assert (again.imported, again.already_stored) == (0, 2)
    stored = reports.latest("ds", "s9", replace(context, name="A"), "any images key")
    assert stored is not None and stored.source == "batch:results.jsonl"
    assert stored.report.findings[0].text == "A nodule." and stored.report.image_width == 800
    assert reports.find_batch_report("ds", "s12", "default").report.study_id == "s12"
    with pytest.raises(ValueError, match="not valid JSON"):
        (tmp_path / "bad.jsonl").write_text("{nope\n{}\n")
        reports.import_results(tmp_path / "bad.jsonl", "ds")


def test_migration_from_version_2_keeps_every_verdict(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path, isolation_level=None)
    for step in MIGRATIONS[:2]:
        step(conn)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    with ReviewStore(path) as store:  # opens at version 3 ...
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        store.save_finding_verdict("alice", "ds", "s1", "r1", 0, FindingVerdict(text_verdict="correct"))
    raw = sqlite3.connect(path)
    raw.execute("PRAGMA user_version = 2")  # ... pretend it was a v2 file with a verdict in it
    raw.execute("DROP TABLE reports")
    raw.commit()
    raw.close()
    db = Database(path)
    reviews, reports = ReviewStore(db), ReportStore(db)
    assert reviews.finding_verdicts("ds", "s1", "r1", "alice")[0].text_verdict == "correct"
    assert reports.count() == 0
    reports.save(make_report(), "ds", source="app")
    assert reports.count() == 1
    db.close()


def test_sigkill_keeps_every_acknowledged_report(tmp_path: Path) -> None:
    db = tmp_path / "reports.sqlite"
    acked: list[tuple[int, str]] = []
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(db), "w", "400", "--reports", "--comment-kb", "32"],
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:  # type: ignore[union-attr]
        index, report_id = line.split()
        acked.append((int(index), report_id))
        if len(acked) == 60:
            os.kill(proc.pid, signal.SIGKILL)
            break
    acked += [(int(i), r) for i, r in (line.split() for line in proc.stdout)]  # type: ignore[union-attr]
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and 60 <= len(acked) < 400
    reports = ReportStore(Database(db))
    assert reports.db.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for index, report_id in acked:
        stored = reports.get(report_id)
        assert stored is not None, f"acknowledged report {index} is missing"
        assert stored.report == writer_report("w", index, 32)
    assert reports.count() <= len(acked) + 1  # at most one commit was not printed before the kill
    reports.save(make_report(), "ds", source="after")  # the file stays writable
