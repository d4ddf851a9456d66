"""Dashboard tab: metrics per context from the recorded results (`dashboard_results`), the flag filter, and a
click on a study's row or point that opens its batch report in Review without calling the model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, expect

from tests.app_process import RunningApp
from tests.browser.conftest import (
    DASHBOARD_FINDING,
    DASHBOARD_LOOP,
    DASHBOARD_STUDIES,
    DASHBOARD_UNGROUNDED,
    ReviewPage,
    model_calls,
    new_review_page,
)

pytestmark = pytest.mark.browser

DIST_POINTS = "#dash-dist .scatterlayer .point"
TABLE_ROWS = "#dash-table [role=row][data-index]"  # Gradio's dataframe: one div per body row, cells [role=gridcell]


def open_dashboard(review: ReviewPage) -> None:
    review.page.goto(review.base_url + "?view=dashboard")
    expect(review.page.locator("#dash-summary table")).to_be_visible(timeout=60_000)


def table_row(review: ReviewPage, study_id: str, context: str) -> Locator:
    """The per-study table's row of one (study, context)."""
    rows = review.page.locator(TABLE_ROWS)
    return rows.filter(has=review.page.get_by_text(study_id, exact=True)).filter(
        has=review.page.get_by_text(context, exact=True)
    )


def expect_review_shows(review: ReviewPage, study_id: str, sentence: str) -> None:
    """The Review tab is open on `study_id` with `sentence` in its findings and the viewer on screen."""
    review.wait_for_study(study_id)
    expect(review.rows().filter(has_text=sentence).first).to_be_visible()
    assert "report=" in review.page.url and f"study={study_id}" in review.page.url
    box = review.page.locator(review.WS).bounding_box()
    assert box is not None and -2 < box["y"] < 100, box  # scrolled to the viewer, not left halfway down


def test_every_context_is_shown_and_box_metrics_of_the_ungrounded_one_are_na(
    review: ReviewPage, artifacts: Path
) -> None:
    open_dashboard(review)
    page = review.page
    header = page.locator("#dash-summary thead th").all_inner_texts()
    assert header == ["metric", "default", DASHBOARD_UNGROUNDED]
    recall = page.locator("#dash-summary tbody tr", has_text="box recall").locator("td").all_inner_texts()
    assert recall[2] == "n/a" and recall[1] != "n/a"
    legend = page.locator("#dash-dist .legendtext")
    expect(legend).to_have_text(["default", f"{DASHBOARD_UNGROUNDED} · ungrounded: box metrics n/a"])
    expect(page.locator("#dash-dist")).to_contain_text(f"n/a for {DASHBOARD_UNGROUNDED}: ungrounded context")
    heat = page.locator("#dash-heat")
    for text in ("default (2 boxes)", f"{DASHBOARD_UNGROUNDED} (0 boxes)", "n/a: ungrounded context (no boxes)"):
        expect(heat).to_contain_text(text)
    page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

    page.locator("#dash-flag-filter label", has_text="repetition (2)").click()
    expect(page.locator("#dash-shown")).to_contain_text("Showing 2 of 4 reports flagged repetition.")
    expect(page.locator(TABLE_ROWS)).to_have_count(2)
    contexts = [row.locator("[role=gridcell]").nth(1).inner_text() for row in page.locator(TABLE_ROWS).all()]
    assert contexts == [DASHBOARD_UNGROUNDED] * 2
    review.assert_no_error()


def test_a_table_row_opens_that_contexts_batch_report_without_a_model_call(browser: Browser, app: RunningApp) -> None:
    """On a 1280 x 720 screen, where the Review tab is taller than the window: the viewer is scrolled into view."""
    review, errors = new_review_page(browser, app.url, 1280, 720)
    study = DASHBOARD_STUDIES[1]
    open_dashboard(review)
    calls = [c for c in model_calls(app) if c[1] == study]

    table_row(review, study, "default").locator("[role=gridcell]").first.click()
    expect_review_shows(review, study, DASHBOARD_FINDING)

    review.open_tab("Dashboard")
    table_row(review, study, DASHBOARD_UNGROUNDED).locator("[role=gridcell]").first.click()
    expect_review_shows(review, study, DASHBOARD_LOOP)
    expect(review.rows().filter(has_text=DASHBOARD_FINDING)).to_have_count(0)
    assert [c for c in model_calls(app) if c[1] == study] == calls, "opening a batch report called the model"
    review.assert_no_error()
    review.page.context.close()
    assert not errors, errors


def click_point(review: ReviewPage) -> None:
    """Click the first dot of the distributions (the first facet is box precision: the grounded context)."""
    point = review.page.locator(DIST_POINTS).first
    expect(point).to_be_attached(timeout=60_000)
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    review.page.mouse.move(x, y)
    review.page.mouse.click(x, y)


def test_a_plot_point_opens_its_study_with_its_report_every_time(review: ReviewPage) -> None:
    open_dashboard(review)
    click_point(review)
    studies = "|".join(DASHBOARD_STUDIES)
    expect(review.page.locator(f"{review.WS} .ws-caption")).to_have_text(re.compile(f"^({studies}) ·"))
    study = review.study_id()
    expect_review_shows(review, study, DASHBOARD_FINDING)

    other = next(s for s in DASHBOARD_STUDIES if s != study)  # elsewhere, then the same point again
    review.open_tab("Dashboard")
    table_row(review, other, "default").locator("[role=gridcell]").first.click()
    review.wait_for_study(other)
    review.open_tab("Dashboard")
    click_point(review)
    expect_review_shows(review, study, DASHBOARD_FINDING)
