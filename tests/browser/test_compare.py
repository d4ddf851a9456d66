"""Compare contexts as a person uses it: the study at once, colours by aligned finding, columns that say
what they change, line styles apart from the reference layer, and a shareable address that reopens the
comparison from the report store without a model call."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.app_process import RunningApp
from tests.browser.conftest import GENERATE_TIMEOUT_MS, ReviewPage, model_calls

pytestmark = pytest.mark.browser

STUDY = "radiopaedia_pcp_2"  # frontal + lateral, no prior: B defaults to "no lateral"


def test_compare_colours_labels_and_address_round_trip(review: ReviewPage, app: RunningApp, artifacts: Path) -> None:
    page = review.page
    page.goto(f"{review.base_url}?study={STUDY}&view=compare")
    combined = "#compare-combined"
    page.wait_for_selector(f"{combined} svg.ws-svg image[href^='data:']", state="attached", timeout=60_000)
    expect(page.locator("#ctx-B-lateral input")).not_to_be_checked()
    page.click("#run-compare")
    table = page.locator("#compare-columns table.compare")
    expect(table).to_be_visible(timeout=GENERATE_TIMEOUT_MS)
    headers = table.locator("th").all_inner_texts()
    assert headers[0].startswith("A: base") and headers[1].startswith("B: no lateral")
    for row in table.locator("tr:has(td)").all():
        colours = row.locator(".swatch").evaluate_all("(s) => s.map((e) => getComputedStyle(e).backgroundColor)")
        assert len(set(colours)) == 1, colours  # one colour per aligned finding, in every context
        if row.locator("td.missing").count():
            expect(row.locator(".badge.unique")).to_have_count(1)
    rects = page.locator(f"{combined} g.ws-findings rect")
    dashes = set(rects.evaluate_all("(r) => r.map((e) => e.getAttribute('stroke-dasharray') || 'solid')"))
    assert dashes <= {"solid", "9 5"} and "2 3" not in dashes  # never the reference layer's dots
    expect(page.locator("#compare-A .ws-row").first).to_be_visible()
    expect(page.locator("#compare-A .ws-generate")).to_be_hidden()  # read-only views
    expect(page.locator("#compare-A .ws-verdict")).to_have_count(0)
    query = review.query()
    assert (query["view"], query["A"], query["B"], query["B.lateral"]) == ("compare", "1", "1", "0")
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.screenshot(path=str(artifacts / "compare.png"), full_page=True)

    calls = len(model_calls(app))
    shared = page.url
    other = page.context.new_page()
    other.goto(shared)  # the shared link: same contexts, stored reports, no model call
    expect(other.locator("#compare-columns table.compare")).to_be_visible(timeout=60_000)
    expect(other.locator("#ctx-B-lateral input")).not_to_be_checked()
    assert other.locator("#compare-columns table.compare th").all_inner_texts() == headers
    assert len(model_calls(app)) == calls
    assert "Error" not in other.locator("body").inner_text()
    other.close()
    review.assert_no_error()
