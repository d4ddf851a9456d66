"""What the hardening issue found in the browser: agreement between two reviewers, HTML in a shared
address, uploads without a frontal or of the wrong kind, and prompts too long for the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import SAMPLES, ReviewPage, new_review_page

pytestmark = pytest.mark.browser

FIRST = "nih_00005066_030"  # the demo model writes six findings here
SIIM_DICOM = next((SAMPLES / "dicom").glob("siim_*.dcm"))
PAYLOADS = (
    '<a href="https://phish.example/login" id="phish-link">Your session expired: sign in again</a>',
    '<form id="phish-form" action="https://phish.example"><input type="password" name="pw"></form>',
    '<img src=x onerror="window.__xss=1" id="phish-img">',
)


def test_agreement_between_two_reviewers(browser: Browser, app_url: str) -> None:
    pages = []
    for name, verdicts in (("dr-one", ("correct", "false_finding")), ("dr-two", ("correct", "correct"))):
        review, errors = new_review_page(browser, app_url)
        review.open(f"study={FIRST}")
        review.set_reviewer(name)
        assert review.generate() >= 2  # greedy decoding: both reviewers see the same stored report
        for index, verdict in enumerate(verdicts):
            review.page.locator(
                f"{review.WS} .ws-row[data-index='{index}'] .ws-chips.text [data-value='{verdict}']"
            ).click()
            expect(review.page.locator(f"{review.WS} .ws-message")).to_have_text(
                f"Saved your verdict on finding {index + 1}."
            )
        pages.append((review, errors))
    review = pages[1][0]
    review.open_accordion("Export verdicts")
    review.page.click("#agreement")
    table = review.page.locator("#agreement-table")
    expect(table).to_contain_text("dr-one: correct")
    expect(table).to_contain_text("dr-two: correct")
    expect(table).to_contain_text("dr-one: false_finding")
    expect(table).to_contain_text("yes")
    expect(table).to_contain_text("no")
    for page, errors in pages:
        page.assert_no_error()
        page.page.context.close()
        assert not errors


@pytest.mark.parametrize("payload", PAYLOADS)
def test_html_in_a_shared_address_is_shown_as_text(review: ReviewPage, payload: str) -> None:
    page = review.page
    page.goto(review.base_url + "?" + "study=" + payload.replace("&", "%26").replace("#", "%23"))
    review.wait_for_picture()
    review.wait_for_study(FIRST)
    expect(page.locator(f"{review.WS} .ws-message")).to_contain_text("is not in this dataset")
    for injected in ("#phish-link", "#phish-form", "#phish-img", "input[type=password]"):
        expect(page.locator(injected)).to_have_count(0)
    assert page.evaluate("() => window.__xss") is None
    review.assert_no_error()


def test_open_as_study_without_a_frontal_says_it_is_required(review: ReviewPage) -> None:
    review.open()
    review.open_tab("Upload study")
    review.page.click("#open-upload")
    expect(review.page.locator("#upload-msg")).to_contain_text("The frontal image is required.")
    review.assert_no_error()


def test_wrong_and_broken_uploads_get_a_sentence_and_a_dicom_opens(review: ReviewPage, tmp_path: Path) -> None:
    page = review.page
    review.open()
    review.open_tab("Upload study")
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is not an image")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes((SAMPLES / "nih_cxr14_normal" / "00000550_000.png").read_bytes()[:5000])
    for bad, expected in ((text_file, "not a readable image"), (truncated, "truncated or corrupt")):
        page.locator("#up-frontal input[type=file]").set_input_files(str(bad))
        page.click("#open-upload")
        expect(page.locator("#upload-msg")).to_contain_text("Upload rejected")
        expect(page.locator("#upload-msg")).to_contain_text(expected)
        page.locator("#up-frontal button[aria-label='Clear']").click()  # as a person removes the file
    page.locator("#up-frontal input[type=file]").set_input_files(str(SIIM_DICOM))
    page.click("#open-upload")
    expect(page.locator(f"{review.WS} .ws-caption")).to_contain_text("upload-", timeout=60_000)
    expect(page.locator(f"{review.WS} .ws-caption")).to_contain_text("dicom, 8-bit")
    assert "PatientName" not in page.locator("body").inner_text()
    review.assert_no_error()


def test_a_prompt_too_long_for_the_model_is_a_sentence_naming_the_field(review: ReviewPage) -> None:
    page = review.page
    review.open(f"study={FIRST}")
    field = review.textbox("ctx-indication")
    expect(field).to_have_attribute("maxlength", "10000")
    text = "".join(np.random.default_rng(0).choice(list("abcdefghijklmnopqrstuvwxyz0123456789 .,;"), 9_000))
    field.fill(text)
    review.page.click(f"{review.WS} .ws-generate")
    message = page.locator(f"{review.WS} .ws-message")
    expect(message).to_contain_text("Generation failed: the prompt is", timeout=60_000)
    expect(message).to_contain_text("indication, is 9,000 characters")
    expect(page.locator(f"{review.WS} .ws-generate")).to_be_enabled()
    review.assert_no_error()
