"""Subprocess helper for tests/test_reviews.py and tests/test_report_store.py: saves finding verdicts (or,
with --reports, stored reports) and prints each acknowledged event id (report id).

Usage: python tests/review_writer.py DB REVIEWER COUNT [--comment-kb N] [--lockstep] [--reports]
With --lockstep it prints "ready" after opening the store, then saves one verdict per line that
arrives on stdin: a test that feeds several writers one line each per round makes them contend
for the database in every round, so their writes interleave by construction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_backend.types import BackendInfo, Box, Finding, PromptContext, Report
from webapp.database import Database
from webapp.report_store import ReportStore
from webapp.reviews import TEXT_VERDICTS, FindingVerdict, ReviewStore


def verdict(reviewer: str, i: int, comment_kb: int) -> FindingVerdict:
    """The verdict a writer saves as its i-th; tests rebuild it to check what was stored."""
    return FindingVerdict(
        text_verdict=TEXT_VERDICTS[i % len(TEXT_VERDICTS)],
        box_verdict="correct",
        comment=f"{reviewer} #{i} " + "x" * (comment_kb * 1024),
        finding_text=f"finding {i}",
        model_boxes=[[0.1, 0.2, 0.3, 0.4]],
        image_width=1000,
        image_height=800,
        backend="demo",
        model_id="demo-model",
    )


def report(writer: str, i: int, text_kb: int) -> Report:
    """The report a writer stores as its i-th; tests rebuild it to check what was stored."""
    return Report(
        study_id=study_of(i),
        context=PromptContext(indication=f"{writer} #{i}"),
        findings=(Finding("x" * (text_kb * 1024) + f" finding {i}.", (Box(0.105, 0.205, 0.305, 0.405),)),),
        image_width=1000,
        image_height=800,
        raw_text=f"raw {writer} {i}",
        complete=True,
        backend=BackendInfo(name="demo", model_id="demo-model", weights_hash="abc"),
        images_key=f"images-{i}",
    )


def study_of(i: int) -> str:
    return f"s{i % 50:03d}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("reviewer")
    parser.add_argument("count", type=int)
    parser.add_argument("--comment-kb", type=int, default=0)
    parser.add_argument("--lockstep", action="store_true")
    parser.add_argument("--reports", action="store_true", help="store reports instead of verdicts")
    args = parser.parse_args()
    if args.reports:
        reports = ReportStore(Database(args.db))
        for i in range(args.count):
            print(f"{i} {reports.save(report(args.reviewer, i, args.comment_kb), 'ds', source='test').report_id}",
                  flush=True)  # fmt: skip
        return
    with ReviewStore(args.db) as store:
        if args.lockstep:
            print("ready", flush=True)
        for i in range(args.count):
            if args.lockstep and not sys.stdin.readline():
                return
            event_id = store.save_finding_verdict(
                args.reviewer, "ds", study_of(i), "r1", i, verdict(args.reviewer, i, args.comment_kb)
            )
            print(f"{i} {event_id}", flush=True)


if __name__ == "__main__":
    main()
