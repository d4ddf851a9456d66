"""Dashboard tab: metrics from a results file, and a click on a study's point opens that study."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import DASHBOARD_RESULTS, ReviewPage

pytestmark = pytest.mark.browser


def test_clicking_a_metric_point_opens_its_study(review: ReviewPage) -> None:
    page = review.page
    page.goto(review.base_url + "?view=dashboard")
    points = page.locator("#dash-dist .point")
    expect(points.first).to_be_attached(timeout=60_000)
    box = points.first.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    recorded = json.dumps(sorted(line["study_id"] for line in DASHBOARD_RESULTS))
    page.wait_for_function(
        f"() => {recorded}.includes((document.querySelector('.study-head b') || {{}}).textContent)", timeout=60_000
    )
    assert "study=nih_000" in page.url
