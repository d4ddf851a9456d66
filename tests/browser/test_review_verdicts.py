"""Review verdicts in the browser: saved, still there after a reload, exported, hostile text inert."""

from __future__ import annotations

import csv
import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ReviewPage

pytestmark = pytest.mark.browser

STUDY = "nih_00016487_002"
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def report_id(review: ReviewPage) -> str:
    """The report id from the raw-output panel."""
    review.open_accordion("Raw output, warnings, timings")
    details = review.page.locator("#details textarea")
    expect(details).to_have_value(re.compile(r"report id: \S+"))
    found = re.search(r"report id: (\S+)", details.input_value())
    assert found is not None
    return found.group(1)


def judge(review: ReviewPage, number: int, text: str, box: str, comment: str) -> None:
    """Pick finding `number`, set both verdicts and a comment, save."""
    review.pick("finding-pick", f"{number}. ")
    expect(review.page.locator("#finding-pick input")).to_have_value(re.compile(rf"^{number}\. "))
    review.radio("text-verdict", text)
    review.radio("box-verdict", box)
    review.textbox("comment").fill(comment)
    review.page.click("#save-next")
    expect(review.page.get_by_text(f"Saved verdict on finding {number}.")).to_be_visible()


def verdict_rows(review: ReviewPage) -> list[list[str]]:
    """The #verdicts table's body cells, row by row."""
    rows = review.page.locator("#verdicts [role=row].virtual-row")
    return [[cell.inner_text().strip() for cell in row.locator("[role=gridcell]").all()] for row in rows.all()]


def test_verdicts_survive_reload_and_are_exported(review: ReviewPage) -> None:
    page = review.page
    review.open(f"study={STUDY}")
    review.textbox("reviewer").fill("dr-browser")
    assert review.generate() >= 2, "the demo report needs two findings to judge"
    first_id = report_id(review)

    judge(review, 1, "correct", "correct", "fine as written")
    judge(review, 2, "false_finding", "box_not_needed", "not on the image")
    expect(page.locator("#verdicts")).to_contain_text("not on the image")

    page.reload()
    review.wait_for_study(STUDY)
    expect(review.textbox("reviewer")).to_have_value("dr-browser")
    review.generate()
    assert report_id(review) == first_id, "the same study and context must give the same report"
    expect(page.locator("#verdicts")).to_contain_text("false_finding")
    rows = verdict_rows(review)
    assert [row[2] for row in rows[:2]] == ["correct", "false_finding"], rows
    assert [row[5] for row in rows[:2]] == ["fine as written", "not on the image"], rows

    page.click("#export")
    link = page.locator("#export-file a").first
    expect(link).to_be_visible()
    with page.expect_download() as download:
        link.click()
    with open(download.value.path(), newline="") as handle:
        exported = [row for row in csv.DictReader(handle) if row["study_id"] == STUDY]
    by_index = {row["finding_index"]: row for row in exported}
    assert by_index["0"]["reviewer"] == "dr-browser"
    assert by_index["0"]["report_id"] == first_id
    assert (by_index["0"]["text_verdict"], by_index["0"]["box_verdict"]) == ("correct", "correct")
    assert (by_index["1"]["text_verdict"], by_index["1"]["box_verdict"]) == ("false_finding", "box_not_needed")
    assert by_index["1"]["comment"] == "not on the image"


def test_hostile_comment_is_shown_verbatim_and_never_runs(review: ReviewPage) -> None:
    page = review.page
    review.open(f"study={STUDY}")
    review.textbox("reviewer").fill("mallory")
    assert review.generate() >= 1
    judge(review, 1, "other", "wrong_place", HOSTILE)

    expect(page.locator("#verdicts")).to_contain_text(HOSTILE)
    assert page.locator("#verdicts img, #verdicts script").count() == 0
    review.pick("finding-pick", "1. ")
    expect(review.textbox("comment")).to_have_value(HOSTILE)
    assert page.evaluate("() => typeof window.__xss") == "undefined"
