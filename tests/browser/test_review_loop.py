"""The review loop as a person uses it (issue "Review workstation 2/2"): verdicts that cannot land on the
wrong finding, navigation that never breaks, stored reports and verdicts after a reload, the address
bar, one 1280x720 screen, keyboard-only review, two tabs, pre-generation, exports."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from model_backend.datasets import bundled_samples_path, load_manifest
from tests.app_process import RunningApp
from tests.browser.conftest import ReviewPage, model_calls, new_review_page, start_app
from webapp.reviews import ReviewStore

pytestmark = pytest.mark.browser

STUDY = "nih_00016487_002"
OTHER = "nih_00019892_003"
PNEUMOTHORAX = [e.study_id for e in load_manifest(bundled_samples_path()).search("pneumothorax")]
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def report_id(review: ReviewPage) -> str:
    raw = review.page.locator(f"{review.WS} .ws-raw").text_content() or ""
    found = re.search(r"report id: (\w+)", raw)
    assert found, raw[:200]
    return found.group(1)


def mark(review: ReviewPage, index: int, text_verdict: str, comment: str = "") -> tuple[str, int, str, str]:
    """Click a text verdict on finding `index` (and type a comment); wait until saved. What was on screen."""
    row = review.page.locator(f"{review.WS} .ws-row[data-index='{index}']")
    sentence = row.locator(".ws-sentence").inner_text()
    row.locator(f".ws-chips.text .ws-chip[data-value='{text_verdict}']").click()
    expect(review.page.locator(f"{review.WS} .ws-message")).to_have_text(f"Saved your verdict on finding {index + 1}.")
    if comment:
        field = row.locator(".ws-comment")
        field.fill(comment)
        field.press("Enter")
        expect(row.locator(".ws-comment")).to_have_value(comment)
    return report_id(review), index, sentence, comment


def stored_verdicts(app: RunningApp, reviewer: str) -> list[dict]:
    with ReviewStore(app.log.parent / "reviews.sqlite") as store:
        return list(store.export_rows(reviewer=reviewer))


def test_every_path_stores_the_verdict_on_the_finding_on_screen(review: ReviewPage, app: RunningApp) -> None:
    page = review.page
    review.open(f"study={STUDY}")
    review.set_reviewer("dr-paths")
    assert review.generate() >= 2
    screen = [mark(review, 0, "correct", "first, as generated")]

    ground = page.locator(f"{review.WS} .ws-phrase")
    ground.fill("cardiomegaly")
    ground.press("Enter")
    result = page.locator(f"{review.WS} .ws-ground-result")
    expect(result).to_contain_text("cardiomegaly")
    expect(result).to_contain_text("The model wrote")
    assert review.sentences()[0] == screen[0][2]  # the report stays; grounding has its own panel
    screen.append(mark(review, 1, "false_finding", "after phrase grounding"))

    review.generate()  # Regenerate
    screen.append(mark(review, 0, "wrong_location", "after regenerate"))

    page.locator("#use-grounded input").uncheck()  # another context: its own (not yet generated) report
    expect(page.locator(f"{review.WS} .ws-none")).to_contain_text("No report for this study and context")
    review.generate()
    screen.append(mark(review, 0, "other", "ungrounded context"))
    page.locator("#use-grounded input").check()
    review.wait_for_report()

    review.focus_page()
    page.keyboard.press("ArrowRight")
    expect(page.locator(f"{review.WS} .ws-caption")).not_to_contain_text(STUDY)
    page.keyboard.press("ArrowLeft")
    review.wait_for_study(STUDY)
    review.wait_for_report()
    screen.append(mark(review, 1, "correct", "after navigating away and back"))

    page.reload()
    review.wait_for_study(STUDY)
    review.wait_for_report()
    expect(page.locator(f"{review.WS} .ws-row[data-index='1'] .ws-comment")).to_have_value(
        "after navigating away and back"
    )
    screen.append(mark(review, 1, "wrong_severity", "after a reload"))

    other = ReviewPage(page.context.new_page(), review.base_url)  # a second tab on the same study
    other.open(f"study={STUDY}")
    expect(other.textbox("reviewer")).to_have_value("dr-paths")  # kept in this browser
    other.wait_for_report()
    screen.append(mark(other, 0, "false_finding", "from the second tab"))
    screen.append(mark(review, 1, "correct", "first tab again"))
    other.page.close()

    stored = {(r["report_id"], r["finding_index"]): r for r in stored_verdicts(app, "dr-paths")}
    for rid, index, sentence, _ in screen:
        assert stored[(rid, index)]["finding_text"] == sentence
    latest = {(rid, index): comment for rid, index, _, comment in screen}
    assert {k: stored[k]["comment"] for k in latest} == latest
    review.assert_no_error()


def test_search_then_navigate_walks_the_current_list_without_errors(review: ReviewPage) -> None:
    assert len(PNEUMOTHORAX) >= 2 and PNEUMOTHORAX[0] != "nih_00005066_030"  # the first study is not in the list
    page = review.page
    review.open()
    review.textbox("search").fill("pneumothorax")
    review.textbox("search").press("Enter")
    expect(page.locator("#study-list .sl-item")).to_have_count(len(PNEUMOTHORAX))
    review.focus_page()
    page.keyboard.press("ArrowRight")  # the open study is not in the list: → goes to its first study
    review.wait_for_study(PNEUMOTHORAX[0])
    expect(page.locator("#study-list .sl-counter")).to_contain_text(f"1 / {len(PNEUMOTHORAX)}")
    page.click("#next-study")
    review.wait_for_study(PNEUMOTHORAX[1])
    page.keyboard.press("ArrowRight")  # wraps round within the list
    review.wait_for_study(PNEUMOTHORAX[0])
    page.keyboard.press("ArrowLeft")
    review.wait_for_study(PNEUMOTHORAX[1])
    review.textbox("search").fill("no study has this word")
    review.textbox("search").press("Enter")
    expect(page.locator("#study-list .sl-item")).to_have_count(0)
    review.focus_page()
    page.keyboard.press("ArrowRight")
    review.wait_for_study(PNEUMOTHORAX[1])  # nothing to go to: the open study stays
    for hostile in (HOSTILE, "' OR 1=1 --", "\\", "(?"):
        review.textbox("search").fill(hostile)
        review.textbox("search").press("Enter")
    assert page.evaluate("() => window.__xss") is None
    review.assert_no_error()


def test_a_reload_shows_the_stored_report_and_every_verdict_without_a_model_call(
    review: ReviewPage, app: RunningApp, tmp_path: Path
) -> None:
    page = review.page
    review.open(f"study={OTHER}")
    review.set_reviewer("dr-reload")
    n = review.generate()
    mark(review, 0, "correct", HOSTILE)
    rv = page.locator(f"{review.WS} .ws-report-verdict")
    rv.locator("summary").click()
    rv.locator(".ws-omissions").fill("small right effusion\nrib fracture")
    rv.locator(".ws-chips.rating .ws-chip[data-value='4']").click()
    rv.locator(".ws-report-comment").fill("usable")
    rv.locator(".ws-save-report").click()
    expect(page.locator(f"{review.WS} .ws-message")).to_have_text("Saved your report verdict.")
    calls = len(model_calls(app))

    page.reload()
    review.wait_for_study(OTHER)
    assert review.wait_for_report() == n
    expect(page.locator(f"{review.WS} .ws-row[data-index='0'] .ws-chips.text .ws-chip.on")).to_have_attribute(
        "data-value", "correct"
    )
    expect(page.locator(f"{review.WS} .ws-row[data-index='0'] .ws-comment")).to_have_value(HOSTILE)
    rv.locator("summary").click()
    expect(rv.locator(".ws-omissions")).to_have_value("small right effusion\nrib fracture")
    expect(rv.locator(".ws-chips.rating .ws-chip.on")).to_have_attribute("data-value", "4")
    assert len(model_calls(app)) == calls, "opening a study with a stored report called the model"
    assert page.evaluate("() => window.__xss") is None

    review.open_accordion("Export verdicts")
    page.click("#export")
    links = page.locator("#export-file a")
    expect(links).to_have_count(2)
    files = {}
    for k in range(2):
        with page.expect_download() as download:
            links.nth(k).click()
        files[download.value.suggested_filename] = tmp_path / download.value.suggested_filename
        download.value.save_as(files[download.value.suggested_filename])
    findings = list(csv.DictReader(files["finding_verdicts.csv"].read_text(encoding="utf-8-sig").splitlines()))
    assert any(r["reviewer"] == "dr-reload" and r["comment"] == HOSTILE for r in findings)
    reports = csv.DictReader(files["report_verdicts.csv"].read_text(encoding="utf-8-sig").splitlines())
    (row,) = [r for r in reports if r["reviewer"] == "dr-reload"]
    assert row["rating"] == "4" and json.loads(row["omissions"])[1]["text"] == "rib fracture"
    review.assert_no_error()


def test_the_address_bar_follows_what_is_on_screen_and_back_goes_back(review: ReviewPage) -> None:
    page = review.page
    review.open(f"study={STUDY}")
    assert review.query()["study"] == STUDY
    review.focus_page()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => new URL(location).searchParams.get('study') !== '{STUDY}'")
    second = review.query()["study"]
    review.wait_for_study(second)
    review.open_tab("Upload study")
    page.locator("#up-frontal input[type=file]").set_input_files(
        str(Path(__file__).resolve().parents[2] / "assets" / "samples" / "nih_cxr14_normal" / "00000550_000.png")
    )
    page.click("#open-upload")
    page.wait_for_function("() => new URL(location).searchParams.has('upload')")
    assert "study" not in review.query()
    upload_url = page.url
    page.go_back()
    review.wait_for_study(second)
    assert review.query()["study"] == second
    page.go_back()
    review.wait_for_study(STUDY)
    page.go_forward()
    review.wait_for_study(second)
    page.goto(upload_url)  # a reload of an upload still in the server's memory reopens it
    expect(page.locator(f"{review.WS} .ws-caption")).to_contain_text("upload-")
    review.assert_no_error()


def test_the_core_loop_fits_1280x720_and_stacks_on_a_phone(browser: Browser, app_url: str, artifacts: Path) -> None:
    desk, errors = new_review_page(browser, app_url, 1280, 720)
    desk.open(f"study={STUDY}")
    desk.set_reviewer("dr-layout")
    desk.generate()
    page = desk.page
    page.evaluate("() => window.scrollTo(0, 0)")
    for selector in (f"{desk.WS} .ws-generate", f"{desk.WS} .ws-stage", f"{desk.WS} .ws-thumbs"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 720, (selector, box)
    rows = desk.rows()
    for k in range(rows.count()):
        box = rows.nth(k).locator(".ws-verdict").bounding_box()  # reachable inside the findings pane
        assert box is not None and box["x"] + box["width"] <= 1280
    side = page.locator(f"{desk.WS} .ws-side").bounding_box()
    assert side is not None and side["y"] + side["height"] <= 720
    page.screenshot(path=str(artifacts / "review_1280x720.png"))
    desk.page.context.close()

    phone, phone_errors = new_review_page(browser, app_url, 390, 844)
    phone.open(f"study={STUDY}")
    phone.wait_for_report()
    stage = phone.page.locator(f"{phone.WS} .ws-stage").bounding_box()
    generate = phone.page.locator(f"{phone.WS} .ws-generate").bounding_box()
    assert stage is not None and generate is not None
    assert stage["width"] <= 390 and generate["x"] + generate["width"] <= 390
    assert stage["y"] < generate["y"] < 844  # stacked: image, then findings, Generate on the first screen
    phone.page.screenshot(path=str(artifacts / "review_phone.png"), full_page=True)
    phone.page.context.close()
    assert not errors and not phone_errors


def test_a_whole_report_is_reviewed_with_the_keyboard_alone(review: ReviewPage, app: RunningApp) -> None:
    page = review.page
    study = "nih_00005066_030"  # the demo model writes six findings here
    review.open(f"study={study}")
    review.set_reviewer("dr-keys")
    n = review.generate()
    review.focus_page()
    presses = 0
    for _ in range(n):
        page.keyboard.press("c")  # correct (and its box), saved, next finding
        presses += 1
        expect(page.locator(f"{review.WS} .ws-message")).to_contain_text("Saved your verdict")
    page.keyboard.press("Shift+Enter")  # save and open the next study
    presses += 1
    expect(page.locator(f"{review.WS} .ws-caption")).not_to_contain_text(study)
    assert presses == n + 1 <= 8, f"{presses} keypresses for {n} findings"
    verdicts = [r for r in stored_verdicts(app, "dr-keys") if r["study_id"] == study]
    assert sorted(r["finding_index"] for r in verdicts) == list(range(n))
    assert all(r["text_verdict"] == "correct" for r in verdicts)
    assert all(r["box_verdict"] == ("correct" if r["model_boxes"] else None) for r in verdicts)


def test_next_shows_pregenerated_findings_without_a_model_call(browser: Browser, tmp_path: Path) -> None:
    for app in start_app(tmp_path, "--pregenerate", "2"):
        review, errors = new_review_page(browser, app.url)
        review.open("study=nih_00016987_019")
        app.wait_for_log("pre-generated nih_00019892_003", timeout_s=600)  # both next studies, in list order
        page = review.page
        for expected in ("nih_00016987_022", "nih_00019892_003"):
            user_calls = len(model_calls(app, "generate"))
            review.focus_page()
            page.keyboard.press("ArrowRight")
            review.wait_for_study(expected)
            review.wait_for_report()
            assert "pregenerate" in review.report_status()
            assert len(model_calls(app, "generate")) == user_calls
        review.page.context.close()
        assert not errors
