"""Subprocess helper for tests/test_reviews.py: saves finding verdicts and prints each acknowledged event id.

Usage: python tests/review_writer.py DB REVIEWER COUNT [--comment-kb N] [--lockstep]
With --lockstep it prints "ready" after opening the store, then saves one verdict per line that
arrives on stdin: a test that feeds several writers one line each per round makes them contend
for the database in every round, so their writes interleave by construction.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def study_of(i: int) -> str:
    return f"s{i % 50:03d}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("reviewer")
    parser.add_argument("count", type=int)
    parser.add_argument("--comment-kb", type=int, default=0)
    parser.add_argument("--lockstep", action="store_true")
    args = parser.parse_args()
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
