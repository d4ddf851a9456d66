"""The review page as a user drives it: open, generate, boxes, toggles, zoom, keys, deep links,
comparison, phrase grounding, DICOM upload and a rejected upload."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import SAMPLES, ReviewPage

pytestmark = pytest.mark.browser

STUDY = "nih_00005066_030"
NEXT_STUDY = "nih_00015300_000"  # the row after STUDY in assets/samples/studies.jsonl
OTHER_STUDY = "hannover_a361d7b7"
DICOM = SAMPLES / "dicom" / "siim_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def test_generate_shows_boxes_that_hide_zoom_and_keys_switch_study(review: ReviewPage, artifacts: Path) -> None:
    page = review.page
    review.open(f"study={STUDY}")
    review.wait_for_study(STUDY)
    reference_traces = review.drawn_traces()

    assert review.generate() >= 1
    keys = review.grounded_keys()
    assert keys, "no generated finding has a box"
    key = keys[0]
    n_boxes = review.visible_traces(key)
    assert n_boxes >= 1
    shown = review.drawn_traces()
    assert shown >= reference_traces + n_boxes
    page.screenshot(path=str(artifacts / "main_view.png"))

    page.locator(f"#finding-toggles input[name='{key}']").uncheck()
    page.wait_for_function(
        "([sel, key]) => document.querySelector(sel)._fullData.filter("
        "(t) => t.legendgroup === key && t.visible === true).length === 0",
        arg=[review.PLOT, key],
    )
    assert review.drawn_traces() == shown - n_boxes
    expect(page.locator(f"#finding-toggles input[name='{key}']")).not_to_be_checked()

    full_range = review.axis_range()
    drag_area = page.locator(f"{review.PLOT} .nsewdrag").first
    drag_area.scroll_into_view_if_needed()  # unchecking a low toggle scrolled the page
    area = drag_area.bounding_box()
    assert area is not None
    page.mouse.move(area["x"] + area["width"] * 0.3, area["y"] + area["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(area["x"] + area["width"] * 0.6, area["y"] + area["height"] * 0.6, steps=8)
    page.mouse.up()
    page.wait_for_function(
        "([sel, r]) => { const x = document.querySelector(sel)._fullLayout.xaxis.range;"
        " return x[1] - x[0] < 0.8 * (r[1] - r[0]); }",
        arg=[review.PLOT, full_range],
    )
    zoomed = review.axis_range()
    assert full_range[0] < zoomed[0] < zoomed[1] < full_range[1]

    page.evaluate("() => document.activeElement && document.activeElement.blur()")
    page.keyboard.press("ArrowRight")
    review.wait_for_study(NEXT_STUDY)
    page.wait_for_function(f"() => new URL(location).searchParams.get('study') === '{NEXT_STUDY}'")
    expect(page.locator("#findings")).to_contain_text("No report yet")


def test_deep_link_opens_that_study_with_its_switches(review: ReviewPage) -> None:
    review.open(f"study={OTHER_STUDY}&lateral=0&prior=1&grounded=1")
    review.wait_for_study(OTHER_STUDY)
    expect(review.page.locator("#study-list input")).to_have_value(OTHER_STUDY)
    expect(review.page.get_by_label("Lateral", exact=True).first).not_to_be_checked()
    expect(review.page.get_by_label("Grounded", exact=True).first).to_be_checked()
    assert review.query()["study"] == OTHER_STUDY


def test_two_context_comparison_shows_both_columns(review: ReviewPage, artifacts: Path) -> None:
    page = review.page
    review.open(f"study={STUDY}&view=compare")
    expect(page.get_by_role("tab", name="Compare contexts")).to_have_attribute("aria-selected", "true")
    page.click("#run-compare")
    table = page.locator("#compare-columns table.compare")
    expect(table).to_be_visible(timeout=180_000)
    expect(table.locator("th")).to_have_text(["A", "B"])
    assert table.locator("tr").count() >= 2, "the comparison has no finding rows"
    page.wait_for_selector("#compare-figure .js-plotly-plot .imagelayer image")
    assert review.query()["view"] == "compare"
    page.locator("#compare-columns").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "comparison_view.png"), full_page=True)


def test_typed_phrase_is_grounded_with_a_box(review: ReviewPage) -> None:
    review.open(f"study={STUDY}")
    review.open_accordion("Phrase grounding")
    review.textbox("phrase").fill("right pleural effusion")
    review.page.click("#ground")
    assert review.wait_for_report() == 1
    expect(review.page.locator("#findings ol.findings li")).to_contain_text("pleural effusion")
    expect(review.page.locator("#findings .badge").first).not_to_have_class("badge ungrounded")
    assert review.grounded_keys(), "the grounded phrase has no box in the figure"


def open_upload(review: ReviewPage, frontal: Path) -> None:
    review.open_tab("Upload study")
    review.page.set_input_files("#up-frontal input[type=file]", str(frontal))
    expect(review.page.locator(f"#up-frontal a[href$='/{frontal.name}']")).to_be_attached()
    review.page.click("#open-upload")


def test_dicom_upload_generates_findings(review: ReviewPage) -> None:
    review.open()
    open_upload(review, DICOM)
    expect(review.page.locator("#upload-msg")).to_contain_text("Opened the uploaded study")
    expect(review.page.get_by_role("tab", name="Review")).to_have_attribute("aria-selected", "true")
    expect(review.page.locator(".study-head b").first).to_contain_text("upload-")
    expect(review.page.locator(".study-head")).to_contain_text("dicom")
    assert review.generate() >= 1


def test_non_image_upload_is_rejected_and_app_keeps_working(
    review: ReviewPage, tmp_path: Path, artifacts: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("these are meeting notes, not a radiograph\n")
    review.open(f"study={STUDY}")
    open_upload(review, fake)
    error = review.page.locator("#upload-msg .error-box")
    expect(error).to_contain_text("upload rejected")
    review.page.screenshot(path=str(artifacts / "upload_error.png"), full_page=True)

    review.open_tab("Review")
    review.pick("study-list", NEXT_STUDY)
    review.wait_for_study(NEXT_STUDY)
    assert review.generate() >= 1
